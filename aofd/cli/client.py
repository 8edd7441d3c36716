"""A small synchronous client for the admin API, used by `aofctl get/describe/diff/reconcile/approve`.

Finds the daemon from `--admin`, then `$AOFD_ADMIN`, then the endpoints file a
zero-config daemon writes under `./.aofd/state/`, then `127.0.0.1:8081`. Speaks HTTP over
TCP or over a unix socket (`unix:/run/aofd/admin.sock`).

Sends `Authorization: Bearer <token>` when it has a token: from `--token-file`, then
`$AOFD_ADMIN_TOKEN`, then `/etc/aofd/credentials/admin-token` when readable (the file the
systemd unit loads as the credential `admin-token`) — but only to an address the user named
(`--admin`, `$AOFD_ADMIN`) or found in an endpoints file that only they (or root) can write:
a committed `.aofd/state/endpoints.json` or a squatter on the default port must not collect
operators' tokens. A token sent over TCP to another host travels in clear, which is warned about.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import socket
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aofd.daemon import config as daemon_config
from aofd.reconcile import state as state_mod

DEFAULT_ADMIN = "127.0.0.1:8081"
DEFAULT_TOKEN_FILE = Path("/etc/aofd/credentials/admin-token")
TOKEN_ENV = "AOFD_ADMIN_TOKEN"  # noqa: S105 (the name of a variable)
MAX_TOKEN_BYTES = 4096


class AdminError(Exception):
    """The daemon could not be reached or answered with an error."""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the daemon is, and whether a token may be sent there (`trusted`)."""

    address: str
    trusted: bool
    found: str


def resolve_endpoint(explicit: str | None, *, cwd: Path | None = None) -> Endpoint:
    """`--admin`, `$AOFD_ADMIN`, the endpoints file of a zero-config daemon here, the default."""
    if explicit:
        return Endpoint(explicit, True, "--admin")
    env = os.environ.get("AOFD_ADMIN")
    if env:
        return Endpoint(env, True, "AOFD_ADMIN")
    state_dir = (cwd or Path.cwd()) / ".aofd" / "state"
    endpoints = state_mod.StateStore(state_dir).load_endpoints()
    if endpoints.get("admin"):
        trusted = _only_mine(state_dir) and _only_mine(state_dir / state_mod.ENDPOINTS_FILE)
        return Endpoint(endpoints["admin"], trusted, str(state_dir / state_mod.ENDPOINTS_FILE))
    return Endpoint(DEFAULT_ADMIN, False, "the default address")


def resolve_address(explicit: str | None, *, cwd: Path | None = None) -> str:
    return resolve_endpoint(explicit, cwd=cwd).address


def _only_mine(path: Path) -> bool:
    """Is `path` a real file or directory owned by this user or root that nobody else may write?"""
    try:
        info = path.lstat()
    except OSError:
        return False
    if stat.S_ISLNK(info.st_mode) or info.st_uid not in (os.getuid(), 0):
        return False
    return not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def token_for(endpoint: Endpoint, token: str | None) -> str | None:
    """The token to send to `endpoint`: none to an address nobody named; a warning for clear text."""
    if token is None:
        return None
    if not endpoint.trusted:
        print(
            f"warning: not sending the admin token to {endpoint.address} ({endpoint.found}); "
            "name the daemon with --admin or AOFD_ADMIN",
            file=sys.stderr,
        )
        return None
    if not daemon_config.is_local_address(endpoint.address):
        print(f"warning: the admin token travels in clear text to {endpoint.address}", file=sys.stderr)
    return token


def resolve_token(
    token_file: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    default_file: Path = DEFAULT_TOKEN_FILE,
) -> str | None:
    """The admin token: `--token-file`, then `$AOFD_ADMIN_TOKEN`, then `default_file` if readable."""
    env = os.environ if environ is None else environ
    if token_file is not None:
        return _read_token(token_file, explicit=True)
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip()
    return _read_token(default_file, explicit=False)


def _read_token(path: Path, *, explicit: bool) -> str | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        if not explicit:
            return None
        raise AdminError(f"{path}: cannot read the admin token: {exc.strerror}") from None
    token = raw.decode("utf-8", "replace").strip()
    if explicit and (not token or len(raw) > MAX_TOKEN_BYTES):
        raise AdminError(f"{path}: not an admin token (one line of at most {MAX_TOKEN_BYTES} bytes)")
    return token or None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()  # no socket left open when the daemon is not there
            raise
        self.sock = sock


class AdminClient:
    def __init__(
        self, address: str, *, timeout: float = 30.0, token: str | None = None, held_back: bool = False
    ) -> None:
        """`held_back`: a token exists but was not sent to this (unnamed) address (`token_for`)."""
        self.address = address
        self.timeout = timeout
        self._token = token
        self.held_back = held_back

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
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token}"
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"cannot reach aofd at {self.address}: {exc}") from exc
        finally:
            conn.close()
        if resp.status == 401:
            if self.held_back:
                raise AdminError(
                    f"aofd at {self.address} needs the admin token (HTTP 401), which is sent only "
                    "to a daemon you name: give --admin or set AOFD_ADMIN"
                )
            hint = "was refused" if self._token is not None else "needs one"
            raise AdminError(
                f"aofd at {self.address}: the admin token {hint} (HTTP 401): pass --token-file, "
                f"set {TOKEN_ENV}, or make {DEFAULT_TOKEN_FILE} readable"
            )
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
