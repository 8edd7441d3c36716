"""Fleets in every coordination mode and every consensus algorithm, with scripted agents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aofd import settings
from aofd.resources.kinds import fleet as fleet_kind
from aofd.runtime import agents, consensus, fleets, ports
from aofd.runtime.providers import base, registry
from aofd.specs import flows
from aofd.testing.models import ScriptedProvider
from tests.runtime.engine.conftest import FAST_RETRY, ScriptedApprovals


def runner(
    answer: Any, *, approvals: Any = None, delays: dict[str, float] | None = None
) -> tuple[fleets.FleetRunner, ScriptedProvider]:
    provider = ScriptedProvider(answer, delays=delays)
    providers = registry.Providers(
        models=settings.ModelsSpec(), environ={}, factories={"anthropic": lambda: provider}
    )

    class NoTools:
        async def run(self, request: Any) -> Any:
            raise AssertionError("no tools in fleet tests")

    from aofd.runtime import tools

    agent_runner = agents.AgentRunner(
        providers=providers, toolbox=tools.Toolbox(runner=NoTools()), retry=FAST_RETRY
    )
    return fleets.FleetRunner(agents=agent_runner, approvals=approvals), provider


def scope() -> agents.RunScope:
    return agents.RunScope(
        run_id="r1",
        context_name="prod",
        user=ports.UserRef("U1"),
        origin=ports.ReplyTarget("slack", "bot", "C1"),
        approvers=("U-LEAD",),
    )


def compile_fleet(spec: dict[str, Any], agents: dict[str, flows.AgentSpec] | None = None) -> flows.FleetSpec:
    """An AgentFleet spec compiled (it must compile without problems)."""
    compiled, problems = flows.fleet_spec("team", fleet_kind.FleetSpec.model_validate(spec), agents or {})
    assert [] == problems
    return compiled


def fleet(mode: str, members: list[dict[str, Any]], **coordination: Any) -> flows.FleetSpec:
    return compile_fleet({"agents": members, "coordination": {"mode": mode, **coordination}})


def member(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "spec": {"model": f"anthropic:{name}", "instructions": f"You are {name}."}, **extra}


def by_model(answers: dict[str, str]) -> Any:
    return lambda r: answers[r.model]


async def test_peer_majority_on_normalized_answers() -> None:
    """Peer mode: every member answers in parallel and a majority of normalized answers wins."""
    run, provider = runner(
        by_model({"a": "Restart the pod.", "b": "  restart   THE pod", "c": "scale up"}),
        delays={"a": 0.05, "b": 0.05, "c": 0.05},
    )
    result = await run.run(fleet("peer", [member("a"), member("b"), member("c")]), "fix?", scope())
    assert result.text == "Restart the pod."
    assert result.detail["consensus"]["votes_for"] == 2
    assert provider.max_active == 3


async def test_structured_verdicts_decide_on_the_decision_field() -> None:
    """Answers with a JSON verdict agree on `decision`; confidences feed min_confidence."""
    answers = {
        "a": 'Looks bad. {"decision": "REJECT", "confidence": 0.9}',
        "b": '```json\n{"decision": "reject", "confidence": 0.8}\n```',
        "c": '{"decision": "approve", "confidence": 0.99}',
    }
    run, _ = runner(by_model(answers))
    result = await run.run(
        fleet("peer", [member("a"), member("b"), member("c")], consensus={"min_confidence": 0.8}),
        "review",
        scope(),
    )
    assert result.detail["consensus"]["decision"] == "reject"
    assert result.detail["consensus"]["confidence"] == pytest.approx(0.85)
    run2, _ = runner(by_model(answers))
    with pytest.raises(fleets.FleetFailed, match=r"below min_confidence 0\.9"):
        await run2.run(
            fleet("peer", [member("a"), member("b"), member("c")], consensus={"min_confidence": 0.9}),
            "review",
            scope(),
        )


async def test_unanimous_and_min_votes() -> None:
    """Unanimous needs every answer equal; majority honours an explicit min_votes."""
    run, _ = runner(by_model({"a": "yes", "b": "Yes!", "c": "no"}))
    with pytest.raises(fleets.FleetFailed, match="not unanimous"):
        await run.run(
            fleet("peer", [member("a"), member("b"), member("c")], consensus={"algorithm": "unanimous"}),
            "q",
            scope(),
        )
    run, _ = runner(by_model({"a": "yes", "b": "Yes!", "c": "no"}))
    with pytest.raises(fleets.FleetFailed, match="3 needed"):
        await run.run(
            fleet("peer", [member("a"), member("b"), member("c")], consensus={"min_votes": 3}), "q", scope()
        )
    run, _ = runner(by_model({"a": "yes", "b": "Yes!"}))
    result = await run.run(
        fleet("peer", [member("a"), member("b")], consensus={"algorithm": "unanimous"}), "q", scope()
    )
    assert result.text == "yes"


async def test_weighted_uses_member_weight_and_consensus_weights() -> None:
    """Weighted consensus honours each member's `weight`, overridden by `consensus.weights`."""
    answers = by_model({"senior": "rollback", "a": "restart", "b": "restart"})
    members = [member("senior", weight=3.0), member("a"), member("b")]
    run, _ = runner(answers)
    result = await run.run(fleet("peer", members, consensus={"algorithm": "weighted"}), "q", scope())
    assert result.text == "rollback"  # 3 against 2
    run, _ = runner(answers)
    result = await run.run(
        fleet("peer", members, consensus={"algorithm": "weighted", "weights": {"senior": 1.0}}), "q", scope()
    )
    assert result.text == "restart"  # 1 against 2


async def test_first_wins_takes_the_first_arrival() -> None:
    """first_wins returns the answer that arrived first, whatever the declared order."""
    run, _ = runner(by_model({"slow": "slow answer", "fast": "fast answer"}), delays={"slow": 0.1})
    result = await run.run(
        fleet(
            "peer",
            [member("slow"), member("fast")],
            consensus={"algorithm": "first_wins", "allow_partial": True},
        ),
        "q",
        scope(),
    )
    assert result.text == "fast answer"


async def test_timeout_ms_and_allow_partial() -> None:
    """An agent slower than timeout_ms does not vote; without allow_partial that fails the consensus."""
    answers = by_model({"a": "ok", "b": "ok", "late": "no"})
    members = [member("a"), member("b"), member("late")]
    run, _ = runner(answers, delays={"late": 1.0})
    with pytest.raises(fleets.FleetFailed, match=r"late \(timed out\)"):
        await run.run(fleet("peer", members, consensus={"timeout_ms": 100}), "q", scope())
    run, _ = runner(answers, delays={"late": 1.0})
    result = await run.run(
        fleet("peer", members, consensus={"timeout_ms": 100, "allow_partial": True}), "q", scope()
    )
    assert result.text == "ok"
    assert result.detail["consensus"]["missing"] == ["late"]


async def test_human_review_goes_to_approvals_or_says_so() -> None:
    """human_review asks the approvals gate; without a gate the answer says it needs review."""
    answers = by_model(
        {
            "a": '{"decision": "drain node", "confidence": 0.7}',
            "b": '{"decision": "reboot", "confidence": 0.95}',
        }
    )
    gate = ScriptedApprovals("approved")
    run, _ = runner(answers, approvals=gate)
    result = await run.run(
        fleet("peer", [member("a"), member("b")], consensus={"algorithm": "human_review"}), "q", scope()
    )
    assert "reboot" in result.text
    assert gate.requests[0].approvers == ("U-LEAD",)
    assert "reboot" in gate.requests[0].text
    run, _ = runner(answers)
    result = await run.run(
        fleet("peer", [member("a"), member("b")], consensus={"algorithm": "human_review"}), "q", scope()
    )
    assert result.text.startswith("Fleet team needs human review")
    assert result.detail["needs_human_review"]
    run, _ = runner(answers, approvals=ScriptedApprovals("denied"))
    with pytest.raises(fleets.FleetFailed, match="human review denied"):
        await run.run(
            fleet("peer", [member("a"), member("b")], consensus={"algorithm": "human_review"}), "q", scope()
        )


async def test_peer_merge_and_manager_synthesis() -> None:
    """merge lists every answer; manager_synthesis has the manager write from the peers' answers."""
    answers = by_model({"a": "A says", "b": "B says", "boss": "synthesis"})
    run, _ = runner(answers)
    result = await run.run(fleet("peer", [member("a"), member("b")], aggregation="merge"), "q", scope())
    assert result.text == "**a**:\nA says\n\n**b**:\nB says"
    run, provider = runner(answers)
    result = await run.run(
        fleet(
            "peer",
            [member("a"), member("b"), member("boss", role="manager")],
            aggregation="manager_synthesis",
        ),
        "q",
        scope(),
    )
    assert result.text == "synthesis"
    boss_prompt = next(r for r in provider.requests if r.model == "boss").messages[0].text
    assert "A says" in boss_prompt
    assert "B says" in boss_prompt


async def test_hierarchical_manager_delegates_and_synthesizes() -> None:
    """The manager's JSON plan assigns sub-tasks, workers run them, the manager synthesizes."""

    def answer(r: base.ModelRequest) -> str:
        prompt = r.messages[0].text
        if r.model == "boss" and "Delegate" in prompt:
            return json.dumps(
                {
                    "assignments": [
                        {"agent": "logs", "task": "read nginx logs"},
                        {"agent": "events", "task": "list events"},
                    ]
                }
            )
        if r.model == "boss":
            return "final: " + ("OOMKilled" if "OOMKilled" in prompt and "no events" in prompt else "?")
        return {"logs": "OOMKilled", "events": "no events", "idle": "never asked"}[r.model]

    run, provider = runner(answer)
    spec = fleet(
        "hierarchical", [member("boss", role="manager"), member("logs"), member("events"), member("idle")]
    )
    result = await run.run(spec, "why is nginx crashing", scope())
    assert result.text == "final: OOMKilled"
    assert [r.messages[0].text for r in provider.requests if r.model == "logs"] == ["read nginx logs"]
    assert not [r for r in provider.requests if r.model == "idle"]
    assert result.detail["plan_fallback"] is False


async def test_hierarchical_bad_plan_falls_back_to_all_workers() -> None:
    """A plan that is not JSON gives every worker the whole task (recorded in the detail)."""
    run, provider = runner(lambda r: "not json" if r.model == "boss" else f"{r.model} ok")
    result = await run.run(
        fleet("hierarchical", [member("boss", role="manager"), member("w1"), member("w2")]), "task", scope()
    )
    assert result.detail["plan_fallback"] is True
    assert sorted(r.model for r in provider.requests) == ["boss", "boss", "w1", "w2"]


async def test_pipeline_passes_each_stage_output_on() -> None:
    """Pipeline runs members in order; each stage gets the task and the previous stage's output."""
    run, provider = runner(lambda r: f"{r.model}({r.messages[0].text.splitlines()[-1]})")
    result = await run.run(
        fleet("pipeline", [member("collect"), member("analyze"), member("report")]), "go", scope()
    )
    assert [r.model for r in provider.requests] == ["collect", "analyze", "report"]
    assert result.text == "report(analyze(collect(go)))"


async def test_swarm_picks_one_member_round_robin() -> None:
    """Swarm sends each task to one member, spreading consecutive tasks across members."""
    run, _provider = runner(lambda r: r.model)
    spec = fleet("swarm", [member("a"), member("b")])
    got = [(await run.run(spec, "t", scope())).text for _ in range(4)]
    assert got == ["a", "b", "a", "b"]


async def test_tiered_consensus_per_tier_and_final_aggregation() -> None:
    """Tiers run in order with per-tier consensus, pass_all_results and a manager synthesis."""

    def answer(r: base.ModelRequest) -> str:
        prompt = r.messages[0].text
        if r.model.startswith("collector"):
            return f"metrics from {r.model}"
        if r.model.startswith("reasoner"):
            assert "metrics from collector1" in prompt
            assert "metrics from collector2" in prompt
            return '{"decision": "memory leak", "confidence": 0.9}'
        assert r.model == "lead"
        assert "memory leak" in prompt
        return "RCA: memory leak"

    members = [
        member("collector1", tier=1),
        member("collector2", tier=1),
        member("reasoner1", tier=2),
        member("reasoner2", tier=2),
        member("lead", role="manager"),
    ]
    run, provider = runner(answer)
    spec = fleet(
        "tiered",
        members,
        tiered={
            "pass_all_results": True,
            "final_aggregation": "manager_synthesis",
            "tier_consensus": {"2": {"algorithm": "unanimous"}},
        },
    )
    result = await run.run(spec, "why is checkout slow", scope())
    assert result.text == "RCA: memory leak"
    tiers = result.detail["tiers"]
    assert tiers[0]["result"] is None
    assert tiers[1]["result"].endswith("0.9}")
    assert [r.model for r in provider.requests][-1] == "lead"


async def test_tiered_without_pass_all_fails_when_a_tier_disagrees() -> None:
    """Without pass_all_results a tier that reaches no consensus fails the fleet, naming the tier."""
    run, _ = runner(lambda r: r.model)
    spec = fleet("tiered", [member("a", tier=1), member("b", tier=1)])
    with pytest.raises(fleets.FleetFailed, match="tier 1"):
        await run.run(spec, "q", scope())


async def test_deep_plans_executes_steps_and_synthesizes() -> None:
    """Deep mode: planned steps run one per iteration with the findings so far, then a synthesis."""

    def answer(r: base.ModelRequest) -> str:
        prompt = r.messages[0].text
        if r.model == "planner" and "Reply with only a JSON" in prompt:
            return json.dumps(
                {
                    "goal": "find cause",
                    "steps": [
                        {"description": "check pods"},
                        {"description": "check nodes"},
                        {"description": "extra"},
                    ],
                }
            )
        if r.model == "planner":
            return "conclusion: " + (
                "both" if "check pods -> pods bad" in prompt and "check nodes -> nodes ok" in prompt else "?"
            )
        return "pods bad" if "step 1" in prompt else "nodes ok"

    run, _provider = runner(answer)
    spec = compile_fleet(
        {
            "agents": [member("planner", role="manager"), member("worker")],
            "coordination": {"mode": "deep", "deep": {"max_iterations": 2}},
        }
    )
    result = await run.run(spec, "investigate", scope())
    assert result.text == "conclusion: both"
    assert result.detail["iterations"] == 2
    assert result.detail["goal"] == "find cause"


def test_consensus_normalization_and_verdicts() -> None:
    """Normalization folds case, spaces and trailing punctuation; verdicts are found anywhere."""
    assert consensus.normalize("  Restart   THE Pod!! ") == "restart the pod"
    assert consensus.verdict('I think so. {"decision": "Approve", "confidence": 85} done') == (
        "Approve",
        0.85,
    )
    assert consensus.verdict("no json here") == (None, None)
    votes = [consensus.Vote("a", None, error="boom"), consensus.Vote("b", "x")]
    assert consensus.decide(votes, flows.Consensus(allow_partial=True)).reached is True
    assert consensus.decide(votes, flows.Consensus()).reason.startswith("not every agent answered")


async def test_members_by_agent_name() -> None:
    """A fleet member with only a name uses the Agent resource of that name."""
    spec = compile_fleet(
        {"agents": [{"name": "k8s", "weight": 2}]}, {"k8s": flows.AgentSpec("k8s", "anthropic:k8s-model")}
    )
    assert spec.members[0].agent.model == "anthropic:k8s-model"
    assert spec.members[0].weight == 2.0
    model = fleet_kind.FleetSpec.model_validate({"agents": [{"name": "ghost"}]})
    _spec, problems = flows.fleet_spec("team", model, {})
    assert ["member ghost names no Agent that resolves"] == [p.message for p in problems]
