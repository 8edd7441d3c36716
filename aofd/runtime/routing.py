"""The immutable routing table of one revision and the one reference that publishes it.

Owns

- `RoutingTable`: for one revision, the running listener of each served Trigger (one per
  trigger, shared by its bindings), the compiled routes of each (`aofd.specs.routes`, built by
  the compile stage), the bindings' compiled specs the routes name, the bindings that cannot
  take events on this host and why (their Context or provider is not ready, their listener
  failed), and the extra `config.path`s of webhook triggers. Frozen: a new revision gets a new
  table.
- `Switchboard`: holds the current table; `swap(new)` replaces it in one assignment and returns
  the old one. The trigger server and the dispatcher read `switchboard.current` per event, so an
  event sees either the old table or the new one, never a mix. While the applier starts the
  listeners of triggers the current table does not have (`starting`), their events (a Telegram
  poller's first updates, a schedule's tick) wait for the swap (`published`) instead of finding
  no route.

Building the table and starting or retiring listeners is the applier's (`aofd.runtime.applier`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType

import structlog

from aofd.runtime import ports
from aofd.runtime.listeners import base as listener_base
from aofd.specs import bindings as binding_specs
from aofd.specs import routes as route_specs

log = structlog.get_logger()


@dataclasses.dataclass(frozen=True, slots=True)
class Stall:
    """Why a binding cannot take events on this host: the Stalled condition's `reason`
    (`ContextNotReady`, `ProviderNotReady`; machine-readable, names nothing of the host) and its
    `message` (for the operator: status, logs, audit)."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingTable:
    """Everything the trigger server and the dispatcher need for one revision; never mutated."""

    revision: str
    listeners: Mapping[str, listener_base.Listener]
    routes: Mapping[str, route_specs.TriggerRoutes]
    bindings: Mapping[str, binding_specs.BindingSpec] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    """Binding id -> its compiled spec (what a run of it executes)."""
    stalled: Mapping[str, Stall] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Binding id -> why it cannot take events on this host (the event is answered, not run)."""
    paths: Mapping[str, listener_base.Listener] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    """A webhook trigger's own `config.path` (upstream's) -> its listener, besides `/hooks/...`."""
    shared_paths: bool = dataclasses.field(default=False, compare=False)
    """Two listeners asked for one path (a compile error that got here): `paths` kept the first name."""

    @classmethod
    def empty(cls) -> RoutingTable:
        return cls("", MappingProxyType({}), MappingProxyType({}))

    @classmethod
    def build(
        cls,
        *,
        revision: str,
        listeners: Mapping[str, listener_base.Listener],
        routes: Mapping[str, route_specs.TriggerRoutes],
        bindings: Mapping[str, binding_specs.BindingSpec],
        stalled: Mapping[str, Stall] | None = None,
        previous: RoutingTable | None = None,
        changed: Collection[str] = (),
    ) -> RoutingTable:
        """The table serving `listeners` with `routes` to `bindings`; paths come from the listeners' specs.

        With `previous` (the table being replaced) and `changed` (the triggers whose listener may
        differ from `previous`'s, none other), paths are carried over and only the changed
        triggers' are redone: the cost follows the change, not the number of listeners.
        `routes` and `bindings` are kept as given when they are read-only maps (the compile
        stage's results are), copied otherwise.
        """
        paths, shared = None, False
        if previous is not None and not previous.shared_paths:
            paths = _paths_after(previous, listeners, changed)
        if paths is None:
            paths, shared = _paths_of(listeners)
        return cls(
            revision,
            MappingProxyType(dict(listeners)),
            _frozen(routes),
            bindings,
            MappingProxyType(dict(stalled or {})),
            MappingProxyType(paths),
            shared,
        )

    def listener(self, trigger: str) -> listener_base.Listener | None:
        return self.listeners.get(trigger)


def _frozen(routes: Mapping[str, route_specs.TriggerRoutes]) -> Mapping[str, route_specs.TriggerRoutes]:
    return routes if isinstance(routes, MappingProxyType) else MappingProxyType(dict(routes))


def _paths_of(
    listeners: Mapping[str, listener_base.Listener],
) -> tuple[dict[str, listener_base.Listener], bool]:
    paths: dict[str, listener_base.Listener] = {}
    shared = False
    for name in sorted(listeners):
        listener = listeners[name]
        path = listener.spec.path
        # Two triggers on one path are a compile error; should one get here, the first name wins.
        if path and paths.setdefault(path, listener) is not listener:
            shared = True
    return paths, shared


def _paths_after(
    previous: RoutingTable, listeners: Mapping[str, listener_base.Listener], changed: Collection[str]
) -> dict[str, listener_base.Listener] | None:
    """`previous.paths` with the `changed` triggers' paths redone; None when two listeners now
    ask for one path (the caller then builds them all, so the first name wins as always)."""
    paths = dict(previous.paths)
    for name in changed:
        old = previous.listeners.get(name)
        if old is not None and old.spec.path and paths.get(old.spec.path) is old:
            del paths[old.spec.path]
    for name in changed:
        new = listeners.get(name)
        if new is not None and new.spec.path and paths.setdefault(new.spec.path, new) is not new:
            return None
    return paths


class Switchboard:
    """Holds the current routing table; replacing it is one reference assignment."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self._current = table if table is not None else RoutingTable.empty()
        self._starting: frozenset[str] = frozenset()
        self._published: asyncio.Event | None = None

    @property
    def current(self) -> RoutingTable:
        return self._current

    def swap(self, new: RoutingTable) -> RoutingTable:
        """Publish `new`; returns the table it replaced."""
        old, self._current = self._current, new
        log.info("routing.swapped", old_revision=old.revision, revision=new.revision)
        self.starting(())
        return old

    def starting(self, triggers: Iterable[str]) -> None:
        """Listeners of `triggers` (not in the current table) are being started for the next one;
        `starting(())` (also done by `swap`) ends that and wakes who waits in `published`."""
        if self._published is not None:
            self._published.set()
        names = frozenset(triggers)
        self._starting, self._published = names, (asyncio.Event() if names else None)

    def is_starting(self, trigger: str) -> bool:
        return trigger in self._starting

    async def published(self) -> None:
        """Wait until the table being prepared is published (or given up)."""
        if self._published is not None:
            await self._published.wait()

    def replier(self, trigger: str) -> ports.ChatReplier | None:
        """The chat replier of `trigger`'s current listener (None when it has none)."""
        listener = self._current.listeners.get(trigger)
        return listener.replier if listener is not None else None
