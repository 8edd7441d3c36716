"""FlowBinding (both forms, one shape), Workflow, DaemonConfig, and the canonical form."""

from __future__ import annotations

import textwrap

from aofd.resources import documents, validation
from aofd.resources.kinds import base, binding, daemonconfig, workflow


def load(text: str, *, strict: bool = False) -> validation.ValidationResult:
    parsed = documents.parse("res.yaml", textwrap.dedent(text).encode())
    assert () == parsed.issues
    [doc] = parsed.documents
    return validation.validate_document(doc, strict=strict)


def binding_spec(result: validation.ValidationResult) -> binding.FlowBindingSpec:
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, binding.FlowBinding)
    return model.spec


SEED_BINDING = """\
# bindings/prod/slack-us-bot.yaml
apiVersion: aof.dev/v1
kind: FlowBinding
metadata:
  name: slack-us-bot
spec:
  flow:
    name: slack-k8s-flow
  context:
    name: prod-us-east  # ← US cluster
  trigger:
    name: slack-bot
    config:
      channels: [prod-us-east]
"""

UPSTREAM_BINDING = """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata:
  name: slack-us-bot
spec:
  trigger: slack-bot
  context: prod-us-east
  flow: slack-k8s-flow
  match:
    channels: [prod-us-east]
    priority: 10
    required_keywords: [deploy]
"""


def test_seed_and_upstream_binding_forms_normalize_to_the_same_attributes() -> None:
    """`flow: {name}` and `flow: name` (and likewise context and trigger) give the same refs."""
    seed = binding_spec(load(SEED_BINDING))
    upstream = binding_spec(load(UPSTREAM_BINDING))
    for spec in (seed, upstream):
        assert spec.flow is not None
        assert spec.context is not None
        assert spec.trigger is not None
        assert ("slack-k8s-flow", "prod-us-east", "slack-bot") == (
            spec.flow.name,
            spec.context.name,
            spec.trigger.name,
        )
    assert seed.trigger is not None
    assert ("prod-us-east",) == seed.trigger.config.channels
    assert ("prod-us-east",) == seed.filters().channels
    assert (("prod-us-east",), 10, ("deploy",)) == (
        upstream.filters().channels,
        upstream.filters().priority,
        upstream.filters().required_keywords,
    )


def test_binding_to_an_agent_needs_no_flow() -> None:
    """`agent` alone is a valid target; `target` names what runs."""
    spec = binding_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: FlowBinding
            metadata: {name: b}
            spec: {trigger: slack-bot, agent: k8s-ops}
            """
        )
    )
    assert None is spec.flow
    assert base.Ref(name="k8s-ops") == spec.target


def test_binding_without_flow_agent_or_fleet_is_rejected() -> None:
    """One of flow, agent and fleet is required."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: FlowBinding
        metadata: {name: b}
        spec: {trigger: slack-bot}
        """
    )
    assert ["a FlowBinding needs spec.flow (or spec.agent or spec.fleet)"] == [
        i.message for i in result.issues
    ]


def test_binding_without_trigger_warns() -> None:
    """A binding with no trigger loads, with a warning that no event starts it."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: FlowBinding
        metadata: {name: b}
        spec: {flow: f, context: c}
        """
    )
    assert result.resource is not None
    assert ["warning"] == [i.severity for i in result.issues]


def test_binding_ref_must_be_a_name_or_mapping() -> None:
    """`flow: 3` is neither a name nor `{name: ...}` and is rejected at its position."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: FlowBinding
        metadata: {name: b}
        spec:
          trigger: t
          flow: 3
        """
    )
    assert [(6, 9, "error")] == [(i.line, i.col, i.severity) for i in result.issues]


WORKFLOW = """\
apiVersion: aof.dev/v1
kind: Workflow
metadata: {name: incident}
spec:
  entrypoint: triage
  steps:
    - name: triage
      type: Agent
      agent: k8s-ops
      next: review
    - name: review
      agent:
        agentRef: {name: code-review-team, kind: AgentFleet}
      next:
        - {condition: approved, target: done}
    - name: done
      type: terminal
      status: completed
  retry: {maxAttempts: 5, backoff: Linear}
  errorHandler: done
"""


def test_workflow_steps_agent_refs_and_next() -> None:
    """Step agents are AgentRefs (name or agentRef), `next` is always a list, camelCase keys work."""
    result = load(WORKFLOW)
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, workflow.Workflow)
    triage, review, done = model.spec.steps
    assert triage.agent is not None
    assert review.agent is not None
    assert (base.RefKind.AGENT, base.RefKind.FLEET) == (triage.agent.kind, review.agent.kind)
    assert (workflow.NextRule(target="review"),) == triage.next
    assert workflow.StepStatus.COMPLETED is done.status
    assert model.spec.retry is not None
    assert (5, workflow.Backoff.LINEAR, "done") == (
        model.spec.retry.max_attempts,
        model.spec.retry.backoff,
        model.spec.error_handler,
    )


def test_workflow_entrypoint_must_be_a_step() -> None:
    """An entrypoint naming no step is an error with a suggestion."""
    result = load(WORKFLOW.replace("entrypoint: triage", "entrypoint: traige"))
    assert ["entrypoint 'traige' is not a step name; did you mean 'triage'?"] == [
        i.message for i in result.issues
    ]


def test_daemon_config_loads_and_is_ignored_with_a_warning() -> None:
    """Upstream's DaemonConfig is validated, then ignored with the documented warning."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: DaemonConfig
        metadata: {name: aof-daemon}
        spec:
          server: {port: 8080, host: 0.0.0.0}
          platforms:
            slack: {enabled: true, bot_token_env: SLACK_BOT_TOKEN}
          agents: {directory: ./agents}
        """
    )
    assert None is result.resource
    assert [("warning", daemonconfig.IGNORED_MESSAGE)] == [(i.severity, i.message) for i in result.issues]


def test_daemon_config_type_errors_are_still_errors() -> None:
    """A DaemonConfig that upstream cannot parse (list-style agents) is an error."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: DaemonConfig
        metadata: {name: d}
        spec:
          agents: [agents/a.yaml]
        """
    )
    assert ["error", "warning"] == sorted(i.severity for i in result.issues)


def test_canonical_form_is_the_same_for_both_spellings_and_defaults() -> None:
    """Canonical forms (and digests) ignore key spelling, enum casing and explicit defaults."""
    first = load(
        """\
        apiVersion: aof.dev/v1
        kind: Trigger
        metadata: {name: t}
        spec:
          type: slack
          defaultAgent: a
          enabled: true
          config: {bot_token: x}
        """
    )
    second = load(
        """\
        apiVersion: aof.dev/v1alpha1
        kind: Trigger
        metadata: {name: t, namespace: default}
        spec:
          type: Slack
          default_agent: a
          config: {bot_token: x}
        """
    )
    assert first.resource is not None
    assert second.resource is not None
    expected = {
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": {"type": "Slack", "config": {"bot_token": "x"}, "default_agent": "a"},
    }
    assert expected == base.canonical(first.resource.model)
    assert base.digest(first.resource.model) == base.digest(second.resource.model)
