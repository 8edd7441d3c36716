"""`aofctl approvals` / `approve` / `deny` against a real `aofd serve`: a run started by a signed HTTP
event asks to `kubectl delete pod x` in a Context whose approvers are `admin:alice`; the
operator's named token decides it, the unnamed token cannot, and the audit log says who did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import FLOW, TRIGGER, binding, send_event
from tests.runtime.test_command_lifetime import AGENT, install_fake

pytestmark = pytest.mark.slow

UNNAMED = "unnamed-admin-token-0123456789abcdef"
ALICE = "alice-admin-token-0123456789abcdef"
BOB = "bob-admin-token-0123456789abcdefgh"

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {{name: prod}}
spec:
  namespace: default
  env: {{FAKE_RECORD: "{record}"}}
  limits: {{max_requests_per_hour: 1000}}
  approval:
    required: true
    allowed_users: ["admin:alice", "U0LEAD"]
    require_for: ["kubectl delete"]
    timeout_seconds: 120
"""


def delete(pod: str, n: int) -> list[dict[str, Any]]:
    """The model's answer: run `kubectl delete pod POD`."""
    return [
        {"type": "tool_use", "id": f"toolu_{n}", "name": "kubectl", "input": {"args": ["delete", "pod", pod]}}
    ]


def aofctl(*args: str, admin: str, token: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args, "--admin", admin, "--token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def audit_records(audit_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted((audit_dir / "prod").glob("audit-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]


def test_an_operator_approves_and_denies_with_aofctl(tmp_path: Path) -> None:
    record = tmp_path / "kubectl.jsonl"
    repo = tmp_path / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod.yaml": CONTEXT.format(record=record),
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    kubectl = install_fake(tmp_path / "bin")
    tokens = {}
    for name, value in (("unnamed", UNNAMED), ("alice", ALICE), ("bob", BOB)):
        tokens[name] = tmp_path / "tokens" / name
        tokens[name].parent.mkdir(exist_ok=True)
        tokens[name].write_text(value + "\n")
    audit_dir = tmp_path / "audit"
    config = tmp_path / "aofd.yaml"
    with fakes.anthropic_server(
        script=[delete("x", 1), [{"type": "text", "text": "deleted"}], delete("y", 2)]
    ) as model:
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "admin_api": {
                        "token_file": "tokens/unnamed",
                        "tokens": [
                            {"name": "alice", "token_file": "tokens/alice"},
                            {"name": "bob", "token_file": "tokens/bob"},
                        ],
                    },
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(audit_dir),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "executables": {"paths": {"kubectl": str(kubectl)}},
                }
            )
        )
        env = {"ANTHROPIC_API_KEY": "test-key"}
        with harness.run_daemon(
            "--config", str(config), cwd=tmp_path, state_dir=tmp_path / "state", env=env
        ) as daemon:
            daemon.wait_ready()
            admin = daemon.endpoints["admin"]

            def pending() -> list[dict[str, Any]]:
                listed = aofctl("approvals", "-o", "json", admin=admin, token=tokens["unnamed"])
                assert listed.returncode == 0, listed.stderr
                return list(json.loads(listed.stdout))

            assert send_event(daemon, "delete pod x", "approve-1") == 202
            [item] = daemon.wait_for(pending, what="the approval request")
            assert item["argv"][-3:] == ["delete", "pod", "x"]
            assert item["requester"]["id"] == "U1"
            short = item["id"][:12]

            table = aofctl("approvals", admin=admin, token=tokens["unnamed"])
            assert table.stdout.splitlines()[0].split()[:4] == ["ID", "CONTEXT", "ARGV", "REQUESTER"]
            assert table.stdout.splitlines()[1].startswith(short + " ")

            refused = aofctl("approve", short, admin=admin, token=tokens["unnamed"])
            assert refused.returncode == 1
            assert "named admin token" in refused.stderr
            outsider = aofctl("approve", short, admin=admin, token=tokens["bob"])
            assert outsider.returncode == 1
            assert "admin:bob is not in Context prod's approval.allowed_users" in outsider.stderr
            assert not record.exists()

            granted = aofctl("approve", short, admin=admin, token=tokens["alice"])
            assert granted.returncode == 0, granted.stderr
            assert "granted by admin:alice" in granted.stdout
            ran = daemon.wait_for(lambda: record.exists() and record.read_text(), what="kubectl to run")
            assert json.loads(ran.splitlines()[0])["argv"][-3:] == ["delete", "pod", "x"]
            assert aofctl("approve", item["id"], admin=admin, token=tokens["alice"]).returncode == 3

            assert send_event(daemon, "delete pod y", "deny-1") == 202
            [second] = daemon.wait_for(pending, what="the second approval request")
            denied = aofctl("deny", second["id"], admin=admin, token=tokens["alice"])
            assert denied.returncode == 0, denied.stderr
            assert "denied by admin:alice" in denied.stdout
            daemon.wait_for(
                lambda: (
                    sum(r["event"]["action"] == "agent.run.finished" for r in audit_records(audit_dir)) == 2
                ),
                what="both runs to finish",
            )
            assert len(record.read_text().splitlines()) == 1  # `delete pod y` never ran
            assert daemon.stop() == 0
    assert ALICE not in daemon.log_text()
    assert UNNAMED not in daemon.log_text()
    lines = audit_records(audit_dir)

    def mentions(action: str, who: str) -> bool:
        return any(r["event"]["action"] == action and who in json.dumps(r) for r in lines)

    assert mentions("approval.granted", '"admin:alice"')  # the approver of the grant
    assert mentions("approval.denied", '"admin:alice"')  # the denier
    refused = [r for r in lines if r["aofd"].get("approval", {}).get("voter", {}).get("id") == "admin:bob"]
    assert refused
    assert all(r["event"]["outcome"] == "failure" for r in refused)
    assert all(r["event"]["action"] == "approval.refused" for r in refused)
    verify = subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", "audit", "verify", str(audit_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
