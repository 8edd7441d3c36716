"""The admin HTTP API (DESIGN.md section 4): health, readiness, metrics, status, resources.

Served on loopback or a unix socket by default, through the runtime's HTTP server adapter
(`aofd.runtime.httpserver`; a unix socket is created mode 0660). Read-only except `POST /api/v1/reconcile`
(wake the sources and run a pass) and `POST /api/v1/diff` (plan a candidate tree against
what runs, with the same pure planner; nothing is applied). Secret-bearing values (Context
env values, Trigger tokens and secrets) are masked in every response.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Protocol

from aofd.resources import ids
from aofd.runtime import httpserver, ports, verify

SECRET_KEY_PARTS = ("token", "secret", "password", "api_key", "apikey", "routing_key", "private_key")
MASK = "***"


def mask_secrets(value: Any, *, under_env: bool = False) -> Any:
    """Mask secret-looking fields, and every value of an `env` map (may hold substituted secrets)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            k = str(key)
            secret_key = any(part in k.lower() for part in SECRET_KEY_PARTS) and item not in (
                None,
                "",
                [],
                {},
            )
            if secret_key or (under_env and isinstance(item, str | int | float)):
                out[k] = MASK
            else:
                out[k] = mask_secrets(item, under_env=k == "env")
        return out
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


class DaemonView(Protocol):
    """What the admin API reads from the running daemon."""

    def healthy(self) -> bool: ...
    def ready(self) -> tuple[bool, str]: ...
    def status(self) -> dict[str, Any]: ...
    def resources(self, kind: ids.Kind | None, name: str | None) -> list[dict[str, Any]]: ...
    def inventory(self) -> dict[str, Any]: ...
    def request_reconcile(self, source: str | None) -> list[str]: ...
    def diff(self, source: str | None, files: Mapping[str, bytes]) -> dict[str, Any]: ...
    def metrics(self) -> tuple[bytes, str]: ...


def _json(data: Any, status: int = 200) -> ports.HttpResponse:
    body = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return ports.HttpResponse(status, body.encode("utf-8"), "application/json")


def _text(status: int, text: str) -> ports.HttpResponse:
    return ports.HttpResponse.text(status, text)


class AdminApi:
    """The admin API's request handler: routes by method and path to the `DaemonView`."""

    def __init__(self, view: DaemonView, *, max_diff_bytes: int = 64 * 1024 * 1024) -> None:
        self._view = view
        self._max_diff = max_diff_bytes

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        method, path = request.method, request.path.rstrip("/") or "/"
        get = method in ("GET", "HEAD")
        if path == "/healthz" and get:
            ok = self._view.healthy()
            return _text(200 if ok else 503, "ok\n" if ok else "unhealthy\n")
        if path == "/readyz" and get:
            ready, why = self._view.ready()
            return _text(200 if ready else 503, "ready\n" if ready else f"not ready: {why}\n")
        if path == "/metrics" and get:
            body, content_type = self._view.metrics()
            return ports.HttpResponse(200, body, headers={"Content-Type": content_type})
        if path == "/api/v1/status" and get:
            return _json(self._view.status())
        if path == "/api/v1/inventory" and get:
            return _json(self._view.inventory())
        if path == "/api/v1/reconcile" and method == "POST":
            return self._reconcile(request)
        if path == "/api/v1/diff" and method == "POST":
            return await self._diff(request)
        parts = path.split("/")
        if parts[:4] == ["", "api", "v1", "resources"] and len(parts) <= 6 and get:
            return self._resources(*parts[4:])
        known = path in _ROUTES or parts[:4] == ["", "api", "v1", "resources"]
        return _text(405, "method not allowed\n") if known else _text(404, "not found\n")

    def _resources(self, kind_text: str | None = None, name: str | None = None) -> ports.HttpResponse:
        kind = None
        if kind_text:
            kind = ids.parse_kind_name(kind_text)
            if kind is None:
                return _json({"error": f"unknown kind {kind_text!r}"}, 404)
        items = self._view.resources(kind, name)
        if name is not None and not items:
            return _json({"error": f"{kind_text}/{name} not found"}, 404)
        return _json({"items": items})

    def _reconcile(self, request: ports.HttpRequest) -> ports.HttpResponse:
        source = request.query.get("source")
        woke = self._view.request_reconcile(source)
        if source and not woke:
            return _json({"error": f"unknown source {source!r}"}, 404)
        return _json({"requested": True, "sources": woke}, 202)

    async def _diff(self, request: ports.HttpRequest) -> ports.HttpResponse:
        try:
            raw = await request.body(self._max_diff)
        except verify.Rejected as exc:
            return _json({"error": exc.detail}, exc.status)
        try:
            body = json.loads(raw)
            files = {str(p): base64.b64decode(c) for p, c in dict(body.get("files", {})).items()}
            source = body.get("source")
        except (ValueError, TypeError, AttributeError):
            return _json({"error": "expected JSON {source, files: {path: base64}}"}, 400)
        return _json(self._view.diff(str(source) if source else None, files))


_ROUTES = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/status",
        "/api/v1/inventory",
        "/api/v1/reconcile",
        "/api/v1/diff",
    }
)


async def start_site(api: AdminApi, address: str) -> tuple[httpserver.Server, str]:
    """Serve the admin API on `HOST:PORT` or `unix:PATH`; returns the server and the bound address."""
    server = httpserver.Server(api, address=address)
    bound = await server.start()
    return server, bound
