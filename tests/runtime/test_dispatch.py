"""Dispatching on compiled routes: candidate bindings per trigger, filters, upstream scoring, ties, no
match, stalled bindings, table swaps."""

from __future__ import annotations

import logging

import pytest
import structlog

from aofd.runtime import dispatch, ports, routing
from aofd.specs import routes
from aofd.testing import recorders, resources
from tests.runtime.fakes import harness

SLACK = resources.trigger("slack-bot", "Slack", signing_secret="s", bot_token="xoxb-1")


def _message(
    text: str = "hello",
    *,
    channel_id: str = "C1",
    channel_name: str = "",
    user: str = "U1",
    user_name: str = "",
    event_type: str = "message",
    trigger: str = "slack-bot",
) -> ports.EventMessage:
    return ports.EventMessage(
        platform="slack",
        trigger=trigger,
        text=text,
        user=ports.UserRef(user, user_name, "slack:T1"),
        channel_id=channel_id,
        channel_name=channel_name,
        event_type=event_type,
        delivery_id="Ev1",
    )


def _dispatcher(
    bindings: list[object], *, stalled: dict[str, routing.Stall] | None = None
) -> tuple[dispatch.Dispatcher, recorders.RecordingStarter]:
    """A dispatcher over the compiled routes of `bindings` (no listeners: events are dispatched directly)."""
    switchboard = routing.Switchboard()
    starter = recorders.RecordingStarter()
    dispatcher = dispatch.Dispatcher(switchboard=switchboard, starter=starter)
    compiled = resources.compiled(bindings)  # type: ignore[arg-type]
    switchboard.swap(
        routing.RoutingTable.build(
            revision="r1",
            listeners={},
            routes=compiled.routes,
            bindings=compiled.bindings,
            stalled=stalled,
        )
    )
    return dispatcher, starter


def test_seed_example_1_routes_each_channel_to_its_own_context() -> None:
    """slack-us-bot takes #prod-us-east (context prod-us-east), slack-eu-bot takes #prod-eu-west."""
    us = resources.binding(
        "slack-us-bot", SLACK, context_name="prod-us-east", filters={"channels": ["prod-us-east"]}
    )
    eu = resources.binding(
        "slack-eu-bot", SLACK, context_name="prod-eu-west", filters={"channels": ["prod-eu-west"]}
    )
    dispatcher, starter = _dispatcher([us, eu])
    east = dispatcher.dispatch(_message(channel_id="C_US", channel_name="prod-us-east"))
    west = dispatcher.dispatch(_message(channel_id="C_EU", channel_name="prod-eu-west"))
    assert ("slack-us-bot", "prod-us-east") == (east.binding, east.context)
    assert ("slack-eu-bot", "prod-eu-west") == (west.binding, west.context)
    assert ["slack-us-bot", "slack-eu-bot"] == starter.bindings


def test_no_match_is_an_outcome_never_a_random_binding() -> None:
    """A channel no binding names starts nothing and reports no_match."""
    us = resources.binding("slack-us-bot", SLACK, filters={"channels": ["prod-us-east"]})
    dispatcher, starter = _dispatcher([us])
    outcome = dispatcher.dispatch(_message(channel_id="C9", channel_name="random"))
    assert ("no_match", []) == (outcome.outcome, starter.calls)


@pytest.mark.parametrize(
    ("entry", "message", "matches"),
    [
        ("prod-us-east", _message(channel_id="C1", channel_name="prod-us-east"), True),
        ("#prod-us-east", _message(channel_id="C1", channel_name="prod-us-east"), True),
        ("C1", _message(channel_id="C1", channel_name=""), True),
        ("prod-us-east", _message(channel_id="C1", channel_name="prod-us-east-2"), False),
        ("*", _message(channel_id="C7"), True),
    ],
)
def test_channels_match_by_id_name_or_hash_name(
    entry: str, message: ports.EventMessage, matches: bool
) -> None:
    """A channel filter entry matches the channel id, its name, or #name (exactly)."""
    b = resources.binding("b", SLACK, filters={"channels": [entry]})
    dispatcher, _ = _dispatcher([b])
    assert matches == dispatcher.dispatch(message).started


def test_scoring_prefers_the_most_specific_binding() -> None:
    """Channel (+100) beats user (+80) beats pattern (+60) beats a catch-all (+10)."""
    catch_all = resources.binding("a-catch-all", SLACK)
    by_pattern = resources.binding("b-pattern", SLACK, filters={"patterns": ["^deploy"]})
    by_user = resources.binding("c-user", SLACK, filters={"users": ["U1"]})
    by_channel = resources.binding("d-channel", SLACK, filters={"channels": ["ops"]})
    dispatcher, _ = _dispatcher([catch_all, by_pattern, by_user, by_channel])
    cases = [
        (_message("deploy api", channel_name="ops", user="U1"), "d-channel", 10 + 10 + 100),
        (_message("deploy api", channel_name="dev", user="U1"), "c-user", 10 + 10 + 80),
        (_message("deploy api", channel_name="dev", user="U2"), "b-pattern", 10 + 10 + 60),
        (_message("status", channel_name="dev", user="U2"), "a-catch-all", 10 + 10),
    ]
    for message, expected, score in cases:
        outcome = dispatcher.dispatch(message)
        assert (expected, score) == (outcome.binding, outcome.score)


def test_match_block_keywords_and_priority() -> None:
    """Required keywords add 40 each and must all appear; excluded keywords veto; priority adds."""
    keyed = resources.binding(
        "keyed", SLACK, match={"required_keywords": ["restart", "Pod"], "excluded_keywords": ["prod"]}
    )
    prioritized = resources.binding("prioritized", SLACK, match={"priority": 75})
    dispatcher, _ = _dispatcher([keyed, prioritized])
    assert "keyed" == dispatcher.dispatch(_message("please RESTART the pod")).binding
    assert "prioritized" == dispatcher.dispatch(_message("restart the pod in prod")).binding
    assert "prioritized" == dispatcher.dispatch(_message("restart")).binding


def test_ties_are_broken_by_binding_name() -> None:
    """Equal scores pick the alphabetically first binding, whatever the input order."""
    second = resources.binding("zeta", SLACK, filters={"channels": ["ops"]})
    first = resources.binding("alpha", SLACK, filters={"channels": ["ops"]})
    for order in ([second, first], [first, second]):
        dispatcher, _ = _dispatcher(order)
        assert "alpha" == dispatcher.dispatch(_message(channel_name="ops")).binding


def test_disabled_bindings_and_invalid_regexes() -> None:
    """A disabled binding never matches; an invalid regex falls back to a case-insensitive substring."""
    disabled = resources.binding("disabled", SLACK, filters={"channels": ["ops"]}, enabled=False)
    odd = resources.binding("odd", SLACK, filters={"patterns": ["[unclosed"]})
    dispatcher, _ = _dispatcher([disabled, odd])
    assert "no_match" == dispatcher.dispatch(_message("hello", channel_name="ops")).outcome
    assert "odd" == dispatcher.dispatch(_message("see [UNCLOSED bracket", channel_name="ops")).binding


def test_events_and_users_filters() -> None:
    """Binding `events` filter event types (`pull_request` covers `pull_request.opened`); users match id or
    name.
    """
    gh = resources.trigger("gh", "GitHub", webhook_secret="s")
    prs = resources.binding("prs", gh, filters={"events": ["pull_request"], "users": ["octocat"]})
    dispatcher, _ = _dispatcher([prs])
    opened = ports.EventMessage(
        platform="github",
        trigger="gh",
        text="",
        user=ports.UserRef("1", "octocat"),
        event_type="pull_request.opened",
    )
    pushed = ports.EventMessage(
        platform="github", trigger="gh", text="", user=ports.UserRef("1", "octocat"), event_type="push"
    )
    assert (True, False) == (dispatcher.dispatch(opened).started, dispatcher.dispatch(pushed).started)


def test_trigger_level_filters_gate_every_binding() -> None:
    """A Trigger's own `channels` filter drops events before bindings are considered, and adds its score."""
    gated = resources.trigger("gated", "Slack", signing_secret="s", channels=["ops"])
    b = resources.binding("b", gated)
    dispatcher, _ = _dispatcher([b])
    assert "filtered" == dispatcher.dispatch(_message(channel_name="dev", trigger="gated")).outcome
    outcome = dispatcher.dispatch(_message(channel_name="ops", trigger="gated"))
    assert ("b", 10 + 100 + 10) == (outcome.binding, outcome.score)


def test_lookup_only_considers_bindings_of_the_receiving_trigger() -> None:
    """Bindings of another trigger are never candidates."""
    other = resources.trigger("other-bot", "Slack", signing_secret="s")
    theirs = resources.binding("theirs", other)
    dispatcher, _ = _dispatcher([theirs])
    assert "unknown_trigger" == dispatcher.dispatch(_message()).outcome


async def test_unchanged_listener_keeps_its_identity_across_a_swap() -> None:
    """Make-before-break: an unchanged trigger's listener is reused; a changed one is replaced and retired."""
    hook = resources.trigger("hook", "HTTP", webhook_secret="one")
    async with harness.Rig() as rig:
        await rig.apply([resources.binding("b", SLACK), resources.binding("h", hook)])
        slack_before = rig.switchboard.current.listeners["slack-bot"]
        hook_before = rig.switchboard.current.listeners["hook"]
        rotated = resources.trigger("hook", "HTTP", webhook_secret="two")
        await rig.apply(
            [resources.binding("b", SLACK, filters={"channels": ["ops"]}), resources.binding("h", rotated)]
        )
        current = rig.switchboard.current
        await rig.settle(lambda: not hook_before.running)
        assert "rev-2" == current.revision
        assert current.listeners["slack-bot"] is slack_before
        assert current.listeners["hook"] is not hook_before
        assert (True, False) == (current.listeners["hook"].running, hook_before.running)


def test_disabled_trigger_gets_no_listener() -> None:
    """`spec.enabled: false` on a Trigger gives it no listener (its hooks answer 404), and its bindings
    take no events."""
    off = resources.trigger("off", "HTTP", enabled=False)
    compiled = resources.compiled([resources.binding("b", off)])
    inactive = compiled.bindings["b"].inactive
    assert ({}, "TriggerDisabled") == (dict(compiled.listeners), inactive.reason if inactive else None)


def test_a_stalled_binding_is_answered_and_never_replaced_by_another() -> None:
    """The chosen binding cannot run here: the outcome is `stalled` with its reason, and the lower-scored
    catch-all is not run in its place (it could run under another Context)."""
    prod = resources.binding("prod", SLACK, context_name="prod", filters={"channels": ["prod"]})
    dev = resources.binding("dev", SLACK, context_name="dev")
    stall = routing.Stall("ContextNotReady", "Context prod is stalled: no kubeconfig")
    dispatcher, starter = _dispatcher([prod, dev], stalled={"prod": stall})
    outcome = dispatcher.dispatch(_message(channel_name="prod"))
    assert ("stalled", "prod", "prod") == (outcome.outcome, outcome.binding, outcome.context)
    assert ("ContextNotReady", True) == (outcome.reason, "no kubeconfig" in outcome.detail)
    assert [] == starter.calls
    assert "dev" == dispatcher.dispatch(_message(channel_name="dev")).binding


@pytest.mark.parametrize(("level", "logged"), [(logging.DEBUG, True), (logging.INFO, False)])
def test_event_routed_is_logged_exactly_when_debug_is_on(level: int, logged: bool) -> None:
    """The hot path skips building `event.routed` only when the configured level drops it anyway."""
    saved = structlog.get_config()
    seen: list[str] = []

    def keep(_logger: object, _name: str, event: dict[str, object]) -> str:
        seen.append(str(event["event"]))
        raise structlog.DropEvent

    try:
        structlog.configure(processors=[keep], wrapper_class=structlog.make_filtering_bound_logger(level))
        assert dispatch.debug_enabled() is logged
        dispatcher, _starter = _dispatcher([resources.binding("any", SLACK, context_name="prod")])
        assert dispatcher.dispatch(_message()).started
        assert ("event.routed" in seen) is logged
    finally:
        structlog.configure(**saved)


def test_platform_prefixed_user_entries_match_only_their_platform() -> None:
    """`slack:U9` matches user id U9 on Slack only; elsewhere the whole entry must equal the id or name."""
    filters = routes.Filters.compile(users=["slack:U9", "ci"])
    on_slack = _message(user="U9")
    elsewhere = ports.EventMessage(platform="http", trigger="t", text="", user=ports.UserRef("U9"))
    whole = ports.EventMessage(platform="http", trigger="t", text="", user=ports.UserRef("slack:U9"))
    by_name = ports.EventMessage(platform="http", trigger="t", text="", user=ports.UserRef("", "ci"))
    nobody = ports.EventMessage(platform="http", trigger="t", text="", user=ports.UserRef(""))
    results = [filters.matches(m) for m in (on_slack, elsewhere, whole, by_name, nobody, on_slack)]
    assert [True, False, True, True, False, True] == results


def test_routes_after_a_match_everything_route_are_never_tried() -> None:
    """`select` stops at the best route without filters; the table still lists every route, best first."""
    plain = resources.binding("a-plain", SLACK)
    narrow = resources.binding("z-narrow", SLACK, filters={"channels": ["C1"]})
    low = resources.binding("b-low", SLACK, match={"priority": -5})
    dispatcher, _ = _dispatcher([plain, narrow, low])
    table = dispatcher._switchboard.current.routes["slack-bot"]
    assert ["z-narrow", "a-plain", "b-low"] == [r.name for r in table.routes]
    assert ["z-narrow", "a-plain"] == [r.name for r in table.candidates]
    assert ["z-narrow", "a-plain"] == [
        dispatcher.dispatch(_message(channel_id=c)).binding for c in ("C1", "C2")
    ]


async def test_an_event_of_a_listener_being_started_waits_for_its_routes() -> None:
    """A new poller's first update (or a schedule's tick) arrives before the swap: it is held and
    dispatched on the published table, not answered "no flow is bound"."""
    switchboard = routing.Switchboard()
    starter = recorders.RecordingStarter()
    dispatcher = dispatch.Dispatcher(switchboard=switchboard, starter=starter)
    switchboard.starting(["slack-bot"])

    held = dispatcher.dispatch(_message())
    assert "deferred" == held.outcome
    assert [] == starter.bindings

    compiled = resources.compiled([resources.binding("b", SLACK)])
    switchboard.swap(
        routing.RoutingTable.build(
            revision="r2", listeners={}, routes=compiled.routes, bindings=compiled.bindings
        )
    )
    await dispatcher.aclose()
    assert ["b"] == starter.bindings
    assert "unknown_trigger" == dispatcher.dispatch(_message(trigger="other")).outcome


def test_a_run_refused_because_the_daemon_stops_asks_for_a_retry_and_a_bug_does_not() -> None:
    """`stopping` (the starter drains) is answered 503 so the sender retries later; an `error` (a
    bug, or a payload the flow cannot take) is not, since a retry would fail the same way."""
    from aofd import errors
    from aofd.runtime.listeners import base

    class Draining(recorders.RecordingStarter):
        def start(self, binding: object, message: ports.EventMessage) -> str:  # type: ignore[override]
            raise errors.NotAccepting("aofd is shutting down; no new runs are started")

    dispatcher, _ = _dispatcher([resources.binding("b", SLACK)])
    dispatcher._starter = Draining()
    outcome = dispatcher.dispatch(_message())
    assert "stopping" == outcome.outcome
    assert 503 == base.outcome_response(outcome).status
    assert 200 == base.outcome_response(ports.RouteOutcome("error", "b", detail="bug")).status
