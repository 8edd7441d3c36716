"""Plans: desired state against the running inventory (table-driven), ordering, JSON, rendering."""

from __future__ import annotations

import json

import pytest

from aofd.plan import compiler, desired, diff, render
from aofd.resources import ids
from tests.plan.conftest import WriteTree, agent, binding, context, flow, trigger, view

K = ids.Kind


def base_tree() -> dict[str, str]:
    """5 bindings over 2 flows; agent `shared` is used only by flow `f1` (bindings b0 and b1)."""
    files = {
        "contexts/prod.yaml": context("prod"),
        "contexts/dev.yaml": context("dev"),
        "agents/shared.yaml": agent("shared"),
        "agents/other.yaml": agent("other"),
        "flows/f1.yaml": flow("f1", "shared"),
        "flows/f2.yaml": flow("f2", "other"),
        "triggers/hook.yaml": trigger("hook"),
    }
    for i, (flow_name, ctx) in enumerate(
        [("f1", "prod"), ("f1", "dev"), ("f2", "prod"), ("f2", "dev"), ("f2", "prod")]
    ):
        files[f"bindings/b{i}.yaml"] = binding(f"b{i}", flow_name, ctx)
    return files


def changed(**edits: str | None) -> dict[str, str]:
    files = base_tree()
    for rel, text in edits.items():
        path = rel.replace("__", "/") + ".yaml"
        if text is None:
            del files[path]
        else:
            files[path] = text
    return files


def key(kind: K, name: str) -> str:
    return str(ids.ResourceKey.of(kind, name))


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        pytest.param(base_tree(), [], id="no-op"),
        pytest.param(
            changed(agents__new=agent("new")),
            [("create", key(K.AGENT, "new"))],
            id="add-agent",
        ),
        pytest.param(
            changed(bindings__b4=None),
            [("delete", key(K.BINDING, "b4"))],
            id="remove-binding",
        ),
        pytest.param(
            changed(bindings__b4=binding("b4-renamed", "f2", "prod")),
            [("create", key(K.BINDING, "b4-renamed")), ("delete", key(K.BINDING, "b4"))],
            id="rename-binding",
        ),
        pytest.param(
            changed(agents__shared=agent("shared", "new instructions")),
            [
                ("update", key(K.AGENT, "shared")),
                ("update", key(K.BINDING, "b0")),
                ("update", key(K.BINDING, "b1")),
            ],
            id="deep-change-updates-exactly-its-users",
        ),
        pytest.param(
            changed(contexts__dev=context("dev", "namespace: other")),
            [
                ("update", key(K.CONTEXT, "dev")),
                ("update", key(K.BINDING, "b1")),
                ("update", key(K.BINDING, "b3")),
            ],
            id="context-change",
        ),
        pytest.param(
            changed(bindings__b0=None, bindings__b1=None, flows__f1=None, agents__shared=None),
            [
                ("delete", key(K.BINDING, "b0")),
                ("delete", key(K.BINDING, "b1")),
                ("delete", key(K.FLOW, "f1")),
                ("delete", key(K.AGENT, "shared")),
            ],
            id="delete-bindings-before-what-they-use",
        ),
    ],
)
def test_plans(write_tree: WriteTree, after: dict[str, str], expected: list[tuple[str, str]]) -> None:
    """Each change yields exactly the expected actions, in apply order."""
    cache = desired.ParseCache()
    before = desired.build([view(write_tree(base_tree()))], variables={}, cache=cache)
    inventory = diff.Inventory.of(before)
    state = desired.build([view(write_tree(after))], variables={}, cache=cache)
    plan = diff.compute(compiler.build(state), inventory)
    assert (True, expected) == (state.ok, [(a.op, str(a.key)) for a in plan.changes])


def test_create_order_puts_contexts_and_agents_before_bindings(write_tree: WriteTree) -> None:
    """From an empty inventory, creates go up the layers: contexts, agents, flows, triggers, bindings."""
    state = desired.build([view(write_tree(base_tree()))], variables={}, cache=None)
    plan = diff.compute(compiler.build(state), diff.Inventory.empty())
    layers = [a.key.kind.layer for a in plan.changes]
    assert (sorted(layers), {"create": 12, "update": 0, "delete": 0, "unchanged": 0}) == (
        layers,
        plan.counts(),
    )


def test_deep_change_reason_names_the_dependency(write_tree: WriteTree) -> None:
    """A binding updated through a dependency says which one changed."""
    before = desired.build([view(write_tree(base_tree()))], variables={})
    state = desired.build([view(write_tree(changed(agents__shared=agent("shared", "v2"))))], variables={})
    plan = diff.compute(compiler.build(state), diff.Inventory.of(before))
    reasons = {str(a.key): a.reason for a in plan.changes}
    assert "uses Agent/shared (changed)" == reasons["FlowBinding/b0"]


def test_inventory_json_round_trip(write_tree: WriteTree) -> None:
    """An inventory written to JSON and read back plans no resource change; its listeners are not persisted
    (nothing runs after a restart), so the plan starts them all again."""
    state = desired.build([view(write_tree(base_tree()))], variables={})
    compiled = compiler.build(state)
    inventory = diff.Inventory.of(state, listeners={n: s.digest for n, s in compiled.listeners.items()})
    restored = diff.Inventory.from_json(json.loads(json.dumps(inventory.to_json())))
    plan = diff.compute(compiled, restored)
    assert (inventory.digests, inventory.effective) == (restored.digests, restored.effective)
    assert ((), ["create"] * len(compiled.listeners)) == (plan.changes, [a.op for a in plan.listeners])
    assert diff.compute(compiled, inventory).is_noop()


def test_inventory_from_json_skips_garbage() -> None:
    """Unknown kinds and malformed keys in a state file are skipped, never fatal."""
    inventory = diff.Inventory.from_json(
        {"Nope/default/x": "sha256:1", "bad": "x", "Agent/default/a": "sha256:2"}
    )
    assert {ids.ResourceKey.of(K.AGENT, "a"): "sha256:2"} == dict(inventory.digests)


def test_touched_contexts(write_tree: WriteTree) -> None:
    """A change to a shared agent touches the Contexts of the bindings that use it."""
    before = desired.build([view(write_tree(base_tree()))], variables={})
    state = desired.build([view(write_tree(changed(agents__shared=agent("shared", "v2"))))], variables={})
    plan = diff.compute(compiler.build(state), diff.Inventory.of(before))
    touched = plan.touched_contexts(state, before)
    assert {
        "prod": ["update Agent/shared", "update FlowBinding/b0"],
        "dev": ["update Agent/shared", "update FlowBinding/b1"],
    } == touched


def test_plan_text_rendering(write_tree: WriteTree) -> None:
    """The human plan shows +/~/- lines with paths and reasons, and a counts summary."""
    before = desired.build([view(write_tree(base_tree()))], variables={})
    after = changed(agents__shared=agent("shared", "v2"), agents__new=agent("new"), bindings__b4=None)
    state = desired.build([view(write_tree(after))], variables={})
    text = render.plan_text(diff.compute(compiler.build(state), diff.Inventory.of(before)))
    body = text.splitlines()[1:]
    assert [
        "  + create    Agent/new       main/agents/new.yaml",
        "  ~ update    Agent/shared    main/agents/shared.yaml  (spec changed)",
        "  ~ update    FlowBinding/b0  main/bindings/b0.yaml    (uses Agent/shared (changed))",
        "  ~ update    FlowBinding/b1  main/bindings/b1.yaml    (uses Agent/shared (changed))",
        "  - delete    FlowBinding/b4                           (no longer in the desired state)",
        "Plan: 1 to create, 3 to update, 1 to delete, 8 unchanged.",
    ] == body


def test_plan_json(write_tree: WriteTree) -> None:
    """The JSON plan lists changes with kind, name, action and digests, plus a summary."""
    state = desired.build([view(write_tree({"a.yaml": agent("a")}))], variables={})
    data = json.loads(render.plan_json(diff.compute(compiler.build(state), diff.Inventory.empty())))
    change = data["changes"][0]
    assert (
        {"create": 1, "update": 0, "delete": 0, "unchanged": 0},
        ("create", "Agent", "default", "a", None),
    ) == (
        data["summary"],
        (change["action"], change["kind"], change["namespace"], change["name"], change["old"]),
    )
