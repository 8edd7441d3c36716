"""`kind: AgentFleet` (layer 2): agents composed for collaboration.

This module owns the AgentFleet model (upstream `fleet.rs`, AOF-UPSTREAM.md section 1.3).
A fleet member is either an inline `spec` or, as the seed intends, a bare `name` that refers
to an Agent resource (upstream requires `config` or `spec`; aofd resolves the name).
`shared`, `communication` and `scaling` are parsed for compatibility; upstream never uses them.
Cross-field rules (unique member names, hierarchical needs a manager) live in validation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from aofd.resources.kinds import agent, base


class AgentRole(base.CIEnum):
    WORKER = "worker"
    MANAGER = "manager"
    SPECIALIST = "specialist"
    VALIDATOR = "validator"


class FleetAgentSpec(base.Model):
    """An inline agent of a fleet (upstream `FleetAgentSpec`)."""

    model: str
    instructions: str | None = None
    tools: tuple[agent.ToolSpec, ...] = ()
    mcp_servers: tuple[agent.McpServer, ...] = ()
    max_iterations: base.PositiveInt = 10
    temperature: base.Temperature = 0.7


class FleetAgent(base.Model):
    """`spec.agents[]`: `name` alone refers to an Agent resource; `spec` defines one inline."""

    name: str
    config: str | None = None
    spec: FleetAgentSpec | None = None
    replicas: base.PositiveInt = 1
    role: AgentRole = AgentRole.WORKER
    labels: base.StrMap = Field(default_factory=dict)
    tier: base.PositiveInt | None = None
    weight: base.NonNegativeFloat | None = None

    @property
    def is_reference(self) -> bool:
        """True when the member names an Agent resource instead of defining one."""
        return self.spec is None and self.config is None


class CoordinationMode(base.CIEnum):
    HIERARCHICAL = "hierarchical"
    PEER = "peer"
    SWARM = "swarm"
    PIPELINE = "pipeline"
    TIERED = "tiered"
    DEEP = "deep"


class Distribution(base.CIEnum):
    ROUND_ROBIN = "round-robin"
    LEAST_LOADED = "least-loaded"
    RANDOM = "random"
    SKILL_BASED = "skill-based"
    STICKY = "sticky"


class ConsensusAlgorithm(base.CIEnum):
    MAJORITY = "majority"
    UNANIMOUS = "unanimous"
    WEIGHTED = "weighted"
    FIRST_WINS = "first_wins"
    HUMAN_REVIEW = "human_review"


class Aggregation(base.CIEnum):
    CONSENSUS = "consensus"
    MERGE = "merge"
    MANAGER_SYNTHESIS = "manager_synthesis"


class Consensus(base.Model):
    """`coordination.consensus` (upstream `ConsensusConfig`)."""

    algorithm: ConsensusAlgorithm = ConsensusAlgorithm.MAJORITY
    min_votes: base.PositiveInt | None = None
    timeout_ms: base.PositiveInt | None = None
    allow_partial: base.Bool = False
    weights: dict[str, base.NonNegativeFloat] = Field(default_factory=dict)
    min_confidence: base.NonNegativeFloat | None = None


class Tiered(base.Model):
    """`coordination.tiered`: per-tier consensus (keys are tier numbers as strings)."""

    tier_consensus: dict[str, Consensus] = Field(default_factory=dict)
    pass_all_results: base.Bool = False
    final_aggregation: Aggregation = Aggregation.CONSENSUS


class Deep(base.Model):
    """`coordination.deep`: iterative plan-investigate-synthesize."""

    max_iterations: base.PositiveInt = 10
    planning: base.Bool = True
    memory: base.Bool = True
    planner_model: str | None = None
    planner_prompt: str | None = None
    synthesizer_prompt: str | None = None


class Coordination(base.Model):
    """`spec.coordination` (upstream `CoordinationConfig`)."""

    mode: CoordinationMode = CoordinationMode.PEER
    manager: str | None = None
    distribution: Distribution = Distribution.ROUND_ROBIN
    consensus: Consensus | None = None
    aggregation: Aggregation | None = None
    tiered: Tiered | None = None
    deep: Deep | None = None


class SharedMemoryType(base.CIEnum):
    INMEMORY = "inmemory"
    REDIS = "redis"
    SQLITE = "sqlite"
    POSTGRES = "postgres"


class SharedMemory(base.Model):
    type: SharedMemoryType
    url: str | None = None
    namespace: str | None = None
    ttl: base.NonNegativeInt | None = None


class SharedTool(base.Model):
    """`shared.tools[]`; upstream spells the server key `mcp-server`."""

    mcp_server: str | None = Field(
        default=None, validation_alias=AliasChoices("mcp_server", "mcpServer", "mcp-server")
    )
    tool: str | None = None
    config: base.FreeForm = Field(default_factory=dict)


class Knowledge(base.Model):
    type: str
    source: str | None = None
    config: base.FreeForm = Field(default_factory=dict)


class Shared(base.Model):
    """`spec.shared` (parsed, unused upstream)."""

    memory: SharedMemory | None = None
    tools: tuple[SharedTool, ...] = ()
    knowledge: Knowledge | None = None
    env: base.StrMap = Field(default_factory=dict)


class CommunicationPattern(base.CIEnum):
    DIRECT = "direct"
    PUB_SUB = "pub-sub"
    REQUEST_REPLY = "request-reply"
    BROADCAST = "broadcast"


class Queue(base.Model):
    type: str
    url: str | None = None
    name: str | None = None


class Broadcast(base.Model):
    channel: str | None = None
    include_sender: base.Bool = False


class Communication(base.Model):
    """`spec.communication` (parsed, unused upstream)."""

    pattern: CommunicationPattern = CommunicationPattern.DIRECT
    queue: Queue | None = None
    broadcast: Broadcast | None = None


class ScalingMetric(base.Model):
    name: str
    target: base.Float | str
    type: str | None = None


class Scaling(base.Model):
    """`spec.scaling` (parsed, unused upstream)."""

    min_replicas: base.NonNegativeInt | None = None
    max_replicas: base.PositiveInt | None = None
    auto_scale: base.Bool = False
    metrics: tuple[ScalingMetric, ...] = ()


class FleetSpec(base.Model):
    """`spec` of an AgentFleet."""

    agents: tuple[FleetAgent, ...]
    coordination: Coordination = Field(default_factory=base.shared_default(Coordination))
    shared: Shared | None = None
    communication: Communication | None = None
    scaling: Scaling | None = None

    def manager_name(self) -> str | None:
        """The manager: `coordination.manager`, else the first member with `role: manager`."""
        if self.coordination.manager:
            return self.coordination.manager
        for member in self.agents:
            if member.role is AgentRole.MANAGER:
                return member.name
        return None


class AgentFleet(base.ResourceModel):
    """`kind: AgentFleet`."""

    kind: Literal["AgentFleet"] = "AgentFleet"
    spec: FleetSpec
