"""Routes: which binding of a trigger takes an event, compiled once per revision; pure.

Owns

- `Filters`: channel/user/pattern/event filters compiled once (a pattern that is not a valid
  regular expression is matched as case-insensitive text, as upstream does; a channel entry
  with `*` is a wildcard, `mygroup/*`, on every platform: upstream's `projects` and
  `repositories` examples use it);
- `Gate`: a Trigger's own filters (`channels`, `users`, `patterns`, `events` and the
  platform-specific `chat_ids`, `service_ids`, `repositories`, `projects`, `allowed_numbers` and
  `github_events`, `jira_events`, `gitlab_events`, `bitbucket_events`),
  with upstream's trigger score (AOF-UPSTREAM.md section 1.5: 10, +100 channel, +80 user, +60 pattern);
- `Route`: one enabled binding's filters (the seed's `trigger.config` merged into upstream's
  `match` block by `FlowBindingSpec.filters()`), with upstream's binding score (section 1.7:
  priority, +100 channel, +80 user, +60 patterns, +40 per required keyword, +10), naming the
  binding it starts (the routing table holds the bindings' compiled specs, so a change to what a
  binding runs leaves its route as it is);
- `TriggerRoutes`: a trigger's gate and its routes sorted best first (score descending, then
  binding id), so `select()` returns the first route that matches: O(bindings of that trigger).

Matching reads events through the `Event` protocol (the runtime's `EventMessage` is one). No
I/O, no clock, no logging: dispatching (starting runs, replying) is the runtime's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple, Protocol

from aofd.resources.kinds import binding as binding_kind
from aofd.resources.kinds import trigger as trigger_kind
from aofd.specs import regex as regex_mod
from aofd.specs.problems import Problem, shown

TRIGGER_BASE_SCORE = 10
BINDING_BASE_SCORE = 10
CHANNEL_SCORE = 100
USER_SCORE = 80
PATTERN_SCORE = 60
KEYWORD_SCORE = 40

COMMAND_EVENTS = frozenset({"slash_command", "approval_action"})
"""Event types a Trigger's `events` list (a subscription list of pushed events) does not filter."""


class User(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


class Event(Protocol):
    """What matching reads of an event (`aofd.runtime.ports.EventMessage` has all of it)."""

    @property
    def platform(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def user(self) -> User: ...
    @property
    def channel_id(self) -> str: ...
    @property
    def channel_name(self) -> str: ...
    @property
    def event_type(self) -> str: ...


class Miss(NamedTuple):
    """Why no route takes an event: `filtered` (the trigger's own filters) or `no_match`."""

    outcome: Literal["filtered", "no_match"]
    detail: str


FILTERED = Miss("filtered", "the trigger's own filters do not admit this event")
NO_MATCH = Miss("no_match", "no binding of this trigger matches")


@dataclasses.dataclass(frozen=True, slots=True)
class _Pattern:
    """A regex (case-sensitive search), or a case-insensitive substring when the regex is invalid."""

    regex: re.Pattern[str] | None
    needle: str

    @classmethod
    def compile(cls, text: str) -> _Pattern:
        regex, _ = regex_mod.compile_user(text)
        return cls(regex, "" if regex is not None else text.lower())

    def search(self, text: str) -> bool:
        if self.regex is not None:
            return self.regex.search(text) is not None
        return self.needle in text.lower()


def pattern_problems(patterns: Sequence[str], loc: tuple[str | int, ...]) -> list[Problem]:
    """A warning for each pattern that is not a valid regular expression (it is matched as text)."""
    problems: list[Problem] = []
    for index, text in enumerate(patterns):
        regex, why = regex_mod.compile_user(text)
        if regex is None:
            problems.append(
                Problem(
                    (*loc, index),
                    f"pattern {shown(text)} is not a valid regular expression ({why}); it is matched as text",
                    "warning",
                    "pattern-as-text",
                )
            )
    return problems


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


def _channel_glob(channels: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for the channel entries that hold a `*` (a wildcard: any run of characters,
    `/` included, so `mygroup/*` admits `mygroup/api` and `mygroup/sub/api`); other characters
    are literal. None when no entry has one. (`*` alone admits every channel: `any_channel`.)"""
    globs = sorted(c for c in channels if "*" in c and c != "*")
    if not globs:
        return None
    parts = (".*".join(re.escape(piece) for piece in glob.split("*")) for glob in globs)
    return re.compile("|".join(f"(?:{p})" for p in parts), re.DOTALL)


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
    # The channel entries with a `*` other than `*` itself, as one compiled alternation (or None).
    channel_glob: re.Pattern[str] | None = dataclasses.field(init=False, compare=False, repr=False)
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
        setattr_(self, "channel_glob", _channel_glob(self.channels))

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

    def channel_ok(self, message: Event) -> bool:
        if self.any_channel:
            return True
        name = message.channel_name
        if name.startswith("#"):
            name = name[1:]
        channels = self.channels
        if message.channel_id in channels or (bool(name) and name in channels):
            return True
        glob = self.channel_glob
        return glob is not None and (
            glob.fullmatch(message.channel_id) is not None
            or (bool(name) and glob.fullmatch(name) is not None)
        )

    def user_values(self, platform: str) -> frozenset[str]:
        """The values a user id or name must equal on `platform` (computed once per platform)."""
        cache = self._user_values
        values = cache.get(platform)
        if values is None:
            values = _user_values(self.users, platform)
            if len(cache) < _USER_VALUES_CACHE_MAX:
                cache[platform] = values
        return values

    def user_ok(self, message: Event) -> bool:
        if self.any_user:
            return True
        values = self.user_values(message.platform)
        user = message.user
        # `values` holds no empty string, so an empty id or name never matches.
        return user.id in values or user.name in values

    def pattern_ok(self, message: Event) -> bool:
        if not self.patterns:
            return True
        text = message.text
        for pattern in self.patterns:  # noqa: SIM110 - a loop, not a generator: this runs per event
            if pattern.search(text):
                return True
        return False

    def event_ok(self, message: Event) -> bool:
        if self.any_event:
            return True
        kind = message.event_type
        return kind in self.events or kind.partition(".")[0] in self.events

    def matches(self, message: Event, *, events: bool = True) -> bool:
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


@dataclasses.dataclass(frozen=True, slots=True)
class Gate:
    """A Trigger's own filters and its upstream score."""

    trigger: str
    filters: Filters
    score: int

    @classmethod
    def of(cls, trigger: trigger_kind.Trigger) -> Gate:
        cfg = trigger.spec.config
        channels: list[object] = [
            *cfg.channels,
            *cfg.chat_ids,
            *cfg.service_ids,
            *cfg.repositories,
            *cfg.projects,
        ]
        users: list[object] = [*cfg.users, *cfg.allowed_numbers]
        events = [
            *cfg.events,
            *cfg.github_events,
            *cfg.jira_events,
            *cfg.gitlab_events,
            *cfg.bitbucket_events,
        ]
        filters = Filters.compile(channels=channels, users=users, patterns=cfg.patterns, events=events)
        score = TRIGGER_BASE_SCORE
        score += CHANNEL_SCORE if filters.channels else 0
        score += USER_SCORE if filters.users else 0
        score += PATTERN_SCORE if filters.patterns else 0
        return cls(trigger.metadata.name, filters, score)

    def admits(self, message: Event) -> bool:
        return self.filters.matches(message, events=message.event_type not in COMMAND_EVENTS)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One enabled binding: its id (`name`), Context, compiled filters, keywords and score."""

    name: str
    context: str
    filters: Filters
    required: tuple[str, ...]
    excluded: tuple[str, ...]
    score: int

    @classmethod
    def of(
        cls,
        binding: str,
        context: str,
        match: binding_kind.BindingMatch,
        *,
        gate_score: int = TRIGGER_BASE_SCORE,
    ) -> Route:
        """The route of binding id `binding`; `match` is its merged filters (`FlowBindingSpec.filters()`)."""
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
        return cls(binding, context, filters, required, excluded, score + gate_score)

    def matches(self, message: Event) -> bool:
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
    def build(cls, gate: Gate | None, routes: Iterable[Route]) -> TriggerRoutes:
        ordered = tuple(sorted(routes, key=lambda r: (-r.score, r.name)))
        contexts = tuple(sorted({r.context for r in ordered if r.context}))
        return cls(gate, ordered, contexts)

    @classmethod
    def empty(cls) -> TriggerRoutes:
        return cls(None, (), ())

    def select(self, message: Event) -> Route | Miss:
        """The best route for `message`, or the `Miss` that explains why there is none."""
        if self.gated and not self.gate.admits(message):  # type: ignore[union-attr] # gated: gate is set
            return FILTERED
        for route in self.candidates:
            if route.matches(message):
                return route
        return NO_MATCH
