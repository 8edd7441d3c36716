"""Pending command approvals: who may approve, idempotent clicks, expiry (state; clock injected).

This module owns the approval store (RELIABILITY.md section 2 "Approvals", rows 25-26):

- a request is bound to `sha256(context ‖ canonical argv JSON ‖ run id ‖ attempt)`; the attempt
  number (0 for the first) gives a repeated command in the same run a fresh approval, so a late
  click on an old prompt can never approve a new request;
- approvers are matched by platform **user id**, never by display name: exactly, or modulo
  upstream's `slack:`/`telegram:`/`discord:` prefixes (a prefixed entry only matches a user of
  that platform, judged by `UserRef.domain`);
- an empty `allowed_users` lets **nobody** approve. Upstream lets anyone approve then; aofd
  fails closed instead (the loader should warn about `required: true` without approvers);
- the requester cannot approve unless `allow_self_approval`; `min_approvers` distinct
  approvers are needed; one deny (by an allowed approver or the requester) ends the request;
- `decide` is idempotent per `action_id` (a second delivery of the same click is a no-op),
  and a user's second vote does not count twice;
- a request expires `timeout_seconds` after it was made (default 300); `expire_all` ends
  every pending request (shutdown, start).

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

PLATFORM_PREFIXES: tuple[str, ...] = ("slack", "telegram", "discord")


class State(enum.Enum):
    """Where a request is: pending, or one of the final states."""

    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    EXPIRED = "expired"

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
    DUPLICATE = "duplicate"  # same action id again, or this user already voted
    UNKNOWN = "unknown"  # no such request


def request_id(context: str, argv: Sequence[str], run_id: str, attempt: int = 0) -> str:
    """`sha256(context ‖ canonical argv JSON ‖ run id ‖ attempt)` as hex."""
    canonical = json.dumps(list(argv), ensure_ascii=True, separators=(",", ":"))
    payload = "\x00".join((context, canonical, run_id, str(attempt)))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def render_argv(argv: Sequence[str]) -> str:
    """argv as approvers see it: a JSON array, non-ASCII escaped (`\\u202e` cannot hide)."""
    return json.dumps(list(argv), ensure_ascii=True)


def _split(entry: str) -> tuple[str | None, str]:
    head, sep, tail = entry.partition(":")
    if sep and head.lower() in PLATFORM_PREFIXES:
        return head.lower(), tail
    return None, entry


def _platform(user: ports.UserRef) -> str:
    return user.domain.split(":", 1)[0].lower()


def same_user(a: ports.UserRef, b: ports.UserRef) -> bool:
    """Two references are the same person: same id (modulo platform prefix) on the same platform."""
    pa, ida = _split(a.id)
    pb, idb = _split(b.id)
    plat_a, plat_b = pa or _platform(a), pb or _platform(b)
    return ida == idb and (not plat_a or not plat_b or plat_a == plat_b)


def is_allowed_approver(user: ports.UserRef, allowed_users: Sequence[str]) -> bool:
    """`user.id` is in `allowed_users`, exactly or modulo a `slack:`/`telegram:`/`discord:` prefix."""
    user_prefix, user_id = _split(user.id)
    platform = user_prefix or _platform(user)
    for entry in allowed_users:
        prefix, wanted = _split(entry)
        if wanted != user_id or not wanted:
            continue
        if prefix is None or not platform or prefix == platform:
            return True
    return False


def narrow_approvers(requested: Sequence[str], allowed_users: Sequence[str]) -> tuple[str, ...]:
    """The entries of `requested` that are also approvers in `allowed_users` (the Context's).

    A flow may name fewer approvers than its Context, never others: an entry counts when its id
    matches an allowed entry's id and their platform prefixes (when both have one) agree; the
    more specific of the two spellings is kept.
    """
    kept = []
    for entry in requested:
        prefix, wanted = _split(entry)
        for allowed in allowed_users:
            allowed_prefix, allowed_id = _split(allowed)
            if wanted and wanted == allowed_id and (prefix is None or allowed_prefix in (None, prefix)):
                # The narrower of the two: `U1` named by the flow stays `slack:U1` if the Context says so.
                kept.append(entry if prefix is not None else allowed)
                break
    return tuple(kept)


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
    agent: str = ""
    rule: str | None = None
    origin: ports.ReplyTarget | None = None

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

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, keep_decided: int = 1000) -> None:
        self._clock = clock
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
    ) -> ApprovalRequest:
        """Open a new pending request and return it (its id goes on the approval buttons)."""
        self._trim()
        attempt = 0
        while request_id(context, argv, run_id, attempt) in self._entries:
            attempt += 1
        req = ApprovalRequest(
            id=request_id(context, argv, run_id, attempt),
            context=context,
            argv=tuple(argv),
            run_id=run_id,
            requester=requester,
            allowed_users=tuple(allowed_users),
            min_approvers=max(1, min_approvers),
            allow_self_approval=allow_self_approval,
            timeout_seconds=float(timeout_seconds),
            created_at=self._clock(),
            agent=agent,
            rule=rule,
            origin=origin,
        )
        self._entries[req.id] = _Entry(req)
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
            return Decision.DUPLICATE
        decision = self._decide(entry, user, approve)
        if action_id:
            entry.actions[action_id] = decision
        return decision

    def _decide(self, entry: _Entry, user: ports.UserRef, approve: bool) -> Decision:
        self._expire_if_due(entry)
        if entry.state is State.EXPIRED:
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

    def expire(self, request_id: str, reason: str) -> bool:
        """Expire one request if it is still pending (its prompt failed, its run was cancelled)."""
        entry = self._entries.get(request_id)
        if entry is None or entry.state.final:
            return False
        self._finish(entry, State.EXPIRED, reason)
        return True

    def expire_all(self, reason: str = "restart") -> list[ApprovalRequest]:
        """Expire every pending request (shutdown or start); returns the ones that were pending."""
        expired = []
        for entry in self._entries.values():
            if entry.state is State.PENDING:
                self._finish(entry, State.EXPIRED, reason)
                expired.append(entry.request)
        return expired
