"""Applying a plan to the running daemon: what the host cannot run stalls, the rest swaps in at once.

The plan (`aofd.plan.diff.Plan`) carries the compiled revision and the listener actions; the
applier executes them and diffs nothing. Apply is make-before-break (DESIGN.md section 2):

1. **Facts of the host.** Each Context's kubeconfig must be usable here (readable, and any exec
   credential plugin allow-listed) and its audit log must open; each binding's models must have
   a provider that is installed and configured. What fails is Stalled with a reason, and so are
   the bindings of a stalled Context; bindings the files already mark inactive (disabled, no
   Trigger, a Trigger type without a listener) are Stalled with that reason.
   **MCP servers** (`aofd.runtime.mcpservers`): the servers the bindings that can run use are
   started (per Context and config, new ones in parallel, each within its `timeout_secs`) before
   anything is swapped (all within the pool's `apply_wait`), and those nobody uses are retired
   after the swap, once their runs let go; a binding
   whose server is not ready is Stalled with `McpServerNotReady` ("MCP server git (Context
   prod): why"). This is looked at on every apply (servers die and recover in between).
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

Apply costs what the plan changes. The applier remembers what its last apply published (the
table, the stalled Contexts, each provider's readiness, why each binding was stalled, and which
bindings each Context and provider concerns); a plan made against that re-checks only the
bindings it changes, those of Contexts whose stall changed and those of providers whose
readiness changed, and starts or retires only the listeners it names. Every Context is looked
at on every apply (a kubeconfig may be fixed on the host), off the event loop, re-reading a
kubeconfig only when its file changed. A plan made against anything else (the first apply,
after `aclose`) checks everything. Steps that go over many items give the event loop a turn
every `SLICE_SECONDS`; nothing is published before the one swap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Protocol, TypeVar

import structlog

from aofd import errors
from aofd.plan import actions, compiler, desired, extract
from aofd.plan import diff as diff_mod
from aofd.resources import ids
from aofd.runtime import commands, limits, mcpservers, ports, routing, tasks
from aofd.runtime.listeners import base as listener_base
from aofd.runtime.providers import registry
from aofd.specs import bindings, listeners, policy
from aofd.specs import mcp as mcp_specs
from aofd.specs import models as model_refs

log = structlog.get_logger("aofd.runtime")

Key = ids.ResourceKey
_K = TypeVar("_K")


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
    mcp_waiting: int = 0
    """How many MCP servers the bindings want are not ready (the reconciler retries while any is)."""


SLICE_SECONDS = 0.005
"""How long a step of apply holds the event loop before giving it a turn (`Applier(slice_seconds=)`)."""


class _Pacer:
    """Gives the event loop a turn whenever apply has held it for a slice: the first apply after a
    start checks thousands of bindings and starts hundreds of listeners, and the trigger server
    and the admin API must keep answering meanwhile. What is published stays one swap."""

    __slots__ = ("_since", "_slice", "turns")

    def __init__(self, slice_seconds: float) -> None:
        self._slice = slice_seconds
        self._since = time.perf_counter()
        self.turns = 0

    async def tick(self) -> None:
        if time.perf_counter() - self._since >= self._slice:
            await asyncio.sleep(0)
            self.turns += 1
            self._since = time.perf_counter()


class _Kubeconfigs:
    """`commands.check_kubeconfig`, remembered per kubeconfig until one of its files changes
    (device, inode, size, mtime or ctime): each apply looks at every Context, and reading and
    parsing every kubeconfig each time would cost a pass what the Contexts cost, not the change.
    A path whose file cannot be stat'ed is checked again every time. Used from a worker thread,
    one apply at a time."""

    def __init__(self, plugins: tuple[str, ...]) -> None:
        self._plugins = plugins
        self._seen: dict[str, tuple[tuple[int, ...], str | None]] = {}

    def check_all(self, paths: Sequence[str | None]) -> list[str | None]:
        seen: dict[str, tuple[tuple[int, ...], str | None]] = {}
        out: list[str | None] = []
        for path in paths:
            if not path:
                out.append(None)
                continue
            stamp = _stamp(path)
            hit = seen.get(path) or self._seen.get(path)
            if stamp is not None and hit is not None and hit[0] == stamp:
                problem = hit[1]
            else:
                problem = commands.check_kubeconfig(path, self._plugins)
            if stamp is not None:
                seen[path] = (stamp, problem)
            out.append(problem)
        self._seen = seen
        return out


def _stamp(path: str) -> tuple[int, ...] | None:
    stamp: list[int] = []
    for one in path.split(os.pathsep):
        if not one:
            continue
        try:
            st = os.stat(one)
        except OSError:
            return None
        stamp += (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return tuple(stamp)


@dataclasses.dataclass(slots=True)
class _Contexts:
    """Step 1's verdict on the Contexts: the policies of those that can serve, why the others cannot."""

    policies: dict[str, policy.GuardPolicy] = dataclasses.field(default_factory=dict)
    stalled: dict[Key, str] = dataclasses.field(default_factory=dict)
    reasons: dict[Key, str] = dataclasses.field(default_factory=dict)

    def stall(self, key: Key, reason: str, message: str) -> None:
        self.stalled[key] = message
        self.reasons[key] = reason


_Uses = tuple[Key | None, tuple[str, ...]]
"""What a binding's readiness depends on besides itself: its Context's key, the providers it needs."""


class _Checks:
    """Why each binding cannot take events here (inactive, Context or provider not ready), with
    the indexes that find the bindings a Context or a provider concerns.

    An apply works on a `fork()`: the maps of stalled bindings are copied (they are as large as
    what is stalled), the indexes are shared and their updates wait for `committed()`, which
    the applier calls once the table is published. Until then the indexes are the last
    apply's, which is all a fork reads them for: the bindings the plan changes are re-checked
    anyway.
    """

    __slots__ = (
        "_pending",
        "by_context",
        "by_provider",
        "keys",
        "not_ready",
        "providers",
        "reasons",
        "stalled",
        "uses",
    )

    def __init__(self) -> None:
        self.stalled: dict[Key, str] = {}
        self.reasons: dict[Key, str] = {}
        self.not_ready: dict[str, routing.Stall] = {}
        self.keys: dict[str, Key] = {}
        """Stalled binding id -> its key."""
        self.uses: dict[str, _Uses] = {}
        self.by_context: dict[Key, set[str]] = {}
        self.by_provider: dict[str, set[str]] = {}
        self.providers: dict[str, str | None] = {}
        """Each provider's readiness as this apply found it (what the next compares with)."""
        self._pending: list[tuple[str, _Uses | None]] | None = None

    def fork(self) -> _Checks:
        other = _Checks()
        other.stalled, other.reasons = dict(self.stalled), dict(self.reasons)
        other.not_ready, other.keys = dict(self.not_ready), dict(self.keys)
        other.uses, other.by_context, other.by_provider = self.uses, self.by_context, self.by_provider
        other._pending = []
        return other

    def committed(self) -> _Checks:
        for binding_id, uses in self._pending or ():
            self._index(binding_id, uses)
        self._pending = None
        return self

    def of_context(self, key: Key) -> tuple[str, ...]:
        return tuple(self.by_context.get(key, ()))

    def of_provider(self, provider: str) -> tuple[str, ...]:
        return tuple(self.by_provider.get(provider, ()))

    def providers_used(self) -> set[str]:
        used = set(self.by_provider)
        for _, uses in self._pending or ():
            if uses is not None:
                used.update(uses[1])
        return used

    def check(
        self,
        binding_id: str,
        spec: bindings.BindingSpec,
        resolved: desired.ResolvedBinding,
        contexts: Mapping[Key, str],
        split: Callable[[model_refs.ModelRef], tuple[str | None, str | None]],
        readiness: Callable[[str], str | None],
    ) -> None:
        parts = [split(ref) for ref in spec.models]
        context = resolved.context
        self._uses(
            binding_id, (context.key if context is not None else None, tuple({p for p, _ in parts if p}))
        )
        reason, message = None, ""
        if spec.inactive is not None:
            reason, message = spec.inactive.reason, spec.inactive.message
        elif context is not None and context.key in contexts:
            reason, message = "ContextNotReady", f"Context {context.name} is stalled: {contexts[context.key]}"
        else:
            found = [static if provider is None else readiness(provider) for provider, static in parts]
            problems = [p for p in found if p is not None]
            if problems:
                reason, message = "ProviderNotReady", "; ".join(dict.fromkeys(problems))
        if reason is None:
            self._clear(binding_id)
            return
        key = resolved.key
        old = self.keys.get(binding_id)
        if old is not None and old != key:
            self._clear(binding_id)
        self.keys[binding_id] = key
        self.stalled[key] = message
        self.reasons[key] = reason
        if spec.inactive is None:
            self.not_ready[binding_id] = routing.Stall(reason, message)
        else:
            self.not_ready.pop(binding_id, None)

    def forget(self, binding_id: str) -> None:
        self._clear(binding_id)
        self._uses(binding_id, None)

    def _clear(self, binding_id: str) -> None:
        key = self.keys.pop(binding_id, None)
        if key is not None:
            self.stalled.pop(key, None)
            self.reasons.pop(key, None)
        self.not_ready.pop(binding_id, None)

    def _uses(self, binding_id: str, uses: _Uses | None) -> None:
        if self._pending is not None:
            self._pending.append((binding_id, uses))
        else:
            self._index(binding_id, uses)

    def _index(self, binding_id: str, uses: _Uses | None) -> None:
        old = self.uses.pop(binding_id, None)
        if old is not None:
            context, providers = old
            if context is not None:
                _discard(self.by_context, context, binding_id)
            for provider in providers:
                _discard(self.by_provider, provider, binding_id)
        if uses is None:
            return
        self.uses[binding_id] = uses
        context, providers = uses
        if context is not None:
            self.by_context.setdefault(context, set()).add(binding_id)
        for provider in providers:
            self.by_provider.setdefault(provider, set()).add(binding_id)


def _discard(index: dict[_K, set[str]], key: _K, binding_id: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(binding_id)
        if not members:
            del index[key]


@dataclasses.dataclass(slots=True)
class _Started:
    """Step 2's result: the listeners of the next table and what did not start.

    `touched` names the triggers whose listener may differ from the current table's (None: any
    may); `failed` the triggers left without a listener; `unrouted` their bindings."""

    serving: dict[str, listener_base.Listener] = dataclasses.field(default_factory=dict)
    touched: set[str] | None = None
    failed: set[str] = dataclasses.field(default_factory=set)
    unrouted: set[str] = dataclasses.field(default_factory=set)
    stalled: dict[Key, str] = dataclasses.field(default_factory=dict)
    reasons: dict[Key, str] = dataclasses.field(default_factory=dict)

    def stall(self, key: Key, reason: str, message: str) -> None:
        self.stalled[key] = message
        self.reasons[key] = reason


@dataclasses.dataclass(slots=True)
class _Servers:
    """Step 1b's result: the bindings stalled because an MCP server they need is not ready.

    Worked out afresh on every apply (never carried in `_Checks`): servers die and recover
    between applies."""

    stalled: dict[Key, str] = dataclasses.field(default_factory=dict)
    reasons: dict[Key, str] = dataclasses.field(default_factory=dict)
    not_ready: dict[str, routing.Stall] = dataclasses.field(default_factory=dict)
    waiting: int = 0
    wanted: frozenset[mcpservers.ServerKey] = frozenset()
    """The servers this apply's bindings use: the others are retired once its table is live."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Applied:
    """What the last apply published: the next apply checks only what changed since."""

    revision: str
    table: routing.RoutingTable
    contexts: Mapping[Key, str]
    """The stalled Contexts and why."""
    providers: Mapping[str, str | None]
    running: Mapping[str, str]
    """Trigger -> config digest of its running listener."""


class Applier:
    """Executes plans against the runtime; one per daemon (the reconciler's effectful half).

    Collaborators (keyword-only): the `switchboard` the server and dispatcher read, `build`
    (a `ListenerFactory`), the `providers` whose readiness decides `ProviderNotReady`, the audit
    logs to open, the shared `policies` map the command guard reads, the rate `limits` (their
    windows of removed Contexts are forgotten), the flow `starter` (runs of deleted bindings),
    the kubeconfig credential plugins allowed, the drain grace, `slice_seconds`: how long a
    step of apply may hold the event loop before it gives the loop a turn, and the `mcp` server
    pool (None: a binding whose agents use MCP servers is stalled).
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
        slice_seconds: float = SLICE_SECONDS,
        mcp: mcpservers.McpPool | None = None,
    ) -> None:
        self._switchboard = switchboard
        self._mcp = mcp
        self._build = build
        self._providers = providers
        self._audit_logs = audit_logs
        self._policies = policies
        self._limits = limits
        self._starter = starter
        self._kubeconfigs = _Kubeconfigs(tuple(credential_plugins))
        self._grace = drain_grace
        self._slice = slice_seconds
        self._retiring: tasks.TaskSet[None] = tasks.TaskSet("retire")
        self._warmed: set[str] = set()  # providers whose SDK and client were asked for (`Providers.warm`)
        self._last: _Applied | None = None
        self._checks = _Checks()
        self.applied = False

    async def apply(self, plan: diff_mod.Plan) -> ApplyOutcome:
        """Execute `plan` (which carries its compiled revision); never raises for a host problem.

        When `plan` was made against what the last apply published (the usual case), only what
        it changes is checked and started, plus the bindings whose Context or provider became
        ready or not since; otherwise (the first apply, after `aclose`) everything is.
        """
        compiled = plan.compiled
        if compiled is None:
            raise ValueError("a plan to apply must carry its compiled revision (diff.compute makes one)")
        pacer = _Pacer(self._slice)
        last = self._last
        if last is not None and (
            plan.previous != last.revision or self._switchboard.current is not last.table
        ):
            last = None  # not planned against what runs: check everything
        contexts = await self._contexts(compiled, pacer)
        checks = await self._bindings(plan, compiled, contexts, last, pacer)
        servers = await self._mcp_servers(compiled, contexts, checks, pacer)
        started = await self._listeners(plan, compiled, last, pacer)
        stalled = {**contexts.stalled, **checks.stalled, **servers.stalled, **started.stalled}
        reasons = {**contexts.reasons, **checks.reasons, **servers.reasons, **started.reasons}
        not_ready = checks.not_ready
        if servers.not_ready:
            not_ready = {**not_ready, **servers.not_ready}
        if started.unrouted:
            not_ready = dict(not_ready)
            for binding_id in started.unrouted:
                not_ready.pop(binding_id, None)
        current = self._switchboard.current
        routes = compiled.routes
        if started.failed:
            routes = {name: r for name, r in compiled.routes.items() if name not in started.failed}
        table = routing.RoutingTable.build(
            revision=compiled.revision,
            listeners=started.serving,
            routes=routes,
            bindings=compiled.bindings,
            stalled=not_ready,
            previous=current if started.touched is not None else None,
            changed=started.touched or (),
        )
        self._policies.clear()
        self._policies.update(contexts.policies)
        old = self._switchboard.swap(table)
        self.applied = True
        if self._mcp is not None:
            # Only now: a run planned on the previous table may still take a lease on its servers.
            self._mcp.retire_unwanted(servers.wanted)
        self._checks = checks.committed()
        self._limits.forget(keep=set(contexts.policies))
        deleted = {
            desired.binding_id(a.key)
            for a in plan.changes
            if a.op == "delete" and a.key.kind is ids.Kind.BINDING
        }
        touched = (
            old.listeners.keys() | table.listeners.keys() if started.touched is None else started.touched
        )
        retired = [
            old.listeners[name]
            for name in touched
            if name in old.listeners and table.listeners.get(name) is not old.listeners[name]
        ]
        if retired or deleted:
            self._retiring.spawn(self._retire(retired, deleted), name="retire-listeners")
        # Bring in the SDKs of the providers now in use, off the loop, before the first run needs
        # them (an import and a client can take seconds on a busy host: a run's deadline would pay).
        ready = [p for p, why in checks.providers.items() if why is None and p not in self._warmed]
        if ready:
            self._warmed.update(ready)
            self._retiring.spawn(self._providers.warm(ready), name="warm-providers")
        if last is None:
            running = {name: x.config_digest for name, x in table.listeners.items()}
        else:
            running = dict(last.running)
            for name in touched:
                listener = table.listeners.get(name)
                if listener is None:
                    running.pop(name, None)
                else:
                    running[name] = listener.config_digest
        self._last = _Applied(
            revision=compiled.revision,
            table=table,
            contexts=contexts.stalled,
            providers=checks.providers,
            running=running,
        )
        return ApplyOutcome(
            stalled=MappingProxyType(stalled),
            reasons=MappingProxyType(reasons),
            listeners=MappingProxyType(running),  # never changed: the next apply copies it
            mcp_waiting=servers.waiting,
        )

    async def aclose(self) -> None:
        """Stop every listener of the current table and what is still retiring (shutdown)."""
        self._last = None
        table = self._switchboard.swap(routing.RoutingTable.empty())
        await asyncio.gather(*(x.stop(drain=0.0) for x in table.listeners.values()), return_exceptions=True)
        await self._retiring.drain(0.0)

    # -- 1. facts of the host ---------------------------------------------------------------------

    async def _contexts(self, compiled: compiler.Compiled, pacer: _Pacer) -> _Contexts:
        """The policies of the Contexts that can serve here; the others stalled, with why.

        Every Context is looked at on every apply (a kubeconfig may have been fixed), off the
        event loop and re-reading only the kubeconfig files that changed since.
        """
        contexts = list(compiled.contexts.values())
        kubeconfigs = [c.policy.kubeconfig for c in contexts]
        problems = await asyncio.to_thread(self._kubeconfigs.check_all, kubeconfigs)
        out = _Contexts()
        for context, problem in zip(contexts, problems, strict=True):
            await pacer.tick()
            # Opened even when the kubeconfig is unusable: the events its bindings answer without
            # running, and its triggers' rejections, are audited in its own log.
            try:
                await self._audit_logs.open_context(context.name, log_path=context.audit_log_path)
            except errors.AuditUnavailable as exc:
                out.stall(context.key, "AuditUnavailable", f"audit log unavailable: {exc}")
                continue
            if problem is not None:
                out.stall(context.key, "KubeconfigUnusable", kubeconfig_message(compiled, context, problem))
                continue
            out.policies[context.name] = context.policy
        return out

    async def _bindings(
        self,
        plan: diff_mod.Plan,
        compiled: compiler.Compiled,
        contexts: _Contexts,
        last: _Applied | None,
        pacer: _Pacer,
    ) -> _Checks:
        """Why each binding cannot take events here, as of this revision (inactive ones are
        stalled but not routed at all); the applier's record once published (`committed()`).

        Re-checked: every binding when `last` is None; else the bindings the plan changes, those
        of Contexts whose stall changed, and those of providers whose readiness changed.
        """
        providers: dict[str, str | None] = {}

        def readiness(provider: str) -> str | None:
            if provider not in providers:
                providers[provider] = self._providers.readiness(provider)
            return providers[provider]

        if last is None:
            checks = _Checks()
            todo: Iterable[str] = compiled.bindings.keys()
        else:
            checks = self._checks.fork()
            recheck: set[str] = set()
            for action in plan.changes:
                if action.key.kind is ids.Kind.BINDING:
                    recheck.add(desired.binding_id(action.key))
            for key in contexts.stalled.keys() ^ last.contexts.keys():
                recheck.update(checks.of_context(key))
            for key in contexts.stalled.keys() & last.contexts.keys():
                if contexts.stalled[key] != last.contexts[key]:
                    recheck.update(checks.of_context(key))
            for provider, before in last.providers.items():
                if readiness(provider) != before:
                    recheck.update(checks.of_provider(provider))
            todo = sorted(recheck)
        for binding_id in todo:
            await pacer.tick()
            spec = compiled.bindings.get(binding_id)
            resolved = compiled.desired.bindings.get(binding_id)
            if spec is None or resolved is None:
                checks.forget(binding_id)
                continue
            checks.check(binding_id, spec, resolved, contexts.stalled, self._providers.split, readiness)
        for provider in checks.providers_used():
            readiness(provider)
        checks.providers = providers
        return checks

    # -- 1b. MCP servers ----------------------------------------------------------------------------

    async def _mcp_servers(
        self, compiled: compiler.Compiled, contexts: _Contexts, checks: _Checks, pacer: _Pacer
    ) -> _Servers:
        """Start the MCP servers the bindings that can run use (one per Context and config; those
        nobody uses are retired after the table swap, once their runs let go), and stall the
        bindings whose servers are not ready (`McpServerNotReady`). Looked at on every apply: a
        server may have died or recovered since the last one (the pool asks the reconciler for a
        re-apply when it does)."""
        out = _Servers()
        wanted: dict[mcpservers.ServerKey, tuple[policy.GuardPolicy, mcp_specs.McpServerSpec]] = {}
        users: dict[mcpservers.ServerKey, list[str]] = {}
        for binding_id, spec in compiled.bindings.items():
            if not spec.mcp:
                continue
            await pacer.tick()
            if spec.inactive is not None or binding_id in checks.not_ready:
                continue
            resolved = compiled.desired.bindings.get(binding_id)
            if resolved is None or resolved.context is None:
                continue
            pol = contexts.policies.get(resolved.context.name)
            if pol is None:
                continue
            for server in spec.mcp:
                key = mcpservers.key_of(pol.context, server)
                wanted[key] = (pol, server)
                users.setdefault(key, []).append(binding_id)
        if self._mcp is None:
            why = dict.fromkeys(wanted, "this daemon runs no MCP servers")
        else:
            why = await self._mcp.ensure(wanted, retire=False)
        out.wanted = frozenset(wanted)
        out.waiting = len(why)
        messages: dict[str, list[str]] = {}
        for key, reason in why.items():
            pol, server = wanted[key]
            for binding_id in users.get(key, ()):
                messages.setdefault(binding_id, []).append(
                    f"MCP server {server.name} (Context {pol.context}): {reason}"
                )
        for binding_id, parts in messages.items():
            resolved = compiled.desired.bindings.get(binding_id)
            if resolved is None:
                continue
            message = "; ".join(parts)
            out.stalled[resolved.key] = message
            out.reasons[resolved.key] = "McpServerNotReady"
            out.not_ready[binding_id] = routing.Stall("McpServerNotReady", message)
        return out

    # -- 2. listeners -------------------------------------------------------------------------------

    async def _listeners(
        self, plan: diff_mod.Plan, compiled: compiler.Compiled, last: _Applied | None, pacer: _Pacer
    ) -> _Started:
        """Start what the plan starts (make before break): the listeners of the next table.

        A listener that does not start stalls its Trigger: a new one's bindings take no events;
        an updated one's predecessor keeps serving (with the new routes) until a retry starts it.
        If apply itself is cancelled, what it started is stopped again. With `last`, only the
        plan's listener actions are looked at (the rest of the current table carries over).
        """
        current = self._switchboard.current.listeners
        todo: dict[str, actions.ListenerAction] = {a.trigger: a for a in plan.listeners if a.op != "delete"}
        out = _Started()
        if last is None:
            out.serving = {}
            names: Iterable[str] = compiled.listeners.keys()
        else:
            out.serving = dict(current)
            for action in plan.listeners:
                if action.op == "delete":
                    out.serving.pop(action.trigger, None)
            out.touched = {a.trigger for a in plan.listeners}
            names = todo.keys()
        started: list[tuple[listener_base.Listener, listener_base.Listener | None]] = []
        self._switchboard.starting(name for name in todo if name not in current)
        try:
            for name in names:
                await pacer.tick()
                spec = compiled.listeners[name]
                running = current.get(name)
                if name not in todo and running is not None:
                    out.serving[name] = running
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
                        out.serving[name] = running
                        self._listener_kept(compiled, name, reason, out)
                    else:
                        out.serving.pop(name, None)
                        self._listener_failed(compiled, name, reason, out)
                    continue
                started.append((fresh, running))
                out.serving[name] = fresh
        except BaseException:
            self._switchboard.starting(())
            await asyncio.gather(*(self._stop_quietly(x) for x, _ in started))
            for _, predecessor in started:
                if predecessor is not None:
                    predecessor.reinstate()
            raise
        return out

    @staticmethod
    async def _stop_quietly(listener: listener_base.Listener) -> None:
        try:
            await listener.stop(drain=0.0)
        except Exception as exc:
            log.error("listener.stop_failed", trigger=listener.trigger_name, error=repr(exc))

    @staticmethod
    def _listener_kept(compiled: compiler.Compiled, trigger: str, reason: str, out: _Started) -> None:
        resource = compiled.desired.get(ids.Kind.TRIGGER, trigger)
        if resource is not None:
            out.stall(
                resource.key,
                "ListenerFailed",
                f"the changed listener did not start ({reason}); the previous one keeps serving",
            )

    @staticmethod
    def _listener_failed(compiled: compiler.Compiled, trigger: str, reason: str, out: _Started) -> None:
        out.failed.add(trigger)
        resource = compiled.desired.get(ids.Kind.TRIGGER, trigger)
        if resource is not None:
            out.stall(resource.key, "ListenerFailed", reason)
        for binding_id in compiled.users.get(trigger, ()):
            resolved = compiled.desired.bindings.get(binding_id)
            if resolved is not None:
                out.stall(resolved.key, "ListenerFailed", f"Trigger {trigger}: {reason}")
            out.unrouted.add(binding_id)

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
