"""`required_headers` of an HTTP Trigger are secret fields: `${VAR}` is substituted like a token."""

from __future__ import annotations

import pytest

from aofd.plan import desired
from aofd.resources import ids
from tests.plan.conftest import WriteTree, doc, messages, view

KEY = ids.ResourceKey.of(ids.Kind.TRIGGER, "hook")


def hook(value: str) -> str:
    return doc("Trigger", "hook", f'type: HTTP\nconfig:\n  required_headers:\n    X-Api-Key: "{value}"')


def headers(state: desired.DesiredState) -> dict[str, str]:
    return dict(state.resources[KEY].model.spec.config.required_headers)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "variables", "expected"),
    [
        ("${WEBHOOK_APIKEY}", {"WEBHOOK_APIKEY": "k-123"}, "k-123"),
        ("Bearer ${WEBHOOK_APIKEY}", {"WEBHOOK_APIKEY": "k-123"}, "Bearer k-123"),
        ("${WEBHOOK_APIKEY:-fallback}", {}, "fallback"),
        ("$${WEBHOOK_APIKEY}", {"WEBHOOK_APIKEY": "k-123"}, "${WEBHOOK_APIKEY}"),
        ("literal-key", {"WEBHOOK_APIKEY": "k-123"}, "literal-key"),
    ],
)
def test_required_header_values_are_substituted(
    write_tree: WriteTree, value: str, variables: dict[str, str], expected: str
) -> None:
    """The model the listener gets holds the substituted value; literals and escapes stay as written."""
    state = build_one(write_tree, value, variables)
    assert ({"X-Api-Key": expected}, []) == (headers(state), messages(state))


def test_undefined_variable_is_an_error_for_the_daemon_and_a_warning_for_validate(
    write_tree: WriteTree,
) -> None:
    """Never silently compared against the literal `${...}` text: the daemon refuses the revision."""
    snap = write_tree({"t.yaml": hook("${WEBHOOK_APIKEY}")})
    strict = desired.build([view(snap)], variables={})
    lenient = desired.build([view(snap)], variables={}, undefined="warning")
    expected = (
        "t.yaml:9:18: {}: Trigger/hook: spec.config.required_headers.X-Api-Key: undefined variable "
        "WEBHOOK_APIKEY: set it in the daemon's environment, or write ${{WEBHOOK_APIKEY:-default}}"
    )
    assert (
        [f"main/{expected.format('error')}"],
        [f"main/{expected.format('warning')}"],
    ) == (messages(strict), messages(lenient))


def test_variable_outside_the_allow_list_is_refused_and_never_read(write_tree: WriteTree) -> None:
    snap = write_tree({"t.yaml": hook("${AWS_SECRET_ACCESS_KEY}")})
    state = desired.build([view(snap)], variables={"AWS_SECRET_ACCESS_KEY": "hunter2"})
    found = messages(state)
    assert (["subst-not-allowed"], False) == (
        [i.code for i in state.issues],
        any("hunter2" in m for m in found),
    )


def test_the_digest_changes_with_the_value(write_tree: WriteTree) -> None:
    """A new key in the environment is a new Trigger: the listener is rebuilt with it."""
    one = build_one(write_tree, "${WEBHOOK_APIKEY}", {"WEBHOOK_APIKEY": "k-1"})
    two = build_one(write_tree, "${WEBHOOK_APIKEY}", {"WEBHOOK_APIKEY": "k-2"})
    assert one.digests[KEY] != two.digests[KEY]


def build_one(write_tree: WriteTree, value: str, variables: dict[str, str]) -> desired.DesiredState:
    snap = write_tree({"t.yaml": hook(value)})
    return desired.build([view(snap)], variables=variables, digest_key=b"k" * 32)  # keyed, as the daemon


@pytest.mark.parametrize("value", ["${WEBHOOK_APIKEY}", "${WEBHOOK_APIKEY:-}", "${WEBHOOK_APIKEY:-*}"])
def test_a_variable_expanding_to_nothing_is_refused_not_a_presence_check(
    write_tree: WriteTree, value: str
) -> None:
    """`""` and `*` mean "the header need only be present": a variable set to an empty value must not
    silently turn a key check into that."""
    state = build_one(write_tree, value, {"WEBHOOK_APIKEY": ""} if value == "${WEBHOOK_APIKEY}" else {})
    assert [
        "main/t.yaml:9:18: error: Trigger/hook: spec.config.required_headers.X-Api-Key: expands to an empty "
        "value or '*', which would only require the header to be present: set the variable, or write "
        "'' or '*' literally to mean that"
    ] == messages(state)


def test_a_literal_presence_check_stays_accepted(write_tree: WriteTree) -> None:
    state = build_one(write_tree, "*", {})
    assert ({"X-Api-Key": "*"}, []) == (headers(state), messages(state))
