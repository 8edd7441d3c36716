"""Context: the seed's spec, upstream's fields, the older example schema, and strictness."""

from __future__ import annotations

import textwrap

import pytest

from aofd.resources import documents, validation
from aofd.resources.kinds import base, context


def load(text: str, *, strict: bool = False) -> validation.ValidationResult:
    parsed = documents.parse("ctx.yaml", textwrap.dedent(text).encode())
    assert () == parsed.issues
    [doc] = parsed.documents
    return validation.validate_document(doc, strict=strict)


def spec_of(result: validation.ValidationResult) -> context.ContextSpec:
    assert result.resource is not None, [i.format() for i in result.issues]
    model = result.resource.model
    assert isinstance(model, context.Context)
    return model.spec


SEED_PROD = """\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: prod-context
spec:
  # Kubernetes cluster connection
  kubeconfig: ${KUBECONFIG_PROD}
  namespace: default
  cluster: prod-us-east-1

  # Environment variables (injected into agent execution)
  env:
    ENVIRONMENT: production
    LOG_LEVEL: info
    REQUIRE_APPROVAL: "true"

  # Approval workflow
  approval:
    required: true
    allowed_users:
      - U015SRE_LEAD
      - U016PLATFORM_ADMIN
    require_for:
      - kubectl delete
      - kubectl scale --replicas=0

  # Rate limits
  limits:
    max_requests_per_hour: 100
    max_tokens_per_request: 4096

  # Audit logging
  audit:
    enabled: true
    log_path: /var/log/aof/audit.log
    log_commands: true
    log_responses: false
"""

SEED_READONLY = """\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: readonly-context
spec:
  kubeconfig: ${KUBECONFIG_PROD}
  security:
    allowed_commands:
      - kubectl get
      - kubectl describe
      - kubectl logs
    blocked_commands:
      - kubectl delete
      - kubectl apply
      - kubectl scale
  env:
    KUBECTL_READONLY: "true"
"""


def test_seed_prod_context_loads_every_field() -> None:
    """The seed's prod-context example loads with its approval, limits and audit settings."""
    result = load(SEED_PROD)
    spec = spec_of(result)
    assert () == result.issues
    assert "${KUBECONFIG_PROD}" == spec.kubeconfig
    assert "prod-us-east-1" == spec.cluster
    assert {"ENVIRONMENT": "production", "LOG_LEVEL": "info", "REQUIRE_APPROVAL": "true"} == spec.env
    assert spec.approval is not None
    assert (True, ("U015SRE_LEAD", "U016PLATFORM_ADMIN")) == (
        spec.approval.required,
        spec.approval.allowed_users,
    )
    assert ("kubectl delete", "kubectl scale --replicas=0") == spec.approval.require_for
    assert spec.limits is not None
    assert (100, 4096) == (spec.limits.max_requests_per_hour, spec.limits.max_tokens_per_request)
    assert spec.audit is not None
    assert ("/var/log/aof/audit.log", True, False) == (
        spec.audit.log_path,
        spec.audit.log_commands,
        spec.audit.log_responses,
    )


def test_seed_readonly_context_loads_security_lists() -> None:
    """The seed's readonly-context example loads its allowed and blocked command lists."""
    spec = spec_of(load(SEED_READONLY))
    assert spec.security is not None
    assert ("kubectl get", "kubectl describe", "kubectl logs") == spec.security.allowed_commands
    assert ("kubectl delete", "kubectl apply", "kubectl scale") == spec.security.blocked_commands


def test_approval_defaults_follow_upstream() -> None:
    """An approval block with only `required` gets timeout 300, one approver and no self-approval."""
    spec = spec_of(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Context
            metadata: {name: c}
            spec:
              approval:
                required: true
            """
        )
    )
    assert spec.approval is not None
    assert (300, 1, False) == (
        spec.approval.timeout_seconds,
        spec.approval.min_approvers,
        spec.approval.allow_self_approval,
    )


def test_camel_case_and_snake_case_mean_the_same_context() -> None:
    """`workingDir`/`working_dir`, `includePayload`/`include_payload`, `envVar`/`env_var` are one field."""
    snake = spec_of(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Context
            metadata: {name: c}
            spec:
              working_dir: /srv
              audit: {enabled: true, include_payload: true}
              secrets: [{name: kube, env_var: KUBECONFIG}]
            """
        )
    )
    camel = spec_of(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Context
            metadata: {name: c}
            spec:
              workingDir: /srv
              audit: {enabled: true, includePayload: true}
              secrets: [{name: kube, envVar: KUBECONFIG}]
            """
        )
    )
    assert snake == camel
    assert ("/srv", "KUBECONFIG") == (snake.working_dir, snake.secrets[0].env_var)
    assert base.canonical(snake) == base.canonical(camel)


def test_older_example_schema_maps_synonyms_onto_real_fields() -> None:
    """`cluster_name`, `approval.enabled/required_for`, `audit.destination` and limit synonyms are mapped."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: prod}
        spec:
          kubeconfig: ${KUBECONFIG_PROD:-~/.kube/prod-config}
          cluster_name: prod-cluster
          approval:
            enabled: true
            required_for: [delete, scale_down]
          audit:
            enabled: true
            destination: s3://prod-audit-logs/aof/
          limits:
            max_concurrent_operations: 5
            rate_limit_per_minute: 20
            timeout_seconds: 300
          notifications:
            slack_channel: "#prod-alerts"
        """
    )
    spec = spec_of(result)
    assert () == result.issues
    assert "prod-cluster" == spec.cluster
    assert spec.approval is not None
    assert spec.audit is not None
    assert spec.limits is not None
    assert (True, ("delete", "scale_down")) == (spec.approval.required, spec.approval.require_for)
    assert "s3://prod-audit-logs/aof/" == spec.audit.sink
    assert (5, 20, 300) == (
        spec.limits.max_concurrent,
        spec.limits.max_requests_per_minute,
        spec.limits.max_execution_time_seconds,
    )


def test_connection_kubeconfig_is_a_fallback_for_kubeconfig() -> None:
    """`connection.kubeconfig` and `connection.namespace` fill `kubeconfig`/`namespace` only when unset."""
    spec = spec_of(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Context
            metadata: {name: dev-k8s}
            spec:
              namespace: explicit
              display: {name: "Dev", emoji: "🚀"}
              connection: {kubeconfig: ~/.kube/config, kubecontext: dev, namespace: from-connection}
              agent: {ref: devops}
              tools: [kubectl, helm]
            """
        )
    )
    assert ("~/.kube/config", "explicit") == (spec.kubeconfig, spec.namespace)
    assert spec.agent is not None
    assert "devops" == spec.agent.ref


def test_synonym_and_field_with_different_values_is_an_error() -> None:
    """Writing `enabled: true` and `required: false` together is contradictory and rejected."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          approval:
            required: false
            enabled: true
        """
    )
    assert None is result.resource
    assert ["error"] == [i.severity for i in result.issues]
    assert "synonym of 'required'" in result.issues[0].message


@pytest.mark.parametrize(("snake", "camel"), [("a", "a"), ("a", "b")])
def test_a_synonym_in_both_spellings_never_crashes_the_loader(snake: str, camel: str) -> None:
    """`cluster_name` and `clusterName` together (the same synonym twice, its field's two spellings alike)
    load when they agree and are an error when they differ; never an exception."""
    result = load(
        f"""\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {{name: c}}
        spec:
          cluster_name: {snake}
          clusterName: {camel}
        """
    )
    if snake == camel:
        assert result.resource is not None
        assert "a" == getattr(result.resource.model.spec, "cluster", None)
    else:
        assert None is result.resource
        assert ["error"] == [i.severity for i in result.issues]


def test_unknown_key_in_context_is_an_error_with_did_you_mean() -> None:
    """A typo anywhere under a Context is an error at its line, naming the closest known key."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          security:
            blocked_comands: [kubectl delete]
        """
    )
    assert None is result.resource
    assert [
        "ctx.yaml:6:5: error: unknown field 'blocked_comands' in Context spec.security; "
        "did you mean 'blocked_commands'?"
    ] == [i.format() for i in result.issues]


def test_unknown_key_at_context_spec_top_is_an_error() -> None:
    """An unknown key directly under spec is an error too (never a warning) in a Context."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          kubeconfg: /etc/kube
        """
    )
    assert [("error", 5, "unknown field 'kubeconfg' in Context spec; did you mean 'kubeconfig'?")] == [
        (i.severity, i.line, i.message) for i in result.issues
    ]


def test_yaml_11_no_is_not_a_boolean() -> None:
    """`required: no` is the string 'no' in YAML 1.2 and is rejected, never read as false."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          approval:
            required: no
        """
    )
    assert None is result.resource
    assert [
        "ctx.yaml:6:15: error: expected a boolean (true or false) for 'spec.approval.required', "
        "got the string 'no' (YAML 1.2: 'no' is a string; write true or false)"
    ] == [i.format() for i in result.issues]


def test_quoted_number_is_not_an_integer() -> None:
    """`timeout_seconds: "300"` is a string and is rejected at its position."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          approval:
            timeout_seconds: "300"
        """
    )
    assert [(6, 22, "error")] == [(i.line, i.col, i.severity) for i in result.issues]
    assert (
        "expected an integer for 'spec.approval.timeout_seconds', got the string '300'"
        in result.issues[0].message
    )


def test_float_is_not_an_integer_but_int_is_a_float() -> None:
    """`min_approvers: 1.5` is rejected while `max_cost_per_day: 10` (an int) is a valid float."""
    bad = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          approval: {min_approvers: 1.5}
        """
    )
    good = spec_of(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Context
            metadata: {name: c}
            spec:
              limits: {max_cost_per_day: 10}
            """
        )
    )
    assert ["error"] == [i.severity for i in bad.issues]
    assert good.limits is not None
    assert 10.0 == good.limits.max_cost_per_day


def test_min_approvers_zero_is_rejected() -> None:
    """Upstream rejects `min_approvers: 0`; so does aofd, saying the bound."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          approval: {min_approvers: 0}
        """
    )
    assert ["'spec.approval.min_approvers' must be greater than or equal to 1, got 0"] == [
        i.message for i in result.issues
    ]


def test_more_approvers_than_allowed_users_is_rejected() -> None:
    """Requiring three approvers from a list of two users can never be satisfied."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata: {name: c}
        spec:
          approval: {required: true, allowed_users: [U1, U2], min_approvers: 3}
        """
    )
    assert ["error"] == [i.severity for i in result.issues]


def test_context_name_must_be_dns_1123() -> None:
    """`Prod_Context` is not a DNS-1123 label, so the Context is rejected at metadata.name."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Context
        metadata:
          name: Prod_Context
        spec: {}
        """
    )
    assert [(4, 9, "invalid-name")] == [(i.line, i.col, i.code) for i in result.issues]


def test_env_values_written_as_numbers_are_text() -> None:
    """`PGPORT: 5432` and `DEBUG: true` in env are the strings '5432' and 'true'."""
    spec = spec_of(
        load(
            """\
            apiVersion: aof.dev/v1
            kind: Context
            metadata: {name: c}
            spec:
              env: {PGPORT: 5432, DEBUG: true}
            """
        )
    )
    assert {"PGPORT": "5432", "DEBUG": "true"} == spec.env


def test_limits_concurrency_is_the_smaller_cap() -> None:
    """`max_concurrent` (upstream) and `max_concurrent_requests` (seed) both cap; the smaller wins."""
    limits = context.Limits(max_concurrent=5, max_concurrent_requests=3)
    assert 3 == limits.concurrency
    assert None is context.Limits().concurrency
