"""The admin API's approvals over real loopback HTTP: `GET /api/v1/approvals` lists pending requests
(argv masked as in the audit log), `POST /api/v1/approvals/<id>/approve|deny` decides through the
real command guard as the named token's operator, `admin:<name>`, held to the Context's rules."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from aofd import settings
from aofd.audit import records
from aofd.daemon import admin, view
from aofd.runtime import approvals, commands, guard, limits, ports
from aofd.testing import recorders
from tests.daemon.test_admin_auth import TOKEN, FakeView, call, serving

ALICE = "alice-0123456789-token-abcdef"
BOB = "bob-0123456789-token-abcdefgh"
CAROL = "carol-0123456789-token-abcdef"
REQUESTER = ports.UserRef("U0REQ", "rita", "slack:T1")
WALL = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL + self.now - 1000.0


class ApprovalsFakeView(FakeView):
    """`FakeView` plus the approvals of a real store, decided through a real `CommandGuard`."""

    def __init__(self, clock: Clock, tmp: Path) -> None:
        super().__init__()
        self.clock = clock
        self.store = approvals.ApprovalStore(clock=clock, wall=clock.wall)
        self.audit = recorders.RecordingAudit()
        self.guard = guard.CommandGuard(
            runner=commands.CommandRunner(
                executables=settings.ExecutablesSpec(), cache_dir=tmp / "cache", work_dir=tmp / "work"
            ),
            limits=limits.RateLimits(),
            approvals=self.store,
            audit=self.audit,
            approval_requester=self._ask,
            policy_provider=lambda name: None,
        )
        redactor = records.ArgvRedactor(key=b"test-audit-key")
        self.approvals_view = view.ApprovalsView(
            self.store, self.guard.decide, redactor.redact, clock=clock, wall=clock.wall
        )
        self.decided: list[tuple[str, ports.UserRef, bool, str]] = []

    async def _ask(self, request: approvals.ApprovalRequest) -> None:
        return None

    def approvals(self) -> list[dict[str, Any]]:
        return self.approvals_view.approvals()

    def approval(self, request_id: str) -> dict[str, Any] | None:
        return self.approvals_view.approval(request_id)

    async def decide_approval(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals.Decision:
        self.decided.append((request_id, user, approve, action_id))
        return await self.approvals_view.decide_approval(
            request_id, user=user, approve=approve, action_id=action_id
        )

    def ask(self, argv: tuple[str, ...], **kw: Any) -> approvals.ApprovalRequest:
        fields: dict[str, Any] = {
            "context": "prod",
            "run_id": "run-1",
            "requester": REQUESTER,
            "allowed_users": ("admin:alice", "admin:bob", "U0LEAD"),
            "timeout_seconds": 300,
            "agent": "k8s-ops",
            "rule": "kubectl delete",
        }
        fields.update(kw)
        return self.store.request(argv=argv, **fields)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock, tmp_path: Path) -> ApprovalsFakeView:
    return ApprovalsFakeView(clock, tmp_path)


def api(fake: ApprovalsFakeView, **kw: Any) -> admin.AdminApi:
    return admin.AdminApi(fake, token=TOKEN, named_tokens={"alice": ALICE, "bob": BOB, "carol": CAROL}, **kw)


async def decide(bound: str, ref: str, verb: str, token: str | None) -> tuple[int, dict[str, Any]]:
    status, text, _ = await call(bound, "POST", f"/api/v1/approvals/{ref}/{verb}", token=token)
    return status, json.loads(text) if text.startswith("{") else {"error": text}


async def test_pending_approvals_are_listed_with_times_and_masked_argv(
    fake: ApprovalsFakeView, clock: Clock
) -> None:
    secret = "hunter2-very-secret"
    req = fake.ask(("kubectl", "delete", "pod", "x", f"--token={secret}"), min_approvers=2)
    done = fake.ask(("kubectl", "delete", "pod", "y"), run_id="run-2")
    fake.store.decide(done.id, ports.UserRef("U0LEAD", domain="slack:T1"), approve=False, action_id="a1")
    clock.now += 42.5
    async with serving(api(fake)) as bound:
        status, text, _ = await call(bound, "GET", "/api/v1/approvals", token=TOKEN)
    assert status == 200
    assert secret not in text
    [item] = json.loads(text)["items"]
    redacted = records.ArgvRedactor(key=b"test-audit-key").redact(req.argv)
    assert item["id"] == req.id
    assert item["context"] == "prod"
    assert item["argv"] == list(redacted)
    assert item["argv"][:4] == ["kubectl", "delete", "pod", "x"]
    assert item["argv"][4].startswith("--token=hmac-sha256:")
    assert item["command"] == approvals.render_argv(redacted)
    assert item["requester"] == {"id": "U0REQ", "name": "rita", "platform": "slack"}
    assert (item["agent"], item["runId"], item["rule"]) == ("k8s-ops", "run-1", "kubectl delete")
    assert item["requestedAt"] == iso(WALL)
    assert item["expiresAt"] == iso(WALL + 300)
    assert item["ageSeconds"] == 42.5
    assert item["expiresInSeconds"] == 257.5
    assert (item["approvals"], item["minApprovers"]) == (0, 2)
    assert item["allowedUsers"] == ["admin:alice", "admin:bob", "U0LEAD"]


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_named_operator_approves_and_the_guard_grants(fake: ApprovalsFakeView) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"))
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, req.id, "approve", ALICE)
        assert (status, body["decision"]) == (200, "granted")
        assert "admin:alice" in body["message"]
        status, body = await decide(bound, req.id, "approve", BOB)
        assert (status, body["decision"]) == (409, "already_decided")
        status, text, _ = await call(bound, "GET", "/api/v1/approvals", token=TOKEN)
        assert json.loads(text)["items"] == []
    outcome = fake.store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.GRANTED
    assert outcome.approvers == (ports.UserRef("admin:alice", "alice", approvals.ADMIN),)
    [(_, user, approve, action_id), _] = fake.decided
    assert (user.id, user.domain, approve) == ("admin:alice", "admin", True)
    assert action_id.startswith("admin:")
    assert len(action_id) > 20
    assert fake.decided[0][3] != fake.decided[1][3]


async def test_min_approvers_counts_operators_once_each(fake: ApprovalsFakeView) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"), min_approvers=2)
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, req.id, "approve", ALICE)
        assert (status, body["decision"]) == (202, "pending_more")
        assert "1 more" in body["message"]
        status, body = await decide(bound, req.id, "approve", ALICE)
        assert (status, body["decision"]) == (409, "duplicate")
        status, body = await decide(bound, req.id, "approve", BOB)
        assert (status, body["decision"]) == (200, "granted")
    partial = [r for _, r in fake.audit.records if r["event"]["action"] == "approval.granted"]
    assert [r["aofd"]["approval"]["voter"]["id"] for r in partial] == ["admin:alice"]
    assert [r["aofd"]["approval"]["voter"]["domain"] for r in partial] == ["admin"]


async def test_an_operator_not_named_admin_name_in_the_context_is_refused(fake: ApprovalsFakeView) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"), allowed_users=("alice", "slack:carol", "admin:bob"))
    async with serving(api(fake)) as bound:
        for token, who in ((ALICE, "admin:alice"), (CAROL, "admin:carol")):
            status, body = await decide(bound, req.id, "approve", token)
            assert (status, body["decision"]) == (403, "not_allowed")
            assert who in body["message"]
            assert "allowed_users" in body["message"]
            status, body = await decide(bound, req.id, "deny", token)
            assert (status, body["decision"]) == (403, "not_allowed")
    outcome = fake.store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.PENDING
    refused = [r for _, r in fake.audit.records if r["event"]["outcome"] == "failure"]
    assert {r["aofd"]["approval"]["voter"]["id"] for r in refused} == {"admin:alice", "admin:carol"}


async def test_an_operator_cannot_approve_their_own_request(fake: ApprovalsFakeView) -> None:
    me = ports.UserRef("admin:alice", "alice", approvals.ADMIN)
    req = fake.ask(("kubectl", "delete", "pod", "x"), requester=me)
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, req.id, "approve", ALICE)
        assert (status, body["decision"]) == (403, "self_not_allowed")
        assert "self" in body["message"]
        status, body = await decide(bound, req.id, "deny", ALICE)  # the requester may withdraw it
        assert (status, body["decision"]) == (200, "denied")


async def test_deny_ends_the_request(fake: ApprovalsFakeView) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"))
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, req.id, "deny", BOB)
        assert (status, body["decision"]) == (200, "denied")
        assert "admin:bob" in body["message"]
        status, body = await decide(bound, req.id, "approve", ALICE)
        assert (status, body["decision"]) == (409, "already_decided")
    outcome = fake.store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.DENIED


async def test_an_expired_request_cannot_be_decided(fake: ApprovalsFakeView, clock: Clock) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"), timeout_seconds=10)
    clock.now += 11
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, req.id, "approve", ALICE)
    assert (status, body["decision"]) == (409, "expired")


async def test_the_unnamed_token_or_no_token_cannot_decide(fake: ApprovalsFakeView) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"))
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, req.id, "approve", TOKEN)
        assert status == 403
        assert "named admin token" in body["error"]
        assert "admin_api.tokens" in body["error"]
        assert (await call(bound, "POST", f"/api/v1/approvals/{req.id}/approve"))[0] == 401
    async with serving(admin.AdminApi(fake)) as bound:  # no token at all (loopback)
        assert (await call(bound, "GET", "/api/v1/approvals"))[0] == 200
        status, body = await decide(bound, req.id, "deny", None)
        assert status == 403
    assert fake.decided == []
    outcome = fake.store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.PENDING


@pytest.mark.parametrize(
    "ref",
    ["nothex", "0" * 63 + "g", "0" * 65, "abc", "..%2F..", "0123456"],  # 7 hex: too short a prefix
)
async def test_a_malformed_id_is_404_without_touching_the_store(fake: ApprovalsFakeView, ref: str) -> None:
    async with serving(api(fake)) as bound:
        status, _body = await decide(bound, ref, "approve", ALICE)
    assert status == 404
    assert fake.decided == []


async def test_an_unknown_full_id_is_404(fake: ApprovalsFakeView) -> None:
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, "ab" * 32, "approve", ALICE)
    assert (status, body["decision"]) == (404, "unknown")


async def test_a_unique_prefix_of_a_pending_request_is_enough(fake: ApprovalsFakeView) -> None:
    reqs = [fake.ask(("kubectl", "delete", "pod", f"p{i}"), run_id=f"run-{i}") for i in range(40)]
    target = reqs[0]
    prefix = next(
        target.id[:n] for n in range(8, 64) if sum(r.id.startswith(target.id[:n]) for r in reqs) == 1
    )
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, prefix.upper(), "approve", ALICE)
        assert (status, body["decision"], body["id"]) == (200, "granted", target.id)
        unused = next(c * 8 for c in "0123456789abcdef" if not any(r.id.startswith(c * 8) for r in reqs))
        status, body = await decide(bound, unused, "approve", ALICE)
        assert status == 404
        assert "no pending approval" in body["error"]


async def test_an_ambiguous_prefix_is_400_and_decides_nothing(
    fake: ApprovalsFakeView, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = fake.ask(("kubectl", "delete", "pod", "a"))
    b = fake.ask(("kubectl", "delete", "pod", "b"))
    items = fake.approvals()
    shared = "deadbeef"
    monkeypatch.setattr(fake, "approvals", lambda: [dict(i, id=shared + i["id"][8:]) for i in items])
    async with serving(api(fake)) as bound:
        status, body = await decide(bound, shared, "approve", ALICE)
    assert status == 400
    assert "ambiguous" in body["error"]
    assert {a.id[8:20], b.id[8:20]} <= {c[8:20] for c in body["candidates"]}
    assert fake.decided == []


async def test_get_on_a_decision_path_is_405_and_unknown_verbs_404(fake: ApprovalsFakeView) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"))
    async with serving(api(fake)) as bound:
        assert (await call(bound, "GET", f"/api/v1/approvals/{req.id}/approve", token=ALICE))[0] == 405
        assert (await call(bound, "POST", "/api/v1/approvals", token=ALICE))[0] == 405
        assert (await call(bound, "POST", f"/api/v1/approvals/{req.id}/maybe", token=ALICE))[0] == 404
    assert fake.decided == []


def test_a_decision_etcd_could_not_record_answers_503_try_again() -> None:
    """In a replica set a click that etcd could not record changed nothing: 503, "try again"."""
    status, message = admin.decision_answer(
        approvals.Decision.UNRECORDED, "admin:ops", approve=True, item=None
    )
    assert status == 503
    assert "could not be recorded" in message
    assert "try again" in message
