"""What every trigger listener shares: lifecycle, the webhook pipeline, rejections, dedupe.

Owns

- `Listener`: one per served Trigger, shared by every binding that uses it, built from the
  Trigger's compiled `ListenerSpec` (`aofd.specs.listeners`). It has a `trigger_name`, a
  `platform`, a `config_digest` (the plan replaces a listener whose digest changed), `start()`,
  `stop(drain=...)` and, for webhook platforms, `handle(request)`.
- `WebhookListener`: the request pipeline every webhook platform runs, in this order: method
  allowed -> body capped (`Content-Length`, then while reading; 413 before any HMAC) ->
  platform verification over the raw bytes (`aofd.runtime.verify`) -> parse -> normalize ->
  claim of the platform's delivery id (and, for platforms that pass the body to `accept`, of
  the digest of the raw body) through `aofd.runtime.claims` (the local dedupe cache, and with
  `cluster:` one etcd transaction, so a retry at another replica is a duplicate) -> the
  `ports.Dispatch` port. Every failure answers a status with a generic body, never 500, is
  logged, and is audited as `trigger.rejected` (with `event.reason`) in the contexts of the
  trigger's bindings (throttled: one record per reason per second, with the count of
  suppressed ones). A claim etcd cannot record (`errors.CoordinatorUnavailable`) answers 503
  with `Retry-After` and is counted as not run (`coordinator_unavailable`).
- `SignedWebhookListener`: a `WebhookListener` for platforms that sign with
  `webhook_secret`/`webhook_secrets` (GitHub, PagerDuty); without a secret it rejects everything.
- `Deps`: the collaborators a listener is built with (keyword-only, owned by the daemon),
  including `claims` and, on a replica, the `coordinator` (leader-only duties ask it).
- `ApprovalDecider`: the small port through which interactive approval clicks reach the guard.

Platform modules subclass these; they must not import each other. This module must not import
slack_sdk, slack_bolt or apscheduler, nor anything that routes or starts runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import json.encoder
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar, Protocol

import structlog

from aofd import errors
from aofd.resources.kinds import trigger as trigger_kind
from aofd.runtime import approvals, cluster, ports, replies, tasks, verify
from aofd.runtime import claims as claims_mod
from aofd.runtime import dedupe as dedupe_cache
from aofd.settings import PlatformsSpec
from aofd.specs import listeners as listener_specs

log = structlog.get_logger()

_encode_str = json.encoder.encode_basestring_ascii
"""What `json.dumps(s)` returns for a str `s` with the default `ensure_ascii=True` (the C encoder)."""

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Per-trigger body cap unless `max_body_bytes` says otherwise (GitHub's default is larger)."""

MAX_BODY_BYTES_LIMIT = 32 * 1024 * 1024
"""The hard cap: a Trigger's `max_body_bytes` above this is lowered to it."""

GENERIC_BODIES: Mapping[int, str] = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "payload too large",
    417: "expectation failed",
}


class ListenerError(errors.Stalled):
    """A trigger cannot be served on this host (its listener cannot start); its bindings stall."""


class ApprovalDecider(Protocol):
    """Records an approver's decision on a pending approval request (the guard's approvals store).

    `user` carries the platform user id (never the display name); `action_id` is the unique id of
    this click (Slack `<trigger_id>:<action_ts>`, Telegram's callback query id), so the store can make
    clicks idempotent. May be sync or async: an awaitable result is awaited. The result is an
    `aofd.runtime.approvals.Click` (what the clicker is told privately); anything else is ignored.
    """

    def decide(self, request_id: str, user: ports.UserRef, approve: bool, action_id: str) -> object: ...


def as_dict(value: object) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one: payload fields of unknown shape."""
    return value if isinstance(value, dict) else {}


class ClickAnswerer(Protocol):
    """A platform replier that can answer the clicker (`replies.*Replier.reply`)."""

    async def reply(self, target: ports.ReplyTarget, text: str) -> object: ...


async def decide_and_answer(
    deps: Deps,
    trigger: str,
    answerer: ClickAnswerer,
    request_id: str,
    user: ports.UserRef,
    approve: bool,
    action_id: str,
    target: ports.ReplyTarget,
) -> None:
    """Decide one click (`decide_click`) and tell the clicker what it did, when there is anything
    to tell (it changed nothing, or more approvers are needed); a reply that fails is logged."""
    click = await decide_click(deps, trigger, request_id, user, approve, action_id)
    if click is None or not click.text:
        return
    try:
        await answerer.reply(target, click.text)
    except replies.ReplyError as exc:
        log.warning("approval.click_not_answered", trigger=trigger, request_id=request_id, error=str(exc))


async def decide_click(
    deps: Deps, trigger: str, request_id: str, user: ports.UserRef, approve: bool, action_id: str
) -> approvals.Click | None:
    """Pass one approval click to the daemon's decider; what to tell the clicker, or None."""
    decider = deps.approvals
    if decider is None:
        log.warning("approval.no_decider", trigger=trigger, request_id=request_id)
        return None
    result = decider.decide(request_id, user, approve, action_id)
    if inspect.isawaitable(result):
        result = await result
    return result if isinstance(result, approvals.Click) else None


class Deps:
    """The collaborators every listener is built with; owned and shared by the daemon."""

    __slots__ = (
        "approvals",
        "audit",
        "claims",
        "clock",
        "coordinator",
        "dedupe",
        "dispatcher",
        "on_not_run",
        "on_rejected",
        "platforms",
        "scheduler",
    )

    def __init__(
        self,
        *,
        platforms: PlatformsSpec,
        dispatcher: ports.Dispatch,
        dedupe: dedupe_cache.DedupeCache,
        audit: ports.AuditSink | None,
        approvals: ApprovalDecider | None,
        scheduler: object = None,
        clock: Callable[[], float] = time.time,
        on_rejected: Callable[[str, str], None] | None = None,
        claims: claims_mod.Claims | None = None,
        coordinator: cluster.Coordinator | None = None,
        on_not_run: Callable[[str, str], None] | None = None,
    ) -> None:
        self.on_rejected = on_rejected  # (platform, reason) for every refused request; metrics
        self.on_not_run = on_not_run  # (platform, reason) for an event answered but not run; metrics
        self.platforms = platforms
        self.dispatcher = dispatcher
        self.dedupe = dedupe
        # One run per delivery across the set: the local cache and, with `cluster:`, etcd.
        self.claims = claims if claims is not None else claims_mod.Claims(dedupe, coordinator)
        self.coordinator = coordinator  # None on a single host; leader-only duties ask it
        self.audit = audit
        self.approvals = approvals
        self.scheduler = scheduler  # the schedule listener's hub; typed there (listeners are independent)
        self.clock = clock


def secret_value(value: object) -> str:
    """A configured secret as text ('' when unset); tolerates pydantic SecretStr."""
    if value is None:
        return ""
    getter = getattr(value, "get_secret_value", None)
    if callable(getter):
        return str(getter())
    return str(value)


_GENERIC: Mapping[int, ports.HttpResponse] = {
    status: ports.HttpResponse.text(status, text) for status, text in GENERIC_BODIES.items()
}


def generic(status: int) -> ports.HttpResponse:
    """A response with a body that reveals nothing about why."""
    found = _GENERIC.get(status)
    return found if found is not None else ports.HttpResponse.text(status, "error")


class Listener:
    """One Trigger's listener. Subclasses add transports; this class owns background tasks."""

    platform: ClassVar[str] = ""

    def __init__(self, *, spec: listener_specs.ListenerSpec, deps: Deps) -> None:
        self.spec = spec
        self.config: trigger_kind.TriggerConfig = spec.config
        self.trigger_name: str = spec.trigger
        self.config_digest: str = spec.digest
        self.deps = deps
        self.replier: ports.ChatReplier | None = None
        self.running = False
        self._tasks: tasks.TaskSet[None] = tasks.TaskSet(f"listener:{spec.trigger}")
        # Invariant: maps reason -> (time of the last audited rejection, suppressed since).
        self._audited: dict[str, tuple[float, int]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.trigger_name} {self.config_digest[:15]}>"

    def succeed(self, previous: Listener) -> None:
        """Take over what must carry across a hot swap from `previous`, the listener this one replaces
        for the same trigger (called before `start()`; `previous` is still running). Default: nothing.
        """

    def reinstate(self) -> None:
        """This listener's successor was abandoned (its apply was cancelled) after `succeed`
        and `start`: take back what it took over. Default: nothing (a schedule's job)."""

    def on_leadership(self, leading: bool) -> None:
        """This replica became (True) or stopped being (False) the leader of its set (`cluster:`).
        Default: nothing (webhook listeners serve on every replica). The pull listeners that are
        leader-only duties (schedules, Telegram polling, Socket Mode) subscribe and override it."""

    async def start(self) -> None:
        """Connect or subscribe (webhook listeners only mark themselves running)."""
        self.running = True
        log.info("listener.started", trigger=self.trigger_name, platform=self.platform)

    async def stop(self, *, drain: float) -> None:
        """Stop taking events, let in-flight work finish for up to `drain` seconds, then cancel it."""
        self.running = False
        try:
            await self.drain(drain)
        finally:  # also when the drain is cut short (shutdown during a hot swap's drain)
            if self.replier is not None:
                await asyncio.shield(self.replier.aclose())
        log.info("listener.stopped", trigger=self.trigger_name, platform=self.platform)

    async def drain(self, grace: float) -> None:
        await self._tasks.drain(grace)

    def spawn(
        self, coro: Coroutine[Any, Any, None], *, name: str = "", key: str | None = None
    ) -> asyncio.Task[None]:
        """Run `coro` in a task owned by this listener (awaited or cancelled by `stop`)."""
        return self._tasks.spawn(coro, name=name or None, key=key)

    async def cancel(self, key: str) -> None:
        """Cancel the task spawned under `key` (a polling loop) and wait for it to end."""
        await self._tasks.cancel(key)

    async def handle(self, request: ports.HttpRequest) -> ports.HttpResponse:
        """Answer a webhook request; listeners without a webhook answer 404."""
        return generic(404)

    # --- shared event path ----------------------------------------------------------------

    async def first_time(self, *ids: str) -> bool:
        """Claim a delivery (its id and any twin keys, in one etcd round trip with `cluster:`);
        False for a replay or a retry, here or on another replica.

        A duplicate is acknowledged to the sender (platform retries are normal) but logged and
        audited as `trigger.rejected` with reason `replay`. Raises `errors.CoordinatorUnavailable`
        when a replica cannot reach etcd (nothing stays claimed; the webhook pipeline answers 503).
        """
        fresh = await self.deps.claims.first_time(self.platform, self.trigger_name, ids)
        if not fresh:
            self.duplicate(next((i for i in ids if i), ""))
        return fresh

    async def forget(self, *ids: str) -> None:
        """Drop the claims of a delivery that did not run (`retry_later`): its retry is taken."""
        await self.deps.claims.forget(self.platform, self.trigger_name, ids)

    def coordinator_unavailable(self, exc: errors.CoordinatorUnavailable, remote: str = "") -> None:
        """Log, count (`aofd_events_not_run_total{reason="coordinator_unavailable"}`) and audit
        (throttled) a delivery refused because etcd could not record its claim."""
        log.warning(
            "event.not_claimed",
            platform=self.platform,
            trigger=self.trigger_name,
            reason=COORDINATOR_UNAVAILABLE,
            detail=str(exc),
        )
        if self.deps.on_not_run is not None:
            self.deps.on_not_run(self.platform, COORDINATOR_UNAVAILABLE)
        self.audit_rejection(
            verify.Rejected(503, COORDINATOR_UNAVAILABLE, f"delivery not claimed, the sender retries: {exc}"),
            remote,
        )

    def duplicate(self, delivery_id: str) -> None:
        """Log and audit (`trigger.rejected`, reason `replay`) a delivery the dedupe cache had seen."""
        log.info(
            "event.duplicate",
            platform=self.platform,
            trigger=self.trigger_name,
            delivery_id=delivery_id,
        )
        self.audit_rejection(verify.Rejected(200, verify.REPLAY, f"delivery {delivery_id} seen before"), "")

    def audit_rejection(self, exc: verify.Rejected, remote: str) -> None:
        """Audit a rejection in the contexts of this trigger's bindings, at most once a second per reason.

        The next record carries how many were suppressed in between (`aofd.suppressed`).
        """
        audit = self.deps.audit
        if audit is None:
            return
        contexts = self.deps.dispatcher.contexts_for(self.trigger_name)
        if not contexts:
            return
        now = time.monotonic()
        last, suppressed = self._audited.get(exc.reason, (float("-inf"), 0))
        if now - last < 1.0:
            self._audited[exc.reason] = (last, suppressed + 1)
            return
        self._audited[exc.reason] = (now, 0)
        record = rejection_record(
            platform=self.platform, trigger=self.trigger_name, exc=exc, remote=remote, suppressed=suppressed
        )
        self.spawn(self._write_audit(audit, contexts, record), name=f"audit:{self.trigger_name}")

    async def _write_audit(
        self, audit: ports.AuditSink, contexts: tuple[str, ...], record: ports.AuditEvent
    ) -> None:
        for context in contexts:
            try:
                await audit.write(context, record)
            except Exception:
                log.exception("trigger.rejected_audit_failed", trigger=self.trigger_name, context=context)

    async def accept(
        self, message: ports.EventMessage, *, reply_on_no_match: bool = False, body: bytes | None = None
    ) -> ports.RouteOutcome | None:
        """Claim then dispatch one normalized event; None when it was a duplicate.

        With `body` (a webhook's raw, verified bytes) the event is also de-duplicated on the
        digest of the body (`body_key`): a delivery id in a header the platform does not sign can
        be changed or left out, so a captured body replayed under a new id, or with none, is still
        a duplicate (a platform's retry resends the identical body). An event that could not run
        now (`retry_later`) is forgotten by the dedupe cache, so the sender's retry of it is taken.
        """
        digest = body_key(body) if body is not None else ""
        if not await self.first_time(message.delivery_id, digest):
            return None
        outcome = self.deps.dispatcher.dispatch(message, reply_on_no_match=reply_on_no_match)
        if retry_later(outcome):
            await self.forget(message.delivery_id, digest)
        return outcome


BODY_KEY_PREFIX = "body:"


def body_key(body: bytes) -> str:
    """The dedupe key of a webhook body: `body:` and the first 128 bits of its SHA-256, in hex.

    128 bits keep a cache entry small (the cache holds at most `max_entries` keys, and a delivery
    with an id header takes two) and are far beyond any chance collision.
    """
    return BODY_KEY_PREFIX + hashlib.sha256(body).hexdigest()[:32]


class WebhookListener(Listener):
    """A listener that receives events as HTTP requests at `/hooks/<platform>/<trigger>`."""

    default_max_body: ClassVar[int] = DEFAULT_MAX_BODY_BYTES
    default_methods: ClassVar[frozenset[str]] = frozenset({"POST"})

    def __init__(self, *, spec: listener_specs.ListenerSpec, deps: Deps) -> None:
        super().__init__(spec=spec, deps=deps)
        self.max_body = min(int(self.config.max_body_bytes or self.default_max_body), MAX_BODY_BYTES_LIMIT)
        self.methods: frozenset[str] = self.default_methods

    async def handle(self, request: ports.HttpRequest) -> ports.HttpResponse:
        """Run the pipeline; every failure becomes a generic 4xx, never a 500."""
        try:
            method = request.method
            if method not in self.methods:
                return generic(405)
            if method == "GET" or method == "HEAD":
                return await self.on_get(request)
            body = request.buffered(self.max_body)  # no coroutine for the usual small body
            if body is None:
                body = await request.body(self.max_body)
            return await self.on_request(request, body)
        except verify.Rejected as exc:
            await self.rejected(request, exc)
            return generic(exc.status)
        except errors.CoordinatorUnavailable as exc:
            self.coordinator_unavailable(exc, request.remote)
            return coordinator_unavailable_response()
        except Exception:
            log.exception("listener.request_failed", trigger=self.trigger_name, platform=self.platform)
            return generic(400)

    async def on_get(self, request: ports.HttpRequest) -> ports.HttpResponse:
        return generic(405)

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        raise NotImplementedError

    async def rejected(self, request: ports.HttpRequest, exc: verify.Rejected) -> None:
        """Log a rejection and audit it in the contexts of this trigger's bindings (throttled)."""
        remote = request.remote
        log.warning(
            "trigger.rejected",
            trigger=self.trigger_name,
            platform=self.platform,
            status=exc.status,
            reason=exc.reason,
            detail=exc.detail,
            remote=remote,
        )
        if self.deps.on_rejected is not None:
            self.deps.on_rejected(self.platform, exc.reason)
        self.audit_rejection(exc, remote)

    def parse_json(self, body: bytes) -> Any:
        """Parse an already verified body; malformed JSON is a 400."""
        try:
            return loads_body(body)
        except ValueError:
            raise verify.Rejected(400, verify.MALFORMED, "body is not JSON") from None


class SignedWebhookListener(WebhookListener):
    """A webhook listener whose platform signs each delivery with `webhook_secret`/`webhook_secrets`.

    It fails closed: without a secret every delivery is rejected (by `aofd.runtime.verify`), and
    `start()` warns about it once.
    """

    def __init__(self, *, spec: listener_specs.ListenerSpec, deps: Deps) -> None:
        super().__init__(spec=spec, deps=deps)
        self.secrets = tuple(secret_value(s) for s in self.config.all_webhook_secrets if s)

    async def start(self) -> None:
        if not self.secrets:
            log.warning(
                "listener.no_secret",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no webhook_secret is configured: every delivery will be rejected",
            )
        await super().start()


_DECODER = json.JSONDecoder()


def loads_body(body: bytes) -> Any:
    """Exactly `json.loads(body)`, a little cheaper for the usual body (UTF-8 starting with `{` or `[`).

    `json.loads` decodes bytes with `json.detect_encoding`, which answers UTF-8 whenever the first
    two bytes are not NUL and there is no BOM; such a body starting with `{` or `[` skips that step.
    """
    if body[:1] in (b"{", b"[") and body[1:2] != b"\x00":
        return _DECODER.decode(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)


def rejection_record(
    *, platform: str, trigger: str, exc: verify.Rejected, remote: str, suppressed: int = 0
) -> ports.AuditEvent:
    """The `trigger.rejected` audit event; `suppressed` counts the same rejections left out since the last."""
    return ports.AuditEvent(
        "trigger.rejected",
        outcome="failure",
        reason=exc.reason,
        trigger={"platform": platform, "name": trigger},
        source_ip=remote or None,
        http_status=exc.status,
        message=exc.detail,
        details={"suppressed": suppressed},
    )


def json_response(data: Mapping[str, Any], *, status: int = 200) -> ports.HttpResponse:
    return ports.HttpResponse.json(data, status=status)


STALLED_RETRY_AFTER = 30
"""Seconds a sender is asked to wait before retrying an event whose binding is not ready."""


COORDINATOR_UNAVAILABLE = "coordinator_unavailable"
"""Why a delivery was refused when a replica cannot reach etcd to claim it."""

COORDINATOR_RETRY_AFTER = 5
"""Seconds a sender is asked to wait before retrying a delivery refused for want of etcd."""


def coordinator_unavailable_response() -> ports.HttpResponse:
    """503 with `Retry-After`: the delivery could not be claimed (etcd unreachable), so it did not
    run here; the sender retries it (this or another replica takes it once etcd answers)."""
    return ports.HttpResponse.text(
        503,
        "not ready: cannot record this delivery right now; retry later\n",
        headers={"Retry-After": str(COORDINATOR_RETRY_AFTER)},
    )


def retry_later(outcome: ports.RouteOutcome | None) -> bool:
    """The event was for a binding that cannot run now (stalled here, or the daemon is stopping):
    the sender should retry it, and its delivery id must not count as seen. (An `error` is a bug
    or a payload the flow cannot take: a retry would fail the same way.)"""
    return outcome is not None and outcome.outcome in ("stalled", "stopping")


def outcome_response(outcome: ports.RouteOutcome | None) -> ports.HttpResponse:
    """202 with the binding and run id when a flow started; 503 with `Retry-After` when its binding
    cannot run now, with one line naming the binding and its Stalled reason (`ContextNotReady`: the
    sender retries; the details, which may name host paths, are in `aofctl status` and the audit
    log); else 200 with the outcome (JSON)."""
    if retry_later(outcome):
        assert outcome is not None
        why = f" ({outcome.reason})" if outcome.reason else ""
        return ports.HttpResponse.text(
            503,
            f"not ready: binding {outcome.binding} cannot run now{why}; retry later\n",
            headers={"Retry-After": str(STALLED_RETRY_AFTER)},
        )
    if outcome is not None and outcome.started:
        body = b'{"accepted":true,"outcome":"started","binding":%s,"run_id":%s}' % (
            _json_scalar(outcome.binding),
            _json_scalar(outcome.run_id),
        )
        return ports.HttpResponse(202, body, "application/json")
    return json_response(outcome_body(outcome))


def _json_scalar(value: object) -> bytes:
    """`json.dumps(value).encode()`; a str goes straight to the encoder `json.dumps` itself uses."""
    if type(value) is str:
        return _encode_str(value).encode("ascii")
    return json.dumps(value).encode("utf-8")


def outcome_body(outcome: ports.RouteOutcome | None) -> dict[str, Any]:
    """What webhook senders get back: accepted or not, the binding and run id when started."""
    if outcome is None:
        return {"accepted": True, "outcome": "duplicate"}
    body: dict[str, Any] = {"accepted": outcome.started, "outcome": outcome.outcome}
    if outcome.started:
        body["binding"] = outcome.binding
        body["run_id"] = outcome.run_id
    return body
