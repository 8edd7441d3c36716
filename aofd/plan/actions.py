"""Plan actions: create / update / delete / unchanged per resource, and their order; pure.

This module owns the `Action` value and the dependency order a plan is applied and shown in:

- creates and updates go lowest layer first (Contexts and Agents before the Fleets, Flows,
  Triggers and Bindings that use them), so nothing ever refers to something not there yet;
- deletes go highest layer first (Bindings before the Triggers whose listeners they use,
  Flows before the Agents they run), after every create and update (make-before-break);
- unchanged resources are listed separately, not ordered (nothing is done to them).

An action carries the compiled spec of its resource (`aofd.plan.compiler`): the applier
executes it and compiles nothing. `ListenerAction` is the same for a Trigger's listener, which
runs while at least one active binding uses the Trigger.

No I/O, no clock, no logging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from aofd.plan import compiler
from aofd.resources import ids
from aofd.specs import bindings, flows, listeners

Spec = (
    compiler.ContextSpec
    | flows.AgentSpec
    | flows.FleetSpec
    | flows.FlowSpec
    | listeners.ListenerSpec
    | bindings.BindingSpec
    | None
)
"""What an action carries: the compiled spec of its resource (None for a delete, a Workflow, a
disabled Trigger or one that cannot be served)."""

Op = Literal["create", "update", "delete", "unchanged"]

OPS: tuple[Op, ...] = ("create", "update", "delete", "unchanged")

SYMBOLS: dict[Op, str] = {"create": "+", "update": "~", "delete": "-", "unchanged": " "}
"""The `terraform plan` / `kubectl diff` marks."""


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """What happens to one resource at the swap.

    `old`/`new` are digests (of the canonical form; for a FlowBinding the effective digest,
    which covers everything it resolves to); `reason` says why an update happens
    (`spec changed`, `uses Agent/k8s-ops (changed)`); `path` is where the resource is defined
    (empty for a delete).
    """

    op: Op
    key: ids.ResourceKey
    old: ids.Digest | None = None
    new: ids.Digest | None = None
    reason: str = ""
    path: str = ""
    spec: Spec = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def is_change(self) -> bool:
        return self.op != "unchanged"

    def as_dict(self) -> dict[str, str | None]:
        return {
            "action": self.op,
            "kind": self.key.kind.value,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "old": self.old,
            "new": self.new,
            "reason": self.reason,
            "path": self.path,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerAction:
    """Start (`create`), replace (`update`) or retire (`delete`) one Trigger's listener.

    `spec` is what to serve (None for a delete); `old`/`new` are listener config digests.
    """

    op: Op
    trigger: str
    spec: listeners.ListenerSpec | None = None
    old: str | None = None
    new: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"action": self.op, "trigger": self.trigger, "old": self.old, "new": self.new}


def _up(action: Action) -> tuple[int, str, str, str]:
    key = action.key
    return (key.kind.layer, key.kind.value, key.namespace, key.name)


def _down(action: Action) -> tuple[int, str, str, str]:
    key = action.key
    return (-key.kind.layer, key.kind.value, key.namespace, key.name)


def ordered(changes: Iterable[Action]) -> tuple[Action, ...]:
    """Changes in apply order: creates/updates up the layers, then deletes down them.

    Unchanged actions are not part of the order (they are not applied); `Plan.unchanged`
    keeps them in the desired state's order, which keeps a no-op plan cheap at any size.
    """
    items = [a for a in changes if a.op != "unchanged"]
    forward = sorted((a for a in items if a.op != "delete"), key=_up)
    deletes = sorted((a for a in items if a.op == "delete"), key=_down)
    return (*forward, *deletes)
