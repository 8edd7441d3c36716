"""Pending command approvals: who may approve, idempotent clicks, expiry (state; clock injected).

This module owns the approval store (RELIABILITY.md section 2 "Approvals", rows 25-26):

- a request is bound to `sha256(context ‖ canonical argv JSON ‖ run id ‖ n)`, `n` the number of
  requests the store has made: a repeated command in the same run gets a fresh approval, and no
  id is ever issued twice, so a late click on an old prompt can never approve a new request;
- approvers are matched by platform **user id**, never by display name: exactly, or modulo
  upstream's `slack:`/`telegram:`/`discord:` prefixes (a prefixed entry only matches a user of
  that platform, judged by `UserRef.domain`);
- an empty `allowed_users` lets **nobody** approve. Upstream lets anyone approve then; aofd
  fails closed instead (the loader should warn about `required: true` without approvers);
- the requester cannot approve unless `allow_self_approval`; `min_approvers` distinct
  approvers are needed; one deny (by an allowed approver or the requester) ends the request;
- `decide` is idempotent per `action_id` (a second delivery of the same click is a no-op,
  `REDELIVERED`), and a user's second vote does not count twice (`DUPLICATE`);
- a request expires `timeout_seconds` after it was made (default 300); `cancel` ends one
  without a decision (its run ended, its prompt could not be posted), `cancel_all` every
  pending one (shutdown);
- `click_text` is what a person whose click decided nothing is told, privately.

The store is keyed by request id and records the Context name, and is owned by the daemon, so
pending approvals survive a hot swap of the Context. It writes no audit records itself: the
guard does, through the `AuditSink` port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import json
import time
from collections.abc import Callable, Sequence

from aofd.runtime import ports
from aofd.specs import approvers

PLATFORM_PREFIXES = approvers.PLATFORM_PREFIXES
ADMIN = approvers.ADMIN
narrow_approvers = approvers.narrow_approvers
_split = approvers.split


class State(enum.Enum):
    """Where a request is: pending, or one of the final states."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self is not State.PENDING


class Decision(enum.Enum):
    """What one click did."""

    GRANTED = "granted"  # this approval completed the request
    PENDING_MORE = "pending_more"  # counted; more approvers are needed
    DENIED = "denied"  # this click denied the request
    NOT_ALLOWED = "not_allowed"  # the user is not an allowed approver
    SELF_NOT_ALLOWED = "self_not_allowed"  # the requester tried to approve their own request
    ALREADY_DECIDED = "already_decided"  # the request was granted or denied before
    EXPIRED = "expired"  # the request timed out (or the daemon restarted)
    DUPLICATE = "duplicate"  # this user already voted
    REDELIVERED = "redelivered"  # the same click (action id) delivered again: nothing changes
    UNKNOWN = "unknown"  # no such request


def request_id(context: str, argv: Sequence[str], run_id: str, attempt: int = 0) -> str:
    """`sha256(context ‖ canonical argv JSON ‖ run id ‖ attempt)` as hex."""
    canonical = json.dumps(list(argv), ensure_ascii=True, separators=(",", ":"))
    payload = "\x00".join((context, canonical, run_id, str(attempt)))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def render_argv(argv: Sequence[str]) -> str:
    """argv as approvers see it: a JSON array, non-ASCII escaped (`\\u202e` cannot hide)."""
    return json.dumps(list(argv), ensure_ascii=True)


def _platform(user: ports.UserRef) -> str:
    return user.domain.split(":", 1)[0].lower()


def _identity(user: ports.UserRef) -> tuple[str, str]:
    """(platform, id) of a user. The platform the event came from (`domain`) decides: a prefix in
    the id counts only when it names that same platform (or there is no domain), so an HTTP
    trigger's body saying `user.id: admin:alice` is the id `admin:alice` of an HTTP caller, never
    the operator alice nor the Slack user it names."""
    prefix, uid = _split(user.id)
    platform = _platform(user)
    if not platform:
        return prefix or "", uid
    if prefix is None or prefix == platform:
        return platform, uid
    return platform, user.id


def same_user(a: ports.UserRef, b: ports.UserRef) -> bool:
    """Two references are the same person: same id (modulo platform prefix) on the same platform.

    A person known under two platforms (a Slack id and an operator's `admin:` token) is two
    references here: self-approval and `min_approvers` cannot tell them apart."""
    plat_a, ida = _identity(a)
    plat_b, idb = _identity(b)
    return ida == idb and (not plat_a or not plat_b or plat_a == plat_b)


def is_allowed_approver(user: ports.UserRef, allowed_users: Sequence[str]) -> bool:
    """`user.id` is in `allowed_users`, exactly or modulo a `slack:`/`telegram:`/`discord:` prefix."""
    platform, user_id = _identity(user)
    for entry in allowed_users:
        prefix, wanted = _split(entry)
        if wanted != user_id or not wanted:
            continue
        if (platform == ADMIN or prefix == ADMIN) and prefix != platform:
            continue  # an operator's token counts only where the Context names it `admin:<name>`
        if prefix is None or not platform or prefix == platform:
            return True
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One command waiting for approval (immutable; its progress lives in the store)."""

    id: str
    context: str
    argv: tuple[str, ...]
    run_id: str
    requester: ports.UserRef
    allowed_users: tuple[str, ...]
    min_approvers: int = 1
    allow_self_approval: bool = False
    timeout_seconds: float = 300.0
    created_at: float = 0.0
    """The store's clock (monotonic) when the request was made; `expires_at` is on the same clock."""
    requested_at: float = 0.0
    """Wall-clock time (`time.time()`) when the request was made, for people to read."""
    agent: str = ""
    rule: str | None = None
    origin: ports.ReplyTarget | None = None
    subject: str = ""
    """What is being approved, for people ("the flow deploy, step approve"); '' for a command:
    `the command <argv as JSON>`."""

    @property
    def expires_at(self) -> float:
        return self.created_at + self.timeout_seconds

    def rendered_argv(self) -> str:
        return render_argv(self.argv)


@dataclasses.dataclass(slots=True)
class _Entry:
    request: ApprovalRequest
    # Invariant: `state` only leaves PENDING once; `done` is set exactly when it does.
    state: State = State.PENDING
    approvers: list[ports.UserRef] = dataclasses.field(default_factory=list)
    denier: ports.UserRef | None = None
    reason: str = ""
    actions: dict[str, Decision] = dataclasses.field(default_factory=dict)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The final (or current) state of a request, with who decided and why."""

    request: ApprovalRequest
    state: State
    approvers: tuple[ports.UserRef, ...] = ()
    denier: ports.UserRef | None = None
    reason: str = ""


class ApprovalStore:
    """Every approval request of the daemon, across Contexts and hot swaps."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keep_decided: int = 1000,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._closed: str | None = None  # why no request can be decided any more (shutdown)
        self._made = 0  # requests made so far: part of each id (`request_id`'s `attempt`)
        self._entries: dict[str, _Entry] = {}
        self._keep_decided = keep_decided

    def request(
        self,
        *,
        context: str,
        argv: Sequence[str],
        run_id: str,
        requester: ports.UserRef,
        allowed_users: Sequence[str],
        min_approvers: int = 1,
        allow_self_approval: bool = False,
        timeout_seconds: float = 300.0,
        agent: str = "",
        rule: str | None = None,
        origin: ports.ReplyTarget | None = None,
        subject: str = "",
    ) -> ApprovalRequest:
        """Open a new pending request and return it (its id goes on the approval buttons)."""
        self._trim()
        # Never the same id twice in a store, even after decided requests were trimmed: a stale
        # button or an old `aofctl approve <id>` must never reach a newer request.
        self._made += 1
        req = ApprovalRequest(
            id=request_id(context, argv, run_id, self._made),
            context=context,
            argv=tuple(argv),
            run_id=run_id,
            requester=requester,
            allowed_users=tuple(allowed_users),
            min_approvers=max(1, min_approvers),
            allow_self_approval=allow_self_approval,
            timeout_seconds=float(timeout_seconds),
            created_at=self._clock(),
            requested_at=self._wall(),
            agent=agent,
            rule=rule,
            origin=origin,
            subject=subject,
        )
        entry = self._entries[req.id] = _Entry(req)
        if self._closed is not None:
            self._finish(entry, State.CANCELLED, self._closed)
        return req

    def _trim(self) -> None:
        decided = [k for k, e in self._entries.items() if e.state.final]
        for key in decided[: max(0, len(decided) - self._keep_decided)]:
            del self._entries[key]

    def _finish(self, entry: _Entry, state: State, reason: str = "") -> None:
        if entry.state.final:
            return
        entry.state = state
        entry.reason = reason
        entry.done.set()

    def _expire_if_due(self, entry: _Entry) -> None:
        if not entry.state.final and self._clock() >= entry.request.expires_at:
            self._finish(entry, State.EXPIRED, "timeout")

    def get(self, request_id: str) -> ApprovalRequest | None:
        entry = self._entries.get(request_id)
        return None if entry is None else entry.request

    def outcome(self, request_id: str) -> Outcome | None:
        """The request's state now (expiring it first if its time is up)."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        self._expire_if_due(entry)
        return Outcome(entry.request, entry.state, tuple(entry.approvers), entry.denier, entry.reason)

    def missing(self, request_id: str) -> int:
        """How many more approvals a pending request needs (0 when it is not pending)."""
        entry = self._entries.get(request_id)
        if entry is None or entry.state.final:
            return 0
        return max(0, entry.request.min_approvers - len(entry.approvers))

    def pending(self, context: str | None = None) -> list[ApprovalRequest]:
        """Pending requests (of one Context, or all)."""
        result = []
        for entry in self._entries.values():
            self._expire_if_due(entry)
            if entry.state is State.PENDING and (context is None or entry.request.context == context):
                result.append(entry.request)
        return result

    def decide(self, request_id: str, user: ports.UserRef, *, approve: bool, action_id: str) -> Decision:
        """Apply one click. Idempotent per `action_id`; never raises for any input."""
        entry = self._entries.get(request_id)
        if entry is None:
            return Decision.UNKNOWN
        if action_id and action_id in entry.actions:
            return Decision.REDELIVERED
        decision = self._decide(entry, user, approve)
        if action_id:
            entry.actions[action_id] = decision
        return decision

    def _decide(self, entry: _Entry, user: ports.UserRef, approve: bool) -> Decision:
        self._expire_if_due(entry)
        if entry.state in (State.EXPIRED, State.CANCELLED):
            return Decision.EXPIRED
        if entry.state.final:
            return Decision.ALREADY_DECIDED
        req = entry.request
        is_requester = same_user(user, req.requester)
        if not approve:
            if not (is_requester or is_allowed_approver(user, req.allowed_users)):
                return Decision.NOT_ALLOWED
            entry.denier = user
            self._finish(entry, State.DENIED, "denied")
            return Decision.DENIED
        if not is_allowed_approver(user, req.allowed_users):
            return Decision.NOT_ALLOWED
        if is_requester and not req.allow_self_approval:
            return Decision.SELF_NOT_ALLOWED
        if any(same_user(user, seen) for seen in entry.approvers):
            return Decision.DUPLICATE
        entry.approvers.append(user)
        if len(entry.approvers) >= req.min_approvers:
            self._finish(entry, State.GRANTED, "approved")
            return Decision.GRANTED
        return Decision.PENDING_MORE

    async def wait(self, request_id: str) -> Outcome:
        """Wait until the request is granted, denied or expired, and return that outcome.

        Raises:
            KeyError: no such request.
        """
        entry = self._entries[request_id]
        self._expire_if_due(entry)
        if not entry.state.final:
            remaining = max(0.0, entry.request.expires_at - self._clock())
            try:
                async with asyncio.timeout(remaining):
                    await entry.done.wait()
            except TimeoutError:
                self._finish(entry, State.EXPIRED, "timeout")
        return Outcome(entry.request, entry.state, tuple(entry.approvers), entry.denier, entry.reason)

    def cancel(self, request_id: str, reason: str) -> Outcome | None:
        """End one request without a decision if it is still pending (its prompt could not be
        posted, its run ended); returns its outcome then, None when it was already final."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        self._expire_if_due(entry)
        if entry.state.final:
            return None
        self._finish(entry, State.CANCELLED, reason)
        return Outcome(entry.request, entry.state, tuple(entry.approvers), entry.denier, entry.reason)

    def cancel_all(self, reason: str = "restart", *, close: bool = False) -> list[ApprovalRequest]:
        """Cancel every pending request (shutdown); returns the ones that were pending. With
        `close`, requests made from now on are cancelled as they are made, for the same reason."""
        if close:
            self._closed = reason
        cancelled = []
        for entry in self._entries.values():
            if entry.state is State.PENDING:
                self._finish(entry, State.CANCELLED, reason)
                cancelled.append(entry.request)
        return cancelled


CLICK_TEXT: dict[Decision, str] = {
    Decision.NOT_ALLOWED: "You are not one of the approvers of this request; nothing was changed.",
    Decision.SELF_NOT_ALLOWED: "You asked for this; someone else has to approve it.",
    Decision.ALREADY_DECIDED: "This request was already decided; nothing was changed.",
    Decision.EXPIRED: "This request is no longer open (it expired or its run ended); nothing will run.",
    Decision.DUPLICATE: "Your answer to this request was already counted.",
    Decision.UNKNOWN: "aofd does not know this request (it may have restarted since); nothing will run.",
}
"""What the person whose click decided nothing is told, privately, by decision."""

REFUSED: frozenset[Decision] = frozenset(CLICK_TEXT)
"""Clicks that changed nothing (the clicker is told why, the click is audited)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Click:
    """What one click did, and what the clicker is told privately about it ('' for nothing)."""

    decision: Decision
    text: str = ""

    @property
    def refused(self) -> bool:
        return self.decision in REFUSED


def click_text(decision: Decision, *, missing: int = 0) -> str:
    """What the clicker is told privately: why a click was refused, or that more approvals are
    needed (`missing`); '' for a click that decided the request (the prompt itself changes)."""
    if decision is Decision.PENDING_MORE:
        more = f"{missing} more approval{'s' if missing != 1 else ''}" if missing > 0 else "more approvals"
        return f"Your approval is counted; {more} needed before this runs."
    return CLICK_TEXT.get(decision, "")
