"""AgentFlow and Trigger: both flow forms, graph rules, node types, trigger types and required fields."""

from __future__ import annotations

import textwrap

import pytest

from aofd.resources import documents, validation
from aofd.resources.kinds import base, flow, trigger


def load(text: str, *, strict: bool = False) -> validation.ValidationResult:
    parsed = documents.parse("res.yaml", textwrap.dedent(text).encode())
    assert () == parsed.issues
    [doc] = parsed.documents
    return validation.validate_document(doc, strict=strict)


def flow_spec(result: validation.ValidationResult) -> flow.FlowSpec:
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, flow.AgentFlow)
    return model.spec


def trigger_spec(result: validation.ValidationResult) -> trigger.TriggerSpec:
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, trigger.Trigger)
    return model.spec


SEED_SHORT_FLOW = """\
# flows/prod/slack-k8s-flow.yaml
apiVersion: aof.dev/v1
kind: AgentFlow
metadata:
  name: slack-prod-k8s
spec:
  trigger:
    type: Slack
    config:
      channels: [production]
  context:
    kubeconfig: ${KUBECONFIG_PROD}
    namespace: default
  agents:
    - name: k8s-ops  # ← Reference (no duplication!)
"""


def test_seed_short_form_flow_loads() -> None:
    """The seed's short form (inline trigger, inline context, agents by name) loads."""
    result = load(SEED_SHORT_FLOW)
    spec = flow_spec(result)
    assert () == result.issues
    assert spec.is_short_form
    assert (base.Ref(name="k8s-ops"),) == spec.agents
    assert spec.trigger is not None
    assert spec.context is not None
    assert (trigger.TriggerType.SLACK, ("production",)) == (spec.trigger.type, spec.trigger.config.channels)
    assert ("${KUBECONFIG_PROD}", "default") == (spec.context.kubeconfig, spec.context.namespace)


def test_flow_context_by_name() -> None:
    """`context: prod-context` is a reference by name."""
    spec = flow_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: AgentFlow
            metadata: {name: f}
            spec:
              context: prod-context
              agents: [{name: k8s-ops}]
            """
        )
    )
    assert spec.context is not None
    assert "prod-context" == spec.context.name


GRAPH_FLOW = """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata: {name: graph}
spec:
  nodes:
    - id: diagnose
      type: agent
      config: {agent: k8s-ops, input: "${event.text}"}
    - id: review
      type: Fleet
      config:
        agentRef: {name: code-review-team, kind: AgentFleet}
    - id: collect
      type: SCRIPT
      config:
        scriptConfig: {command: "kubectl get pods", timeout_seconds: 30, fail_on_error: false}
    - id: reply
      type: response
      config: {message: "${diagnose.output}"}
  connections:
    - {from: start, to: diagnose}
    - {from: diagnose, to: review}
    - {from: review, to: collect}
    - {from: collect, to: reply, when: "true"}
"""


def test_graph_flow_with_case_insensitive_node_types_and_response() -> None:
    """Node types match any case, `Response` is a node type, and scriptConfig keeps snake_case keys."""
    spec = flow_spec(load(GRAPH_FLOW))
    types = [node.type for node in spec.nodes]
    assert [flow.NodeType.AGENT, flow.NodeType.FLEET, flow.NodeType.SCRIPT, flow.NodeType.RESPONSE] == types
    review = spec.nodes[1].config
    assert review.agent_ref is not None
    assert ("code-review-team", base.RefKind.FLEET) == (review.agent_ref.name, review.agent_ref.kind)
    script = spec.nodes[2].config.script_config
    assert script is not None
    assert (30, False) == (script.timeout_seconds, script.fail_on_error)
    assert ("start", "diagnose") == (spec.connections[0].from_, spec.connections[0].to)


def test_script_config_accepts_both_spellings() -> None:
    """`script_config` and `scriptConfig` are the same field."""
    snake = GRAPH_FLOW.replace("scriptConfig:", "script_config:")
    assert flow_spec(load(GRAPH_FLOW)) == flow_spec(load(snake))


def test_connection_to_unknown_node_is_an_error_with_suggestion() -> None:
    """A connection end naming no node is an error at that end, suggesting the closest id."""
    result = load(GRAPH_FLOW.replace("{from: diagnose, to: review}", "{from: diagnose, to: reveiw}"))
    assert [(22, 28, "connection to 'reveiw': no node has this id; did you mean 'review'?")] == [
        (i.line, i.col, i.message) for i in result.issues
    ]


def test_duplicate_node_ids_are_rejected() -> None:
    """Two nodes with one id are an error at the second id."""
    result = load(GRAPH_FLOW.replace("- id: collect", "- id: review"))
    assert ["duplicate node id 'review' (also spec.nodes[1])"] == [
        i.message for i in result.issues if i.is_error and "duplicate" in i.message
    ]


def test_node_type_requirements() -> None:
    """Agent, Script, Fleet and Conditional nodes without their config are errors."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: AgentFlow
        metadata: {name: f}
        spec:
          nodes:
            - {id: a, type: Agent}
            - {id: s, type: Script, config: {scriptConfig: {env: {A: b}}}}
            - {id: f, type: Fleet}
            - {id: c, type: Conditional}
          connections: [{from: start, to: a}]
        """
    )
    assert [
        "Agent node 'a' needs config.agent (an Agent name) or config.inline",
        "Script node 's' needs config.scriptConfig with command or tool",
        "Fleet node 'f' needs config.fleet (an AgentFleet name)",
        "Conditional node 'c' needs config.condition",
    ] == [i.message for i in result.issues]


def test_legacy_from_trigger_is_a_warning() -> None:
    """Seed-era `from: trigger` is accepted as `start` with a warning."""
    result = load(GRAPH_FLOW.replace("{from: start, to: diagnose}", "{from: trigger, to: diagnose}"))
    assert result.resource is not None
    assert ["warning"] == [i.severity for i in result.issues]


def test_flow_without_nodes_or_agents_is_rejected() -> None:
    """A flow needs a node graph or the short form's agents."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: AgentFlow
        metadata: {name: f}
        spec: {description: nothing}
        """
    )
    assert ["missing-field"] == [i.code for i in result.issues]


def test_unknown_node_type_is_rejected() -> None:
    """`type: Shell` is not a node type (upstream rejects it too)."""
    result = load(GRAPH_FLOW.replace("type: SCRIPT", "type: Shell"))
    assert [(14, 13, "error")] == [(i.line, i.col, i.severity) for i in result.issues]


SEED_TRIGGER = """\
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: slack-bot
spec:
  type: slack
  config:
    bot_token: ${SLACK_BOT_TOKEN}
    signing_secret: ${SLACK_SIGNING_SECRET}
    app_token: ${SLACK_APP_TOKEN}
    channels: [production]
  commands:
    /diagnose: {agent: k8s-ops, description: Diagnose}
    /review: {fleet: code-review-team}
  default_agent: k8s-ops
"""


def test_trigger_type_is_case_insensitive_and_default_agent_is_read() -> None:
    """`type: slack` is Slack and `default_agent` (as the examples write it) is read."""
    spec = trigger_spec(load(SEED_TRIGGER))
    assert (trigger.TriggerType.SLACK, "k8s-ops", True) == (spec.type, spec.default_agent, spec.enabled)
    assert "k8s-ops" == spec.commands["/diagnose"].agent
    assert "${SLACK_APP_TOKEN}" == spec.config.app_token


def test_trigger_default_agent_camel_case() -> None:
    """`defaultAgent` (upstream's spelling) is the same field."""
    spec = trigger_spec(load(SEED_TRIGGER.replace("default_agent:", "defaultAgent:")))
    assert "k8s-ops" == spec.default_agent


def test_slack_trigger_without_bot_token_is_an_error() -> None:
    """Slack, Telegram and Discord triggers need a bot token to answer."""
    result = load(SEED_TRIGGER.replace("    bot_token: ${SLACK_BOT_TOKEN}\n", ""))
    assert ["a Slack trigger needs config.bot_token"] == [i.message for i in result.issues]


def test_whatsapp_without_bot_token_is_only_a_warning() -> None:
    """Upstream rejects WhatsApp without bot_token; aofd only warns when no access token is given."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Trigger
        metadata: {name: wa}
        spec:
          type: WhatsApp
          config: {phone_number_id: 12345, verify_token: x, app_secret: y}
        """
    )
    assert result.resource is not None
    assert ["warning"] == [i.severity for i in result.issues]
    assert isinstance(result.resource.model, trigger.Trigger)
    assert "12345" == result.resource.model.spec.config.phone_number_id


def test_schedule_trigger_needs_cron() -> None:
    """A Schedule trigger without cron cannot fire and is rejected."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Trigger
        metadata: {name: nightly}
        spec: {type: Schedule, config: {timezone: UTC}}
        """
    )
    assert ["a Schedule trigger needs config.cron"] == [i.message for i in result.issues]


def test_webhook_secrets_rotation_list() -> None:
    """`webhook_secret` and `webhook_secrets` together are every secret that verifies a delivery."""
    spec = trigger_spec(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Trigger
            metadata: {name: gh}
            spec:
              type: GitHub
              config:
                {webhook_secret: new, webhook_secrets: [new, old], max_body_bytes: 1048576, mode: Webhook}
            """
        )
    )
    assert ("new", "old") == spec.config.all_webhook_secrets
    assert (1048576, trigger.ListenMode.WEBHOOK) == (spec.config.max_body_bytes, spec.config.mode)


def test_teams_trigger_type_loads_and_unknown_types_are_rejected() -> None:
    """`Teams` is a trigger type (upstream's examples use it, though upstream rejects it); a type no
    platform has is still an error at its position."""
    assert [] == [i for i in load(SEED_TRIGGER.replace("type: slack", "type: Teams")).issues if i.is_error]
    result = load(SEED_TRIGGER.replace("type: slack", "type: Myspace"))
    assert [(6, 9, "error")] == [(i.line, i.col, i.severity) for i in result.issues]


def test_http_node_accepts_fail_on_error_in_both_spellings() -> None:
    """An HTTP node may turn off failing on a 4xx/5xx answer (`failOnError` or `fail_on_error`)."""
    for key in ("failOnError", "fail_on_error"):
        result = load(
            f"""\
            apiVersion: aof.dev/v1
            kind: AgentFlow
            metadata: {{name: probe}}
            spec:
              nodes:
                - id: fetch
                  type: HTTP
                  config: {{url: "https://status.example.com/api", method: GET, {key}: false}}
            """
        )
        assert () == result.issues
        assert flow_spec(result).nodes[0].config.fail_on_error is False


@pytest.mark.parametrize(
    ("kind", "path", "expected"),
    [
        ("PagerDuty", "/webhook/pagerduty", []),
        ("HTTP", "/hooks/http/t", []),
        ("HTTP", "webhook/x", ["error: config.path must be an absolute URL path"]),
        ("HTTP", "/a/../b", ["error: config.path must be an absolute URL path"]),
        ("HTTP", "/a b", ["error: config.path must be an absolute URL path"]),
        ("HTTP", "/a?x=1", ["error: config.path must be an absolute URL path"]),
        ("HTTP", "/web%20hook", ["error: config.path must be an absolute URL path"]),
        ("HTTP", "/hooks/http/other", ["error: config.path '/hooks/http/other' is under /hooks/"]),
        ("Schedule", "/cron", ["warning: config.path is ignored"]),
    ],
)
def test_trigger_path_is_an_absolute_path_outside_the_hook_space(
    kind: str, path: str, expected: list[str]
) -> None:
    """`config.path` (upstream's) must be a plain absolute path; under /hooks/ only the trigger's own."""
    extra = "cron: '0 * * * *'" if kind == "Schedule" else "webhook_secret: s"
    result = load(
        f"""\
        apiVersion: aof.dev/v1
        kind: Trigger
        metadata: {{name: t}}
        spec: {{type: {kind}, config: {{path: "{path}", {extra}}}}}
        """
    )
    found = [f"{i.severity}: {i.message}" for i in result.issues if "path" in i.message]
    assert len(expected) == len(found), found
    for want, got in zip(expected, found, strict=True):
        assert got.startswith(want), got
