"""Agent and AgentFleet: seed examples, upstream forms, tools, defaults, enums and fleet rules."""

from __future__ import annotations

import textwrap

from aofd.resources import documents, ids, validation
from aofd.resources.kinds import agent, fleet


def load(text: str, *, strict: bool = False) -> validation.ValidationResult:
    parsed = documents.parse("res.yaml", textwrap.dedent(text).encode())
    assert () == parsed.issues
    [doc] = parsed.documents
    return validation.validate_document(doc, strict=strict)


def agent_spec(result: validation.ValidationResult) -> agent.AgentSpec:
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, agent.Agent)
    return model.spec


def fleet_spec(result: validation.ValidationResult) -> fleet.FleetSpec:
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, fleet.AgentFleet)
    return model.spec


SEED_AGENT = """\
# agents/k8s-ops.yaml - SHARED ACROSS ALL ENVIRONMENTS
apiVersion: aof.dev/v1
kind: Agent
metadata:
  name: k8s-ops
spec:
  model: anthropic:claude-sonnet-4
  instructions: |
    You are a Kubernetes operations assistant.
    Use kubectl to inspect and manage cluster resources.
  tools:
    - kubectl
    - shell
"""


def test_seed_agent_loads_with_upstream_defaults() -> None:
    """The seed's k8s-ops agent loads; unset fields take upstream's defaults."""
    result = load(SEED_AGENT)
    spec = agent_spec(result)
    assert () == result.issues
    assert result.resource is not None
    assert ids.ResourceKey.of(ids.Kind.AGENT, "k8s-ops") == result.resource.key
    assert ("anthropic:claude-sonnet-4", ("kubectl", "shell")) == (spec.model, spec.tools)
    assert (10, 10, 0.7, None) == (
        spec.max_iterations,
        spec.max_context_messages,
        spec.temperature,
        spec.max_tokens,
    )


def test_system_prompt_is_a_synonym_of_instructions() -> None:
    """`system_prompt` (upstream's flat-form name) fills `instructions`."""
    spec = agent_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Agent
            metadata: {name: a}
            spec: {model: "openai:gpt-4o", system_prompt: "be brief"}
            """
        )
    )
    assert "be brief" == spec.instructions


def test_flat_form_agent_is_accepted() -> None:
    """Upstream's flat form (`name`, `model` at the top) loads as the K8s form."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Agent
        name: flat-agent
        model: google:gemini-2.5-flash
        instructions: hello
        """
    )
    spec = agent_spec(result)
    assert result.resource is not None
    assert ("flat-agent", "hello") == (result.resource.name, spec.instructions)


def test_flat_form_errors_point_at_the_source_lines() -> None:
    """An error in a flat-form agent is reported where the key is written, not at a rewritten path."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Agent
        name: flat-agent
        model: m
        max_iterations: "5"
        """
    )
    assert [(5, 17, "error")] == [(i.line, i.col, i.severity) for i in result.issues]


def test_three_tool_forms_are_told_apart() -> None:
    """A string, `{type, config}` and `{name, source, ...}` become a name, a TypedTool and a QualifiedTool."""
    spec = agent_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Agent
            metadata: {name: a}
            spec:
              model: m
              tools:
                - kubectl
                - type: shell
                  config: {allowed_commands: [kubectl], timeout_seconds: 120}
                - {name: read_file, source: MCP, server: fs, timeout_secs: 5}
            """
        )
    )
    name, typed, qualified = spec.tools
    assert "kubectl" == name
    assert isinstance(typed, agent.TypedTool)
    assert agent.ToolType.SHELL is typed.type
    assert ("kubectl",) == typed.config.allowed_commands
    assert isinstance(qualified, agent.QualifiedTool)
    assert (agent.ToolSource.MCP, "fs", True) == (qualified.source, qualified.server, qualified.enabled)
    assert ("kubectl", "shell", "read_file") == spec.tool_names()


def test_memory_string_forms_become_type_and_path() -> None:
    """`file:./x.json` is `{type: file, config: {path: ./x.json}}`."""
    spec = agent_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Agent
            metadata: {name: a}
            spec: {model: m, memory: "file:./x.json"}
            """
        )
    )
    assert spec.memory is not None
    assert spec.memory.config is not None
    assert ("file", "./x.json") == (spec.memory.type, spec.memory.config.path)


def test_unknown_agent_key_is_a_dropped_warning_and_strict_makes_it_an_error() -> None:
    """Outside a Context an unknown key warns and is ignored; with strict=True it is an error."""
    text = """\
        apiVersion: aof.dev/v1
        kind: Agent
        metadata: {name: a}
        spec:
          model: m
          max_iteratons: 3
        """
    lenient = load(text)
    strict = load(text, strict=True)
    assert 10 == agent_spec(lenient).max_iterations
    assert [
        (
            "warning",
            6,
            "unknown field 'max_iteratons' in Agent spec; did you mean 'max_iterations'?; it is ignored",
        )
    ] == [(i.severity, i.line, i.message) for i in lenient.issues]
    assert None is strict.resource
    assert ["error"] == [i.severity for i in strict.issues]


def test_temperature_out_of_range_is_rejected() -> None:
    """Temperature must be within 0..2, as upstream's validate says."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Agent
        metadata: {name: a}
        spec: {model: m, temperature: 3}
        """
    )
    assert ["error"] == [i.severity for i in result.issues]


def test_missing_model_names_the_field_and_where() -> None:
    """A spec without `model` is an error naming the missing field."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Agent
        metadata: {name: a}
        spec:
          instructions: hi
        """
    )
    assert ["missing required field 'model' in Agent spec"] == [i.message for i in result.issues]


SEED_FLEET = """\
apiVersion: aof.dev/v1
kind: AgentFleet
metadata:
  name: code-review-team
spec:
  agents:
    - name: security-reviewer
      spec:
        model: google:gemini-2.5-flash
        instructions: "Focus on security..."
    - name: k8s-ops  # Reference existing agent
  coordination:
    mode: Peer
    distribution: round_robin
    consensus:
      algorithm: MAJORITY
      min_votes: 2
"""


def test_seed_fleet_mixes_inline_and_referenced_agents() -> None:
    """A fleet member with only a name refers to an Agent; enums match any case and separator."""
    spec = fleet_spec(load(SEED_FLEET))
    inline, reference = spec.agents
    assert (False, True) == (inline.is_reference, reference.is_reference)
    assert (fleet.CoordinationMode.PEER, fleet.Distribution.ROUND_ROBIN) == (
        spec.coordination.mode,
        spec.coordination.distribution,
    )
    assert spec.coordination.consensus is not None
    assert fleet.ConsensusAlgorithm.MAJORITY is spec.coordination.consensus.algorithm


def test_fleet_defaults_are_peer_round_robin() -> None:
    """Without a coordination block the fleet is peer with round-robin distribution."""
    spec = fleet_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: AgentFleet
            metadata: {name: f}
            spec:
              agents: [{name: a}]
            """
        )
    )
    assert (fleet.CoordinationMode.PEER, fleet.Distribution.ROUND_ROBIN, 1) == (
        spec.coordination.mode,
        spec.coordination.distribution,
        spec.agents[0].replicas,
    )


def test_hierarchical_fleet_needs_a_manager() -> None:
    """Hierarchical mode without a manager agent is an error at coordination.mode."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: AgentFleet
        metadata: {name: f}
        spec:
          agents: [{name: a}, {name: b}]
          coordination:
            mode: hierarchical
        """
    )
    assert [(7, 11, "error")] == [(i.line, i.col, i.severity) for i in result.issues]


def test_hierarchical_fleet_with_a_manager_role_is_valid() -> None:
    """A member with `role: manager` is the manager of a hierarchical fleet."""
    spec = fleet_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: AgentFleet
            metadata: {name: f}
            spec:
              agents: [{name: lead, role: Manager}, {name: b}]
              coordination: {mode: hierarchical}
            """
        )
    )
    assert "lead" == spec.manager_name()


def test_duplicate_fleet_agent_names_are_rejected() -> None:
    """Two members with one name are an error at the second one."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: AgentFleet
        metadata: {name: f}
        spec:
          agents:
            - name: a
            - name: a
        """
    )
    assert [(7, 13, "duplicate fleet agent name 'a' (also spec.agents[0])")] == [
        (i.line, i.col, i.message) for i in result.issues
    ]


def test_unknown_fleet_mode_suggests_the_closest() -> None:
    """An invalid enum value lists the choices and suggests the nearest one."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: AgentFleet
        metadata: {name: f}
        spec:
          agents: [{name: a}]
          coordination: {mode: hierarchial}
        """
    )
    assert [
        "invalid value 'hierarchial' for 'spec.coordination.mode'; expected one of "
        "hierarchical, peer, swarm, pipeline, tiered, deep; did you mean 'hierarchical'?"
    ] == [i.message for i in result.issues]
