"""The admin HTTP API (DESIGN.md section 4): health, readiness, metrics, status, resources.

Served on loopback or a unix socket by default. Read-only except `POST /api/v1/reconcile`
(wake the sources and run a pass) and `POST /api/v1/diff` (plan a candidate tree against
what runs, with the same pure planner; nothing is applied). Secret-bearing values (Context
env values, Trigger tokens and secrets) are masked in every response.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from aofd.resources import ids

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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, sort_keys=False, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


def make_app(view: DaemonView, *, max_diff_bytes: int = 64 * 1024 * 1024) -> web.Application:
    app = web.Application(client_max_size=max_diff_bytes)

    async def healthz(_: web.Request) -> web.Response:
        ok = view.healthy()
        return web.Response(text="ok\n" if ok else "unhealthy\n", status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, why = view.ready()
        return web.Response(text=("ready\n" if ok else f"not ready: {why}\n"), status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = view.metrics()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def status(_: web.Request) -> web.Response:
        return _json(view.status())

    def _kind(text: str) -> ids.Kind | None:
        return ids.parse_kind_name(text)

    async def resources(request: web.Request) -> web.Response:
        kind_text = request.match_info.get("kind")
        name = request.match_info.get("name")
        kind = None
        if kind_text:
            kind = _kind(kind_text)
            if kind is None:
                return _json({"error": f"unknown kind {kind_text!r}"}, 404)
        items = view.resources(kind, name)
        if name is not None and not items:
            return _json({"error": f"{kind_text}/{name} not found"}, 404)
        return _json({"items": items})

    async def inventory(_: web.Request) -> web.Response:
        return _json(view.inventory())

    async def reconcile(request: web.Request) -> web.Response:
        source = request.query.get("source")
        woke = view.request_reconcile(source)
        if source and not woke:
            return _json({"error": f"unknown source {source!r}"}, 404)
        return _json({"requested": True, "sources": woke}, 202)

    async def diff(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            files = {str(p): base64.b64decode(c) for p, c in dict(body.get("files", {})).items()}
            source = body.get("source")
        except (ValueError, TypeError, AttributeError):
            return _json({"error": "expected JSON {source, files: {path: base64}}"}, 400)
        return _json(view.diff(str(source) if source else None, files))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/resources", resources)
    app.router.add_get("/api/v1/resources/{kind}", resources)
    app.router.add_get("/api/v1/resources/{kind}/{name}", resources)
    app.router.add_get("/api/v1/inventory", inventory)
    app.router.add_post("/api/v1/reconcile", reconcile)
    app.router.add_post("/api/v1/diff", diff)
    return app


async def start_site(app: web.Application, address: str) -> tuple[web.AppRunner, str]:
    """Serve `app` on `HOST:PORT` or `unix:PATH`; return the runner and the bound address."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        site: web.BaseSite = web.UnixSite(runner, path)
        await site.start()
        return runner, address
    host, port = split_hostport(address)
    tcp = web.TCPSite(runner, host, port, reuse_address=True)
    await tcp.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    return runner, f"{host}:{bound}"


def split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


Handler = Callable[[web.Request], Any]
