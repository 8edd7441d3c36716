"""The AgentFlow engine: one run of a binding's flow, from event to answer.

This module owns:

- `RunPlan`, the immutable snapshot a run executes: the flow graph, the agents and fleets
  it may use and the Context's name and limits, built once per binding digest from a
  `ResolvedBinding` (`plan_for`). A run keeps the plan it started with across hot swaps.
- both flow forms: the seed's short form (`agents: [{name}]`, run in order, each agent gets
  the request and the previous answer) and upstream's node graph (`nodes` + `connections`
  with `when`, node `conditions`).
- the scheduler: nodes run as asyncio tasks in one TaskGroup per run; a node runs when
  every incoming connection is decided (the join barrier: a node reachable from two parents
  runs once), Parallel branches really overlap, Join waits for all/any/majority, a failed
  node fails the run and cancels the rest, and the whole run has a deadline (the Context's
  `limits.max_execution_time_seconds`, else `default_timeout`), extended by the time spent
  waiting for a human at an Approval node.
- the node types Agent, Fleet, Script, Conditional, Transform, Wait, Parallel, Join,
  Approval, HTTP, Slack/Discord/Response, End.
- posting the answer (or a clear failure) back to the origin through `ports.Replier`, and
  the run record in `runs.RunHistory`.

Security rules kept here: templates never read the host environment; Script nodes and tool
calls go to the guard as argv lists (a command string is split once, then each token is
rendered, so a template value can never add arguments); a Context's env values are never
put into a prompt; HTTP nodes follow `HttpPolicy` (below).

It must not run subprocesses or read `os.environ`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import structlog

from aofd import errors, settings
from aofd.runtime import (
    agents,
    approvals,
    fleets,
    guard,
    http_policy,
    limits,
    policy,
    ports,
    runs,
    templates,
    tools,
)
from aofd.runtime.providers import base as provider_base
from aofd.runtime.providers import registry

log = structlog.get_logger()

DEFAULT_TIMEOUT = 600.0
"""Seconds a run may take when its Context sets no `limits.max_execution_time_seconds`."""

RESERVED_SCOPE = frozenset({"event", "trigger", "context", "run", "approval"})
START_NODES = frozenset({"start", "trigger"})

# --- the runtime's view of resources ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSpec:
    id: str
    type: str  # lower-case: agent, fleet, script, conditional, transform, wait, parallel, join, ...
    config: Mapping[str, Any]
    conditions: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    when: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FlowSpec:
    """A flow as a graph. `entries` are the nodes that start; `short_form` marks `agents: [...]` flows."""

    name: str
    nodes: tuple[NodeSpec, ...]
    edges: tuple[Edge, ...]
    entries: tuple[str, ...]
    short_form: bool = False

    def node(self, node_id: str) -> NodeSpec:
        return next(n for n in self.nodes if n.id == node_id)


def _cfg(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A config key in snake_case or camelCase."""
    if name in config:
        return config[name]
    head, *rest = name.split("_")
    camel = head + "".join(p.title() for p in rest)
    return config.get(camel, default)


def flow_spec(name: str, spec: Any) -> FlowSpec:
    """A `FlowSpec` from an AgentFlow spec (pydantic or mapping), either form."""
    data = agents.as_data(spec)
    raw_nodes = data.get("nodes") or ()
    if not raw_nodes and data.get("agents"):
        nodes: list[NodeSpec] = []
        seen: dict[str, int] = collections.Counter()
        for ref in data["agents"]:
            agent_name = str(agents.as_data(ref)["name"] if not isinstance(ref, str) else ref)
            seen[agent_name] += 1
            node_id = agent_name if seen[agent_name] == 1 else f"{agent_name}-{seen[agent_name]}"
            nodes.append(NodeSpec(node_id, "agent", {"agent": agent_name}))
        edges = tuple(Edge(a.id, b.id) for a, b in itertools.pairwise(nodes))
        return FlowSpec(name, tuple(nodes), edges, (nodes[0].id,), short_form=True)
    parsed = []
    for raw in raw_nodes:
        n = agents.as_data(raw)
        conditions = tuple(agents.as_data(c) for c in (n.get("conditions") or ()))
        parsed.append(NodeSpec(str(n["id"]), str(n["type"]).lower(), dict(n.get("config") or {}), conditions))
    edge_list: list[Edge] = []
    for raw in data.get("connections") or ():
        c = agents.as_data(raw)
        source = c.get("from") if "from" in c else c.get("from_")
        edge_list.append(Edge(str(source), str(c["to"]), c.get("when") or c.get("condition")))
    ids = {n.id for n in parsed}
    # Parallel nodes fan out to their `branches` even when no connection says so.
    for node in parsed:
        if node.type == "parallel":
            for branch in node.config.get("branches") or ():
                target = (
                    branch
                    if isinstance(branch, str)
                    else (branch or {}).get("id") or (branch or {}).get("node")
                )
                if (
                    isinstance(target, str)
                    and target in ids
                    and not any(e.source == node.id and e.target == target for e in edge_list)
                ):
                    edge_list.append(Edge(node.id, target))
    if not edge_list and parsed:
        edge_list = [Edge(a.id, b.id) for a, b in itertools.pairwise(parsed)]
        entries: tuple[str, ...] = (parsed[0].id,)
    else:
        starts = [e.target for e in edge_list if e.source in START_NODES and e.source not in ids]
        if starts:
            entries = tuple(dict.fromkeys(starts))
        else:
            targets = {e.target for e in edge_list}
            entries = tuple(n.id for n in parsed if n.id not in targets)
        edge_list = [e for e in edge_list if not (e.source in START_NODES and e.source not in ids)]
    return FlowSpec(name, tuple(parsed), tuple(edge_list), entries)


@dataclasses.dataclass(frozen=True, slots=True)
class ContextView:
    """The non-secret parts of a Context a run needs (its env values are never read here)."""

    name: str
    namespace: str | None = None
    cluster: str | None = None
    max_tokens_per_request: int | None = None
    max_execution_seconds: float | None = None
    approval_timeout: float = 300.0
    approvers: tuple[str, ...] = ()
    min_approvers: int = 1
    allow_self_approval: bool = False


def context_view(name: str, spec: Any) -> ContextView:
    data = agents.as_data(spec)
    lim = agents.as_data(data.get("limits"))
    approval = agents.as_data(data.get("approval"))
    max_exec = lim.get("max_execution_time_seconds")
    return ContextView(
        name=name,
        namespace=data.get("namespace"),
        cluster=data.get("cluster"),
        max_tokens_per_request=lim.get("max_tokens_per_request"),
        max_execution_seconds=float(max_exec) if max_exec else None,
        approval_timeout=float(approval.get("timeout_seconds") or 300),
        approvers=tuple(approval.get("allowed_users") or ()),
        min_approvers=int(approval.get("min_approvers") or 1),
        allow_self_approval=bool(approval.get("allow_self_approval", False)),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything a run executes, frozen when the run starts (a hot swap never changes it)."""

    binding: str
    flow: FlowSpec
    agents: Mapping[str, agents.AgentSpec]
    fleets: Mapping[str, fleets.FleetSpec]
    context: ContextView
    digest: str = ""


def plan_for(binding: Any) -> RunPlan:
    """A `RunPlan` from an `aofd.plan.desired.ResolvedBinding` (read by attribute, see DESIGN.md §2).

    Raises `fleets.FleetFailed` / `ValueError` when the binding cannot be turned into a runnable plan.
    """
    agent_specs = {name: agents.agent_spec(name, res.model.spec) for name, res in binding.agents.items()}
    fleet_specs = {
        name: fleets.fleet_spec(name, res.model.spec, agent_specs) for name, res in binding.fleets.items()
    }
    if binding.context is None:
        raise ValueError(f"binding {binding.name} names no Context; a binding never runs without one")
    ctx = context_view(binding.context.name, binding.context.model.spec)
    if binding.flow is not None:
        flow = flow_spec(binding.flow.name, binding.flow.model.spec)
    elif binding.agent is not None:
        name = binding.agent.name
        agent_specs.setdefault(name, agents.agent_spec(name, binding.agent.model.spec))
        flow = FlowSpec(name, (NodeSpec(name, "agent", {"agent": name}),), (), (name,), short_form=True)
    elif binding.fleet is not None:
        name = binding.fleet.name
        fleet_specs.setdefault(name, fleets.fleet_spec(name, binding.fleet.model.spec, agent_specs))
        flow = FlowSpec(name, (NodeSpec(name, "fleet", {"fleet": name}),), (), (name,), short_form=True)
    else:
        raise ValueError(f"binding {binding.name} names no flow, agent or fleet")
    return RunPlan(binding.name, flow, agent_specs, fleet_specs, ctx, str(binding.digest))


def agent_plan(agent: agents.AgentSpec, context: ContextView, *, binding: str = "") -> RunPlan:
    """A one-node plan running `agent` (`aofctl run agent`)."""
    node = NodeSpec(agent.name, "agent", {"agent": agent.name})
    flow = FlowSpec(agent.name, (node,), (), (agent.name,), short_form=True)
    return RunPlan(binding or f"run-agent-{agent.name}", flow, {agent.name: agent}, {}, context)


def model_strings(plan: RunPlan) -> list[tuple[str, str | None]]:
    """Every (model, provider) the plan may call: named agents, fleet members and inline agents."""
    found: list[tuple[str, str | None]] = [(a.model, a.provider) for a in plan.agents.values()]
    for fleet in plan.fleets.values():
        found.extend((m.agent.model, m.agent.provider) for m in fleet.members)
    for node in plan.flow.nodes:
        inline = node.config.get("inline")
        if isinstance(inline, Mapping) and inline.get("model"):
            found.append((str(inline["model"]), None))
    return list(dict.fromkeys(found))


# --- HTTP nodes --------------------------------------------------------------------------------


HttpPolicy = http_policy.HttpPolicy
"""Kept here for callers of `engine.HttpPolicy`; the policy lives in `aofd.runtime.http_policy`."""


# --- ports the daemon wires ------------------------------------------------------------------


class Admission(Protocol):
    """Rate limits for a whole run (`guard.CommandGuard.admit`): a lease to release, or a Denial."""

    async def admit(
        self, context_name: str, *, user: ports.UserRef, run_id: str, agent: str = ""
    ) -> limits.Lease | guard.Denial: ...

    def charge_tokens(self, context_name: str, tokens: int) -> None:
        """Count a finished run's model tokens against the Context's `max_tokens_per_day`."""


class StoreApprovals:
    """`fleets.ApprovalGate` over the guard's `approvals.ApprovalStore`: Approval nodes and human review
    use the same mechanism as command approvals (same approvers, self-approval rule, expiry).

    The request's text is posted to the origin through the `Replier`, then `requester` posts the
    Approve/Deny prompt; the "argv" bound to the approval is `["approve", <flow or fleet>, <node>]`.
    """

    def __init__(
        self,
        *,
        store: approvals.ApprovalStore,
        requester: Callable[[approvals.ApprovalRequest], Awaitable[None]],
        replier: ports.Replier,
        min_approvers: int = 1,
    ) -> None:
        self._store = store
        self._requester = requester
        self._replier = replier
        self._min_approvers = min_approvers

    async def request(self, request: fleets.ApprovalRequest) -> fleets.ApprovalDecision:
        pending = self._store.request(
            context=request.context_name,
            argv=("approve", request.title, request.node or "review"),
            run_id=request.run_id,
            requester=request.user,
            allowed_users=request.approvers,
            min_approvers=max(self._min_approvers, request.min_approvers),
            allow_self_approval=request.allow_self_approval,
            timeout_seconds=request.timeout,
            agent="",
            origin=request.origin,
        )
        try:
            await self._replier.reply(request.origin, f"{request.title}\n\n{request.text}")
            await self._requester(pending)
            outcome = await self._store.wait(pending.id)
        except asyncio.CancelledError:
            self._store.expire(pending.id, "run cancelled")
            raise
        if outcome.state is approvals.State.GRANTED:
            by = ", ".join(u.id for u in outcome.approvers)
            return fleets.ApprovalDecision("approved", by=by, reason=outcome.reason)
        if outcome.state is approvals.State.DENIED:
            by = outcome.denier.id if outcome.denier is not None else ""
            return fleets.ApprovalDecision("denied", by=by, reason=outcome.reason)
        return fleets.ApprovalDecision("expired", reason=outcome.reason or "timeout")


# --- the engine ------------------------------------------------------------------------------


class NodeFailed(Exception):
    """A node could not complete; the run fails with this message."""


class _Stop(Exception):
    """An Approval node was denied or expired: the run stops."""


@dataclasses.dataclass(slots=True)
class _Run:
    """The mutable state of one run; owned by the run's task only."""

    plan: RunPlan
    message: ports.EventMessage
    record: runs.RunRecord
    scope: agents.RunScope
    vars: dict[str, Any]
    timeout: asyncio.Timeout | None = None
    tg: asyncio.TaskGroup | None = None
    edge_state: dict[int, bool] = dataclasses.field(default_factory=dict)
    started: set[str] = dataclasses.field(default_factory=set)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    answer_node: str | None = None
    answered_origin: bool = False
    stop_reason: str | None = None


class Engine:
    """Runs flows. One per daemon; every run gets its own `_Run` state and TaskGroup.

    Collaborators (keyword-only): `providers` (model clients), `commands` (the guard),
    `replier` (answers to the origin), `history` (run records), and optionally `approvals`
    (Approval nodes and human review), `audit` (agent.run.started/finished records; the
    guard audits commands), `http_policy`, `retry`, `default_timeout`.
    """

    def __init__(
        self,
        *,
        providers: registry.Providers,
        commands: tools.CommandRunner,
        replier: ports.Replier,
        history: runs.RunHistory,
        approvals: fleets.ApprovalGate | None = None,
        audit: ports.AuditSink | None = None,
        admission: Admission | None = None,
        http_policy: HttpPolicy | None = None,
        retry: provider_base.RetryPolicy | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._replier = replier
        self._history = history
        self._approvals = approvals
        self._audit = audit
        self._admission = admission
        self._http_policy = http_policy or HttpPolicy()
        self._default_timeout = default_timeout
        self.toolbox = tools.Toolbox(runner=commands)
        self.providers = providers
        retry_policy = retry or provider_base.RetryPolicy(max_retries=providers.models.max_retries)
        self.agents = agents.AgentRunner(providers=providers, toolbox=self.toolbox, retry=retry_policy)
        self.fleets = fleets.FleetRunner(agents=self.agents, approvals=approvals)
        self._plans: collections.OrderedDict[str, RunPlan] = collections.OrderedDict()
        self._http: aiohttp.ClientSession | None = None

    @property
    def history(self) -> runs.RunHistory:
        return self._history

    def prepare(self, binding: Any) -> RunPlan:
        """The plan of `binding`, cached by its digest (the last 256 digests)."""
        key = f"{binding.name}@{binding.digest}"
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_for(binding)
            self._plans[key] = plan
            while len(self._plans) > 256:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def problems(self, plan: RunPlan) -> list[str]:
        """Provider problems of a plan (a binding with any is Stalled; see `registry.provider_problem`)."""
        found = []
        for model, provider in model_strings(plan):
            problem = self.providers.problem(model, provider)
            if problem:
                found.append(problem)
        return list(dict.fromkeys(found))

    def new_record(
        self, *, binding: str, flow: str, context: str, message: ports.EventMessage, run_id: str | None = None
    ) -> runs.RunRecord:
        """Create and register the record of a run about to start."""
        record = runs.RunRecord(
            run_id=run_id or runs.new_run_id(),
            binding=binding,
            flow=flow,
            context=context,
            platform=message.platform,
            trigger=message.trigger,
            user=message.user.id,
        )
        self._history.add(record)
        return record

    async def run(
        self, plan: RunPlan, message: ports.EventMessage, *, record: runs.RunRecord | None = None
    ) -> runs.RunRecord:
        """Execute `plan` for `message` to the end; the outcome is in the returned record (never raises,
        except `CancelledError`, after recording the cancellation and telling the origin)."""
        if record is None:
            record = self.new_record(
                binding=plan.binding, flow=plan.flow.name, context=plan.context.name, message=message
            )
        record.flow, record.context, record.digest = plan.flow.name, plan.context.name, plan.digest
        timeout = plan.context.max_execution_seconds or self._default_timeout
        record.timeout_seconds = timeout
        loop = asyncio.get_running_loop()
        scope = agents.RunScope(
            run_id=record.run_id,
            context_name=plan.context.name,
            user=message.user,
            origin=message.reply_target(),
            deadline=loop.time() + timeout,
            max_tokens_cap=plan.context.max_tokens_per_request,
            approvers=plan.context.approvers,
        )
        run = _Run(plan, message, record, scope, _initial_vars(plan, message, record.run_id))
        lease: limits.Lease | None = None
        if self._admission is not None:
            admitted = await self._admission.admit(
                plan.context.name, user=message.user, run_id=record.run_id, agent=plan.flow.name
            )
            if isinstance(admitted, guard.Denial):
                record.finish(runs.RunStatus.FAILED, error=f"not started: {admitted.reason}")
                await self._report(run)
                self._history.prune()
                return record
            lease = admitted
        await self._audit_write(run, "agent.run.started", "unknown")
        try:
            async with asyncio.timeout_at(scope.deadline) as cm:
                run.timeout = cm
                await self._drive(run)
        except TimeoutError:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.TIMED_OUT, error=f"the run did not finish within {timeout:g} s")
        except _Stop as exc:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.STOPPED, error=str(exc))
        except NodeFailed as exc:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.FAILED, error=str(exc))
        except asyncio.CancelledError:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.CANCELLED, error="cancelled: aofd is shutting down")
            self._tally(run)
            if lease is not None:
                lease.release()
            await self._finish_quietly(run)
            raise
        except Exception as exc:  # a bug: record it, tell the origin, keep the daemon up
            log.exception("run.crashed", run_id=record.run_id)
            self._cancel_pending(run)
            record.finish(runs.RunStatus.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            record.answer = self._answer_text(run)
            record.finish(runs.RunStatus.COMPLETED)
        if lease is not None:
            lease.release()
        self._tally(run)
        await self._report(run)
        await self._audit_write(
            run, "agent.run.finished", "success" if record.status is runs.RunStatus.COMPLETED else "failure"
        )
        self._history.prune()
        return record

    async def aclose(self) -> None:
        """Close the HTTP session of HTTP nodes and the provider clients."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.providers.aclose()

    # --- scheduling --------------------------------------------------------------------------

    async def _drive(self, run: _Run) -> None:
        flow = run.plan.flow
        for node in flow.nodes:
            run.record.node(node.id, node.type)
        try:
            async with asyncio.TaskGroup() as tg:
                run.tg = tg
                for node_id in flow.entries:
                    self._launch(run, node_id)
        except* NodeFailed as group:
            raise group.exceptions[0] from None
        except* _Stop as group:
            raise group.exceptions[0] from None

    def _launch(self, run: _Run, node_id: str) -> None:
        if node_id in run.started:
            return
        run.started.add(node_id)
        assert run.tg is not None
        run.tg.create_task(
            self._node_task(run, run.plan.flow.node(node_id)), name=f"{run.record.run_id}:{node_id}"
        )

    async def _node_task(self, run: _Run, node: NodeSpec) -> None:
        record = run.record.node(node.id, node.type)
        if not self._conditions_pass(run, node):
            record.status = runs.NodeStatus.SKIPPED
            self._advance(run, node, taken=False)
            return
        record.status = runs.NodeStatus.RUNNING
        record.started_at = time.time()
        try:
            output = await self._execute(run, node, record)
        except (NodeFailed, _Stop) as exc:
            record.status = (
                runs.NodeStatus.FAILED if isinstance(exc, NodeFailed) else runs.NodeStatus.COMPLETED
            )
            record.error = str(exc)
            record.ended_at = time.time()
            raise
        except asyncio.CancelledError:
            record.status = runs.NodeStatus.CANCELLED
            record.ended_at = time.time()
            raise
        except (agents.AgentFailed, fleets.FleetFailed, errors.AofdError) as exc:
            record.status = runs.NodeStatus.FAILED
            record.error = str(exc)
            record.ended_at = time.time()
            raise NodeFailed(f"node {node.id} failed: {exc}") from exc
        record.status = runs.NodeStatus.COMPLETED
        record.output = output
        record.ended_at = time.time()
        run.outputs[node.id] = output
        if node.type in ("agent", "fleet", "script", "transform", "http", "conditional") and (
            node.type in ("agent", "fleet")
            or run.answer_node is None
            or run.plan.flow.node(run.answer_node).type not in ("agent", "fleet")
        ):
            run.answer_node = node.id
        self._advance(run, node, taken=True)

    def _advance(self, run: _Run, node: NodeSpec, *, taken: bool) -> None:
        """Decide `node`'s outgoing connections, then start every target that became ready."""
        flow = run.plan.flow
        local = _local_scope(run.vars.get(node.id))
        targets: list[str] = []
        for index, edge in enumerate(flow.edges):
            if edge.source != node.id:
                continue
            go = taken and (edge.when is None or templates.evaluate(edge.when, run.vars, local))
            run.edge_state[index] = go
            targets.append(edge.target)
        for target in dict.fromkeys(targets):
            self._maybe_start(run, target)

    def _maybe_start(self, run: _Run, node_id: str) -> None:
        if node_id in run.started:
            return
        flow = run.plan.flow
        incoming = [i for i, e in enumerate(flow.edges) if e.target == node_id]
        decided = [run.edge_state[i] for i in incoming if i in run.edge_state]
        taken = sum(1 for d in decided if d)
        total = len(incoming)
        all_decided = len(decided) == total
        node = flow.node(node_id)
        strategy = str(_cfg(node.config, "strategy", "all") or "all").lower() if node.type == "join" else ""
        if strategy == "any":
            ready, skip = taken >= 1, all_decided and taken == 0
        elif strategy == "majority":
            ready, skip = taken * 2 > total, all_decided and taken * 2 <= total
        elif strategy == "all":
            ready, skip = all_decided and taken == total, all_decided and taken < total
        else:
            ready, skip = all_decided and taken >= 1, all_decided and taken == 0
        if ready:
            self._launch(run, node_id)
        elif skip:
            run.started.add(node_id)
            run.record.node(node_id, node.type).status = runs.NodeStatus.SKIPPED
            self._advance(run, node, taken=False)

    def _conditions_pass(self, run: _Run, node: NodeSpec) -> bool:
        for cond in node.conditions:
            when = cond.get("when")
            if when:
                if not templates.evaluate(str(when), run.vars):
                    return False
                continue
            source = cond.get("from") or cond.get("from_")
            value = cond.get("value")
            if not source or value is None:
                continue
            found = run.vars.get(str(source))
            if not isinstance(found, Mapping):
                continue  # upstream: a condition whose variable is missing passes
            actual = found.get("result", found.get("output"))
            if templates.to_text(actual).strip().lower() != templates.to_text(value).strip().lower():
                return False
        return True

    def _cancel_pending(self, run: _Run) -> None:
        for record in run.record.nodes.values():
            if record.status in (runs.NodeStatus.RUNNING, runs.NodeStatus.WAITING):
                record.status = runs.NodeStatus.CANCELLED
                record.ended_at = time.time()

    # --- nodes -------------------------------------------------------------------------------

    async def _execute(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        handler = _HANDLERS.get(node.type)
        if handler is None:
            raise NodeFailed(f"node {node.id}: node type {node.type!r} is not supported")
        return await handler(self, run, node, record)

    def _set(self, run: _Run, node: NodeSpec, output: Any, **extra: Any) -> Any:
        if node.id not in RESERVED_SCOPE:
            run.vars[node.id] = {"output": output, "status": "completed", **extra}
        return output

    def _input(self, run: _Run, node: NodeSpec) -> str:
        given = _cfg(node.config, "input")
        if given:
            return templates.render(str(given), run.vars)
        flow = run.plan.flow
        sources = [
            flow.edges[i].source
            for i in sorted(run.edge_state)
            if run.edge_state[i] and flow.edges[i].target == node.id
        ]
        answers = [
            (s, run.outputs[s])
            for s in sources
            if s in run.outputs and flow.node(s).type in ("agent", "fleet", "script", "http")
        ]
        request = run.message.text
        if not answers:
            return request
        previous = "\n\n".join(f"Answer of the previous step ({s}):\n{_as_text(o)}" for s, o in answers)
        return f"Request:\n{request}\n\n{previous}"

    async def _agent_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        cfg = node.config
        name = _cfg(cfg, "agent") or agents.as_data(_cfg(cfg, "agent_ref") or {}).get("name")
        inline = _cfg(cfg, "inline")
        if inline:
            inline_data = agents.as_data(inline)
            spec = agents.agent_spec(str(inline_data.get("name") or node.id), inline_data)
        elif name and name in run.plan.agents:
            spec = run.plan.agents[name]
        elif name and name in run.plan.fleets:
            return await self._fleet_node(
                run, dataclasses.replace(node, config={"fleet": name, **cfg}), record
            )
        elif _cfg(cfg, "agent_config"):
            raise NodeFailed(
                f"node {node.id}: agentConfig (an inline YAML string) is not supported; use inline"
            )
        else:
            raise NodeFailed(f"node {node.id}: agent {name!r} is not resolved by this binding")
        result = await self.agents.run(spec, self._input(run, node), run.scope)
        usage = {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens}
        return self._set(run, node, result.text, agent=spec.name, usage=usage, stop_reason=result.stop_reason)

    async def _fleet_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        name = _cfg(node.config, "fleet")
        fleet = run.plan.fleets.get(str(name))
        if fleet is None:
            raise NodeFailed(f"node {node.id}: fleet {name!r} is not resolved by this binding")
        result = await self.fleets.run(fleet, self._input(run, node), run.scope)
        return self._set(
            run, node, result.text, fleet=fleet.name, mode=result.mode, detail=dict(result.detail)
        )

    async def _script_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        sc = agents.as_data(_cfg(node.config, "script_config") or {})
        argv = _script_argv(sc, run.vars)
        if not argv:
            raise NodeFailed(f"node {node.id}: scriptConfig needs command or tool")
        ctx = run.scope.call_context(agent="")
        timeout = float(sc.get("timeout_seconds") or 60)
        try:
            async with asyncio.timeout(timeout):
                result = await self.toolbox.run(argv, ctx, tool="script")
        except TimeoutError as exc:
            raise NodeFailed(f"node {node.id}: the command did not finish within {timeout:g} s") from exc
        except errors.PolicyDenied as exc:
            raise NodeFailed(f"node {node.id}: refused by the Context's policy: {exc.reason}") from exc
        if isinstance(result, guard.Denial):
            raise NodeFailed(f"node {node.id}: not run ({result.stage}): {result.reason}")
        code = tools.exit_code(result)
        stdout = tools.stdout_of(result)
        stderr = tools.text_of(getattr(result, "stderr", None))
        if code != 0 and sc.get("fail_on_error", True) is not False:
            raise NodeFailed(
                f"node {node.id}: {policy.render_argv(argv)} exited with {code}: {stderr.strip()[:500]}"
            )
        output = _parse_output(stdout, str(sc.get("parse") or "text").lower(), sc.get("pattern"))
        return self._set(run, node, output, exit_code=code, stdout=stdout, stderr=stderr)

    async def _conditional_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        condition = _cfg(node.config, "condition")
        branches = _cfg(node.config, "conditions") or ()
        if condition is not None:
            value: Any = templates.evaluate(
                condition if isinstance(condition, bool) else str(condition), run.vars
            )
        else:
            value = None
            for branch in branches:
                b = agents.as_data(branch)
                if templates.evaluate(b.get("expression", False), run.vars):
                    value = b.get("name")
                    break
        return self._set(run, node, {"result": value}, result=value)

    async def _transform_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        script = str(_cfg(node.config, "script") or "")
        exports: dict[str, str] = {}
        for line in script.splitlines():
            match = _EXPORT.match(line)
            if match:
                value = templates.render(match.group(2).strip(), run.vars)
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                exports[match.group(1)] = value
        for key, value in exports.items():
            if key not in RESERVED_SCOPE and key not in run.vars:
                run.vars[key] = value
        if not exports:
            template = _cfg(node.config, "message") or _cfg(node.config, "input") or script
            return self._set(run, node, templates.render(str(template), run.vars))
        return self._set(run, node, exports, **exports)

    async def _wait_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        raw = _cfg(node.config, "duration", 0)
        try:
            seconds = settings.parse_duration(raw)
        except ValueError as exc:
            raise NodeFailed(f"node {node.id}: {exc}") from exc
        await asyncio.sleep(seconds)
        return self._set(run, node, {"waited_seconds": seconds})

    async def _parallel_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        branches = [e.target for e in run.plan.flow.edges if e.source == node.id]
        return self._set(run, node, {"branches": branches})

    async def _join_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        flow = run.plan.flow
        sources = [
            flow.edges[i].source
            for i in run.edge_state
            if run.edge_state[i] and flow.edges[i].target == node.id
        ]
        joined = {s: run.outputs.get(s) for s in sources}
        return self._set(run, node, joined)

    async def _approval_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        if self._approvals is None:
            raise NodeFailed(f"node {node.id}: approvals are not available in this daemon")
        cfg = node.config
        ctx = run.plan.context
        timeout = float(_cfg(cfg, "timeout_seconds") or ctx.approval_timeout)
        text = templates.render(
            str(_cfg(cfg, "message") or f"Approve continuing flow {run.plan.flow.name}?"), run.vars
        )
        approvers = ctx.approvers
        named = tuple(str(a) for a in _cfg(cfg, "approvers") or ())
        if named:
            # The Context is the boundary: a flow may narrow its approvers, never widen them.
            approvers = approvals.narrow_approvers(named, ctx.approvers)
            if not approvers:
                raise NodeFailed(
                    f"node {node.id}: none of its approvers ({', '.join(named)}) is an approver "
                    f"of context {ctx.name}"
                )
        request = fleets.ApprovalRequest(
            run_id=run.record.run_id,
            context_name=ctx.name,
            title=f"Flow {run.plan.flow.name}: approval {node.id}",
            text=text,
            user=run.message.user,
            origin=run.message.reply_target(),
            timeout=timeout,
            approvers=approvers,
            node=node.id,
            min_approvers=ctx.min_approvers,
            allow_self_approval=ctx.allow_self_approval,
        )
        record.status = runs.NodeStatus.WAITING
        run.record.status = runs.RunStatus.WAITING
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            decision = await self._approvals.request(request)
        finally:
            # Waiting for a human does not count against the run's deadline.
            waited = loop.time() - began
            if run.timeout is not None and run.timeout.when() is not None:
                run.timeout.reschedule(run.timeout.when() + waited)  # type: ignore[operator]
            if run.scope.deadline is not None:
                run.scope.deadline += waited
            if run.record.status is runs.RunStatus.WAITING:
                run.record.status = runs.RunStatus.RUNNING
        output = {"status": decision.status, "by": decision.by, "reason": decision.reason}
        run.vars["approval"] = {
            "status": decision.status,
            "approved_by": decision.by,
            "reason": decision.reason,
        }
        self._set(run, node, output, **output)
        record.output = output
        if decision.status != "approved":
            who = f" by {decision.by}" if decision.by else ""
            raise _Stop(f"approval {node.id} was {decision.status}{who}")
        return output

    async def _http_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        cfg = node.config
        url = templates.render(str(_cfg(cfg, "url") or ""), run.vars)
        problem = self._http_policy.check(url)
        if problem:
            raise NodeFailed(f"node {node.id}: {problem}")
        method = str(_cfg(cfg, "method") or "GET").upper()
        headers = {
            str(k): templates.render(str(v), run.vars) for k, v in (_cfg(cfg, "headers") or {}).items()
        }
        body = templates.render_value(_cfg(cfg, "body"), run.vars)
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._http_policy.timeout))
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if isinstance(body, Mapping | list):
            kwargs["json"] = body
        elif body is not None:
            kwargs["data"] = str(body)
        try:
            async with self._http.request(method, url, **kwargs) as response:
                # `read(n)` returns what has arrived so far (at most n): read on until EOF or the limit.
                limit = self._http_policy.max_body_bytes
                raw = bytearray()
                while len(raw) < limit:
                    chunk = await response.content.read(limit - len(raw))
                    if not chunk:
                        break
                    raw += chunk
                status = response.status
                content_type = response.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeFailed(
                f"node {node.id}: {method} {url} failed: {str(exc) or type(exc).__name__}"
            ) from exc
        text = raw.decode("utf-8", "replace")
        parsed: Any = text
        if "json" in content_type:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = text
        if status >= 400 and _cfg(cfg, "fail_on_error", True) is not False:
            raise NodeFailed(f"node {node.id}: {method} {url} answered HTTP {status}")
        return self._set(run, node, {"status": status, "body": parsed}, status_code=status)

    async def _message_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        cfg = node.config
        default = "${" + run.answer_node + ".output}" if run.answer_node else "${event.text}"
        text = templates.render(str(_cfg(cfg, "message") or _cfg(cfg, "text") or default), run.vars)
        channel = templates.render(str(_cfg(cfg, "channel") or ""), run.vars).strip()
        origin = run.message.reply_target()
        if channel and channel not in (origin.channel_id, run.message.channel_name):
            target = ports.ReplyTarget(origin.platform, origin.trigger, channel_id=channel)
        else:
            target = origin
            run.answered_origin = True
        await self.reply(target, text)
        return self._set(run, node, {"sent": True, "channel": target.channel_id, "text": text})

    async def _end_node(self, run: _Run, node: NodeSpec, record: runs.NodeRecord) -> Any:
        return self._set(run, node, None)

    # --- reporting ---------------------------------------------------------------------------

    def _answer_text(self, run: _Run) -> str | None:
        if run.answer_node is None:
            return None
        return _as_text(run.outputs.get(run.answer_node))

    def _tally(self, run: _Run) -> None:
        record = run.record
        record.input_tokens = run.scope.usage.input_tokens
        record.output_tokens = run.scope.usage.output_tokens
        record.model_calls = run.scope.model_calls
        record.tool_calls = run.scope.tool_calls
        if self._admission is not None:
            self._admission.charge_tokens(run.plan.context.name, record.input_tokens + record.output_tokens)

    async def _report(self, run: _Run) -> None:
        record = run.record
        origin = run.message.reply_target()
        if record.status is runs.RunStatus.COMPLETED:
            if run.answered_origin or not record.answer:
                return
            await self.reply(origin, record.answer)
            return
        await self.reply(origin, failure_text(record))

    async def _finish_quietly(self, run: _Run) -> None:
        """After cancellation: tell the origin (bounded) and audit, without raising."""
        try:
            async with asyncio.timeout(2.0):
                await self.reply(run.message.reply_target(), failure_text(run.record))
                await self._audit_write(run, "agent.run.finished", "failure")
        except (TimeoutError, asyncio.CancelledError):
            pass
        self._history.prune()

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        try:
            await self._replier.reply(target, text)
        except Exception:
            log.exception("run.reply_failed", platform=target.platform, channel=target.channel_id)

    async def _audit_write(self, run: _Run, action: str, outcome: str) -> None:
        if self._audit is None:
            return
        record = run.record
        fields: dict[str, Any] = {
            "event": {"kind": "event", "category": ["process"], "action": action, "outcome": outcome},
            "aofd": {
                "context": record.context,
                "agent": {"name": record.flow, "run_id": record.run_id},
                "binding": record.binding,
                "flow": record.flow,
            },
            "user": {
                "id": run.message.user.id,
                "name": run.message.user.name,
                "domain": run.message.user.domain,
            },
        }
        if action == "agent.run.finished":
            fields["aofd"]["run"] = {
                "status": record.status.value,
                "error": record.error,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "model_calls": record.model_calls,
            }
        try:
            await self._audit.write(record.context, fields)
        except Exception:
            log.exception("run.audit_failed", run_id=record.run_id, action=action)


def failure_text(record: runs.RunRecord) -> str:
    """What the origin is told when a run does not complete."""
    status = record.status
    what = {
        runs.RunStatus.FAILED: "failed",
        runs.RunStatus.TIMED_OUT: "timed out",
        runs.RunStatus.STOPPED: "stopped",
        runs.RunStatus.CANCELLED: "was cancelled",
    }.get(status, status.value)
    return f"⚠️ Run {record.run_id} of {record.flow} {what}: {record.error or 'no details'}"


_EXPORT = re.compile(r"^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _initial_vars(plan: RunPlan, message: ports.EventMessage, run_id: str) -> dict[str, Any]:
    """The template scope at the start of a run: event, trigger, context (name/namespace/cluster), run.

    Nothing from the host environment and nothing from the Context's env ever enters it.
    """
    user = {
        "id": message.user.id,
        "name": message.user.name,
        "username": message.user.name,
        "domain": message.user.domain,
    }
    event = {
        "type": message.event_type,
        "text": message.text,
        "user": user,
        "user_id": message.user.id,
        "channel": message.channel_id,
        "channel_id": message.channel_id,
        "channel_name": message.channel_name,
        "thread": message.thread,
        "thread_id": message.thread,
        "ts": message.thread,
        "timestamp": message.received_at,
        "platform": message.platform,
        "trigger": message.trigger,
        "delivery_id": message.delivery_id,
    }
    trigger = {
        "event": event,
        "text": message.text,
        "user": user,
        "platform": message.platform,
        "trigger_name": message.trigger,
        "binding_name": plan.binding,
        "context_name": plan.context.name,
        "flow_name": plan.flow.name,
    }
    context = {
        "name": plan.context.name,
        "namespace": plan.context.namespace,
        "cluster": plan.context.cluster,
    }
    return {"event": event, "trigger": trigger, "context": context, "run": {"id": run_id}}


def _local_scope(entry: Any) -> dict[str, Any]:
    """Bare words in a `when` resolve against the source node: its fields and its output's fields."""
    if not isinstance(entry, Mapping):
        return {}
    local = dict(entry)
    output = entry.get("output")
    if isinstance(output, str) and output.lstrip().startswith("{"):
        try:
            output = json.loads(output)
        except json.JSONDecodeError:
            output = None
    if isinstance(output, Mapping):
        for key, value in output.items():
            local.setdefault(str(key), value)
    return local


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("output", "text", "message", "response"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return templates.to_text(value)


def _script_argv(sc: Mapping[str, Any], scope: Mapping[str, Any]) -> tuple[str, ...]:
    """A Script node's argv: split first (policy.tokenize), render each token after, so a template
    value is always exactly one argument."""
    command = sc.get("command")
    if command:
        tokens = policy.tokenize(command if isinstance(command, str) else [str(t) for t in command])
        return tuple(templates.render(t, scope) for t in tokens)
    tool = sc.get("tool")
    if not tool:
        return ()
    argv = [str(tool)]
    action = sc.get("action")
    if action and action != "run":
        argv.append(str(action))
    args = sc.get("args")
    if isinstance(args, list | tuple):
        argv.extend(str(a) for a in args)
    elif isinstance(args, Mapping):
        for key, value in args.items():
            if key in ("resource", "name", "target", "args"):
                argv.extend([str(v) for v in value] if isinstance(value, list) else [str(value)])
            elif value is True:
                argv.append(f"--{key}")
            elif value not in (None, False):
                argv.append(f"--{key}={value}")
    return tuple(templates.render(t, scope) for t in argv)


def _parse_output(stdout: str, mode: str, pattern: str | None) -> Any:
    if mode == "json":
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            return stdout
    if mode == "lines":
        return [line for line in stdout.splitlines() if line.strip()]
    if mode == "regex" and pattern:
        match = re.search(pattern, stdout)
        if match is None:
            return None
        return match.groupdict() or list(match.groups())
    return stdout


_Handler = Callable[[Engine, _Run, NodeSpec, runs.NodeRecord], Any]
_HANDLERS: Mapping[str, _Handler] = {
    "agent": Engine._agent_node,
    "fleet": Engine._fleet_node,
    "script": Engine._script_node,
    "conditional": Engine._conditional_node,
    "transform": Engine._transform_node,
    "wait": Engine._wait_node,
    "parallel": Engine._parallel_node,
    "join": Engine._join_node,
    "approval": Engine._approval_node,
    "http": Engine._http_node,
    "slack": Engine._message_node,
    "discord": Engine._message_node,
    "response": Engine._message_node,
    "end": Engine._end_node,
}
