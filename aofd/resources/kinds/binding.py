"""`kind: FlowBinding` (layer 5): runtime composition of flow + context + trigger.

This module owns the FlowBinding model and normalizes its two spellings to one shape:

- the seed's: `flow: {name}`, `context: {name}`, `trigger: {name, config: {channels, users,
  patterns, events}}` (binding-level filters on the trigger);
- upstream's (`binding.rs`, AOF-UPSTREAM.md section 1.7): `trigger: <name>`, `context: <name>`,
  `flow: <name>`, `agent`, `fleet`, `match{patterns, priority, channels, users, events,
  required_keywords, excluded_keywords}`, `enabled`, `config`.

Either way `spec.flow`, `spec.context`, `spec.agent`, `spec.fleet` are a `base.Ref` (`.name`)
or None, and `spec.trigger` is a `TriggerRef` (`.name`, `.config`) or None. One of flow,
agent and fleet is required (checked in validation). `spec.filters()` merges the seed's
trigger filters into upstream's `match` for the router.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from aofd.resources.kinds import base


class TriggerFilters(base.Model):
    """`spec.trigger.config` (seed): which messages of the trigger this binding takes."""

    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    events: tuple[str, ...] = ()


class TriggerRef(base.Ref):
    """`spec.trigger`: `slack-bot`, `{name: slack-bot}` or `{name, config: {channels, ...}}`."""

    config: TriggerFilters = Field(default_factory=base.shared_default(TriggerFilters))


class BindingMatch(base.Model):
    """`spec.match` (upstream `BindingMatch`); also the merged filters `FlowBindingSpec.filters()` returns."""

    patterns: tuple[str, ...] = ()
    priority: base.Int = 0
    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    required_keywords: tuple[str, ...] = ()
    excluded_keywords: tuple[str, ...] = ()


class FlowBindingSpec(base.Model):
    """`spec` of a FlowBinding, both spellings normalized."""

    flow: base.Ref | None = None
    context: base.Ref | None = None
    trigger: TriggerRef | None = None
    agent: base.Ref | None = None
    fleet: base.Ref | None = None
    match: BindingMatch = Field(default_factory=base.shared_default(BindingMatch))
    enabled: base.Bool = True
    config: dict[str, JsonValue] = Field(default_factory=dict)

    def filters(self) -> BindingMatch:
        """`match` with the seed's `trigger.config` filters added (lists concatenated, order kept)."""
        if self.trigger is None:
            return self.match
        extra = self.trigger.config
        if not (extra.channels or extra.users or extra.patterns or extra.events):
            return self.match
        m = self.match
        return m.model_copy(
            update={
                "channels": _merge(m.channels, extra.channels),
                "users": _merge(m.users, extra.users),
                "patterns": _merge(m.patterns, extra.patterns),
                "events": _merge(m.events, extra.events),
            }
        )

    @property
    def target(self) -> base.Ref | None:
        """What the binding runs: the flow, else the agent, else the fleet."""
        return self.flow or self.agent or self.fleet


def _merge(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return first + tuple(x for x in second if x not in first)


class FlowBinding(base.ResourceModel):
    """`kind: FlowBinding`."""

    kind: Literal["FlowBinding"] = "FlowBinding"
    spec: FlowBindingSpec
