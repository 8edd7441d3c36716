"""`kind: AgentFlow` (layer 3): orchestration of agents and fleets.

This module owns the AgentFlow model in both forms:

- upstream's node graph (`agentflow.rs`, AOF-UPSTREAM.md section 1.4): `nodes[]` with a `type`
  and a `NodeConfig`, `connections[]` from node to node (`from: start` is the entry), an
  inline `context` and an unused `config`;
- the seed's short form: `trigger: {type, config}`, `context:` inline or by name, and
  `agents: [{name}]` (run the named agents in order and post the answer to the origin).

Node types are upstream's plus `Response` (seed-era "post the result back to the origin").
`NodeConfig` keys are camelCase upstream (`scriptConfig`, `waitForReaction`); snake_case is
accepted too, while `ScriptConfig` itself is snake_case upstream. Graph rules (unique ids,
connection ends exist, each node type's required config) live in validation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue, model_validator

from aofd.resources.kinds import agent as agent_kind
from aofd.resources.kinds import base
from aofd.resources.kinds import trigger as trigger_kind

START_NODE = "start"
"""The implicit entry node that `connections[].from` may name."""

LEGACY_START_NODE = "trigger"
"""The pre-0.4 name of `start` (`from: trigger` in seed-era flows); accepted with a warning."""


class NodeType(base.CIEnum):
    TRANSFORM = "Transform"
    AGENT = "Agent"
    SCRIPT = "Script"
    FLEET = "Fleet"
    CONDITIONAL = "Conditional"
    SLACK = "Slack"
    DISCORD = "Discord"
    HTTP = "HTTP"
    WAIT = "Wait"
    PARALLEL = "Parallel"
    JOIN = "Join"
    APPROVAL = "Approval"
    END = "End"
    RESPONSE = "Response"


class ParseMode(base.CIEnum):
    TEXT = "text"
    JSON = "json"
    LINES = "lines"
    REGEX = "regex"


class ScriptConfig(base.Model):
    """`config.scriptConfig` of a Script node (snake_case upstream)."""

    command: str | None = None
    tool: str | None = None
    action: str = "run"
    args: base.FreeForm = Field(default_factory=dict)
    working_dir: str | None = None
    env: base.StrMap = Field(default_factory=dict)
    timeout_seconds: base.PositiveInt = 60
    parse: ParseMode | None = None
    pattern: str | None = None
    fail_on_error: base.Bool = True


class InlineAgent(base.Model):
    """`config.inline` of an Agent node (upstream `InlineAgentConfig`)."""

    name: str
    model: str
    instructions: str | None = None
    tools: tuple[agent_kind.ToolSpec, ...] = ()
    mcp_servers: tuple[agent_kind.McpServer, ...] = ()
    temperature: base.Temperature | None = None
    max_tokens: base.PositiveInt | None = None


class ConditionBranch(base.Model):
    """`config.conditions[]` of a Conditional node (the documented named-branch form)."""

    name: str
    expression: str | base.Bool


class JoinStrategy(base.CIEnum):
    ALL = "all"
    ANY = "any"
    MAJORITY = "majority"


class NodeConfig(base.Model):
    """`nodes[].config`; which keys apply depends on the node type (see the comments)."""

    # Transform
    script: str | None = None
    # Agent
    agent: str | None = None
    agent_ref: base.AgentRef | None = None
    inline: InlineAgent | None = None
    agent_config: str | None = None
    input: str | None = None
    # unused upstream
    context: base.FreeForm = Field(default_factory=dict)
    tools: tuple[agent_kind.ToolSpec, ...] = ()
    mcp_servers: tuple[agent_kind.McpServer, ...] = ()
    # Script
    script_config: ScriptConfig | None = None
    # Fleet
    fleet: str | None = None
    # Conditional
    condition: str | None = None
    conditions: tuple[ConditionBranch, ...] = ()
    # Slack / Discord / Response / Approval
    channel: str | None = None
    message: str | None = None
    thread_ts: str | None = None
    wait_for_reaction: base.Bool = False
    timeout_seconds: base.PositiveInt | None = None
    blocks: tuple[JsonValue, ...] = ()
    approvers: tuple[str, ...] = ()
    # HTTP
    url: str | None = None
    method: str | None = None
    headers: base.StrMap = Field(default_factory=dict)
    body: JsonValue = None
    fail_on_error: base.Bool | None = None  # HTTP: a 4xx/5xx answer fails the node (default true)
    # Wait
    duration: str | base.Int | base.Float | None = None
    # Parallel
    branches: tuple[JsonValue, ...] = ()
    # Join
    strategy: JoinStrategy = JoinStrategy.ALL

    @property
    def agent_name(self) -> str | None:
        """The agent or fleet this node runs by name: `agent`, else `agentRef.name`."""
        if self.agent:
            return self.agent
        return self.agent_ref.name if self.agent_ref else None


class NodeCondition(base.Model):
    """`nodes[].conditions[]`: run this node only when an upstream node's output matches."""

    from_: str
    value: JsonValue = None
    reaction: str | None = None
    when: str | None = None


class FlowNode(base.Model):
    """`spec.nodes[]`."""

    id: str
    type: NodeType
    config: NodeConfig = Field(default_factory=base.shared_default(NodeConfig))
    conditions: tuple[NodeCondition, ...] = ()
    description: str | None = None


class FlowConnection(base.Model):
    """`spec.connections[]`: an edge; `from` may be `start`."""

    from_: str
    to: str
    when: str | None = None


class FlowContext(base.Model):
    """`spec.context`: a Context by name (`context: prod` or `{name: prod}`) and/or inline values."""

    name: str | None = None
    kubeconfig: str | None = None
    namespace: str | None = None
    cluster: str | None = None
    env: base.StrMap = Field(default_factory=dict)
    working_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str):
            return {"name": data}
        return data


class FlowRetry(base.Model):
    max_attempts: base.PositiveInt = 3
    initial_delay: str = "1s"
    backoff_multiplier: base.Float = 2.0


class FlowConfig(base.Model):
    """`spec.config` (parsed, unused upstream)."""

    default_timeout_seconds: base.PositiveInt | None = None
    retry: FlowRetry | None = None
    error_handler: str | None = None
    verbose: base.Bool = False


class FlowTrigger(base.Model):
    """`spec.trigger` (seed short form): the message source written inline in the flow."""

    type: trigger_kind.TriggerType
    config: trigger_kind.TriggerConfig = Field(
        default_factory=base.shared_default(trigger_kind.TriggerConfig)
    )


class FlowSpec(base.Model):
    """`spec` of an AgentFlow: a node graph, or the seed's `agents: [{name}]` short form."""

    description: str | None = None
    nodes: tuple[FlowNode, ...] = ()
    connections: tuple[FlowConnection, ...] = ()
    context: FlowContext | None = None
    config: FlowConfig | None = None
    trigger: FlowTrigger | None = None
    agents: tuple[base.Ref, ...] = ()

    @property
    def is_short_form(self) -> bool:
        """True for the seed's `agents: [{name}]` form (no node graph)."""
        return not self.nodes and bool(self.agents)

    def node(self, node_id: str) -> FlowNode | None:
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None


class AgentFlow(base.ResourceModel):
    """`kind: AgentFlow`."""

    kind: Literal["AgentFlow"] = "AgentFlow"
    spec: FlowSpec
