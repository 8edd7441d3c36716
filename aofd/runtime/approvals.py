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

The rules of a click are one pure function, `decide_on(state, user, approve, action_id, now)`,
used by both stores below.

The store is keyed by request id and records the Context name, and is owned by the daemon, so
pending approvals survive a hot swap of the Context. It writes no audit records itself: the
guard does, through the `AuditSink` port.

In a replica set (`cluster:`) the daemon uses `SharedApprovals` instead: the same rules, with
every request also kept in etcd (`approvals/<id>`) so that a click on any replica decides it by
compare-and-swap, and a request etcd cannot record is denied (see the class).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from aofd import errors
from aofd.runtime import ports
from aofd.runtime.tasks import TaskSet
from aofd.specs import approvers

if TYPE_CHECKING:
    from aofd.runtime import cluster

log = structlog.get_logger("aofd.approvals")

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
    UNRECORDED = "unrecorded"  # the replica set's store (etcd) could not record it: nothing changed


def request_id(context: str, argv: Sequence[str], run_id: str, attempt: int = 0, member: str = "") -> str:
    """`sha256(context ‖ canonical argv JSON ‖ run id ‖ attempt [‖ member])` as hex; a replica
    set's member name makes ids unique across its replicas."""
    canonical = json.dumps(list(argv), ensure_ascii=True, separators=(",", ":"))
    parts = (context, canonical, run_id, str(attempt), *((member,) if member else ()))
    payload = "\x00".join(parts)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_MARKUP_ESCAPES = str.maketrans({"&": "\\u0026", "<": "\\u003c", ">": "\\u003e", "`": "\\u0060"})


def render_argv(argv: Sequence[str]) -> str:
    """argv as approvers see it: a JSON array, non-ASCII escaped (`\\u202e` cannot hide), and so
    are `&`, `<`, `>` and the backtick (still the same JSON): no chat platform's markup escaping
    or code block changes its length or its text, so what `prompt_budget` measures is what is shown."""
    return json.dumps(list(argv), ensure_ascii=True).translate(_MARKUP_ESCAPES)


PROMPT_BUDGETS: Mapping[str, int] = {
    "slack": 2900,  # a section block's text is at most 3,000 characters (the argv has its own)
    "discord": 1500,  # a message is at most 2,000 characters, the summary included
    "telegram": 3500,  # a message is at most 4,096 characters, the summary included
    "whatsapp": 3400,  # a message is at most 4,096 characters, with the `aofctl approve` hint
    "teams": 8192,  # an Adaptive Card's TextRun (the card may hold about 28 KB)
}
DEFAULT_PROMPT_BUDGET = 8192
"""Characters of `render_argv` shown whole where no limit above applies (trackers, `aofctl`)."""


def prompt_budget(platform: str) -> int:
    """The most characters of `render_argv(argv)` an approval prompt on `platform` shows whole; the
    guard refuses to ask for approval of a longer argv (a prompt never hides part of a command)."""
    return PROMPT_BUDGETS.get(platform, DEFAULT_PROMPT_BUDGET)


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


@dataclasses.dataclass(frozen=True, slots=True)
class EntryState:
    """Where one request stands: the input and the output of `decide_on` (immutable)."""

    request: ApprovalRequest
    state: State = State.PENDING
    approvers: tuple[ports.UserRef, ...] = ()
    denier: ports.UserRef | None = None
    reason: str = ""
    actions: Mapping[str, Decision] = dataclasses.field(default_factory=dict)
    """Click (action) id -> what that click did: a redelivered click changes nothing."""


def decide_on(
    state: EntryState, user: ports.UserRef, approve: bool, action_id: str, now: float
) -> tuple[Decision, EntryState]:
    """The rules of one click, pure: what it does to `state` at time `now` (the clock of
    `state.request.expires_at`). Idempotent per `action_id`; never raises for any input."""
    if action_id and action_id in state.actions:
        return Decision.REDELIVERED, state
    decision, new = _rules(state, user, approve, now)
    if action_id:
        new = dataclasses.replace(new, actions={**new.actions, action_id: decision})
    return decision, new


def expire_on(state: EntryState, now: float) -> EntryState:
    """`state`, expired when it is still pending and its time is up at `now`."""
    if state.state is State.PENDING and now >= state.request.expires_at:
        return dataclasses.replace(state, state=State.EXPIRED, reason="timeout")
    return state


def _rules(state: EntryState, user: ports.UserRef, approve: bool, now: float) -> tuple[Decision, EntryState]:
    state = expire_on(state, now)
    if state.state in (State.EXPIRED, State.CANCELLED):
        return Decision.EXPIRED, state
    if state.state.final:
        return Decision.ALREADY_DECIDED, state
    req = state.request
    is_requester = same_user(user, req.requester)
    if not approve:
        if not (is_requester or is_allowed_approver(user, req.allowed_users)):
            return Decision.NOT_ALLOWED, state
        return Decision.DENIED, dataclasses.replace(state, state=State.DENIED, denier=user, reason="denied")
    if not is_allowed_approver(user, req.allowed_users):
        return Decision.NOT_ALLOWED, state
    if is_requester and not req.allow_self_approval:
        return Decision.SELF_NOT_ALLOWED, state
    if any(same_user(user, seen) for seen in state.approvers):
        return Decision.DUPLICATE, state
    approvers = (*state.approvers, user)
    if len(approvers) >= req.min_approvers:
        return Decision.GRANTED, dataclasses.replace(
            state, state=State.GRANTED, approvers=approvers, reason="approved"
        )
    return Decision.PENDING_MORE, dataclasses.replace(state, approvers=approvers)


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

    def snapshot(self) -> EntryState:
        return EntryState(
            self.request, self.state, tuple(self.approvers), self.denier, self.reason, dict(self.actions)
        )

    def load(self, st: EntryState) -> None:
        """Take `st` (a later state of this request); a final state stays final."""
        if self.state.final:
            self.actions.update(st.actions)
            return
        self.approvers = list(st.approvers)
        self.denier = st.denier
        self.actions = dict(st.actions)
        if st.state.final:
            self.state = st.state
            self.reason = st.reason
            self.done.set()


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
            id=self._new_id(context, argv, run_id, self._made),
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

    async def start(self) -> None:
        """Nothing to start here (a replica set's store starts following etcd)."""

    async def aclose(self) -> None:
        """Nothing to close here (a replica set's store stops following etcd)."""

    def _new_id(self, context: str, argv: Sequence[str], run_id: str, attempt: int) -> str:
        return request_id(context, argv, run_id, attempt)

    def _trim(self) -> list[str]:
        """Forget the oldest decided requests beyond `keep_decided`; returns their ids."""
        decided = [k for k, e in self._entries.items() if e.state.final]
        dropped = decided[: max(0, len(decided) - self._keep_decided)]
        for key in dropped:
            del self._entries[key]
        return dropped

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
        decision, new = decide_on(entry.snapshot(), user, approve, action_id, self._clock())
        entry.load(new)
        return decision

    async def click(self, request_id: str, user: ports.UserRef, *, approve: bool, action_id: str) -> Decision:
        """`decide`, as the desk calls it (a replica set's store records the click in etcd)."""
        return self.decide(request_id, user, approve=approve, action_id=action_id)

    async def publish(self, request_id: str) -> bool:
        """Make a new request decidable wherever its approvers click; False when it could not
        be recorded (it is then final: denied). Here: in this process, always True."""
        return request_id in self._entries

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
    Decision.UNRECORDED: (
        "Your answer could not be recorded (the replica set's store, etcd, is unreachable); "
        "nothing was changed: try again."
    ),
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


# ---- a replica set's approvals (`cluster:`) ------------------------------------------------

PREFIX = "approvals/"
"""Where pending requests live in etcd, under the cluster's prefix: `approvals/<id>`."""
UNRECORDED_REASON = "approval could not be recorded"
WATCH_RETRY = 1.0
"""Seconds between tries to read the requests of the set while etcd cannot be read."""


def _user_doc(user: ports.UserRef) -> list[str]:
    return [user.id, user.name, user.domain]


def _user_of(doc: object) -> ports.UserRef:
    if not isinstance(doc, list) or len(doc) != 3 or not all(isinstance(x, str) for x in doc):
        raise ValueError("a user is [id, name, domain]")
    return ports.UserRef(doc[0], doc[1], doc[2])


def _origin_of(doc: object) -> ports.ReplyTarget:
    if not isinstance(doc, list) or len(doc) != 4 or not all(isinstance(x, str) for x in doc):
        raise ValueError("an origin is [platform, trigger, channel, thread]")
    return ports.ReplyTarget(doc[0], doc[1], doc[2], doc[3])


def encode(st: EntryState, owner: str) -> bytes:
    """One request and its progress as stored in etcd (canonical JSON: the same state gives the
    same bytes). The origin's `extra` (a slash command's response URL) is left out: only the
    replica that asked posts to the chat."""
    req = st.request
    origin = req.origin
    doc = {
        "v": 1,
        "owner": owner,
        "request": {
            "id": req.id,
            "context": req.context,
            "argv": list(req.argv),
            "run_id": req.run_id,
            "requester": _user_doc(req.requester),
            "allowed_users": list(req.allowed_users),
            "min_approvers": req.min_approvers,
            "allow_self_approval": req.allow_self_approval,
            "timeout_seconds": req.timeout_seconds,
            "requested_at": req.requested_at,
            "agent": req.agent,
            "rule": req.rule,
            "subject": req.subject,
            "origin": None
            if origin is None
            else [origin.platform, origin.trigger, origin.channel_id, origin.thread],
        },
        "state": st.state.value,
        "approvers": [_user_doc(u) for u in st.approvers],
        "denier": None if st.denier is None else _user_doc(st.denier),
        "reason": st.reason,
        "actions": {k: v.value for k, v in st.actions.items()},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def decode(raw: bytes, *, created_at: Callable[[float], float]) -> tuple[EntryState, str]:
    """(state, owner member) of a stored request; `created_at(requested_at)` puts its start on
    the reader's clock. Raises ValueError for anything that is not such a record."""
    try:
        doc = json.loads(raw)
        r = doc["request"]
        origin = r["origin"]
        req = ApprovalRequest(
            id=str(r["id"]),
            context=str(r["context"]),
            argv=tuple(str(a) for a in r["argv"]),
            run_id=str(r["run_id"]),
            requester=_user_of(r["requester"]),
            allowed_users=tuple(str(u) for u in r["allowed_users"]),
            min_approvers=int(r["min_approvers"]),
            allow_self_approval=bool(r["allow_self_approval"]),
            timeout_seconds=float(r["timeout_seconds"]),
            created_at=created_at(float(r["requested_at"])),
            requested_at=float(r["requested_at"]),
            agent=str(r["agent"]),
            rule=None if r["rule"] is None else str(r["rule"]),
            origin=None if origin is None else _origin_of(origin),
            subject=str(r["subject"]),
        )
        st = EntryState(
            req,
            State(doc["state"]),
            tuple(_user_of(u) for u in doc["approvers"]),
            None if doc["denier"] is None else _user_of(doc["denier"]),
            str(doc["reason"]),
            {str(k): Decision(v) for k, v in doc["actions"].items()},
        )
        return st, str(doc["owner"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not an approval record ({type(exc).__name__}: {exc})") from None


class SharedApprovals(ApprovalStore):
    """The approvals of a replica set: every request also lives in etcd (`approvals/<id>`, on
    the asking replica's session lease), so a click on any replica decides it.

    - `publish` writes a new request; when etcd cannot take it the request is **denied**
      (`approval could not be recorded`), never left open or granted.
    - `click` applies `decide_on` by compare-and-swap on the record: of two racing clicks
      exactly one decides; a click retried after a timeout is the same click (its action id).
      etcd unreachable -> `Decision.UNRECORDED` ("try again"), nothing changes.
    - One prefix watch per replica (`start`) keeps the local view of every request of the set
      current (`pending`, `outcome`, `missing`, what `aofctl approvals` lists); the run waiting
      on the asking replica wakes on the watch event of the deciding write (or at once, when the
      click landed on its own replica). After a lost watch the prefix is read again.
    - Expiry stays with the asking replica (its `wait` timer), written by compare-and-swap: a
      click racing the timeout either decides or finds the request expired. A request whose
      record vanished (its replica's session ended) is cancelled in every view.

    Only the asking replica runs the command, and only when its own entry became GRANTED from
    a record in etcd: a request it already ended locally (cancelled, expired, unrecorded) stays
    ended whatever a late write says.
    """

    def __init__(
        self,
        coordinator: cluster.Coordinator,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keep_decided: int = 1000,
    ) -> None:
        super().__init__(clock=clock, wall=wall, keep_decided=keep_decided)
        self._coord = coordinator
        self.member = coordinator.member
        self._published: set[str] = set()  # ids this replica asked for and wrote to etcd
        self._tasks: TaskSet[None] = TaskSet("approvals")
        self._watching: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()  # the prefix was read once
        self._stopped = False
        self.unrecorded = 0
        """Requests denied because etcd could not record them (`aofd_cluster_approvals_unrecorded_total`)."""

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the set's requests and watch them from then on; waits (at most a few seconds)
        for the first read. Every other method starts the watch too when it is not running."""
        self._ensure_watching()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WATCH_RETRY * 2):
                await self._loaded.wait()

    async def aclose(self) -> None:
        self._stopped = True
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        await self._tasks.drain(2.0)

    def _ensure_watching(self) -> None:
        if self._stopped or (self._watching is not None and not self._watching.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._watching = loop.create_task(self._watch(), name="approvals-watch")

    async def _watch(self) -> None:
        """Read the prefix, then follow it (the coordinator reads it again after a lost stream);
        while etcd cannot be read, try again every `WATCH_RETRY` seconds. Ends when the
        coordinator stops."""
        while True:
            try:
                entries, revision = await self._coord.scan_at(PREFIX)
                for entry in entries:
                    self._seen(entry.key.removeprefix(PREFIX), entry.value)
                self._loaded.set()
                async for event in self._coord.watch(PREFIX, revision + 1, initial=entries):
                    self._seen(event.key.removeprefix(PREFIX), event.value)
                return
            except errors.CoordinatorUnavailable:
                await asyncio.sleep(WATCH_RETRY)

    def _local_start(self, requested_at: float) -> float:
        return self._clock() - max(0.0, self._wall() - requested_at)

    def _seen(self, rid: str, raw: bytes | None) -> None:
        """A record changed in etcd (None: deleted): bring the local view up to date."""
        entry = self._entries.get(rid)
        if raw is None:
            if entry is not None and not entry.state.final:
                self._finish(entry, State.CANCELLED, "its record left the replica set (its replica stopped)")
            return
        try:
            st, _owner = decode(raw, created_at=self._local_start)
        except ValueError as exc:
            log.warning("approval.bad_record", request_id=rid[:64], error=str(exc))
            return
        if entry is None:
            self._trim()
            entry = self._entries[rid] = _Entry(st.request)
        entry.load(st)

    # ---- the store ------------------------------------------------------------------------

    def _new_id(self, context: str, argv: Sequence[str], run_id: str, attempt: int) -> str:
        return request_id(context, argv, run_id, attempt, self.member)

    def _trim(self) -> list[str]:
        dropped = super()._trim()
        for rid in dropped:
            if rid in self._published:
                self._published.discard(rid)
                self._tasks.spawn(self._forget(rid), name="approval-forget")
        return dropped

    async def _forget(self, rid: str) -> None:
        with contextlib.suppress(errors.CoordinatorUnavailable):
            await self._coord.delete(PREFIX + rid)

    def _expire_if_due(self, entry: _Entry) -> None:
        # A request this replica recorded expires by its `wait` timer, written to etcd, so a click
        # racing the timeout gets one answer everywhere; the rest is the local view.
        if entry.request.id not in self._published:
            super()._expire_if_due(entry)

    def pending(self, context: str | None = None) -> list[ApprovalRequest]:
        self._ensure_watching()
        return super().pending(context)

    async def publish(self, request_id: str) -> bool:
        self._ensure_watching()
        entry = self._entries.get(request_id)
        if entry is None or entry.state.final:
            return False
        try:
            await self._coord.put(
                PREFIX + request_id, encode(entry.snapshot(), self.member), session_lease=True
            )
        except errors.CoordinatorUnavailable as exc:
            self.unrecorded += 1
            log.warning(
                "approval.unrecorded", request_id=request_id, context=entry.request.context, error=str(exc)
            )
            self._finish(entry, State.DENIED, f"{UNRECORDED_REASON} ({exc})")
            # A put that timed out may still have been written: end that record too (best effort).
            self._tasks.spawn(
                self._record_end(request_id, State.DENIED, UNRECORDED_REASON), name="approval-end"
            )
            return False
        self._published.add(request_id)
        return True

    async def click(self, request_id: str, user: ports.UserRef, *, approve: bool, action_id: str) -> Decision:
        self._ensure_watching()
        after: list[EntryState] = []

        def apply(old: bytes | None) -> tuple[Decision, bytes | None]:
            after.clear()
            if old is None:
                return Decision.UNKNOWN, None
            try:
                st, owner = decode(old, created_at=lambda at: at)  # on the wall clock: the hosts agree
            except ValueError:
                return Decision.UNKNOWN, old
            decision, new = decide_on(st, user, approve, action_id, self._wall())
            after.append(new)
            return decision, encode(new, owner)

        try:
            decision = await self._coord.update(PREFIX + request_id, apply)
        except errors.CoordinatorUnavailable as exc:
            log.warning("approval.click_unrecorded", request_id=request_id, error=str(exc))
            return Decision.UNRECORDED
        if after:
            self._learn(request_id, after[0])
        return decision

    def _learn(self, rid: str, st: EntryState) -> None:
        entry = self._entries.get(rid)
        if entry is None:
            self._trim()
            request = dataclasses.replace(st.request, created_at=self._local_start(st.request.requested_at))
            entry = self._entries[rid] = _Entry(request)
        entry.load(st)

    async def wait(self, request_id: str) -> Outcome:
        entry = self._entries[request_id]
        if request_id not in self._published:
            return await super().wait(request_id)
        if not entry.state.final:
            remaining = max(0.0, entry.request.expires_at - self._clock())
            try:
                async with asyncio.timeout(remaining):
                    await entry.done.wait()
            except TimeoutError:
                await self._record_end(request_id, State.EXPIRED, "timeout")
                self._finish(entry, State.EXPIRED, "timeout")
        return Outcome(entry.request, entry.state, tuple(entry.approvers), entry.denier, entry.reason)

    async def _record_end(self, rid: str, state: State, reason: str) -> None:
        """Write `state` to a still pending record (compare-and-swap); a decision written first
        wins and is taken into the local view. etcd unreachable: the local state decides."""

        def end(old: bytes | None) -> tuple[EntryState | None, bytes | None]:
            if old is None:
                return None, None
            try:
                st, owner = decode(old, created_at=lambda at: at)
            except ValueError:
                return None, old
            if st.state.final:
                return st, old
            new = dataclasses.replace(st, state=state, reason=reason)
            return new, encode(new, owner)

        try:
            st = await self._coord.update(PREFIX + rid, end)
        except errors.CoordinatorUnavailable:
            return
        if st is not None:
            self._learn(rid, st)

    def cancel(self, request_id: str, reason: str) -> Outcome | None:
        ended = super().cancel(request_id, reason)
        if ended is not None and request_id in self._published:
            self._tasks.spawn(self._record_end(request_id, State.CANCELLED, reason), name="approval-end")
        return ended

    def cancel_all(self, reason: str = "restart", *, close: bool = False) -> list[ApprovalRequest]:
        cancelled = super().cancel_all(reason, close=close)
        for req in cancelled:
            if req.id in self._published:
                self._tasks.spawn(self._record_end(req.id, State.CANCELLED, reason), name="approval-end")
        return cancelled
