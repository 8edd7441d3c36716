"""A small synchronous client for the admin API, used by `aofctl get/describe/diff/reconcile`.

Finds the daemon from `--admin`, then `$AOFD_ADMIN`, then the endpoints file a
zero-config daemon writes under `./.aofd/state/`, then `127.0.0.1:8081`. Speaks HTTP over
TCP or over a unix socket (`unix:/run/aofd/admin.sock`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from aofd.reconcile import state as state_mod

DEFAULT_ADMIN = "127.0.0.1:8081"


class AdminError(Exception):
    """The daemon could not be reached or answered with an error."""


def resolve_address(explicit: str | None, *, cwd: Path | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("AOFD_ADMIN")
    if env:
        return env
    base = cwd or Path.cwd()
    endpoints = state_mod.StateStore(base / ".aofd" / "state").load_endpoints()
    if endpoints.get("admin"):
        return endpoints["admin"]
    return DEFAULT_ADMIN


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class AdminClient:
    def __init__(self, address: str, *, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.startswith("unix:"):
            return _UnixConnection(self.address[len("unix:") :], self.timeout)
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise AdminError(f"bad admin address {self.address!r}: expected HOST:PORT or unix:PATH")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = self._connection()
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"cannot reach aofd at {self.address}: {exc}") from exc
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        data: Any = raw.decode("utf-8", "replace")
        if "json" in ctype:
            with contextlib.suppress(ValueError):
                data = json.loads(raw)
        return resp.status, data

    def get(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else str(data).strip()
            raise AdminError(f"{path}: {message} (HTTP {status})")
        return data
