"""The approval store: id binding, who may approve, idempotent clicks, expiry and waiting."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from aofd.runtime import approvals, ports

REQUESTER = ports.UserRef("U0REQUESTER", "alice", "slack:T1")
LEAD = ports.UserRef("U015SRE_LEAD", "sre lead", "slack:T1")
ADMIN = ports.UserRef("U016PLATFORM_ADMIN", "admin", "slack:T1")
ARGV = ("kubectl", "delete", "pod", "x")


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def open_request(store: approvals.ApprovalStore, **kw: object) -> approvals.ApprovalRequest:
    args: dict[str, object] = {
        "context": "prod",
        "argv": ARGV,
        "run_id": "run-1",
        "requester": REQUESTER,
        "allowed_users": ("U015SRE_LEAD", "slack:U016PLATFORM_ADMIN", REQUESTER.id),
    }
    args.update(kw)
    return store.request(**args)  # type: ignore[arg-type]


def test_id_binds_context_argv_and_run() -> None:
    """The id is sha256 over context, canonical argv JSON, run id and the store's request count; a
    repeat gets a new id, also once decided requests were trimmed from the store."""
    store = approvals.ApprovalStore(clock=Clock(), keep_decided=0)
    first = open_request(store)
    canonical = '["kubectl","delete","pod","x"]'
    expected = hashlib.sha256("\x00".join(["prod", canonical, "run-1", "1"]).encode()).hexdigest()
    assert first.id == expected
    assert open_request(store).id != first.id
    assert open_request(store, context="staging").id != first.id
    store.cancel_all("test")
    seen = {first.id}
    for _ in range(3):  # each new request trims the decided ones first
        again = open_request(store)
        assert again.id not in seen
        seen.add(again.id)
        store.cancel(again.id, "test")


def test_the_events_platform_decides_over_a_prefix_in_the_id() -> None:
    """An HTTP caller whose body says `admin:alice` or `slack:U1` is neither the operator nor that user."""
    forged_admin = ports.UserRef("admin:alice", domain="http")
    forged_slack = ports.UserRef("slack:U015SRE_LEAD", domain="http")
    assert not approvals.is_allowed_approver(forged_admin, ["admin:alice"])
    assert not approvals.is_allowed_approver(forged_slack, ["slack:U015SRE_LEAD"])
    assert not approvals.same_user(forged_slack, LEAD)
    assert approvals.is_allowed_approver(ports.UserRef("admin:alice", "alice", "admin"), ["admin:alice"])
    assert not approvals.is_allowed_approver(ports.UserRef("alice", domain="slack:T1"), ["admin:alice"])
    assert not approvals.is_allowed_approver(ports.UserRef("admin:alice", domain="admin"), ["alice"])


def test_requester_cannot_approve_own_request() -> None:
    """Row 25: the requester is refused even when listed in allowed_users."""
    store = approvals.ApprovalStore(clock=Clock())
    req = open_request(store)
    assert (
        store.decide(req.id, REQUESTER, approve=True, action_id="a1") is approvals.Decision.SELF_NOT_ALLOWED
    )
    assert store.outcome(req.id).state is approvals.State.PENDING  # type: ignore[union-attr]


def test_self_approval_when_allowed() -> None:
    """`allow_self_approval: true` lets the requester approve."""
    store = approvals.ApprovalStore(clock=Clock())
    req = open_request(store, allow_self_approval=True)
    assert store.decide(req.id, REQUESTER, approve=True, action_id="a1") is approvals.Decision.GRANTED


def test_non_allowed_user_and_spoofed_display_name_cannot_approve() -> None:
    """Row 25: matching is by user id; a display name equal to an allowed id is worthless."""
    store = approvals.ApprovalStore(clock=Clock())
    req = open_request(store)
    mallory = ports.UserRef("U0MALLORY", "mallory", "slack:T1")
    spoof = ports.UserRef("U0MALLORY", "U015SRE_LEAD", "slack:T1")
    assert store.decide(req.id, mallory, approve=True, action_id="a1") is approvals.Decision.NOT_ALLOWED
    assert store.decide(req.id, spoof, approve=True, action_id="a2") is approvals.Decision.NOT_ALLOWED
    assert store.decide(req.id, mallory, approve=False, action_id="a3") is approvals.Decision.NOT_ALLOWED
    assert store.outcome(req.id).state is approvals.State.PENDING  # type: ignore[union-attr]


def test_platform_prefixes() -> None:
    """`slack:U…` matches a Slack user with id `U…`, not a Telegram user with the same id."""
    assert approvals.is_allowed_approver(ADMIN, ["slack:U016PLATFORM_ADMIN"])
    assert approvals.is_allowed_approver(ports.UserRef("slack:U016PLATFORM_ADMIN"), ["U016PLATFORM_ADMIN"])
    assert not approvals.is_allowed_approver(
        ports.UserRef("U016PLATFORM_ADMIN", domain="telegram"), ["slack:U016PLATFORM_ADMIN"]
    )
    assert not approvals.is_allowed_approver(LEAD, [])


def test_second_click_is_a_noop() -> None:
    """Row 26: the same action id twice does nothing the second time."""
    store = approvals.ApprovalStore(clock=Clock())
    req = open_request(store, min_approvers=2)
    assert store.decide(req.id, LEAD, approve=True, action_id="ts-1") is approvals.Decision.PENDING_MORE
    assert store.decide(req.id, LEAD, approve=True, action_id="ts-1") is approvals.Decision.REDELIVERED
    assert store.decide(req.id, LEAD, approve=True, action_id="ts-2") is approvals.Decision.DUPLICATE
    assert store.decide(req.id, ADMIN, approve=True, action_id="ts-3") is approvals.Decision.GRANTED
    assert store.decide(req.id, ADMIN, approve=False, action_id="ts-4") is approvals.Decision.ALREADY_DECIDED
    outcome = store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.GRANTED
    assert [u.id for u in outcome.approvers] == [LEAD.id, ADMIN.id]


def test_click_after_expiry_is_expired() -> None:
    """Row 26: a click after `timeout_seconds` answers expired and grants nothing."""
    clock = Clock()
    store = approvals.ApprovalStore(clock=clock)
    req = open_request(store, timeout_seconds=300)
    clock.now += 300
    assert store.decide(req.id, LEAD, approve=True, action_id="late") is approvals.Decision.EXPIRED
    assert store.outcome(req.id).state is approvals.State.EXPIRED  # type: ignore[union-attr]
    assert store.decide("nope", LEAD, approve=True, action_id="x") is approvals.Decision.UNKNOWN


def test_deny_by_requester_or_approver_ends_the_request() -> None:
    """One deny by an allowed approver ends it; the requester may withdraw their own request."""
    store = approvals.ApprovalStore(clock=Clock())
    req = open_request(store)
    assert store.decide(req.id, LEAD, approve=False, action_id="d") is approvals.Decision.DENIED
    outcome = store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.DENIED
    assert outcome.denier == LEAD
    other = open_request(store, run_id="run-2")
    assert store.decide(other.id, REQUESTER, approve=False, action_id="w") is approvals.Decision.DENIED


async def test_wait_returns_final_state_and_times_out() -> None:
    """`wait` returns when a click decides, and expires on its own after the timeout."""
    store = approvals.ApprovalStore()
    req = open_request(store, timeout_seconds=5)
    waiter = asyncio.create_task(store.wait(req.id))
    await asyncio.sleep(0)
    store.decide(req.id, LEAD, approve=True, action_id="ok")
    assert (await waiter).state is approvals.State.GRANTED
    quick = open_request(store, run_id="run-9", timeout_seconds=0.05)
    outcome = await store.wait(quick.id)
    assert (outcome.state, outcome.reason) == (approvals.State.EXPIRED, "timeout")


async def test_cancel_all_on_shutdown_and_pending_by_context() -> None:
    """`cancel_all` ends every pending request and wakes its waiter; pending() filters by Context."""
    store = approvals.ApprovalStore()
    a = open_request(store)
    open_request(store, context="staging")
    assert [r.id for r in store.pending("prod")] == [a.id]
    waiter = asyncio.create_task(store.wait(a.id))
    await asyncio.sleep(0)
    assert len(store.cancel_all("restart")) == 2
    outcome = await waiter
    assert (outcome.state, outcome.reason) == (approvals.State.CANCELLED, "restart")
    assert store.pending() == []


def test_rendered_argv_is_ascii_json() -> None:
    """The prompt shows argv as a JSON array with `\\u202e` escaped."""
    store = approvals.ApprovalStore(clock=Clock())
    req = open_request(store, argv=("kubectl", "delete", "ns", "prod\u202e"))
    assert req.rendered_argv() == '["kubectl", "delete", "ns", "prod\\u202e"]'


def test_decide_on_is_pure_and_the_store_uses_it() -> None:
    """The click rules as a function: the input state is never changed; a redelivered click (same
    action id) returns the state it was given; expiry is judged at the `now` passed in."""
    req = approvals.ApprovalRequest(
        id="r1",
        context="prod",
        argv=ARGV,
        run_id="run-1",
        requester=REQUESTER,
        allowed_users=(LEAD.id, ADMIN.id),
        min_approvers=2,
        timeout_seconds=10.0,
        created_at=100.0,
    )
    start = approvals.EntryState(req)
    first, after = approvals.decide_on(start, LEAD, True, "a1", now=101.0)
    assert (first, after.state, after.approvers) == (
        approvals.Decision.PENDING_MORE,
        approvals.State.PENDING,
        (LEAD,),
    )
    assert start.approvers == ()
    assert dict(start.actions) == {}
    again, same = approvals.decide_on(after, LEAD, True, "a1", now=101.0)
    assert again is approvals.Decision.REDELIVERED
    assert same is after
    done, granted = approvals.decide_on(after, ADMIN, True, "a2", now=102.0)
    assert (done, granted.state, granted.reason) == (
        approvals.Decision.GRANTED,
        approvals.State.GRANTED,
        "approved",
    )
    late, expired = approvals.decide_on(after, ADMIN, True, "a3", now=110.0)
    assert (late, expired.state) == (approvals.Decision.EXPIRED, approvals.State.EXPIRED)
    self_deny, denied = approvals.decide_on(start, REQUESTER, False, "", now=101.0)
    assert (self_deny, denied.denier, dict(denied.actions)) == (approvals.Decision.DENIED, REQUESTER, {})


def test_stored_records_round_trip_and_bad_ones_are_refused() -> None:
    """What a replica set keeps in etcd: canonical JSON (same state, same bytes), the origin
    without its `extra` (a slash command's response URL stays on the asking replica)."""
    origin = ports.ReplyTarget("slack", "t", "C1", "1.2", extra={ports.RESPONSE_URL: "https://hooks/secret"})
    req = approvals.ApprovalRequest(
        "r2", "prod", ARGV, "run-1", REQUESTER, (LEAD.id,), requested_at=1700000000.5, origin=origin
    )
    _, st = approvals.decide_on(approvals.EntryState(req), LEAD, False, "c", now=0.0)
    raw = approvals.encode(st, "host-a")
    assert b"secret" not in raw
    back, owner = approvals.decode(raw, created_at=lambda at: at)
    assert owner == "host-a"
    assert approvals.encode(back, owner) == raw
    assert (back.state, back.denier, back.request.origin.channel_id) == (approvals.State.DENIED, LEAD, "C1")  # type: ignore[union-attr]
    for bad in (b"{", b"[]", raw.replace(b'"denied"', b'"maybe"')):
        with pytest.raises(ValueError, match="not an approval record"):
            approvals.decode(bad, created_at=lambda at: at)
