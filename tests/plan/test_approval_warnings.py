"""Approval settings that cannot all hold are warnings at the setting's own file and line.

A warning never keeps a revision from applying (`compiled.ok` stays True); it says what will
happen and how to fix it. Approvers are counted by user id (`slack:U1` and `U1` are one person).
"""

from __future__ import annotations

import pytest

from aofd import errors
from aofd.plan import compiler, desired
from aofd.specs import approvers
from tests.plan.conftest import WriteTree, agent, binding, context, doc, trigger, view


def tree(approval: str, *, flow_nodes: str | None = None) -> dict[str, str]:
    """A Context `prod` with `approval` (indented YAML under spec.approval) and a bound flow."""
    flow_text = (
        doc("AgentFlow", "f", "agents:\n  - name: a")
        if flow_nodes is None
        else doc("AgentFlow", "f", f"nodes:\n{flow_nodes}\nconnections: []")
    )
    return {
        "contexts/prod.yaml": context("prod", "namespace: default\napproval:\n" + approval),
        "agents/a.yaml": agent("a"),
        "flows/f.yaml": flow_text,
        "triggers/hook.yaml": trigger("hook"),
        "bindings/b.yaml": binding("b", "f", "prod"),
    }


def compile_tree(write_tree: WriteTree, files: dict[str, str]) -> compiler.Compiled:
    return compiler.build(desired.build([view(write_tree(files))], variables={}))


def approval_warnings(compiled: compiler.Compiled) -> list[errors.Issue]:
    return [i for i in compiled.warnings if i.code.startswith("approval-")]


# (name, spec.approval YAML, (line, col, code, words)); the Context's `approval:` key is on line 7.
CONTEXT_CASES = [
    (
        "required without approvers",
        "  required: true\n  require_for: [kubectl delete]",
        (
            8,
            15,
            "approval-unreachable",
            "nobody can approve, so every command that needs approval is refused",
        ),
    ),
    (
        "require_for without required",
        "  allowed_users: [U1, U2]\n  require_for: [kubectl delete]",
        (9, 18, "approval-unused", "no command waits for approval; set approval.required: true"),
    ),
    (
        "min_approvers above the approvers counted by id",
        "  required: true\n  allowed_users: ['slack:U1', U1, U2]\n  min_approvers: 3\n"
        "  allow_self_approval: true",
        (10, 20, "approval-unreachable", "names only 2 approvers (counted by user id"),
    ),
    (
        "min_approvers equal to the approvers without self-approval",
        "  required: true\n  allowed_users: [U1, U2]\n  min_approvers: 2",
        (10, 20, "approval-self", "requests made by one of the approvers cannot be granted"),
    ),
    (
        "a single approver without self-approval",
        "  required: true\n  allowed_users: [U1]",
        (9, 20, "approval-self", "requests made by one of the approvers cannot be granted"),
    ),
]


@pytest.mark.parametrize(("approval", "expected"), [pytest.param(a, e, id=n) for n, a, e in CONTEXT_CASES])
def test_context_approval_conflicts_are_warnings_at_the_setting(
    write_tree: WriteTree, approval: str, expected: tuple[int, int, str, str]
) -> None:
    compiled = compile_tree(write_tree, tree(approval))
    line, col, code, words = expected
    found = approval_warnings(compiled)
    assert [(i.path, i.line, i.col, i.code) for i in found] == [
        ("main/contexts/prod.yaml", line, col, code)
    ], [i.format() for i in compiled.issues]
    assert words in found[0].message
    assert found[0].message.startswith("Context/prod: approval.")
    assert compiled.ok, "a warning never keeps a revision from applying"


@pytest.mark.parametrize(
    "approval",
    [
        "  required: true\n  allowed_users: [U1, U2]",
        "  required: true\n  allowed_users: [U1]\n  allow_self_approval: true",
        "  required: false",
        "  required: true\n  allowed_users: ['slack:U1', 'telegram:U1']\n  min_approvers: 1",
    ],
)
def test_settings_that_can_hold_are_quiet(write_tree: WriteTree, approval: str) -> None:
    compiled = compile_tree(write_tree, tree(approval))
    assert approval_warnings(compiled) == [], [i.format() for i in compiled.issues]


def test_more_min_approvers_than_entries_stays_the_resource_checks_error(write_tree: WriteTree) -> None:
    """Fewer entries than `min_approvers` is already an error; it is not reported twice."""
    compiled = compile_tree(write_tree, tree("  required: true\n  allowed_users: [U1]\n  min_approvers: 2"))
    assert approval_warnings(compiled) == []
    assert any("min_approvers is 2 but only 1" in i.message for i in compiled.errors)


def test_a_non_positive_approval_timeout_is_an_error(write_tree: WriteTree) -> None:
    """`timeout_seconds: 0` (Context or Approval node) is refused by the schema, not merely warned."""
    node = "  - id: ok\n    type: Approval\n    config: {timeout_seconds: 0}"
    files = tree("  required: true\n  allowed_users: [U1, U2]\n  timeout_seconds: 0", flow_nodes=node)
    compiled = compile_tree(write_tree, files)
    assert not compiled.ok
    wrong = {(i.path, i.line) for i in compiled.errors if "greater than or equal to 1" in i.message}
    assert wrong == {("main/contexts/prod.yaml", 10), ("main/flows/f.yaml", 9)}, [
        i.format() for i in compiled.errors
    ]


APPROVERS = "  required: true\n  allowed_users: ['slack:U1', U2, U3]\n  min_approvers: 2"

# (name, the Approval node's config, words); the node's `approvers` value is on flows/f.yaml line 10.
NODE_CASES = [
    (
        "no approver the Context allows",
        "{approvers: [U9]}",
        "none of its approvers (U9) is an approver of Context prod (main/contexts/prod.yaml:1)",
    ),
    (
        "fewer than min_approvers",
        "{approvers: [U1, 'slack:U1']}",
        "(slack:U1, slack:U1) are 1 approver, fewer than the Context's approval.min_approvers (2)",
    ),
    (
        "exactly min_approvers without self-approval",
        "{approvers: [U1, U2]}",
        "requests made by one of the approvers cannot be granted",
    ),
]


@pytest.mark.parametrize(("config", "words"), [pytest.param(c, w, id=n) for n, c, w in NODE_CASES])
def test_approval_node_narrowed_by_its_context(write_tree: WriteTree, config: str, words: str) -> None:
    node = f"  - id: ok\n    type: Approval\n    config: {config}"
    compiled = compile_tree(write_tree, tree(APPROVERS, flow_nodes=node))
    found = approval_warnings(compiled)
    assert [(i.path, i.line) for i in found] == [("main/flows/f.yaml", 9)], [
        i.format() for i in compiled.issues
    ]
    assert words in found[0].message
    assert found[0].message.startswith("AgentFlow/f: Approval node 'ok'")
    assert found[0].message.endswith("(FlowBinding b)")
    assert compiled.ok


def test_approval_node_without_approvers_under_a_context_without_any(write_tree: WriteTree) -> None:
    node = "  - id: ok\n    type: Approval\n    config: {message: proceed}"
    compiled = compile_tree(write_tree, tree("  required: false", flow_nodes=node))
    (found,) = approval_warnings(compiled)
    assert (found.path, found.line) == ("main/flows/f.yaml", 7)
    assert "names no approvers and Context prod" in found.message


def test_approval_node_that_can_be_granted_is_quiet(write_tree: WriteTree) -> None:
    node = "  - id: ok\n    type: Approval\n    config: {approvers: [U1, U2, U3]}"
    compiled = compile_tree(write_tree, tree(APPROVERS, flow_nodes=node))
    assert approval_warnings(compiled) == [], [i.format() for i in compiled.issues]


def test_node_warning_follows_a_context_change_in_an_incremental_build(write_tree: WriteTree) -> None:
    """The warning belongs to the binding: a Context edit alone adds or removes it."""
    node = "  - id: ok\n    type: Approval\n    config: {approvers: [U1, U2, U3]}"
    cache, parsed = compiler.Cache(), desired.ParseCache()
    first = desired.build([view(write_tree(tree(APPROVERS, flow_nodes=node)))], variables={}, cache=parsed)
    assert approval_warnings(compiler.build(first, cache=cache)) == []
    narrower = "  required: true\n  allowed_users: [U1, U4]\n  min_approvers: 2\n  allow_self_approval: true"
    second = desired.build([view(write_tree(tree(narrower, flow_nodes=node)))], variables={}, cache=parsed)
    assert second.delta is not None, "an incremental build"
    assert second.delta.keys
    incremental = compiler.build(second, cache=cache)
    full = compiler.build(second)
    assert [i.format() for i in approval_warnings(incremental)] == [
        i.format() for i in approval_warnings(full)
    ]
    (found,) = approval_warnings(incremental)
    assert "(U1) are 1 approver" in found.message


def test_distinct_approvers_counts_by_id() -> None:
    assert approvers.distinct_approvers(["slack:U1", "U1", "SLACK:U1"]) == 1
    assert approvers.distinct_approvers(["slack:U1", "telegram:U1", "U1"]) == 2
    assert approvers.distinct_approvers(["slack:", "U2", "team:U2"]) == 2
    assert approvers.narrow_approvers(["U1", "telegram:U2", "U3"], ["slack:U1", "U2"]) == (
        "slack:U1",
        "telegram:U2",
    )
