"""Applying a plan to the running daemon: what the host cannot run stalls, the rest swaps in at once.

The plan (`aofd.plan.diff.Plan`) carries the compiled revision and the listener actions; the
applier executes them and diffs nothing. Apply is make-before-break (DESIGN.md section 2):

1. **Facts of the host.** Each Context's kubeconfig must be usable here (readable, and any exec
   credential plugin allow-listed) and its audit log must open; each binding's models must have
   a provider that is installed and configured. What fails is Stalled with a reason, and so are
   the bindings of a stalled Context; bindings the files already mark inactive (disabled, no
   Trigger, a Trigger type without a listener) are Stalled with that reason.
2. **Listeners.** The plan's `create` and `update` actions are built from their `ListenerSpec`
   and started (a replacement first takes over what must carry across a swap, e.g. Telegram's
   polling offset); a listener that does not start stalls its Trigger and bindings, and the rest
   go on. Listeners the plan leaves alone are reused, the same objects.
3. **One swap.** The Contexts' compiled policies are published and a new `RoutingTable` (the
   compiled routes, the running listeners, the bindings that cannot run here) replaces the old
   one in one assignment.
4. **Retire.** Replaced and deleted listeners drain in the background; runs of deleted bindings
   finish within the grace period or are cancelled (and that is recorded on the run).

State that must outlive a swap (rate-limit windows, pending approvals, dedupe, audit files) is
keyed by Context or delivery id elsewhere, never held by the objects swapped here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Protocol

import structlog

from aofd import errors
from aofd.plan import actions, compiler, desired, extract
from aofd.plan import diff as diff_mod
from aofd.resources import ids
from aofd.runtime import commands, limits, ports, routing, tasks
from aofd.runtime.listeners import base as listener_base
from aofd.runtime.providers import registry
from aofd.specs import bindings, listeners, policy

log = structlog.get_logger("aofd.runtime")

Key = ids.ResourceKey


class Runs(Protocol):
    """The runs of bindings (`starter.FlowStarter`): those of deleted bindings are finished here."""

    async def finish(self, bindings: set[str], grace: float) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What the runtime made of a revision: what it could not run here and why, and which
    listeners run (trigger -> config digest: the next plan's listener inventory)."""

    stalled: Mapping[Key, str] = dataclasses.field(default_factory=dict)
    reasons: Mapping[Key, str] = dataclasses.field(default_factory=dict)
    listeners: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Applier:
    """Executes plans against the runtime; one per daemon (the reconciler's effectful half).

    Collaborators (keyword-only): the `switchboard` the server and dispatcher read, `build`
    (a `ListenerFactory`), the `providers` whose readiness decides `ProviderNotReady`, the audit
    logs to open, the shared `policies` map the command guard reads, the rate `limits` (their
    windows of removed Contexts are forgotten), the flow `starter` (runs of deleted bindings),
    the kubeconfig credential plugins allowed, and the drain grace.
    """

    def __init__(
        self,
        *,
        switchboard: routing.Switchboard,
        build: Callable[[listeners.ListenerSpec], listener_base.Listener],
        providers: registry.Providers,
        audit_logs: ports.AuditLogs,
        policies: MutableMapping[str, policy.GuardPolicy],
        limits: limits.RateLimits,
        starter: Runs,
        credential_plugins: Sequence[str] = (),
        drain_grace: float = 30.0,
    ) -> None:
        self._switchboard = switchboard
        self._build = build
        self._providers = providers
        self._audit_logs = audit_logs
        self._policies = policies
        self._limits = limits
        self._starter = starter
        self._plugins = tuple(credential_plugins)
        self._grace = drain_grace
        self._retiring: tasks.TaskSet[None] = tasks.TaskSet("retire")
        self.applied = False

    async def apply(self, plan: diff_mod.Plan) -> ApplyOutcome:
        """Execute `plan` (which carries its compiled revision); never raises for a host problem."""
        compiled = plan.compiled
        if compiled is None:
            raise ValueError("a plan to apply must carry its compiled revision (diff.compute makes one)")
        stalled: dict[Key, str] = {}
        reasons: dict[Key, str] = {}

        def stall(key: Key, reason: str, message: str) -> None:
            stalled[key] = message
            reasons[key] = reason

        policies = await self._contexts(compiled, stall)
        not_ready = self._bindings(compiled, stalled, stall)
        table = await self._listeners(plan, compiled, not_ready, stall)
        self._policies.clear()
        self._policies.update(policies)
        old = self._switchboard.swap(table)
        self.applied = True
        self._limits.forget(keep=set(policies))
        deleted = {
            desired.binding_id(a.key)
            for a in plan.changes
            if a.op == "delete" and a.key.kind is ids.Kind.BINDING
        }
        retired = [x for name, x in old.listeners.items() if table.listeners.get(name) is not x]
        if retired or deleted:
            self._retiring.spawn(self._retire(retired, deleted), name="retire-listeners")
        running = {name: x.config_digest for name, x in table.listeners.items()}
        return ApplyOutcome(
            stalled=MappingProxyType(stalled),
            reasons=MappingProxyType(reasons),
            listeners=MappingProxyType(running),
        )

    async def aclose(self) -> None:
        """Stop every listener of the current table and what is still retiring (shutdown)."""
        table = self._switchboard.swap(routing.RoutingTable.empty())
        await asyncio.gather(*(x.stop(drain=0.0) for x in table.listeners.values()), return_exceptions=True)
        await self._retiring.drain(0.0)

    # -- 1. facts of the host ---------------------------------------------------------------------

    async def _contexts(
        self, compiled: compiler.Compiled, stall: Callable[[Key, str, str], None]
    ) -> dict[str, policy.GuardPolicy]:
        """The policies of the Contexts that can serve here; stalls the others."""
        contexts = list(compiled.contexts.values())
        problems = await asyncio.to_thread(
            lambda: [commands.check_kubeconfig(c.policy.kubeconfig, self._plugins) for c in contexts]
        )
        ready: dict[str, policy.GuardPolicy] = {}
        for context, problem in zip(contexts, problems, strict=True):
            # Opened even when the kubeconfig is unusable: the events its bindings answer without
            # running, and its triggers' rejections, are audited in its own log.
            try:
                await self._audit_logs.open_context(context.name, log_path=context.audit_log_path)
            except errors.AuditUnavailable as exc:
                stall(context.key, "AuditUnavailable", f"audit log unavailable: {exc}")
                continue
            if problem is not None:
                stall(context.key, "KubeconfigUnusable", kubeconfig_message(compiled, context, problem))
                continue
            ready[context.name] = context.policy
        return ready

    def _bindings(
        self,
        compiled: compiler.Compiled,
        stalled: Mapping[Key, str],
        stall: Callable[[Key, str, str], None],
    ) -> dict[str, routing.Stall]:
        """Binding id -> why it cannot take events here (inactive ones are not routed at all)."""
        not_ready: dict[str, routing.Stall] = {}
        for spec in compiled.bindings.values():
            resolved = compiled.desired.bindings.get(spec.id)
            if resolved is None:
                continue
            key = resolved.key
            reason, message = self._binding_problem(spec, resolved, stalled)
            if reason is None:
                continue
            stall(key, reason, message)
            if spec.inactive is None:
                not_ready[spec.id] = routing.Stall(reason, message)
        return not_ready

    def _binding_problem(
        self, spec: bindings.BindingSpec, resolved: desired.ResolvedBinding, stalled: Mapping[Key, str]
    ) -> tuple[str | None, str]:
        if spec.inactive is not None:
            return spec.inactive.reason, spec.inactive.message
        context = resolved.context
        if context is not None and context.key in stalled:
            return "ContextNotReady", f"Context {context.name} is stalled: {stalled[context.key]}"
        problems = [p for p in map(self._providers.ref_problem, spec.models) if p is not None]
        if problems:
            return "ProviderNotReady", "; ".join(dict.fromkeys(problems))
        return None, ""

    # -- 2. and 3. listeners and the table ----------------------------------------------------------

    async def _listeners(
        self,
        plan: diff_mod.Plan,
        compiled: compiler.Compiled,
        not_ready: dict[str, routing.Stall],
        stall: Callable[[Key, str, str], None],
    ) -> routing.RoutingTable:
        """Start what the plan starts (make before break) and build the next table.

        A listener that does not start stalls its Trigger: a new one's bindings take no events;
        an updated one's predecessor keeps serving (with the new routes) until a retry starts it.
        If apply itself is cancelled, what it started is stopped again.
        """
        current = self._switchboard.current.listeners
        todo: dict[str, actions.ListenerAction] = {a.trigger: a for a in plan.listeners if a.op != "delete"}
        serving: dict[str, listener_base.Listener] = {}
        started: list[tuple[listener_base.Listener, listener_base.Listener | None]] = []
        self._switchboard.starting(
            name for name in compiled.listeners if name in todo and name not in current
        )
        try:
            for name, spec in compiled.listeners.items():
                running = current.get(name)
                if name not in todo and running is not None:
                    serving[name] = running
                    continue
                fresh: listener_base.Listener | None = None
                try:
                    fresh = self._build(spec)
                    if running is not None:
                        fresh.succeed(running)
                    await fresh.start()
                except Exception as exc:  # a listener that cannot start stalls its trigger, not the revision
                    reason = str(exc) or type(exc).__name__
                    log.error("listener.start_failed", trigger=name, error=reason)
                    if fresh is not None:
                        await self._stop_quietly(fresh)
                    if running is not None:
                        serving[name] = running
                        self._listener_kept(compiled, name, reason, stall)
                    else:
                        self._listener_failed(compiled, name, reason, not_ready, stall)
                    continue
                started.append((fresh, running))
                serving[name] = fresh
        except BaseException:
            self._switchboard.starting(())
            await asyncio.gather(*(self._stop_quietly(x) for x, _ in started))
            for _, predecessor in started:
                if predecessor is not None:
                    predecessor.reinstate()
            raise
        routes = {name: compiled.routes[name] for name in serving if name in compiled.routes}
        return routing.RoutingTable.build(
            revision=compiled.revision,
            listeners=serving,
            routes=routes,
            bindings=compiled.bindings,
            stalled=not_ready,
        )

    @staticmethod
    async def _stop_quietly(listener: listener_base.Listener) -> None:
        try:
            await listener.stop(drain=0.0)
        except Exception as exc:
            log.error("listener.stop_failed", trigger=listener.trigger_name, error=repr(exc))

    @staticmethod
    def _listener_kept(
        compiled: compiler.Compiled, trigger: str, reason: str, stall: Callable[[Key, str, str], None]
    ) -> None:
        resource = compiled.desired.get(ids.Kind.TRIGGER, trigger)
        if resource is not None:
            stall(
                resource.key,
                "ListenerFailed",
                f"the changed listener did not start ({reason}); the previous one keeps serving",
            )

    @staticmethod
    def _listener_failed(
        compiled: compiler.Compiled,
        trigger: str,
        reason: str,
        not_ready: dict[str, routing.Stall],
        stall: Callable[[Key, str, str], None],
    ) -> None:
        resource = compiled.desired.get(ids.Kind.TRIGGER, trigger)
        if resource is not None:
            stall(resource.key, "ListenerFailed", reason)
        for binding_id in compiled.users.get(trigger, ()):
            resolved = compiled.desired.bindings.get(binding_id)
            if resolved is not None:
                stall(resolved.key, "ListenerFailed", f"Trigger {trigger}: {reason}")
            not_ready.pop(binding_id, None)

    # -- 4. retire --------------------------------------------------------------------------------

    async def _retire(self, retired: list[listener_base.Listener], deleted: set[str]) -> None:
        results = await asyncio.gather(*(x.stop(drain=self._grace) for x in retired), return_exceptions=True)
        for listener, result in zip(retired, results, strict=True):
            if isinstance(result, BaseException):
                log.error("listener.stop_failed", trigger=listener.trigger_name, error=repr(result))
        if deleted:
            await self._starter.finish(deleted, self._grace)


def kubeconfig_message(compiled: compiler.Compiled, context: compiler.ContextSpec, problem: str) -> str:
    """`problem` with the kubeconfig's value replaced by the field (and the variables it was set
    from): a kubeconfig set from `${VAR}` may be any secret, and a message is shown and logged.
    A kubeconfig written as a literal path keeps its path."""
    value = context.policy.kubeconfig or ""
    resource = compiled.desired.resources.get(context.key)
    names = extract.secret_origin(resource, ("spec", "kubeconfig")) if resource is not None else ()
    if names is None or not value:
        return problem
    where = "spec.kubeconfig"
    if names:
        where += " (set from " + ", ".join(f"${{{n}}}" for n in names) + ")"
    message = problem
    for part in sorted({value, *value.split(os.pathsep)} - {""}, key=len, reverse=True):
        message = message.replace(part, where)
    return message
