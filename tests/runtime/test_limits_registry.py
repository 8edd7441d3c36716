"""Per-Context rate limits with a fake clock: windows, audit-once, concurrency, token budgets."""

from __future__ import annotations

from aofd.runtime import limits
from aofd.specs import policy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hundred_requests_in_a_second_audited_once() -> None:
    """Row 33: 100 requests in 1 s with 10/minute admit 10, refuse 90, and flag one refusal for audit."""
    clock = Clock()
    registry = limits.RateLimits(clock=clock)
    caps = policy.LimitsPolicy(max_requests_per_minute=10)
    results = []
    for _ in range(100):
        results.append(registry.admit("prod", caps))
        clock.now += 0.01
    admitted = [r for r in results if isinstance(r, limits.Lease)]
    refused = [r for r in results if isinstance(r, limits.Refusal)]
    assert (len(admitted), len(refused)) == (10, 90)
    assert [r.audit for r in refused].count(True) == 1
    assert "retry after 60 s" in refused[0].reason


def test_sliding_window_frees_slots_and_audits_again_next_window() -> None:
    """After the window passes, requests are admitted again and a new refusal is audited again."""
    clock = Clock()
    registry = limits.RateLimits(clock=clock)
    caps = policy.LimitsPolicy(max_requests_per_minute=2)
    assert isinstance(registry.admit("c", caps), limits.Lease)
    clock.now += 30
    assert isinstance(registry.admit("c", caps), limits.Lease)
    refusal = registry.admit("c", caps)
    assert isinstance(refusal, limits.Refusal)
    assert refusal.retry_after == 30.0
    assert refusal.audit
    clock.now += 30
    assert isinstance(registry.admit("c", caps), limits.Lease)
    again = registry.admit("c", caps)
    assert isinstance(again, limits.Refusal)
    assert not again.audit
    clock.now += 61
    assert isinstance(registry.admit("c", caps), limits.Lease)
    assert isinstance(registry.admit("c", caps), limits.Lease)
    third = registry.admit("c", caps)
    assert isinstance(third, limits.Refusal)
    assert third.audit


def test_hourly_limit_and_contexts_are_independent() -> None:
    """`max_requests_per_hour` counts per Context name; another Context is unaffected."""
    clock = Clock()
    registry = limits.RateLimits(clock=clock)
    caps = policy.LimitsPolicy(max_requests_per_hour=3)
    for _ in range(3):
        assert isinstance(registry.admit("a", caps), limits.Lease)
        clock.now += 600
    refusal = registry.admit("a", caps)
    assert isinstance(refusal, limits.Refusal)
    assert refusal.limit == "max_requests_per_hour"
    assert refusal.retry_after == 1800.0
    assert isinstance(registry.admit("b", caps), limits.Lease)


async def test_concurrency_lease_released_by_async_with() -> None:
    """`max_concurrent` holds slots until the lease is released (idempotently)."""
    registry = limits.RateLimits(clock=Clock())
    caps = policy.LimitsPolicy(max_concurrent=1)
    lease = registry.admit("c", caps)
    assert isinstance(lease, limits.Lease)
    refusal = registry.admit("c", caps)
    assert isinstance(refusal, limits.Refusal)
    assert refusal.limit == "max_concurrent"
    async with lease:
        assert registry.active("c") == 1
    lease.release()
    assert registry.active("c") == 0
    assert isinstance(registry.admit("c", caps), limits.Lease)


def test_state_survives_a_hot_swap_with_new_limits() -> None:
    """State is keyed by Context name: tightening the limits applies to requests already counted."""
    clock = Clock()
    registry = limits.RateLimits(clock=clock)
    for _ in range(5):
        assert isinstance(registry.admit("c", policy.LimitsPolicy(max_requests_per_minute=10)), limits.Lease)
    assert isinstance(registry.admit("c", policy.LimitsPolicy(max_requests_per_minute=5)), limits.Refusal)


def test_token_budget_per_day_and_cap_per_request() -> None:
    """Tokens charged over the daily budget refuse requests until they age out; caps clamp max_tokens."""
    clock = Clock()
    registry = limits.RateLimits(clock=clock)
    caps = policy.LimitsPolicy(max_tokens_per_day=1000, max_tokens_per_request=4096)
    assert isinstance(registry.admit("c", caps), limits.Lease)
    registry.charge_tokens("c", 600)
    clock.now += 3600
    registry.charge_tokens("c", 500)
    refusal = registry.admit("c", caps)
    assert isinstance(refusal, limits.Refusal)
    assert refusal.limit == "max_tokens_per_day"
    assert refusal.retry_after == 86400 - 3600
    clock.now += 86400 - 3600
    assert registry.tokens_used("c") == 500
    assert isinstance(registry.admit("c", caps), limits.Lease)
    assert limits.cap_tokens(caps, 8192) == 4096
    assert limits.cap_tokens(caps, None) == 4096
    assert limits.cap_tokens(policy.LimitsPolicy(), 100) == 100
