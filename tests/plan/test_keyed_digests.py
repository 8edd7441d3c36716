"""Digests never let a secret be tested offline: a resource holding a secret-bearing value is
digested with the install's key (HMAC), or, with no key (`aofctl validate`, the admin diff),
with its secret values masked; resources without secrets keep their plain digests."""

from __future__ import annotations

import hashlib
import json

from aofd.plan import compiler, desired, extract
from aofd.resources import ids
from aofd.resources.kinds import base as kinds_base
from tests.plan.conftest import WriteTree, binding, doc, flow, view

KEY_A = b"a" * 32
KEY_B = b"b" * 32
TRIGGER = ids.ResourceKey.of(ids.Kind.TRIGGER, "hook")
CONTEXT = ids.ResourceKey.of(ids.Kind.CONTEXT, "prod")
AGENT = ids.ResourceKey.of(ids.Kind.AGENT, "echo")


def tree(secret: str = "${WEBHOOK_SECRET}", kubeconfig: str = "${SLACK_BOT_TOKEN}") -> dict[str, str]:  # noqa: S107
    return {
        "t.yaml": doc("Trigger", "hook", f"type: HTTP\nconfig:\n  webhook_secret: '{secret}'"),
        "c.yaml": doc("Context", "prod", f"namespace: default\nkubeconfig: '{kubeconfig}'"),
        "a.yaml": doc("Agent", "echo", "model: anthropic:claude-sonnet-4\ninstructions: You help."),
        "f.yaml": flow("fl", "echo"),
        "b.yaml": binding("b1", "fl", "prod", "hook"),
    }


VARS = {"WEBHOOK_SECRET": "hunter2-webhook", "SLACK_BOT_TOKEN": "xoxb-secret-123"}


def build(
    write_tree: WriteTree, key: bytes | None, variables: dict[str, str] = VARS, **kw: str
) -> desired.DesiredState:
    return desired.build([view(write_tree(tree(**kw)))], variables=variables, digest_key=key)


def plain(state: desired.DesiredState, key: ids.ResourceKey) -> str:
    return str(kinds_base.digest(state.resources[key].model))


def test_a_digest_covering_a_secret_is_keyed_per_install(write_tree: WriteTree) -> None:
    a, b = build(write_tree, KEY_A), build(write_tree, KEY_B)
    for key in (TRIGGER, CONTEXT):
        assert a.digests[key] != b.digests[key]
        assert a.digests[key] != plain(a, key)  # not the unsalted SHA-256 of the substituted spec
        assert a.digests[key].startswith("hmac-sha256:")
    assert a.digests[AGENT] == b.digests[AGENT] == plain(a, AGENT)  # no secret: unchanged


def test_rotating_a_secret_changes_the_keyed_digest(write_tree: WriteTree) -> None:
    before = build(write_tree, KEY_A)
    after = build(write_tree, KEY_A, {**VARS, "WEBHOOK_SECRET": "rotated"})
    assert before.digests[TRIGGER] != after.digests[TRIGGER]
    assert before.digests[CONTEXT] == after.digests[CONTEXT]
    assert before.bindings["b1"].digest != after.bindings["b1"].digest


def test_a_literal_secret_is_keyed_too(write_tree: WriteTree) -> None:
    state = build(write_tree, KEY_A, secret="hunter2-webhook")
    assert state.digests[TRIGGER] != plain(state, TRIGGER)
    assert state.digests[TRIGGER] == build(write_tree, KEY_A).digests[TRIGGER]


def test_without_a_key_the_digest_covers_no_secret_value(write_tree: WriteTree) -> None:
    """`aofctl validate` has no key: guessing the secret cannot match a digest it prints."""
    right = build(write_tree, None, secret="hunter2-webhook")
    wrong = build(write_tree, None, secret="guess")
    substituted = build(write_tree, None)
    assert right.digests[TRIGGER] == wrong.digests[TRIGGER] == substituted.digests[TRIGGER]
    assert right.digests[TRIGGER] != plain(right, TRIGGER)
    assert right.digests[CONTEXT] == build(write_tree, None, {}).digests[CONTEXT]


def test_the_listener_config_digest_is_not_a_plain_digest_of_the_secret(write_tree: WriteTree) -> None:
    a = compiler.build(build(write_tree, KEY_A))
    b = compiler.build(build(write_tree, KEY_B))
    listener = a.listeners["hook"]
    model = a.desired.resources[TRIGGER].model
    data = {"name": "hook", "spec": model.spec.model_dump(mode="json")}  # type: ignore[attr-defined]
    unsalted = (
        "sha256:"
        + hashlib.sha256(
            json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).hexdigest()
    )
    assert listener.digest != unsalted
    assert listener.digest != b.listeners["hook"].digest
    rotated = compiler.build(build(write_tree, KEY_A, {**VARS, "WEBHOOK_SECRET": "rotated"}))
    assert rotated.listeners["hook"].digest != listener.digest  # a rotated secret restarts the listener


def test_masked_spec_hides_every_secret_bearing_value(write_tree: WriteTree) -> None:
    state = build(write_tree, KEY_A)
    shown = json.dumps([extract.masked_spec(r) for r in state.resources.values()])
    assert "hunter2" not in shown
    assert "xoxb" not in shown
    assert "You help." in shown
