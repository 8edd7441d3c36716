"""aofctl against a running daemon whose admin API listens on a unix socket:
get, describe, diff (planned by the daemon's own planner), reconcile and status."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, TRIGGER, binding

pytestmark = pytest.mark.slow


def aofctl(*args: str, admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args, "--admin", admin],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_aofctl_over_a_unix_socket(tmp_path: Path) -> None:
    """Every admin command works over the unix socket; diff shows exactly what a change would do."""
    repo = tmp_path / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
            "bindings/b2.yaml": binding("b2"),
        },
    )
    with harness.serve_directory(repo, tmp_path) as (daemon, admin):
        daemon.wait_for(
            lambda: '"ready": true' in aofctl("status", "-o", "json", admin=admin).stdout, what="ready"
        )

        got = aofctl("get", "fb", admin=admin)
        assert 0 == got.returncode, got.stderr
        assert ["b1", "b2"] == [line.split()[0] for line in got.stdout.splitlines()[1:]]
        assert all(" Ready " in line for line in got.stdout.splitlines()[1:])

        described = aofctl("describe", "binding", "b1", admin=admin)
        assert 0 == described.returncode
        assert "Resolves to:" in described.stdout
        assert "context: prod" in described.stdout

        as_json = json.loads(aofctl("get", "agents", "echo", "-o", "json", admin=admin).stdout)
        assert "echo" == as_json["name"]

        candidate = tmp_path / "candidate"
        shutil.copytree(repo, candidate, ignore=shutil.ignore_patterns(".aofd"))
        (candidate / "agents" / "echo.yaml").write_text(AGENT.replace("Answer briefly.", "Answer in detail."))
        (candidate / "bindings" / "b2.yaml").unlink()
        diff = aofctl("diff", str(candidate), "-o", "json", admin=admin)
        assert 0 == diff.returncode, diff.stdout + diff.stderr
        changes = {(c["action"], c["kind"], c["name"]) for c in json.loads(diff.stdout)["plan"]["changes"]}
        assert {
            ("update", "Agent", "echo"),
            ("update", "FlowBinding", "b1"),
            ("delete", "FlowBinding", "b2"),
        } == changes
        text = aofctl("diff", str(candidate), admin=admin).stdout
        assert "b2" in text

        broken = tmp_path / "broken"
        shutil.copytree(candidate, broken)
        (broken / "bindings" / "b1.yaml").write_text(binding("b1", flow="nope"))
        bad = aofctl("diff", str(broken), admin=admin)
        assert 1 == bad.returncode
        assert "bindings/b1.yaml:" in bad.stdout

        before = json.loads(aofctl("status", "-o", "json", admin=admin).stdout)["passes"]
        assert 0 == aofctl("reconcile", admin=admin).returncode
        daemon.wait_for(
            lambda: json.loads(aofctl("status", "-o", "json", admin=admin).stdout)["passes"] > before,
            what="a pass after aofctl reconcile",
        )
        assert 2 == aofctl("get", "widgets", admin=admin).returncode
        assert 0 == daemon.stop()
