"""Digests are pinned: stored digests (the state store, audit lines, applied revisions) were
computed by earlier builds, so a change to parsing, validation, the canonical form or the
digest code must leave every digest byte-identical. Each pin below was computed once from the
tree `TREE` and must never change; a change here means stored state would look changed."""

from __future__ import annotations

from aofd.plan import desired
from aofd.resources import ids
from tests.plan.conftest import WriteTree, view

TREE = {
    "contexts/prod.yaml": """\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: prod
  labels:
    env: prod
spec:
  kubeconfig: ${KUBECONFIG_PROD}
  namespace: ns-1
  cluster: prod-cluster-1
  env:
    ENVIRONMENT: prod
    LOG_LEVEL: info
    REQUIRE_APPROVAL: "true"
  approval:
    required: true
    allowed_users:
      - U015SRE_LEAD
    require_for:
      - kubectl delete
  limits:
    max_requests_per_hour: 101
    max_tokens_per_request: 4096
  audit:
    enabled: true
""",
    "agents/a1.yaml": """\
apiVersion: aof.dev/v1
kind: Agent
metadata:
  name: a1
  labels:
    team: team-3
spec:
  model: anthropic:claude-sonnet-4
  instructions: |
    You are a1, a Kubernetes operations assistant.
    Never delete anything without an approval.
  tools:
    - kubectl
    - helm
  maxIterations: 7
  temperature: 0.3
""",
    "agents/flat.yaml": """\
apiVersion: aof.dev/v1
kind: Agent
name: flat
model: anthropic:claude-sonnet-4
instructions: Flat form, camelCase and unicode — ünïcödé.
tools: [kubectl]
""",
    "fleets/f1.yaml": """\
apiVersion: aof.dev/v1
kind: AgentFleet
metadata:
  name: f1
spec:
  agents:
    - name: a1
      role: worker
    - name: flat
      role: worker
  coordination:
    mode: peer
""",
    "flows/fl1.yaml": """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata:
  name: fl1
spec:
  description: Slack to a1 and back
  agents:
    - name: a1
    - name: flat
""",
    "triggers/slack.yaml": """\
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: slack
spec:
  type: slack
  config:
    bot_token: ${SLACK_BOT_TOKEN}
    signing_secret: ${SLACK_SIGNING_SECRET}
""",
    "triggers/cron.yaml": """\
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: cron
spec:
  type: Schedule
  config:
    cron: "*/5 * * * *"
""",
    "bindings/b1.yaml": """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata:
  name: b1
spec:
  flow:
    name: fl1
  context: prod
  trigger:
    name: slack
    config:
      channels:
        - C00000001
""",
}

VARS = {
    "KUBECONFIG_PROD": "/etc/kube/prod.yaml",
    "SLACK_BOT_TOKEN": "xoxb-pin",
    "SLACK_SIGNING_SECRET": "pin-signing-secret",
}
KEY = b"k" * 32

PLAIN = {
    "Context/prod": "sha256:d1be899e9bfe763f22287cf2af2d68b06705ab98caba20e656d612d95f2959a2",
    "Agent/a1": "sha256:2cbe4200da426414d44e298c2b935779b7e48b8b408a8479f8aa1eaa82ee95f4",
    "Agent/flat": "sha256:55eb40ca22337e5ae9e7bdf7cde80c9bf31000fe9284c666705a5cc8c3bc0b71",
    "AgentFleet/f1": "sha256:c4594fe7f434a70284de00914d64b5a1e7e759e5f9c474ff2c447ba3f7bd2b3e",
    "AgentFlow/fl1": "sha256:da980d98f9540bd90a1babdf053ec713eb62ce7ffd1cc42e7d9e3d7f7a0e58ac",
    "Trigger/slack": "sha256:6bd611311d063afad62c09dfce213391742aed66f8bcb9d609b7d0a9d0d713dc",
    "Trigger/cron": "sha256:bbf49e12b86db15678a6efbda6f4f9388a67c1d9f71f94042a8da552f66c3459",
    "FlowBinding/b1": "sha256:649e54ed110a9f716be53a00c758ca8f89a51dfe06969bf92b65cd9bdce2a068",
}
KEYED = {
    "Context/prod": "hmac-sha256:faec290ac3c5197950114c028c9ed35104499c0ffefdff5c5233a1d7fc78ba6c",
    "Trigger/slack": "hmac-sha256:86668bb72465c950e0be3df9a26a5c40719cee8f3c2fe2e5bb3d8522e850f491",
}
BINDING_PLAIN = "sha256:f01ce46ef04285e0cb9be7466434db3119f855ae981f26d5ce59d8b09636b528"
BINDING_KEYED = "sha256:b9312832bc258809270977c15b87b3b27741415ade210dd24edc1f6617eb1e37"


def _build(write_tree: WriteTree, key: bytes | None) -> desired.DesiredState:
    state = desired.build([view(write_tree(TREE))], variables=VARS, digest_key=key)
    assert state.ok, [i.format() for i in state.issues]
    return state


def _digests(state: desired.DesiredState) -> dict[str, str]:
    return {str(k): str(v) for k, v in state.digests.items()}


def test_plain_digests_are_pinned(write_tree: WriteTree) -> None:
    state = _build(write_tree, None)
    assert _digests(state) == PLAIN
    assert str(state.bindings["b1"].digest) == BINDING_PLAIN


def test_keyed_digests_are_pinned(write_tree: WriteTree) -> None:
    state = _build(write_tree, KEY)
    found = _digests(state)
    assert {k: found[k] for k in KEYED} == KEYED
    assert {k: v for k, v in found.items() if k not in KEYED} == {
        k: v for k, v in PLAIN.items() if k not in KEYED
    }
    assert str(state.bindings["b1"].digest) == BINDING_KEYED


def test_the_pins_cover_every_kind_of_the_tree() -> None:
    assert {k.split("/")[0] for k in PLAIN} == {
        ids.Kind.CONTEXT.value,
        ids.Kind.AGENT.value,
        ids.Kind.FLEET.value,
        ids.Kind.FLOW.value,
        ids.Kind.TRIGGER.value,
        ids.Kind.BINDING.value,
    }
