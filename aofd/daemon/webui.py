"""The status web page: `/ui/` on the admin listener, read-only, and the data only it asks for.

This module owns two things:

- `WebUi`: the page's static files (`aofd/daemon/ui/`: one HTML page, one stylesheet, one
  script; no build step, nothing from another origin), the sign-in form, and the headers every
  page answer carries (`SECURITY_HEADERS`: a Content-Security-Policy that allows this origin's
  script and style files only and no framing, `nosniff`, no referrer, no caching).
- `Pages`: the admin API's read-only answers the page needs and no other endpoint gives: recent
  runs (`/api/v1/runs`), one run with its flow as a laid-out graph and its audit records (tool
  calls with the guard's decisions, approvals and who decided; `/api/v1/runs/<id>`), the
  composition graph (`/api/v1/graph`), and each Context's audit log tail with the verdict of the
  same check `aofctl audit verify` runs (`/api/v1/audit[/<context>]`; a log is checked only on
  request, `verify=1`, again only when a segment changed and at most every `REVERIFY_S`, one
  log at a time, in a worker thread).
- The browser checks the admin API applies (`loopback_host`, `same_origin`, `cross_site`).

Access is the admin API's (`aofd.daemon.admin`): with admin tokens configured, the sign-in form
takes one and starts a session (`Sessions`): an HttpOnly, SameSite=Strict cookie (`COOKIE`)
holding a random id, never the token, for `SESSION_S`, that the API accepts for GET and HEAD of
the page's own routes only, so no page can be made to approve, deny, reconcile or diff (those
still need `Authorization: Bearer`). Without tokens, the page is as open as the API.

Nothing here shows more than the API does: run output and errors go through `redact_shown` (the
daemon's known secret values, the audit log's text redaction, PEM keys, secret-named variables)
and are capped; audit records were redacted when written.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from aofd.audit import records, redact, segment, tail, verify
from aofd.plan import extract, graph, layout
from aofd.resources import ids
from aofd.runtime import ports
from aofd.runtime import verify as http_verify

if TYPE_CHECKING:  # the daemon builds the pages; the pages never build a daemon
    from aofd.daemon.main import Daemon

log = structlog.get_logger("aofd.webui")

STATIC = Path(__file__).with_name("ui")
"""The page's files, shipped as package data."""
FILES: Mapping[str, str] = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "login.html": "text/html",
}
PUBLIC = frozenset({"login.html", "app.css"})
"""Served without a token: the sign-in form and its stylesheet (no data in either)."""
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
COOKIE = "aofd_ui"
SESSION_S = 8 * 3600.0
"""How long a sign-in lasts (the cookie's `Max-Age`; the daemon forgets it then too)."""
MAX_SESSIONS = 1024
"""Sign-ins kept at once; the oldest is signed out first."""
FAILED_LOG_S = 60.0
"""Failed sign-ins are logged at most once this often (with how many there were)."""
MAX_LOGIN_BYTES = 8192
MAX_RUNS = 200
MAX_AUDIT_LINES = 500
RUN_AUDIT_SCAN = 5000
"""How many of a Context's newest audit lines are searched for one run's records."""
MAX_GRAPH_NODES = 400
"""A composition graph larger than this is drawn only around one resource (`focus`)."""
MAX_TEXT_CHARS = 4000
"""A node's output, a run's answer or error, as the page shows it (the history keeps up to 8000)."""
MAX_PROBLEMS = 20
REVERIFY_S = 30.0
"""A log is checked only when asked (`?verify=1`: the Audit page's button), and one that changed
again at most this often: a check reads the whole log (about 1 s for 30 MB)."""


def security_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**SECURITY_HEADERS, **(extra or {})}


@functools.cache
def _static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def cookie_values(header: str) -> list[str]:
    """Every value of the page's cookie in a `Cookie` header, in order.

    Parsed by hand (pairs split on `;`): a header also carries other applications' cookies
    (any port of this host can set one), and one this parser does not like must not hide ours."""
    out = []
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name.strip() == COOKIE:
            value = value.strip().strip('"')
            if value:
                out.append(value)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: whose token signed in (None: the unnamed one) and until when."""

    name: str | None
    expires: float


class Sessions:
    """The page's sign-ins: an opaque random id (the cookie's value, never a token) mapped to a
    `Session`. At most `limit` (the oldest goes first), each for `ttl` seconds; signing out
    revokes one. Ids are kept hashed, so a lookup's time tells nothing of the stored ones."""

    def __init__(
        self,
        *,
        ttl: float = SESSION_S,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._by_id: dict[bytes, Session] = {}

    @property
    def ttl(self) -> float:
        return self._ttl

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, name: str | None) -> str:
        """A new session for the operator `name`; its id (the cookie's value)."""
        now = self._clock()
        for key in [k for k, v in self._by_id.items() if v.expires <= now]:
            del self._by_id[key]
        while len(self._by_id) >= self._limit:
            del self._by_id[next(iter(self._by_id))]
        sid = secrets.token_urlsafe(32)
        self._by_id[_sid_key(sid)] = Session(name, now + self._ttl)
        return sid

    def get(self, sid: str) -> Session | None:
        key = _sid_key(sid)
        found = self._by_id.get(key)
        if found is not None and found.expires <= self._clock():
            del self._by_id[key]
            return None
        return found

    def close(self, sid: str) -> None:
        self._by_id.pop(_sid_key(sid), None)


def _sid_key(sid: str) -> bytes:
    return hashlib.sha256(sid.encode("utf-8", "surrogateescape")).digest()


LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


def host_name(host: str) -> str:
    """The name in a `Host` header value (`[::1]:8080` -> `::1`, `Example:80` -> `example`)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def loopback_host(host: str) -> bool:
    """Whether a `Host` header names this machine's loopback (what a DNS-rebound name never is)."""
    name = host_name(host)
    return (
        name in LOOPBACK_HOSTS
        or name.endswith(".localhost")
        or re.fullmatch(r"127(\.\d{1,3}){3}", name) is not None
    )


def same_origin(request: ports.HttpRequest) -> bool:
    """Whether the browser says the request comes from a page of this origin: `Origin` naming
    the `Host` the request was sent to, or (no `Origin`, or `null`) `Sec-Fetch-Site: same-origin`."""
    headers = request.headers
    origin = headers.get("Origin", "").strip()
    if origin and origin != "null":
        parts = urllib.parse.urlsplit(origin)
        return (
            parts.scheme in ("http", "https")
            and parts.netloc.lower() == headers.get("Host", "").strip().lower()
        )
    return headers.get("Sec-Fetch-Site", "").strip().lower() == "same-origin"


def cross_site(request: ports.HttpRequest) -> bool:
    """Whether a browser says the request comes from another site's page (a request without
    `Origin` or `Sec-Fetch-Site`, as `aofctl` sends, is not)."""
    headers = request.headers
    if headers.get("Origin", "").strip() or headers.get("Sec-Fetch-Site", "").strip().lower() not in (
        "",
        "none",
    ):
        return not same_origin(request)
    return False


class WebUi:
    """Serves `/ui/...`: `authorized` says whether a request may read (token or session cookie),
    `matches` whether a token typed into the sign-in form is one of the admin tokens (and whose),
    and `open_` whether the API has no token at all (then there is nothing to sign in with).
    Signing in and out must come from a page of this origin (`same_origin`)."""

    def __init__(
        self,
        *,
        authorized: Callable[[ports.HttpRequest], bool],
        matches: Callable[[str], tuple[bool, str | None]],
        open_: bool,
        sessions: Sessions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authorized = authorized
        self._matches = matches
        self._open = open_
        self._sessions = sessions
        self._clock = clock
        self._failed = 0
        self._failed_logged = -FAILED_LOG_S

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        path = request.path
        name = path[len("/ui/") :] if path.startswith("/ui/") else ""
        if path == "/ui":
            return _redirect("/ui/")
        if name in ("login", "logout") and request.method == "POST":
            if not same_origin(request):
                return _page_text(403, "forbidden: sign in and out from this page only\n")
            if name == "login":
                return await self._login(request)
            for sid in cookie_values(request.headers.get("Cookie", "")):
                self._sessions.close(sid)
            return _redirect("/ui/login", cookie=self._cookie("", request, max_age=0))
        if request.method not in ("GET", "HEAD"):
            return _page_text(405, "method not allowed\n")
        if name == "login":
            return _redirect("/ui/") if self._open else _file("login.html")
        if name in ("", "index.html"):
            name = "index.html"
        if name not in FILES:
            return _page_text(404, "not found\n")
        if name not in PUBLIC and not self._authorized(request):
            if name == "index.html":
                return _redirect("/ui/login")
            return _page_text(401, "unauthorized\n")
        return _file(name)

    async def _login(self, request: ports.HttpRequest) -> ports.HttpResponse:
        if self._open:
            return _redirect("/ui/")
        try:
            raw = await request.body(MAX_LOGIN_BYTES)
        except http_verify.Rejected:  # too large, short: a failed sign-in
            raw = b""
        try:
            form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:  # more fields than a sign-in has: a failed sign-in
            form = {}
        token = (form.get("token") or [""])[0].strip()
        matched, name = self._matches(token) if token else (False, None)
        if not matched:
            self._note_failed(request)
            return _redirect("/ui/login#failed")
        sid = self._sessions.open(name)
        return _redirect("/ui/", cookie=self._cookie(sid, request, max_age=int(self._sessions.ttl)))

    def _note_failed(self, request: ports.HttpRequest) -> None:
        self._failed += 1
        now = self._clock()
        if now - self._failed_logged >= FAILED_LOG_S:
            log.warning("web page sign-in failed", failed=self._failed, remote=request.remote or "unix")
            self._failed, self._failed_logged = 0, now

    @staticmethod
    def _cookie(value: str, request: ports.HttpRequest, *, max_age: int) -> str:
        """The session cookie; `Secure` when the browser came over https (a TLS proxy in front)."""
        headers = request.headers
        secure = headers.get("Origin", "").strip().lower().startswith("https://") or (
            headers.get("X-Forwarded-Proto", "").strip().lower() == "https"
        )
        return f"{COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict" + (
            "; Secure" if secure else ""
        )


def _file(name: str) -> ports.HttpResponse:
    return ports.HttpResponse(200, _static(name), FILES[name], security_headers())


def _page_text(status: int, text: str) -> ports.HttpResponse:
    return ports.HttpResponse.text(status, text, headers=security_headers())


def _redirect(location: str, *, cookie: str | None = None) -> ports.HttpResponse:
    extra = {"Location": location}
    if cookie is not None:
        extra["Set-Cookie"] = cookie
    return ports.HttpResponse.text(303, f"see {location}\n", headers=security_headers(extra))


# --- data ------------------------------------------------------------------------------------


MIN_SECRET_CHARS = 6
"""Known secret values shorter than this are not searched for (they would hide ordinary words)."""
_PAGE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a PEM private key, whole (or up to the end of a capped text)
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
        ),
        redact.REDACTED,
    ),
    # `PGPASSWORD=...`, `DB_SECRET=...`, `AWS_SECRET_ACCESS_KEY=...`: a variable named like a secret
    (
        re.compile(
            r"(?i)\b([A-Z0-9_]*(?:PASSWORD|PASSWD|_SECRET|SECRET_[A-Z0-9_]*|_KEY|_TOKEN)[\"']?\s*[=:]\s*)"
            r"(?!\[REDACTED\])[\"']?[^\s\"',;&]+[\"']?"
        ),
        r"\1" + redact.REDACTED,
    ),
)


class KnownSecrets:
    """Replaces the secret values the daemon holds (`MIN_SECRET_CHARS` or longer) wherever they
    appear in a text, longest first: what run output may echo that no pattern recognises."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        found = sorted({v for v in values if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, found))) if found else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(redact.REDACTED, text) if self._pattern is not None else text


NO_SECRETS = KnownSecrets()


def redact_shown(text: str, known: KnownSecrets = NO_SECRETS) -> str:
    """A text as the page shows it: known secret values, then the audit log's patterns and the
    page's own (PEM private keys, `*PASSWORD=`/`*_SECRET=`/`*_KEY=` assignments)."""
    text = redact.redact_text(known(text))
    for pattern, replacement in _PAGE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _capped(text: Any, known: KnownSecrets = NO_SECRETS) -> Any:
    if not isinstance(text, str):
        return text
    text = redact_shown(text, known)
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…"


def _redacted_output(value: Any, known: KnownSecrets, depth: int = 0) -> Any:
    """Every string of a node's output redacted (`redact_shown`) and capped; a value under a
    secret-sounding key, or paired with one (`["api_key", "..."]`), replaced whole."""
    if depth > 16:
        return None
    if isinstance(value, str):
        return _capped(value, known)
    if isinstance(value, Mapping):
        return {
            str(k): (
                redact.REDACTED if redact.is_secret_key(str(k)) else _redacted_output(v, known, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and redact.is_secret_key(value[0]):
            return [value[0], redact.REDACTED]
        return [_redacted_output(v, known, depth + 1) for v in value]
    return value


def shown_run(run: Mapping[str, Any], *, outputs: bool, known: KnownSecrets = NO_SECRETS) -> dict[str, Any]:
    """A run record (`RunRecord.as_dict`) as the page shows it: answer, error and node outputs
    redacted (`redact_shown`, with the daemon's `known` secret values) and capped; without
    `outputs`, node outputs are left out (the runs lists)."""
    out = dict(run)
    out["answer"] = _capped(run.get("answer"), known)
    out["error"] = _capped(run.get("error"), known)
    nodes = []
    for node in run.get("nodes") or ():
        item = dict(node)
        item["error"] = _capped(node.get("error"), known)
        if outputs:
            item["output"] = _redacted_output(node.get("output"), known)
        else:
            item.pop("output", None)
        nodes.append(item)
    out["nodes"] = nodes
    return out


def flow_graph(spec: Mapping[str, Any] | None, nodes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A flow's nodes and connections (its masked spec) with each node's run status, laid out.

    Nodes the run recorded but the spec does not name (a flow changed since, an agent binding's
    one node) are added; with no connections at all, the recorded nodes are drawn in the order
    they ran."""
    recorded = {str(n.get("id")): n for n in nodes}
    declared = [
        (str(node["id"]), str(node.get("type") or ""))
        for node in (spec or {}).get("nodes") or ()
        if isinstance(node, Mapping) and node.get("id")
    ]
    edges: list[tuple[str, str, str]] = []
    for conn in (spec or {}).get("connections") or ():
        if isinstance(conn, Mapping) and conn.get("from") and conn.get("to"):
            label = conn.get("condition") or conn.get("when") or ""
            edges.append((str(conn["from"]), str(conn["to"]), str(label) if isinstance(label, str) else ""))
    ids_ = [node_id for node_id, _ in declared]
    types = dict(declared)
    for node_id, node in recorded.items():
        if node_id not in types:
            ids_.append(node_id)
            types[node_id] = str(node.get("type") or "")
    if any(a == "start" or b == "start" for a, b, _ in edges) and "start" not in types:
        ids_.insert(0, "start")
        types["start"] = "start"
    if not edges and len(ids_) > 1:
        edges = [(a, b, "") for a, b in itertools.pairwise(ids_)]
    placed = layout.layered(ids_, [(a, b) for a, b, _ in edges])
    out_nodes = []
    for place in placed:
        node = recorded.get(place.id) or {}
        out_nodes.append(
            {
                "id": place.id,
                "type": types.get(place.id, ""),
                "layer": place.layer,
                "slot": place.slot,
                "status": node.get("status") or ("started" if place.id == "start" else "not run"),
                "duration_ms": node.get("duration_ms"),
            }
        )
    known = set(types)
    return {
        "nodes": out_nodes,
        "edges": [{"from": a, "to": b, "label": label} for a, b, label in edges if a in known and b in known],
    }


def audit_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    """One audit record, as the page lists it (the log's own, already redacted, values)."""
    event, aofd, user, process = (_sub(record, k) for k in ("event", "aofd", "user", "process"))
    audit, approval = _sub(aofd, "audit"), _sub(aofd, "approval")
    approver = _sub(approval, "approver")
    decision = aofd.get("decision")
    return {
        "seq": audit.get("seq"),
        "time": record.get("@timestamp"),
        "action": event.get("action"),
        "outcome": event.get("outcome"),
        "reason": event.get("reason"),
        "user": user.get("id"),
        "command": process.get("command_line"),
        "exitCode": process.get("exit_code"),
        "runId": records.run_id_of(record) or None,
        "approvalId": approval.get("id"),
        "approver": approver.get("id"),
        "decision": decision if isinstance(decision, str | Mapping) else None,
        "message": record.get("message"),
    }


def _sub(record: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = record.get(key)
    return value if isinstance(value, Mapping) else {}


def _parse(line: bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, Mapping) else None


@dataclasses.dataclass(frozen=True, slots=True)
class _Verdict:
    key: tuple[tuple[str, int, int], ...]
    answer: dict[str, Any]
    at: float  # when it was computed (the `clock` of `Pages`)


def verdict_of(report: verify.VerifyReport) -> dict[str, Any]:
    """`aofctl audit verify`'s verdict on one log, for the page (no keys: the hash chain)."""
    if report.ok:
        text = f"intact: {report.records} records, seq {report.first_seq} to {report.last_seq}"
    elif report.problems:
        text = f"TAMPERED or damaged: {report.problems[0].format()}"
    else:
        text = "not intact: " + ("; ".join(report.notes[:1]) or "no records")
    return {
        "ok": report.ok,
        "text": text,
        "records": report.records,
        "firstSeq": report.first_seq,
        "lastSeq": report.last_seq,
        "problems": [p.format() for p in report.problems[:MAX_PROBLEMS]],
        "notes": list(report.notes[:MAX_PROBLEMS]),
        "checkedAt": time.time(),
    }


class Pages:
    """The page's read-only data from the running daemon (see the module docstring)."""

    def __init__(
        self, daemon: Daemon, *, reverify_s: float = REVERIFY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._d = daemon
        self._reverify_s = reverify_s
        self._clock = clock
        self._verdicts: dict[str, _Verdict] = {}
        self._lock = threading.Lock()  # verdicts are computed in worker threads
        self._verifying = asyncio.Semaphore(1)
        self._known: tuple[object, KnownSecrets] = (None, NO_SECRETS)

    # -- runs ------------------------------------------------------------------------------

    def known_secrets(self) -> KnownSecrets:
        """The secret values the daemon holds: every applied Context's and Trigger's
        (`aofd.plan.extract.secret_values`: env values, kubeconfig from a variable, Trigger tokens,
        secrets and required header values) and the admin tokens; rebuilt when a revision applies."""
        rec = self._d.reconciler
        applied = rec.applied if rec is not None else None
        if self._known[0] is applied and applied is not None:
            return self._known[1]
        values: list[str] = list(self._d.admin_tokens())
        if applied is not None:
            for kind in (ids.Kind.CONTEXT, ids.Kind.TRIGGER):
                for res in applied.of_kind(kind):
                    values.extend(v for _, v in extract.secret_values(res))
        known = KnownSecrets(values)
        self._known = (applied, known)
        return known

    def runs(self, binding: str | None, limit: int) -> list[dict[str, Any]]:
        rt = self._d.runtime
        if rt is None:
            return []
        recent = rt.history.recent(binding=binding, limit=max(1, min(limit, MAX_RUNS)))
        known = self.known_secrets()
        return [shown_run(r, outputs=False, known=known) for r in recent]

    async def run(self, run_id: str) -> dict[str, Any] | None:
        rt = self._d.runtime
        found = rt.history.get(run_id) if rt is not None else None
        if found is None:
            return None
        run = shown_run(found, outputs=True, known=self.known_secrets())
        spec = None
        rec = self._d.reconciler
        if rec is not None and rec.applied is not None and found.get("flow"):
            res = rec.applied.get(ids.Kind.FLOW, str(found["flow"]))
            spec = extract.masked_spec(res) if res is not None else None
        run["graph"] = flow_graph(spec, found.get("nodes") or ())
        directory = self._log_dirs().get(str(found.get("context") or ""))
        events: list[dict[str, Any]] = []
        if directory is not None:
            events = await asyncio.to_thread(_run_events, directory, run_id)
        run["events"] = events
        return run

    # -- composition -----------------------------------------------------------------------

    def graph(self, focus: str | None) -> dict[str, Any]:
        """The composition graph (`aofctl graph`) as nodes by layer and edges; with `focus`
        (`Kind/name`), only that resource, what it uses and what uses it."""
        rec = self._d.reconciler
        if rec is None or rec.applied is None:
            return {"nodes": [], "edges": [], "layers": {}}
        state, conditions = rec.applied, rec.conditions
        g = graph.of(state)
        keys = {node_id: key for _, nodes in g.layers for node_id, key in nodes}
        keep: set[str] | None = None
        if focus:
            kind_text, _, name = focus.partition("/")
            kind = ids.parse_kind_name(kind_text)
            start = [i for i, k in keys.items() if kind is not None and k.kind is kind and k.name == name]
            if not start:
                return {"error": f"{focus} not found", "nodes": [], "edges": [], "layers": {}}
            down: dict[str, list[str]] = collections.defaultdict(list)
            up: dict[str, list[str]] = collections.defaultdict(list)
            for a, b, _ in g.edges:
                down[a].append(b)
                up[b].append(a)
            keep = set(start)
            for links in (down, up):
                todo = list(start)
                while todo:
                    for nxt in links[todo.pop()]:
                        if nxt not in keep:
                            keep.add(nxt)
                            todo.append(nxt)
        elif len(keys) > MAX_GRAPH_NODES:
            return {
                "tooLarge": len(keys),
                "nodes": [],
                "edges": [],
                "layers": {str(k): v for k, v in graph.LAYER_TITLES.items()},
            }
        nodes = []
        for _layer, members in g.layers:
            for slot, (node_id, key) in enumerate(m for m in members if keep is None or m[0] in keep):
                cond = conditions.get(key)
                nodes.append(
                    {
                        "id": node_id,
                        "kind": key.kind.value,
                        "name": key.name,
                        "namespace": key.namespace,
                        "layer": key.kind.layer,
                        "slot": slot,
                        "phase": cond.phase.value if cond is not None else "Unknown",
                        "disabled": node_id in g.disabled,
                        "focus": bool(focus) and f"{key.kind.value}/{key.name}" == focus,
                    }
                )
        kept = {n["id"] for n in nodes}
        return {
            "nodes": nodes,
            "edges": [{"from": a, "to": b, "label": lbl} for a, b, lbl in g.edges if a in kept and b in kept],
            "layers": {str(k): v for k, v in graph.LAYER_TITLES.items()},
        }

    # -- audit -----------------------------------------------------------------------------

    def _log_dirs(self) -> dict[str, Path]:
        """Each Context's audit log directory: the open logs, and the audit dir's subdirectories."""
        found: dict[str, Path] = {}
        audit_dir = Path(self._d.cfg.audit_dir)
        try:
            for sub in sorted(audit_dir.iterdir()):
                if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."):
                    found[sub.name] = sub
        except OSError:
            pass
        audit = self._d.audit
        if audit is not None:
            for context in audit.opened_contexts():
                directory = audit.log_dir(context)
                if directory is not None:
                    found[context] = directory
        return found

    async def audit(self) -> list[dict[str, Any]]:
        """Every Context's log with its last verdict (`verify=True` on `audit_tail` computes one)."""
        return [{"context": context, "verify": self._last_verdict(context)} for context in self._log_dirs()]

    async def audit_tail(self, context: str, lines: int, *, verify: bool = False) -> dict[str, Any] | None:
        """The newest `lines` records of a Context's log, and its verdict: the last one computed,
        or, with `verify`, checked now (again only when a segment changed, and at most every
        `reverify_s`), in a worker thread."""
        directory = self._log_dirs().get(context)
        if directory is None:
            return None
        count = max(1, min(lines, MAX_AUDIT_LINES))
        raw = await asyncio.to_thread(tail.last_lines, directory, count)
        entries = [audit_entry(r) for r in map(_parse, raw) if r is not None]
        entries.reverse()  # newest first
        verdict = await self._verdict(context, directory) if verify else self._last_verdict(context)
        return {"context": context, "entries": entries, "verify": verdict}

    def _last_verdict(self, context: str) -> dict[str, Any]:
        with self._lock:
            cached = self._verdicts.get(context)
        if cached is not None:
            return cached.answer
        return {"ok": None, "text": "not checked yet", "problems": [], "notes": []}

    async def _verdict(self, context: str, directory: Path) -> dict[str, Any]:
        async with self._verifying:  # one log at a time in a worker thread
            return await asyncio.to_thread(self._verify_cached, context, directory)

    def _verify_cached(self, context: str, directory: Path) -> dict[str, Any]:
        key = []
        for path in segment.list_segments(directory):
            try:
                st = path.stat()
            except OSError:
                continue
            key.append((path.name, st.st_size, st.st_mtime_ns))
        stamp = tuple(key)
        with self._lock:
            cached = self._verdicts.get(context)
        now = self._clock()
        if cached is not None and (cached.key == stamp or now - cached.at < self._reverify_s):
            return cached.answer
        try:
            answer = verdict_of(verify.verify(directory))
        except (OSError, ValueError) as exc:
            answer = {"ok": False, "text": f"cannot verify: {exc}", "problems": [], "notes": []}
        with self._lock:
            self._verdicts[context] = _Verdict(stamp, answer, now)
        return answer


def _run_events(directory: Path, run_id: str) -> list[dict[str, Any]]:
    """The audit records of one run among the newest `RUN_AUDIT_SCAN` lines, oldest first."""
    out = []
    for line in tail.last_lines(directory, RUN_AUDIT_SCAN):
        if run_id.encode() not in line:
            continue
        record = _parse(line)
        if record is not None and records.run_id_of(record) == run_id:
            out.append(audit_entry(record))
    return out
