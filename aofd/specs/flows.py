"""Compiled flows: what one run executes, built once per revision from the typed models; pure.

This module owns the runtime's frozen view of the flow layers and the compilers that build it
from the validated models (never from dumped dicts):

- `AgentSpec` from an Agent, a fleet's inline agent or a flow node's inline agent: model and
  provider, instructions, the built-in tools it is offered (`canonical_tool`: `bash`/`sh` are
  `shell`, `http_request` is `http`) and the tools it names that aofd does not serve;
- `FleetSpec` (members by Agent name or inline, coordination, consensus) from an AgentFleet;
- `FlowSpec`, a graph of `NodeSpec`s (each with its typed `NodeConfig` and, for an Agent node
  written inline, its compiled `AgentSpec`) and `Edge`s with the entry nodes, from either
  AgentFlow form (the seed's `agents: [{name}]` short form runs the agents in order);
- `ContextView`, the non-secret part of a Context a run needs (limits, approval settings);
- `RunPlan`: one binding's flow with the agents and fleets it may use and its Context.

Each compiler returns the spec and the `Problem`s that keep it from running (a fleet member
that points at a file, an Agent node's `agentConfig` string, a Wait node's unreadable
duration, a Script command with shell operators, an HTTP node whose fixed URL its policy
refuses), so that `aofctl validate` reports them and a revision with any does not apply.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Mapping, Sequence

from aofd import errors, settings
from aofd.resources.kinds import agent as agent_kind
from aofd.resources.kinds import context as context_kind
from aofd.resources.kinds import fleet as fleet_kind
from aofd.resources.kinds import flow as flow_kind
from aofd.specs import http_policy, models, policy
from aofd.specs import mcp as mcp_specs
from aofd.specs import memory as memory_specs
from aofd.specs.problems import Problem

Loc = tuple[str | int, ...]

CLI_TOOLS: tuple[str, ...] = ("kubectl", "helm", "git", "docker", "terraform", "aws")
"""Built-in tools that run one CLI (the tool name is argv[0])."""

TOOL_ALIASES: Mapping[str, str] = {
    **{name: name for name in CLI_TOOLS},
    "shell": "shell",
    "bash": "shell",
    "sh": "shell",
    "http": "http",
    "http_request": "http",
}
"""Tool names an agent may write (upstream's included) -> the built-in tool aofd offers."""

START_NODES = frozenset({flow_kind.START_NODE, flow_kind.LEGACY_START_NODE})
ANSWER_NODE_TYPES = frozenset({"agent", "fleet"})


def canonical_tool(name: str) -> str | None:
    """The built-in tool `name` means (`bash` -> `shell`), or None when aofd has none by that name."""
    return TOOL_ALIASES.get(name.strip().lower())


# --- agents ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent as the runtime needs it, whatever resource it came from."""

    name: str
    model: str
    provider: str | None = None
    instructions: str = ""
    tools: tuple[str, ...] = ()
    unknown_tools: tuple[str, ...] = ()
    max_iterations: int = 10
    temperature: float | None = 0.7
    max_tokens: int | None = None
    mcp: tuple[mcp_specs.McpServerSpec, ...] = ()
    memory: memory_specs.MemoryPolicy = memory_specs.DEFAULT
    notes: tuple[Problem, ...] = ()
    """Problems found while compiling its MCP servers and memory, at locations under the agent's spec."""

    @property
    def model_ref(self) -> models.ModelRef:
        return models.parse_model(self.model, self.provider)


AgentModel = agent_kind.AgentSpec | fleet_kind.FleetAgentSpec | flow_kind.InlineAgent


def agent_spec(name: str, spec: AgentModel) -> AgentSpec:
    """An `AgentSpec` from an Agent's spec, a fleet's inline agent or a flow node's inline agent."""
    offered, unknown = _tools(spec.tools)
    provider = spec.provider if isinstance(spec, agent_kind.AgentSpec) else None
    max_iterations = spec.max_iterations if not isinstance(spec, flow_kind.InlineAgent) else 10
    max_tokens = spec.max_tokens if not isinstance(spec, fleet_kind.FleetAgentSpec) else None
    servers, notes = mcp_specs.servers_of(spec.tools, spec.mcp_servers, ())
    if isinstance(spec, agent_kind.AgentSpec):
        memory, memory_notes = memory_specs.memory_policy(spec.memory, spec.max_context_messages, ())
        notes.extend(memory_notes)
    else:
        memory = memory_specs.DEFAULT
    return AgentSpec(
        name=name,
        model=spec.model,
        provider=provider or None,
        instructions=spec.instructions or "",
        tools=offered,
        unknown_tools=unknown,
        max_iterations=max_iterations,
        temperature=spec.temperature,
        max_tokens=max_tokens,
        mcp=servers,
        memory=memory,
        notes=tuple(notes),
    )


def _tools(specs: Sequence[agent_kind.ToolSpec]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The built-in tools an agent's `tools` name (in order, once each), and the names aofd lacks.

    MCP tools (`source: mcp`, `type: MCP`) are not built-in tools: `mcp.servers_of` takes them.
    """
    offered: dict[str, None] = {}
    unknown: list[str] = []
    for spec in specs:
        if isinstance(spec, str):
            name = spec
        elif isinstance(spec, agent_kind.QualifiedTool):
            if not spec.enabled or spec.source is agent_kind.ToolSource.MCP:
                continue
            name = spec.name
        else:
            kind = spec.type.value.lower()
            if spec.type is agent_kind.ToolType.MCP:
                continue
            name = kind
        tool = canonical_tool(name)
        if tool is None:
            unknown.append(name)
        else:
            offered.setdefault(tool)
    return tuple(offered), tuple(unknown)


def agent_problems(spec: AgentSpec, loc: Loc, *, member: bool = True) -> list[Problem]:
    """What keeps an agent from ever running (its model string), and tools it names in vain.

    A `member` (of a fleet, inline in a flow) is named in the message; an Agent resource is
    named by the issue's own prefix.
    """
    who = f"agent {spec.name}: " if member else ""
    problems: list[Problem] = [
        dataclasses.replace(note, loc=(*loc, *note.loc), message=f"{who}{note.message}")
        for note in spec.notes
    ]
    problem = models.static_problem(spec.model_ref, spec.model)
    if problem is not None:
        problems.append(Problem((*loc, "model"), f"{who}{problem}", code="model"))
    if spec.unknown_tools:
        problems.append(
            Problem(
                (*loc, "tools"),
                f"{who}tools {', '.join(spec.unknown_tools)} are not served by aofd and are "
                f"not offered to the model (built-in tools: {', '.join(sorted(set(TOOL_ALIASES)))})",
                "warning",
                "unsupported-tool",
            )
        )
    return problems


# --- fleets ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Consensus:
    """`coordination.consensus` as the runtime uses it."""

    algorithm: str = "majority"
    min_votes: int | None = None
    timeout_ms: int | None = None
    allow_partial: bool = False
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_confidence: float | None = None


def consensus_of(model: fleet_kind.Consensus | None) -> Consensus:
    """A `Consensus` from the model (None gives the majority default)."""
    if model is None:
        return Consensus()
    return Consensus(
        algorithm=model.algorithm.value,
        min_votes=model.min_votes,
        timeout_ms=model.timeout_ms,
        allow_partial=model.allow_partial,
        weights=dict(model.weights),
        min_confidence=model.min_confidence,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    name: str
    agent: AgentSpec
    role: str = "worker"
    tier: int | None = None
    weight: float | None = None
    replicas: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class FleetSpec:
    name: str
    members: tuple[Member, ...]
    mode: str = "peer"
    manager: str | None = None
    distribution: str = "round-robin"
    consensus: Consensus | None = None
    aggregation: str | None = None
    tier_consensus: Mapping[str, Consensus] = dataclasses.field(default_factory=dict)
    pass_all_results: bool = False
    final_aggregation: str = "consensus"
    deep_max_iterations: int = 10
    deep_planning: bool = True
    planner_prompt: str | None = None
    synthesizer_prompt: str | None = None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def manager_member(self) -> Member | None:
        if self.manager:
            return self.member(self.manager)
        return next((m for m in self.members if m.role == "manager"), None)


def fleet_spec(
    name: str, spec: fleet_kind.FleetSpec, agents: Mapping[str, AgentSpec]
) -> tuple[FleetSpec, list[Problem]]:
    """A `FleetSpec`; members by name take their `AgentSpec` from `agents` (the resolved Agents).

    A member that points at a file (`config:`) or names no resolved Agent is a problem and is
    left out.
    """
    members: list[Member] = []
    problems: list[Problem] = []
    for index, member in enumerate(spec.agents):
        loc: Loc = ("spec", "agents", index)
        if member.spec is not None:
            agent = agent_spec(member.name, member.spec)
            problems.extend(agent_problems(agent, (*loc, "spec")))
        elif member.name in agents and member.config is None:
            agent = dataclasses.replace(agents[member.name], name=member.name)
        elif member.config is not None:
            problems.append(
                Problem(
                    (*loc, "config"),
                    f"member {member.name} points at a file ({member.config}); "
                    "aofd resolves members by Agent name or inline spec",
                )
            )
            continue
        else:
            problems.append(
                Problem(
                    (*loc, "name"),
                    f"member {member.name} names no Agent that resolves",
                    code="ref-missing",
                )
            )
            continue
        members.append(
            Member(
                name=member.name,
                agent=agent,
                role=member.role.value,
                tier=member.tier,
                weight=member.weight,
                replicas=member.replicas,
            )
        )
    coord = spec.coordination
    tiered = coord.tiered or fleet_kind.Tiered()
    deep = coord.deep or fleet_kind.Deep()
    compiled = FleetSpec(
        name=name,
        members=tuple(members),
        mode=coord.mode.value,
        manager=coord.manager,
        distribution=coord.distribution.value,
        consensus=consensus_of(coord.consensus) if coord.consensus is not None else None,
        aggregation=coord.aggregation.value if coord.aggregation is not None else None,
        tier_consensus={k: consensus_of(v) for k, v in tiered.tier_consensus.items()},
        pass_all_results=tiered.pass_all_results,
        final_aggregation=tiered.final_aggregation.value,
        deep_max_iterations=deep.max_iterations,
        deep_planning=deep.planning,
        planner_prompt=deep.planner_prompt,
        synthesizer_prompt=deep.synthesizer_prompt,
    )
    return compiled, problems


# --- flows ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: its id, its type (lower-case: agent, fleet, script, ...) and its typed config.

    `agent` is the compiled inline agent of an Agent node written with `config.inline`;
    `wait_seconds` is a Wait node's duration, read once.
    """

    id: str
    type: str
    config: flow_kind.NodeConfig = dataclasses.field(default_factory=flow_kind.NodeConfig)
    conditions: tuple[flow_kind.NodeCondition, ...] = ()
    agent: AgentSpec | None = None
    wait_seconds: float = 0.0


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
    _by_id: Mapping[str, NodeSpec] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {n.id: n for n in self.nodes})

    def node(self, node_id: str) -> NodeSpec:
        return self._by_id[node_id]


def single_node(name: str, node_type: str) -> FlowSpec:
    """A one-node flow running the agent or fleet `name` (a binding that names no flow)."""
    config = flow_kind.NodeConfig(agent=name) if node_type == "agent" else flow_kind.NodeConfig(fleet=name)
    return FlowSpec(name, (NodeSpec(name, node_type, config),), (), (name,), short_form=True)


def flow_spec(
    name: str, spec: flow_kind.FlowSpec, *, http: http_policy.HttpPolicy | None = None
) -> tuple[FlowSpec, list[Problem]]:
    """A `FlowSpec` from an AgentFlow spec (either form) and the problems that keep it from running."""
    if not spec.nodes and spec.agents:
        nodes: list[NodeSpec] = []
        seen: collections.Counter[str] = collections.Counter()
        for ref in spec.agents:
            seen[ref.name] += 1
            node_id = ref.name if seen[ref.name] == 1 else f"{ref.name}-{seen[ref.name]}"
            nodes.append(NodeSpec(node_id, "agent", flow_kind.NodeConfig(agent=ref.name)))
        edges = tuple(Edge(a.id, b.id) for a, b in itertools.pairwise(nodes))
        return FlowSpec(name, tuple(nodes), edges, (nodes[0].id,), short_form=True), []
    problems: list[Problem] = []
    parsed = [
        _node(index, node, http or http_policy.HttpPolicy(), problems)
        for index, node in enumerate(spec.nodes)
    ]
    edge_list = [Edge(c.from_, c.to, c.when) for c in spec.connections]
    ids = {n.id for n in parsed}
    # Parallel nodes fan out to their `branches` even when no connection says so.
    for node in parsed:
        if node.type != "parallel":
            continue
        for branch in node.config.branches:
            target = branch.get("id") or branch.get("node") if isinstance(branch, dict) else branch
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
    return FlowSpec(name, tuple(parsed), tuple(edge_list), entries), problems


def _node(
    index: int, node: flow_kind.FlowNode, http: http_policy.HttpPolicy, problems: list[Problem]
) -> NodeSpec:
    config = node.config
    loc: Loc = ("spec", "nodes", index, "config")
    kind = node.type.value.lower()
    agent: AgentSpec | None = None
    wait = 0.0
    if kind == "agent":
        if config.inline is not None:
            agent = agent_spec(config.inline.name or node.id, config.inline)
            problems.extend(agent_problems(agent, (*loc, "inline")))
        elif config.agent_config and not config.agent_name:
            problems.append(
                Problem(
                    (*loc, "agent_config"),
                    f"node {node.id}: agentConfig (an inline YAML string) is not supported; use inline",
                )
            )
    elif kind == "wait":
        try:
            wait = settings.parse_duration(config.duration if config.duration is not None else 0)
        except ValueError as exc:
            problems.append(Problem((*loc, "duration"), f"node {node.id}: {exc}"))
    elif kind == "script" and config.script_config is not None and config.script_config.command:
        try:
            policy.tokenize(config.script_config.command)
        except errors.PolicyDenied as exc:
            problems.append(
                Problem((*loc, "script_config", "command"), f"node {node.id}: the command {exc.reason}")
            )
    elif kind == "http" and config.url and "${" not in config.url:
        refused = http.check(config.url)
        if refused:
            problems.append(Problem((*loc, "url"), f"node {node.id}: {refused}"))
    return NodeSpec(node.id, kind, config, node.conditions, agent, wait)


# --- contexts and run plans -----------------------------------------------------------------


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


def context_view(ctx: context_kind.Context) -> ContextView:
    spec = ctx.spec
    limits = spec.limits or context_kind.Limits()
    approval = spec.approval or context_kind.Approval()
    max_exec = limits.max_execution_time_seconds
    return ContextView(
        name=ctx.metadata.name,
        namespace=spec.namespace,
        cluster=spec.cluster,
        max_tokens_per_request=limits.max_tokens_per_request,
        max_execution_seconds=float(max_exec) if max_exec else None,
        approval_timeout=float(approval.timeout_seconds),
        approvers=approval.allowed_users,
        min_approvers=approval.min_approvers,
        allow_self_approval=approval.allow_self_approval,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything a run executes, frozen when the revision is compiled (a hot swap never changes it)."""

    binding: str
    flow: FlowSpec
    agents: Mapping[str, AgentSpec]
    fleets: Mapping[str, FleetSpec]
    context: ContextView
    digest: str = ""


def agent_plan(agent: AgentSpec, context: ContextView, *, binding: str = "") -> RunPlan:
    """A one-node plan running `agent` (`aofctl run agent`)."""
    return RunPlan(
        binding or f"run-agent-{agent.name}",
        single_node(agent.name, "agent"),
        {agent.name: agent},
        {},
        context,
    )


def plan_agents(plan: RunPlan) -> tuple[AgentSpec, ...]:
    """Every agent the plan may run: named agents, fleet members and inline agents."""
    found: list[AgentSpec] = list(plan.agents.values())
    for fleet in plan.fleets.values():
        found.extend(m.agent for m in fleet.members)
    found.extend(node.agent for node in plan.flow.nodes if node.agent is not None)
    return tuple(found)


def mcp_servers(plan: RunPlan) -> tuple[mcp_specs.McpServerSpec, ...]:
    """Every MCP server config the plan's agents use, once each (by digest)."""
    return mcp_specs.all_servers(agent.mcp for agent in plan_agents(plan))


def model_refs(plan: RunPlan) -> tuple[models.ModelRef, ...]:
    """Every model the plan may call: named agents, fleet members and inline agents, once each."""
    found: list[models.ModelRef] = [a.model_ref for a in plan.agents.values()]
    for fleet in plan.fleets.values():
        found.extend(m.agent.model_ref for m in fleet.members)
    found.extend(node.agent.model_ref for node in plan.flow.nodes if node.agent is not None)
    return tuple(dict.fromkeys(found))
