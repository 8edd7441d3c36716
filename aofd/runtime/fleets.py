"""Running an AgentFleet: the coordination modes, on top of `agents.AgentRunner` and `consensus`.

This module owns `ApprovalGate` (the port through which human review and Approval nodes
reach the approvals store) and `FleetRunner.run` of a compiled `aofd.specs.flows.FleetSpec`,
for every mode:

- peer: every member (and replica) answers in parallel; `aggregation` consensus (default),
  merge, or manager_synthesis (the manager writes the answer from the others').
- hierarchical: the manager is asked for a JSON plan assigning sub-tasks to workers, the
  workers run their assignments in parallel, and the manager synthesizes their answers.
  A plan that is not valid JSON or names no known worker falls back to giving every worker
  the whole task (recorded in the result's detail).
- pipeline: members in order, each gets the task and the previous stage's output.
- swarm: the least-loaded member (ties: round-robin; `distribution: random` picks randomly).
- tiered: tiers ascending, members of a tier in parallel, per-tier consensus
  (`tiered.tier_consensus["<n>"]`, else `coordination.consensus`, else majority), the next
  tier gets the winning answer or, with `pass_all_results`, every answer; the final
  aggregation is consensus (the last tier's decision), merge, or manager_synthesis.
- deep: the planner (manager, else first member) writes a JSON plan of steps, executors run
  them one per iteration (up to `deep.max_iterations`) with the findings so far, and the
  planner synthesizes.

`timeout_ms` is enforced here: an agent that has not answered in time is cancelled and
does not vote. Consensus failures fail the fleet with the reason; `human_review` goes to the
`ApprovalGate` when there is one, else the answer says it needs human review.

It must not run commands or call models directly: agents do, through their runner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from aofd import errors
from aofd.runtime import agents, consensus, deadlines, ports
from aofd.specs import flows

ApprovalStatus = Literal["approved", "denied", "expired", "cancelled"]


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A request for a human decision (an Approval node or a fleet's human review)."""

    run_id: str
    context_name: str
    title: str
    text: str
    user: ports.UserRef
    origin: ports.ReplyTarget
    timeout: float
    approvers: tuple[str, ...] = ()
    node: str = ""
    min_approvers: int = 1
    allow_self_approval: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalDecision:
    status: ApprovalStatus
    by: str = ""
    reason: str = ""


class ApprovalGate(Protocol):
    """Posts an approval request where the run came from and waits for approved/denied/expired."""

    async def request(self, request: ApprovalRequest) -> ApprovalDecision: ...


class FleetFailed(errors.RunFailed):
    """The fleet produced no answer (no consensus, a pipeline stage failed, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FleetResult:
    text: str
    mode: str
    detail: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    member: flows.Member
    label: str
    text: str | None
    error: str | None = None
    timed_out: bool = False

    def vote(self, weight: float | None = None) -> consensus.Vote:
        w = weight if weight is not None else (self.member.weight if self.member.weight is not None else 1.0)
        return consensus.Vote(self.label, self.text, w, self.error, self.timed_out)


class FleetRunner:
    """Runs fleets for one engine. Holds only swarm load counters (per fleet name, in memory)."""

    def __init__(
        self,
        *,
        agents: agents.AgentRunner,
        approvals: ApprovalGate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._agents = agents
        self._approvals = approvals
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography
        # Invariant: _load[fleet][member] counts swarm tasks in flight, decremented in `finally`.
        self._load: dict[str, dict[str, int]] = {}
        self._turns: dict[str, itertools.count[int]] = {}

    async def run(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        """Run `task` on `fleet` in its coordination mode. Raises `FleetFailed` or `agents.AgentFailed`."""
        if not fleet.members:
            raise FleetFailed(f"fleet {fleet.name} has no agents")
        mode = fleet.mode
        if mode == "peer":
            return await self._peer(fleet, task, scope)
        if mode == "hierarchical":
            return await self._hierarchical(fleet, task, scope)
        if mode == "pipeline":
            return await self._pipeline(fleet, task, scope)
        if mode == "swarm":
            return await self._swarm(fleet, task, scope)
        if mode == "tiered":
            return await self._tiered(fleet, task, scope)
        if mode == "deep":
            return await self._deep(fleet, task, scope)
        raise FleetFailed(f"fleet {fleet.name}: unknown coordination mode {mode!r}")

    # --- helpers -----------------------------------------------------------------------------

    async def _ask(self, member: flows.Member, prompt: str, scope: agents.RunScope) -> str:
        result = await self._agents.run(member.agent, prompt, scope)
        return result.text

    async def _gather(
        self,
        jobs: list[tuple[flows.Member, str, str]],
        scope: agents.RunScope,
        timeout_ms: int | None,
    ) -> list[_Answer]:
        """Run (member, label, prompt) jobs concurrently; answers in arrival order. Never raises."""
        arrived: list[_Answer] = []
        timeout = timeout_ms / 1000.0 if timeout_ms else None

        async def one(member: flows.Member, label: str, prompt: str) -> None:
            when = asyncio.get_running_loop().time() + timeout if timeout is not None else None
            try:
                async with deadlines.deadline(when):  # paused while a member's command awaits approval
                    text = await self._ask(member, prompt, scope)
            except TimeoutError:
                arrived.append(
                    _Answer(member, label, None, error=f"no answer within {timeout_ms} ms", timed_out=True)
                )
            except agents.AgentFailed as exc:
                arrived.append(_Answer(member, label, None, error=str(exc)))
            else:
                arrived.append(_Answer(member, label, text))

        async with asyncio.TaskGroup() as tg:
            for member, label, prompt in jobs:
                tg.create_task(one(member, label, prompt))
        return arrived

    async def _vote(
        self,
        fleet: flows.FleetSpec,
        answers: list[_Answer],
        config: flows.Consensus,
        scope: agents.RunScope,
        *,
        what: str,
    ) -> tuple[consensus.Result, str | None]:
        """Decide a consensus; for human_review ask the gate. Returns the result and the answer (or None)."""
        votes = [a.vote() for a in answers]
        result = consensus.decide(votes, config)
        if config.algorithm != "human_review":
            return result, result.answer if result.reached else None
        if self._approvals is None:
            return result, None
        listing = "\n\n".join(
            f"*{a.label}*: {a.text if a.text is not None else '(' + (a.error or 'no answer') + ')'}"
            for a in answers
        )
        decision = await self._approvals.request(
            ApprovalRequest(
                run_id=scope.run_id,
                context_name=scope.context_name,
                title=f"Fleet {fleet.name} needs a human review of {what}",
                text=f"Suggested answer:\n{result.answer}\n\nAll answers:\n{listing}",
                user=scope.user,
                origin=scope.origin,
                timeout=300.0,
                approvers=scope.approvers,
            )
        )
        if decision.status == "approved":
            reviewed = dataclasses.replace(
                result,
                reached=True,
                needs_human_review=False,
                reason=f"approved by {decision.by or 'a reviewer'}",
            )
            return reviewed, result.answer
        raise FleetFailed(
            f"fleet {fleet.name}: human review {decision.status}"
            + (f" by {decision.by}" if decision.by else "")
        )

    @staticmethod
    def _needs_review_text(fleet: flows.FleetSpec, result: consensus.Result, answers: list[_Answer]) -> str:
        listing = "\n".join(
            f"- {a.label}: {a.text if a.text is not None else '(' + (a.error or 'no answer') + ')'}"
            for a in answers
        )
        return (
            f"Fleet {fleet.name} needs human review (no automatic decision).\n"
            f"Suggested answer: {result.answer}\n\nAll answers:\n{listing}"
        )

    def _consensus_failure(self, fleet: flows.FleetSpec, result: consensus.Result, what: str) -> FleetFailed:
        return FleetFailed(
            f"fleet {fleet.name}: no consensus on {what} ({result.algorithm}): {result.reason}"
        )

    # --- modes -------------------------------------------------------------------------------

    async def _peer(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        aggregation = fleet.aggregation or "consensus"
        manager = fleet.manager_member() if aggregation == "manager_synthesis" else None
        peers = [m for m in fleet.members if m is not manager]
        jobs = [
            (m, m.name if m.replicas == 1 else f"{m.name}#{i + 1}", task)
            for m in peers
            for i in range(m.replicas)
        ]
        config = fleet.consensus or flows.Consensus()
        answers = await self._gather(jobs, scope, config.timeout_ms)
        detail: dict[str, Any] = {
            "answers": {a.label: a.text if a.text is not None else None for a in answers}
        }
        if aggregation == "merge":
            got = [a for a in answers if a.text is not None]
            if not got:
                raise FleetFailed(f"fleet {fleet.name}: no agent answered")
            text = "\n\n".join(f"**{a.label}**:\n{a.text}" for a in _in_order(got, jobs))
            return FleetResult(text, "peer", detail | {"aggregation": "merge"})
        if aggregation == "manager_synthesis":
            if manager is None:
                raise FleetFailed(f"fleet {fleet.name}: aggregation manager_synthesis needs a manager")
            text = await self._ask(manager, _synthesis_prompt(task, answers), scope)
            return FleetResult(
                text, "peer", detail | {"aggregation": "manager_synthesis", "manager": manager.name}
            )
        result, answer = await self._vote(fleet, answers, config, scope, what="the peers' answers")
        detail["consensus"] = result.as_dict()
        if answer is None:
            if config.algorithm == "human_review":
                return FleetResult(
                    self._needs_review_text(fleet, result, answers),
                    "peer",
                    detail | {"needs_human_review": True},
                )
            raise self._consensus_failure(fleet, result, "the peers' answers")
        return FleetResult(answer, "peer", detail)

    async def _hierarchical(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        manager = fleet.manager_member()
        if manager is None:
            raise FleetFailed(f"fleet {fleet.name}: hierarchical mode needs a manager")
        workers = [m for m in fleet.members if m is not manager]
        if not workers:
            text = await self._ask(manager, task, scope)
            return FleetResult(text, "hierarchical", {"manager": manager.name, "assignments": []})
        roster = "\n".join(f"- {w.name} ({w.role}): {_first_line(w.agent.instructions)}" for w in workers)
        plan_prompt = (
            f"You manage the fleet {fleet.name}. Delegate this task to your workers.\n\nTask:\n{task}\n\n"
            f"Workers:\n{roster}\n\n"
            "Reply with only a JSON object: "
            '{"assignments": [{"agent": "<worker name>", "task": "<sub-task>"}]}. '
            "Give each worker you need one sub-task; leave out workers you do not need."
        )
        plan_text = await self._ask(manager, plan_prompt, scope)
        assignments, fallback = _assignments(plan_text, workers, task)
        jobs = [(fleet.member(name) or workers[0], name, sub) for name, sub in assignments]
        answers = await self._gather(jobs, scope, fleet.consensus.timeout_ms if fleet.consensus else None)
        if not any(a.text is not None for a in answers):
            errors_ = "; ".join(a.error or "" for a in answers)
            raise FleetFailed(f"fleet {fleet.name}: every worker failed: {errors_}")
        synth = await self._ask(manager, _synthesis_prompt(task, answers, dict(assignments)), scope)
        detail = {
            "manager": manager.name,
            "assignments": [{"agent": n, "task": t} for n, t in assignments],
            "plan_fallback": fallback,
            "answers": {a.label: a.text for a in answers},
        }
        return FleetResult(synth, "hierarchical", detail)

    async def _pipeline(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        previous: str | None = None
        stages: list[dict[str, Any]] = []
        for member in fleet.members:
            prompt = (
                task
                if previous is None
                else (f"Task:\n{task}\n\nOutput of the previous stage ({stages[-1]['agent']}):\n{previous}")
            )
            try:
                previous = await self._ask(member, prompt, scope)
            except agents.AgentFailed as exc:
                raise FleetFailed(f"fleet {fleet.name}: pipeline stage {member.name} failed: {exc}") from exc
            stages.append({"agent": member.name, "output": previous})
        return FleetResult(previous or "", "pipeline", {"stages": stages})

    async def _swarm(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        load = self._load.setdefault(fleet.name, {})
        if fleet.distribution == "random":
            member = self._rng.choice(fleet.members)
        else:
            turn = next(self._turns.setdefault(fleet.name, itertools.count()))
            n = len(fleet.members)
            rotated = [fleet.members[(turn + i) % n] for i in range(n)]
            member = min(rotated, key=lambda m: load.get(m.name, 0))
        load[member.name] = load.get(member.name, 0) + 1
        try:
            text = await self._ask(member, task, scope)
        finally:
            load[member.name] -= 1
        return FleetResult(text, "swarm", {"agent": member.name})

    async def _tiered(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        manager = fleet.manager_member() if fleet.final_aggregation == "manager_synthesis" else None
        tiers: dict[int, list[flows.Member]] = {}
        for m in fleet.members:
            if m is manager and m.tier is None:
                continue  # the synthesizing manager does not vote in tier 1 unless placed in a tier
            tiers.setdefault(m.tier or 1, []).append(m)
        prompt = task
        tier_results: list[dict[str, Any]] = []
        last_answer: str | None = None
        for tier in sorted(tiers):
            config = fleet.tier_consensus.get(str(tier)) or fleet.consensus or flows.Consensus()
            jobs = [(m, m.name, prompt) for m in tiers[tier]]
            answers = await self._gather(jobs, scope, config.timeout_ms)
            result, answer = await self._vote(fleet, answers, config, scope, what=f"tier {tier}")
            tier_results.append(
                {
                    "tier": tier,
                    "result": answer,
                    "confidence": round(result.confidence, 4),
                    "consensus": result.as_dict(),
                    "answers": {a.label: a.text for a in answers},
                }
            )
            if answer is None and not fleet.pass_all_results:
                raise self._consensus_failure(fleet, result, f"tier {tier}")
            last_answer = answer
            if fleet.pass_all_results:
                listing = "\n\n".join(
                    f"### {a.label}\n{a.text if a.text is not None else '(' + (a.error or 'no answer') + ')'}"
                    for a in _in_order(answers, jobs)
                )
                prompt = (
                    f"Task:\n{task}\n\nResults of tier {tier}:\n{listing}\n\n"
                    f"Tier {tier} consensus: {answer if answer is not None else 'none reached'}"
                )
            else:
                prompt = (
                    f"Task:\n{task}\n\nTier {tier} concluded (confidence {result.confidence:.2f}):\n{answer}"
                )
        detail: dict[str, Any] = {"tiers": tier_results, "final_aggregation": fleet.final_aggregation}
        if fleet.final_aggregation == "merge":
            text = "\n\n".join(
                f"Tier {r['tier']}: {r['result'] if r['result'] is not None else _merged(r['answers'])}"
                for r in tier_results
            )
            return FleetResult(text, "tiered", detail)
        if fleet.final_aggregation == "manager_synthesis" and manager is not None:
            body = "\n\n".join(
                f"## Tier {r['tier']} (consensus: {r['result'] if r['result'] is not None else 'none'})\n"
                + _merged(r["answers"])
                for r in tier_results
            )
            synth_prompt = (
                f"Task:\n{task}\n\nYour fleet worked in tiers. Their results:\n\n{body}\n\n"
                "Synthesize the final answer from these results."
            )
            text = await self._ask(manager, synth_prompt, scope)
            return FleetResult(text, "tiered", detail | {"manager": manager.name})
        if last_answer is None:
            raise FleetFailed(f"fleet {fleet.name}: the last tier reached no consensus")
        return FleetResult(last_answer, "tiered", detail)

    async def _deep(self, fleet: flows.FleetSpec, task: str, scope: agents.RunScope) -> FleetResult:
        planner = fleet.manager_member() or fleet.members[0]
        executors = [m for m in fleet.members if m is not planner] or [planner]
        goal = task
        steps: list[str] = []
        if fleet.deep_planning:
            plan_prompt = (fleet.planner_prompt or "Plan how to investigate this task step by step.") + (
                f"\n\nTask:\n{task}\n\nReply with only a JSON object: "
                '{"goal": "<goal>", "steps": [{"description": "<what to do>"}]}'
            )
            plan_text = await self._ask(planner, plan_prompt, scope)
            goal, steps = _plan(plan_text, task)
        if not steps:
            steps = [
                "Gather the information relevant to the task",
                "Analyze the findings",
                "Identify the cause and the recommended actions",
            ]
        steps = steps[: fleet.deep_max_iterations]
        findings: list[str] = []
        for index, step in enumerate(steps, start=1):
            executor = executors[(index - 1) % len(executors)]
            memory = "\n".join(findings) or "(none yet)"
            prompt = (
                f"Goal: {goal}\nTask:\n{task}\n\nFindings so far:\n{memory}\n\nNow do step {index}: {step}"
            )
            result = await self._ask(executor, prompt, scope)
            findings.append(f"Step {index}: {step} -> {result}")
        synth_prompt = (fleet.synthesizer_prompt or "Synthesize the conclusion and recommendations.") + (
            f"\n\nGoal: {goal}\nTask:\n{task}\n\nFindings:\n" + "\n".join(findings)
        )
        conclusion = await self._ask(planner, synth_prompt, scope)
        detail = {
            "goal": goal,
            "steps": steps,
            "findings": findings,
            "iterations": len(steps),
            "planner": planner.name,
        }
        return FleetResult(conclusion, "deep", detail)


def _in_order(answers: list[_Answer], jobs: list[tuple[flows.Member, str, str]]) -> list[_Answer]:
    """Answers in the fleet's declared order (arrival order is for first_wins only)."""
    rank = {label: i for i, (_m, label, _p) in enumerate(jobs)}
    return sorted(answers, key=lambda a: rank.get(a.label, len(rank)))


def _merged(answers: Mapping[str, str | None]) -> str:
    return "\n".join(
        f"- {name}: {text if text is not None else '(no answer)'}" for name, text in answers.items()
    )


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no instructions)"])[0][:200]


def _synthesis_prompt(task: str, answers: list[_Answer], assignments: Mapping[str, str] | None = None) -> str:
    parts = []
    for a in answers:
        head = f"### {a.label}"
        if assignments and a.label in assignments:
            head += f" (assigned: {assignments[a.label]})"
        parts.append(
            f"{head}\n{a.text if a.text is not None else '(failed: ' + (a.error or 'no answer') + ')'}"
        )
    return (
        f"Task:\n{task}\n\nYour workers answered:\n\n"
        + "\n\n".join(parts)
        + "\n\nWrite the final answer to the task."
    )


def _assignments(
    plan_text: str, workers: list[flows.Member], task: str
) -> tuple[list[tuple[str, str]], bool]:
    """(worker, sub-task) pairs from the manager's plan; all workers get the task if the plan is unusable."""
    plan = consensus.json_object(plan_text, "assignments")
    names = {w.name for w in workers}
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    if plan is not None and isinstance(plan.get("assignments"), list):
        for item in plan["assignments"]:
            if not isinstance(item, dict):
                continue
            name, sub = str(item.get("agent", "")), item.get("task")
            if name in names and name not in seen and isinstance(sub, str) and sub.strip():
                pairs.append((name, sub))
                seen.add(name)
    if pairs:
        return pairs, False
    return [(w.name, task) for w in workers], True


def _plan(text: str, task: str) -> tuple[str, list[str]]:
    plan = consensus.json_object(text, "steps")
    if plan is None or not isinstance(plan.get("steps"), list):
        return task, []
    steps: list[str] = []
    for item in plan["steps"]:
        if isinstance(item, str):
            steps.append(item)
        elif isinstance(item, dict):
            desc = item.get("description") or item.get("action") or item.get("step")
            if desc:
                steps.append(str(desc))
    return str(plan.get("goal") or task), steps
