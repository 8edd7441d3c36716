"""The router: which binding takes a normalized event, and starting its flow.

Owns

- `Gate`: a Trigger's own filters (`channels`, `users`, `patterns`, `events` and the
  platform-specific `chat_ids`, `service_ids`, `repositories`, `github_events`), compiled once,
  with upstream's trigger score (AOF-UPSTREAM.md section 1.5: 10, +100 channel, +80 user,
  +60 pattern);
- `Route`: one enabled binding's filters (the seed's `trigger.config` merged into upstream's
  `match` block by `FlowBindingSpec.filters()`), compiled once, with upstream's binding score
  (section 1.7: priority, +100 channel, +80 user, +60 patterns, +40 per required keyword, +10);
- `TriggerRoutes`: a trigger's gate and its routes sorted best first (score descending, then
  binding name), so `select()` returns the first route that matches: O(bindings of that trigger);
- `Dispatcher`: the listeners' single entry point. It looks the trigger up in the *current*
  routing table, picks the binding, calls `FlowStarter.start(binding, message)` and reports a
  `RouteOutcome`. No match is a logged outcome and, where the platform expects an answer, a
  polite reply ("No flow is bound to this channel"): never a random binding.

Matching and scoring are pure. The Dispatcher must not block: `FlowStarter.start` returns a run id
at once (the engine runs the flow in its own task), and replies go out in tasks the Dispatcher owns
and drains on `aclose()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import structlog

from aofd.plan import desired
from aofd.resources.kinds import binding as binding_kind
from aofd.resources.kinds import trigger as trigger_kind
from aofd.runtime import ports

if TYPE_CHECKING:
    from aofd.runtime import routing

log = structlog.get_logger()

NO_MATCH_TEXT = "No flow is bound to this channel."

TRIGGER_BASE_SCORE = 10
BINDING_BASE_SCORE = 10
CHANNEL_SCORE = 100
USER_SCORE = 80
PATTERN_SCORE = 60
KEYWORD_SCORE = 40


BoundFlow = desired.ResolvedBinding
"""A resolved binding (flow, context, trigger and what they reach), as the planner built it."""


class FlowStarter(Protocol):
    """The flow engine's entry point: start a run of `binding` for `message`.

    Must not block: it returns the run id at once and runs the flow in a task of its own.
    """

    def start(self, binding: desired.ResolvedBinding, message: ports.EventMessage) -> str: ...


Outcome = Literal["started", "no_match", "filtered", "unknown_trigger", "error"]


class RouteOutcome(NamedTuple):
    """What happened to one event: started (with binding and run id), or why not.

    A named tuple: one is built for every event, and it is cheaper than a frozen dataclass.
    """

    outcome: Outcome
    binding: str = ""
    context: str = ""
    run_id: str = ""
    score: int = 0
    detail: str = ""

    @property
    def started(self) -> bool:
        return self.outcome == "started"


# --- matching (pure) ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Pattern:
    """A regex (case-sensitive search), or a case-insensitive substring when the regex is invalid."""

    regex: re.Pattern[str] | None
    needle: str

    @classmethod
    def compile(cls, text: str) -> _Pattern:
        try:
            return cls(re.compile(text), "")
        except re.error:
            return cls(None, text.lower())

    def search(self, text: str) -> bool:
        if self.regex is not None:
            return self.regex.search(text) is not None
        return self.needle in text.lower()


def _norm_channel(entry: str) -> str:
    return entry[1:] if entry.startswith("#") else entry


def _user_values(users: frozenset[str], platform: str) -> frozenset[str]:
    """The non-empty values `users` entries stand for on `platform` (`platform:` prefixes removed)."""
    values = set()
    for entry in users:
        prefix, sep, rest = entry.partition(":")
        value = rest if sep and prefix == platform else entry
        if value:
            values.add(value)
    return frozenset(values)


_USER_VALUES_CACHE_MAX = 32
"""Platforms whose user values a `Filters` remembers (platform names are a small fixed set)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """Compiled channel/user/pattern/event filters; an empty filter matches everything."""

    channels: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    patterns: tuple[_Pattern, ...] = ()
    events: frozenset[str] = frozenset()
    # Derived once in __post_init__ (not part of equality): what `matches` needs per event.
    empty: bool = dataclasses.field(init=False, compare=False, repr=False)
    any_channel: bool = dataclasses.field(init=False, compare=False, repr=False)
    any_user: bool = dataclasses.field(init=False, compare=False, repr=False)
    any_event: bool = dataclasses.field(init=False, compare=False, repr=False)
    # Invariant: platform -> `_user_values(users, platform)`; filled on first use, bounded.
    _user_values: dict[str, frozenset[str]] = dataclasses.field(
        init=False, compare=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "empty", not (self.channels or self.users or self.patterns or self.events))
        setattr_(self, "any_channel", not self.channels or "*" in self.channels)
        setattr_(self, "any_user", not self.users or "*" in self.users)
        setattr_(self, "any_event", not self.events or "*" in self.events)

    @classmethod
    def compile(
        cls,
        *,
        channels: Iterable[object] = (),
        users: Iterable[object] = (),
        patterns: Iterable[str] = (),
        events: Iterable[str] = (),
    ) -> Filters:
        return cls(
            channels=frozenset(_norm_channel(str(c)) for c in channels if str(c)),
            users=frozenset(str(u) for u in users if str(u)),
            patterns=tuple(_Pattern.compile(p) for p in patterns if p),
            events=frozenset(e for e in events if e),
        )

    def channel_ok(self, message: ports.EventMessage) -> bool:
        if self.any_channel:
            return True
        name = message.channel_name
        if name.startswith("#"):
            name = name[1:]
        return message.channel_id in self.channels or (bool(name) and name in self.channels)

    def user_values(self, platform: str) -> frozenset[str]:
        """The values a user id or name must equal on `platform` (computed once per platform)."""
        cache = self._user_values
        values = cache.get(platform)
        if values is None:
            values = _user_values(self.users, platform)
            if len(cache) < _USER_VALUES_CACHE_MAX:
                cache[platform] = values
        return values

    def user_ok(self, message: ports.EventMessage) -> bool:
        if self.any_user:
            return True
        values = self.user_values(message.platform)
        user = message.user
        # `values` holds no empty string, so an empty id or name never matches.
        return user.id in values or user.name in values

    def pattern_ok(self, message: ports.EventMessage) -> bool:
        if not self.patterns:
            return True
        text = message.text
        for pattern in self.patterns:  # noqa: SIM110 - a loop, not a generator: this runs per event
            if pattern.search(text):
                return True
        return False

    def event_ok(self, message: ports.EventMessage) -> bool:
        if self.any_event:
            return True
        kind = message.event_type
        return kind in self.events or kind.partition(".")[0] in self.events

    def matches(self, message: ports.EventMessage, *, events: bool = True) -> bool:
        # Same checks as `*_ok` (each is pure), but an empty filter costs no call: this runs for
        # every candidate route of every event.
        if self.empty:
            return True
        if not self.any_channel and not self.channel_ok(message):
            return False
        if not self.any_user and not self.user_ok(message):
            return False
        if events and not self.any_event and not self.event_ok(message):
            return False
        return not self.patterns or self.pattern_ok(message)


COMMAND_EVENTS = frozenset({"slash_command", "approval_action"})
"""Event types a Trigger's `events` list (a subscription list of pushed events) does not filter."""


@dataclasses.dataclass(frozen=True, slots=True)
class Gate:
    """A Trigger's own filters and its upstream score."""

    trigger: str
    filters: Filters
    score: int

    @classmethod
    def of(cls, trigger: trigger_kind.Trigger) -> Gate:
        cfg = trigger.spec.config
        channels: list[object] = [*cfg.channels, *cfg.chat_ids, *cfg.service_ids, *cfg.repositories]
        users: list[object] = [*cfg.users, *cfg.allowed_numbers]
        events = [*cfg.events, *cfg.github_events]
        filters = Filters.compile(channels=channels, users=users, patterns=cfg.patterns, events=events)
        score = TRIGGER_BASE_SCORE
        score += CHANNEL_SCORE if filters.channels else 0
        score += USER_SCORE if filters.users else 0
        score += PATTERN_SCORE if filters.patterns else 0
        return cls(trigger.metadata.name, filters, score)

    def admits(self, message: ports.EventMessage) -> bool:
        return self.filters.matches(message, events=message.event_type not in COMMAND_EVENTS)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One enabled binding: its compiled filters, keywords and score."""

    name: str
    bound: BoundFlow
    context: str
    filters: Filters
    required: tuple[str, ...]
    excluded: tuple[str, ...]
    score: int

    @classmethod
    def of(cls, bound: BoundFlow, *, gate_score: int = TRIGGER_BASE_SCORE) -> Route:
        model = bound.binding.model
        if not isinstance(model, binding_kind.FlowBinding):
            raise TypeError(f"{bound.name}: expected a FlowBinding, got {type(model).__name__}")
        match = model.spec.filters()
        filters = Filters.compile(
            channels=match.channels, users=match.users, patterns=match.patterns, events=match.events
        )
        required = tuple(k.lower() for k in match.required_keywords if k)
        excluded = tuple(k.lower() for k in match.excluded_keywords if k)
        score = int(match.priority) + BINDING_BASE_SCORE
        score += CHANNEL_SCORE if filters.channels else 0
        score += USER_SCORE if filters.users else 0
        score += PATTERN_SCORE if filters.patterns else 0
        score += KEYWORD_SCORE * len(required)
        return cls(bound.name, bound, context_name(bound), filters, required, excluded, score + gate_score)

    def matches(self, message: ports.EventMessage) -> bool:
        filters = self.filters
        if not filters.empty and not filters.matches(message):
            return False
        if self.required or self.excluded:
            text = message.text.lower()
            for keyword in self.required:
                if keyword not in text:
                    return False
            for keyword in self.excluded:
                if keyword in text:
                    return False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerRoutes:
    """A trigger's gate and its enabled bindings, best first."""

    gate: Gate | None
    routes: tuple[Route, ...]
    contexts: tuple[str, ...]
    # Derived once in __post_init__ (not part of equality), so that `select` does no work that
    # does not depend on the event: whether the gate filters anything, and the routes worth trying.
    gated: bool = dataclasses.field(init=False, compare=False, repr=False)
    candidates: tuple[Route, ...] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gated", self.gate is not None and not self.gate.filters.empty)
        # Routes are sorted best first and `select` returns the first that matches, so nothing after
        # a route that matches every event (no filters, no keywords) can ever be chosen.
        candidates: list[Route] = []
        for route in self.routes:
            candidates.append(route)
            if route.filters.empty and not route.required and not route.excluded:
                break
        object.__setattr__(self, "candidates", tuple(candidates))

    @classmethod
    def build(cls, trigger: trigger_kind.Trigger | None, bindings: Sequence[BoundFlow]) -> TriggerRoutes:
        gate = Gate.of(trigger) if trigger is not None else None
        gate_score = gate.score if gate is not None else TRIGGER_BASE_SCORE
        routes = sorted(
            (Route.of(b, gate_score=gate_score) for b in bindings if binding_enabled(b)),
            key=lambda r: (-r.score, r.name),
        )
        contexts = tuple(sorted({r.context for r in routes if r.context}))
        return cls(gate, tuple(routes), contexts)

    def select(self, message: ports.EventMessage) -> Route | RouteOutcome:
        """The best route for `message`, or the outcome that explains why there is none."""
        if self.gated and not self.gate.admits(message):  # type: ignore[union-attr] # gated: gate is set
            return RouteOutcome("filtered", detail="the trigger's own filters do not admit this event")
        for route in self.candidates:
            if route.matches(message):
                return route
        return RouteOutcome("no_match", detail="no binding of this trigger matches")


def _fields(message: ports.EventMessage) -> dict[str, str]:
    return {
        "platform": message.platform,
        "trigger": message.trigger,
        "delivery_id": message.delivery_id,
        "channel": message.channel_name or message.channel_id,
        "event_type": message.event_type,
    }


_ABOVE_DEBUG = frozenset(
    structlog.make_filtering_bound_logger(level)
    for level in (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
)
"""structlog's filtering wrapper classes (shared, one per level) whose `debug` is a no-op."""


def debug_enabled() -> bool:
    """False only when the configured structlog wrapper certainly drops `debug` events.

    Cheap enough for the per-event path (one dict of the current config, read each call, so a later
    `structlog.configure()` is honoured); any other wrapper class counts as enabled.
    """
    return structlog.get_config()["wrapper_class"] not in _ABOVE_DEBUG


def binding_enabled(bound: BoundFlow) -> bool:
    model = bound.binding.model
    spec_enabled = not isinstance(model, binding_kind.FlowBinding) or bool(model.spec.enabled)
    return bound.enabled and spec_enabled


def context_name(bound: BoundFlow) -> str:
    ctx = bound.context
    return ctx.name if ctx is not None else ""


# --- dispatching (effects) ----------------------------------------------------------------------


class Dispatcher:
    """Routes normalized events through the current routing table and starts flows.

    Shared by every listener of every table; owned by the daemon (it outlives hot swaps).
    """

    def __init__(
        self,
        *,
        switchboard: routing.Switchboard,
        starter: FlowStarter,
        replier: ports.Replier | None = None,
        no_match_text: str = NO_MATCH_TEXT,
    ) -> None:
        self._switchboard = switchboard
        self._starter = starter
        self._replier = replier
        self._no_match_text = no_match_text
        # Invariant: holds only reply tasks that have not finished (each removes itself).
        self._tasks: set[asyncio.Task[None]] = set()

    def contexts_for(self, trigger: str) -> tuple[str, ...]:
        """The contexts of the current bindings of `trigger` (where its rejections are audited)."""
        routes = self._switchboard.current.routes.get(trigger)
        return routes.contexts if routes is not None else ()

    def route(self, message: ports.EventMessage) -> Route | RouteOutcome:
        """Pick the binding for `message` in the current table (pure lookup, no side effects)."""
        routes = self._switchboard.current.routes.get(message.trigger)
        if routes is None:
            return RouteOutcome("unknown_trigger", detail="no binding uses this trigger")
        return routes.select(message)

    def dispatch(self, message: ports.EventMessage, *, reply_on_no_match: bool = False) -> RouteOutcome:
        """Route `message` and start the chosen binding's flow; never raises.

        Args:
            message: the verified, de-duplicated event.
            reply_on_no_match: post the polite no-match reply (chat platforms that expect an answer).

        Returns:
            The outcome, also logged.
        """
        chosen = self.route(message)
        if isinstance(chosen, RouteOutcome):
            log.info("event.not_routed", outcome=chosen.outcome, detail=chosen.detail, **_fields(message))
            if reply_on_no_match and chosen.outcome in ("no_match", "unknown_trigger"):
                self.spawn(self._reply(message.reply_target(), self._no_match_text))
            return chosen
        try:
            run_id = self._starter.start(chosen.bound, message)
        except Exception as exc:
            log.exception("event.start_failed", binding=chosen.name, **_fields(message))
            return RouteOutcome(
                "error", binding=chosen.name, context=chosen.context, score=chosen.score, detail=str(exc)
            )
        # Debug level: the flow engine logs (and audits) the run it starts; one line per event is enough.
        # Not even called unless debug logging is on: building the event costs more than routing.
        if debug_enabled():
            log.debug(
                "event.routed",
                binding=chosen.name,
                context=chosen.context,
                score=chosen.score,
                run_id=run_id,
                **_fields(message),
            )
        return RouteOutcome("started", chosen.name, chosen.context, run_id, chosen.score)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in a task this dispatcher owns (drained by `aclose`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, target: ports.ReplyTarget, text: str) -> None:
        if self._replier is None:
            return
        try:
            await self._replier.reply(target, text)
        except Exception:
            log.exception("event.reply_failed", platform=target.platform, trigger=target.trigger)

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Wait up to `grace` seconds for pending replies, then cancel the rest."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
