"""The compile stage: what it refuses it refuses at the field's own line and column, with the resource
named once; warnings leave the revision applicable; an incremental build keeps unaffected specs."""

from __future__ import annotations

import re

import pytest

from aofd.plan import compiler, desired
from tests.plan.conftest import WriteTree, agent, binding, context, doc, flow, trigger, view


def base() -> dict[str, str]:
    return {
        "contexts/prod.yaml": context("prod"),
        "agents/a.yaml": agent("a"),
        "flows/f.yaml": flow("f", "a"),
        "triggers/hook.yaml": trigger("hook"),
        "bindings/b.yaml": binding("b", "f", "prod"),
    }


def node_flow(node: str) -> str:
    return doc("AgentFlow", "f", f"nodes:\n  - id: n\n{node}\nconnections: []")


# (name, files replacing the base tree's, expected issue: (path, line, col, severity, code, words))
CASES = [
    (
        "agent model",
        {"agents/a.yaml": doc("Agent", "a", "model: nosuch:thing\ninstructions: hi")},
        ("main/agents/a.yaml", 6, 10, "error", "model", "provider nosuch"),
    ),
    (
        "wait duration",
        {"flows/f.yaml": node_flow("    type: Wait\n    config: {duration: forever}")},
        ("main/flows/f.yaml", 9, 26, "error", "invalid", "expected a duration"),
    ),
    (
        "script command with a shell operator",
        {
            "flows/f.yaml": node_flow(
                "    type: Script\n    config:\n      scriptConfig:\n"
                "        command: 'kubectl get pods; rm -rf /'"
            )
        },
        ("main/flows/f.yaml", 11, 20, "error", "invalid", "node n: the command"),
    ),
    (
        "HTTP node to the metadata address",
        {"flows/f.yaml": node_flow("    type: HTTP\n    config: {url: 'http://169.254.169.254/latest'}")},
        ("main/flows/f.yaml", 9, 21, "error", "invalid", "link-local"),
    ),
    (
        "agentConfig string",
        {"flows/f.yaml": node_flow("    type: Agent\n    config:\n      agentConfig: 'name: x'")},
        ("main/flows/f.yaml", 10, 22, "error", "invalid", "agentConfig"),
    ),
    (
        "cron",
        {"triggers/hook.yaml": doc("Trigger", "hook", "type: Schedule\nconfig: {cron: '61 25 * * *'}")},
        ("main/triggers/hook.yaml", 7, 18, "error", "invalid", "cron"),
    ),
    (
        "invalid match pattern",
        {
            "triggers/hook.yaml": doc(
                "Trigger",
                "hook",
                "type: HTTP\nconfig:\n  path: /hooks/http/hook\n  webhook_secret: s\n  patterns: ['(']",
            )
        },
        ("main/triggers/hook.yaml", 10, 16, "warning", "pattern-as-text", "not a valid regular expression"),
    ),
    (
        "a pattern re.compile overflows on",
        {
            "triggers/hook.yaml": doc(
                "Trigger",
                "hook",
                "type: HTTP\nconfig:\n  path: /hooks/http/hook\n  webhook_secret: s\n"
                "  patterns: ['a{4294967296}']",
            )
        },
        ("main/triggers/hook.yaml", 10, 16, "warning", "pattern-as-text", "repetition count is too large"),
    ),
    (
        "a pattern nested too deeply",
        {"bindings/b.yaml": binding("b", "f", "prod") + "  match:\n    patterns: ['" + "(" * 5000 + "']\n"},
        ("main/bindings/b.yaml", 10, 16, "warning", "pattern-as-text", "nested too deeply"),
    ),
    (
        "a binding's seed-style trigger filter pattern",
        {
            "bindings/b.yaml": doc(
                "FlowBinding",
                "b",
                "flow: {name: f}\ncontext: {name: prod}\n"
                "trigger:\n  name: hook\n  config:\n    patterns: ['(']",
            )
        },
        ("main/bindings/b.yaml", 11, 18, "warning", "pattern-as-text", "not a valid regular expression"),
    ),
    (
        "an HTTP node URL that does not parse",
        {"flows/f.yaml": node_flow("    type: HTTP\n    config: {url: 'http://[::1/x'}")},
        ("main/flows/f.yaml", 9, 21, "error", "invalid", "cannot be parsed"),
    ),
    (
        "Context allow rule with a shell operator",
        {
            "contexts/prod.yaml": context(
                "prod", "namespace: default\nsecurity:\n  allowed_commands: ['kubectl get ;']"
            )
        },
        ("main/contexts/prod.yaml", 8, 24, "error", "invalid", "kubectl get ;"),
    ),
]


@pytest.mark.parametrize(("files", "expected"), [pytest.param(f, e, id=n) for n, f, e in CASES])
def test_problem_points_at_its_field(
    write_tree: WriteTree, files: dict[str, str], expected: tuple[str, int, int, str, str, str]
) -> None:
    compiled = compiler.build(desired.build([view(write_tree({**base(), **files}))], variables={}))
    path, line, col, severity, code, words = expected
    found = [i for i in compiled.issues if i.path == path]
    assert [(i.line, i.col, i.severity, i.code) for i in found] == [(line, col, severity, code)], [
        i.format() for i in compiled.issues
    ]
    (issue,) = found
    assert words in issue.message
    assert len(issue.message) < 400, "a hostile value is shortened in the message"
    prefix, rest = issue.message.split(": ", 1)
    kind, name = prefix.split("/")
    assert not re.match(rf"(?i)({kind}|agent|trigger) {name}:", rest), "the resource is named once"
    assert compiled.ok is (severity != "error")


def test_an_error_keeps_no_listener_for_its_trigger(write_tree: WriteTree) -> None:
    files = {**base(), "triggers/hook.yaml": doc("Trigger", "hook", "type: Schedule\nconfig: {cron: 'nope'}")}
    compiled = compiler.build(desired.build([view(write_tree(files))], variables={}))
    assert not compiled.ok
    assert compiled.triggers["hook"] is None
    assert "hook" not in compiled.listeners


def test_webhook_triggers_are_served_without_bindings_pulling_ones_are_not(write_tree: WriteTree) -> None:
    """A valid webhook Trigger always has its listener (a Slack app's url_verification is answered
    before any binding exists); a schedule or a poller only runs while a binding uses it."""
    files = {
        **base(),
        "triggers/idle.yaml": trigger("idle"),
        "triggers/tick.yaml": doc("Trigger", "tick", "type: Schedule\nconfig:\n  cron: '*/5 * * * *'"),
        "triggers/poll.yaml": doc(
            "Trigger", "poll", "type: Telegram\nconfig:\n  bot_token: t\n  mode: polling"
        ),
    }
    compiled = compiler.build(desired.build([view(write_tree(files))], variables={}))
    assert compiled.ok, compiled.issues
    assert set(compiled.listeners) == {"hook", "idle"}
    assert set(compiled.triggers) == {"hook", "idle", "tick", "poll"}
    assert compiled.users["hook"] == ("b",)
    assert compiled.routes["idle"] == compiler.build(compiled.desired).routes["idle"]


def test_incremental_build_reuses_untouched_specs(write_tree: WriteTree) -> None:
    cache_state = desired.ParseCache()
    cache = compiler.Cache()
    first = compiler.build(
        desired.build([view(write_tree(base()))], variables={}, cache=cache_state), cache=cache
    )
    edited = {**base(), "agents/a.yaml": agent("a", "You help more.")}
    second = compiler.build(
        desired.build([view(write_tree(edited))], variables={}, cache=cache_state), cache=cache
    )
    assert second.contexts["prod"] is first.contexts["prod"]
    assert second.routes["hook"] is first.routes["hook"]
    assert second.agent("a") is not first.agent("a")
    assert second.agent("a") == compiler.build(second.desired).agent("a")


def test_fixing_the_error_clears_it(write_tree: WriteTree) -> None:
    cache_state = desired.ParseCache()
    cache = compiler.Cache()
    broken = {**base(), "agents/a.yaml": doc("Agent", "a", "model: nosuch:thing\ninstructions: hi")}
    first = compiler.build(
        desired.build([view(write_tree(broken))], variables={}, cache=cache_state), cache=cache
    )
    assert not first.ok
    fixed = compiler.build(
        desired.build([view(write_tree(base()))], variables={}, cache=cache_state), cache=cache
    )
    assert fixed.ok
    assert fixed.issues == ()


def test_a_trigger_fixed_after_a_rejected_revision_is_served_again(write_tree: WriteTree) -> None:
    """The compile of a rejected revision is the base of the next one: a Trigger that could not be
    served in it gets its listener, routes and bindings back once fixed, as a full build gives."""
    parse_cache, cache = desired.ParseCache(), compiler.Cache()
    nightly = "type: Schedule\nconfig: {cron: '%s'}"
    results = []
    for cron in ("0 3 * * *", "61 25 * * *", "0 4 * * *"):
        files = {**base(), "triggers/hook.yaml": doc("Trigger", "hook", nightly % cron)}
        state = desired.build([view(write_tree(files))], variables={}, cache=parse_cache)
        results.append((compiler.build(state, cache=cache), compiler.build(state)))
    (first, _), (broken, _), (fixed, full) = results
    assert first.ok
    assert not broken.ok
    assert fixed.ok
    assert "hook" not in broken.listeners
    assert (dict(fixed.listeners), dict(fixed.routes), dict(fixed.users)) == (
        dict(full.listeners),
        dict(full.routes),
        dict(full.users),
    )
    assert fixed.users["hook"] == ("b",)


def test_two_contexts_may_not_share_a_name(write_tree: WriteTree) -> None:
    """Audit logs, guard policies and rate limits are kept by Context name: the same name in two
    namespaces is an error at both, and removing one makes the revision good again (incrementally)."""
    parse_cache, cache = desired.ParseCache(), compiler.Cache()
    other = doc("Context", "prod", "namespace: default", namespace="team-b")

    def compile_files(files: dict[str, str]) -> compiler.Compiled:
        return compiler.build(
            desired.build([view(write_tree(files))], variables={}, cache=parse_cache), cache=cache
        )

    assert compile_files(base()).ok
    shared = compile_files({**base(), "contexts/prod-b.yaml": other})
    assert not shared.ok
    assert sorted((i.path, i.line, i.col) for i in shared.errors) == [
        ("main/contexts/prod-b.yaml", 4, 9),
        ("main/contexts/prod.yaml", 4, 9),
    ]
    assert all("Context names are global" in i.message for i in shared.errors)
    again = compile_files(base())
    assert again.ok
    assert again.contexts["prod"].key.namespace == "default"


def test_a_trigger_may_not_send_its_tokens_to_an_address_of_its_own(write_tree: WriteTree) -> None:
    """`bot_token: ${SLACK_BOT_TOKEN}` with `base_url: http://attacker/` would hand the daemon's
    token to whoever pushed the Trigger: only addresses the daemon config lists are taken."""
    evil = doc(
        "Trigger",
        "evil",
        "type: Slack\nconfig:\n  signing_secret: s\n  bot_token: xoxb-1\n  base_url: http://127.0.0.1:9/api/",
    )
    files = {**base(), "triggers/evil.yaml": evil}
    compiled = compiler.build(desired.build([view(write_tree(files))], variables={}))
    assert not compiled.ok
    (issue,) = compiled.errors
    assert "platforms.trigger_base_urls" in issue.message
    allowed = compiler.Options(trigger_base_urls=frozenset({"http://127.0.0.1:9/api/"}))
    assert compiler.build(desired.build([view(write_tree(files))], variables={}), options=allowed).ok
