"""Desired state: parse, source policy, duplicates, references, substitution, security checks, cache."""

from __future__ import annotations

import pytest

from aofd.plan import desired
from aofd.resources import ids
from tests.plan.conftest import WriteTree, agent, binding, context, doc, flow, messages, trigger, view

ALL = desired.ALL_KINDS
MAIN_KINDS = ALL - {ids.Kind.CONTEXT}
SECRET_KINDS = frozenset({ids.Kind.CONTEXT})


def build(*views: desired.SourceView, **kwargs: object) -> desired.DesiredState:
    return desired.build(list(views), variables=kwargs.pop("variables", {}), **kwargs)  # type: ignore[arg-type]


def test_valid_tree_resolves_bindings(write_tree: WriteTree) -> None:
    """A binding resolves to its flow, the flow's agents, its context and its trigger."""
    snap = write_tree(
        {
            "ctx.yaml": context("prod"),
            "agent.yaml": agent("k8s-ops"),
            "flow.yaml": flow("f", "k8s-ops"),
            "hook.yaml": trigger("hook"),
            "b.yaml": binding("b", "f", "prod"),
        }
    )
    state = build(view(snap))
    resolved = state.bindings["b"]
    assert (True, "f", "prod", "hook", ["k8s-ops"]) == (
        state.ok,
        resolved.flow.name if resolved.flow else None,
        resolved.context_name,
        resolved.trigger.name if resolved.trigger else None,
        list(resolved.agents),
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"a.yaml": agent("k8s-ops"), "f.yaml": flow("f", "k8s-opz")},
            [
                "main/f.yaml:7:13: error: AgentFlow/f: spec.agents[0].name refers to Agent 'k8s-opz', "
                "which does not exist; did you mean 'k8s-ops'?"
            ],
            id="missing-agent-did-you-mean",
        ),
        pytest.param(
            {
                "a.yaml": agent("reviewer"),
                "fl.yaml": doc("AgentFleet", "review-team", "agents:\n  - name: reviewer"),
                "f.yaml": doc(
                    "AgentFlow",
                    "f",
                    "nodes:\n  - id: run\n    type: Agent\n    config:\n      agent: review-team",
                ),
            },
            [
                "main/f.yaml:10:16: error: AgentFlow/f: spec.nodes[0].config.agent names 'review-team', "
                "which is an AgentFleet, not an Agent; to run a fleet write `fleet: review-team` "
                "(or agentRef with kind: AgentFleet)"
            ],
            id="wrong-kind-fleet-as-agent",
        ),
        pytest.param(
            {"fl.yaml": doc("AgentFleet", "team", "agents:\n  - name: ghost")},
            [
                "main/fl.yaml:7:13: error: AgentFleet/team: spec.agents[0].name refers to Agent 'ghost', "
                "which does not exist"
            ],
            id="fleet-member-missing",
        ),
        pytest.param(
            {
                "ctx.yaml": context("prod-context"),
                "a.yaml": agent("a"),
                "f.yaml": flow("f", "a"),
                "t.yaml": trigger("hook"),
                "b.yaml": binding("b", "f", "prod-ctx"),
            },
            [
                "main/b.yaml:7:19: error: FlowBinding/b: spec.context.name refers to Context 'prod-ctx', "
                "which does not exist; did you mean 'prod-context'? (the binding will not run: a binding "
                "never runs without its Context)"
            ],
            id="binding-context-missing",
        ),
        pytest.param(
            {
                "a.yaml": agent("a"),
                "f.yaml": flow("f", "a"),
                "t.yaml": trigger("hook"),
                "b.yaml": doc("FlowBinding", "b", "flow: f\ntrigger: hook"),
            },
            [
                "main/b.yaml:6:3: error: FlowBinding/b: must name a Context (spec.context.name); a binding "
                "never runs without one, since its Context holds the approval rules, limits and audit "
                "settings"
            ],
            id="binding-without-context",
        ),
        pytest.param(
            {
                "wf.yaml": (
                    "apiVersion: aof.dev/v1\nkind: Workflow\nname: wf\nentrypoint: one\n"
                    "steps:\n  - name: one\n    agent: ghost\n"
                )
            },
            [
                "main/wf.yaml:7:12: error: Workflow/wf: steps[0].agent refers to Agent 'ghost', "
                "which does not exist"
            ],
            id="flat-form-workflow-points-at-the-field",
        ),
    ],
)
def test_reference_errors(write_tree: WriteTree, files: dict[str, str], expected: list[str]) -> None:
    """Missing and wrong-kind references are errors at the referring field, with a did-you-mean."""
    state = build(view(write_tree(files)))
    assert (expected, {}) == ([m for m in messages(state) if ": error: " in m], dict(state.bindings))


FLAT_AGENT = "apiVersion: aof.dev/v1\nkind: Agent\nname: x\nmodel: anthropic:claude-sonnet-4\n"
FLOW_STYLE_AGENT = "apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {name: x}\nspec:\n  model: m\n"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"a.yaml": agent("x"), "b.yaml": agent("x")},
            "main/b.yaml:4:9: error: Agent/x is defined twice: here (source 'main') and at main/a.yaml:4:9",
            id="two-files",
        ),
        pytest.param(
            {"a.yaml": agent("x") + "---\n" + FLOW_STYLE_AGENT},
            "main/a.yaml:11:18: error: Agent/x is defined twice: here (source 'main') and at main/a.yaml:4:9",
            id="two-documents-in-one-file",
        ),
        pytest.param(
            {"a.yaml": FLAT_AGENT, "b.yaml": agent("x")},
            "main/b.yaml:4:9: error: Agent/x is defined twice: here (source 'main') and at main/a.yaml:3:7",
            id="flat-form-first",
        ),
        pytest.param(
            {"a.yaml": agent("x") + "---\n" + FLAT_AGENT},
            "main/a.yaml:11:7: error: Agent/x is defined twice: here (source 'main') and at main/a.yaml:4:9",
            id="flat-form-second-in-one-file",
        ),
    ],
)
def test_duplicate_in_one_source_points_at_both_names(
    write_tree: WriteTree, files: dict[str, str], expected: str
) -> None:
    """The same key twice in one source is an error at the second metadata.name, naming the first one's."""
    state = build(view(write_tree(files)))
    assert [expected] == messages(state, "duplicate")


def test_duplicate_across_sources_names_both_sources(write_tree: WriteTree) -> None:
    """The same key in two sources: an error at the second name, naming the first name and both sources."""
    one = write_tree({"a.yaml": agent("x")}, name="main")
    two = write_tree({"a.yaml": FLAT_AGENT}, name="extra")
    state = build(view(one), view(two))
    assert [
        "extra/a.yaml:3:7: error: Agent/x is defined twice: here (source 'extra') and at main/a.yaml:4:9 "
        "(source 'main')"
    ] == messages(state, "duplicate")


@pytest.mark.parametrize(
    ("main_files", "secret_files", "expected"),
    [
        pytest.param(
            {"ctx.yaml": context("prod")},
            {},
            "main/ctx.yaml:1:1: error: Context/prod is defined in source 'main' (main/ctx.yaml), which may "
            "define only Agent, AgentFleet, AgentFlow, FlowBinding, Trigger, Workflow; Context resources "
            "come from source 'secrets'",
            id="context-in-main",
        ),
        pytest.param(
            {},
            {"a.yaml": agent("a")},
            "secrets/a.yaml:1:1: error: Agent/a is defined in source 'secrets' (secrets/a.yaml), which may "
            "define only Context; Agent resources come from source 'main'",
            id="agent-in-secrets",
        ),
    ],
)
def test_source_kind_policy(
    write_tree: WriteTree, main_files: dict[str, str], secret_files: dict[str, str], expected: str
) -> None:
    """A source defining a kind its policy does not allow is an error naming the source and file."""
    main = write_tree(main_files, name="main")
    secrets = write_tree(secret_files, name="secrets")
    state = build(view(main, MAIN_KINDS), view(secrets, SECRET_KINDS))
    assert ([expected], set()) == (messages(state, "kind-not-allowed"), set(state.resources))


def test_find_cycles_reports_each_cycle() -> None:
    """A reference cycle through same-layer edges is found; downward edges never are."""
    fleet_a = ids.ResourceKey.of(ids.Kind.FLEET, "a")
    fleet_b = ids.ResourceKey.of(ids.Kind.FLEET, "b")
    agent_c = ids.ResourceKey.of(ids.Kind.AGENT, "c")
    edges = {fleet_a: (fleet_b, agent_c), fleet_b: (fleet_a,), agent_c: ()}
    assert [(fleet_a, fleet_b, fleet_a)] == desired.find_cycles(edges)


def test_acyclic_graph_has_no_cycles() -> None:
    """Edges that only go down the layers never form a cycle."""
    b = ids.ResourceKey.of(ids.Kind.BINDING, "b")
    f = ids.ResourceKey.of(ids.Kind.FLOW, "f")
    a = ids.ResourceKey.of(ids.Kind.AGENT, "a")
    assert [] == desired.find_cycles({b: (f, a), f: (a,)})


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "Prod_EU", "pr\u043ed"])
def test_context_names_must_be_dns_labels(write_tree: WriteTree, name: str) -> None:
    """Path traversal, uppercase/underscore and Cyrillic look-alike names are rejected."""
    text = f'apiVersion: aof.dev/v1\nkind: Context\nmetadata:\n  name: "{name}"\nspec:\n  namespace: x\n'
    state = build(view(write_tree({"ctx.yaml": text})))
    assert (False, {}) == (state.ok, dict(state.resources))


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\u2066"])
def test_hidden_characters_in_command_patterns_are_errors(write_tree: WriteTree, char: str) -> None:
    """Bidi controls and zero-width characters in a Context's command patterns are errors."""
    spec = f'security:\n  blocked_commands:\n    - "kubectl delete{char} ns"'
    state = build(view(write_tree({"ctx.yaml": context("prod", spec)})))
    assert (1, 0) == (len(messages(state, "hidden-character")), len(state.resources))


def test_prompt_text_is_never_substituted_nor_read(write_tree: WriteTree) -> None:
    """`${AWS_SECRET_ACCESS_KEY}` in an agent prompt stays literal and produces no issue (row 12)."""
    snap = write_tree({"a.yaml": agent("a", "debug ${AWS_SECRET_ACCESS_KEY}")})
    state = build(view(snap), variables={"AWS_SECRET_ACCESS_KEY": "hunter2"})
    model = state.resources[ids.ResourceKey.of(ids.Kind.AGENT, "a")].model
    assert ("debug ${AWS_SECRET_ACCESS_KEY}", ()) == (model.spec.instructions, state.issues)  # type: ignore[attr-defined]


def test_disallowed_variable_in_context_env_is_an_error_without_the_value(write_tree: WriteTree) -> None:
    """A Context env value naming a variable outside the allow-list is an error; the value never shows."""
    snap = write_tree({"ctx.yaml": context("prod", 'env:\n  KEY: "${AWS_SECRET_ACCESS_KEY}"')})
    state = build(view(snap), variables={"AWS_SECRET_ACCESS_KEY": "hunter2"})
    assert (
        [
            "main/ctx.yaml:7:10: error: Context/prod: spec.env.KEY: variable AWS_SECRET_ACCESS_KEY is not "
            "allowed by the daemon's substitution allow-list (KUBECONFIG*, AOF_*, AOFD_*, SLACK_*, "
            "TELEGRAM_*, WHATSAPP_*, PAGERDUTY_*, GITHUB_*, WEBHOOK_*, DISCORD_*, TEAMS_*, JIRA_*, GITLAB_*, "
            "BITBUCKET_*, OPSGENIE_*)"
        ],
        False,
    ) == (messages(state), any("hunter2" in m for m in messages(state)))


@pytest.mark.parametrize(
    ("value", "variables", "undefined", "expected_value", "expected_codes"),
    [
        ("${KUBECONFIG_PROD}", {"KUBECONFIG_PROD": "/k/prod"}, "error", "/k/prod", []),
        ("$${KUBECONFIG_PROD}", {"KUBECONFIG_PROD": "/k/prod"}, "error", "${KUBECONFIG_PROD}", []),
        ("$KUBECONFIG_PROD", {"KUBECONFIG_PROD": "/k/prod"}, "error", "$KUBECONFIG_PROD", []),
        ("${KUBECONFIG_X:-/k/default}", {}, "error", "/k/default", []),
        ("${KUBECONFIG_A${B}}", {}, "error", "${KUBECONFIG_A${B}}", ["subst-nested"]),
        ("${KUBECONFIG_PROD}", {}, "error", "${KUBECONFIG_PROD}", ["subst-undefined"]),
        ("${KUBECONFIG_PROD}", {}, "warning", "${KUBECONFIG_PROD}", ["subst-undefined"]),
    ],
)
def test_kubeconfig_substitution(
    write_tree: WriteTree,
    value: str,
    variables: dict[str, str],
    undefined: str,
    expected_value: str,
    expected_codes: list[str],
) -> None:
    """The Context kubeconfig is substituted by the rules (row 13); the model holds the result."""
    snap = write_tree({"ctx.yaml": context("prod", f'kubeconfig: "{value}"')})
    state = build(view(snap), variables=variables, undefined=undefined)
    model = state.resources[ids.ResourceKey.of(ids.Kind.CONTEXT, "prod")].model
    assert (expected_value, expected_codes) == (
        model.spec.kubeconfig,  # type: ignore[attr-defined]
        [i.code for i in state.issues],
    )


def test_connection_kubeconfig_is_substituted_in_both_fields_and_reported_once(write_tree: WriteTree) -> None:
    """`connection.kubeconfig` also fills `spec.kubeconfig`: both get the value, a problem shows once."""
    spec = 'connection:\n  kubeconfig: "${KUBECONFIG_PROD}"'
    snap = write_tree({"ctx.yaml": context("prod", spec)})
    good = build(view(snap), variables={"KUBECONFIG_PROD": "/k/prod"})
    bad = build(view(snap), variables={}, undefined="warning")
    model = good.resources[ids.ResourceKey.of(ids.Kind.CONTEXT, "prod")].model
    assert (
        ("/k/prod", "/k/prod"),
        [
            "main/ctx.yaml:7:17: warning: Context/prod: spec.connection.kubeconfig: undefined variable "
            "KUBECONFIG_PROD: set it in the daemon's environment, or write ${KUBECONFIG_PROD:-default}"
        ],
    ) == (
        (model.spec.kubeconfig, model.spec.connection.kubeconfig),  # type: ignore[attr-defined]
        messages(bad),
    )


def test_trigger_secret_is_substituted(write_tree: WriteTree) -> None:
    """A Trigger token names a variable and gets its value; the digest (keyed with the install's
    digest key, as the daemon builds) changes with the value."""
    text = doc("Trigger", "slack", 'type: Slack\nconfig:\n  bot_token: "${SLACK_BOT_TOKEN}"')
    snap = write_tree({"t.yaml": text})
    key_bytes = b"k" * 32
    one = desired.build([view(snap)], variables={"SLACK_BOT_TOKEN": "xoxb-1"}, digest_key=key_bytes)
    two = desired.build([view(snap)], variables={"SLACK_BOT_TOKEN": "xoxb-2"}, digest_key=key_bytes)
    key = ids.ResourceKey.of(ids.Kind.TRIGGER, "slack")
    assert ("xoxb-1", True) == (
        one.resources[key].model.spec.config.bot_token,  # type: ignore[attr-defined]
        one.digests[key] != two.digests[key],
    )


def test_disabled_binding_is_kept_and_flagged(write_tree: WriteTree) -> None:
    """`enabled: false` keeps the binding in the desired state, marked disabled."""
    text = doc("FlowBinding", "b", "flow: f\ncontext: prod\ntrigger: hook\nenabled: false")
    snap = write_tree(
        {
            "c.yaml": context("prod"),
            "a.yaml": agent("a"),
            "f.yaml": flow("f", "a"),
            "t.yaml": trigger("hook"),
            "b.yaml": text,
        }
    )
    state = build(view(snap))
    assert (True, False) == (state.ok, state.bindings["b"].enabled)


def test_one_file_change_reparses_one_file(write_tree: WriteTree) -> None:
    """With a warm cache, changing one file parses exactly that file again."""
    files = {f"agents/a{i}.yaml": agent(f"a{i}") for i in range(20)}
    cache = desired.ParseCache()
    build(view(write_tree(files)), cache=cache)
    before = cache.stats
    files["agents/a7.yaml"] = agent("a7", "changed")
    state = build(view(write_tree(files)), cache=cache)
    after = cache.stats
    assert (1, 19, 20, True) == (after.misses - before.misses, after.hits - before.hits, after.size, state.ok)


def test_removed_files_leave_the_cache(write_tree: WriteTree) -> None:
    """The cache holds only the files of the last build."""
    cache = desired.ParseCache()
    build(view(write_tree({"a.yaml": agent("a"), "b.yaml": agent("b")})), cache=cache)
    build(view(write_tree({"a.yaml": agent("a")})), cache=cache)
    assert 1 == cache.stats.size


def test_noop_revision_reuses_the_previous_build(write_tree: WriteTree) -> None:
    """Same files under a new revision: same resources and digests, new revision stamp."""
    snap = write_tree({"a.yaml": agent("a")})
    cache = desired.ParseCache()
    first = build(view(snap), cache=cache)
    moved = view(snap)
    moved = desired.SourceView(
        moved.name,
        moved.kinds,
        snap.__class__.build(
            source=snap.source,
            files=snap.files,
            revision=ids.Revision("f" * 40),
            display_root=snap.display_root,
        ),
    )
    second = build(moved, cache=cache)
    assert ("main@fffffff", first.digests) == (second.revision, second.digests)


def test_composite_revision_names_every_source() -> None:
    """The composite revision is `source@short` joined with `+`, in source order."""
    revisions = {
        "main": ids.Revision("3f2a9c1" + "0" * 33),
        "secrets": ids.Revision("sha256:9b71e02aaaaabbbb"),
    }
    assert "main@3f2a9c1+secrets@9b71e02aaaaa" == desired.composite_revision(revisions)


def test_two_triggers_on_one_path_is_an_error_naming_both(write_tree: WriteTree) -> None:
    """Upstream's `config.path` can be served by one Trigger only; a disabled one does not count."""

    def hook(name: str, path: str, enabled: bool = True) -> str:
        return doc("Trigger", name, f"type: PagerDuty\nenabled: {enabled}\nconfig:\n  path: {path}")

    state = build(
        view(
            write_tree(
                {
                    "a.yaml": hook("pd-a", "/webhook/pagerduty"),
                    "b.yaml": hook("pd-b", "/webhook/pagerduty"),
                    "c.yaml": hook("pd-c", "/webhook/pagerduty", enabled=False),
                    "d.yaml": hook("pd-d", "/webhook/other"),
                }
            )
        )
    )
    assert [
        "main/b.yaml:1:1: error: config.path '/webhook/pagerduty' is already served by Trigger/pd-a at "
        "main/a.yaml:1:1"
    ] == messages(state, "duplicate")
