"""`kind: Agent` (layer 1): one AI agent, context-agnostic.

This module owns the Agent model (upstream `AgentConfig`, AOF-UPSTREAM.md section 1.2) and the
pieces other kinds reuse for inline agents: `ToolSpec` (the three tool forms), `McpServer`,
`MemorySpec` and `OutputSchema`. Upstream's *flat* form (top-level `name`, `model`) is turned
into the K8s form by validation before it reaches these models.

`instructions` and `system_prompt` are synonyms (upstream aliases them both ways); the model
field is `instructions`. This module does no I/O.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Discriminator, Field, JsonValue, Tag, model_validator

from aofd.resources.kinds import base


class ToolType(base.CIEnum):
    """`tools[].type` of a type-based tool."""

    SHELL = "Shell"
    MCP = "MCP"
    HTTP = "HTTP"


class ToolConfig(base.Model):
    """`config` of a type-based tool; which keys apply depends on the tool type."""

    # Shell
    allowed_commands: tuple[str, ...] = ()
    blocked_commands: tuple[str, ...] = ()
    working_directory: str | None = None
    # MCP
    name: str | None = None
    command: str | tuple[str, ...] | None = None
    args: tuple[str, ...] = ()
    env: base.StrMap = Field(default_factory=dict)
    # HTTP
    base_url: str | None = None
    allowed_methods: tuple[str, ...] = ()
    headers: base.StrMap = Field(default_factory=dict)
    # all
    timeout_seconds: base.PositiveInt | None = None


class TypedTool(base.Model):
    """`{type: Shell|MCP|HTTP, config: {...}}` (upstream `TypeBasedToolSpec`)."""

    type: ToolType
    config: ToolConfig = Field(default_factory=base.shared_default(ToolConfig))


class ToolSource(base.CIEnum):
    """Where a qualified tool comes from."""

    BUILTIN = "builtin"
    MCP = "mcp"


class QualifiedTool(base.Model):
    """`{name, source, server, config, enabled, timeout_secs}` (upstream `QualifiedToolSpec`)."""

    name: str
    source: ToolSource = ToolSource.BUILTIN
    server: str | None = None
    config: base.FreeForm | None = None
    enabled: base.Bool = True
    timeout_secs: base.PositiveInt | None = None


def _tool_form(value: object) -> str:
    """Pick the tool form like upstream's untagged enum: string, then `type`, then `name`."""
    if isinstance(value, str):
        return "name"
    if isinstance(value, TypedTool):  # serializing a model instance
        return "typed"
    if isinstance(value, QualifiedTool):
        return "qualified"
    if isinstance(value, dict) and "type" in value and "name" not in value:
        return "typed"
    return "qualified"


ToolSpec = Annotated[
    Annotated[str, Tag("name")]
    | Annotated[TypedTool, Tag("typed")]
    | Annotated[QualifiedTool, Tag("qualified")],
    Discriminator(_tool_form),
]
"""A tool: a builtin name (`kubectl`), a type-based tool, or a qualified tool."""


class McpTransport(base.CIEnum):
    STDIO = "stdio"
    SSE = "sse"
    HTTP = "http"


class McpServer(base.Model):
    """`mcp_servers[]` (upstream `McpServerConfig`)."""

    name: str
    transport: McpTransport = McpTransport.STDIO
    command: str | None = None
    args: tuple[str, ...] = ()
    env: base.StrMap = Field(default_factory=dict)
    endpoint: str | None = None
    tools: tuple[str, ...] = ()
    init_options: JsonValue = None
    timeout_secs: base.PositiveInt = 30
    auto_reconnect: base.Bool = True


class MemoryConfig(base.Model):
    """`memory.config`."""

    path: str | None = None
    max_messages: base.PositiveInt | None = None
    context_key: str | None = None
    max_age_seconds: base.PositiveInt | None = None
    """aofd: turns older than this are forgotten (default 7 days)."""
    max_tokens: base.PositiveInt | None = None
    """aofd: the most earlier turns may cost the model's prompt (characters / 4; default 2000)."""


class MemorySpec(base.Model):
    """`memory`: `in_memory`, `file:./x.json`, or `{type, config}`; stored as `{type, config}`."""

    type: str
    config: MemoryConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str):
            kind, sep, path = data.partition(":")
            if sep:
                return {"type": kind, "config": {"path": path}}
            return {"type": data}
        return data


class ValidationMode(base.CIEnum):
    STRICT = "strict"
    LENIENT = "lenient"
    COERCE = "coerce"


class OnValidationError(base.CIEnum):
    FAIL = "fail"
    RETRY = "retry"
    PASSTHROUGH = "passthrough"


class OutputSchema(base.Model):
    """`output_schema`: a JSON Schema for the agent's answer, plus how to enforce it.

    Unknown keys are kept here (`oneOf`, `minimum`, ... are JSON Schema, not typos).
    """

    model_config = base.MODEL_CONFIG | {"extra": "allow"}

    type: str
    properties: base.FreeForm | None = None
    required: tuple[str, ...] = ()
    items: JsonValue = None
    enum: tuple[JsonValue, ...] | None = None
    description: str | None = None
    additional_properties: JsonValue = None
    validation_mode: ValidationMode = ValidationMode.STRICT
    on_validation_error: OnValidationError = OnValidationError.FAIL
    max_retries: base.NonNegativeInt | None = None


class AgentSpec(base.WithSynonyms):
    """`spec` of an Agent."""

    SYNONYMS: ClassVar[dict[str, str]] = {"system_prompt": "instructions"}

    model: str
    provider: str | None = None
    instructions: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    mcp_servers: tuple[McpServer, ...] = ()
    memory: MemorySpec | None = None
    max_context_messages: base.PositiveInt = 10
    max_iterations: base.PositiveInt = 10
    temperature: base.Temperature = 0.7
    max_tokens: base.PositiveInt | None = None
    output_schema: OutputSchema | None = None
    description: str | None = None

    def tool_names(self) -> tuple[str, ...]:
        """Names of the builtin and qualified tools (type-based tools are named by their type)."""
        names: list[str] = []
        for tool in self.tools:
            if isinstance(tool, str):
                names.append(tool)
            elif isinstance(tool, QualifiedTool):
                names.append(tool.name)
            else:
                names.append(tool.config.name or tool.type.value.lower())
        return tuple(names)


class Agent(base.ResourceModel):
    """`kind: Agent`."""

    kind: Literal["Agent"] = "Agent"
    spec: AgentSpec
