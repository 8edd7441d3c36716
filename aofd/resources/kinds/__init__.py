"""The resource kinds as frozen pydantic models, one module per kind.

Import the module of the kind you need (`from aofd.resources.kinds import context`, then
`context.Context`); `MODELS` maps each `ids.Kind` to its model class. Shared machinery
(the dual-spelling config, strict scalar types, `Ref`, `LoadedResource`, `canonical`) lives in
`kinds.base`. Validation with positions and issues is `aofd.resources.validation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aofd.resources import ids
from aofd.resources.kinds import agent, base, binding, context, fleet, flow, trigger, workflow

MODELS: Mapping[ids.Kind, type[base.ResourceModel]] = MappingProxyType(
    {
        ids.Kind.CONTEXT: context.Context,
        ids.Kind.AGENT: agent.Agent,
        ids.Kind.FLEET: fleet.AgentFleet,
        ids.Kind.FLOW: flow.AgentFlow,
        ids.Kind.TRIGGER: trigger.Trigger,
        ids.Kind.BINDING: binding.FlowBinding,
        ids.Kind.WORKFLOW: workflow.Workflow,
    }
)
"""The model class of every kind aofd runs (DaemonConfig is parsed separately and ignored)."""
