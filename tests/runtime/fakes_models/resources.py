"""Real pydantic resources (Agent, AgentFleet, AgentFlow, Context) wrapped as a ResolvedBinding."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from aofd.plan import desired
from aofd.resources import ids
from aofd.resources.kinds import agent as agent_kind
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import context as context_kind
from aofd.resources.kinds import fleet as fleet_kind
from aofd.resources.kinds import flow as flow_kind
from aofd.testing import resources as testing_resources
from tests.runtime.fakes import resources as trigger_fakes


def _doc(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "aof.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": dict(spec)}


def agent(name: str, **spec: Any) -> kinds_base.LoadedResource:
    return testing_resources.loaded(
        ids.Kind.AGENT, agent_kind.Agent.model_validate(_doc("Agent", name, spec))
    )


def fleet(name: str, **spec: Any) -> kinds_base.LoadedResource:
    return testing_resources.loaded(
        ids.Kind.FLEET, fleet_kind.AgentFleet.model_validate(_doc("AgentFleet", name, spec))
    )


def flow(name: str, **spec: Any) -> kinds_base.LoadedResource:
    return testing_resources.loaded(
        ids.Kind.FLOW, flow_kind.AgentFlow.model_validate(_doc("AgentFlow", name, spec))
    )


def context(name: str, **spec: Any) -> kinds_base.LoadedResource:
    return testing_resources.loaded(
        ids.Kind.CONTEXT, context_kind.Context.model_validate(_doc("Context", name, spec))
    )


def bind(
    name: str,
    *,
    ctx: kinds_base.LoadedResource,
    flow_res: kinds_base.LoadedResource | None = None,
    agent_res: kinds_base.LoadedResource | None = None,
    agents: Sequence[kinds_base.LoadedResource] = (),
    fleets: Sequence[kinds_base.LoadedResource] = (),
    digest: str = "",
) -> desired.ResolvedBinding:
    """A ResolvedBinding of `flow_res` (or `agent_res`) under `ctx`, with the agents and fleets it reaches."""
    base = trigger_fakes.binding(
        name, trigger_fakes.trigger("slack-bot", "Slack", bot_token="x", signing_secret="y")
    )
    return dataclasses.replace(
        base,
        flow=flow_res,
        agent=agent_res,
        context=ctx,
        agents={a.name: a for a in [*agents, *([agent_res] if agent_res else [])]},
        fleets={f.name: f for f in fleets},
        digest=ids.Digest("sha256:" + (digest or name)),
    )
