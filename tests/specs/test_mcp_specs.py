"""MCP servers compiled from upstream's three tool forms, tool names for the model, the tool policy
(`evaluate_tool`, `allowed_tools`, `blocked_tools`, `require_for: [mcp:...]`) and memory settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from aofd.resources.kinds import agent as agent_kind
from aofd.resources.kinds import context
from aofd.specs import flows, mcp, memory, policy

EXECUTABLES = {"kubectl": Path("/opt/bin/kubectl")}
READ_ONLY = policy.ToolHints(read_only=True, destructive=False)
WRITE = policy.ToolHints(read_only=False, destructive=False)
DESTRUCTIVE = policy.ToolHints(read_only=False, destructive=True)
SILENT = policy.ToolHints()


def agent(**spec: Any) -> flows.AgentSpec:
    model = agent_kind.Agent.model_validate(
        {"metadata": {"name": "a"}, "spec": {"model": "anthropic:claude-test", **spec}}
    )
    return flows.agent_spec("a", model.spec)


def problems(spec: flows.AgentSpec) -> list[tuple[tuple[str | int, ...], str, str]]:
    return [(p.loc, p.severity, p.message) for p in flows.agent_problems(spec, ("spec",), member=False)]


def ctx(**spec: Any) -> policy.GuardPolicy:
    model = context.Context.model_validate({"metadata": {"name": "prod"}, "spec": spec})
    compiled, found = policy.compile_context(model, tools=policy.known_tools(EXECUTABLES))
    assert () == found
    return compiled


def ctx_problems(**spec: Any) -> list[str]:
    model = context.Context.model_validate({"metadata": {"name": "prod"}, "spec": spec})
    return [p.message for p in policy.compile_context(model, tools=policy.known_tools(EXECUTABLES))[1]]


# --------------------------------------------------------------------------- the three forms


def test_the_three_tool_forms_merge_into_one_server_list() -> None:
    spec = agent(
        mcp_servers=[
            {"name": "git", "command": "mcp-server-git", "args": ["--repository", "/srv/repo"]},
            {"name": "everything", "transport": "http", "endpoint": "http://127.0.0.1:3001/mcp"},
        ],
        tools=[
            "kubectl",
            {
                "type": "MCP",
                "config": {"name": "time", "command": ["mcp-server-time", "--local-timezone", "UTC"]},
            },
            {"name": "git_status", "source": "mcp", "server": "git"},
            {"name": "git_log", "source": "mcp", "server": "git", "timeout_secs": 5},
        ],
    )
    by_name = {s.name: s for s in spec.mcp}
    assert ["git", "everything", "time"] == list(by_name)
    assert ("kubectl",) == spec.tools
    assert () == spec.unknown_tools  # MCP forms are served now, not "unsupported"
    git = by_name["git"]
    assert ("stdio", "mcp-server-git", ("--repository", "/srv/repo")) == (
        git.transport,
        git.command,
        git.args,
    )
    assert frozenset({"git_status", "git_log"}) == git.tools  # qualified tools narrow the filter
    assert git.offers("git_log")
    assert not git.offers("git_reset")
    assert 5.0 == git.timeout_for("git_log")
    assert 30.0 == git.timeout_for("git_status")
    time = by_name["time"]
    assert ("mcp-server-time", ("--local-timezone", "UTC")) == (time.command, time.args)
    assert not time.tools
    assert time.offers("anything")
    assert ("http", "http://127.0.0.1:3001/mcp") == (
        by_name["everything"].transport,
        by_name["everything"].endpoint,
    )
    assert [] == problems(spec)


def test_the_digest_follows_the_config_and_only_the_config() -> None:
    base = mcp.McpServerSpec("git", command="mcp-server-git", args=("-r", "/a"))
    assert base.digest == mcp.McpServerSpec("git", command="mcp-server-git", args=("-r", "/a")).digest
    for change in (
        {"args": ("-r", "/b")},
        {"env": (("X", "1"),)},
        {"timeout_secs": 5.0},
        {"tools": frozenset({"t"})},
    ):
        assert dataclasses.replace(base, **change).digest != base.digest, change
    assert re.fullmatch(r"[0-9a-f]{64}", base.digest)


@pytest.mark.parametrize(
    ("server", "want_loc", "want"),
    [
        ({"name": "git"}, ("spec", "mcp_servers", 0, "command"), "a stdio server needs a command"),
        ({"name": "x", "transport": "sse"}, ("spec", "mcp_servers", 0, "endpoint"), "needs an endpoint"),
        (
            {"name": "x", "transport": "http", "endpoint": "file:///etc"},
            ("spec", "mcp_servers", 0, "endpoint"),
            "http://",
        ),
        ({"name": "git__x", "command": "c"}, ("spec", "mcp_servers", 0, "name"), "single dashes"),
        (
            {"name": "x", "command": "c", "args": ["a\nb"]},
            ("spec", "mcp_servers", 0, "args", 0),
            "argument 0",
        ),
        (
            {"name": "x", "command": "c", "env": {"LD_PRELOAD": "/x.so"}},
            ("spec", "mcp_servers", 0, "env", "LD_PRELOAD"),
            "LD_PRELOAD",
        ),
        (
            {"name": "x", "command": "kubectl", "args": ["delete", "namespace", "prod"]},
            ("spec", "mcp_servers", 0, "command"),
            "command-guard tool",
        ),
        (
            {"name": "x", "command": "c", "timeout_secs": 2147483647},
            ("spec", "mcp_servers", 0, "timeout_secs"),
            "over the maximum of 300",
        ),
        (
            {"name": "x", "transport": "http", "endpoint": "http://169.254.169.254/latest/meta-data/"},
            ("spec", "mcp_servers", 0, "endpoint"),
            "link-local",
        ),
        (
            {"name": "x", "transport": "sse", "endpoint": "https://u:p@mcp.example.com/sse"},
            ("spec", "mcp_servers", 0, "endpoint"),
            "credentials",
        ),
    ],
)
def test_a_server_that_cannot_run_is_an_error_at_its_field(
    server: dict[str, Any], want_loc: tuple[str | int, ...], want: str
) -> None:
    found = problems(agent(mcp_servers=[server]))
    assert [(loc, sev) for loc, sev, _ in found] == [(want_loc, "error")], found
    assert want in found[0][2]


@pytest.mark.parametrize(
    "command", ["npx", "uvx", "pipx", "npm", "node", "python3", "/usr/bin/mcp-server-git", "./srv"]
)
def test_an_interpreter_or_path_command_is_a_warning_at_compile(command: str) -> None:
    found = problems(agent(mcp_servers=[{"name": "x", "command": command, "args": ["-y", "pkg"]}]))
    assert [(("spec", "mcp_servers", 0, "command"), "warning")] == [(loc, sev) for loc, sev, _ in found]
    assert "executables.mcp_servers" in found[0][2]


@pytest.mark.parametrize(
    "name",
    [
        "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_SYSTEM", "GIT_DIR",
        "GIT_TEMPLATE_DIR", "GIT_PROXY_COMMAND", "GIT_EXTERNAL_DIFF", "GIT_PAGER", "GIT_EDITOR",
        "GIT_SSH_COMMAND", "GIT_ASKPASS", "GIT_EXEC_PATH", "NODE_PATH", "NODE_OPTIONS", "NPM_CONFIG_PREFIX",
        "PYTHONPATH", "PYTHONSTARTUP", "PERL5OPT", "PERLLIB", "RUBYOPT", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS", "LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "GLIBC_TUNABLES",
        "OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HOME",
        "PATH", "SHELL", "BASH_ENV", "ENV", "PROMPT_COMMAND", "IFS", "HTTP_PROXY", "https_proxy",
        "ALL_PROXY", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE", "KUBECONFIG", "SSLKEYLOGFILE", "BROWSER",
    ],
)  # fmt: skip
def test_a_server_env_that_runs_other_code_is_an_error(name: str) -> None:
    found = problems(agent(mcp_servers=[{"name": "x", "command": "c", "env": {name: "v"}}]))
    assert [(loc, sev) for loc, sev, _ in found] == [(("spec", "mcp_servers", 0, "env", name), "error")]


def test_ordinary_server_env_passes() -> None:
    env = {"TZ": "UTC", "GITHUB_TOKEN": "t", "LOG_LEVEL": "debug", "GOOGLE_CLOUD_PROJECT": "p"}
    assert problems(agent(mcp_servers=[{"name": "x", "command": "c", "env": env}])) == []


def test_twice_the_same_server_name_and_unknown_servers_are_reported() -> None:
    found = problems(
        agent(
            mcp_servers=[{"name": "git", "command": "a"}, {"name": "git", "command": "b"}],
            tools=[{"name": "x", "source": "mcp", "server": "github"}, {"name": "y", "source": "mcp"}],
        )
    )
    assert (("spec", "mcp_servers", 1), "error", "MCP server 'git' is defined twice") in found
    assert any(sev == "warning" and "'github'" in msg for _, sev, msg in found)
    assert any(loc == ("spec", "tools", 1, "server") and sev == "warning" for loc, sev, _ in found)


def test_init_options_is_a_warning_that_it_is_not_sent() -> None:
    found = problems(agent(mcp_servers=[{"name": "x", "command": "c", "init_options": {"a": 1}}]))
    assert [(("spec", "mcp_servers", 0, "init_options"), "warning")] == [(loc, sev) for loc, sev, _ in found]


def test_plans_collect_every_agents_servers_once() -> None:
    a = agent(mcp_servers=[{"name": "git", "command": "mcp-server-git"}])
    b = dataclasses.replace(a, name="b")
    plan = flows.RunPlan(
        "b1", flows.single_node("a", "agent"), {"a": a, "b": b}, {}, flows.ContextView("prod")
    )
    assert [a.mcp[0]] == list(flows.mcp_servers(plan))


# --------------------------------------------------------------------------- names for the model


def test_model_tool_names_are_unambiguous_and_within_the_api_limits() -> None:
    assert "git__git_status" == mcp.model_tool_name("git", "git_status")
    names = {
        mcp.model_tool_name(server, tool)
        for server, tool in [("s", "a.b"), ("s", "a_b"), ("s", "a b"), ("s", "x" * 80), ("s", "x" * 81)]
    }
    assert 5 == len(names)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name), name
    assignment = mcp.assign_names([("git", "git_status"), ("time", "now")])
    assert {"git__git_status": ("git", "git_status"), "time__now": ("time", "now")} == assignment


# --------------------------------------------------------------------------- the tool policy


def test_without_allowed_tools_only_read_only_tools_run() -> None:
    pol = ctx()
    assert policy.evaluate_tool("time", "now", READ_ONLY, pol).allowed
    for hints in (WRITE, DESTRUCTIVE, SILENT, policy.ToolHints(read_only=False)):
        verdict = policy.evaluate_tool("git", "git_commit", hints, pol)
        assert not verdict.allowed, hints
        assert "not marked read-only" in verdict.reason


def test_allowed_tools_globs_and_blocked_wins() -> None:
    pol = ctx(
        security={
            "allowed_tools": ["time/*", "git/git_status", "git/git_log"],
            "blocked_tools": ["git/git_reset", "time/convert*"],
        }
    )
    assert policy.evaluate_tool("time", "get_current_time", SILENT, pol).allowed
    assert policy.evaluate_tool("git", "git_status", DESTRUCTIVE, pol).allowed  # the Context says so
    refused = policy.evaluate_tool("git", "git_reset", DESTRUCTIVE, pol)
    assert (False, "blocked_tools:git/git_reset") == (refused.allowed, refused.rule)
    assert not policy.evaluate_tool("time", "convert_time", READ_ONLY, pol).allowed  # blocked beats read-only
    other = policy.evaluate_tool("git", "git_commit", WRITE, pol)
    assert (False, "allowed_tools") == (other.allowed, other.rule)
    assert policy.evaluate_tool(
        "anything", "at_all", DESTRUCTIVE, ctx(security={"allowed_tools": ["*"]})
    ).allowed
    # Globs match the exact server/tool: no prefix trick through the separator.
    git_only = ctx(security={"allowed_tools": ["git/*"]})
    assert not policy.evaluate_tool("git-evil", "git_status", READ_ONLY, git_only).allowed


@pytest.mark.parametrize(
    ("require_for", "hints", "tool", "want"),
    [
        ([], READ_ONLY, "git/git_status", "*"),
        (["mcp:git/git_commit"], WRITE, "git/git_commit", "mcp:git/git_commit"),
        (["mcp:git/git_commit"], WRITE, "git/git_add", None),
        (["mcp:write"], WRITE, "git/git_add", "mcp:write"),
        (["mcp:write"], READ_ONLY, "git/git_status", None),
        (["mcp:destructive"], DESTRUCTIVE, "git/git_reset", "mcp:destructive"),
        (["mcp:destructive"], policy.ToolHints(read_only=False), "x/y", "mcp:destructive"),  # absent counts
        (["mcp:destructive"], WRITE, "git/git_commit", None),
        (["kubectl delete"], DESTRUCTIVE, "git/git_reset", None),  # command rules never match tools
        (["MCP:Git/*"], WRITE, "Git/x", "mcp:Git/*"),
    ],
)
def test_require_for_mcp_entries(
    require_for: list[str], hints: policy.ToolHints, tool: str, want: str | None
) -> None:
    pol = ctx(security={"allowed_tools": ["*"]}, approval={"required": True, "require_for": require_for})
    server, name = tool.split("/")
    verdict = policy.evaluate_tool(server, name, hints, pol)
    assert verdict.allowed
    assert (want is not None, want) == (verdict.needs_approval, verdict.approval_rule)


def test_mcp_entries_are_not_command_patterns_any_more() -> None:
    pol = ctx(approval={"required": True, "require_for": ["mcp:git/git_commit", "mcp:destructive"]})
    assert pol.approval is not None
    assert () == pol.approval.require_for
    assert ("git/git_commit", "destructive") == pol.approval.require_for_tools
    # A command is not caught by an mcp: entry (before, it was a substring pattern over the argv) and,
    # since require_for names something, needs no approval.
    verdict = policy.evaluate(("kubectl", "get", "pods"), policy=pol, executables=EXECUTABLES)
    assert verdict.allowed
    assert not verdict.needs_approval


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ({"security": {"allowed_tools": ["git"]}}, "allowed_tools: \"git\" must be '<server>/<tool>'"),
        ({"security": {"blocked_tools": ["/x"]}}, 'blocked_tools: "/x" must be'),
        ({"approval": {"required": True, "require_for": ["mcp:git"]}}, 'require_for: "git" must be'),
        ({"security": {"allowed_tools": ["git/a\u202eb"]}}, "allowed_tools"),
    ],
)
def test_bad_tool_rules_are_problems(spec: dict[str, Any], want: str) -> None:
    found = ctx_problems(**spec)
    assert len(found) == 1, found
    assert want in found[0]


# --------------------------------------------------------------------------- memory


def test_memory_forms() -> None:
    assert memory.MemoryPolicy(store="state", max_context_messages=10) == agent().memory
    assert "in_memory" == agent(memory="in_memory").memory.store
    file_mem = agent(memory="file:./conversations.json", max_context_messages=4).memory
    assert ("file", "conversations.json", 4) == (
        file_mem.store,
        file_mem.file_name,
        file_mem.max_context_messages,
    )
    typed = agent(
        memory={"type": "in_memory", "config": {"max_messages": 50, "max_age_seconds": 60, "max_tokens": 500}}
    ).memory
    assert (50, 60.0, 500) == (typed.max_messages, typed.max_age_seconds, typed.max_tokens)
    assert not agent(memory="none").memory.enabled


@pytest.mark.parametrize("path", ["/etc/passwd", "../prod/x.json", "a/b.json", ".."])
def test_a_memory_file_is_a_name_inside_the_contexts_directory(path: str) -> None:
    found = problems(agent(memory=f"file:{path}"))
    assert [(("spec", "memory", "config", "path"), "error")] == [(loc, sev) for loc, sev, _ in found]


def test_an_unknown_memory_type_is_an_error() -> None:
    found = problems(agent(memory={"type": "redis"}))
    assert [(("spec", "memory", "type"), "error")] == [(loc, sev) for loc, sev, _ in found]
