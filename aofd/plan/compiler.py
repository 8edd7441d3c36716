"""The compile stage: a desired state -> the typed, immutable specs the runtime executes; pure.

This module owns `build()`, the step DESIGN.md section 2 calls "compiled specs". From a
`DesiredState` (parsed, validated, resolved, substituted) it makes, once per revision:

- per Context its `GuardPolicy` (every command pattern parsed once) and `ContextView`;
- per Agent, AgentFleet and AgentFlow its `AgentSpec`, `FleetSpec` and `FlowSpec`;
- per FlowBinding its `BindingSpec`: the `RunPlan` its runs execute, the models it needs, and
  whether the files alone say it takes no events (disabled, no Trigger, a Trigger type aofd
  does not serve, a disabled Trigger);
- per webhook Trigger, and per pulling Trigger (schedule, polling) that an active binding uses,
  its `ListenerSpec` (cron and time zone parsed, secrets substituted, config digest) and its
  `TriggerRoutes` (the routing table's entries);
- every static problem, as an `Issue` at the file, line and column of the value at fault,
  among them the warnings about approval settings that cannot all hold (`aofd.specs.approvers`:
  per Context, and per binding at each Approval node of its flow, judged under its Context).

`aofctl validate`, `aofctl diff`, `aofctl graph` and the daemon all call this one function, so
what validate accepts the daemon applies whole. What is left for apply are facts of the host
(a kubeconfig file missing here, a provider's SDK or key, a port, a connection).

Work follows the change: a no-op revision reuses the previous result, and a revision whose
`DesiredState.delta` names the keys that changed recompiles only those, the fleets whose
member Agents changed, the bindings that reach them, and the routes of the Triggers whose
bindings changed how they route (a binding's routes name it; its plan is looked up per event,
so a changed agent rebuilds no route). The result equals a full compile (a property the tests
check).

Pure: no I/O, no clock, no logging; the only state is the caller-owned `Cache`.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from aofd import errors, settings
from aofd.plan import desired, extract, persistent
from aofd.resources import ids
from aofd.resources.kinds import agent as agent_kind
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import binding as binding_kind
from aofd.resources.kinds import context as context_kind
from aofd.resources.kinds import fleet as fleet_kind
from aofd.resources.kinds import flow as flow_kind
from aofd.resources.kinds import trigger as trigger_kind
from aofd.specs import approvers, http_policy, policy
from aofd.specs import bindings as binding_specs
from aofd.specs import flows as flow_specs
from aofd.specs import listeners as listener_specs
from aofd.specs import routes as route_specs
from aofd.specs.problems import Problem

Kind = ids.Kind
Key = ids.ResourceKey
_Issue = errors.Issue  # `Compiled.errors` shadows the module name inside the class
LoadedResource = kinds_base.LoadedResource


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """What the daemon config decides about compiling: which first words make a command shape
    (`policy.known_tools` of the pinned executables) and what HTTP nodes may reach."""

    tools: frozenset[str] = policy.NAMESPACED_TOOLS
    http: http_policy.HttpPolicy = dataclasses.field(default_factory=http_policy.HttpPolicy)
    trigger_base_urls: frozenset[str] = frozenset()

    @classmethod
    def of(cls, cfg: settings.DaemonConfig) -> Options:
        return cls(
            tools=policy.known_tools(cfg.executables.paths),
            trigger_base_urls=frozenset(cfg.platforms.trigger_base_urls) | _platform_urls(cfg.platforms),
        )


def _platform_urls(platforms: settings.PlatformsSpec) -> frozenset[str]:
    """The API addresses the daemon config itself names (`platforms.*_api_url`): a Trigger may name
    them too (upstream's GitLab example writes `api_url: https://gitlab.com/api/v4`)."""
    return frozenset(
        str(value).rstrip("/")
        for name, value in platforms.model_dump().items()
        if name.endswith("_api_url") and isinstance(value, str)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ContextSpec:
    """One compiled Context: the guard's policy, the view runs read, where its audit log goes."""

    key: Key
    name: str
    policy: policy.GuardPolicy
    view: flow_specs.ContextView
    audit_log_path: str | None
    digest: ids.Digest


@dataclasses.dataclass(frozen=True, slots=True)
class Compiled:
    """Everything one revision runs as, compiled; `ok` is False when any issue is an error.

    `listeners` and `routes` hold every served webhook Trigger and the pulling Triggers that at
    least one active binding uses (`ListenerSpec.pulls`); `triggers`
    holds every Trigger's spec (None when it is disabled or cannot be served), `users` the active
    bindings of each Trigger (served or not). `problems` are the compile stage's own issues by resource
    (`problem_issues` the same, sorted); `issues` are the desired state's and those, in order.
    `agent_fleets` is the reverse of fleet membership (Agent -> the fleets naming it);
    `context_keys` the Contexts of each name (more than one is an error: see `_context`).
    """

    desired: desired.DesiredState
    contexts: Mapping[str, ContextSpec]
    agents: Mapping[Key, flow_specs.AgentSpec]
    fleets: Mapping[Key, flow_specs.FleetSpec]
    flows: Mapping[Key, flow_specs.FlowSpec]
    bindings: Mapping[str, binding_specs.BindingSpec]
    listeners: Mapping[str, listener_specs.ListenerSpec]
    routes: Mapping[str, route_specs.TriggerRoutes]
    issues: tuple[errors.Issue, ...]
    triggers: Mapping[str, listener_specs.ListenerSpec | None]
    users: Mapping[str, tuple[str, ...]]
    problems: Mapping[Key, tuple[errors.Issue, ...]]
    problem_issues: tuple[errors.Issue, ...]
    agent_fleets: Mapping[Key, frozenset[Key]]
    context_keys: Mapping[str, tuple[Key, ...]]

    @property
    def revision(self) -> str:
        return self.desired.revision

    @property
    def ok(self) -> bool:
        return self.desired.ok and not any(i.is_error for i in self.problem_issues)

    @property
    def errors(self) -> tuple[_Issue, ...]:
        return tuple(i for i in self.issues if i.is_error)

    @property
    def warnings(self) -> tuple[_Issue, ...]:
        return tuple(i for i in self.issues if not i.is_error)

    def agent(self, name: str, namespace: str = ids.DEFAULT_NAMESPACE) -> flow_specs.AgentSpec | None:
        return self.agents.get(Key(Kind.AGENT, namespace, name))

    def fleet(self, name: str, namespace: str = ids.DEFAULT_NAMESPACE) -> flow_specs.FleetSpec | None:
        return self.fleets.get(Key(Kind.FLEET, namespace, name))

    def flow(self, name: str, namespace: str = ids.DEFAULT_NAMESPACE) -> flow_specs.FlowSpec | None:
        return self.flows.get(Key(Kind.FLOW, namespace, name))

    @classmethod
    def empty(cls) -> Compiled:
        return build(desired.DesiredState.empty())


class CompileError(errors.Stalled):
    """A compile was asked to succeed and found errors; `issues` say where and why."""

    def __init__(self, issues: Iterable[errors.Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(i.format() for i in self.issues))


_Found = tuple[_Issue, ...]


class _Restart(Exception):
    """An incremental build cannot be trusted (two Contexts share a name, or did): build all."""


class Cache:
    """The last result, so the next build costs what changed; owned by one caller, not thread-safe.

    Invariant: `last` was compiled under `options`; other options start from nothing.
    """

    def __init__(self) -> None:
        self.options: Options | None = None
        self.last: Compiled | None = None


# --- build ----------------------------------------------------------------------------------


def build(
    state: desired.DesiredState, *, options: Options | None = None, cache: Cache | None = None
) -> Compiled:
    """Compile `state` (which need not be `ok`: its issues are carried over and sorted in).

    Args:
        state: the desired state of one composite revision.
        options: what the daemon config decides (default: kubectl and helm, the default HTTP policy).
        cache: memo shared between builds; pass the same one every time for incremental builds.
    """
    options = options or Options()
    cache = cache if cache is not None else Cache()
    if cache.options != options:
        cache.options, cache.last = options, None
    last = cache.last
    delta = state.delta
    if (
        last is not None
        and delta is not None
        and delta.base_digests is last.desired.digests
        and delta.base_bindings is last.desired.bindings
    ):
        if delta.keys:
            try:
                compiled = _Run(state, options, last).update(delta.keys)
            except _Restart:
                compiled = _Run(state, options, None).update(None)
        else:
            issues = (
                last.issues if state.issues is last.desired.issues else _merge(state, last.problem_issues)
            )
            compiled = dataclasses.replace(last, desired=state, issues=issues)
    else:
        compiled = _Run(state, options, None).update(None)
    cache.last = compiled
    return compiled


def _merge(state: desired.DesiredState, found: tuple[_Issue, ...]) -> tuple[_Issue, ...]:
    """The desired state's issues and the compile stage's, both sorted, merged in order."""
    if not found:
        return state.issues
    if not state.issues:
        return found
    return tuple(heapq.merge(state.issues, found, key=_issue_order))


K = TypeVar("K")
V = TypeVar("V")


class _Overlay(Generic[K, V]):
    """A map read from the last result, written as a set of changes: the result shares every
    part of the last result's map the build did not change (`aofd.plan.persistent`)."""

    __slots__ = ("_base", "_changes", "_result")

    def __init__(self, base: Mapping[K, V] | None) -> None:
        self._base: persistent.PMap[K, V] = (
            base if isinstance(base, persistent.PMap) else persistent.PMap(base or {})
        )
        self._changes: dict[K, V | persistent.Missing] = {}
        self._result: persistent.PMap[K, V] | None = self._base

    @property
    def changed(self) -> bool:
        return bool(self._changes)

    def get(self, key: K) -> V | None:
        if key in self._changes:
            value = self._changes[key]
            return None if isinstance(value, persistent.Missing) else value
        return self._base.get(key)

    def __contains__(self, key: object) -> bool:
        if key in self._changes:
            return not isinstance(self._changes[key], persistent.Missing)
        return key in self._base

    def __iter__(self) -> Iterator[K]:
        return iter(self.result())

    def set(self, key: K, value: V) -> None:
        self._changes[key] = value
        self._result = None

    def pop(self, key: K) -> V | None:
        if key not in self:
            return None
        value = self.get(key)
        self._changes[key] = persistent.REMOVE
        self._result = None
        return value

    def result(self) -> Mapping[K, V]:
        """The map: the last result's own object when nothing was written."""
        if self._result is None:
            self._result = self._base.updated(self._changes)
        return self._result


class _SortedOverlay(Generic[K, V]):
    """A small map kept in key order (the listeners): copied on the first write."""

    __slots__ = ("_base", "_own")

    def __init__(self, base: Mapping[K, V] | None) -> None:
        self._base: Mapping[K, V] = base if base is not None else {}
        self._own: dict[K, V] | None = None if base is not None else {}

    def _write(self) -> dict[K, V]:
        if self._own is None:
            self._own = dict(self._base)
        return self._own

    @property
    def changed(self) -> bool:
        return self._own is not None

    def get(self, key: K) -> V | None:
        return (self._own if self._own is not None else self._base).get(key)

    def set(self, key: K, value: V) -> None:
        self._write()[key] = value

    def pop(self, key: K) -> V | None:
        if key not in (self._own if self._own is not None else self._base):
            return None
        return self._write().pop(key)

    def result(self) -> Mapping[K, V]:
        if self._own is None:
            return self._base
        return MappingProxyType(dict(sorted(self._own.items(), key=lambda item: str(item[0]))))


class _Run:
    """One build: starting from the last result (or nothing), recompile what may have changed."""

    def __init__(self, state: desired.DesiredState, options: Options, base: Compiled | None) -> None:
        self.state = state
        self.options = options
        self.base = base
        self.contexts: _Overlay[str, ContextSpec] = _Overlay(base.contexts if base else None)
        self.agents: _Overlay[Key, flow_specs.AgentSpec] = _Overlay(base.agents if base else None)
        self.fleets: _Overlay[Key, flow_specs.FleetSpec] = _Overlay(base.fleets if base else None)
        self.flows: _Overlay[Key, flow_specs.FlowSpec] = _Overlay(base.flows if base else None)
        self.triggers: _Overlay[str, listener_specs.ListenerSpec | None] = _Overlay(
            base.triggers if base else None
        )
        self.bindings: _Overlay[str, binding_specs.BindingSpec] = _Overlay(base.bindings if base else None)
        self.users: _Overlay[str, tuple[str, ...]] = _Overlay(base.users if base else None)
        self.listeners: _SortedOverlay[str, listener_specs.ListenerSpec] = _SortedOverlay(
            base.listeners if base else None
        )
        self.routes: _Overlay[str, route_specs.TriggerRoutes] = _Overlay(base.routes if base else None)
        self.problems: _Overlay[Key, _Found] = _Overlay(base.problems if base else None)
        self.agent_fleets: _Overlay[Key, frozenset[Key]] = _Overlay(base.agent_fleets if base else None)
        self.context_keys: _Overlay[str, tuple[Key, ...]] = _Overlay(base.context_keys if base else None)
        self._problems_changed = base is None

    def update(self, keys: Iterable[Key] | None) -> Compiled:
        """Recompile `keys` (None: everything) and the fleets, listeners and routes they reach.

        `keys` come from `DesiredState.delta`, which lists every binding that reaches a changed
        resource; so a binding not listed resolves to the same specs as before.
        """
        state = self.state
        todo = sorted(state.resources if keys is None else keys, key=_layer_order)
        self._index_contexts(k for k in todo if k.kind is Kind.CONTEXT)
        triggers: set[str] = set()
        fleets: set[Key] = set()
        binding_keys: list[Key] = []
        for key in todo:
            kind = key.kind
            if kind is Kind.BINDING:
                binding_keys.append(key)
                continue
            resource = state.resources.get(key)
            if kind is Kind.CONTEXT:
                self._context(key, resource)
            elif kind is Kind.AGENT:
                self._agent(key, resource)
                fleets |= self.agent_fleets.get(key) or frozenset()
            elif kind is Kind.FLOW:
                self._flow(key, resource)
            elif kind is Kind.FLEET:
                fleets.add(key)
            elif kind is Kind.TRIGGER:
                triggers.add(key.name)
                self._trigger(key, resource)
        # Fleets name their members' Agents by name, so they come after every Agent of the revision.
        for key in sorted(fleets):
            self._fleet(key, state.resources.get(key))
        routed: set[str] = set()
        for key in binding_keys:
            self._binding(key, triggers, routed)
        self._serve(triggers, routed)
        problem_issues = self.base.problem_issues if self.base is not None else ()
        if self._problems_changed:
            problem_issues = tuple(sorted({i for group in self.problems.result().values() for i in group}))
        listeners = self.listeners.result()
        return Compiled(
            desired=state,
            contexts=self.contexts.result(),
            agents=self.agents.result(),
            fleets=self.fleets.result(),
            flows=self.flows.result(),
            bindings=self.bindings.result(),
            listeners=listeners,
            routes=self.routes.result(),
            issues=_merge(state, problem_issues),
            triggers=self.triggers.result(),
            users=self.users.result(),
            problems=self.problems.result(),
            problem_issues=problem_issues,
            agent_fleets=self.agent_fleets.result(),
            context_keys=self.context_keys.result(),
        )

    def _serve(self, triggers: set[str], routed: set[str]) -> None:
        """The listener and routes of each of `triggers`, from its active bindings (a webhook
        Trigger is served with none: `ListenerSpec.pulls`).

        `routed` are the bindings whose routes may differ from the last result's (new, deleted,
        edited, or active no longer or again); every other binding keeps its place.
        """
        active: dict[str, set[str]] = {name: set() for name in triggers}
        for name in triggers:
            active[name].update(b for b in self.users.get(name) or () if b not in routed)
        for binding_id in routed:
            spec = self.bindings.get(binding_id)
            if spec is not None and spec.inactive is None and spec.trigger in active:
                active[spec.trigger].add(binding_id)
        for name, used in active.items():
            # `users` are kept even while the Trigger cannot be served (an error in its own file):
            # once it is fixed, its bindings are unchanged and are found here again.
            listener = self.triggers.get(name)
            ordered = tuple(sorted(used))
            if ordered:
                self.users.set(name, ordered)
            else:
                self.users.pop(name)
            # A webhook Trigger keeps its listener with no binding at all (handshakes and pings are
            # answered, signatures checked, events get "no flow bound"); a pulling one does not.
            if listener is not None and (ordered or not listener.pulls):
                self.listeners.set(name, listener)
                self.routes.set(name, self._routes(name, ordered))
            else:
                self.listeners.pop(name)
                self.routes.pop(name)

    def _report(
        self,
        key: Key,
        resource: LoadedResource | None,
        problems: Iterable[Problem],
        elsewhere: Iterable[_Issue] = (),
    ) -> None:
        """Record the problems of `key` (replacing its last ones); `elsewhere` are issues of `key`
        found in another resource's file (a binding's, in the flow it runs)."""
        found: list[_Issue] = list(elsewhere)
        if resource is not None:
            for problem in problems:
                line, col = extract.position(resource, problem.loc)
                message = f"{resource.key}: {problem.message}"
                found.append(_Issue(resource.path, line, col, problem.severity, message, problem.code))
        old = self.problems.get(key)
        new = tuple(found)
        if (old or ()) == new:
            return
        self._problems_changed = True
        if new:
            self.problems.set(key, new)
        else:
            self.problems.pop(key)

    # -- per kind -------------------------------------------------------------------------------

    def _index_contexts(self, keys: Iterable[Key]) -> None:
        """Keep `context_keys` up to date for the Contexts of this build.

        The runtime keeps a Context's audit log, guard policy and rate limits by its name, so two
        Contexts may not share one, whatever their namespaces. Resolving which spec a name means
        while two exist (and again once one goes) touches bindings outside the delta, so an
        incremental build that meets a shared name, now or before, starts over in full.
        """
        for key in keys:
            before = self.context_keys.get(key.name) or ()
            after = tuple(sorted({*before, key} if key in self.state.resources else set(before) - {key}))
            if self.base is not None and (len(before) > 1 or len(after) > 1):
                raise _Restart
            if after:
                self.context_keys.set(key.name, after)
            else:
                self.context_keys.pop(key.name)

    def _context(self, key: Key, resource: LoadedResource | None) -> None:
        if resource is None:
            self.contexts.pop(key.name)
            self._report(key, None, ())
            return
        model = resource.model
        assert isinstance(model, context_kind.Context)
        guard_policy, found = policy.compile_context(model, tools=self.options.tools)
        problems = list(found)
        problems.extend(self._shared_name(o) for o in self.context_keys.get(key.name) or () if o != key)
        problems.extend(approvers.context_problems(model.spec.approval))
        audit = model.spec.audit
        spec = ContextSpec(
            key=key,
            name=key.name,
            policy=guard_policy,
            view=flow_specs.context_view(model),
            audit_log_path=audit.log_path if audit is not None else None,
            digest=self.state.digests[key],
        )
        self.contexts.set(key.name, spec)
        self._report(key, resource, problems)

    def _shared_name(self, other: Key) -> Problem:
        resource = self.state.resources[other]
        line, col = extract.position(resource, ("metadata", "name"))
        return Problem(
            ("metadata", "name"),
            f"the name {other.name!r} is also the name of {other} ({resource.path}:{line}:{col}); Context "
            "names are global in aofd (audit logs, guard policies and rate limits are kept by name)",
            code="duplicate",
        )

    def _agent(self, key: Key, resource: LoadedResource | None) -> None:
        if resource is None:
            self.agents.pop(key)
            self._report(key, None, ())
            return
        model = resource.model
        assert isinstance(model, agent_kind.Agent)
        spec = flow_specs.agent_spec(key.name, model.spec)
        self.agents.set(key, spec)
        self._report(key, resource, flow_specs.agent_problems(spec, ("spec",), member=False))

    def _flow(self, key: Key, resource: LoadedResource | None) -> None:
        if resource is None:
            self.flows.pop(key)
            self._report(key, None, ())
            return
        model = resource.model
        assert isinstance(model, flow_kind.AgentFlow)
        spec, problems = flow_specs.flow_spec(key.name, model.spec, http=self.options.http)
        self.flows.set(key, spec)
        self._report(key, resource, problems)

    def _fleet(self, key: Key, resource: LoadedResource | None) -> None:
        self.fleets.pop(key)
        before = self.base.desired.resources.get(key) if self.base is not None else None
        if before is not None:  # forget where its members were named (resolved or not)
            assert isinstance(before.model, fleet_kind.AgentFleet)
            for member in before.model.spec.agents:
                if member.is_reference:
                    self._index(Key(Kind.AGENT, key.namespace, member.name), key, add=False)
        if resource is None:
            self._report(key, None, ())
            return
        model = resource.model
        assert isinstance(model, fleet_kind.AgentFleet)
        named: dict[str, flow_specs.AgentSpec] = {}
        for member in model.spec.agents:
            if member.is_reference:
                agent_key = Key(Kind.AGENT, key.namespace, member.name)
                self._index(agent_key, key, add=True)
                agent = self.agents.get(agent_key)
                if agent is not None:
                    named[member.name] = agent
        spec, problems = flow_specs.fleet_spec(key.name, model.spec, named)
        self.fleets.set(key, spec)
        # A member naming no Agent is reported by the reference check already.
        self._report(key, resource, [p for p in problems if p.code != "ref-missing"])

    def _index(self, agent: Key, fleet: Key, *, add: bool) -> None:
        """Keep `agent_fleets` the reverse of fleet membership (by name, resolved or not)."""
        current = self.agent_fleets.get(agent) or frozenset()
        updated = current | {fleet} if add else current - {fleet}
        if updated == current:
            return
        if updated:
            self.agent_fleets.set(agent, updated)
        else:
            self.agent_fleets.pop(agent)

    def _trigger(self, key: Key, resource: LoadedResource | None) -> None:
        if resource is None:
            self.triggers.pop(key.name)
            self._report(key, None, ())
            return
        model = resource.model
        assert isinstance(model, trigger_kind.Trigger)
        if not model.spec.enabled:
            self.triggers.set(key.name, None)
            self._report(key, resource, ())
            return
        spec, problems = listener_specs.compile_trigger(model, self.state.digests.get(key, ""))
        problems += route_specs.pattern_problems(model.spec.config.patterns, ("spec", "config", "patterns"))
        allowed = self.options.trigger_base_urls
        for field in ("base_url", "api_url"):
            url = getattr(model.spec.config, field)
            if url is not None and url not in allowed and url.rstrip("/") not in allowed:
                # The listener sends the Trigger's tokens there: whoever can push a Trigger could name
                # `${SLACK_BOT_TOKEN}` and their own server. The daemon's operator decides instead.
                problems.append(
                    Problem(
                        ("spec", "config", field),
                        f"config.{field}: a Trigger's API address comes from the daemon config "
                        "(platforms.*_api_url); list it in platforms.trigger_base_urls to allow it here",
                    )
                )
        self.triggers.set(key.name, spec)
        self._report(key, resource, problems)

    def _binding(self, key: Key, triggers: set[str], routed: set[str]) -> None:
        """Recompile one binding; note the triggers whose routes it may change (`triggers`, `routed`)."""
        binding_id = desired.binding_id(key)
        old = self.bindings.pop(binding_id)
        resolved = self.state.bindings.get(binding_id)
        new: binding_specs.BindingSpec | None = None
        if resolved is None:
            self._report(key, None, ())
        else:
            new = assemble(
                resolved,
                contexts=self.contexts.result(),
                agents=self.agents.result(),
                fleets=self.fleets.result(),
                flows=self.flows.result(),
            )
            model = resolved.binding.model
            assert isinstance(model, binding_kind.FlowBinding)
            problems = route_specs.pattern_problems(model.spec.match.patterns, ("spec", "match", "patterns"))
            if model.spec.trigger is not None:  # the seed's filters, beside the trigger reference
                loc = ("spec", "trigger", "config", "patterns")
                problems += route_specs.pattern_problems(model.spec.trigger.config.patterns, loc)
            self._report(key, resolved.binding, problems, _approval_node_issues(resolved))
            self.bindings.set(binding_id, new)
        base_digests = self.base.desired.digests if self.base is not None else {}
        if (
            old is not None
            and new is not None
            and (old.trigger, old.inactive, old.context) == (new.trigger, new.inactive, new.context)
            and base_digests.get(key) == self.state.digests.get(key)
        ):
            return  # routes name the binding, and its own spec did not change how it routes
        routed.add(binding_id)
        for spec in (old, new):
            if spec is not None and spec.trigger is not None:
                triggers.add(spec.trigger)

    def _routes(self, trigger: str, used: tuple[str, ...]) -> route_specs.TriggerRoutes:
        resource = self.state.get(Kind.TRIGGER, trigger)
        assert resource is not None
        model = resource.model
        assert isinstance(model, trigger_kind.Trigger)
        gate = route_specs.Gate.of(model)
        entries = []
        for binding_id in used:
            binding = self.state.bindings[binding_id].binding.model
            spec = self.bindings.get(binding_id)
            assert isinstance(binding, binding_kind.FlowBinding)
            assert spec is not None
            entries.append(
                route_specs.Route.of(binding_id, spec.context, binding.spec.filters(), gate_score=gate.score)
            )
        return route_specs.TriggerRoutes.build(gate, entries)


def _approval_node_issues(resolved: desired.ResolvedBinding) -> list[_Issue]:
    """Warnings, at each Approval node of the binding's flow, about approvers its Context makes
    impossible (`approvers.node_problems`); the Context is the binding's, so the flow's file gets
    one warning per binding that runs it under such a Context."""
    flow_res, context_res = resolved.flow, resolved.context
    if flow_res is None or context_res is None:
        return []
    flow_model, context_model = flow_res.model, context_res.model
    if not isinstance(flow_model, flow_kind.AgentFlow) or not isinstance(context_model, context_kind.Context):
        return []
    line, _ = extract.position(context_res, ())
    where = f"{context_res.path}:{line}"
    found: list[_Issue] = []
    for index, node in enumerate(flow_model.spec.nodes):
        if node.type is not flow_kind.NodeType.APPROVAL:
            continue
        messages = approvers.node_problems(
            node.id,
            node.config.approvers,
            context_model.spec.approval,
            context=context_res.name,
            where=where,
        )
        loc: tuple[str | int, ...] = ("spec", "nodes", index, "config")
        loc = (*loc, "approvers") if node.config.approvers else ("spec", "nodes", index)
        at_line, at_col = extract.position(flow_res, loc)
        for message in messages:
            text = f"{flow_res.key}: {message} (FlowBinding {resolved.name})"
            found.append(_Issue(flow_res.path, at_line, at_col, "warning", text, "approval-unreachable"))
    return found


def _layer_order(key: Key) -> tuple[int, str, str, str]:
    return (key.kind.layer, key.kind.value, key.namespace, key.name)


def assemble(
    resolved: desired.ResolvedBinding,
    *,
    contexts: Mapping[str, ContextSpec],
    agents: Mapping[Key, flow_specs.AgentSpec],
    fleets: Mapping[Key, flow_specs.FleetSpec],
    flows: Mapping[Key, flow_specs.FlowSpec],
) -> binding_specs.BindingSpec:
    """One binding's spec from the compiled parts it resolves to (see `BindingSpec`)."""
    binding_id = desired.binding_id(resolved.key)
    agent_specs = {name: agents[res.key] for name, res in resolved.agents.items() if res.key in agents}
    fleet_specs = {name: fleets[res.key] for name, res in resolved.fleets.items() if res.key in fleets}
    flow_res = resolved.flow
    if flow_res is not None and flow_res.key in flows:
        flow = flows[flow_res.key]
    elif resolved.agent is not None:
        flow = flow_specs.single_node(resolved.agent.name, "agent")
    elif resolved.fleet is not None:
        flow = flow_specs.single_node(resolved.fleet.name, "fleet")
    else:  # validation requires a flow, agent or fleet; an empty flow never runs anything
        flow = flow_specs.FlowSpec(resolved.name, (), (), ())
    context_name = resolved.context.name if resolved.context is not None else ""
    context = contexts.get(context_name)
    view = context.view if context is not None else flow_specs.ContextView(context_name)
    plan = flow_specs.RunPlan(binding_id, flow, agent_specs, fleet_specs, view, str(resolved.digest))
    return binding_specs.BindingSpec(
        id=binding_id,
        name=resolved.name,
        context=context_name,
        trigger=resolved.trigger.name if resolved.trigger is not None else None,
        plan=plan,
        models=flow_specs.model_refs(plan),
        mcp=flow_specs.mcp_servers(plan),
        digest=str(resolved.digest),
        inactive=_inactive(resolved),
    )


def _inactive(resolved: desired.ResolvedBinding) -> binding_specs.Inactive | None:
    """Why the files alone say a binding takes no events, or None."""
    model = resolved.binding.model
    if isinstance(model, binding_kind.FlowBinding) and not model.spec.enabled:
        return binding_specs.Inactive("Disabled", "disabled (enabled: false)")
    if resolved.trigger is None:
        return binding_specs.Inactive("NoTrigger", "no Trigger: only `aofctl run` can start it")
    trigger = resolved.trigger.model
    assert isinstance(trigger, trigger_kind.Trigger)
    if not trigger.spec.enabled:
        return binding_specs.Inactive("TriggerDisabled", f"Trigger {resolved.trigger.name} is disabled")
    if listener_specs.platform_of(trigger) not in listener_specs.PLATFORMS:
        return binding_specs.Inactive(
            "ListenerUnsupported", f"trigger type {trigger.spec.type.value} has no listener in aofd"
        )
    return None


def _issue_order(issue: errors.Issue) -> tuple[str, int, int, str]:
    return (issue.path, issue.line, issue.col, issue.message)
