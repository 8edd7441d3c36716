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
Time comes from an injected monotonic clock. No I/O, no asyncio tasks.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from types import TracebackType

from aofd.specs import policy

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
        checks: list[tuple[str, int | None, collections.deque[float], float]] = [
            ("max_requests_per_minute", limits.max_requests_per_minute, state.minute, MINUTE),
            ("max_requests_per_hour", limits.max_requests_per_hour, state.hour, HOUR),
        ]
        for name, cap, window, length in checks:
            if cap is not None and len(window) >= cap:
                # the slot that frees first is the one taken `len - cap` admissions ago
                oldest = window[len(window) - cap] if cap > 0 else now
                retry = max(0.0, oldest + length - now) if cap > 0 else length
                return self._refuse(
                    context, state, name, f"{cap} requests per {_span(length)}", retry, now, length
                )
        if limits.max_concurrent is not None and state.active >= limits.max_concurrent:
            return self._refuse(
                context,
                state,
                "max_concurrent",
                f"{limits.max_concurrent} concurrent requests",
                1.0,
                now,
                MINUTE,
            )
        if limits.max_tokens_per_day is not None and state.token_total >= limits.max_tokens_per_day:
            retry = self._token_retry(state, limits.max_tokens_per_day, now)
            return self._refuse(
                context,
                state,
                "max_tokens_per_day",
                f"{limits.max_tokens_per_day} tokens per day",
                retry,
                now,
                DAY,
            )
        return None

    def _token_retry(self, state: _State, cap: int, now: float) -> float:
        excess = state.token_total - cap
        freed = 0
        for stamp, tokens in state.tokens:
            freed += tokens
            if freed > excess:
                return max(0.0, stamp + DAY - now)
        return DAY

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


def _span(seconds: float) -> str:
    return {MINUTE: "minute", HOUR: "hour", DAY: "day"}.get(seconds, f"{seconds:g} s")
