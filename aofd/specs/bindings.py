"""`BindingSpec`: one FlowBinding compiled, what the router starts when an event matches; pure.

A binding's spec carries its id (its name, or `namespace/name` outside `default`), the names
of its Context and Trigger, its `RunPlan` (built once per effective digest in the compile
stage and kept by every run it starts, across hot swaps), the models it needs (the apply
stage checks that their providers are usable on this host) and, when the files alone decide
that it takes no events (`enabled: false`, no Trigger, a Trigger type aofd does not serve),
that reason.
"""

from __future__ import annotations

import dataclasses

from aofd.specs import flows, models
from aofd.specs import mcp as mcp_specs


@dataclasses.dataclass(frozen=True, slots=True)
class Inactive:
    """Why a binding takes no events whatever the host has: a condition reason and a message."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class BindingSpec:
    """One compiled FlowBinding."""

    id: str
    name: str
    context: str
    trigger: str | None
    plan: flows.RunPlan
    models: tuple[models.ModelRef, ...] = ()
    mcp: tuple[mcp_specs.McpServerSpec, ...] = ()
    """Every MCP server the plan's agents use (started per Context at apply)."""
    digest: str = ""
    inactive: Inactive | None = None

    @property
    def flow(self) -> str:
        """The name runs record as their flow: the flow's, else the agent's or fleet's."""
        return self.plan.flow.name
