"""Approvals inside runs: a command waiting for a person and an Approval node both stop the run's
deadline, are closed in the audit log, and are counted on the run record."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aofd import settings
from aofd.runtime import approvaldesk, approvals, commands, engine, guard, limits, ports, runs
from aofd.testing import recorders
from aofd.testing import resources as res
from tests.runtime.engine.conftest import EngineFactory, message, read_records
from tests.runtime.engine.test_engine_models_http import KUBECONFIG, models
from tests.runtime.fakes_models import servers
from tests.runtime.test_approval_desk import RecordingPrompter

LEAD = ports.UserRef("U-LEAD", "lead", "slack:T1")
DEADLINE_S = 2
"""The Context's max_execution_time_seconds; every approval below is decided after it."""


def delete_script(body: dict[str, Any]) -> servers.Reply:
    last = body["messages"][-1]
    if isinstance(last["content"], str):
        return servers.a_tool_use("kubectl", {"args": ["delete", "pod", "web-1"]})
    return servers.a_text(f"done: {last['content'][0]['content'].strip()[:40]}")


def prod(tmp_path: Path) -> Any:
    kube = tmp_path / "prod.yaml"
    kube.write_text(KUBECONFIG)
    return res.context(
        "prod",
        kubeconfig=str(kube),
        env={"FAKE_RECORD": str(tmp_path / "kubectl.jsonl")},
        approval={
            "required": True,
            "allowed_users": [LEAD.id],
            "require_for": ["kubectl delete"],
            "timeout_seconds": 20,
        },
        limits={"max_execution_time_seconds": DEADLINE_S},
    )


def build(
    tmp_path: Path, kubectl_bin: Path, audit: recorders.RecordingAudit, ctx: Any
) -> tuple[guard.CommandGuard, approvaldesk.ApprovalDesk, RecordingPrompter]:
    store = approvals.ApprovalStore()
    prompter = RecordingPrompter()
    desk = approvaldesk.ApprovalDesk(store=store, audit=audit, prompter=prompter)
    runner = commands.CommandRunner(
        executables=settings.ExecutablesSpec(paths={"kubectl": kubectl_bin}),
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "work",
        kill_grace=0.2,
    )
    policies = {"prod": res.guard_policy(ctx)}
    the_guard = guard.CommandGuard(
        runner=runner,
        limits=limits.RateLimits(),
        approvals=store,
        audit=audit,
        desk=desk,
        policy_provider=policies.get,
    )
    return the_guard, desk, prompter


async def test_a_command_approved_after_the_deadline_still_runs(
    tmp_path: Path,
    kubectl_bin: Path,
    audit: recorders.RecordingAudit,
    anthropic_server: servers.FakeModelServer,
    make_engine: EngineFactory,
) -> None:
    """Deadline 2 s, approval timeout 20 s, click at ~2.5 s: the wait did not count, the command runs."""
    anthropic_server.script = delete_script
    ctx = prod(tmp_path)
    the_guard, _desk, prompter = build(tmp_path, kubectl_bin, audit, ctx)
    eng = make_engine(commands=the_guard, models=models(anthropic_server))
    agent = res.agent("k8s-ops", model="anthropic:claude", instructions="ops", tools=["kubectl"])
    binding = res.bind("b", ctx=ctx, flow_res=res.flow("f", agents=[{"name": "k8s-ops"}]), agents=[agent])
    # A first run, without a deadline, imports and builds the SDK's client (seconds on a loaded
    # machine), so that the run under test reaches its approval well within its deadline.
    anthropic_server.script = lambda body: servers.a_text("warm")
    warm_binding = res.bind(
        "warm", ctx=res.context("warm"), flow_res=res.flow("f", agents=[{"name": "k8s-ops"}]), agents=[agent]
    )
    warm = await eng.run(res.run_plan(warm_binding), message("hello", user="U-ASKER"))
    assert warm.status is runs.RunStatus.COMPLETED, warm.error
    anthropic_server.script = delete_script
    task = asyncio.create_task(eng.run(res.run_plan(binding), message("delete web-1", user="U-ASKER")))
    prompt = await prompter.next_prompt()
    await asyncio.sleep(DEADLINE_S + 0.5)  # the scenario is about time: past the run's deadline
    assert not task.done()
    assert (
        await the_guard.decide(prompt.id, user=LEAD, approve=True, action_id="k1")
        is approvals.Decision.GRANTED
    )
    record = await asyncio.wait_for(task, 10)
    assert record.status is runs.RunStatus.COMPLETED, record.error
    (call,) = read_records(tmp_path / "kubectl.jsonl")
    assert call["argv"][-3:] == ["delete", "pod", "web-1"]
    assert [a for a in audit.actions() if a.startswith("approval.")] == [
        "approval.requested",
        "approval.granted",
    ]
    assert (record.commands_run, record.commands_denied, record.approvals) == (1, 0, 1)
    assert record.approval_wait_s >= DEADLINE_S + 0.5


async def test_an_approval_node_waits_past_the_deadline_and_is_audited(
    tmp_path: Path, kubectl_bin: Path, audit: recorders.RecordingAudit, make_engine: EngineFactory
) -> None:
    ctx = prod(tmp_path)
    _guard, desk, prompter = build(tmp_path, kubectl_bin, audit, ctx)
    replier = recorders.RecordingReplier()
    eng = make_engine(approvals_gate=engine.StoreApprovals(desk=desk, replier=replier), audit=audit)
    flow = res.flow(
        "gated",
        nodes=[
            {"id": "gate", "type": "Approval", "config": {"message": "go?"}},
            {"id": "say", "type": "Response", "config": {"message": "went"}},
        ],
        connections=[{"from": "gate", "to": "say"}],
    )
    task = asyncio.create_task(eng.run(res.run_plan(res.bind("b", ctx=ctx, flow_res=flow)), message("x")))
    prompt = await prompter.next_prompt()
    await asyncio.sleep(DEADLINE_S + 0.5)
    assert not task.done()
    await desk.decide(prompt.id, user=LEAD, approve=True, action_id="n1")
    record = await asyncio.wait_for(task, 10)
    assert record.status is runs.RunStatus.COMPLETED, record.error
    actions = [a for a in audit.actions() if a.startswith("approval.")]
    assert actions == ["approval.requested", "approval.granted"]
    (granted,) = audit.find("approval.granted")
    assert granted["process"]["args"] == ["approve", "Flow gated: approval gate", "gate"]
    assert prompter.settled[0][3].startswith(
        "Approved by lead (U-LEAD): the step (Flow gated: approval gate)"
    )
    assert record.approvals == 1
