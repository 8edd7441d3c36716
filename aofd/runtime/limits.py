"""Per-Context rate limits, concurrency caps and token budgets (state; clock injected).

This module owns `spec.limits` enforcement (upstream never enforced it, AOF-UPSTREAM.md 4.3):

- `max_requests_per_minute` and `max_requests_per_hour`: sliding windows of admitted requests;
- `max_concurrent` (the smaller of upstream's `max_concurrent` and the seed's
  `max_concurrent_requests`): a counter taken by `admit` and given back by `Lease.release()`
  (or `async with lease:`);
- `max_tokens_per_day`: a sliding 24 h window of tokens charged with `charge_tokens`;
  `max_tokens_per_request`: `cap_tokens` gives the `max_tokens` to ask a model for.

State is keyed by **Context name** and lives in one `RateLimits` owned by the daemon, so a
hot swap of the Context (new limits, same name) keeps the counts. The limits themselves are
passed on every call, so a swap takes effect at once.

A refusal says "retry after N s" and carries `audit=True` only for the first refusal of a
quiet window per (Context, limit) (the limit's own window, at most `AUDIT_QUIET_S`): 100
refused triggers give one `ratelimit.exceeded` record, not 100. The refusals left out are
counted; the guard writes one summary record for them when the quiet window ends (or at
shutdown), taking the count with `take_suppressed`, and an audited refusal carries any count
not yet told (`suppressed`); `/metrics` counts every one.
Time comes from an injected monotonic clock. `RateLimits` does no I/O and starts no tasks.

In a replica set (`cluster:`) the daemon uses `SharedLimits`: the same checks (`first_hit`,
and the pure `admit_counts` on the set's stored counts), with the counts of every replica kept
in etcd; when etcd cannot be read, admission is refused (see the class).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from aofd import errors
from aofd.runtime.tasks import TaskSet
from aofd.specs import policy

if TYPE_CHECKING:
    from aofd.runtime import cluster

AUDIT_QUIET_S = 60.0
"""At most this long between two audited refusals of one Context and limit (a day's limit too)."""
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused by a limit; `audit` is True for the first refusal of its window."""

    context: str
    limit: str
    reason: str
    retry_after: float
    audit: bool
    suppressed: int = 0
    """Audited refusals only: refusals of this Context and limit left out since the last record."""
    quiet_for: float = 0.0
    """Refusals left out: seconds until their quiet window ends (when their summary is due)."""
    first_left_out: bool = False
    """The first refusal left out in its quiet window: whoever audits schedules the summary."""


class Lease:
    """One admitted request: holds a concurrency slot until released (idempotent)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    @property
    def released(self) -> bool:
        return self._release is None

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclasses.dataclass(slots=True)
class _State:
    # Invariant: every deque is sorted by time; entries older than their window are pruned lazily.
    minute: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    hour: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    tokens: collections.deque[tuple[float, int]] = dataclasses.field(default_factory=collections.deque)
    token_total: int = 0
    active: int = 0
    quiet_until: dict[str, float] = dataclasses.field(default_factory=dict)
    suppressed: dict[str, int] = dataclasses.field(default_factory=dict)


def cap_tokens(limits: policy.LimitsPolicy, requested: int | None) -> int | None:
    """The `max_tokens` for one model call: the request, capped by `max_tokens_per_request`."""
    cap = limits.max_tokens_per_request
    if cap is None:
        return requested
    return cap if requested is None else min(requested, cap)


class RateLimits:
    """The daemon-wide registry of limit state, keyed by Context name."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[str, _State] = {}

    def _state(self, context: str) -> _State:
        state = self._states.get(context)
        if state is None:
            state = self._states[context] = _State()
        return state

    def _prune(self, state: _State, now: float) -> None:
        while state.minute and state.minute[0] <= now - MINUTE:
            state.minute.popleft()
        while state.hour and state.hour[0] <= now - HOUR:
            state.hour.popleft()
        while state.tokens and state.tokens[0][0] <= now - DAY:
            state.token_total -= state.tokens.popleft()[1]

    async def acquire(self, context: str, limits: policy.LimitsPolicy, run_id: str = "") -> Lease | Refusal:
        """`admit`, as the guard calls it (a replica set's registry counts every replica's runs)."""
        return self.admit(context, limits)

    async def aclose(self) -> None:
        """Nothing to write back here (a replica set's registry writes buffered tokens)."""

    def admit(self, context: str, limits: policy.LimitsPolicy) -> Lease | Refusal:
        """Admit one request now, or say which limit refuses it and when to retry.

        Nothing is counted for a refused request.
        """
        now = self._clock()
        state = self._state(context)
        self._prune(state, now)
        refusal = self._check(context, state, limits, now)
        if refusal is not None:
            return refusal
        state.minute.append(now)
        state.hour.append(now)
        state.active += 1

        def release() -> None:
            state.active -= 1

        return Lease(release)

    def _check(self, context: str, state: _State, limits: policy.LimitsPolicy, now: float) -> Refusal | None:
        hit = first_hit(
            limits,
            minute=state.minute,
            hour=state.hour,
            active=state.active,
            tokens=state.token_total,
            token_spans=state.tokens,
            now=now,
        )
        if hit is None:
            return None
        return self._refuse(context, state, hit.limit, hit.what, hit.retry, now, hit.window)

    def _refuse(
        self, context: str, state: _State, limit: str, what: str, retry: float, now: float, window: float
    ) -> Refusal:
        quiet_until = state.quiet_until.get(limit, -math.inf)
        audit = now >= quiet_until
        suppressed = 0
        first_left_out = False
        if audit:
            state.quiet_until[limit] = now + min(window, AUDIT_QUIET_S)
            suppressed = state.suppressed.pop(limit, 0)
        else:
            first_left_out = limit not in state.suppressed
            state.suppressed[limit] = state.suppressed.get(limit, 0) + 1
        seconds = max(1, math.ceil(retry))
        reason = f"rate limit of Context {context} reached ({what}); retry after {seconds} s"
        return Refusal(
            context=context,
            limit=limit,
            reason=reason,
            retry_after=float(seconds),
            audit=audit,
            suppressed=suppressed,
            quiet_for=0.0 if audit else max(0.0, quiet_until - now),
            first_left_out=first_left_out,
        )

    def take_suppressed(self, context: str, limit: str) -> int:
        """The refusals of `context` and `limit` left out since the last record, counted as told
        (a summary record is written for them now)."""
        state = self._states.get(context)
        return state.suppressed.pop(limit, 0) if state is not None else 0

    def charge_tokens(self, context: str, tokens: int) -> None:
        """Count model tokens (input + output) against the Context's daily budget."""
        if tokens <= 0:
            return
        now = self._clock()
        state = self._state(context)
        self._prune(state, now)
        state.tokens.append((now, tokens))
        state.token_total += tokens

    def tokens_used(self, context: str) -> int:
        """Tokens charged in the last 24 h."""
        state = self._state(context)
        self._prune(state, self._clock())
        return state.token_total

    def active(self, context: str) -> int:
        """Requests currently holding a concurrency slot."""
        return self._state(context).active

    def forget(self, keep: set[str]) -> None:
        """Drop the state of Contexts not in `keep` (after a reconcile removed them), unless busy."""
        for name in [n for n, s in self._states.items() if n not in keep and s.active == 0]:
            del self._states[name]


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    """The limit a request would exceed: which, in words, when to retry, its window (seconds)."""

    limit: str
    what: str
    retry: float
    window: float


def first_hit(
    limits: policy.LimitsPolicy,
    *,
    minute: Sequence[float],
    hour: Sequence[float],
    active: int,
    tokens: int,
    token_spans: Iterable[tuple[float, int]],
    now: float,
) -> Hit | None:
    """The first limit one more request would exceed, given the admissions of the last minute and
    hour (sorted times, pruned), the requests running, the tokens of the last day and when they
    were charged (sorted; when each can stop counting is its time + a day)."""
    checks: list[tuple[str, int | None, Sequence[float], float]] = [
        ("max_requests_per_minute", limits.max_requests_per_minute, minute, MINUTE),
        ("max_requests_per_hour", limits.max_requests_per_hour, hour, HOUR),
    ]
    for name, cap, window, length in checks:
        if cap is not None and len(window) >= cap:
            # the slot that frees first is the one taken `len - cap` admissions ago
            oldest = window[len(window) - cap] if cap > 0 else now
            retry = min(length, max(0.0, oldest + length - now)) if cap > 0 else length
            return Hit(name, f"{cap} requests per {_span(length)}", retry, length)
    if limits.max_concurrent is not None and active >= limits.max_concurrent:
        return Hit("max_concurrent", f"{limits.max_concurrent} concurrent requests", 1.0, MINUTE)
    cap = limits.max_tokens_per_day
    if cap is not None and tokens >= cap:
        retry = DAY
        excess, freed = tokens - cap, 0
        for stamp, charged in token_spans:
            freed += charged
            if freed > excess:
                retry = max(0.0, stamp + DAY - now)
                break
        return Hit("max_tokens_per_day", f"{cap} tokens per day", retry, DAY)
    return None


def _span(seconds: float) -> str:
    return {MINUTE: "minute", HOUR: "hour", DAY: "day"}.get(seconds, f"{seconds:g} s")


# ---- limits across a replica set (`cluster:`) ----------------------------------------------

UNAVAILABLE = "cluster"
"""The `Refusal.limit` of a request refused because the set's counts could not be read (etcd)."""
UNAVAILABLE_RETRY = 5.0
TOKEN_BUCKET = HOUR
"""Tokens are kept per member and hour (`tokens/<context>/<member>/<YYYYMMDDHH>`, UTC)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """One Context's shared counts (`limits/<context>` in etcd): admission times of the last
    minute and hour (at most the cap each) and the runs holding a concurrency slot (run id ->
    member). Times are wall-clock seconds: the hosts of a set need synchronised clocks (NTP)."""

    minute: tuple[float, ...] = ()
    hour: tuple[float, ...] = ()
    active: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def encode(self) -> bytes:
        doc = {"minute": list(self.minute), "hour": list(self.hour), "active": dict(self.active)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Counts:
        """The stored counts; nothing (or a record that is not one) counts as none."""
        if raw is None:
            return cls()
        try:
            doc = json.loads(raw)
            return cls(
                tuple(sorted(float(t) for t in doc["minute"])),
                tuple(sorted(float(t) for t in doc["hour"])),
                {str(k): str(v) for k, v in doc["active"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()

    def pruned(self, now: float, *, member: str, mine: frozenset[str], live: frozenset[str] | None) -> Counts:
        """Without admissions older than their window, runs of `member` it no longer runs (a
        release that could not be written) and, when `live` is known, runs of members gone."""
        active = {
            run: who
            for run, who in self.active.items()
            if (run in mine if who == member else live is None or who in live)
        }
        return Counts(
            tuple(t for t in self.minute if t > now - MINUTE),
            tuple(t for t in self.hour if t > now - HOUR),
            active,
        )


def admit_counts(
    raw: bytes | None,
    limits: policy.LimitsPolicy,
    *,
    now: float,
    run_id: str,
    member: str,
    mine: frozenset[str],
    live: frozenset[str] | None,
    tokens: int,
    token_spans: Sequence[tuple[float, int]],
) -> tuple[Hit | None, bytes | None]:
    """One admission against the set's stored counts, pure: (the limit hit or None, the counts to
    store). A refusal stores nothing new; an admission adds `now` to the windows (each kept to its
    cap) and `run_id` (of `member`) to the running ones."""
    counts = Counts.decode(raw).pruned(now, member=member, mine=mine, live=live)
    hit = first_hit(
        limits,
        minute=counts.minute,
        hour=counts.hour,
        active=len(counts.active),
        tokens=tokens,
        token_spans=token_spans,
        now=now,
    )
    if hit is not None:
        return hit, raw
    minute_cap = limits.max_requests_per_minute
    hour_cap = limits.max_requests_per_hour
    admitted = Counts(
        tuple(sorted((*counts.minute, now)))[-minute_cap:] if minute_cap else (),
        tuple(sorted((*counts.hour, now)))[-hour_cap:] if hour_cap else (),
        {**counts.active, run_id: member} if limits.max_concurrent is not None else {},
    )
    return None, admitted.encode()


def release_counts(raw: bytes | None, *, run_id: str) -> tuple[None, bytes | None]:
    """The stored counts without `run_id`'s concurrency slot."""
    if raw is None:
        return None, None
    counts = Counts.decode(raw)
    if run_id not in counts.active:
        return None, raw
    active = {k: v for k, v in counts.active.items() if k != run_id}
    return None, dataclasses.replace(counts, active=active).encode()


def bucket_name(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y%m%d%H")


def bucket_start(name: str) -> float | None:
    try:
        return datetime.datetime.strptime(name, "%Y%m%d%H").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


class SharedLimits(RateLimits):
    """The limits of a replica set: every replica's runs count (plan: one compare-and-swap
    record per Context for the windows and running requests, token buckets per member).

    - `acquire` reads the tokens of the last day (every member's hourly buckets, plus what this
      replica charged and has not written yet), the live members when `max_concurrent` is set,
      and admits by compare-and-swap on `limits/<context>`: two replicas admitting at once both
      see each other's admission (one of them retries on the new counts).
    - A lease's release removes its run by compare-and-swap in the background; a release that
      could not be written is dropped on this replica's next admission, and the runs of a
      member whose session ended are dropped by the next admission anywhere.
    - `charge_tokens` stays synchronous: tokens are buffered and written to this member's bucket
      at once in the background (`flush`; no contention: only this member writes it).
    - etcd unavailable: the request is **refused** (`limit` "cluster", retry after 5 s), audited
      like any refusal (fail closed: no replica runs past a limit it cannot check).

    The audit throttling of refusals (quiet windows, summaries) stays per replica.
    """

    def __init__(
        self,
        coordinator: cluster.Coordinator,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        self._coord = coordinator
        self.member = coordinator.member
        self._wall = wall
        self._running: dict[str, set[str]] = {}  # Context -> run ids admitted here and not released
        self._unwritten: dict[tuple[str, str], int] = {}  # (Context, bucket) -> tokens not yet written
        self._tasks: TaskSet[None] = TaskSet("limits")
        self._flush_lock = asyncio.Lock()
        self._flush_due = False  # a flush task is spawned and has not started writing yet

    async def acquire(self, context: str, limits: policy.LimitsPolicy, run_id: str = "") -> Lease | Refusal:
        shared = (limits.max_requests_per_minute, limits.max_requests_per_hour, limits.max_concurrent)
        if all(cap is None for cap in shared) and limits.max_tokens_per_day is None:
            return self.admit(context, limits)  # nothing to count across the set
        run = run_id or secrets.token_hex(8)
        now_local = self._clock()
        state = self._state(context)
        now = self._wall()
        running = self._running.setdefault(context, set())
        running.add(run)  # before the write: a concurrent admission here must not drop its slot
        try:
            tokens, spans = (
                await self._tokens(context, now) if limits.max_tokens_per_day is not None else (0, [])
            )
            live = await self._live() if limits.max_concurrent is not None else None
            mine = frozenset(running)
            hit = await self._coord.update(
                f"limits/{context}",
                lambda raw: admit_counts(
                    raw,
                    limits,
                    now=now,
                    run_id=run,
                    member=self.member,
                    mine=mine,
                    live=live,
                    tokens=tokens,
                    token_spans=spans,
                ),
            )
        except errors.CoordinatorUnavailable as exc:
            running.discard(run)
            refusal = self._refuse(context, state, UNAVAILABLE, "", UNAVAILABLE_RETRY, now_local, MINUTE)
            reason = (
                f"limits of Context {context} could not be checked across the replica set ({exc}); "
                f"retry after {UNAVAILABLE_RETRY:g} s"
            )
            return dataclasses.replace(refusal, reason=reason)
        except BaseException:
            running.discard(run)
            raise
        if hit is not None:
            running.discard(run)
            return self._refuse(context, state, hit.limit, hit.what, hit.retry, now_local, hit.window)
        state.active += 1

        def release() -> None:
            state.active -= 1
            running.discard(run)
            self._tasks.spawn(self._release(context, run), name=f"limits-release:{context}")

        return Lease(release)

    async def _release(self, context: str, run: str) -> None:
        with contextlib.suppress(errors.CoordinatorUnavailable):
            await self._coord.update(f"limits/{context}", lambda raw: release_counts(raw, run_id=run))

    async def _live(self) -> frozenset[str]:
        return frozenset(e.key.removeprefix("members/") for e in await self._coord.scan("members/"))

    async def _tokens(self, context: str, now: float) -> tuple[int, list[tuple[float, int]]]:
        """Tokens charged by every member in the last 24 hourly buckets (this one's unwritten
        ones too) and (bucket start, tokens) oldest first."""
        since = math.floor(now / TOKEN_BUCKET) * TOKEN_BUCKET - DAY + TOKEN_BUCKET
        by_bucket: dict[float, int] = collections.defaultdict(int)
        stale: list[str] = []
        for entry in await self._coord.scan(f"tokens/{context}/"):
            who, _, name = entry.key.removeprefix(f"tokens/{context}/").partition("/")
            start = bucket_start(name)
            if start is None:
                continue
            if start < since:
                if who == self.member:
                    stale.append(entry.key)
                continue
            with contextlib.suppress(ValueError):
                by_bucket[start] += max(0, int(entry.value))
        for (ctx, name), count in self._unwritten.items():
            start = bucket_start(name)
            if ctx == context and start is not None and start >= since:
                by_bucket[start] += count
        for key in stale:
            self._tasks.spawn(self._drop(key), name="limits-tokens-drop")
        spans = sorted(by_bucket.items())
        return sum(count for _, count in spans), spans

    async def _drop(self, key: str) -> None:
        with contextlib.suppress(errors.CoordinatorUnavailable):
            await self._coord.delete(key)

    def charge_tokens(self, context: str, tokens: int) -> None:
        super().charge_tokens(context, tokens)
        if tokens <= 0:
            return
        key = (context, bucket_name(self._wall()))
        self._unwritten[key] = self._unwritten.get(key, 0) + tokens
        if not self._flush_due:
            self._flush_due = True
            self._tasks.spawn(self.flush(), name="limits-tokens")

    async def flush(self) -> None:
        """Write the tokens charged here to this member's buckets (what failed stays buffered and
        keeps counting here until a later flush writes it)."""
        async with self._flush_lock:
            self._flush_due = False
            while self._unwritten:
                (context, name), count = next(iter(self._unwritten.items()))
                key = f"tokens/{context}/{self.member}/{name}"

                def add(raw: bytes | None, count: int = count) -> tuple[None, bytes]:
                    try:
                        before = int(raw) if raw is not None else 0
                    except ValueError:
                        before = 0
                    return None, str(before + count).encode()

                try:
                    await self._coord.update(key, add)
                except errors.CoordinatorUnavailable:
                    return
                left = self._unwritten.get((context, name), 0) - count
                if left > 0:
                    self._unwritten[(context, name)] = left
                else:
                    self._unwritten.pop((context, name), None)

    async def aclose(self) -> None:
        """Write what is buffered and wait for the background writes (bounded)."""
        with contextlib.suppress(errors.CoordinatorUnavailable):
            await self.flush()
        await self._tasks.drain(2.0)
