"""Every record kind the daemon writes, checked against ECS's own field reference
(`tests/data/ecs/ecs_flat.yml`, see `tests/audit/ecs_check.py`): field names ECS's or under `aofd.*`,
ECS types, allowed `event.*` values and category/type combinations, the ECS base fields on every
line, and the seed's audit line fields at their documented places (docs/siem.md).

The records come from the real writers over the daemon's own sink (`AuditAdapter` over a real
journal with small segments): the command guard and the approval desk (allowed, refused, approved,
denied, expired and cancelled commands, rate limits; MCP tool calls allowed, refused, approved,
failed and timed out, which have no `process`), the reconciler (an applied and a rejected
revision), a listener behind the real trigger server (a badly signed webhook), the dispatcher's
record of an event a Stalled binding could not run, and the journal itself (segments opened and
rotated, and what it writes at a restart after an unclean stop: abandoned commands, interrupted
runs, cancelled approvals, a repaired torn line). `daemon.started`/`daemon.stopping` and the run
records are checked on a real `aofd serve` (tests/integration/test_example2_approvals.py) and the
engine's (tests/runtime/engine/test_run_audit_records.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import journal, records, segment, verify
from aofd.daemon import auditsink
from aofd.reconcile import loop, state
from aofd.resources import ids
from aofd.runtime import commands, dispatch, guard, limits, mcpservers, memory, ports, routing
from aofd.settings import PlatformsSpec
from aofd.specs import memory as memory_specs
from aofd.specs import policy
from aofd.testing import resources
from tests.audit import ecs_check
from tests.reconcile.test_loop import BINDING, RecordingApplier, files, snap
from tests.runtime.fakes import harness, platforms, signing
from tests.runtime.test_approval_desk import RecordingPrompter
from tests.runtime.test_guard_flow import LEAD, REQUESTER, STRICT_APPROVAL, Harness

OTHER = ports.UserRef("U0OTHER", "bob", "slack:T1")
"""Not an approver anywhere: their clicks are refused."""

NOT_WRITTEN = frozenset({"config.loaded"})
"""In the vocabulary for readers of older logs; no writer of this daemon writes them."""
CHECKED_ELSEWHERE = frozenset(
    {"daemon.started", "daemon.stopping", "agent.run.started", "audit.sealed", "audit.pruned"}
)
"""Checked on a real daemon, in the engine's tests, or by the sealing tests."""


def flat(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(ecs_check.leaves(record))


# -- the checker itself can fail ------------------------------------------------------------


def test_the_reference_is_ecs_own() -> None:
    ecs = ecs_check.fields()
    assert ecs["@timestamp"]["type"] == "date"
    assert ecs["orchestrator.cluster.name"]["type"] == "keyword"
    assert {"event", "alert"} <= ecs_check.allowed("event.kind")
    assert ecs_check.allowed("event.outcome") == {"success", "failure", "unknown"}
    assert "denied" not in ecs_check.expected_types("process")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: r.update(agent="k8s-ops"), "agent: an ECS object"),
        (lambda r: r.update(cluster="prod"), "cluster: not an ECS field"),
        (lambda r: r.update(trigger={"name": "x"}), "trigger.name: not an ECS field"),
        (lambda r: r["event"].update(outcome="denied"), "event.outcome: ['denied'] not among"),
        (lambda r: r["event"].update(type=["denied"]), "event.type: ['denied'] not expected"),
        (lambda r: r["event"].update(category="process"), "event.category: ECS wants an array"),
        (lambda r: r["event"].update(duration="5"), "event.duration: '5' is not of ECS type long"),
        (lambda r: r.update(source={"ip": "not-an-ip"}), "source.ip: 'not-an-ip' is not of ECS type ip"),
        (lambda r: r.update({"@timestamp": "yesterday"}), "@timestamp: 'yesterday' is not of ECS type date"),
        (lambda r: r["process"].update(tty={"bogus": 1}), "process.tty.bogus: not an ECS field"),
        (lambda r: r["process"].update(tty={"rows": "24"}), "process.tty.rows: '24' is not of ECS type long"),
        (lambda r: r.update(dns={"answers": [{"ttl": "x"}]}), "dns.answers.ttl: 'x' is not of ECS type long"),
        (lambda r: r.update(dns={"answers": [{"nope": 1}]}), "dns.answers.nope: not an ECS field"),
        (lambda r: r.update(dns={"answers": ["x"]}), "dns.answers: 'x' is not of ECS type object"),
    ],
)
def test_the_checker_names_what_is_not_ecs(change: Any, problem: str) -> None:
    record = records.build("command.finished", context="prod", run_id="r1", process=records.Process(("ls",)))
    assert ecs_check.problems(record) == []
    change(record)
    assert any(p.startswith(problem) for p in ecs_check.problems(record)), ecs_check.problems(record)


def test_the_checker_finds_aofd_fields_of_two_types() -> None:
    one = {"aofd": {"run": {"status": "completed"}}}
    assert ecs_check.type_conflicts([one, {"aofd": {"run": {"status": 3}}}]) == [
        "aofd.run.status: ['integer', 'string']"
    ]
    assert ecs_check.type_conflicts([one, {"aofd": {"run": "x"}}]) == ["aofd.run: both a value and an object"]
    # an index maps 1 as long and 1.5 as float: the two do not agree
    assert ecs_check.type_conflicts([{"aofd": {"n": 1}}, {"aofd": {"n": 1.5}}]) == [
        "aofd.n: ['float', 'integer']"
    ]
    # inside lists of objects too (an index maps each object's fields)
    voters = [{"aofd": {"v": [{"id": "U1"}]}}, {"aofd": {"v": [{"id": 7}, {"id": "U2"}]}}]
    assert ecs_check.type_conflicts(voters) == ["aofd.v.id: ['integer', 'string']"]
    assert ecs_check.type_conflicts([{"aofd": {"v": ["a"]}}, {"aofd": {"v": [{"id": "U1"}]}}]) == [
        "aofd.v: both a value and an object"
    ]


def test_the_reference_is_the_version_the_records_declare() -> None:
    """`ecs.version` on every line names the ECS release whose reference the check uses."""
    assert ecs_check.reference_version() == records.ECS_VERSION


# -- the vocabulary -----------------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(records.ACTIONS))
def test_every_action_is_categorized_as_ecs_allows(action: str) -> None:
    """Each action's category and type are ECS's allowed values, each type one ECS expects with one
    of the categories; a record with every option `build` takes is ECS too."""
    everything = records.build(
        action,
        context="prod",
        outcome="failure",
        reason="why",
        duration_ns=5,
        user=records.Actor("U1", "alice", "slack:T1"),
        approver=records.Actor("U2", "bob", "slack:T1"),
        agent="k8s-ops",
        run_id="01RUN",
        trigger={"platform": "slack", "name": "slack-bot"},
        decision={"result": "deny", "rule": "r"},
        approval={"id": "a1"},
        process=records.Process(("kubectl", "get", "pods"), exit_code=0, working_directory="/w", pid=7),
        cluster="prod-us-east-1",
        namespace="web",
        resource_type="pods",
        revision="main@abc",
        output="out",
        prompt="p",
        source_ip="127.0.0.1",
        http_status=401,
        message="m",
        related=("U3",),
        origin=records.Origin(member="host-a", cluster_name="ops-prod"),
    )
    assert everything["service"]["node"] == {"name": "host-a"}
    assert everything["aofd"]["cluster"] == {"name": "ops-prod"}
    assert ecs_check.problems(records.build(action, context="prod")) == []
    assert ecs_check.problems(everything) == []


# -- the real writers -------------------------------------------------------------------------


class McpServers:
    """One ready MCP server `git` in every Context, answering from a table (the real pool and servers
    are in tests/runtime/test_guard_mcp.py; here only the records' shape matters)."""

    TOOLS = {
        "git_status": policy.ToolHints(read_only=True, destructive=False),
        "git_commit": policy.ToolHints(read_only=False, destructive=False),
        "git_reset": policy.ToolHints(read_only=False, destructive=True),
        "git_gc": policy.ToolHints(),  # no annotations at all
    }

    def status(self, key: mcpservers.ServerKey) -> tuple[mcpservers.ServerState, str | None]:
        return "ready", None

    def tool(self, key: mcpservers.ServerKey, name: str) -> mcpservers.McpTool | None:
        hints = self.TOOLS.get(name)
        return mcpservers.McpTool("git", name, "", {"type": "object"}, hints) if hints else None

    async def call(
        self,
        key: mcpservers.ServerKey,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float,
    ) -> mcpservers.McpResult:
        if tool == "git_gc":
            raise mcpservers.McpCallFailed("timeout", f"git/git_gc did not answer within {timeout:g} s")
        return mcpservers.McpResult(tool == "git_commit", "On branch main", 14, "ab" * 32)


async def _mcp_records(h: Harness, prompter: RecordingPrompter, sink: auditsink.AuditAdapter) -> None:
    """MCP tool calls through the guard: allowed, refused, approved, a tool error, a timeout."""
    h.add(
        "mcp",
        cluster="prod-us-east-1",
        allowed_tools=("git/*",),
        blocked_tools=("git/git_reset",),
        approval=policy.ApprovalPolicy(
            required=True, allowed_users=(LEAD.id,), require_for_tools=("git/git_commit",)
        ),
        log_responses=True,
    )
    mcp_guard = guard.CommandGuard(
        runner=h.runner,
        limits=h.limits,
        approvals=h.store,
        audit=sink,
        desk=h.guard.desk,
        policy_provider=h.policies.get,
        mcp=McpServers(),
    )

    async def call(tool: str, **arguments: Any) -> Any:
        request = guard.ToolRequest(
            context_name="mcp",
            key=("mcp", "0" * 64),
            server="git",
            tool=tool,
            arguments={"repo_path": "/srv/repo", **arguments},
            run_id="run-1",
            agent="k8s-ops",
            user=REQUESTER,
        )
        return await mcp_guard.call_tool(request)

    assert isinstance(await call("git_status"), mcpservers.McpResult)
    assert isinstance(await call("git_reset", token="s3cr3t-value"), guard.Denial)
    assert isinstance(await call("git_push"), guard.Denial)
    prompter.prompted.clear()  # (the expiring command's prompt was never taken)
    task = asyncio.create_task(call("git_commit", message="release"))
    prompt = await prompter.next_prompt()
    await mcp_guard.decide(prompt.id, user=OTHER, approve=True, action_id="m0")  # refused: not listed
    await mcp_guard.decide(prompt.id, user=LEAD, approve=True, action_id="m1")
    assert (await task).is_error
    with pytest.raises(mcpservers.McpCallFailed):
        await call("git_gc")


async def _guard_records(tmp_path: Path, sink: auditsink.AuditAdapter) -> None:
    """Commands and approvals through the real guard and desk; rate limits."""
    for where in ("guard", "failing"):
        (tmp_path / where).mkdir()
    h = Harness(tmp_path / "guard", audit=sink)  # type: ignore[arg-type]
    prompter = RecordingPrompter()
    h.use_desk(prompter)
    for name, timeout in (("prod", 60.0), ("expiring", 0.2)):
        h.add(
            name,
            cluster="prod-us-east-1",
            namespace="web",
            approval=dataclasses.replace(STRICT_APPROVAL, timeout_seconds=timeout),
        )
    assert isinstance(await h.run("prod", "kubectl get pods"), commands.CommandResult)
    assert isinstance(await h.run("prod", "kubectl get pods; kubectl delete ns prod"), guard.Denial)

    task = asyncio.create_task(h.run("prod", "kubectl delete pod web-1"))
    prompt = await prompter.next_prompt()
    await h.guard.decide(prompt.id, user=REQUESTER, approve=True, action_id="a1")  # refused: self
    await h.guard.decide(prompt.id, user=LEAD, approve=True, action_id="a2")
    assert isinstance(await task, commands.CommandResult)

    task = asyncio.create_task(h.run("prod", "kubectl scale deployment web --replicas=0"))
    prompt = await prompter.next_prompt()
    await h.guard.decide(prompt.id, user=LEAD, approve=False, action_id="a3")
    assert isinstance(await task, guard.Denial)
    assert isinstance(await h.run("expiring", "kubectl delete pod web-2"), guard.Denial)

    failing = Harness(tmp_path / "failing", audit=sink)  # type: ignore[arg-type]
    failing.use_desk(RecordingPrompter(fail=True))
    failing.add("noprompt", cluster="prod-us-east-1", namespace="web", approval=STRICT_APPROVAL)
    assert isinstance(await failing.run("noprompt", "kubectl delete pod web-3"), guard.Denial)

    await _mcp_records(h, prompter, sink)

    h.add("limited", limits=policy.LimitsPolicy(max_requests_per_minute=1))
    leases = [
        await h.guard.admit("limited", user=REQUESTER, run_id=f"r{i}", agent="k8s-ops") for i in range(3)
    ]
    await h.guard.aclose()
    for lease in leases:
        if isinstance(lease, limits.Lease):
            lease.release()


async def _reconciler_records(tmp_path: Path, sink: auditsink.AuditAdapter) -> None:
    """An applied revision, then a rejected one (a binding naming a flow that does not exist)."""
    rec = loop.Reconciler(
        sources=[loop.SourcePolicy("main", frozenset(ids.Kind))],
        store=state.StateStore(tmp_path / "state"),
        applier=RecordingApplier(),
        audit=sink,
        variables=dict,
        allow=("KUBECONFIG*",),
    )
    rec.offer(snap(files()))
    assert (await rec.reconcile_once()).outcome == "applied"
    rec.offer(snap(files(**{"bindings/prod.yaml": BINDING.replace("ops-flow", "ops-flwo")})))
    assert (await rec.reconcile_once()).outcome == "rejected"


async def _memory_records(tmp_path: Path, sink: auditsink.AuditAdapter) -> None:
    """An operator clearing a remembered conversation (`memory.cleared`), and one that was not there."""
    mem = memory.Memory(state_dir=tmp_path / "memory-state", audit=sink)
    key = memory.Key("prod", "slack-prod-bot", "C1/1700000000.000100")
    await mem.remember(key, memory_specs.MemoryPolicy(), user_text="q", answer_text="a")
    operator = ports.UserRef("admin:alice", "alice", "admin")
    assert await mem.clear(key, user=operator) == 1
    assert await mem.clear(key, user=operator) == 0


async def _listener_records() -> list[dict[str, Any]]:
    """A badly signed Slack webhook through the real listener and trigger server (`trigger.rejected`),
    and the dispatcher's record of an event a Stalled binding could not run."""
    secret = "slack-signing-secret"
    trigger = resources.trigger("slack-bot", "Slack", signing_secret=secret, bot_token="xoxb-test")
    async with (
        platforms.FakeSlack(channels={"C1": "ops"}) as slack,
        harness.Rig(platforms=PlatformsSpec(slack_api_url=slack.api_url)) as rig,
    ):
        await rig.apply([resources.binding("ops", trigger, context_name="prod")])
        body = json.dumps(
            {"type": "event_callback", "event_id": "Ev1", "event": {"type": "message"}}
        ).encode()
        headers = {
            "Content-Type": "application/json",
            **signing.slack_headers("wrong-secret", body, int(time.time())),
        }
        status, _ = await rig.send("slack", "slack-bot", body, headers)
        assert status == 401
        assert rig.audit.find("trigger.rejected")[0]["event"]["reason"] == "signature_invalid"
        message = ports.EventMessage(
            platform="slack", trigger="slack-bot", text="hi", user=ports.UserRef("U1", "alice", "slack:T1")
        )
        stalled = dispatch.not_run_record(
            message, binding="ops", stall=routing.Stall("ContextNotReady", "the kubeconfig is missing")
        )
        await rig.audit.write("prod", stalled)
        return [dict(r) for _, r in rig.audit.records]


async def _unclean_stop_records(audit_dir: Path, options: segment.JournalOptions) -> None:
    """A run, a command and an approval left open by a daemon that died; a torn last line."""
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as log:
        sink = auditsink.AuditAdapter(log, redactor=records.ArgvRedactor(key=b"k"))
        run = {"user": REQUESTER, "run_id": "01OPENRUN", "agent": "k8s-ops"}
        await sink.write("crashed", ports.AuditEvent("agent.run.started", outcome="unknown", **run))
        process = ports.AuditProcess(args=("/usr/bin/kubectl", "delete", "pod", "x"))
        target = ports.AuditTarget(namespace="web", cluster="prod-us-east-1", resource_type="pods")
        for action, cid in (("approval.requested", "C1"), ("command.started", "C2")):
            details = {"approval": {"id": "A1"}} if action == "approval.requested" else {}
            event = ports.AuditEvent(
                action, event_id=cid, process=process, target=target, details=details, **run
            )
            await sink.write("crashed", event, durable=True)
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as log:
        await log.open(["crashed"])
        active = log.active_segment("crashed")
    assert active is not None
    with active.open("ab") as handle:
        handle.write(b'{"@timestamp":"2025-06-01T12:00:03.412918Z","ecs":{"vers')
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as log:
        await log.open(["crashed"])


async def test_every_record_the_real_writers_write_is_ecs(
    tmp_path: Path, options: segment.JournalOptions
) -> None:
    audit_dir = tmp_path / "audit"
    small = dataclasses.replace(options, max_segment_bytes=8 * 1024)
    async with journal.AuditLog(audit_dir=audit_dir, options=small) as log:
        sink = auditsink.AuditAdapter(log, redactor=records.ArgvRedactor(key=b"k"))
        await _guard_records(tmp_path, sink)
        await _reconciler_records(tmp_path, sink)
        await _memory_records(tmp_path, sink)
    await _unclean_stop_records(audit_dir, small)
    rendered = await _listener_records()

    lines = [
        json.loads(line)
        for directory in sorted(audit_dir.iterdir())
        if directory.is_dir()
        for seg in segment.list_segments(directory)
        for line in seg.read_text().splitlines()
    ]
    for directory in audit_dir.iterdir():
        assert not directory.is_dir() or verify.verify(directory).ok, directory
    written = lines + [json.loads(json.dumps(r)) for r in rendered]
    assert {"config.applied", "config.rejected"} <= {r["event"]["action"] for r in lines}  # written lines
    seen = {r["event"]["action"] for r in written}
    expected = set(records.ACTIONS) - NOT_WRITTEN - CHECKED_ELSEWHERE
    assert expected <= seen, f"not written by any writer here: {sorted(expected - seen)}"

    for record in written:
        where = f"{record['event']['action']} {record['event'].get('reason', '')}"
        assert ecs_check.problems(record) == [], where
    assert ecs_check.type_conflicts(written) == []
    for record in lines:  # (the rendered ones have no `aofd.audit`: the journal adds it)
        assert ecs_check.missing_base_fields(record) == [], record["event"]["action"]
        assert record["event"]["dataset"] == "aofd.audit"
        assert record["ecs"]["version"] == records.ECS_VERSION

    def of(action: str) -> list[dict[str, Any]]:
        return [flat(r) for r in written if r["event"]["action"] == action]

    # The seed's line: agent, user, command, cluster, namespace on the command records once the guard
    # parsed the command; `approved_by` on the records of an approved command; status.
    # An MCP call has no process (and no Kubernetes target); its `aofd.mcp` says what was called.
    for action in ("command.started", "command.finished", "approval.requested", "approval.granted"):
        for rec in of(action):
            assert rec["aofd.agent.name"] == "k8s-ops", action
            assert rec["user.id"] == REQUESTER.id
            assert rec["trace.id"] == rec["aofd.agent.run_id"] in ("run-1", "01OPENRUN")
            if rec.get("aofd.tool") == "mcp":
                continue
            assert "kubectl" in rec["process.command_line"]
            assert (rec["orchestrator.cluster.name"], rec["orchestrator.namespace"]) == (
                "prod-us-east-1",
                "web",
            )
    mcp_calls = [r for r in written if r["aofd"].get("tool") == "mcp"]
    assert {r["event"]["action"] for r in mcp_calls} == {
        "command.requested",
        "command.denied",
        "command.started",
        "command.finished",
        "approval.requested",
        "approval.refused",
        "approval.granted",
    }
    # Every record of an MCP call, the approvers' clicks included, has `aofd.mcp` and no process.
    assert [r for r in written if (r.get("process") or {}).get("executable") == "mcp"] == []
    for record in mcp_calls:
        assert "process" not in record, record["event"]["action"]
        assert record["event"]["category"] == ["api"] or record["event"]["action"].startswith("approval.")
        assert record["aofd"]["mcp"]["server"] == "git"
        assert "s3cr3t-value" not in json.dumps(record)
    [click] = [r for r in mcp_calls if r["event"]["action"] == "approval.refused"]
    assert click["aofd"]["approval"]["voter"]["id"] == OTHER.id
    assert click["aofd"]["mcp"]["tool"] == "git_commit"
    timed_out = [r for r in mcp_calls if r["event"].get("reason") == "timeout"]
    assert [r["event"]["outcome"] for r in timed_out] == ["unknown"]  # it may have run
    finished = [r for r in mcp_calls if r["event"]["action"] == "command.finished"]
    assert sorted(r["event"].get("reason", "") for r in finished) == ["", "timeout", "tool error"]
    assert [r["aofd"]["output"]["text"] for r in finished if "output" in r["aofd"]] == ["On branch main"] * 2
    approved = [
        r
        for r in of("command.started") + of("command.finished")
        if r.get("process.command_line", "").endswith("delete pod web-1")
    ]
    assert [r["aofd.approval.approver.id"] for r in approved] == [LEAD.id, LEAD.id]
    assert {r["aofd.status"] for r in of("command.denied")} == {"denied"}
    assert {r["event.outcome"] for r in of("command.denied")} == {"failure"}
    [rejected] = of("trigger.rejected")
    assert (rejected["aofd.trigger.name"], rejected["aofd.status"]) == ("slack-bot", "denied")
    assert "trigger.name" not in rejected
    assert {r["aofd.status"] for r in of("command.finished") if r.get("aofd.tool") != "mcp"} == {"success"}
