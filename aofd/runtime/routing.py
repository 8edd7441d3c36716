"""The immutable routing table and the one reference that publishes it (make-before-break).

Owns

- `RoutingTable`: for one revision, the listener of each enabled Trigger (one per trigger,
  shared by its bindings), the resolved bindings per trigger, and their compiled routes
  (`router.TriggerRoutes`). Frozen: a new revision builds a new table.
- `Switchboard`: holds the current table; `swap(new)` replaces it in one assignment and returns
  the old one. The server and the dispatcher read `switchboard.current` per event, so an event
  sees either the old table or the new one, never a mix.
- `prepare()`: the make-before-break plan for a new revision. Listeners whose trigger config
  digest is unchanged are reused (the same object); new or changed ones are built but not started;
  replaced or removed ones are listed for draining. `Transition.start_new()`, then
  `Switchboard.swap()`, then `Transition.retire_old(drain=...)` (or `apply()` for all three).

It must not import platform modules (listeners are built through the `build` callable) nor do I/O
except starting and stopping listeners in `Transition`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import structlog

from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import trigger as trigger_kind
from aofd.runtime import router
from aofd.runtime.listeners import base as listener_base

log = structlog.get_logger()

ListenerBuilder = Callable[[kinds_base.LoadedResource], listener_base.Listener]


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingTable:
    """Everything the trigger server and the router need for one revision; never mutated."""

    revision: str
    listeners: Mapping[str, listener_base.Listener]
    bindings_by_trigger: Mapping[str, tuple[router.BoundFlow, ...]]
    routes: Mapping[str, router.TriggerRoutes]
    paths: Mapping[str, listener_base.Listener] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    """A webhook trigger's own `config.path` (upstream's) -> its listener, besides `/hooks/...`."""

    @classmethod
    def empty(cls) -> RoutingTable:
        return cls("", MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))

    @classmethod
    def build(
        cls,
        *,
        revision: str,
        listeners: Mapping[str, listener_base.Listener],
        bindings_by_trigger: Mapping[str, Iterable[router.BoundFlow]],
        triggers: Mapping[str, trigger_kind.Trigger] | None = None,
    ) -> RoutingTable:
        """Compile routes for every trigger (filters, regexes, scores) once, here.

        Args:
            revision: the revision this table serves.
            listeners: trigger name -> its listener.
            bindings_by_trigger: trigger name -> the resolved bindings that use it.
            triggers: trigger models for the trigger-level filters; by default taken from the bindings.
        """
        by_trigger: dict[str, tuple[router.BoundFlow, ...]] = {}
        routes: dict[str, router.TriggerRoutes] = {}
        for name, bound in sorted(bindings_by_trigger.items()):
            group = tuple(sorted(bound, key=lambda b: b.name))
            by_trigger[name] = group
            model: trigger_kind.Trigger | None = (triggers or {}).get(name)
            if model is None:
                model = next((_trigger_model(b.trigger) for b in group if b.trigger is not None), None)
            routes[name] = router.TriggerRoutes.build(model, group)
        paths: dict[str, listener_base.Listener] = {}
        for name in sorted(listeners):
            listener = listeners[name]
            routes.setdefault(name, router.TriggerRoutes.build(_listener_trigger(listener), ()))
            path = listener.config.path
            webhook = isinstance(listener, listener_base.WebhookListener)
            # Two triggers on one path are a plan error; should one get here, the first name wins.
            # A trigger's own `/hooks/...` path is served by the hook route already.
            if path and webhook and not path.startswith("/hooks/"):
                paths.setdefault(path, listener)
        return cls(
            revision,
            MappingProxyType(dict(listeners)),
            MappingProxyType(by_trigger),
            MappingProxyType(routes),
            MappingProxyType(paths),
        )

    def listener(self, trigger: str) -> listener_base.Listener | None:
        return self.listeners.get(trigger)


def _trigger_model(resource: kinds_base.LoadedResource) -> trigger_kind.Trigger | None:
    model = resource.model
    return model if isinstance(model, trigger_kind.Trigger) else None


def _listener_trigger(listener: listener_base.Listener) -> trigger_kind.Trigger | None:
    return getattr(listener, "trigger", None)


class Switchboard:
    """Holds the current routing table; replacing it is one reference assignment."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self._current = table if table is not None else RoutingTable.empty()

    @property
    def current(self) -> RoutingTable:
        return self._current

    def swap(self, new: RoutingTable) -> RoutingTable:
        """Publish `new`; returns the table it replaced."""
        old, self._current = self._current, new
        log.info("routing.swapped", old_revision=old.revision, revision=new.revision)
        return old


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """The make-before-break plan from one table to the next."""

    table: RoutingTable
    started: tuple[listener_base.Listener, ...]
    reused: tuple[listener_base.Listener, ...]
    retired: tuple[listener_base.Listener, ...]

    async def start_new(self) -> None:
        """Start every new listener; if one fails, stop those already started and re-raise.

        A listener that replaces one of the same trigger first `succeed()`s it (e.g. Telegram's
        polling offset), so that nothing is fetched twice across the swap.
        """
        replaced = {x.trigger_name: x for x in self.retired}
        done: list[listener_base.Listener] = []
        try:
            for listener in self.started:
                previous = replaced.get(listener.trigger_name)
                if previous is not None:
                    listener.succeed(previous)
                await listener.start()
                done.append(listener)
        except BaseException:
            await asyncio.gather(*(x.stop(drain=0.0) for x in done), return_exceptions=True)
            raise

    async def retire_old(self, *, drain: float) -> None:
        """Stop the replaced listeners, letting in-flight work finish for up to `drain` seconds."""
        results = await asyncio.gather(*(x.stop(drain=drain) for x in self.retired), return_exceptions=True)
        for listener, result in zip(self.retired, results, strict=True):
            if isinstance(result, BaseException):
                log.error("listener.stop_failed", trigger=listener.trigger_name, error=repr(result))


def prepare(
    old: RoutingTable | None,
    *,
    revision: str,
    bindings: Iterable[router.BoundFlow],
    build: ListenerBuilder,
    triggers: Iterable[kinds_base.LoadedResource] = (),
) -> Transition:
    """Plan the next table: reuse listeners whose trigger digest is unchanged, build the rest.

    Args:
        old: the current table (None or empty at startup).
        revision: the new revision.
        bindings: the desired resolved bindings (`DesiredState.bindings.values()`).
        build: makes a listener from a Trigger resource (`listeners.build_listener` with the
            daemon's collaborators bound, e.g. through `listeners.ListenerFactory`).
        triggers: extra Trigger resources that get a listener even without bindings.

    Returns:
        The transition; nothing has been started or stopped yet.
    """
    resources: dict[str, kinds_base.LoadedResource] = {}
    grouped: dict[str, list[router.BoundFlow]] = {}
    for bound in bindings:
        if bound.trigger is None:  # a binding without a trigger is started by the CLI only
            continue
        resources.setdefault(bound.trigger.name, bound.trigger)
        grouped.setdefault(bound.trigger.name, []).append(bound)
    for resource in triggers:
        resources.setdefault(resource.name, resource)

    previous = old.listeners if old is not None else {}
    listeners: dict[str, listener_base.Listener] = {}
    started: list[listener_base.Listener] = []
    reused: list[listener_base.Listener] = []
    for name, resource in sorted(resources.items()):
        model = _trigger_model(resource)
        if model is None or not model.spec.enabled:
            grouped.pop(name, None)
            continue
        digest = listener_base.config_digest(resource)
        current = previous.get(name)
        if current is not None and current.config_digest == digest:
            listeners[name] = current
            reused.append(current)
            continue
        fresh = build(resource)
        listeners[name] = fresh
        started.append(fresh)
    kept = {id(x) for x in reused}
    retired = tuple(x for _, x in sorted(previous.items()) if id(x) not in kept)
    table = RoutingTable.build(
        revision=revision,
        listeners=listeners,
        bindings_by_trigger=grouped,
        triggers={n: m for n, r in resources.items() if (m := _trigger_model(r)) is not None},
    )
    return Transition(table, tuple(started), tuple(reused), retired)


async def apply(switchboard: Switchboard, transition: Transition, *, drain: float) -> RoutingTable:
    """Make before break: start new listeners, swap the table, drain the replaced listeners.

    Returns:
        The table that was replaced.
    """
    await transition.start_new()
    old = switchboard.swap(transition.table)
    await transition.retire_old(drain=drain)
    return old
