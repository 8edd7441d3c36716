"""A Context's limits across a replica set (`limits.SharedLimits`) against a real etcd on loopback:
rate windows, concurrency and the daily token budget count every replica's runs; a member that
left gives its slots back; an unreachable etcd refuses admission."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from aofd.runtime import cluster, limits
from aofd.specs import policy
from tests.cluster.conftest import eventually, spec, start
from tests.cluster.etcdkit import EtcdCluster, requires_etcd

pytestmark = [requires_etcd, pytest.mark.slow]


@pytest.fixture
async def registries() -> AsyncIterator[list[limits.SharedLimits]]:
    made: list[limits.SharedLimits] = []
    yield made
    for registry in made:
        await registry.aclose()


async def replicas(
    etcd: EtcdCluster,
    coordinators: list[cluster.Coordinator],
    registries: list[limits.SharedLimits],
    n: int = 2,
) -> list[limits.SharedLimits]:
    s = spec(etcd.endpoints, member="m0")
    for i in range(n):
        registries.append(
            limits.SharedLimits(await start(coordinators, s.model_copy(update={"member": f"m{i}"})))
        )
    return registries


async def test_a_rate_limit_holds_across_replicas(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], registries: list[limits.SharedLimits]
) -> None:
    a, b = await replicas(etcd1, coordinators, registries)
    rules = policy.LimitsPolicy(max_requests_per_minute=3)
    got = await asyncio.gather(*(r.acquire("prod", rules, f"run-{i}") for i, r in enumerate([a, b] * 4)))
    admitted = [g for g in got if isinstance(g, limits.Lease)]
    refused = [g for g in got if isinstance(g, limits.Refusal)]
    assert len(admitted) == 3
    assert {r.limit for r in refused} == {"max_requests_per_minute"}
    assert all(0 < r.retry_after <= 60 for r in refused)
    assert "3 requests per minute" in refused[0].reason
    # Another Context has its own window.
    assert isinstance(await b.acquire("staging", rules, "run-x"), limits.Lease)


async def test_max_concurrent_counts_every_replica_and_releases_free_slots(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], registries: list[limits.SharedLimits]
) -> None:
    a, b = await replicas(etcd1, coordinators, registries)
    rules = policy.LimitsPolicy(max_concurrent=2)
    first = await a.acquire("prod", rules, "r1")
    second = await b.acquire("prod", rules, "r2")
    assert isinstance(first, limits.Lease)
    assert isinstance(second, limits.Lease)
    third = await a.acquire("prod", rules, "r3")
    assert isinstance(third, limits.Refusal)
    assert third.limit == "max_concurrent"
    second.release()  # on B: the slot comes back for A
    await b._tasks.drain(2.0)
    assert isinstance(await a.acquire("prod", rules, "r4"), limits.Lease)
    entry = await coordinators[0].get("limits/prod")
    assert entry is not None
    assert json.loads(entry.value)["active"] == {"r1": "m0", "r4": "m0"}


async def test_a_dead_members_slots_are_dropped(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], registries: list[limits.SharedLimits]
) -> None:
    a, b = await replicas(etcd1, coordinators, registries)
    rules = policy.LimitsPolicy(max_concurrent=1)
    assert isinstance(await b.acquire("prod", rules, "on-b"), limits.Lease)
    assert isinstance(await a.acquire("prod", rules, "on-a"), limits.Refusal)
    await coordinators[1].aclose()  # B's session ends (as when its host dies, after the lease TTL)
    assert isinstance(await a.acquire("prod", rules, "on-a"), limits.Lease)


async def test_the_daily_token_budget_counts_every_replica(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], registries: list[limits.SharedLimits]
) -> None:
    a, b = await replicas(etcd1, coordinators, registries)
    rules = policy.LimitsPolicy(max_tokens_per_day=1000)
    assert isinstance(await a.acquire("prod", rules, "r1"), limits.Lease)
    a.charge_tokens("prod", 600)
    b.charge_tokens("prod", 300)
    await a.flush()
    await b.flush()
    assert isinstance(await a.acquire("prod", rules, "r2"), limits.Lease)  # 900 of 1000
    b.charge_tokens("prod", 150)  # not written yet: B counts it itself, A once it is written
    refused = await b.acquire("prod", rules, "r3")
    assert isinstance(refused, limits.Refusal)
    assert refused.limit == "max_tokens_per_day"

    async def a_refuses() -> bool:
        return isinstance(await a.acquire("prod", rules, "r4"), limits.Refusal)

    await eventually(a_refuses, 3)
    entries = await coordinators[0].scan("tokens/prod/")
    assert sorted(int(e.value) for e in entries) == [450, 600]


async def test_etcd_unreachable_refuses_admission(
    coordinators: list[cluster.Coordinator], registries: list[limits.SharedLimits]
) -> None:
    with EtcdCluster.start(1) as etcd:
        (a,) = await replicas(etcd, coordinators, registries, n=1)
        rules = policy.LimitsPolicy(max_requests_per_minute=100)
        assert isinstance(await a.acquire("prod", rules, "r1"), limits.Lease)
        etcd.members[0].kill()
        refused = await a.acquire("prod", rules, "r2")
        assert isinstance(refused, limits.Refusal)
        assert (refused.limit, refused.retry_after, refused.audit) == ("cluster", 5.0, True)
        assert "could not be checked across the replica set" in refused.reason
        # No limit to count: nothing to ask etcd.
        assert isinstance(await a.acquire("prod", policy.LimitsPolicy(), "r3"), limits.Lease)
