"""Approvals across a replica set (`approvals.SharedApprovals`) against a real etcd on loopback:
a request asked on one replica is decided by a click on another, racing clicks get one decision,
the asking replica expires it, and an unreachable etcd never grants anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from aofd.runtime import approvals, cluster, ports
from tests.cluster.conftest import eventually, spec, start
from tests.cluster.etcdkit import EtcdCluster, requires_etcd

pytestmark = [requires_etcd, pytest.mark.slow]

REQUESTER = ports.UserRef("U0REQ", "alice", "slack:T1")
LEAD = ports.UserRef("U0LEAD", "lead", "slack:T1")
OTHER = ports.UserRef("U0OTHER", "bob", "slack:T1")
ARGV = ("kubectl", "delete", "pod", "web-1")


@pytest.fixture
async def stores() -> AsyncIterator[list[approvals.SharedApprovals]]:
    made: list[approvals.SharedApprovals] = []
    yield made
    for store in made:
        await store.aclose()


async def pair(
    etcd: EtcdCluster,
    coordinators: list[cluster.Coordinator],
    stores: list[approvals.SharedApprovals],
    *,
    started: bool = True,
) -> tuple[approvals.SharedApprovals, approvals.SharedApprovals]:
    s = spec(etcd.endpoints, member="a")
    a = approvals.SharedApprovals(await start(coordinators, s))
    b = approvals.SharedApprovals(await start(coordinators, s.model_copy(update={"member": "b"})))
    for store in (a, b):
        stores.append(store)
        if started:
            await store.start()
    return a, b


def ask(store: approvals.ApprovalStore, **kw: object) -> approvals.ApprovalRequest:
    args: dict[str, object] = {
        "context": "prod",
        "argv": ARGV,
        "run_id": "run-1",
        "requester": REQUESTER,
        "allowed_users": (LEAD.id, OTHER.id, REQUESTER.id),
        "timeout_seconds": 30.0,
    }
    args.update(kw)
    return store.request(**args)  # type: ignore[arg-type]


async def seen_by(store: approvals.ApprovalStore, rid: str) -> Callable[[], bool]:
    return lambda: store.get(rid) is not None


async def test_a_click_on_another_replica_resumes_the_waiting_run(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    a, b = await pair(etcd1, coordinators, stores)
    req = ask(a)
    assert await a.publish(req.id)
    waiter = asyncio.create_task(a.wait(req.id))
    # B lists it (what `aofctl approvals` shows on any replica) and knows what is missing.
    await eventually(lambda: [r.id for r in b.pending()] == [req.id], 2)
    assert b.missing(req.id) == 1
    assert b.get(req.id) is not None
    assert b.get(req.id).argv == ARGV
    # The requester cannot approve their own request on B either.
    assert (
        await b.click(req.id, REQUESTER, approve=True, action_id="c0") is approvals.Decision.SELF_NOT_ALLOWED
    )
    loop = asyncio.get_running_loop()
    clicked = loop.time()
    assert await b.click(req.id, LEAD, approve=True, action_id="c1") is approvals.Decision.GRANTED
    outcome = await asyncio.wait_for(waiter, 1.0)
    assert loop.time() - clicked < 1.0
    assert outcome.state is approvals.State.GRANTED
    assert [u.id for u in outcome.approvers] == [LEAD.id]
    # The same click delivered again (a CAS retried after a timeout, a platform retry) is the same click.
    assert await b.click(req.id, LEAD, approve=True, action_id="c1") is approvals.Decision.REDELIVERED
    assert await a.click(req.id, OTHER, approve=True, action_id="c2") is approvals.Decision.ALREADY_DECIDED
    assert b.pending() == []
    assert a.pending() == []


async def test_a_deny_on_another_replica_ends_the_request(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    a, b = await pair(etcd1, coordinators, stores)
    req = ask(a, min_approvers=2)
    assert await a.publish(req.id)
    waiter = asyncio.create_task(a.wait(req.id))
    assert await b.click(req.id, LEAD, approve=True, action_id="v1") is approvals.Decision.PENDING_MORE
    await eventually(lambda: a.missing(req.id) == 1, 2)
    assert await b.click(req.id, OTHER, approve=False, action_id="v2") is approvals.Decision.DENIED
    outcome = await asyncio.wait_for(waiter, 1.0)
    assert (outcome.state, outcome.denier) == (approvals.State.DENIED, OTHER)


async def test_racing_clicks_on_two_replicas_make_one_decision(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    a, b = await pair(etcd1, coordinators, stores)
    for n in range(5):
        req = ask(a, run_id=f"race-{n}")
        assert await a.publish(req.id)
        await eventually(await seen_by(b, req.id), 2)
        got = await asyncio.gather(
            a.click(req.id, LEAD, approve=True, action_id=f"x{n}"),
            b.click(req.id, OTHER, approve=False, action_id=f"y{n}"),
        )
        final = [d for d in got if d in (approvals.Decision.GRANTED, approvals.Decision.DENIED)]
        assert len(final) == 1, got
        assert approvals.Decision.ALREADY_DECIDED in got
        outcome = await asyncio.wait_for(a.wait(req.id), 1.0)
        assert outcome.state.value == final[0].value


async def test_the_asking_replica_expires_it_and_a_late_click_finds_it_expired(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    a, b = await pair(etcd1, coordinators, stores)
    req = ask(a, timeout_seconds=0.3)
    assert await a.publish(req.id)
    outcome = await asyncio.wait_for(a.wait(req.id), 2.0)
    assert (outcome.state, outcome.reason) == (approvals.State.EXPIRED, "timeout")
    assert await b.click(req.id, LEAD, approve=True, action_id="late") is approvals.Decision.EXPIRED
    entry = await a._coord.get(approvals.PREFIX + req.id)
    assert entry is not None
    assert b'"state":"expired"' in entry.value


async def test_ids_are_unique_across_replicas(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    a, b = await pair(etcd1, coordinators, stores)
    assert ask(a).id != ask(b).id  # same Context, argv, run and count: the member differs


async def test_a_stopped_replica_cancels_its_requests_everywhere(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    a, b = await pair(etcd1, coordinators, stores)
    req = ask(a)
    assert await a.publish(req.id)
    await eventually(await seen_by(b, req.id), 2)
    await coordinators[0].aclose()  # A's session lease is revoked: its records go with it
    await eventually(lambda: b.pending() == [], 3)
    outcome = b.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.CANCELLED
    assert await b.click(req.id, LEAD, approve=True, action_id="z") is approvals.Decision.UNKNOWN


async def test_etcd_unreachable_denies_new_requests_and_refuses_clicks(
    coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    with EtcdCluster.start(1) as etcd:
        a, b = await pair(etcd, coordinators, stores)
        req = ask(a)
        assert await a.publish(req.id)
        waiter = asyncio.create_task(a.wait(req.id))
        await eventually(await seen_by(b, req.id), 2)
        etcd.members[0].kill()
        # A click cannot be recorded: refused, nothing granted, "try again".
        assert await b.click(req.id, LEAD, approve=True, action_id="k1") is approvals.Decision.UNRECORDED
        assert "try again" in approvals.click_text(approvals.Decision.UNRECORDED)
        assert not waiter.done()
        # A new request cannot be recorded: denied, never left open for a click to grant.
        late = ask(a, run_id="run-2")
        assert not await a.publish(late.id)
        outcome = a.outcome(late.id)
        assert outcome is not None
        assert outcome.state is approvals.State.DENIED
        assert outcome.reason.startswith(approvals.UNRECORDED_REASON)
        assert a.unrecorded == 1
        assert a.cancel(req.id, "test over") is not None
        assert (await waiter).state is approvals.State.CANCELLED


async def test_the_stores_follow_etcd_from_their_first_use(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    """Without `start`: publishing starts the asking replica's watch, listing starts the other's."""
    a, b = await pair(etcd1, coordinators, stores, started=False)
    req = ask(a)
    assert await a.publish(req.id)
    waiter = asyncio.create_task(a.wait(req.id))
    await eventually(lambda: [r.id for r in b.pending()] == [req.id], 3)
    await eventually(lambda: a._loaded.is_set(), 3)
    assert await b.click(req.id, LEAD, approve=True, action_id="w1") is approvals.Decision.GRANTED
    assert (await asyncio.wait_for(waiter, 1.0)).state is approvals.State.GRANTED


async def test_a_decision_made_while_the_watch_was_down_reaches_the_waiting_run(
    coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    """etcd restarts under a waiting run: the asking replica reads the requests again on reconnect."""
    with EtcdCluster.start(1) as etcd:
        a, b = await pair(etcd, coordinators, stores)
        req = ask(a)
        assert await a.publish(req.id)
        waiter = asyncio.create_task(a.wait(req.id))
        await eventually(await seen_by(b, req.id), 2)
        etcd.members[0].restart()
        etcd.members[0].wait_healthy()

        async def granted_on_b() -> bool:
            got = await b.click(req.id, LEAD, approve=True, action_id="after-restart")
            return got in (approvals.Decision.GRANTED, approvals.Decision.REDELIVERED)

        await eventually(granted_on_b, 5, step=0.1)
        outcome = await asyncio.wait_for(waiter, 5.0)
        assert outcome.state is approvals.State.GRANTED


async def test_a_record_removed_while_history_was_compacted_is_cancelled_on_the_other_replica(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator], stores: list[approvals.SharedApprovals]
) -> None:
    """B reads the set, then A stops and etcd compacts its history before B's watch starts: the
    watch resyncs, and the request B read first (whose record is gone) ends on B."""
    a, b = await pair(etcd1, coordinators, stores, started=False)
    req = ask(a)
    assert await a.publish(req.id)
    coord_b = coordinators[1]
    real_scan = coord_b.scan_at

    async def scan_then_lose_history(prefix: str) -> tuple[list[cluster.Entry], int]:
        entries, revision = await real_scan(prefix)
        if prefix == approvals.PREFIX and any(e.key.endswith(req.id) for e in entries):
            await coordinators[0].aclose()  # A's records go with its session lease
            current = (await coord_b._kv().get(coord_b.key("x"))).header.revision
            await coord_b._kv().compact(current)
        return entries, revision

    coord_b.scan_at = scan_then_lose_history  # type: ignore[method-assign]
    await b.start()
    await eventually(lambda: b.get(req.id) is not None, 3)
    await eventually(lambda: b.pending() == [], 5)
    outcome = b.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.CANCELLED
