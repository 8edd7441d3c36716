"""Resource stand-ins (Trigger, Context, FlowBinding as the planner resolves them) and recording
collaborators.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from aofd.plan import desired
from aofd.resources import ids
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import binding as binding_kind
from aofd.resources.kinds import context as context_kind
from aofd.resources.kinds import trigger as trigger_kind
from aofd.runtime import ports
from aofd.testing import resources as testing_resources


def trigger(name: str, type_: str, *, enabled: bool = True, **config: Any) -> kinds_base.LoadedResource:
    """A Trigger resource of `type_` with `config` (already substituted)."""
    model = trigger_kind.Trigger.model_validate(
        {
            "apiVersion": "aof.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {"type": type_, "config": config, "enabled": enabled},
        }
    )
    return testing_resources.loaded(ids.Kind.TRIGGER, model)


def context(name: str) -> kinds_base.LoadedResource:
    model = context_kind.Context.model_validate(
        {"apiVersion": "aof.dev/v1", "kind": "Context", "metadata": {"name": name}, "spec": {}}
    )
    return testing_resources.loaded(ids.Kind.CONTEXT, model)


def binding(
    name: str,
    trigger_res: kinds_base.LoadedResource,
    *,
    context_name: str = "default-ctx",
    filters: Mapping[str, Any] | None = None,
    match: Mapping[str, Any] | None = None,
    enabled: bool = True,
) -> desired.ResolvedBinding:
    """A ResolvedBinding on `trigger_res` with the seed's `trigger.config` filters and upstream's `match`."""
    spec: dict[str, Any] = {
        "flow": {"name": "flow-" + name},
        "context": {"name": context_name},
        "trigger": {"name": trigger_res.name, "config": dict(filters or {})},
        "enabled": enabled,
    }
    if match:
        spec["match"] = dict(match)
    model = binding_kind.FlowBinding.model_validate(
        {"apiVersion": "aof.dev/v1", "kind": "FlowBinding", "metadata": {"name": name}, "spec": spec}
    )
    return desired.ResolvedBinding(
        name=name,
        key=ids.ResourceKey.of(ids.Kind.BINDING, name),
        binding=testing_resources.loaded(ids.Kind.BINDING, model),
        flow=None,
        agent=None,
        fleet=None,
        context=context(context_name),
        trigger=trigger_res,
        agents={},
        fleets={},
        digest=ids.Digest("sha256:" + name),
    )


class RecordingStarter:
    """A FlowStarter that records (binding name, message) and returns sequential run ids."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ports.EventMessage]] = []
        self._ids = itertools.count(1)

    def start(self, binding: desired.ResolvedBinding, message: ports.EventMessage) -> str:
        self.calls.append((binding.name, message))
        return f"run-{next(self._ids)}"

    @property
    def bindings(self) -> list[str]:
        return [name for name, _ in self.calls]


class NoopStarter:
    """A FlowStarter that does nothing (for the benchmark)."""

    def start(self, binding: desired.ResolvedBinding, message: ports.EventMessage) -> str:
        return "run"


class RecordingAudit:
    """An AuditSink that keeps records per context."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Mapping[str, Any]]] = []

    async def write(self, context: str, record: Mapping[str, Any], *, durable: bool = False) -> None:
        self.records.append((context, record))

    def reasons(self) -> list[str]:
        return [r["event"]["reason"] for _, r in self.records]


class RecordingApprovals:
    """An ApprovalDecider that records decisions."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, bool, str]] = []

    def decide(self, request_id: str, user: ports.UserRef, approve: bool, action_id: str) -> object:
        self.decisions.append((request_id, user.id, approve, action_id))
        return None
