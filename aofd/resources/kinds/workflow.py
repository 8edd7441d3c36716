"""`kind: Workflow`: upstream's step-based workflow (`workflow.rs`, AOF-UPSTREAM.md section 1.8).

This module owns the Workflow model. Keys are camelCase upstream (`errorHandler`, `onError`,
`requiredApprovals`, `autoApprove`, `maxRetries`); snake_case is accepted too. A step's `agent`
is an `AgentRef`: a name (an Agent) or the seed's `{agentRef: {name, kind}}` (Agent or
AgentFleet). `next` is normalized to a list of `{condition?, target}`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue, field_validator

from aofd.resources.kinds import base


class StepType(base.CIEnum):
    AGENT = "agent"
    APPROVAL = "approval"
    VALIDATION = "validation"
    PARALLEL = "parallel"
    JOIN = "join"
    TERMINAL = "terminal"


class StateSchema(base.Model):
    """`spec.state`: a JSON-Schema-like declaration of the workflow state."""

    model_config = base.MODEL_CONFIG | {"extra": "allow"}

    type: str = "object"
    properties: base.FreeForm = Field(default_factory=dict)
    required: tuple[str, ...] = ()


class ReducerType(base.CIEnum):
    APPEND = "append"
    MERGE = "merge"
    SUM = "sum"
    REPLACE = "replace"


class Reducer(base.Model):
    type: ReducerType
    description: str | None = None


class Backoff(base.CIEnum):
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class Retry(base.Model):
    max_attempts: base.PositiveInt = 3
    backoff: Backoff = Backoff.EXPONENTIAL
    initial_delay: str = "1s"
    max_delay: str = "30s"


class CheckpointBackend(base.CIEnum):
    FILE = "file"
    REDIS = "redis"
    POSTGRES = "postgres"


class CheckpointFrequency(base.CIEnum):
    STEP = "step"
    CHANGE = "change"
    INTERVAL = "interval"


class Checkpointing(base.Model):
    enabled: base.Bool = True
    backend: CheckpointBackend = CheckpointBackend.FILE
    path: str | None = None
    url: str | None = None
    frequency: CheckpointFrequency = CheckpointFrequency.STEP
    history: base.PositiveInt = 10


class Recovery(base.Model):
    auto_resume: base.Bool = True
    skip_completed: base.Bool = True


class Approver(base.Model):
    role: str | None = None
    user: str | None = None


class AutoApprove(base.Model):
    condition: str


class ValidatorType(base.CIEnum):
    FUNCTION = "function"
    LLM = "llm"
    SCRIPT = "script"


class Validator(base.Model):
    type: ValidatorType
    name: str | None = None
    args: base.FreeForm | None = None
    model: str | None = None
    prompt: str | None = None
    command: str | None = None
    timeout: str | None = None


class StepConfig(base.Model):
    """`steps[].config`."""

    approvers: tuple[Approver, ...] = ()
    timeout: str | None = None
    required_approvals: base.PositiveInt | None = None
    auto_approve: AutoApprove | None = None
    validators: tuple[Validator, ...] = ()
    max_retries: base.NonNegativeInt | None = None
    on_failure: str | None = None
    message: str | None = None


class StepValidation(base.Model):
    type: str
    script: str | None = None
    prompt: str | None = None
    command: str | None = None
    timeout: str | None = None


class NextRule(base.Model):
    """`next` entries: go to `target` when `condition` holds (no condition: always)."""

    condition: str | None = None
    target: str


class BranchStep(base.Model):
    agent: base.AgentRef | None = None
    name: str | None = None


class Branch(base.Model):
    name: str
    steps: tuple[BranchStep, ...] = ()


class Join(base.Model):
    strategy: Literal["all", "any", "majority"] = "all"
    timeout: str | None = None


class Interrupt(base.Model):
    type: Literal["input", "confirm"]
    prompt: str | None = None
    schema_: JsonValue = None


class StepStatus(base.CIEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowStep(base.Model):
    """`spec.steps[]`."""

    name: str
    type: StepType = StepType.AGENT
    agent: base.AgentRef | None = None
    config: StepConfig | None = None
    validation: tuple[StepValidation, ...] = ()
    next: tuple[NextRule, ...] = ()
    parallel: base.Bool = False
    branches: tuple[Branch, ...] = ()
    join: Join | None = None
    on_error: tuple[str, ...] = ()
    interrupt: Interrupt | None = None
    status: StepStatus | None = None
    timeout: str | None = None
    description: str | None = None

    @field_validator("next", mode="before")
    @classmethod
    def _next_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [{"target": value}]
        return value

    @field_validator("on_error", mode="before")
    @classmethod
    def _on_error_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [value]
        return value


class WorkflowSpec(base.Model):
    """`spec` of a Workflow."""

    state: StateSchema | None = None
    entrypoint: str
    steps: tuple[WorkflowStep, ...]
    reducers: dict[str, Reducer] = Field(default_factory=dict)
    error_handler: str | None = None
    retry: Retry | None = None
    checkpointing: Checkpointing | None = None
    recovery: Recovery | None = None
    fleet: str | None = None


class Workflow(base.ResourceModel):
    """`kind: Workflow`."""

    kind: Literal["Workflow"] = "Workflow"
    spec: WorkflowSpec
