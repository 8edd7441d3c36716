"""The etcd adapter (`aofd.runtime.cluster.Coordinator`) against real etcd servers on loopback:
joining, delivery claims, the election and its fencing, compare-and-swap, watches across an
etcd restart, TLS with a password login, and a three-member etcd losing members."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aofd import errors
from aofd.runtime import cluster
from aofd.runtime.cluster import ClaimResult
from tests.cluster.conftest import eventually, spec, start
from tests.cluster.etcdkit import EtcdCluster, requires_etcd

pytestmark = [requires_etcd, pytest.mark.slow]


async def test_join_publishes_the_member_and_the_state(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a = await start(coordinators, spec(etcd1.endpoints, member="host-a"))
    entry = await a.get("members/host-a")
    assert entry is not None
    assert b'"member": "host-a"' in entry.value
    await eventually(lambda: a.is_leader, 5)
    state = a.state()
    assert (True, True, "host-a") == (state.etcd_up, state.is_leader, state.leader)
    assert 0 < state.lease_valid_for <= 3
    assert state.revision > 0
    assert ["host-a"] == [m["member"] for m in state.members]


async def test_a_member_name_in_use_refuses_to_start(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    first = spec(etcd1.endpoints, member="twin")
    await start(coordinators, first)
    second = cluster.Coordinator(first)
    coordinators.append(second)
    with pytest.raises(errors.ConfigError, match=r"cluster\.member 'twin' is in use by another running aofd"):
        await second.start()


async def test_a_rejoin_does_not_take_a_member_name_another_live_process_holds(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    first = spec(etcd1.endpoints, member="twin")
    a = await start(coordinators, first)
    # a's session ends in etcd and another process with the same name joins meanwhile.
    await a._leases().revoke(a._lease)
    other = cluster.Coordinator(first)
    other._info["pid"] = -1  # as another process
    coordinators.append(other)
    assert await other.start()
    held = await other.get("members/twin")
    assert held is not None
    assert held.lease == other._lease
    # a notices at its next renewal and tries to join again: it must not overwrite the key.
    await eventually(lambda: "held by another running aofd" in (a.state().last_error or ""), 5)
    still = await other.get("members/twin")
    assert still is not None
    assert (still.lease, still.create_revision) == (other._lease, held.create_revision)
    assert not a.session_valid()


async def test_ten_concurrent_claims_have_one_winner(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    results = await asyncio.gather(*(c.claim(["claims/slack/t/ev1"]) for c in [a, b] * 5))
    assert 1 == results.count(ClaimResult.CLAIMED)
    assert 9 == results.count(ClaimResult.DUPLICATE)
    # Several keys in one claim: taken only when none was taken before.
    assert ClaimResult.DUPLICATE == await a.claim(["claims/slack/t/ev2", "claims/slack/t/ev1"])
    assert await a.get("claims/slack/t/ev2") is None
    assert ClaimResult.CLAIMED == await b.claim(["claims/slack/t/ev2", "claims/slack/t/ev3"])
    winner = [a, b][results.index(ClaimResult.CLAIMED) % 2]
    await winner.unclaim(["claims/slack/t/ev1"])
    assert ClaimResult.CLAIMED == await b.claim(["claims/slack/t/ev1"])
    # A claims lease that etcd no longer has is replaced (its claims went with it).
    for lease in list(b._claim_leases.values()):
        await b._leases().revoke(lease)
    assert await b.get("claims/slack/t/ev1") is None
    assert ClaimResult.CLAIMED == await b.claim(["claims/slack/t/ev4"])
    entry = await b.get("claims/slack/t/ev4")
    assert entry is not None
    assert entry.lease not in (0, b._lease)


async def test_a_claim_that_timed_out_but_committed_is_released_so_the_retry_runs_on_any_replica(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    real_call = a._call
    lost = {"claim": 1, "drop a claim": 0}

    async def committed_then_timed_out(what: str, make: object) -> object:
        result = await real_call(what, make)  # type: ignore[arg-type]
        if lost.get(what, 0) <= 0:
            return result
        lost[what] -= 1
        raise errors.CoordinatorUnavailable(f"etcd: {what} failed (timed out)")

    a._call = committed_then_timed_out  # type: ignore[method-assign,assignment]
    lost["drop a claim"] = 2  # the first releases are lost too: the queue keeps trying
    with pytest.raises(errors.CoordinatorUnavailable):
        await a.claim(["claims/slack/t/late", "claims/slack/t/late-twin"])
    assert 2 == a.pending_releases
    # The claim committed; the background release deletes it, so the platform's retry of the
    # refused delivery is taken at another replica (not a duplicate that would lose it).
    await eventually(lambda: a.pending_releases == 0, 5)
    assert await a.get("claims/slack/t/late") is None
    assert ClaimResult.CLAIMED == await b.claim(["claims/slack/t/late", "claims/slack/t/late-twin"])
    assert ClaimResult.DUPLICATE == await a.claim(["claims/slack/t/late"])
    # At the same replica a timed-out claim is its own: released first, then taken.
    lost["claim"] = 1
    with pytest.raises(errors.CoordinatorUnavailable):
        await a.claim(["claims/slack/t/again"])
    assert ClaimResult.CLAIMED == await a.claim(["claims/slack/t/again"])
    assert 0 == a.pending_releases
    assert ClaimResult.DUPLICATE == await b.claim(["claims/slack/t/again"])


async def test_unclaim_deletes_only_its_own_claims_and_a_failed_one_is_retried(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    assert ClaimResult.CLAIMED == await b.claim(["claims/slack/t/b-owns"])
    await a.unclaim(["claims/slack/t/b-owns"])  # not a's claim: it stays
    assert await a.get("claims/slack/t/b-owns") is not None
    assert ClaimResult.CLAIMED == await a.claim(["claims/slack/t/a-owns"])
    real_call = a._call
    fail = {"left": 1}

    async def drop_fails_once(what: str, make: object) -> object:
        if what == "read a claim" and fail["left"] > 0:
            fail["left"] -= 1
            raise errors.CoordinatorUnavailable(f"etcd: {what} failed (timed out)")
        return await real_call(what, make)  # type: ignore[arg-type]

    a._call = drop_fails_once  # type: ignore[method-assign,assignment]
    with pytest.raises(errors.CoordinatorUnavailable):
        await a.unclaim(["claims/slack/t/a-owns"])
    await eventually(lambda: a.pending_releases == 0, 5)
    assert ClaimResult.CLAIMED == await b.claim(["claims/slack/t/a-owns"])


async def test_compare_and_swap_lets_exactly_one_of_two_racing_updates_win(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))

    def decide(who: str):  # type: ignore[no-untyped-def]
        def fn(old: bytes | None) -> tuple[bool, bytes | None]:
            if old == b"pending":
                return True, b"decided by " + who.encode()
            return False, old

        return fn

    for round_ in range(10):
        key = f"approvals/r{round_}"
        await a.put(key, b"pending")
        won = await asyncio.gather(a.update(key, decide("a")), b.update(key, decide("b")))
        assert 1 == won.count(True), won
        entry = await a.get(key)
        assert entry is not None
        assert entry.value == b"decided by " + (b"a" if won[0] else b"b")
    # A new key gets the session lease only when asked; None deletes.
    assert "made" == await a.update("approvals/new", lambda old: ("made", b"x"), session_lease=True)
    entry = await a.get("approvals/new")
    assert entry is not None
    assert entry.lease != 0
    assert await a.update("approvals/new", lambda old: (old, None)) == b"x"
    assert await a.get("approvals/new") is None


async def test_the_election_fails_over_when_the_leader_lease_is_revoked(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    await eventually(lambda: a.is_leader, 5)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    b_changes: list[bool] = []
    b.on_leadership(b_changes.append)
    await asyncio.sleep(0.3)
    assert (True, False) == (a.is_leader, b.is_leader)
    assert "a" == b.state().leader
    old_token = a.leader_rev
    assert old_token is not None
    # The leader's session ends in etcd (as when its lease runs out): b takes over at once.
    await a._leases().revoke(a._lease)
    took = await eventually(lambda: b.is_leader, s.lease_ttl + 2)
    assert took < 2.0
    assert [True] == b_changes
    assert b.leader_rev is not None
    assert b.leader_rev > old_token
    # Before a notices, etcd refuses its fenced claims, and it steps down.
    a._leader_rev = old_token
    a.fence = lambda: True  # type: ignore[method-assign]  # as if its local clock were wrong
    assert ClaimResult.FENCED == await a.claim(["sched/job/1"], fenced=True)
    assert await a.get("sched/job/1") is None
    assert a._leader_rev is None
    assert ClaimResult.CLAIMED == await b.claim(["sched/job/1"], fenced=True)


async def test_a_leader_whose_renewals_stop_fences_itself_before_etcd_expires_it(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    await eventually(lambda: a.is_leader, 5)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    a_changes: list[bool] = []
    a.on_leadership(a_changes.append)

    async def partitioned(what: str, make: object) -> object:  # every request of `a` is lost
        raise errors.CoordinatorUnavailable(f"etcd: {what} failed (timed out)")

    a._call = partitioned  # type: ignore[method-assign,assignment]
    paused = time.monotonic()
    fenced_at = gone_at = None
    while gone_at is None:
        now = time.monotonic()
        if fenced_at is None and not a.fence():
            fenced_at = now
            assert ClaimResult.FENCED == await a.claim(["sched/job/2"], fenced=True)
        leader = await b.get("leader")
        if leader is None or leader.value != b"a":
            gone_at = now
        assert now - paused < s.lease_ttl + 2
        await asyncio.sleep(0.02)
    assert fenced_at is not None
    assert fenced_at < gone_at - 0.5  # the local fence ends well before etcd's expiry
    assert [False] == a_changes
    took = await eventually(lambda: b.is_leader, s.lease_ttl + 2)
    assert time.monotonic() - paused - took < s.lease_ttl + 2
    assert ClaimResult.CLAIMED == await b.claim(["sched/job/2"], fenced=True)


async def test_a_failed_renewal_is_tried_again_at_once_and_the_leader_keeps_leading(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a = await start(coordinators, spec(etcd1.endpoints))
    await eventually(lambda: a.is_leader, 5)
    real_keep_alive = a._keep_alive
    tries: list[float] = []

    async def hiccup(lease: int) -> int:
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise errors.CoordinatorUnavailable("etcd: renew the session lease failed (timed out)")
        return await real_keep_alive(lease)

    a._keep_alive = hiccup  # type: ignore[method-assign]
    changes = a.state().leader_changes
    await eventually(lambda: len(tries) >= 2, 3)
    assert tries[1] - tries[0] < cluster.RENEW_RETRY + 0.3  # not a full TTL/3 (1 s) later
    await eventually(lambda: len(tries) >= 3, 3)
    assert a.is_leader
    assert changes == a.state().leader_changes


async def test_a_clean_stop_hands_leadership_over_at_once(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    await eventually(lambda: a.is_leader, 5)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    await a.aclose()
    assert await b.get("members/a") is None
    assert await eventually(lambda: b.is_leader, 2) < 1.5


async def test_retire_hands_leadership_over_and_keeps_the_session_for_the_drain(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a = await start(coordinators, s)
    await eventually(lambda: a.is_leader, 5)
    b = await start(coordinators, s.model_copy(update={"member": "b"}))
    await a.retire()
    assert not a.is_leader
    assert await eventually(lambda: b.is_leader, 2) < 1.5
    # a does not campaign again (b's session ending would otherwise hand it back) ...
    await b._leases().revoke(b._lease)
    await eventually(lambda: not b.is_leader, s.lease_ttl + 2)
    await eventually(lambda: b.is_leader, s.lease_ttl + 2)  # b's new session wins it back
    assert not a.is_leader
    assert 2 == a.state().leader_changes
    # ... and its session still serves the runs that drain.
    assert a.session_valid()
    assert ClaimResult.CLAIMED == await a.claim(["claims/slack/t/draining"])


async def test_watch_delivers_puts_and_resumes_after_an_etcd_restart(
    coordinators: list[cluster.Coordinator],
) -> None:
    with EtcdCluster.start(1) as etcd:
        s = spec(etcd.endpoints)
        a = await start(coordinators, s)
        b = await start(coordinators, s.model_copy(update={"member": "b"}))
        entries, revision = await a.scan_at("approvals/")
        seen: asyncio.Queue[cluster.WatchEvent] = asyncio.Queue()

        async def watch() -> None:
            async for event in a.watch("approvals/", revision + 1, initial=entries):
                seen.put_nowait(event)

        task = asyncio.create_task(watch())
        try:
            await b.put("approvals/1", b"pending")
            first = await asyncio.wait_for(seen.get(), 5)
            assert ("approvals/1", b"pending") == (first.key, first.value)
            etcd.members[0].restart()
            etcd.members[0].wait_healthy()

            async def put_again() -> bool:
                try:
                    await b.put("approvals/1", b"approved")
                except errors.CoordinatorUnavailable:
                    return False
                return True

            await eventually(put_again, 10, step=0.1)
            while (event := await asyncio.wait_for(seen.get(), 10)).value != b"approved":
                pass
            assert "approvals/1" == event.key
            await b.delete("approvals/1")
            gone = await asyncio.wait_for(seen.get(), 5)
            assert ("approvals/1", None) == (gone.key, gone.value)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_watch_reports_a_deletion_missed_in_compacted_history_and_not_unchanged_keys(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a = await start(coordinators, spec(etcd1.endpoints))
    await a.put("approvals/gone", b"pending")
    await a.put("approvals/kept", b"pending")
    entries, revision = await a.scan_at("approvals/")
    await a.delete("approvals/gone")  # decided elsewhere while this replica was not watching ...
    await a.put("other", b"x")
    current = (await a._kv().get(a.key("other"))).header.revision
    await a._kv().compact(current)  # ... and that history is gone: the watch must read again
    seen: asyncio.Queue[cluster.WatchEvent] = asyncio.Queue()

    async def watch() -> None:
        async for event in a.watch("approvals/", revision + 1, initial=entries):
            seen.put_nowait(event)

    task = asyncio.create_task(watch())
    try:
        gone = await asyncio.wait_for(seen.get(), 5)
        assert ("approvals/gone", None) == (gone.key, gone.value)
        await a.put("approvals/new", b"pending")
        new = await asyncio.wait_for(seen.get(), 5)
        assert ("approvals/new", b"pending") == (new.key, new.value)  # "kept" was not reported again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_three_member_etcd_losing_one_keeps_claiming_losing_two_is_unavailable(
    coordinators: list[cluster.Coordinator],
) -> None:
    with EtcdCluster.start(3) as etcd:
        s = spec(etcd.endpoints)
        a = await start(coordinators, s)
        assert ClaimResult.CLAIMED == await a.claim(["claims/x/t/before"])
        etcd.raft_leader().kill()
        failures = 0
        for i in range(30):
            try:
                assert ClaimResult.CLAIMED == await a.claim([f"claims/x/t/{i}"])
            except errors.CoordinatorUnavailable:
                failures += 1
                assert i < 10, "claims must keep succeeding once etcd has a new raft leader"
        assert failures <= 3
        next(m for m in etcd.members if m.proc is not None).kill()
        started = time.monotonic()
        with pytest.raises(errors.CoordinatorUnavailable, match=r"etcd: claim failed \(timed out\)"):
            await a.claim(["claims/x/t/no-quorum"])
        assert time.monotonic() - started < s.etcd.request_timeout + 0.5
        assert a.state().last_error is not None


async def test_tls_with_a_client_certificate_and_a_password_login(
    tmp_path: Path, coordinators: list[cluster.Coordinator]
) -> None:
    from etcd3aio import Etcd3Client, PermissionType, prefix_range_end

    with EtcdCluster.start(1, tls=True) as etcd:
        pki = etcd.pki
        assert pki is not None
        target = [etcd.endpoints[0].removeprefix("https://")]
        async with Etcd3Client(
            target,
            ca_cert=pki.ca.read_bytes(),
            cert_chain=pki.client_cert.read_bytes(),
            cert_key=pki.client_key.read_bytes(),
        ) as admin:
            assert admin.auth is not None
            await admin.auth.user_add("root", "root-pw")
            await admin.auth.user_grant_role("root", "root")
            await admin.auth.user_add("replica", "s3cret-pw")
            await admin.auth.role_add("replica")
            await admin.auth.role_grant_permission(
                "replica", b"/aofd/", prefix_range_end(b"/aofd/"), perm_type=PermissionType.READWRITE
            )
            await admin.auth.user_grant_role("replica", "replica")
            await admin.auth.auth_enable()
        (tmp_path / "pw").write_text("s3cret-pw\n")
        (tmp_path / "wrong").write_text("nope\n")
        tls = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
        good = spec(
            (etcd.endpoints[0].replace("127.0.0.1", "localhost"),),
            user="replica",
            password_file=tmp_path / "pw",
            **tls,
        )
        a = await start(coordinators, good)
        assert ClaimResult.CLAIMED == await a.claim(["claims/x/t/tls"])
        await eventually(lambda: a.is_leader, 5)

        bad = cluster.Coordinator(
            spec(etcd.endpoints, user="replica", password_file=tmp_path / "wrong", dial_timeout=1.0, **tls)
        )
        coordinators.append(bad)
        assert not await bad.start()
        state = bad.state()
        assert not state.etcd_up
        assert state.last_error is not None
        assert "log in" in state.last_error
        assert "nope" not in state.last_error

        no_cert = cluster.Coordinator(spec(etcd.endpoints, ca_file=pki.ca, dial_timeout=1.0))
        coordinators.append(no_cert)
        assert not await no_cert.start()
