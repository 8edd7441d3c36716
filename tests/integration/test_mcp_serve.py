"""MCP servers through a real `aofd serve`: a pinned server starts at apply (listed in the command
ledger), a server whose command is `npx` stalls its binding with a reason `aofctl get` shows, and
SIGTERM leaves no server process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import fakes, harness
from tests.runtime.test_mcpservers import alive, group_members, install_fixture

pytestmark = pytest.mark.slow

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: default
"""


def agent(name: str, command: str) -> str:
    return (
        f"apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n"
        "  model: anthropic:claude-test\n  instructions: Answer briefly.\n"
        f"  mcp_servers:\n    - {{name: fx, command: {command}, args: [stdio]}}\n"
    )


def flow(name: str, agent_name: str) -> str:
    return (
        f"apiVersion: aof.dev/v1\nkind: AgentFlow\nmetadata: {{name: {name}}}\nspec:\n"
        f"  agents:\n    - name: {agent_name}\n"
    )


def trigger(name: str) -> str:
    return (
        f"apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n"
        "  type: HTTP\n  config: {webhook_secret: s3cret-mcp-test}\n"
    )


def binding(name: str, flow_name: str, trigger_name: str) -> str:
    return (
        f"apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata: {{name: {name}}}\nspec:\n"
        f"  flow: {{name: {flow_name}}}\n  context: {{name: prod}}\n  trigger: {{name: {trigger_name}}}\n"
    )


def aofctl(*args: str, admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args, "--admin", admin],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_servers_start_at_apply_stall_with_a_reason_and_stop_on_sigterm(tmp_path: Path) -> None:
    repo = harness.write_tree(
        tmp_path / "repo",
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/good.yaml": agent("good", "mcp-fixture"),
            "agents/bad.yaml": agent("bad", "npx"),
            "flows/good.yaml": flow("good-flow", "good"),
            "flows/bad.yaml": flow("bad-flow", "bad"),
            "triggers/one.yaml": trigger("one"),
            "triggers/two.yaml": trigger("two"),
            "bindings/good.yaml": binding("b-good", "good-flow", "one"),
            "bindings/bad.yaml": binding("b-bad", "bad-flow", "two"),
        },
    )
    fixture = install_fixture(tmp_path / "bin")
    state = tmp_path / "state"
    config = tmp_path / "aofd.yaml"
    with fakes.anthropic_server() as model:
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(state),
                    "audit_dir": str(tmp_path / "audit"),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "executables": {"mcp_servers": {"mcp-fixture": str(fixture)}},
                }
            )
        )
        env = {"ANTHROPIC_API_KEY": "test-key", "AWS_SECRET_ACCESS_KEY": "hunter2"}
        with harness.run_daemon("--config", str(config), cwd=tmp_path, state_dir=state, env=env) as daemon:
            daemon.wait_ready(timeout=60)
            admin = daemon.endpoints["admin"]

            def ledger_pids() -> list[int]:
                return [
                    json.loads(p.read_text())["pid"]
                    for p in (state / "commands").glob("mcp-*.json")
                    if p.read_text()
                ]

            [pid] = daemon.wait_for(ledger_pids, timeout=60, what="the MCP server to be listed")
            assert alive(pid)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"AOF_CONTEXT=prod" in environ
            assert not any(v.startswith(b"AWS_SECRET_ACCESS_KEY=") for v in environ)

            got = aofctl("get", "fb", "-o", "json", admin=admin)
            assert got.returncode == 0, got.stderr
            text = got.stdout
            assert "McpServerNotReady" in text
            assert "MCP server fx (Context prod)" in text
            assert "wrapper or interpreter" in text
            table = aofctl("get", "fb", admin=admin).stdout
            rows = {line.split()[0]: line for line in table.splitlines()[1:]}
            assert " Ready " in rows["b-good"]
            assert "Stalled" in rows["b-bad"]

            assert daemon.stop() == 0
    assert not alive(pid)
    assert group_members(pid) == []
    assert not list((state / "commands").glob("mcp-*.json"))
    assert "mcp.server_ready" in daemon.log_text()
    assert "hunter2" not in daemon.log_text()
    assert os.path.exists(state / "mcp" / "prod" / "fx.stderr")
