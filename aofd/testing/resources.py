"""Builders for resources as the planner hands them on, without YAML, and their compiled forms.

A test that needs a `LoadedResource` (a validated model plus the document it came from) builds
it with `trigger`, `context`, `agent`, `fleet`, `flow` (or `loaded(kind, model)` for any model);
no file is parsed, and every position points at line 1, column 1 (`FakeDocument`). `binding`
and `bind` make the `ResolvedBinding` the planner would, `state` a whole `DesiredState`, and
`compiled`, `binding_spec`, `run_plan` and `guard_policy` put them through the real compile
stage (`aofd.plan.compiler`), raising `CompileError` when it finds an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from aofd.plan import compiler, desired
from aofd.resources import ids
from aofd.resources.kinds import agent as agent_kind
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import binding as binding_kind
from aofd.resources.kinds import context as context_kind
from aofd.resources.kinds import fleet as fleet_kind
from aofd.resources.kinds import flow as flow_kind
from aofd.resources.kinds import trigger as trigger_kind
from aofd.specs import bindings, flows, policy

PATH = "test.yaml"
"""The path every built resource claims to come from."""

LoadedResource = kinds_base.LoadedResource


@dataclasses.dataclass(frozen=True)
class FakeDocument:
    """A `DocumentLike` with no positions: every location is reported at (1, 1)."""

    path: str = PATH
    index: int = 0
    line: int = 1
    col: int = 1
    data: object = None
    positions: Mapping[tuple[str | int, ...], tuple[int, int]] = dataclasses.field(default_factory=dict)

    def position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        return (1, 1)

    def key_position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        return (1, 1)


def loaded(kind: ids.Kind, model: kinds_base.ResourceModel) -> LoadedResource:
    """`model` as a `LoadedResource` of `kind`, named by its metadata, from a `FakeDocument`."""
    key = ids.ResourceKey.of(kind, model.metadata.name)
    return kinds_base.LoadedResource(key=key, model=model, doc=FakeDocument(), path=PATH, line=1, col=1)


def _doc(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "aof.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": dict(spec)}


def trigger(name: str, type_: str, *, enabled: bool = True, **config: Any) -> LoadedResource:
    """A Trigger resource of `type_` with `config` (already substituted)."""
    spec = {"type": type_, "config": config, "enabled": enabled}
    return loaded(ids.Kind.TRIGGER, trigger_kind.Trigger.model_validate(_doc("Trigger", name, spec)))


def context(name: str, **spec: Any) -> LoadedResource:
    return loaded(ids.Kind.CONTEXT, context_kind.Context.model_validate(_doc("Context", name, spec)))


def agent(name: str, **spec: Any) -> LoadedResource:
    return loaded(ids.Kind.AGENT, agent_kind.Agent.model_validate(_doc("Agent", name, spec)))


def fleet(name: str, **spec: Any) -> LoadedResource:
    return loaded(ids.Kind.FLEET, fleet_kind.AgentFleet.model_validate(_doc("AgentFleet", name, spec)))


def flow(name: str, **spec: Any) -> LoadedResource:
    return loaded(ids.Kind.FLOW, flow_kind.AgentFlow.model_validate(_doc("AgentFlow", name, spec)))


def binding(
    name: str,
    trigger_res: LoadedResource,
    *,
    context_name: str = "default-ctx",
    filters: Mapping[str, Any] | None = None,
    match: Mapping[str, Any] | None = None,
    enabled: bool = True,
) -> desired.ResolvedBinding:
    """A ResolvedBinding on `trigger_res` with the seed's `trigger.config` filters and upstream's `match`.

    It runs an (empty) flow named `flow-<name>` under the Context `context_name`.
    """
    spec: dict[str, Any] = {
        "flow": {"name": "flow-" + name},
        "context": {"name": context_name},
        "trigger": {"name": trigger_res.name, "config": dict(filters or {})},
        "enabled": enabled,
    }
    if match:
        spec["match"] = dict(match)
    model = binding_kind.FlowBinding.model_validate(_doc("FlowBinding", name, spec))
    return desired.ResolvedBinding(
        name=name,
        key=ids.ResourceKey.of(ids.Kind.BINDING, name),
        binding=loaded(ids.Kind.BINDING, model),
        flow=None,
        agent=None,
        fleet=None,
        context=context(context_name),
        trigger=trigger_res,
        agents={},
        fleets={},
        digest=ids.Digest("sha256:" + name),
        enabled=enabled,
    )


def bind(
    name: str,
    *,
    ctx: LoadedResource,
    flow_res: LoadedResource | None = None,
    agent_res: LoadedResource | None = None,
    agents: Sequence[LoadedResource] = (),
    fleets: Sequence[LoadedResource] = (),
    digest: str = "",
    trigger_res: LoadedResource | None = None,
) -> desired.ResolvedBinding:
    """A ResolvedBinding of `flow_res` (or `agent_res`) under `ctx`, with the agents and fleets it reaches."""
    slack = trigger("slack-bot", "Slack", bot_token="x", signing_secret="y")  # noqa: S106 - a test stand-in
    base = binding(name, trigger_res or slack)
    return dataclasses.replace(
        base,
        flow=flow_res,
        agent=agent_res,
        context=ctx,
        agents={a.name: a for a in [*agents, *([agent_res] if agent_res else [])]},
        fleets={f.name: f for f in fleets},
        digest=ids.Digest("sha256:" + (digest or name)),
    )


def state(
    resolved: Iterable[desired.ResolvedBinding] = (),
    *,
    resources: Iterable[LoadedResource] = (),
    revision: str = "r1",
) -> desired.DesiredState:
    """The desired state holding `resolved` bindings, every resource they reach, and `resources`."""
    found: dict[ids.ResourceKey, LoadedResource] = {}
    digests: dict[ids.ResourceKey, ids.Digest] = {}
    by_id: dict[str, desired.ResolvedBinding] = {}
    for bound in resolved:
        by_id[desired.binding_id(bound.key)] = bound
        parts = (bound.flow, bound.agent, bound.fleet, bound.context, bound.trigger)
        for res in (*parts, *bound.agents.values(), *bound.fleets.values()):
            if res is not None:
                found[res.key] = res
        found[bound.key] = bound.binding
    for res in resources:
        found[res.key] = res
    for key, res in found.items():
        digests[key] = kinds_base.digest(res.model)
    return desired.DesiredState(
        revision=revision,
        sources={},
        resources=MappingProxyType(found),
        digests=MappingProxyType(digests),
        bindings=MappingProxyType(by_id),
        issues=(),
    )


def compiled(
    resolved: Iterable[desired.ResolvedBinding] = (),
    *,
    resources: Iterable[LoadedResource] = (),
    revision: str = "r1",
    options: compiler.Options | None = None,
) -> compiler.Compiled:
    """`state(...)` compiled. Raises `compiler.CompileError` when the compile stage finds an error."""
    result = compiler.build(state(resolved, resources=resources, revision=revision), options=options)
    if not result.ok:
        raise compiler.CompileError(result.errors)
    return result


def binding_spec(
    resolved: desired.ResolvedBinding, *, options: compiler.Options | None = None
) -> bindings.BindingSpec:
    """One binding compiled on its own (with everything it resolves to)."""
    return compiled([resolved], options=options).bindings[desired.binding_id(resolved.key)]


def run_plan(resolved: desired.ResolvedBinding, *, options: compiler.Options | None = None) -> flows.RunPlan:
    """The `RunPlan` a run of `resolved` executes."""
    return binding_spec(resolved, options=options).plan


def guard_policy(
    ctx: LoadedResource, *, tools: frozenset[str] = policy.NAMESPACED_TOOLS
) -> policy.GuardPolicy:
    """A Context's compiled guard policy. Raises ValueError naming the first problem."""
    model = ctx.model
    if not isinstance(model, context_kind.Context):
        raise TypeError(f"{ctx.key} is not a Context")
    compiled_policy, problems = policy.compile_context(model, tools=tools)
    if problems:
        raise ValueError(f"{ctx.key}: {problems[0].message}")
    return compiled_policy
