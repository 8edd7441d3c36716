"""Flow graphs: both forms, conditions, parallel/join barriers, approval pause/resume, templates, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aofd.runtime import runs, templates
from aofd.runtime.providers import base
from aofd.testing import resources as res
from aofd.testing.models import ScriptedProvider
from tests.runtime.engine.conftest import EngineFactory, RecordingReplier, ScriptedApprovals, message


def scripted(answer: Any, **kw: Any) -> tuple[ScriptedProvider, dict[str, Any]]:
    provider = ScriptedProvider(answer, **kw)
    return provider, {"anthropic": lambda: provider}


def agents(*names: str) -> list[Any]:
    return [res.agent(n, model=f"anthropic:{n}", instructions=f"you are {n}") for n in names]


async def test_short_form_runs_agents_in_order_and_posts_back(
    make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """`agents: [{name}]` run in order, each with the previous answer; the last answer is posted."""
    provider, factories = scripted(lambda r: f"{r.model} saw: {r.messages[0].text[-12:]}")
    eng = make_engine(factories=factories)
    flow = res.flow("short", agents=[{"name": "first"}, {"name": "second"}])
    record = await eng.run(
        res.run_plan(res.bind("b", ctx=res.context("prod"), flow_res=flow, agents=agents("first", "second"))),
        message("what is up"),
    )
    assert record.status is runs.RunStatus.COMPLETED
    assert [r.model for r in provider.requests] == ["first", "second"]
    assert provider.requests[0].messages[0].text == "what is up"
    second_prompt = provider.requests[1].messages[0].text
    assert "what is up" in second_prompt
    assert "first saw: " in second_prompt
    assert replier.texts() == [record.answer]
    assert record.answer.startswith("second saw:")


async def test_conditions_route_the_flow(make_engine: EngineFactory, replier: RecordingReplier) -> None:
    """A Conditional node and `when` connections choose the branch; node `conditions` skip nodes."""
    _provider, factories = scripted(
        lambda r: '{"requires_approval": false, "output": "3 pods"}' if r.model == "check" else "unused"
    )
    eng = make_engine(factories=factories)
    flow = res.flow(
        "cond",
        nodes=[
            {"id": "check", "type": "Agent", "config": {"agent": "check", "input": "${event.text}"}},
            {
                "id": "decide",
                "type": "Conditional",
                "config": {"condition": "${check.output.requires_approval} == true"},
            },
            {"id": "escalate", "type": "Response", "config": {"message": "needs approval"}},
            {
                "id": "answer",
                "type": "Response",
                "config": {"message": "Result: ${check.output.output} for ${trigger.user.id}"},
            },
            {"id": "only-if-true", "type": "End", "conditions": [{"from": "decide", "value": True}]},
        ],
        connections=[
            {"from": "start", "to": "check"},
            {"from": "check", "to": "decide"},
            {"from": "decide", "to": "escalate", "when": "result == true"},
            {"from": "decide", "to": "answer", "when": "result == false"},
            {"from": "decide", "to": "only-if-true"},
        ],
    )
    record = await eng.run(
        res.run_plan(res.bind("b", ctx=res.context("prod"), flow_res=flow, agents=agents("check"))),
        message("pods?"),
    )
    assert record.status is runs.RunStatus.COMPLETED, record.error
    nodes = {n.id: n.status for n in record.nodes.values()}
    assert nodes == {
        "check": runs.NodeStatus.COMPLETED,
        "decide": runs.NodeStatus.COMPLETED,
        "escalate": runs.NodeStatus.SKIPPED,
        "answer": runs.NodeStatus.COMPLETED,
        "only-if-true": runs.NodeStatus.SKIPPED,
    }
    assert replier.texts() == [
        "Result: 3 pods for U1"
    ]  # a Response to the origin replaces the default answer


async def test_parallel_branches_overlap_and_join_runs_once(make_engine: EngineFactory) -> None:
    """Parallel branches run concurrently (overlap in time) and the node after the join barrier runs once."""
    provider, factories = scripted(lambda r: f"{r.model}-done", delays={"left": 0.2, "right": 0.2})
    eng = make_engine(factories=factories)
    flow = res.flow(
        "par",
        nodes=[
            {"id": "fan", "type": "Parallel", "config": {"branches": ["left", "right"]}},
            {"id": "left", "type": "Agent", "config": {"agent": "left"}},
            {"id": "right", "type": "Agent", "config": {"agent": "right"}},
            {"id": "join", "type": "Join", "config": {"strategy": "all"}},
            {
                "id": "summary",
                "type": "Agent",
                "config": {"agent": "summary", "input": "${left.output} + ${right.output}"},
            },
        ],
        connections=[
            {"from": "start", "to": "fan"},
            {"from": "left", "to": "join"},
            {"from": "right", "to": "join"},
            {"from": "join", "to": "summary"},
            {"from": "left", "to": "summary"},
        ],
    )
    binding = res.bind("b", ctx=res.context("prod"), flow_res=flow, agents=agents("left", "right", "summary"))
    record = await eng.run(res.run_plan(binding), message("go"))
    assert record.status is runs.RunStatus.COMPLETED, record.error
    assert provider.max_active == 2
    assert [r.model for r in provider.requests].count("summary") == 1
    summary = next(r for r in provider.requests if r.model == "summary")
    assert summary.messages[0].text == "left-done + right-done"
    left, right = record.nodes["left"], record.nodes["right"]
    assert left.started_at < right.ended_at
    assert right.started_at < left.ended_at


@pytest.mark.parametrize(("strategy", "runs_join"), [("any", True), ("majority", True), ("all", False)])
async def test_join_strategies(make_engine: EngineFactory, strategy: str, runs_join: bool) -> None:
    """Join all needs every branch, majority more than half, any one: with 2 of 3 branches taken."""
    _provider, factories = scripted(lambda r: "x")
    eng = make_engine(factories=factories)
    flow = res.flow(
        "join",
        nodes=[
            {"id": "a", "type": "Transform", "config": {"script": "export A=1"}},
            {"id": "b", "type": "Transform", "config": {"script": "export B=1"}},
            {"id": "c", "type": "Transform", "config": {"script": "export C=1"}},
            {"id": "j", "type": "Join", "config": {"strategy": strategy}},
        ],
        connections=[
            {"from": "start", "to": "a"},
            {"from": "start", "to": "b"},
            {"from": "start", "to": "c"},
            {"from": "a", "to": "j"},
            {"from": "b", "to": "j"},
            {"from": "c", "to": "j", "when": "false"},
        ],
    )
    record = await eng.run(res.run_plan(res.bind("b", ctx=res.context("prod"), flow_res=flow)), message("go"))
    assert record.status is runs.RunStatus.COMPLETED
    expected = runs.NodeStatus.COMPLETED if runs_join else runs.NodeStatus.SKIPPED
    assert record.nodes["j"].status is expected


def approval_flow() -> Any:
    return res.flow(
        "appr",
        nodes=[
            {"id": "plan", "type": "Agent", "config": {"agent": "planner"}},
            {
                "id": "approve",
                "type": "Approval",
                "config": {"message": "Run ${plan.output}?", "timeout_seconds": 30},
            },
            {"id": "apply", "type": "Agent", "config": {"agent": "applier"}},
        ],
        connections=[
            {"from": "start", "to": "plan"},
            {"from": "plan", "to": "approve"},
            {"from": "approve", "to": "apply"},
        ],
    )


async def test_approval_pauses_then_resumes_on_approve(
    make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """The run waits at the Approval node (status waiting), then continues when approved."""
    gate_open = asyncio.Event()
    gate = ScriptedApprovals("approved", wait=gate_open.wait)
    provider, factories = scripted(lambda r: "scale web to 3" if r.model == "planner" else "scaled")
    eng = make_engine(factories=factories, approvals_gate=gate)
    binding = res.bind(
        "b",
        ctx=res.context("prod", approval={"allowed_users": ["U-LEAD"]}),
        flow_res=approval_flow(),
        agents=agents("planner", "applier"),
    )
    task = asyncio.create_task(eng.run(res.run_plan(binding), message("scale web")))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if gate.requests:
            break
    (run,) = eng.history.recent()
    assert run["status"] == "waiting"
    assert [r.model for r in provider.requests] == ["planner"]
    assert gate.requests[0].text == "Run scale web to 3?"
    assert gate.requests[0].approvers == ("U-LEAD",)
    gate_open.set()
    record = await task
    assert record.status is runs.RunStatus.COMPLETED
    assert [r.model for r in provider.requests] == ["planner", "applier"]
    assert replier.texts() == ["scaled"]


@pytest.mark.parametrize("status", ["denied", "expired"])
async def test_approval_denied_or_expired_stops_the_run(
    make_engine: EngineFactory, replier: RecordingReplier, status: str
) -> None:
    """A denied or expired approval stops the run; later nodes never run and the origin is told."""
    provider, factories = scripted(lambda r: "plan")
    eng = make_engine(factories=factories, approvals_gate=ScriptedApprovals(status))
    binding = res.bind(
        "b", ctx=res.context("prod"), flow_res=approval_flow(), agents=agents("planner", "applier")
    )
    record = await eng.run(res.run_plan(binding), message("x"))
    assert record.status is runs.RunStatus.STOPPED
    assert [r.model for r in provider.requests] == ["planner"]
    assert record.nodes["apply"].status is runs.NodeStatus.PENDING
    (text,) = replier.texts()
    assert f"approval approve was {status}" in text


async def test_templates_never_read_the_host_env(
    make_engine: EngineFactory, replier: RecordingReplier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${HOME}` and `${AWS_SECRET_ACCESS_KEY}` stay literal; `${event.text}` resolves."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    eng = make_engine()
    flow = res.flow(
        "tpl",
        nodes=[
            {
                "id": "say",
                "type": "Response",
                "config": {
                    "message": "${event.text} ${trigger.user.id} ${HOME} "
                    "${AWS_SECRET_ACCESS_KEY} ${context.namespace}"
                },
            }
        ],
    )
    ctx = res.context("prod", namespace="payments", env={"SECRET_TOKEN": "s3cr3t"})
    record = await eng.run(res.run_plan(res.bind("b", ctx=ctx, flow_res=flow)), message("hi"))
    assert record.status is runs.RunStatus.COMPLETED
    assert replier.texts() == ["hi U1 ${HOME} ${AWS_SECRET_ACCESS_KEY} payments"]


def test_template_paths_and_conditions() -> None:
    """Nested paths walk mappings, lists and JSON text; conditions compare numbers, strings and booleans."""
    scope = {"n-1": {"output": '{"items": [{"name": "web"}], "count": 3}'}, "event": {"text": "hi"}}
    assert (
        templates.render("${n-1.output.items[0].name}/${n-1.output.count}/${missing.x}", scope)
        == "web/3/${missing.x}"
    )
    assert templates.evaluate("${n-1.output.count} > 2 && ${event.text} == 'hi'", scope)
    assert not templates.evaluate("requires_approval == true", scope)
    assert templates.evaluate("count >= 3", scope, {"count": 3})


async def test_run_deadline_times_out(make_engine: EngineFactory, replier: RecordingReplier) -> None:
    """A run past the Context's max_execution_time_seconds is timed out and the origin told."""
    eng = make_engine()
    flow = res.flow("slow", nodes=[{"id": "w", "type": "Wait", "config": {"duration": "5s"}}])
    ctx = res.context("prod", limits={"max_execution_time_seconds": 1})
    record = await asyncio.wait_for(
        eng.run(res.run_plan(res.bind("b", ctx=ctx, flow_res=flow)), message("x")), 3
    )
    assert record.status is runs.RunStatus.TIMED_OUT
    assert record.nodes["w"].status is runs.NodeStatus.CANCELLED
    assert "timed out" in replier.texts()[0]


async def test_script_node_splits_once_and_renders_tokens(make_engine: EngineFactory) -> None:
    """A Script command is split once, then each token rendered: a value stays one argument."""

    class Recorder:
        def __init__(self) -> None:
            self.requests: list[Any] = []

        async def run(self, request: Any) -> Any:
            self.requests.append(request)

            class Result:
                exit_code = 0
                stdout = '{"ready": 2}'
                stderr = ""
                timed_out = False

            return Result()

    recorder = Recorder()
    eng = make_engine(commands=recorder)
    flow = res.flow(
        "script",
        nodes=[
            {
                "id": "s",
                "type": "Script",
                "config": {"scriptConfig": {"command": "kubectl get pods -l ${event.text}", "parse": "json"}},
            },
            {"id": "r", "type": "Response", "config": {"message": "ready=${s.output.ready}"}},
        ],
    )
    record = await eng.run(
        res.run_plan(res.bind("b", ctx=res.context("prod"), flow_res=flow)), message("app=web; rm -rf /")
    )
    assert record.status is runs.RunStatus.COMPLETED, record.error
    (req,) = recorder.requests
    assert req.argv == ("kubectl", "get", "pods", "-l", "app=web; rm -rf /")
    assert req.tool == "script"
    assert req.context_name == "prod"
    assert record.nodes["r"].output["text"] == "ready=2"


async def test_history_is_bounded_and_json_able(make_engine: EngineFactory) -> None:
    """RunHistory keeps the newest finished runs up to its capacity; get/recent return plain dicts."""
    _provider, factories = scripted(lambda r: "ok")
    eng = make_engine(factories=factories, history=runs.RunHistory(capacity=3))
    binding = res.bind("b", ctx=res.context("prod"), agent_res=agents("solo")[0])
    ids = [(await eng.run(res.run_plan(binding), message(f"m{i}"))).run_id for i in range(5)]
    recent = eng.history.recent(binding="b", limit=10)
    assert [r["run_id"] for r in recent] == ids[:1:-1]
    assert eng.history.get(ids[0]) is None
    got = eng.history.get(ids[-1])
    assert got is not None
    assert got["status"] == "completed"
    assert got["nodes"][0]["duration_ms"] >= 0
    import json

    json.dumps(recent)


async def test_model_error_in_flow_fails_run(make_engine: EngineFactory, replier: RecordingReplier) -> None:
    """A non-retryable model error fails the node, the run, and tells the origin."""

    def boom(_r: base.ModelRequest) -> str:
        raise base.ModelError(
            "the Anthropic API answered HTTP 400 (invalid_request_error)",
            provider="anthropic",
            retryable=False,
        )

    _provider, factories = scripted(boom)
    eng = make_engine(factories=factories)
    record = await eng.run(
        res.run_plan(res.bind("b", ctx=res.context("prod"), agent_res=agents("solo")[0])), message("x")
    )
    assert record.status is runs.RunStatus.FAILED
    assert "HTTP 400" in replier.texts()[0]


def _approval_flow_naming(name: str, approvers: list[str]) -> Any:
    return res.flow(
        name,
        nodes=[
            {"id": "approve", "type": "Approval", "config": {"message": "go?", "approvers": approvers}},
            {"id": "say", "type": "Response", "config": {"message": "done"}},
        ],
        connections=[{"from": "start", "to": "approve"}, {"from": "approve", "to": "say"}],
    )


async def test_an_approval_node_narrows_the_context_approvers_never_widens_them(
    make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """A node's `approvers` keep only the Context's approvers; naming only outsiders fails the node
    before anyone is asked.
    """
    ctx = res.context("prod", approval={"allowed_users": ["slack:U-LEAD", "U-SRE"]})
    gate = ScriptedApprovals("approved")
    eng = make_engine(approvals_gate=gate)
    narrowed = await eng.run(
        res.run_plan(
            res.bind("b", ctx=ctx, flow_res=_approval_flow_naming("narrow", ["U-LEAD", "U-MALLORY"]))
        ),
        message("x"),
    )
    widened = await eng.run(
        res.run_plan(res.bind("c", ctx=ctx, flow_res=_approval_flow_naming("widen", ["U-MALLORY"]))),
        message("y"),
    )
    assert narrowed.status is runs.RunStatus.COMPLETED
    assert [("slack:U-LEAD",)] == [r.approvers for r in gate.requests]  # not widened to other platforms
    assert widened.status is runs.RunStatus.FAILED
    assert "none of its approvers (U-MALLORY) is an approver of context prod" in str(
        widened.nodes["approve"].error
    )
    assert 1 == len(gate.requests)
