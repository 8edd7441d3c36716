"""`aofctl run binding` against a real `aofd serve`: a binding of a Manual trigger runs once per call, under
its Context's command guard (an allowed `kubectl get` runs, a `kubectl delete` that needs an approval waits),
and the audit log names the operator of the named admin token as the run's user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration import fakes, harness
from tests.integration.test_aofctl_approve import ALICE, CONTEXT, UNNAMED, aofctl, audit_records, delete
from tests.integration.test_daemon_gitops import FLOW
from tests.runtime.test_command_lifetime import AGENT, install_fake

pytestmark = pytest.mark.slow

MANUAL = """\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {name: by-hand}
spec:
  type: Manual
"""
BINDING = """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {name: ops-by-hand}
spec:
  flow: {name: echo-flow}
  context: {name: prod}
  trigger: {name: by-hand}
"""


def get_pods(n: int) -> list[dict[str, object]]:
    return [{"type": "tool_use", "id": f"toolu_{n}", "name": "kubectl", "input": {"args": ["get", "pods"]}}]


def test_aofctl_run_binding_starts_a_manual_run_through_the_guard(tmp_path: Path) -> None:
    record = tmp_path / "kubectl.jsonl"
    repo = tmp_path / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod.yaml": CONTEXT.format(record=record),
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/by-hand.yaml": MANUAL,
            "bindings/ops.yaml": BINDING,
        },
    )
    kubectl = install_fake(tmp_path / "bin")
    tokens = {}
    for name, value in (("unnamed", UNNAMED), ("alice", ALICE)):
        tokens[name] = tmp_path / "tokens" / name
        tokens[name].parent.mkdir(exist_ok=True)
        tokens[name].write_text(value + "\n")
    audit_dir = tmp_path / "audit"
    config = tmp_path / "aofd.yaml"
    script = [get_pods(1), [{"type": "text", "text": "3 pods running"}], delete("x", 2)]
    with fakes.anthropic_server(script=script) as model:
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "admin_api": {
                        "token_file": "tokens/unnamed",
                        "tokens": [{"name": "alice", "token_file": "tokens/alice"}],
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
            refused = aofctl(
                "run", "binding", "ops-by-hand", "-i", "list pods", admin=admin, token=tokens["unnamed"]
            )
            assert (1, True) == (refused.returncode, "named admin token" in refused.stderr), refused.stderr
            started = aofctl(
                "run", "binding", "ops-by-hand", "-i", "list pods", admin=admin, token=tokens["alice"]
            )
            assert started.returncode == 0, started.stderr
            assert "of binding ops-by-hand in Context prod as admin:alice" in started.stdout
            ran = daemon.wait_for(
                lambda: record.exists() and record.read_text(), what="kubectl get pods to run"
            )
            assert json.loads(ran.splitlines()[0])["argv"][-2:] == ["get", "pods"]
            again = aofctl(
                "run",
                "binding",
                "ops-by-hand",
                "-i",
                "delete pod x",
                "-o",
                "json",
                admin=admin,
                token=tokens["alice"],
            )
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["outcome"] == "started"
            pending = daemon.wait_for(
                lambda: json.loads(
                    aofctl("approvals", "-o", "json", admin=admin, token=tokens["unnamed"]).stdout
                ),
                what="the delete to wait for an approval",
            )
            assert pending[0]["argv"][-3:] == ["delete", "pod", "x"]
            assert pending[0]["requester"]["id"] == "admin:alice"
            wrong = aofctl("run", "binding", "nope", "-i", "x", admin=admin, token=tokens["alice"])
            assert (1, True) == (wrong.returncode, "no binding 'nope'" in wrong.stderr)
            assert daemon.stop() == 0
    assert ALICE not in daemon.log_text()
    lines = audit_records(audit_dir)
    runs = [r for r in lines if r["event"]["action"] == "agent.run.started"]
    assert 2 == len(runs), "each call started one run, audited"
    assert [("admin:alice", "ops-by-hand")] * 2 == [(r["user"]["id"], r["aofd"]["binding"]) for r in runs]
    assert len(record.read_text().splitlines()) == 1  # the delete never ran
