"""What approvers and the audit log are shown of an MCP call, against a table-driven server pool:
the arguments whole or no approval asked (keys never merged, nesting and size never cut silently,
the platform's prompt never cutting them), server and tool names escaped, secrets in values
scrubbed with the audit log's patterns (the arguments staying JSON through the journal's scrub),
a timed-out call audited `unknown`, `command.requested` before `command.started`, and a request
for another Context's server refused. The real pool and servers are in test_guard_mcp.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aofd import errors, settings
from aofd.audit import records
from aofd.daemon import auditsink
from aofd.runtime import approvaldesk, approvals, commands, guard, limits, mcpservers, ports, tools
from aofd.specs import policy
from tests.runtime.test_guard_flow import LEAD, REQUESTER, RecordingAudit
from tests.runtime.test_guard_mcp import PromptReplier

KEY = ("prod", "0" * 64)
EVERY_CALL_APPROVED = policy.ApprovalPolicy(
    required=True, allowed_users=(LEAD.id,), require_for_tools=("evil/*",)
)


class FakeServers:
    """One ready server `evil` listing `tools` (name -> annotations); records each call, or fails
    every call with `fail`."""

    def __init__(
        self, tools: Mapping[str, policy.ToolHints], *, fail: mcpservers.McpCallFailed | None = None
    ) -> None:
        self.tools = dict(tools)
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def status(self, key: mcpservers.ServerKey) -> tuple[mcpservers.ServerState, str | None]:
        return "ready", None

    def tool(self, key: mcpservers.ServerKey, name: str) -> mcpservers.McpTool | None:
        hints = self.tools.get(name)
        return mcpservers.McpTool("evil", name, "", {"type": "object"}, hints) if hints else None

    async def call(
        self, key: mcpservers.ServerKey, tool: str, arguments: Mapping[str, Any], *, timeout: float
    ) -> mcpservers.McpResult:
        self.calls.append((tool, dict(arguments)))
        if self.fail is not None:
            raise self.fail
        return mcpservers.McpResult(False, "done", 4, "ab" * 32)


class ScrubbingAudit(RecordingAudit):
    """Records as the journal writes them: through `records.scrub_secrets`."""

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        record = records.scrub_secrets(auditsink.render(event, context=context, redactor=self._redactor))
        self.records.append((context, json.loads(json.dumps(record)), durable))


class FailingRequested(RecordingAudit):
    """Fails every `command.requested` write (a full disk for that one record)."""

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        if event.action == "command.requested":
            raise errors.AuditUnavailable("write failed: EIO")
        await super().write(context, event, durable=durable)


WRITE = policy.ToolHints(read_only=False, destructive=False)
READ = policy.ToolHints(read_only=True, destructive=False)


class Rig:
    def __init__(
        self,
        tmp_path: Path,
        servers: FakeServers,
        *,
        audit: RecordingAudit | None = None,
        approval: policy.ApprovalPolicy | None = EVERY_CALL_APPROVED,
    ) -> None:
        self.servers = servers
        self.audit = audit or RecordingAudit()
        self.chat = PromptReplier()
        self.policies = {
            "prod": policy.GuardPolicy(context="prod", allowed_tools=("evil/*",), approval=approval)
        }
        store = approvals.ApprovalStore()
        desk = approvaldesk.ApprovalDesk(
            store=store, audit=self.audit, prompter=approvaldesk.ChatPrompter(self.chat)
        )
        self.guard = guard.CommandGuard(
            runner=commands.CommandRunner(
                executables=settings.ExecutablesSpec(), cache_dir=tmp_path / "c", work_dir=tmp_path / "w"
            ),
            limits=limits.RateLimits(),
            approvals=store,
            audit=self.audit,
            desk=desk,
            policy_provider=self.policies.get,
            mcp=servers,
            redact=records.redact_argument,
        )

    def request(
        self, tool: str, arguments: Mapping[str, Any], *, platform: str = "slack", key: Any = KEY
    ) -> guard.ToolRequest:
        return guard.ToolRequest(
            context_name="prod",
            key=key,
            server="evil",
            tool=tool,
            arguments=arguments,
            run_id="run-1",
            agent="ops",
            user=REQUESTER,
            origin=ports.ReplyTarget(platform=platform, trigger="bot", channel_id="C1", thread="1.1"),
        )

    async def approved(self, request: guard.ToolRequest) -> tuple[tuple[str, ...], Any]:
        """Ask, approve as the lead, and return the argv approvers read and the call's answer."""
        call = asyncio.create_task(self.guard.call_tool(request))
        request_id, _, argv = await self.chat.next_prompt()
        await self.guard.decide(request_id, user=LEAD, approve=True, action_id="a1")
        return argv, await asyncio.wait_for(call, 10)


async def test_keys_sharing_a_long_prefix_are_shown_apart(tmp_path: Path) -> None:
    """Keys were cut to 64 characters: `<64 p>_dangerous` and `<64 p>_safe` showed as one key."""
    rig = Rig(tmp_path, FakeServers({"run": WRITE}))
    arguments = {"p" * 70 + "_dangerous": "rm -rf /", "p" * 70 + "_safe": "echo hi"}
    argv, result = await rig.approved(rig.request("run", arguments))

    assert json.loads(argv[2]) == arguments  # all of it, as it runs
    assert argv[3] == "sha256:" + guard.arguments_digest(arguments)
    assert isinstance(result, mcpservers.McpResult)
    assert rig.servers.calls == [("run", arguments)]


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"cmd": "drop db"}}}}}}}}}, id="deep"),
        pytest.param({"a_reason": "x" * 5000, "target": "ALL-PRODUCTION"}, id="large"),
    ],
)
async def test_arguments_that_cannot_be_shown_whole_are_refused_not_asked(
    tmp_path: Path, arguments: dict[str, Any]
) -> None:
    rig = Rig(tmp_path, FakeServers({"run": WRITE}))
    denied = await rig.guard.call_tool(rig.request("run", arguments))

    assert isinstance(denied, guard.Denial), denied
    assert (denied.stage, denied.rule) == ("approval", "approval")
    assert denied.reason.startswith("arguments too large or too deeply nested to show an approver")
    assert rig.chat.prompts == []  # nobody was asked to approve a partial view
    assert rig.servers.calls == []
    assert rig.audit.actions() == ["command.requested", "command.denied"]


async def test_large_arguments_of_a_call_without_approval_run_and_are_audited_cut(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FakeServers({"read": READ}), approval=None)
    arguments = {"a_reason": "x" * 5000, "target": "ALL-PRODUCTION"}
    result = await rig.guard.call_tool(rig.request("read", arguments))

    assert isinstance(result, mcpservers.McpResult)
    shown = rig.audit.find("command.started")[0]["aofd"]["mcp"]
    assert shown["arguments"].endswith(" more characters)")
    assert len(shown["arguments"]) < guard.MAX_SHOWN_ARGUMENTS + 40
    assert shown["arguments_sha256"] == guard.arguments_digest(arguments)


@pytest.mark.parametrize(
    ("platform", "padding", "asked"),
    [
        ("discord", 1450, False),
        ("discord", 1000, True),
        ("slack", 1200, True),
        ("slack", 2900, False),
        ("telegram", 3000, True),
        ("telegram", 3600, False),
        ("whatsapp", 3600, False),
        ("teams", 3600, True),
    ],
)
async def test_a_prompt_the_platform_would_cut_is_never_asked(
    tmp_path: Path, platform: str, padding: int, asked: bool
) -> None:
    """Padding sorted ahead of the dangerous key used to push it out of the prompt."""
    rig = Rig(tmp_path, FakeServers({"run": WRITE}))
    arguments = {"a_reason": "x" * padding, "target": "ALL-PRODUCTION"}
    request = rig.request("run", arguments, platform=platform)
    if asked:
        argv, result = await rig.approved(request)
        assert "ALL-PRODUCTION" in argv[2]
        assert len(approvals.render_argv(argv)) <= approvals.prompt_budget(platform)
        assert isinstance(result, mcpservers.McpResult)
        return
    denied = await asyncio.wait_for(rig.guard.call_tool(request), 10)
    assert isinstance(denied, guard.Denial), denied
    assert denied.stage == "approval"
    assert f"too large to show an approver in {platform}" in denied.reason
    assert f"at most {approvals.prompt_budget(platform)}" in denied.reason
    assert rig.chat.prompts == []
    assert rig.servers.calls == []


async def test_server_and_tool_names_are_escaped_and_capped_in_the_prompt_and_audit(tmp_path: Path) -> None:
    hostile = "git_status\n\n:white_check_mark: *pre-approved*\u202e<@here>" + "z" * 300
    rig = Rig(tmp_path, FakeServers({hostile: WRITE}))
    argv, _ = await rig.approved(rig.request(hostile, {"x": 1}))
    _, summary, _ = rig.chat.prompts[0]

    shown = guard.safe_name(hostile)
    assert len(shown) == guard.MAX_SHOWN_NAME
    assert shown.startswith("git_status\\u000a\\u000a\\u003awhite_check_mark\\u003a")
    assert f"evil/{shown}" in summary
    assert argv[1] == f"evil/{shown}"
    for text in (summary, *argv):
        assert all(c.isascii() and c.isprintable() for c in text), text
    for _, record, _ in rig.audit.records:
        assert record["aofd"]["mcp"]["tool"] == shown
    assert rig.servers.calls[0][0] == hostile  # the server is called by its own name


async def test_a_timed_out_call_may_have_run_audit_unknown_and_the_model_is_told(tmp_path: Path) -> None:
    failure = mcpservers.McpCallFailed("timeout", "MCP tool evil/deploy did not answer within 1 s")
    rig = Rig(tmp_path, FakeServers({"deploy": READ}, fail=failure), approval=None)
    box = tools.Toolbox(runner=rig.guard)
    ctx = tools.CallContext(
        run_id="run-1",
        context_name="prod",
        agent="ops",
        user=REQUESTER,
        origin=ports.ReplyTarget(platform="slack", trigger="bot", channel_id="C1"),
    )
    told = await box.call_mcp(tools.McpRef(KEY, "evil", "deploy"), {"env": "prod"}, ctx)

    assert told.is_error
    assert "timed out: the tool may have run; check before retrying" in told.text
    [finished] = rig.audit.find("command.finished")
    assert (finished["event"]["outcome"], finished["event"]["reason"]) == ("unknown", "timeout")
    assert finished["aofd"]["timed_out"] is True


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("authToken", True),
        ("api_key", True),
        ("privateKey", True),
        ("auth", True),
        ("author", False),
        ("authority", False),
        ("tokenizer", False),
        ("keys", False),
        ("monkey", False),
    ],
)
def test_secret_keys_are_matched_by_whole_words(key: str, secret: bool) -> None:
    assert guard.is_secret_key(key) is secret


async def test_secrets_in_values_are_scrubbed_and_the_arguments_stay_json_in_the_journal(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, FakeServers({"run": WRITE}), audit=ScrubbingAudit())
    arguments = {
        "headers": {"X-Forward": "Bearer abcdefghijklmnop1234"},
        "url": "https://deploy:pw-in-url@example.com/hook",
        "dsn": "postgres://app:pg-pass-1@db/prod",
        "anthropic": "sk-ant-api03-abcdefghij",
        "cmd": "mysql -uroot -pHunter2Secret -e 'select 1'",
        "note": "password=hunter2-note,next",
        "author": "jane",
        "authority": "ca-1",
    }
    argv, _ = await rig.approved(rig.request("run", arguments))

    secrets = (
        "abcdefghijklmnop1234",
        "pw-in-url",
        "pg-pass-1",
        "sk-ant-api03",
        "Hunter2Secret",
        "hunter2-note",
    )
    shown = json.loads(argv[2])
    assert (shown["author"], shown["authority"]) == ("jane", "ca-1")
    assert shown["cmd"].startswith("mysql -uroot ")
    for secret in secrets:
        assert secret not in json.dumps(rig.chat.prompts), secret
        assert secret not in json.dumps(rig.audit.records), secret
    for _, record, _ in rig.audit.records:  # still JSON after the journal's scrub
        assert json.loads(record["aofd"]["mcp"]["arguments"])["author"] == "jane"
    assert rig.servers.calls == [("run", arguments)]  # the server gets the real values


async def test_a_failed_requested_record_leaves_no_started_record_and_no_call(tmp_path: Path) -> None:
    audit = FailingRequested()
    rig = Rig(tmp_path, FakeServers({"read": READ}), audit=audit, approval=None)
    denied = await rig.guard.call_tool(rig.request("read", {}))

    assert isinstance(denied, guard.Denial)
    assert denied.reason == guard.AUDIT_UNAVAILABLE
    assert audit.actions() == []
    assert rig.servers.calls == []


async def test_a_request_for_another_contexts_server_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FakeServers({"read": READ}), approval=None)
    denied = await rig.guard.call_tool(rig.request("read", {}, key=("staging", "0" * 64)))

    assert isinstance(denied, guard.Denial)
    assert denied.stage == "start"
    assert "does not belong to this Context" in denied.reason
    assert rig.servers.calls == []
