"""The audit records of a run (`agent.run.started`/`finished`) as the engine writes them: ECS
categorization with `event.type`, `trace.id` = the run id (as on the run's command records), the
Agent in `aofd.agent.name` only when the flow runs one Agent (the flow's name is `aofd.flow`), the
Context's cluster and namespace in `orchestrator.*`, and every field ECS's own or under `aofd.*`."""

from __future__ import annotations

from typing import Any

from aofd.runtime import runs
from aofd.testing import recorders
from aofd.testing import resources as res
from aofd.testing.models import ScriptedProvider
from tests.audit import ecs_check
from tests.runtime.engine.conftest import EngineFactory, message


def _factories() -> dict[str, Any]:
    provider = ScriptedProvider(lambda r: f"{r.model} done")
    return {"anthropic": lambda: provider}


def _agents(*names: str) -> list[Any]:
    return [res.agent(n, model=f"anthropic:{n}", instructions=f"you are {n}") for n in names]


def _run_records(audit: recorders.RecordingAudit) -> list[dict[str, Any]]:
    return [dict(r) for _, r in audit.records if r["event"]["action"].startswith("agent.run.")]


async def test_a_flow_of_two_agents_is_named_as_a_flow_not_an_agent(make_engine: EngineFactory) -> None:
    audit = recorders.RecordingAudit()
    eng = make_engine(factories=_factories(), audit=audit)
    ctx = res.context("prod", cluster="prod-us-east-1", namespace="web")
    flow = res.flow("triage", agents=[{"name": "first"}, {"name": "second"}])
    record = await eng.run(
        res.run_plan(res.bind("b", ctx=ctx, flow_res=flow, agents=_agents("first", "second"))),
        message("what is up"),
    )
    assert record.status is runs.RunStatus.COMPLETED
    started, finished = _run_records(audit)
    assert (started["event"]["type"], finished["event"]["type"]) == (["start"], ["end"])
    for rec in (started, finished):
        assert rec["event"]["category"] == ["process"]
        assert rec["trace"]["id"] == rec["aofd"]["agent"]["run_id"] == record.run_id
        assert "name" not in rec["aofd"]["agent"]  # two Agents: none of them is "the" agent
        assert rec["aofd"]["flow"] == "triage"
        assert rec["orchestrator"] == {
            "type": "kubernetes",
            "cluster": {"name": "prod-us-east-1"},
            "namespace": "web",
        }
        assert ecs_check.problems(rec) == []


async def test_a_binding_of_one_agent_names_it(make_engine: EngineFactory) -> None:
    audit = recorders.RecordingAudit()
    eng = make_engine(factories=_factories(), audit=audit)
    [agent] = _agents("k8s-ops")
    plan = res.run_plan(res.bind("b", ctx=res.context("prod"), agent_res=agent, agents=[agent]))
    record = await eng.run(plan, message("hello"))
    records = _run_records(audit)
    assert [r["aofd"]["agent"] for r in records] == [{"name": "k8s-ops", "run_id": record.run_id}] * 2
    assert all("orchestrator" not in r for r in records)  # the Context names no cluster or namespace
    assert [ecs_check.problems(r) for r in records] == [[], []]
