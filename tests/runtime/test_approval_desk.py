"""Approval requests from open to close: one closing audit record whatever ends them, prompts settled
where they were asked, clicks that change nothing audited and answered, every tool call audited, and
deadlines that stand still while a person decides."""

from __future__ import annotations

import asyncio
import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from aofd import errors
from aofd.runtime import approvaldesk, approvals, commands, deadlines, guard, limits, ports, tools
from aofd.specs import policy
from tests.runtime.test_guard_flow import LEAD, REQUESTER, STRICT_APPROVAL, Harness, RecordingAudit

OTHER_LEAD = ports.UserRef("U016OTHER_LEAD", "other lead", "slack:T1")
ORIGIN = ports.ReplyTarget("slack", "slack-bot", "C1", "1700000000.0001")


class RecordingPrompter:
    """Asks by recording the request (or failing, like a platform that refuses the post); records settles."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.asked: list[approvals.ApprovalRequest] = []
        self.settled: list[tuple[str, approvals.State, str, str]] = []
        self.prompted = asyncio.Event()

    async def ask(self, request: approvals.ApprovalRequest) -> str:
        if self.fail:
            raise ConnectionError("the platform is down")
        self.asked.append(request)
        self.prompted.set()
        return f"C1/prompt-{len(self.asked)}"

    async def settle(
        self, request: approvals.ApprovalRequest, outcome: approvals.Outcome, *, prompt: str, text: str
    ) -> None:
        self.settled.append((request.id, outcome.state, prompt, text))

    async def next_prompt(self) -> approvals.ApprovalRequest:
        await asyncio.wait_for(self.prompted.wait(), 5)
        self.prompted.clear()
        return self.asked[-1]


def desk_harness(tmp_path: Path, **approval: Any) -> tuple[Harness, RecordingPrompter]:
    h = Harness(tmp_path)
    prompter = RecordingPrompter(fail=approval.pop("fail", False))
    h.use_desk(prompter)
    h.add("prod", approval=dataclasses.replace(STRICT_APPROVAL, **approval))
    return h, prompter


def approval_actions(h: Harness) -> list[str]:
    return [a for a in h.audit.actions() if a.startswith(("approval.", "command."))]


async def test_a_grant_closes_once_and_the_prompt_shows_who(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await prompter.next_prompt()
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="a1") is approvals.Decision.GRANTED
    )
    assert isinstance(await task, commands.CommandResult)
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.granted",
        "command.started",
        "command.finished",
    ]
    (granted,) = h.audit.find("approval.granted")
    assert granted["aofd"]["approval"]["final"] is True
    started, finished = h.audit.find("command.started")[0], h.audit.find("command.finished")[0]
    approved_by = [r["aofd"]["approval"]["approver"]["id"] for r in (started, finished)]
    assert approved_by == [LEAD.id, LEAD.id]  # the seed's `approved_by`
    assert [a["id"] for a in granted["aofd"]["approval"]["approvers"]] == [LEAD.id]
    ((rid, state, ref, text),) = prompter.settled
    assert (rid, state, ref) == (prompt.id, approvals.State.GRANTED, "C1/prompt-1")
    assert text.startswith("Approved by sre lead (U015SRE_LEAD): the command [")
    assert '"delete", "pod", "x"' in text


async def test_expiry_is_closed_in_the_audit_log_and_shown(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path, timeout_seconds=0.2)
    result = await h.run("prod", "kubectl delete pod x")
    assert isinstance(result, guard.Denial)
    assert (result.stage, result.reason) == (
        "approval",
        "approval expired (timeout); the command was not run",
    )
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.expired",
        "command.denied",
    ]
    assert h.runs("prod") == []
    ((_, state, _, text),) = prompter.settled
    assert state is approvals.State.EXPIRED
    assert text.startswith("No decision within 0.2 s:")


async def test_a_run_that_ends_while_waiting_cancels_the_approval(tmp_path: Path) -> None:
    """Whatever ends the run (a failed branch, a shutdown) closes the request and the command."""
    h, prompter = desk_harness(tmp_path)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await prompter.next_prompt()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.cancelled",
        "command.denied",
    ]
    (cancelled,) = h.audit.find("approval.cancelled")
    assert cancelled["event"]["reason"] == "the run ended before a decision"
    assert prompter.settled[0][1] is approvals.State.CANCELLED
    # A click on the old prompt now changes nothing, says so, and is audited.
    click = await guard.Decider(h.guard).decide(prompt.id, LEAD, True, "late")
    assert click == approvals.Click(
        approvals.Decision.EXPIRED, approvals.CLICK_TEXT[approvals.Decision.EXPIRED]
    )
    (refused,) = h.audit.find("approval.refused")
    assert (refused["event"]["reason"], refused["aofd"]["approval"]["voter"]["id"]) == ("expired", LEAD.id)
    assert refused["user"]["id"] == REQUESTER.id  # as on every approval record: whose request it is
    assert h.runs("prod") == []


async def test_a_prompt_that_cannot_be_posted_cancels_the_request(tmp_path: Path) -> None:
    h, _prompter = desk_harness(tmp_path, fail=True)
    result = await h.run("prod", "kubectl delete pod x")
    assert isinstance(result, guard.Denial)
    assert result.reason == (
        "approval cancelled (the prompt could not be posted (ConnectionError)); the command was not run"
    )
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.cancelled",
        "command.denied",
    ]
    assert h.store.pending() == []


async def test_clicks_that_change_nothing_are_audited_and_answered(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path, allowed_users=(LEAD.id, OTHER_LEAD.id, REQUESTER.id))
    decider = guard.Decider(h.guard)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await prompter.next_prompt()
    stranger = ports.UserRef("U0STRANGER", "bob", "slack:T1")
    own = await decider.decide(prompt.id, REQUESTER, True, "c1")
    outsider = await decider.decide(prompt.id, stranger, True, "c2")
    assert (own.decision, outsider.decision) == (
        approvals.Decision.SELF_NOT_ALLOWED,
        approvals.Decision.NOT_ALLOWED,
    )
    assert own.refused
    assert outsider.refused
    assert "someone else" in own.text
    assert "not one of the approvers" in outsider.text
    assert (await decider.decide(prompt.id, LEAD, True, "c3")).decision is approvals.Decision.GRANTED
    assert (await decider.decide(prompt.id, LEAD, True, "c3")).decision is approvals.Decision.REDELIVERED
    late = await decider.decide(prompt.id, OTHER_LEAD, False, "c4")
    assert late.decision is approvals.Decision.ALREADY_DECIDED
    assert "already decided" in late.text
    assert isinstance(await task, commands.CommandResult)
    refused = h.audit.find("approval.refused")
    assert [(r["event"]["reason"], r["aofd"]["approval"]["voter"]["id"]) for r in refused] == [
        ("self_not_allowed", REQUESTER.id),
        ("not_allowed", "U0STRANGER"),
        ("already_decided", OTHER_LEAD.id),
    ]
    assert {r["user"]["id"] for r in refused} == {REQUESTER.id}
    assert all("approver" not in r["aofd"]["approval"] for r in refused)  # the seed's approved_by place
    assert [r["related"]["user"] for r in refused][1] == [REQUESTER.id, "U0STRANGER"]
    assert all(r["event"]["outcome"] == "failure" for r in refused)
    assert len(h.audit.find("approval.granted")) == 1  # the redelivered click wrote nothing


async def test_a_vote_short_of_min_approvers_says_how_many_more(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path, allowed_users=(LEAD.id, OTHER_LEAD.id), min_approvers=2)
    decider = guard.Decider(h.guard)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await prompter.next_prompt()
    first = await decider.decide(prompt.id, LEAD, True, "v1")
    assert first == approvals.Click(
        approvals.Decision.PENDING_MORE, "Your approval is counted; 1 more approval needed before this runs."
    )
    assert not task.done()
    assert (await decider.decide(prompt.id, OTHER_LEAD, True, "v2")).decision is approvals.Decision.GRANTED
    assert isinstance(await task, commands.CommandResult)
    partial, final = h.audit.find("approval.granted")
    assert (partial["aofd"]["approval"]["final"], partial["aofd"]["approval"]["missing"]) == (False, 1)
    assert final["aofd"]["approval"]["final"] is True
    vote = partial["aofd"]["approval"]
    assert (vote["voter"]["id"], vote["approver"]["id"], partial["user"]["id"]) == (
        LEAD.id,
        LEAD.id,
        REQUESTER.id,
    )
    assert final["user"]["id"] == REQUESTER.id


CTX = tools.CallContext(run_id="run-1", context_name="prod", agent="k8s-ops", user=REQUESTER, origin=ORIGIN)


@pytest.mark.parametrize(
    ("tool", "arguments", "requested"),
    [
        (
            "kubectl",
            {"args": ["get", "pods", ";", "rm", "-rf", "/"]},
            {"args": ["kubectl", "get", "pods", ";", "rm", "-rf", "/"]},
        ),
        ("kubectl", {"args": 5}, {"command_line": '{"args":5}'}),
        ("kubectl", {"cmd": "get pods"}, {"command_line": '{"cmd":"get pods"}'}),
        ("shell", {"command": "df -h | sh"}, {"command_line": "df -h | sh"}),
    ],
)
async def test_a_tool_call_refused_before_it_is_an_argv_is_audited(
    tmp_path: Path, tool: str, arguments: dict[str, Any], requested: dict[str, Any]
) -> None:
    """Item 1: every attempt leaves command.requested + command.denied with the input as given."""
    h = Harness(tmp_path)
    h.add("prod")
    spec = tools.builtin(tool)
    assert spec is not None
    seen: list[bool] = []
    out = await tools.Toolbox(runner=h.guard).call(
        spec, arguments, dataclasses.replace(CTX, on_command=seen.append)
    )
    assert out.is_error
    assert out.text.startswith("not run (syntax):")
    assert h.audit.actions() == ["command.requested", "command.denied"]
    first, denied = h.audit.records[0][1], h.audit.records[1][1]
    assert first["event"]["id"] == denied["event"]["id"]
    for key, value in requested.items():
        assert first["process"][key] == value
    decision = denied["aofd"]["decision"]
    assert (decision["result"], decision["stage"]) == ("deny", "syntax")
    assert decision["rule"] == (
        "shell-operator" if ";" in str(arguments) or "|" in str(arguments) else "syntax"
    )
    assert denied["event"]["reason"]
    assert seen == [False]
    assert h.runs("prod") == []


async def test_a_refused_http_call_keeps_header_values_out_of_the_audit_log(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.add("prod")
    spec = tools.builtin("http")
    assert spec is not None
    arguments = {
        "url": "file:///etc/passwd",
        "headers": {"Authorization": "Bearer sekrit-123"},
        "body": "pw=x",
    }
    out = await tools.Toolbox(runner=h.guard).call(spec, arguments, CTX)
    assert out.is_error
    assert h.audit.actions() == ["command.requested", "command.denied"]
    text = repr(h.audit.records)
    assert "sekrit" not in text
    assert "pw=x" not in text
    line = h.audit.records[0][1]["process"]["command_line"]
    assert '"headers":["Authorization"]' in line
    assert "file:///etc/passwd" in line


async def test_rate_limit_refusals_left_out_are_summed_up_when_the_window_ends(tmp_path: Path) -> None:
    """Item 5: five refusals in a window: the first audited at once, the other four in one summary
    record when the quiet window ends; a burst still open at shutdown is summed up by `aclose`."""
    clock = [0.0]
    window_over = asyncio.Event()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await window_over.wait()

    h = Harness(tmp_path)
    rate = limits.RateLimits(clock=lambda: clock[0])
    h.guard = guard.CommandGuard(
        runner=h.runner,
        limits=rate,
        approvals=h.store,
        audit=h.audit,
        approval_requester=h.request_approval,
        policy_provider=h.policies.get,
        sleep=sleep,
    )
    h.add("prod", limits=policy.LimitsPolicy(max_requests_per_minute=1))

    async def admit(n: int) -> bool:
        return not isinstance(await h.guard.admit("prod", user=REQUESTER, run_id=f"r{n}"), guard.Denial)

    assert await admit(0)
    assert [await admit(n) for n in range(1, 6)] == [False] * 5
    await asyncio.sleep(0)
    assert slept == [60.0]  # one summary scheduled, due when the quiet window ends
    window_over.set()
    for _ in range(5):
        await asyncio.sleep(0)
    first, summary = h.audit.find("ratelimit.exceeded")
    assert first["aofd"]["ratelimit"]["suppressed"] == 0
    assert (summary["aofd"]["ratelimit"]["suppressed"], summary["aofd"]["ratelimit"]["summary"]) == (4, True)
    clock[0] = 61.0
    window_over.clear()
    assert await admit(6)
    assert [await admit(n) for n in range(7, 10)] == [False] * 3
    await h.guard.aclose()  # shutdown: the two left out are summed up now
    counts = [r["aofd"]["ratelimit"]["suppressed"] for r in h.audit.find("ratelimit.exceeded")]
    assert counts == [0, 4, 0, 2]


# --- deadlines ---------------------------------------------------------------------------------


async def test_a_paused_deadline_does_not_fire_and_moves_on_by_the_pause() -> None:
    loop = asyncio.get_running_loop()
    extended: list[float] = []
    start = loop.time()
    async with deadlines.deadline(start + 0.1, on_extend=extended.append) as timeout:
        with deadlines.paused():
            await asyncio.sleep(0.25)  # longer than the deadline: it must not fire
        (waited,) = extended
        assert waited >= 0.25
        when = timeout.when()
        assert when is not None
        assert when == pytest.approx(start + 0.1 + waited, abs=0.01)
    with pytest.raises(TimeoutError):
        async with deadlines.deadline(loop.time() + 0.05):
            await asyncio.sleep(1)


async def test_overlapping_pauses_of_two_branches_count_once() -> None:
    loop = asyncio.get_running_loop()
    extended: list[float] = []
    paused: list[None] = []
    release = [asyncio.Event(), asyncio.Event()]

    async def branch(i: int) -> None:
        with deadlines.paused():
            await release[i].wait()

    async with (
        deadlines.deadline(loop.time() + 5, on_extend=extended.append, on_pause=lambda: paused.append(None)),
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(branch(0))
        tg.create_task(branch(1))
        await asyncio.sleep(0.05)
        release[0].set()
        await asyncio.sleep(0.05)
        assert extended == []  # the other branch still waits: the deadline stays lifted
        release[1].set()
    assert len(paused) == 2
    assert len(extended) == 1
    assert extended[0] >= 0.1


async def test_outcome_texts_name_the_decision() -> None:
    store = approvals.ApprovalStore()
    req = store.request(
        context="prod",
        argv=("kubectl", "delete", "pod", "x"),
        run_id="r",
        requester=REQUESTER,
        allowed_users=(),
    )
    denied = approvals.Outcome(req, approvals.State.DENIED, denier=LEAD)
    assert approvaldesk.outcome_text(denied).startswith("Denied by sre lead (U015SRE_LEAD): the command [")
    cancelled = approvals.Outcome(req, approvals.State.CANCELLED, reason="aofd is shutting down")
    assert approvaldesk.outcome_text(cancelled).startswith("Approval withdrawn (aofd is shutting down):")


async def test_a_call_of_a_tool_the_agent_was_not_offered_is_audited(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.add("prod")
    out = await tools.Toolbox(runner=h.guard).refuse_unknown("bash", {"command": "rm -rf /"}, CTX)
    assert out.is_error
    assert out.text == "unknown tool 'bash': not run"
    assert h.audit.actions() == ["command.requested", "command.denied"]
    requested, denied = (r for _, r, _ in h.audit.records)
    assert requested["process"]["command_line"] == "rm -rf /"
    assert denied["aofd"]["decision"] == {"result": "deny", "rule": "tool", "stage": "syntax"}
    assert denied["event"]["reason"] == "the agent has no tool named 'bash'"


async def test_at_shutdown_open_requests_end_and_new_ones_are_not_asked(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    await prompter.next_prompt()
    h.store.cancel_all("aofd is shutting down", close=True)
    first = await task
    second = await h.run("prod", "kubectl delete pod y", run_id="run-2")
    assert isinstance(first, guard.Denial)
    assert isinstance(second, guard.Denial)
    assert second.reason == "approval cancelled (aofd is shutting down); the command was not run"
    assert len(prompter.asked) == 1  # the second request was never posted
    assert [r["event"]["reason"] for r in h.audit.find("approval.cancelled")] == ["aofd is shutting down"] * 2
    assert h.runs("prod") == []


# --- races: whatever ends a request, it is closed once (review findings) ------------------------


class SlowAudit(RecordingAudit):
    """Takes each record at once (as the journal does), then is slow to confirm `approval.requested`."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        await super().write(context, event, durable=durable)
        if event.action == "approval.requested":
            self.entered.set()
            await asyncio.sleep(5)


class HangingPrompter(RecordingPrompter):
    """A prompt post that hangs until released, then fails (chat.postMessage timing out)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def ask(self, request: approvals.ApprovalRequest) -> str:
        self.asked.append(request)
        self.prompted.set()
        await self.release.wait()
        raise ConnectionError("chat.postMessage timed out")


class SlowSettle(RecordingPrompter):
    async def settle(
        self, request: approvals.ApprovalRequest, outcome: approvals.Outcome, *, prompt: str, text: str
    ) -> None:
        await asyncio.sleep(0.6)  # chat.update and chat.postMessage on a slow day
        await super().settle(request, outcome, prompt=prompt, text=text)


async def test_a_grant_then_a_cancel_in_the_same_tick_still_closes_as_granted(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await prompter.next_prompt()
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="a1") is approvals.Decision.GRANTED
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.granted",
        "command.denied",
    ]
    assert [s[1] for s in prompter.settled] == [approvals.State.GRANTED]
    assert h.runs("prod") == []


async def test_a_shutdown_with_no_grace_closes_the_request_once(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    await prompter.next_prompt()
    h.store.cancel_all("aofd is shutting down", close=True)  # the drain, then its runs cancelled at once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (cancelled,) = h.audit.find("approval.cancelled")
    assert cancelled["event"]["reason"] == "aofd is shutting down"
    assert approval_actions(h)[-2:] == ["approval.cancelled", "command.denied"]


async def test_a_cancel_while_the_request_is_written_closes_it(tmp_path: Path) -> None:
    h, prompter = desk_harness(tmp_path)
    slow = SlowAudit()
    h.audit = slow  # type: ignore[assignment]
    h.use_desk(prompter)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    await asyncio.wait_for(slow.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.store.pending() == []
    assert slow.actions()[-3:] == ["approval.requested", "approval.cancelled", "command.denied"]


async def test_a_grant_while_the_prompt_fails_is_closed_as_granted(tmp_path: Path) -> None:
    """`aofctl approve` while chat.postMessage hangs, then the post fails: the grant stands and is audited."""
    h, _ = desk_harness(tmp_path)
    prompter = HangingPrompter()
    h.use_desk(prompter)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    req = await prompter.next_prompt()
    assert (
        await h.guard.decide(req.id, user=LEAD, approve=True, action_id="admin:1")
        is approvals.Decision.GRANTED
    )
    prompter.release.set()
    assert isinstance(await task, commands.CommandResult)
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.granted",
        "command.started",
        "command.finished",
    ]


async def test_closing_a_request_does_not_eat_the_runs_deadline(tmp_path: Path) -> None:
    """The audit write and the settle happen while the deadline is still paused."""
    h, _ = desk_harness(tmp_path)
    prompter = SlowSettle()
    h.use_desk(prompter)
    loop = asyncio.get_running_loop()

    async def run() -> object:
        async with deadlines.deadline(loop.time() + 0.4):
            return await h.run("prod", "kubectl delete pod x")

    task = asyncio.create_task(run())
    req = await prompter.next_prompt()
    await asyncio.sleep(0.5)  # past the deadline, paused
    await h.guard.decide(req.id, user=LEAD, approve=True, action_id="a")
    assert isinstance(await task, commands.CommandResult)
    assert [s[1] for s in prompter.settled] == [approvals.State.GRANTED]


async def test_a_refused_tool_calls_secret_looking_values_stay_out_of_the_audit_log(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.add("prod")
    arguments = {
        "password": "hunter2-very-secret",
        "env": {"DB_PASSWORD": "pw-2"},
        "args": ["--token", "abc", 5],
    }
    await tools.Toolbox(runner=h.guard).refuse_unknown("deploy", arguments, CTX)
    spec = tools.builtin("kubectl")
    assert spec is not None
    await tools.Toolbox(runner=h.guard).call(spec, {"args": ["get", 1], "api_key": "k-3"}, CTX)
    text = repr(h.audit.records)
    for secret in ("hunter2-very-secret", "pw-2", "k-3"):
        assert secret not in text
    assert len(h.audit.find("command.denied")) == 2


class UnreachableEtcd:
    """A replica set's coordinator (`aofd.runtime.cluster.Coordinator`) whose etcd is down."""

    member = "host-a"

    async def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise errors.CoordinatorUnavailable("etcd: write failed (UNAVAILABLE: connection refused)")

    put = update = get = delete = scan = scan_at = _down


async def test_an_approval_that_cannot_be_recorded_is_denied_and_nobody_is_asked(tmp_path: Path) -> None:
    """In a replica set a request lives in etcd; when etcd cannot record it, the command is denied
    (never left open, never granted) and the denial says why; a click is refused with "try again"."""
    h = Harness(tmp_path)
    h.store = approvals.SharedApprovals(typing.cast("Any", UnreachableEtcd()))
    prompter = RecordingPrompter()
    h.use_desk(prompter)
    h.add("prod", approval=STRICT_APPROVAL)
    result = await h.run("prod", "kubectl delete pod x")
    assert isinstance(result, guard.Denial)
    assert "approval could not be recorded" in result.reason
    assert prompter.asked == []
    assert h.runs("prod") == []
    assert approval_actions(h) == [
        "command.requested",
        "approval.requested",
        "approval.denied",
        "command.denied",
    ]
    denied = h.audit.find("approval.denied")[0]
    assert denied["event"]["reason"].startswith("approval could not be recorded")
    assert h.store.unrecorded == 1
    # Nobody was asked; the thread is told why the command will not run.
    [(_, state, prompt, text)] = prompter.settled
    assert (state, prompt) == (approvals.State.DENIED, "")
    assert text.startswith("Not asked (approval could not be recorded")
    click = await guard.Decider(h.guard).decide("0" * 64, LEAD, True, "a1")
    assert click.decision is approvals.Decision.UNRECORDED
    assert "try again" in click.text
    await h.store.aclose()
