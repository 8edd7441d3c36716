"""MCP tool calls through the Context guard, against real MCP servers (`mcp-server-time`,
`mcp-server-git`) run by the daemon's real server pool: policy (`allowed_tools`,
`blocked_tools`, the read-only default), approval bound to the exact arguments with the prompt
showing server, tool and (masked) arguments, the recheck after the wait, `command.started` durable
before the call (fail closed), and every record ECS-true with no `process`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aofd import settings
from aofd.runtime import (
    approvaldesk,
    approvals,
    commands,
    engine,
    guard,
    limits,
    mcpservers,
    ports,
    runs,
    tools,
)
from aofd.runtime.providers import registry
from aofd.specs import flows, policy
from aofd.specs import mcp as mcp_specs
from aofd.testing import recorders
from aofd.testing import resources as res
from tests.audit import ecs_check
from tests.runtime.engine.conftest import message
from tests.runtime.fakes_models import servers
from tests.runtime.test_guard_flow import LEAD, REQUESTER, RecordingAudit

VENV_BIN = Path(sys.executable).parent
TIME_EXE = VENV_BIN / "mcp-server-time"
GIT_EXE = VENV_BIN / "mcp-server-git"
GIT = shutil.which("git")

pytestmark = pytest.mark.skipif(
    not (TIME_EXE.exists() and GIT_EXE.exists() and GIT),
    reason="needs mcp-server-time and mcp-server-git (the `test` extra) and git",
)

TIME = mcp_specs.McpServerSpec(name="time", command="mcp-server-time", args=("--local-timezone", "UTC"))

COMMIT_APPROVAL = policy.ApprovalPolicy(
    required=True,
    allowed_users=(LEAD.id,),
    require_for_tools=("git/git_commit",),
)


class PromptReplier:
    """The chat side of `approvaldesk.ChatPrompter`: records what approvers would read."""

    def __init__(self) -> None:
        self.prompts: list[tuple[str, str, tuple[str, ...]]] = []
        self.asked = asyncio.Event()
        self.told: list[str] = []

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        self.prompts.append((request_id, summary, argv))
        self.asked.set()
        return f"prompt-{len(self.prompts)}"

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        self.told.append(text)

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        self.told.append(text)

    async def next_prompt(self) -> tuple[str, str, tuple[str, ...]]:
        await asyncio.wait_for(self.asked.wait(), 10)
        self.asked.clear()
        return self.prompts[-1]


def git(repo: Path, *args: str) -> str:
    assert GIT is not None
    done = subprocess.run(
        [GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout


class McpRig:
    """A guard over a real server pool, real stdio servers pinned like the daemon pins them."""

    def __init__(self, tmp_path: Path, *, audit: RecordingAudit | None = None) -> None:
        self.tmp = tmp_path
        helpers = tmp_path / "helpers"
        helpers.mkdir()
        assert GIT is not None
        (helpers / "git").symlink_to(GIT)  # mcp-server-git runs `git` from the Context's PATH
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        git(self.repo, "config", "user.email", "ops@example.com")
        git(self.repo, "config", "user.name", "ops")
        (self.repo / "README").write_text("hello\n")
        git(self.repo, "add", "README")
        git(self.repo, "commit", "-q", "-m", "first")
        (self.repo / "CHANGE").write_text("change\n")
        git(self.repo, "add", "CHANGE")
        self.git_spec = mcp_specs.McpServerSpec(
            name="git", command="mcp-server-git", args=("--repository", str(self.repo))
        )
        paths = {"mcp-server-time": TIME_EXE, "mcp-server-git": GIT_EXE}
        self.runner = commands.CommandRunner(
            executables=settings.ExecutablesSpec(paths=paths, helpers_dir=helpers),
            cache_dir=tmp_path / "cache",
            work_dir=tmp_path / "work",
        )
        self.pool = mcpservers.McpPool(
            build_env=self.runner.build_env, servers=paths, executables={}, state_dir=tmp_path / "state"
        )
        self.policies: dict[str, policy.GuardPolicy] = {}
        self.audit = audit or RecordingAudit()
        self.store = approvals.ApprovalStore()
        self.chat = PromptReplier()
        desk = approvaldesk.ApprovalDesk(
            store=self.store, audit=self.audit, prompter=approvaldesk.ChatPrompter(self.chat)
        )
        self.guard = guard.CommandGuard(
            runner=self.runner,
            limits=limits.RateLimits(),
            approvals=self.store,
            audit=self.audit,
            desk=desk,
            policy_provider=self.policies.get,
            mcp=self.pool,
        )

    def add(self, name: str, **fields: Any) -> policy.GuardPolicy:
        pol = policy.GuardPolicy(context=name, **fields)
        self.policies[name] = pol
        return pol

    async def start(self, context: str, *specs: mcp_specs.McpServerSpec) -> None:
        wanted = {mcpservers.key_of(context, s): (self.policies[context], s) for s in specs}
        assert await self.pool.ensure(wanted) == {}

    def request(
        self, context: str, spec: mcp_specs.McpServerSpec, tool: str, arguments: dict[str, Any]
    ) -> guard.ToolRequest:
        return guard.ToolRequest(
            context_name=context,
            key=mcpservers.key_of(context, spec),
            server=spec.name,
            tool=tool,
            arguments=arguments,
            run_id="run-1",
            agent="ops",
            user=REQUESTER,
            origin=ports.ReplyTarget(platform="slack", trigger="slack-bot", channel_id="C1", thread="1.1"),
            timeout=spec.timeout_for(tool),
        )

    def commits(self) -> list[str]:
        return git(self.repo, "log", "--format=%s").splitlines()

    def mcp_records(self) -> list[dict[str, Any]]:
        return [r for _, r, _ in self.audit.records if r["event"]["action"].startswith("command.")]

    def assert_ecs(self) -> None:
        written = [r for _, r, _ in self.audit.records]
        for record in written:
            assert ecs_check.problems(record) == [], record["event"]["action"]
        assert ecs_check.type_conflicts(written) == []
        for record in self.mcp_records():
            assert "process" not in record, record["event"]["action"]
            assert record["event"]["category"] == ["api"]
            assert record["aofd"]["tool"] == "mcp"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[McpRig]:
    made = McpRig(tmp_path)
    try:
        yield made
    finally:
        await made.pool.aclose()


async def test_a_read_only_tool_runs_without_allowed_tools(rig: McpRig) -> None:
    rig.add("prod")
    await rig.start("prod", TIME)
    result = await rig.guard.call_tool(rig.request("prod", TIME, "get_current_time", {"timezone": "UTC"}))

    assert isinstance(result, mcpservers.McpResult), result
    assert not result.is_error
    assert '"timezone": "UTC"' in result.text
    assert rig.audit.actions() == ["command.requested", "command.started", "command.finished"]
    started, finished = rig.audit.find("command.started")[0], rig.audit.find("command.finished")[0]
    assert started["aofd"]["mcp"] == {
        "server": "time",
        "tool": "get_current_time",
        "transport": "stdio",
        "arguments": '{"timezone":"UTC"}',
        "arguments_sha256": guard.arguments_digest({"timezone": "UTC"}),
        "read_only": True,
        "destructive": False,
    }
    assert started["aofd"]["decision"] == {"result": "allow", "rule": "read_only"}
    assert [durable for _, r, durable in rig.audit.records if r["event"]["action"] == "command.started"] == [
        True
    ]
    assert finished["aofd"]["output"] == {"sha256": result.sha256, "bytes": result.size}
    assert finished["event"]["outcome"] == "success"
    assert finished["event"]["duration"] > 0
    rig.assert_ecs()


async def test_git_reset_is_refused_outside_allowed_tools_and_secrets_stay_masked(rig: McpRig) -> None:
    rig.add("prod", allowed_tools=("git/git_status",))
    await rig.start("prod", rig.git_spec)
    reset = {"repo_path": str(rig.repo), "password": "hunter2-do-not-log"}
    denied = await rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_reset", reset))

    assert isinstance(denied, guard.Denial)
    assert (denied.stage, denied.rule) == ("policy", "allowed_tools")
    assert "git/git_reset" in denied.reason
    assert (rig.repo / "CHANGE").exists()
    assert "CHANGE" in git(rig.repo, "diff", "--cached", "--name-only")
    record = rig.audit.find("command.denied")[0]
    assert record["aofd"]["mcp"]["destructive"] is True
    assert record["aofd"]["mcp"]["read_only"] is False
    assert record["aofd"]["decision"]["stage"] == "policy"
    assert "hunter2" not in json.dumps(rig.audit.records)
    assert '"password":"[REDACTED]"' in record["aofd"]["mcp"]["arguments"]

    status = await rig.guard.call_tool(
        rig.request("prod", rig.git_spec, "git_status", {"repo_path": str(rig.repo)})
    )
    assert isinstance(status, mcpservers.McpResult)
    assert "CHANGE" in status.text
    rig.assert_ecs()


async def test_blocked_tools_win_and_unknown_tools_and_servers_are_refused(rig: McpRig) -> None:
    rig.add("prod", allowed_tools=("git/*",), blocked_tools=("git/git_reset",))
    await rig.start("prod", rig.git_spec)
    repo = {"repo_path": str(rig.repo)}

    blocked = await rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_reset", repo))
    assert isinstance(blocked, guard.Denial)
    assert blocked.rule == "blocked_tools:git/git_reset"
    unknown = await rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_push", repo))
    assert isinstance(unknown, guard.Denial)
    assert unknown.stage == "start"
    assert "has no tool 'git_push'" in unknown.reason
    not_started = await rig.guard.call_tool(rig.request("prod", TIME, "get_current_time", {}))
    assert isinstance(not_started, guard.Denial)
    assert not_started.stage == "start"
    assert "not ready" in not_started.reason
    assert rig.audit.actions().count("command.denied") == 3
    rig.assert_ecs()


async def test_git_commit_waits_for_approval_showing_server_tool_and_arguments(rig: McpRig) -> None:
    rig.add("prod", allowed_tools=("git/*",), approval=COMMIT_APPROVAL)
    await rig.start("prod", rig.git_spec)
    arguments = {"repo_path": str(rig.repo), "message": "release 1.2", "auth_token": "ghp_secretvalue"}
    call = asyncio.create_task(
        rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_commit", arguments))
    )
    request_id, summary, argv = await rig.chat.next_prompt()

    assert rig.commits() == ["first"]  # nothing runs while a person decides
    assert "for the MCP tool git/git_commit;" in summary
    assert argv[:2] == ("mcp", "git/git_commit")
    shown = json.loads(argv[2])
    assert shown["message"] == "release 1.2"
    assert shown["auth_token"] == "[REDACTED]"
    assert argv[3] == "sha256:" + guard.arguments_digest(arguments)  # bound to these exact arguments
    assert "ghp_secretvalue" not in json.dumps(rig.chat.prompts)
    await rig.guard.decide(request_id, user=LEAD, approve=True, action_id="a1")
    result = await asyncio.wait_for(call, 15)

    assert isinstance(result, mcpservers.McpResult), result
    assert not result.is_error, result.text
    assert rig.commits() == ["release 1.2", "first"]
    started = rig.audit.find("command.started")[0]
    assert started["aofd"]["approval"]["approver"]["id"] == LEAD.id
    assert started["aofd"]["mcp"]["read_only"] is False
    assert started["aofd"]["mcp"]["destructive"] is False
    assert "ghp_secretvalue" not in json.dumps(rig.audit.records)

    # A denial: not run.
    (rig.repo / "OTHER").write_text("x\n")
    git(rig.repo, "add", "OTHER")
    again = {"repo_path": str(rig.repo), "message": "second"}
    call = asyncio.create_task(rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_commit", again)))
    request_id, _, _ = await rig.chat.next_prompt()
    await rig.guard.decide(request_id, user=LEAD, approve=False, action_id="a2")
    denied = await asyncio.wait_for(call, 15)
    assert isinstance(denied, guard.Denial)
    assert denied.stage == "approval"
    assert "second" not in rig.commits()
    rig.assert_ecs()


async def test_a_policy_tightened_during_the_wait_denies_at_recheck(rig: McpRig) -> None:
    pol = rig.add("prod", allowed_tools=("git/*",), approval=COMMIT_APPROVAL)
    await rig.start("prod", rig.git_spec)
    arguments = {"repo_path": str(rig.repo), "message": "sneaky"}
    call = asyncio.create_task(
        rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_commit", arguments))
    )
    request_id, _, _ = await rig.chat.next_prompt()
    rig.policies["prod"] = dataclasses.replace(pol, blocked_tools=("git/git_commit",))
    await rig.guard.decide(request_id, user=LEAD, approve=True, action_id="a1")
    denied = await asyncio.wait_for(call, 15)

    assert isinstance(denied, guard.Denial), denied
    assert (denied.stage, denied.rule) == ("recheck", "blocked_tools:git/git_commit")
    assert denied.reason.startswith("the Context's policy changed")
    assert rig.commits() == ["first"]
    assert "command.started" not in rig.audit.actions()
    rig.assert_ecs()


async def test_no_call_when_command_started_cannot_be_made_durable(tmp_path: Path) -> None:
    rig = McpRig(tmp_path, audit=RecordingAudit(fail_durable=True))
    try:
        rig.add("prod", allowed_tools=("git/git_commit",))
        await rig.start("prod", rig.git_spec)
        arguments = {"repo_path": str(rig.repo), "message": "unaudited"}
        result = await rig.guard.call_tool(rig.request("prod", rig.git_spec, "git_commit", arguments))
    finally:
        await rig.pool.aclose()
    assert isinstance(result, guard.Denial)
    assert result.stage == "audit"
    assert result.reason == guard.AUDIT_UNAVAILABLE
    assert rig.commits() == ["first"]
    assert rig.audit.actions() == ["command.requested"]


async def test_the_run_deadline_and_the_context_bound_the_call(rig: McpRig) -> None:
    rig.add("prod")
    await rig.start("prod", TIME)
    request = dataclasses.replace(
        rig.request("prod", TIME, "get_current_time", {"timezone": "UTC"}), time_left=lambda: 0.0
    )
    denied = await rig.guard.call_tool(request)
    assert isinstance(denied, guard.Denial)
    assert denied.stage == "limits"
    assert "command.started" not in rig.audit.actions()


async def test_a_guard_without_servers_refuses_every_mcp_call(tmp_path: Path) -> None:
    audit = RecordingAudit()
    pols = {"prod": policy.GuardPolicy(context="prod", allowed_tools=("*",))}
    plain = guard.CommandGuard(
        runner=commands.CommandRunner(
            executables=settings.ExecutablesSpec(), cache_dir=tmp_path / "c", work_dir=tmp_path / "w"
        ),
        limits=limits.RateLimits(),
        approvals=approvals.ApprovalStore(),
        audit=audit,
        approval_requester=lambda _r: asyncio.sleep(0, None),
        policy_provider=pols.get,
    )
    request = guard.ToolRequest(
        context_name="prod",
        key=mcpservers.key_of("prod", TIME),
        server="time",
        tool="get_current_time",
        arguments={},
        run_id="r",
        agent="a",
        user=REQUESTER,
    )
    denied = await plain.call_tool(request)
    assert isinstance(denied, guard.Denial)
    assert denied.reason == guard.NO_MCP
    assert audit.actions() == ["command.requested", "command.denied"]


async def test_the_toolbox_turns_refusals_and_failures_into_results_the_model_reads(rig: McpRig) -> None:
    rig.add("prod", allowed_tools=("git/git_status", "time/*"))
    await rig.start("prod", rig.git_spec, TIME)
    counted: list[bool] = []
    ctx = tools.CallContext(
        run_id="run-1",
        context_name="prod",
        agent="ops",
        user=REQUESTER,
        origin=ports.ReplyTarget(platform="slack", trigger="slack-bot", channel_id="C1"),
        on_command=counted.append,
    )
    offered = {t.name: t for t in tools.mcp_tools((rig.git_spec, TIME), "prod", rig.pool)}
    assert {"git__git_status", "git__git_reset", "time__get_current_time"} <= set(offered)
    assert offered["time__get_current_time"].schema.input_schema["properties"]["timezone"]
    box = tools.Toolbox(runner=rig.guard)

    refused = await box.call(offered["git__git_reset"], {"repo_path": str(rig.repo)}, ctx)
    assert refused.is_error
    assert refused.text.startswith("not run (policy):")
    bad_tz = await box.call(offered["time__get_current_time"], {"timezone": "Mars/Olympus"}, ctx)
    assert bad_tz.is_error
    assert "Invalid timezone" in bad_tz.text
    ok = await box.call(offered["git__git_status"], {"repo_path": str(rig.repo)}, ctx)
    assert not ok.is_error
    assert "CHANGE" in ok.text
    assert counted == [False, True, True]


def time_script(body: dict[str, Any]) -> servers.Reply:
    """Ask for the time in Paris through the MCP tool, then answer with what it returned."""
    last = body["messages"][-1]
    if isinstance(last["content"], str):
        return servers.a_tool_use("time__get_current_time", {"timezone": "Europe/Paris"})
    result = last["content"][0]
    assert result["type"] == "tool_result"
    return servers.a_text(f"The tool said: {result['content']}")


async def test_an_agent_calls_a_read_only_mcp_tool_and_its_result_reaches_the_model(rig: McpRig) -> None:
    """The real anthropic client against a loopback Messages API: the agent is offered the server's
    tools as `<server>__<tool>` with the server's schema, calls one, and the model reads the result;
    the run holds a lease on its servers and counts the call like a command."""
    ctx = res.context("prod", namespace="web")
    rig.policies["prod"] = res.guard_policy(ctx)
    agent = res.agent(
        "timekeeper",
        model="anthropic:claude-sonnet-4",
        instructions="Tell the time.",
        mcp_servers=[{"name": "time", "command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}],
    )
    plan = res.run_plan(res.bind("ops", ctx=ctx, agent_res=agent))
    (spec,) = flows.mcp_servers(plan)
    await rig.start("prod", spec)
    model = servers.FakeModelServer(time_script)
    await model.start()
    leased: list[int] = []
    real_lease = rig.pool.lease

    def lease(keys: Any) -> Any:
        leased.append(len(list(keys)))
        return real_lease([mcpservers.key_of("prod", spec)])

    rig.pool.lease = lease  # type: ignore[method-assign]
    eng = engine.Engine(
        providers=registry.Providers(
            models=settings.ModelsSpec(anthropic_base_url=model.base_url),
            environ={"ANTHROPIC_API_KEY": "sk-test"},
        ),
        commands=rig.guard,
        replier=recorders.RecordingReplier(),
        history=runs.RunHistory(capacity=10),
        audit=rig.audit,
        mcp=rig.pool,
    )
    try:
        record = await eng.run(plan, message("what time is it in Paris?"))
    finally:
        await eng.aclose()
        await model.close()

    assert record.status is runs.RunStatus.COMPLETED, record.error
    first, second = model.bodies()
    offered = {t["name"]: t for t in first["tools"]}
    assert set(offered) == {"time__get_current_time", "time__convert_time"}
    assert offered["time__get_current_time"]["input_schema"]["properties"]["timezone"]["type"] == "string"
    assert offered["time__get_current_time"]["description"]
    tool_result = second["messages"][-1]["content"][0]
    assert tool_result.get("is_error") in (None, False)
    assert '"timezone": "Europe/Paris"' in json.dumps(tool_result["content"]).replace('\\"', '"')
    assert "Europe/Paris" in (record.answer or "")
    assert (record.tool_calls, record.commands_run, record.commands_denied) == (1, 1, 0)
    assert leased == [1]
    finished = rig.audit.find("command.finished")[0]
    assert (finished["aofd"]["agent"]["name"], finished["aofd"]["mcp"]["tool"]) == (
        "timekeeper",
        "get_current_time",
    )
    rig.assert_ecs()


async def test_a_run_holding_a_lease_keeps_calling_through_the_guard_across_a_config_change(
    rig: McpRig,
) -> None:
    """Make-before-break through the guard: the old server still answers the run that leases it."""
    rig.add("prod")
    await rig.start("prod", TIME)
    moved = dataclasses.replace(TIME, args=("--local-timezone", "Europe/Paris"))
    old_key = mcpservers.key_of("prod", TIME)
    async with rig.pool.lease([old_key]):
        await rig.start("prod", moved)  # the old config is no longer wanted: it retires
        assert rig.pool.status(old_key)[0] == "ready"
        assert rig.pool.tool(old_key, "get_current_time") is not None
        result = await rig.guard.call_tool(rig.request("prod", TIME, "get_current_time", {"timezone": "UTC"}))
        assert isinstance(result, mcpservers.McpResult), result
        assert '"timezone": "UTC"' in result.text
    await until_stopped(rig.pool, old_key)
    late = await rig.guard.call_tool(rig.request("prod", TIME, "get_current_time", {"timezone": "UTC"}))
    assert isinstance(late, guard.Denial)


async def until_stopped(pool: mcpservers.McpPool, key: mcpservers.ServerKey) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 20.0
    while pool.status(key)[0] != "stopped":
        assert loop.time() < end, "the retired server did not stop after its lease ended"
        await asyncio.sleep(0.01)
