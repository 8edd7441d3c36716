"""`kind: Context` (layer 0): an environment boundary, the security-relevant kind.

This module owns the Context model: the seed's full spec (kubeconfig, namespace, cluster,
env, working_dir, approval, audit, limits, security), upstream's additions (`secrets[]`,
audit `sink/events/include_payload/retention`, upstream limits) and the older schema that
upstream's own examples use (`display`, `connection`, `agent.ref`, `tools`, `notifications`,
`cluster_name`, `approval.enabled`, ...), all as explicitly declared fields: an unknown key
anywhere under a Context is an error (validation adds the did-you-mean), because a typo in a
guardrail (`blocked_comands`) must never silently turn it off.

Synonyms (the same meaning, renamed to the real field before validation; see `SYNONYMS`):

- `spec.cluster_name` -> `spec.cluster` (examples/contexts/{dev,prod,staging}.yaml)
- `spec.approval.enabled` -> `spec.approval.required`
- `spec.approval.required_for` -> `spec.approval.require_for`
- `spec.audit.destination` -> `spec.audit.sink` (both are a URL: s3://, file://, https://)
- `spec.limits.rate_limit_per_minute` -> `spec.limits.max_requests_per_minute`
- `spec.limits.max_concurrent_operations` -> `spec.limits.max_concurrent`
- `spec.limits.timeout_seconds` -> `spec.limits.max_execution_time_seconds`

Fallbacks (the older field is kept, and also fills the real one when that is not set):

- `spec.connection.kubeconfig` -> `spec.kubeconfig`
- `spec.connection.namespace` -> `spec.namespace`

Not merged on purpose (different meaning or unit): `audit.log_path` (a file path) vs
`audit.sink` (a URL); `limits.max_concurrent_requests` (seed) vs `limits.max_concurrent`
(upstream) are both kept, the guard uses the smaller when both are set (`Limits.concurrency`).
This module does no I/O and no `${VAR}` substitution.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from aofd.resources.kinds import base


class Approval(base.WithSynonyms):
    """`spec.approval`: who must approve which commands (upstream `ApprovalConfig`)."""

    SYNONYMS: ClassVar[dict[str, str]] = {"enabled": "required", "required_for": "require_for"}

    required: base.Bool = False
    allowed_users: tuple[str, ...] = ()
    require_for: tuple[str, ...] = ()
    timeout_seconds: base.PositiveInt = 300
    allow_self_approval: base.Bool = False
    min_approvers: base.PositiveInt = 1


class AuditEvent(base.CIEnum):
    """Event names upstream's `AuditEvent` declares."""

    AGENT_START = "agent_start"
    AGENT_COMPLETE = "agent_complete"
    TOOL_CALL = "tool_call"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_GRANTED = "approval_granted"
    APPROVAL_DENIED = "approval_denied"
    ERROR = "error"
    ALL = "all"


class Audit(base.WithSynonyms):
    """`spec.audit`: the seed's fields plus upstream's `AuditConfig`."""

    SYNONYMS: ClassVar[dict[str, str]] = {"destination": "sink"}

    enabled: base.Bool = False
    log_path: str | None = None
    log_commands: base.Bool = False
    log_responses: base.Bool = False
    sink: str | None = None
    events: tuple[AuditEvent, ...] = ()
    include_payload: base.Bool = False
    retention: str | None = None


class Limits(base.WithSynonyms):
    """`spec.limits`: the seed's rate limits plus upstream's `LimitsConfig`."""

    SYNONYMS: ClassVar[dict[str, str]] = {
        "rate_limit_per_minute": "max_requests_per_minute",
        "max_concurrent_operations": "max_concurrent",
        "timeout_seconds": "max_execution_time_seconds",
    }

    max_requests_per_hour: base.NonNegativeInt | None = None
    max_tokens_per_request: base.PositiveInt | None = None
    max_concurrent_requests: base.PositiveInt | None = None
    max_requests_per_minute: base.NonNegativeInt | None = None
    max_tokens_per_day: base.NonNegativeInt | None = None
    max_concurrent: base.PositiveInt | None = None
    max_execution_time_seconds: base.PositiveInt | None = None
    max_cost_per_day: base.NonNegativeFloat | None = None

    @property
    def concurrency(self) -> int | None:
        """The effective concurrency cap: the smaller of `max_concurrent` and `max_concurrent_requests`."""
        caps = [c for c in (self.max_concurrent, self.max_concurrent_requests) if c is not None]
        return min(caps) if caps else None


class Security(base.Model):
    """`spec.security`: command and namespace allow/block lists (seed), and aofd's
    `allowed_cluster_resources`."""

    allowed_namespaces: tuple[str, ...] = ()
    allowed_commands: tuple[str, ...] = ()
    blocked_commands: tuple[str, ...] = ()
    allowed_cluster_resources: tuple[str, ...] = ()
    """aofd: resource types (kubectl names: `nodes`, `pv`, `certificates.cert-manager.io`) a
    Context with `allowed_namespaces` may still reach: cluster-scoped and custom types."""
    allowed_tools: tuple[str, ...] = ()
    """aofd: MCP tools (`<server>/<tool>` globs) agents may call here; empty, only tools that say
    `readOnlyHint: true`; `["*"]`, every tool of the agents' servers."""
    blocked_tools: tuple[str, ...] = ()
    """aofd: MCP tools (`<server>/<tool>` globs) never called here; blocked wins over allowed."""


class SecretRef(base.Model):
    """`spec.secrets[]`: upstream `SecretRef{name, key?, envVar?}`."""

    name: str
    key: str | None = None
    env_var: str | None = None


class Display(base.Model):
    """`spec.display` (older example schema): how the context is shown in chat."""

    name: str | None = None
    emoji: str | None = None
    description: str | None = None


class Connection(base.Model):
    """`spec.connection` (older example schema): endpoints of the environment."""

    kubeconfig: str | None = None
    kubecontext: str | None = None
    namespace: str | None = None
    aws_profile: str | None = None
    aws_region: str | None = None
    aws_account_id: str | None = None
    database_url: str | None = None
    database_host: str | None = None
    database_name: str | None = None
    database_port: base.PositiveInt | None = None
    prometheus_url: str | None = None
    loki_url: str | None = None
    grafana_url: str | None = None
    argocd_url: str | None = None
    argo_workflows_url: str | None = None


class ContextAgent(base.Model):
    """`spec.agent` (older example schema): `{ref: <agent name or file>}`, the default agent."""

    ref: str


class Notifications(base.Model):
    """`spec.notifications` (older example schema): where to announce events of this context."""

    slack_channel: str | None = None
    pagerduty_service: str | None = None


class ContextSpec(base.WithSynonyms):
    """`spec` of a Context."""

    SYNONYMS: ClassVar[dict[str, str]] = {"cluster_name": "cluster"}

    kubeconfig: str | None = None
    namespace: str | None = None
    cluster: str | None = None
    env: base.StrMap = Field(default_factory=dict)
    working_dir: str | None = None
    approval: Approval | None = None
    audit: Audit | None = None
    limits: Limits | None = None
    security: Security | None = None
    secrets: tuple[SecretRef, ...] = ()
    # The older upstream example schema (examples/contexts/*.yaml).
    display: Display | None = None
    connection: Connection | None = None
    agent: ContextAgent | None = None
    tools: tuple[str, ...] = ()
    notifications: Notifications | None = None

    @model_validator(mode="before")
    @classmethod
    def _connection_fallbacks(cls, data: object) -> object:
        """`connection.kubeconfig/namespace` fill `kubeconfig/namespace` when those are not set."""
        if not isinstance(data, dict):
            return data
        connection = data.get("connection")
        if not isinstance(connection, dict):
            return data
        filled: dict[str, object] | None = None
        for key in ("kubeconfig", "namespace"):
            value = connection.get(key)
            if isinstance(value, str) and data.get(key) is None:
                filled = dict(data) if filled is None else filled
                filled[key] = value
        return data if filled is None else filled


class Context(base.ResourceModel):
    """`kind: Context`."""

    kind: Literal["Context"] = "Context"
    spec: ContextSpec = Field(default_factory=base.shared_default(ContextSpec))
