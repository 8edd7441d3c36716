"""The admin API (DESIGN.md section 4): health, readiness, metrics, status, resources, approvals.

Served on loopback or a unix socket by default, through the runtime's HTTP server adapter
(`aofd.runtime.httpserver`; a unix socket is created with `admin_api.socket_mode`, 0660, and
the optional `socket_group`). Read-only except `POST /api/v1/reconcile` (wake the sources and
run a pass), `POST /api/v1/diff` (plan a candidate tree against what runs, with the same
pure planner, off the event loop; nothing is applied) and the approval decisions below.

Access: with a token (`admin_api.token_file`, `--admin-token-file`, or the systemd credential
`admin-token`) or named operator tokens (`admin_api.tokens`, or the credentials
`admin-token-<name>`), every request but `/healthz` and `/readyz` (and `/metrics` when
`admin_api.metrics_open`) needs `Authorization: Bearer <token>`, hashed and compared with every
configured token in constant time; anything else is a bare 401 with `WWW-Authenticate: Bearer`.
A TCP bind other hosts can reach is refused at start-up without a token (`check_exposure`).
Tokens are never logged.

Approvals: `GET /api/v1/approvals` lists pending approval requests (commands and Approval-node steps);
`POST /api/v1/approvals/<id>/approve` and `.../deny` decide one through the command guard as
the named token's operator, `admin:<name>` (the unnamed token, or none, cannot: 403). `<id>` is
the request's 64 hex digits or a unique prefix (8 or more) of a pending one; a decision's
outcome maps to 200/202/403/404/409 (`decision_answer`).

Secret-bearing values (Context env values and kubeconfig from a variable, Trigger tokens,
secrets and `required_headers` values, secret values in a pending command's argv) are masked
in every response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import grp
import hashlib
import hmac
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from aofd import errors, settings
from aofd.daemon import config
from aofd.resources import ids, snapshot
from aofd.runtime import approvals as approvals_mod
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
LIST_SLICE_S = 0.005
"""Longest a resource listing holds the loop before it lets other work in (seconds)."""


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
    return _read_token(path, where)


def load_named_tokens(
    spec: settings.AdminApiSpec, *, environ: Mapping[str, str] | None = None, unnamed: str | None = None
) -> dict[str, str]:
    """Operators' tokens by name (`admin_api.tokens`): each from its `token_file`, else from the
    systemd credential `admin-token-<name>`, with the rules of `load_token`.

    Raises `ConfigError` (naming files and operators, never a token) when one cannot be read or
    is malformed, or when one token is given to two names or is also the unnamed token `unnamed`:
    the daemon must know whose token a request carries.
    """
    env = os.environ if environ is None else environ
    tokens: dict[str, str] = {}
    owners: dict[str, str] = {}
    for entry in spec.tokens:
        where = f"admin_api.tokens[{entry.name}]"
        path = entry.token_file
        if path is None:
            credential = f"{CREDENTIAL_NAME}-{entry.name}"
            directory = env.get("CREDENTIALS_DIRECTORY")
            path = Path(directory) / credential if directory else None
            if path is None or not path.is_file():
                raise errors.ConfigError(
                    f"{where}: no token_file and no systemd credential {credential} "
                    f"(LoadCredential={credential}:/etc/aofd/credentials/{credential})"
                )
            where = f"{where} (systemd credential {credential})"
        token = _read_token(path, where)
        if token == unnamed:
            raise errors.ConfigError(
                f"{where}: the token of {entry.name} is also admin_api.token_file's; an operator's "
                "token must be their own"
            )
        if token in owners:
            raise errors.ConfigError(
                f"admin_api.tokens: {owners[token]} and {entry.name} have the same token; "
                "each operator needs their own"
            )
        owners[token] = entry.name
        tokens[entry.name] = token
    return tokens


def _read_token(path: Path, where: str) -> str:
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


def check_exposure(address: str, *, token: str | None, named_tokens: int = 0) -> None:
    """Refuse an admin address other hosts can reach when no token (unnamed or named) guards it."""
    if token is None and not named_tokens and not is_local(address):
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
    def resources(self, kind: ids.Kind | None, name: str | None) -> Iterable[dict[str, Any]]: ...
    def inventory(self) -> dict[str, Any]: ...
    def request_reconcile(self, source: str | None) -> list[str]: ...
    def diff(self, source: str | None, files: Mapping[str, bytes]) -> dict[str, Any]: ...
    def metrics(self) -> tuple[bytes, str]: ...
    def approvals(self) -> list[dict[str, Any]]: ...
    def approval(self, request_id: str) -> dict[str, Any] | None: ...
    async def decide_approval(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals_mod.Decision: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who sent an authorized request: `name` is the operator of a named token, None for the
    unnamed token or an API without tokens (those may read, not decide approvals)."""

    name: str | None = None


_ANYONE = Caller()


def _json(data: Any, status: int = 200) -> ports.HttpResponse:
    body = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return ports.HttpResponse(status, body.encode("utf-8"), "application/json")


async def _json_off_loop(make: Callable[[], Any], one_at_a_time: asyncio.Semaphore) -> ports.HttpResponse:
    """`_json(make())`, built and encoded in a worker thread: the status of 100,000 resources is
    megabytes (7,000 listeners), and `json.dumps` with an indent runs as Python code, which lets
    the loop in every few ms from a thread, where on the loop it held it 40-100 ms per request.
    `make` must be safe in a thread: it returns data built for this response alone, or
    immutable data (nothing changes it meanwhile). One at a time: the worker threads are shared
    with reconcile passes and runs' checks, which a burst of status requests must not delay."""
    async with one_at_a_time:
        return await asyncio.to_thread(lambda: _json(make()))


async def _json_items(items: Iterable[Any]) -> tuple[bytes, int]:
    """`{"items": [...]}` as `_json` writes it, and the count; built and encoded item by item, with
    the loop let in every `LIST_SLICE_S`: listing 10,000 resources takes about 200 ms, which must
    not stall webhooks (`items` may be a generator that does the work as it is consumed)."""
    parts: list[str] = []
    due = time.monotonic() + LIST_SLICE_S
    for item in items:
        parts.append(json.dumps(item, indent=2, default=str).replace("\n", "\n    "))
        if time.monotonic() >= due:
            await asyncio.sleep(0)
            due = time.monotonic() + LIST_SLICE_S
    if not parts:
        return b'{\n  "items": []\n}\n', 0
    return ('{\n  "items": [\n    ' + ",\n    ".join(parts) + "\n  ]\n}\n").encode("utf-8"), len(parts)


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
        named_tokens: Mapping[str, str] | None = None,
        metrics_open: bool = False,
        max_diff_bytes: int = settings.AdminApiSpec().max_diff_bytes,
        limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    ) -> None:
        self._view = view
        # SHA-256 of each token with its operator (None: the unnamed one); a request's token is
        # hashed and compared with every one of them, so neither its length nor which one
        # matched shows in the time an answer takes.
        self._keys: tuple[tuple[bytes, str | None], ...] = tuple(
            [(_digest(token), None)] if token is not None else []
        ) + tuple((_digest(t), name) for name, t in (named_tokens or {}).items())
        self._metrics_open = metrics_open
        self._max_diff = max_diff_bytes
        self._limits = limits
        self._diff_busy = False
        self._encoding = asyncio.Semaphore(1)  # large responses encoded one at a time

    def _caller(self, request: ports.HttpRequest) -> Caller | None:
        """The authorized caller, or None (answer 401)."""
        if not self._keys:
            return _ANYONE
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        # A wrong scheme is compared too, and every key always is: timing tells nothing.
        digest = _digest(given.strip())
        matched, name = False, None
        for key, owner in self._keys:
            if hmac.compare_digest(digest, key):
                matched, name = True, owner
        if not matched or scheme.lower() != "bearer":
            return None
        return Caller(name)

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
        caller = _ANYONE if open_metrics else self._caller(request)
        if caller is None:
            return _unauthorized()
        if path == "/metrics" and get:
            body, content_type = self._view.metrics()
            return ports.HttpResponse(200, body, headers={"Content-Type": content_type})
        if path == "/api/v1/status" and get:
            status = self._view.status()  # built on the loop (it reads live state), encoded off it
            return await _json_off_loop(lambda: status, self._encoding)
        if path == "/api/v1/inventory" and get:
            # Built in the thread too: `inventory()` reads one immutable object (100k entries).
            return await _json_off_loop(self._view.inventory, self._encoding)
        if path == "/api/v1/reconcile" and method == "POST":
            return self._reconcile(request)
        if path == "/api/v1/diff" and method == "POST":
            return await self._diff(request)
        if path == "/api/v1/approvals" and get:
            return _json({"items": self._view.approvals()})
        parts = path.split("/")
        if parts[:4] == ["", "api", "v1", "approvals"] and len(parts) == 6 and parts[5] in _VERBS:
            if method != "POST":
                return _text(405, "method not allowed\n")
            return await self._decide(caller, parts[4], approve=parts[5] == "approve")
        if parts[:4] == ["", "api", "v1", "resources"] and len(parts) <= 6 and get:
            return await self._resources(*parts[4:])
        known = path in _ROUTES or parts[:4] == ["", "api", "v1", "resources"]
        return _text(405, "method not allowed\n") if known else _text(404, "not found\n")

    # -- approvals -------------------------------------------------------------------------

    async def _decide(self, caller: Caller, ref: str, *, approve: bool) -> ports.HttpResponse:
        """Approve or deny as the named token's operator, `admin:<name>`, through the guard."""
        if caller.name is None:
            return _json({"error": f"deciding an approval needs a named admin token: {NAMED_TOKENS}"}, 403)
        found = self._resolve(ref)
        if isinstance(found, ports.HttpResponse):
            return found
        user = ports.UserRef(
            id=f"{approvals_mod.ADMIN}:{caller.name}", name=caller.name, domain=approvals_mod.ADMIN
        )
        action_id = f"{approvals_mod.ADMIN}:{uuid.uuid4().hex}"
        decision = await self._view.decide_approval(found, user=user, approve=approve, action_id=action_id)
        item = self._view.approval(found)
        status, message = decision_answer(decision, user.id, approve=approve, item=item)
        return _json({"decision": decision.value, "message": message, "id": found, "approval": item}, status)

    def _resolve(self, ref: str) -> str | ports.HttpResponse:
        """A full request id, or the one pending request that starts with `ref` (8+ hex digits)."""
        ref = ref.lower()
        if _FULL_ID.fullmatch(ref):
            return ref
        if not _ID_PREFIX.fullmatch(ref):
            return _json(
                {
                    "decision": approvals_mod.Decision.UNKNOWN.value,
                    "error": f"no approval request {ref[:80]!r}: an id is {ID_CHARS} hex digits, "
                    f"or a unique prefix of at least {MIN_PREFIX} of a pending one",
                },
                404,
            )
        matches = [str(i["id"]) for i in self._view.approvals() if str(i["id"]).startswith(ref)]
        if not matches:
            return _json(
                {
                    "decision": approvals_mod.Decision.UNKNOWN.value,
                    "error": f"no pending approval request starts with {ref}",
                },
                404,
            )
        if len(matches) > 1:
            return _json(
                {
                    "error": f"{ref} is ambiguous: {len(matches)} pending requests start with it; "
                    "give more of the id",
                    "candidates": matches,
                },
                400,
            )
        return matches[0]

    async def _resources(self, kind_text: str | None = None, name: str | None = None) -> ports.HttpResponse:
        kind = None
        if kind_text:
            kind = ids.parse_kind_name(kind_text)
            if kind is None:
                return _json({"error": f"unknown kind {kind_text!r}"}, 404)
        body, count = await _json_items(self._view.resources(kind, name))
        if name is not None and not count:
            return _json({"error": f"{kind_text}/{name} not found"}, 404)
        return ports.HttpResponse(200, body, "application/json")

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


def decision_answer(
    decision: approvals_mod.Decision, who: str, *, approve: bool, item: Mapping[str, Any] | None
) -> tuple[int, str]:
    """The HTTP status and a sentence for an operator's decision (`aofctl approve` prints it)."""
    D = approvals_mod.Decision
    info = item or {}
    context = info.get("context", "?")
    got, needed = int(info.get("approvals", 0)), int(info.get("minApprovers", 1))
    if decision is D.GRANTED:
        return 200, f"granted by {who} ({got} of {needed} approvals): it goes ahead now"
    if decision is D.PENDING_MORE:
        more = max(1, needed - got)
        return 202, f"approval by {who} counted ({got} of {needed}): {more} more needed"
    if decision is D.DENIED:
        return 200, f"denied by {who}: it will not run"
    if decision is D.NOT_ALLOWED:
        if approve:
            why = f"{who} is not in Context {context}'s approval.allowed_users (add {who} there)"
        else:
            why = f"{who} may not deny: not in Context {context}'s approval.allowed_users, nor the requester"
        return 403, why
    if decision is D.SELF_NOT_ALLOWED:
        return 403, (
            f"{who} requested this command; Context {context} does not allow self-approval "
            "(approval.allow_self_approval)"
        )
    if decision is D.ALREADY_DECIDED:
        state = info.get("state", "decided")
        by = info.get("deniedBy") or ", ".join(info.get("approvedBy") or ()) or "someone"
        return 409, f"the request was already {state} (by {by})"
    if decision is D.EXPIRED:
        reason = info.get("reason") or "timeout"
        return 409, f"the request has expired ({reason}); the command did not run"
    if decision is D.DUPLICATE:
        return 409, f"{who} has already decided on this request"
    return 404, "no such approval request"


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
        "/api/v1/approvals",
    }
)
_VERBS = frozenset({"approve", "deny"})
ID_CHARS = 64
MIN_PREFIX = 8
_FULL_ID = re.compile(rf"[0-9a-f]{{{ID_CHARS}}}")
_ID_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},{ID_CHARS - 1}}}")
NAMED_TOKENS = "admin_api.tokens"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


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
