"""The admin API (DESIGN.md section 4): health, readiness, metrics, status, resources.

Served on loopback or a unix socket by default, through the runtime's HTTP server adapter
(`aofd.runtime.httpserver`; a unix socket is created with `admin_api.socket_mode`, 0660, and
the optional `socket_group`). Read-only except `POST /api/v1/reconcile` (wake the sources and
run a pass) and `POST /api/v1/diff` (plan a candidate tree against what runs, with the same
pure planner, off the event loop; nothing is applied).

Access: with a token (`admin_api.token_file`, `--admin-token-file`, or the systemd credential
`admin-token`) every request but `/healthz` and `/readyz` (and `/metrics` when
`admin_api.metrics_open`) needs `Authorization: Bearer <token>`, compared in constant time;
anything else is a bare 401 with `WWW-Authenticate: Bearer`. A TCP bind other hosts can reach
is refused at start-up without a token (`check_exposure`). The token is never logged.

Secret-bearing values (Context env values and kubeconfig from a variable, Trigger tokens,
secrets and `required_headers` values) are masked in every response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import grp
import hmac
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from aofd import errors, settings
from aofd.daemon import config
from aofd.resources import ids, snapshot
from aofd.runtime import httpserver, ports, verify

log = structlog.get_logger("aofd.admin")

SECRET_KEY_PARTS = ("token", "secret", "password", "api_key", "apikey", "routing_key", "private_key")
SECRET_MAPS = ("env", "required_headers", "requiredHeaders")
"""Maps whose every value is secret-bearing (the keys are names, shown)."""
MASK = "***"
CREDENTIAL_NAME = "admin-token"
"""The systemd credential (`LoadCredential=admin-token:...`) read when no token file is named."""
MIN_TOKEN_CHARS = 16
MAX_TOKEN_BYTES = 4096


def mask_secrets(value: Any, *, under_map: bool = False) -> Any:
    """Mask secret-looking fields, and every value of an `env` or `required_headers` map."""
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
            if secret_key or (under_map and isinstance(item, str | int | float)):
                out[k] = MASK
            else:
                out[k] = mask_secrets(item, under_map=k in SECRET_MAPS)
        return out
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


# --- access ---------------------------------------------------------------------------------


def load_token(spec: settings.AdminApiSpec, *, environ: Mapping[str, str] | None = None) -> str | None:
    """The admin token: `admin_api.token_file`, else `$CREDENTIALS_DIRECTORY/admin-token`, else None.

    Raises `ConfigError` (naming the file, never its content) when the file cannot be read,
    is empty, or is shorter than `MIN_TOKEN_CHARS`.
    """
    env = os.environ if environ is None else environ
    where = "admin_api.token_file"
    path = spec.token_file
    if path is None and env.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if candidate.is_file():
            path, where = candidate, f"systemd credential {CREDENTIAL_NAME}"
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise errors.ConfigError(f"{where} {path}: cannot read the admin token: {exc.strerror}") from None
    token = raw.decode("utf-8", "replace").strip()
    if (
        len(raw) > MAX_TOKEN_BYTES
        or not token
        or len(token) < MIN_TOKEN_CHARS
        or any(c.isspace() for c in token)
    ):
        raise errors.ConfigError(
            f"{where} {path}: the admin token must be one line of {MIN_TOKEN_CHARS} to "
            f"{MAX_TOKEN_BYTES} characters without spaces (try: openssl rand -hex 32 > {path})"
        )
    return token


is_local = config.is_local_address


def check_exposure(address: str, *, token: str | None) -> None:
    """Refuse an admin address other hosts can reach when no token guards it."""
    if token is None and not is_local(address):
        raise errors.ConfigError(
            f"admin API address {address} can be reached from other hosts but no admin token is "
            "set: set admin_api.token_file (or --admin-token-file, or the systemd credential "
            f"{CREDENTIAL_NAME}), or bind it to 127.0.0.1 or a unix: socket"
        )


def _unauthorized() -> ports.HttpResponse:
    return ports.HttpResponse.text(401, "unauthorized\n", headers={"WWW-Authenticate": 'Bearer realm="aofd"'})


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
    """The admin API's request handler: checks the token, routes by method and path to the `DaemonView`.

    `limits` are the sources' caps a posted diff tree must keep (file count, file and tree
    size); `max_diff_bytes` caps the request body (413 above it). One diff plans at a time, in
    a worker thread: a second concurrent one gets 429.
    """

    def __init__(
        self,
        view: DaemonView,
        *,
        token: str | None = None,
        metrics_open: bool = False,
        max_diff_bytes: int = settings.AdminApiSpec().max_diff_bytes,
        limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    ) -> None:
        self._view = view
        self._token = token.encode("utf-8") if token is not None else None
        self._metrics_open = metrics_open
        self._max_diff = max_diff_bytes
        self._limits = limits
        self._diff_busy = False

    def _authorized(self, request: ports.HttpRequest) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        # compare_digest on bytes of any length; a wrong scheme compares too, so timing tells nothing.
        match = hmac.compare_digest(given.strip().encode("utf-8"), self._token)
        return match and scheme.lower() == "bearer"

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        method, path = request.method, request.path.rstrip("/") or "/"
        get = method in ("GET", "HEAD")
        if path == "/healthz" and get:
            ok = self._view.healthy()
            return _text(200 if ok else 503, "ok\n" if ok else "unhealthy\n")
        if path == "/readyz" and get:
            ready, why = self._view.ready()
            return _text(200 if ready else 503, "ready\n" if ready else f"not ready: {why}\n")
        open_metrics = path == "/metrics" and get and self._metrics_open
        if not open_metrics and not self._authorized(request):
            return _unauthorized()
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
        if self._diff_busy:
            return _json({"error": "another diff is being planned; try again when it is done"}, 429)
        self._diff_busy = True  # one body in memory and one plan at a time
        try:
            try:
                raw = await request.body(self._max_diff)
            except verify.Rejected as exc:
                if exc.status == 413:
                    limit = f"the body is over the {self._max_diff}-byte limit (admin_api.max_diff_bytes)"
                    return _json({"error": limit}, 413)
                return _json({"error": exc.detail}, exc.status)
            # Decoding and planning a large tree takes seconds: never on the loop webhooks share.
            return await asyncio.to_thread(self._plan, raw)
        finally:
            self._diff_busy = False

    def _plan(self, raw: bytes) -> ports.HttpResponse:
        """In a worker thread: decode the posted tree, plan it, encode the answer."""
        try:
            files, source = self._candidate(raw)
        except _BadTree as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json(self._view.diff(source, files))

    def _candidate(self, raw: bytes) -> tuple[dict[str, bytes], str | None]:
        """The posted `{source, files: {path: base64}}`, within the sources' caps."""
        shape = "expected JSON {source, files: {path: base64}}"
        try:
            body = json.loads(raw)
        except ValueError:
            raise _BadTree(400, f"{shape}: the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("files", {}), dict):
            raise _BadTree(400, shape)
        posted: dict[Any, Any] = body.get("files", {})
        source = body.get("source")
        if source is not None and not isinstance(source, str):
            raise _BadTree(400, f"{shape}: source is a string")
        limits = self._limits
        if len(posted) > limits.max_files:
            raise _BadTree(
                413, f"the tree has {len(posted)} files; a source reads at most {limits.max_files}"
            )
        files: dict[str, bytes] = {}
        total = 0
        for path, content in posted.items():
            where = str(path)[:200]
            if not isinstance(content, str):
                raise _BadTree(400, f"{shape}: files[{where!r}] is not a base64 string")
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise _BadTree(400, f"files[{where!r}] is not valid base64") from None
            if len(data) > limits.max_file_bytes:
                raise _BadTree(
                    413,
                    f"{where}: {len(data)} bytes; a source reads files of at most {limits.max_file_bytes}",
                )
            total += len(data)
            if total > limits.max_tree_bytes:
                raise _BadTree(413, f"the tree is larger than a source's {limits.max_tree_bytes}-byte cap")
            if not path or path.startswith("/") or "\x00" in path or ".." in path.split("/"):
                raise _BadTree(400, f"files[{where!r}]: a path is relative, without '..'")
            files[path] = data
        return files, source or None


class _BadTree(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


async def start_site(
    api: AdminApi,
    address: str,
    *,
    socket_mode: int = 0o660,
    socket_group: str | None = None,
    limits: httpserver.Limits | None = None,
    stats: httpserver.Stats | None = None,
) -> tuple[httpserver.Server, str]:
    """Serve the admin API on `HOST:PORT` or `unix:PATH`; returns the server and the bound address.

    A unix socket is created with `socket_mode` (under a umask that cannot widen it) and then
    given `socket_group`; its mode is checked before the server is handed back. `limits` are the
    listener's timeouts and connection cap (`http:` in the daemon config), counted in `stats`.
    """
    gid = -1
    if socket_group is not None:
        try:
            gid = grp.getgrnam(socket_group).gr_gid
        except KeyError:
            raise errors.ConfigError(f"admin_api.socket_group {socket_group!r}: no such group") from None
    server = httpserver.Server(
        api, address=address, socket_mode=socket_mode, name="admin", limits=limits, stats=stats
    )
    bound = await server.start()
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        try:
            if gid != -1:
                os.chown(path, -1, gid)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode != socket_mode:
                raise errors.ConfigError(f"admin socket {path} has mode {mode:04o}, not {socket_mode:04o}")
        except BaseException:
            await server.stop()
            raise
    return server, bound
