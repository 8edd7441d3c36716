"""`aofd.runtime.claims.Claims`: without a coordinator it is the local dedupe cache; with one,
a delivery taken by one replica is a duplicate on every other, and an etcd outage fails closed
without leaving the delivery marked as seen."""

from __future__ import annotations

import pytest

from aofd import errors
from aofd.runtime import cluster
from aofd.runtime.claims import ClaimResult, Claims, claim_key
from aofd.runtime.dedupe import DedupeCache
from tests.cluster.conftest import eventually, spec, start
from tests.cluster.etcdkit import EtcdCluster, requires_etcd


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_without_a_coordinator_it_is_the_dedupe_cache() -> None:
    clock = Clock()
    claims = Claims(DedupeCache(ttl=60, clock=clock))
    assert await claims.first_time("slack", "t", "Ev1")
    assert not await claims.first_time("slack", "t", "Ev1")
    assert await claims.first_time("slack", "other", "Ev1")
    # Several ids: checked in order, the first one seen before makes it a duplicate.
    assert await claims.first_time("http", "t", ("d1", "sig:abc"))
    assert ClaimResult.DUPLICATE == await claims.claim("http", "t", ("d2", "sig:abc"))
    assert not await claims.first_time("http", "t", "d2")  # as DedupeCache.first_time left it
    # An empty id cannot be de-duplicated: always new.
    assert await claims.first_time("http", "t", "")
    assert await claims.first_time("http", "t", "")
    await claims.forget("http", "t", ("d1", "sig:abc"))
    assert await claims.first_time("http", "t", ("d1", "sig:abc"))
    clock.now += 61
    assert await claims.first_time("slack", "t", "Ev1")
    # Without a coordinator a fenced claim is a plain one (a single host always leads).
    assert ClaimResult.CLAIMED == await claims.claim("schedule", "t", "tick-1", fenced=True)


def test_claim_keys_hash_the_id() -> None:
    key = claim_key("slack", "ops-bot", "Ev/../1")
    assert key.startswith("claims/slack/ops-bot/")
    assert 32 == len(key.rsplit("/", 1)[1])
    assert key != claim_key("slack", "ops-bot", "Ev/../2")


@requires_etcd
@pytest.mark.slow
async def test_a_retry_on_another_replica_is_a_duplicate(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    seen: list[str] = []
    a = Claims(DedupeCache(), await start(coordinators, s), observe=lambda result, _s: seen.append(result))
    b = Claims(DedupeCache(), await start(coordinators, s.model_copy(update={"member": "b"})))
    assert await a.first_time("slack", "t", ("Ev1", "msg:C1:1.0"))
    assert not await b.first_time("slack", "t", "Ev1")  # the retry, at the other replica
    assert not await b.first_time("slack", "t", ("Ev9", "msg:C1:1.0"))  # the twin event
    assert not await a.first_time("slack", "t", "Ev1")  # locally: no round trip
    assert ["claimed"] == seen
    # `retry_later`: forgotten on every replica, so the platform's next retry runs.
    await a.forget("slack", "t", ("Ev1", "msg:C1:1.0"))
    assert await b.first_time("slack", "t", "Ev1")


@requires_etcd
@pytest.mark.slow
async def test_a_fenced_claim_needs_the_leadership(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    leader = await start(coordinators, s)
    await eventually(lambda: leader.is_leader, 5)
    follower = Claims(DedupeCache(), await start(coordinators, s.model_copy(update={"member": "b"})))
    assert ClaimResult.FENCED == await follower.claim("telegram", "t", "42", fenced=True)
    assert not follower.local.seen("telegram", "t", "42")  # nothing recorded: not ours to take
    assert ClaimResult.CLAIMED == await Claims(DedupeCache(), leader).claim(
        "telegram", "t", "42", fenced=True
    )
    assert ClaimResult.DUPLICATE == await follower.claim("telegram", "t", "42")


@requires_etcd
@pytest.mark.slow
async def test_etcd_down_fails_closed_and_the_retry_is_taken_later(
    coordinators: list[cluster.Coordinator],
) -> None:
    with EtcdCluster.start(1) as etcd:
        seen: list[str] = []
        claims = Claims(
            DedupeCache(),
            await start(coordinators, spec(etcd.endpoints)),
            observe=lambda result, _s: seen.append(result),
        )
        assert await claims.first_time("github", "t", "warm-up")  # the claims lease exists now
        etcd.members[0].pause()
        try:
            with pytest.raises(errors.CoordinatorUnavailable, match=r"etcd: claim failed \(timed out\)"):
                await claims.first_time("github", "t", ("delivery-1", "body:ab"))
            assert not claims.local.seen("github", "t", "delivery-1")
            assert not claims.local.seen("github", "t", "body:ab")
            assert ["claimed", "unavailable"] == seen
        finally:
            etcd.members[0].resume()
        assert await claims.first_time("github", "t", ("delivery-1", "body:ab"))
