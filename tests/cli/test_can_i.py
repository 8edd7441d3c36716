"""`aofctl can-i`: the daemon's compiled policy, asked about one command, with exit 0 / 1 / 3 / 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aofd.cli import aofctl_main

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: payments
  approval:
    required: true
    allowed_users: [U_LEAD, 'slack:U_ADMIN', 'telegram:42']
    require_for: [kubectl delete pod web-0, kubectl scale]
  security:
    allowed_namespaces: [payments]
    blocked_commands: [kubectl delete pod critical-0]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "prod.yaml").write_text(CONTEXT)
    return tmp_path


def can_i(repo: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = aofctl_main.main(["can-i", str(repo), *args])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


@pytest.mark.parametrize("spelling", ["pod critical-0", "pod/critical-0", "pods/critical-0", "po critical-0"])
def test_denied_in_every_spelling(repo: Path, capsys: pytest.CaptureFixture[str], spelling: str) -> None:
    code, out = can_i(repo, capsys, "--context", "prod", "--", "kubectl", "delete", *spelling.split())
    assert code == 1
    assert out == "denied: blocked by blocked_commands rule 'kubectl delete pod critical-0'"


@pytest.mark.parametrize("spelling", ["pod web-0", "pod/web-0", "pods/web-0"])
def test_needs_approval_in_every_spelling(
    repo: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    code, out = can_i(repo, capsys, "--context", "prod", "--", "kubectl", "delete", *spelling.split())
    assert code == 3
    assert out.startswith("needs approval from U_LEAD, slack:U_ADMIN, telegram:42")
    assert "require_for rule 'kubectl delete pod web-0'" in out


def test_allowed_and_a_command_string(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert can_i(repo, capsys, "--context", "prod", "--", "kubectl get pods -o wide") == (0, "allowed")
    assert can_i(repo, capsys, "-C", "prod", "--", "kubectl", "get", "pods") == (0, "allowed")


def test_the_asker_and_other_platforms_are_left_out(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--context",
        "prod",
        "--user",
        "U_ADMIN",
        "--platform",
        "slack",
        "--",
        "kubectl",
        "scale",
        "deploy/x",
    ]
    code, out = can_i(repo, capsys, *args)
    assert code == 3
    assert out.startswith("needs approval from U_LEAD (")  # not the asker, not the Telegram approver


def test_namespace_and_cluster_scope(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = can_i(repo, capsys, "--context", "prod", "--", "kubectl", "get", "ns", "-l", "x=prod")
    assert code == 1
    assert out.startswith("denied: reading every namespace")
    code, out = can_i(repo, capsys, "--context", "prod", "--", "kubectl", "describe", "node", "n1")
    assert code == 1
    assert "cluster-scoped" in out


def test_usage_errors_exit_2(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = can_i(repo, capsys, "--context", "nope", "--", "kubectl", "get", "pods")
    assert code == 2
    assert "no Context named 'nope'" in out
    code, out = can_i(repo, capsys, "--context", "prod")
    assert code == 2
    assert "after `--`" in out
    code, out = can_i(repo.parent / "missing", capsys, "--context", "prod", "--", "kubectl", "get", "pods")
    assert code == 2
    assert "no such file" in out


def test_a_path_that_does_not_compile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prod.yaml").write_text(CONTEXT.replace("blocked_commands:", "blocked_comands:"))
    code, out = can_i(tmp_path, capsys, "--context", "prod", "--", "kubectl", "get", "pods")
    assert code == 2
    assert "prod.yaml:" in out
    assert "blocked_comands" in out


def test_too_few_approvers_left_is_denied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prod.yaml").write_text(CONTEXT.replace("require_for:", "min_approvers: 3\n    require_for:"))
    args = ["--context", "prod", "--user", "U_ADMIN", "--", "kubectl", "scale", "deploy/x"]
    code, out = can_i(tmp_path, capsys, *args)
    assert code == 1
    assert out.startswith("denied: needs 3 approval(s)")
    code, out = can_i(tmp_path, capsys, "--context", "prod", "--", "kubectl", "scale", "deploy/x")
    assert code == 3
    assert out.startswith("needs approval from 3 of U_LEAD, slack:U_ADMIN, telegram:42")


def test_any_error_in_the_repo_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rule that does not compile would keep the revision from applying: nothing to judge."""
    (tmp_path / "prod.yaml").write_text(CONTEXT.replace("critical-0]", "critical-0 --bogus]"))
    code, out = can_i(tmp_path, capsys, "--context", "prod", "--", "kubectl", "delete", "pod", "critical-0")
    assert code == 2
    assert "--bogus" in out


def test_the_installed_command(repo: Path) -> None:
    """The console script, as operators run it: exit 3 and one line."""
    done = subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", "can-i", str(repo), "-C", "prod", "--",
         "kubectl", "scale", "deploy", "x", "--replicas=0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("needs approval from ")


MCP_CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  approval:
    required: true
    allowed_users: [U_LEAD]
    require_for: ["kubectl delete", "mcp:git/git_commit", "mcp:destructive"]
  security:
    allowed_tools: ["time/*", "git/git_status", "git/git_commit", "git/git_clean"]
    blocked_tools: ["git/git_reset"]
"""


def mcp_can_i(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = aofctl_main.main(["can-i", str(tmp_path), "--context", "prod", *args])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def test_mcp_tools_are_judged_by_the_tool_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prod.yaml").write_text(MCP_CONTEXT)
    ro = ("--hints", "read-only")
    assert mcp_can_i(tmp_path, capsys, *ro, "--", "mcp:time/get_current_time") == (0, "allowed", "")
    assert mcp_can_i(tmp_path, capsys, *ro, "--", "mcp:git/git_status")[:2] == (0, "allowed")
    code, out, _ = mcp_can_i(tmp_path, capsys, "--hints", "write", "--", "mcp:git/git_commit")
    assert (code, out) == (3, "needs approval from U_LEAD (require_for rule 'mcp:git/git_commit')")
    code, out, _ = mcp_can_i(tmp_path, capsys, *ro, "--", "mcp:git/git_reset")
    assert (code, out) == (1, "denied: blocked by blocked_tools rule 'git/git_reset'")
    code, out, _ = mcp_can_i(tmp_path, capsys, *ro, "--", "mcp:git/git_push")
    assert code == 1
    assert "'git/git_push' is not in the Context's allowed_tools" in out


def test_without_hints_an_mcp_tool_is_taken_as_destructive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "prod.yaml").write_text(MCP_CONTEXT)
    code, out, err = mcp_can_i(tmp_path, capsys, "--", "mcp:git/git_clean")
    assert (code, out) == (3, "needs approval from U_LEAD (require_for rule 'mcp:destructive')")
    assert "assuming the tool is destructive" in err
    assert mcp_can_i(tmp_path, capsys, "--hints", "write", "--", "mcp:git/git_clean")[:2] == (0, "allowed")


def test_mcp_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prod.yaml").write_text(MCP_CONTEXT)
    code, _, err = mcp_can_i(tmp_path, capsys, "--", "mcp:git")
    assert code == 2
    assert "mcp:SERVER/TOOL" in err
    code, _, err = mcp_can_i(tmp_path, capsys, "--hints", "write", "--", "kubectl", "get", "pods")
    assert code == 2
    assert "--hints is for an MCP tool" in err
