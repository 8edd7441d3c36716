"""`examples/repo-layout` is the seed's enterprise layout, and it validates."""

from __future__ import annotations

from pathlib import Path

from aofd.cli import validate_cmd
from aofd.plan import desired
from aofd.resources import ids

ROOT = Path(__file__).resolve().parents[2] / "examples" / "repo-layout"


def build() -> desired.DesiredState:
    views = validate_cmd.load_views([str(ROOT)])
    return desired.build(views, variables={}, undefined="warning")


def test_example_validates_with_zero_errors() -> None:
    """Every file loads and resolves with no variable exported: secrets default to empty."""
    state = build()
    assert ([], []) == ([i.format() for i in state.errors], [i.format() for i in state.warnings])


def test_example_has_the_seed_layout() -> None:
    """Five contexts, five agents (one with an MCP server), three fleets, four flows, five triggers,
    bindings per environment."""
    state = build()
    counts = {kind.value: len(state.of_kind(kind)) for kind in ids.Kind}
    envs = sorted({Path(b.path).parent.name for b in state.of_kind(ids.Kind.BINDING)})
    assert (
        {
            "Context": 5,
            "Agent": 5,
            "AgentFleet": 3,
            "AgentFlow": 4,
            "Trigger": 5,
            "FlowBinding": 12,
            "Workflow": 0,
        },
        ["dev", "prod", "staging"],
    ) == (counts, envs)


def test_one_flow_is_bound_to_several_contexts() -> None:
    """slack-k8s-flow runs in prod, the US and EU clusters, staging and dev, each on its own channel."""
    state = build()
    uses = sorted(
        (b.context_name or "", tuple(b.binding.model.spec.trigger.config.channels))  # type: ignore[attr-defined]
        for b in state.bindings.values()
        if b.flow is not None
        and b.flow.name == "slack-k8s-flow"
        and b.trigger is not None
        and b.trigger.name == "slack-bot"
    )
    assert [
        ("dev-context", ("dev",)),
        ("prod-context", ("production",)),
        ("prod-eu-west", ("prod-eu-west",)),
        ("prod-us-east", ("prod-us-east",)),
        ("staging-context", ("staging",)),
    ] == uses


def test_example_in_the_daemon_with_every_variable_set() -> None:
    """With its variables defined, the example builds with no issues at all (the daemon's view)."""
    views = validate_cmd.load_views([str(ROOT)])
    names = {
        "KUBECONFIG_PROD",
        "KUBECONFIG_STAGING",
        "KUBECONFIG_PROD_US_EAST",
        "KUBECONFIG_PROD_EU_WEST",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "WHATSAPP_ACCESS_TOKEN",
        "WHATSAPP_APP_SECRET",
        "WHATSAPP_VERIFY_TOKEN",
        "PAGERDUTY_WEBHOOK_SECRET",
        "PAGERDUTY_API_KEY",
        "WEBHOOK_SECRET",
    }
    state = desired.build(views, variables={n: f"value-of-{n.lower()}" for n in names}, undefined="error")
    assert ((), 12) == (state.issues, len(state.bindings))


def test_the_handover_agent_brings_an_mcp_server_that_dev_runs() -> None:
    """The MCP example: one stdio server, bound in dev, whose tools dev allows only if read-only."""
    state = build()
    bound = [b for b in state.bindings.values() if b.flow is not None and b.flow.name == "handover-flow"]
    assert ["dev-context"] == [b.context_name for b in bound]
    agent = next(a for a in state.of_kind(ids.Kind.AGENT) if a.key.name == "oncall-handover")
    servers = agent.model.spec.mcp_servers  # type: ignore[attr-defined]
    assert [("time", "mcp-server-time")] == [(s.name, s.command) for s in servers]
