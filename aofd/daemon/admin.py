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

Runs started by hand: `POST /api/v1/runs` `{"binding", "input"}` starts one run of a binding of a
Manual trigger as the named token's operator (`admin:<name>`; others: 403), through the daemon's
dispatcher (`DaemonView.start_run`): 202 with the run id, 404/409/503 saying why not.

The status web page (`aofd.daemon.webui`): `/ui/...` serves its files and its sign-in form,
which starts a session whose cookie (a random id) reads the page's routes only, GET and HEAD
(`_caller`). Its read-only data: `GET /api/v1/runs[/<id>]`, `/api/v1/graph[?focus=Kind/name]`,
`/api/v1/audit[/<context>[?verify=1]]`. Browser checks (`__call__`): without tokens, a
non-loopback `Host` is refused (DNS rebinding); a write a browser sends from another site, or
with the page's cookie from anywhere but the page, is refused; every answer says `nosniff`.

Memory: `GET /api/v1/memory?context=C&binding=B&thread=T` shows one remembered conversation
(`aofd.runtime.memory`); `DELETE` with the same query forgets it, as the named token's operator
(audited `memory.cleared`; the unnamed token cannot: 403).

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
from aofd.daemon import config, webui
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
    def start_run(self, binding: str, *, text: str, user: ports.UserRef) -> ports.RouteOutcome:
        """Start binding `binding` of a Manual trigger for `text` as `user`.

        Raises:
            LookupError: no such binding. ValueError: its trigger is not Manual.
        """
        ...

    def runs(self, binding: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def run(self, run_id: str) -> dict[str, Any] | None: ...
    def graph(self, focus: str | None) -> dict[str, Any]: ...
    async def audit(self) -> list[dict[str, Any]]: ...
    async def audit_tail(
        self, context: str, lines: int, *, verify: bool = False
    ) -> dict[str, Any] | None: ...
    async def memory_show(self, context: str, binding: str, thread: str) -> list[dict[str, Any]] | None:
        """The stored copies of one conversation (`aofd.runtime.memory`), None when there is none."""
        ...

    async def memory_clear(self, context: str, binding: str, thread: str, *, user: ports.UserRef) -> int:
        """Forget one conversation (audited `memory.cleared`); how many stored copies were removed.
        `LookupError` (nothing audited) for a Context the daemon neither runs nor keeps memory for."""
        ...


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
        self._sessions = webui.Sessions()  # the web page's sign-ins (opaque ids, never tokens)
        self._ui = webui.WebUi(
            authorized=lambda r: self._caller(r) is not None,
            matches=self._match,
            open_=not self._keys,
            sessions=self._sessions,
        )

    def _match(self, given: str) -> tuple[bool, str | None]:
        """Whether `given` is one of the tokens, and its operator. Every key is always compared:
        the time taken tells nothing of which matched or how long the token is."""
        digest = _digest(given.strip())
        matched, name = False, None
        for key, owner in self._keys:
            if hmac.compare_digest(digest, key):
                matched, name = True, owner
        return matched, name

    def _caller(self, request: ports.HttpRequest) -> Caller | None:
        """The authorized caller, or None (answer 401). The web page's session cookie
        (`webui.COOKIE`, an opaque id of a `webui.Sessions` sign-in) counts for GET and HEAD of
        the page's own routes only (`_PAGE_READS`): a page can read what it shows, never decide,
        reconcile, diff, start runs, read memory or metrics."""
        if not self._keys:
            return _ANYONE
        header = request.headers.get("Authorization", "").strip()
        if not header:
            if request.method not in ("GET", "HEAD") or not _page_read(request.path):
                return None
            for sid in webui.cookie_values(request.headers.get("Cookie", "")):
                session = self._sessions.get(sid)
                if session is not None:
                    return _ANYONE  # read-only, whoever signed in
            return None
        scheme, _, given = header.partition(" ")
        # A wrong scheme is compared too: timing tells nothing.
        matched, name = self._match(given)
        if not matched or scheme.lower() != "bearer":
            return None
        return Caller(name)

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        """`_route`, behind the browser checks: without tokens only a loopback `Host` (a
        DNS-rebound name is refused); a write a browser sends from another site's page, or with
        the page's cookie from anywhere but the page, is refused (`aofctl` sends no `Origin`);
        every answer says `nosniff` and may not be framed."""
        path = request.path.rstrip("/") or "/"
        host = request.headers.get("Host", "")
        if not self._keys and host and not webui.loopback_host(host) and path not in ("/healthz", "/readyz"):
            answer = _text(
                403, "forbidden: without admin tokens the admin API answers to a loopback Host only\n"
            )
        elif request.method not in ("GET", "HEAD") and (
            webui.cross_site(request)
            or (webui.cookie_values(request.headers.get("Cookie", "")) and not webui.same_origin(request))
        ):
            answer = _text(403, "forbidden: a cross-site request\n")
        else:
            answer = await self._route(request)
        if answer.headers and "Content-Security-Policy" in answer.headers:
            return answer
        return answer._replace(headers={**API_HEADERS, **(answer.headers or {})})

    async def _route(self, request: ports.HttpRequest) -> ports.HttpResponse:
        method, path = request.method, request.path.rstrip("/") or "/"
        get = method in ("GET", "HEAD")
        if path == "/healthz" and get:
            ok = self._view.healthy()
            return _text(200 if ok else 503, "ok\n" if ok else "unhealthy\n")
        if path == "/readyz" and get:
            ready, why = self._view.ready()
            return _text(200 if ready else 503, "ready\n" if ready else f"not ready: {why}\n")
        if path == "/ui" or path.startswith("/ui/"):
            return await self._ui(request)  # the web page checks access itself (its sign-in form)
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
        if path == "/api/v1/runs" and method == "POST":
            return await self._start_run(caller, request)
        if path == "/api/v1/approvals" and get:
            return _json({"items": self._view.approvals()})
        parts = path.split("/")
        if parts[:4] == ["", "api", "v1", "approvals"] and len(parts) == 6 and parts[5] in _VERBS:
            if method != "POST":
                return _text(405, "method not allowed\n")
            return await self._decide(caller, parts[4], approve=parts[5] == "approve")
        if parts[:4] == ["", "api", "v1", "resources"] and len(parts) <= 6 and get:
            return await self._resources(*parts[4:])
        if parts[:4] in (_RUNS, _GRAPH, _AUDIT) and get:
            return await self._page_data(request, parts)
        if path == "/api/v1/memory" and method in ("GET", "HEAD", "DELETE"):
            return await self._memory(caller, request)
        known = path in _ROUTES or parts[:4] in (_RUNS, _GRAPH, _AUDIT, ["", "api", "v1", "resources"])
        return _text(405, "method not allowed\n") if known else _text(404, "not found\n")

    # -- the web page's data (webui.Pages) -------------------------------------------------

    async def _page_data(self, request: ports.HttpRequest, parts: list[str]) -> ports.HttpResponse:
        """`/api/v1/runs[/<id>]`, `/api/v1/graph`, `/api/v1/audit[/<context>]`: read-only."""
        if parts[:4] == _RUNS and len(parts) == 4:
            binding = request.query.get("binding") or None
            limit = _int_arg(request.query.get("limit"), 50)
            return _json({"items": self._view.runs(binding, limit)})
        if parts[:4] == _RUNS and len(parts) == 5:
            found = await self._view.run(parts[4])
            return _json(found) if found is not None else _json({"error": f"no run {parts[4][:40]!r}"}, 404)
        if parts[:4] == _GRAPH and len(parts) == 4:
            focus = request.query.get("focus") or None
            data = self._view.graph(focus)
            return _json(data, 404 if data.get("error") else 200)
        if parts[:4] == _AUDIT and len(parts) == 4:
            return _json({"items": await self._view.audit()})
        if parts[:4] == _AUDIT and len(parts) == 5:
            lines = _int_arg(request.query.get("lines"), 50)
            check = request.query.get("verify", "") in ("1", "true")
            tail = await self._view.audit_tail(parts[4], lines, verify=check)
            if tail is None:
                return _json({"error": f"no audit log for Context {parts[4][:80]!r}"}, 404)
            return _json(tail)
        return _text(404, "not found\n")

    # -- conversation memory (`aofctl memory`) -----------------------------------------------------

    async def _memory(self, caller: Caller, request: ports.HttpRequest) -> ports.HttpResponse:
        """`GET /api/v1/memory?context=C&binding=B&thread=T`: the conversation's turns; `DELETE`:
        forget it, as the named token's operator (audited `memory.cleared` in the Context's log).
        400 a `context` that is not a Context name (a DNS-1123 label); 404 (nothing audited) a
        Context this daemon neither runs nor keeps memory for."""
        query = request.query
        context, binding, thread = (query.get(k, "").strip() for k in ("context", "binding", "thread"))
        missing = [k for k, v in (("context", context), ("binding", binding), ("thread", thread)) if not v]
        if missing:
            return _json({"error": f"missing query parameters: {', '.join(missing)}"}, 400)
        if not _CONTEXT_NAME.fullmatch(context):
            return _json({"error": f"{context[:80]!r} is not a Context name (a DNS-1123 label)"}, 400)
        where = {"context": context, "binding": binding, "thread": thread}
        if request.method != "DELETE":
            found = await self._view.memory_show(context, binding, thread)
            if found is None:
                return _json({**where, "error": "no such conversation"}, 404)
            return _json({**where, "stores": found})
        if caller.name is None:
            return _json({"error": f"clearing a conversation needs a named admin token: {NAMED_TOKENS}"}, 403)
        user = ports.UserRef(
            id=f"{approvals_mod.ADMIN}:{caller.name}", name=caller.name, domain=approvals_mod.ADMIN
        )
        try:
            removed = await self._view.memory_clear(context, binding, thread, user=user)
        except LookupError:  # `memory.UnknownContext`: nothing was audited
            return _json({**where, "error": f"no such Context: {context}"}, 404)
        except errors.AuditUnavailable as exc:
            return _json({**where, "error": f"audit unavailable: {exc}"}, 503)
        return _json({**where, "removed": removed}, 200 if removed else 404)

    # -- runs started by hand (Manual triggers) -------------------------------------------------

    async def _start_run(self, caller: Caller, request: ports.HttpRequest) -> ports.HttpResponse:
        """`POST /api/v1/runs` `{"binding": ID, "input": TEXT}`: start one run of a binding whose
        trigger is Manual, as the named token's operator (`admin:<name>`), through the same
        dispatcher, guard and audit as any event. 202 with the run id; 400 an empty input; 403 the
        binding's (or its trigger's) `users` filter does not name `admin:<name>` (audited by the
        dispatcher); 404 no such binding; 409 its trigger is not Manual; 503 (with `Retry-After`)
        its binding cannot run now. Every refusal is logged at warning."""
        if caller.name is None:
            log.warning("run.refused", status=403, why="unnamed admin token")
            return _json({"error": f"starting a run needs a named admin token: {NAMED_TOKENS}"}, 403)
        try:
            raw = await request.body(MAX_RUN_BODY)
        except verify.Rejected as exc:
            too_large = f"the body is over {MAX_RUN_BODY} bytes"
            return _json({"error": too_large if exc.status == 413 else exc.detail}, exc.status)
        shape = 'expected JSON {"binding": NAME, "input": TEXT}'
        try:
            body = json.loads(raw)
        except ValueError:
            return _json({"error": f"{shape}: the body is not JSON"}, 400)
        binding = body.get("binding") if isinstance(body, dict) else None
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(binding, str) or not binding or not isinstance(text, str):
            return _json({"error": shape}, 400)
        if not text.strip():
            return _json({"error": f"{shape}: the input is empty"}, 400)
        user = ports.UserRef(
            id=f"{approvals_mod.ADMIN}:{caller.name}", name=caller.name, domain=approvals_mod.ADMIN
        )
        try:
            outcome = self._view.start_run(binding, text=text, user=user)
        except LookupError as exc:
            log.warning("run.refused", status=404, binding=binding[:200], user=user.id, why=str(exc))
            return _json({"error": str(exc)}, 404)
        except ValueError as exc:
            log.warning("run.refused", status=409, binding=binding[:200], user=user.id, why=str(exc))
            return _json({"error": str(exc)}, 409)
        answer: dict[str, Any] = {"outcome": outcome.outcome, "binding": outcome.binding or binding}
        if outcome.started:
            answer.update(run_id=outcome.run_id, context=outcome.context, user=user.id)
            return _json(answer, 202)
        answer["error"] = outcome.detail or outcome.outcome
        if outcome.outcome in ("stalled", "stopping"):
            body_bytes = (json.dumps(answer, indent=2) + "\n").encode()
            return ports.HttpResponse(503, body_bytes, "application/json", headers={"Retry-After": "30"})
        if outcome.outcome == "filtered":
            return _json(answer, 403)
        return _json(answer, 404 if outcome.outcome == "unknown_binding" else 500)

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
    if decision is D.UNRECORDED:
        return 503, "the decision could not be recorded (etcd is unreachable); nothing was changed: try again"
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
        "/api/v1/memory",
    }
)
_VERBS = frozenset({"approve", "deny"})
_PAGE_PREFIXES = ("/ui/", "/api/v1/resources/", "/api/v1/runs/", "/api/v1/audit/")
_PAGE_PATHS = frozenset(
    {
        "/ui",
        "/api/v1/status",
        "/api/v1/resources",
        "/api/v1/runs",
        "/api/v1/graph",
        "/api/v1/approvals",
        "/api/v1/audit",
    }
)
API_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
"""On every admin API answer but the page's own (which carry `webui.SECURITY_HEADERS`)."""


def _page_read(path: str) -> bool:
    """Whether the web page reads `path` (what its session cookie may be used for)."""
    path = path.rstrip("/") or "/"
    return path in _PAGE_PATHS or path.startswith(_PAGE_PREFIXES)


_RUNS = ["", "api", "v1", "runs"]
_GRAPH = ["", "api", "v1", "graph"]
_AUDIT = ["", "api", "v1", "audit"]


def _int_arg(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


ID_CHARS = 64
MIN_PREFIX = 8
_CONTEXT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_FULL_ID = re.compile(rf"[0-9a-f]{{{ID_CHARS}}}")
_ID_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},{ID_CHARS - 1}}}")
NAMED_TOKENS = "admin_api.tokens"
MAX_RUN_BODY = 64 * 1024
"""The largest `POST /api/v1/runs` body (the run's input text is in it)."""


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
