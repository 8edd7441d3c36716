"""A real `aofd serve` whose only binding of a GitHub Trigger is Stalled (its Context's kubeconfig is
missing on this host): the ping is answered, an event gets 503 with `Retry-After` and is audited in the
Context's own log as not run, a bad signature is refused and audited, `aofctl get triggers` shows
that none of the Trigger's bindings is Ready, and every audit line (the daemon's start and stop, the
applied config, the trigger records) is ECS (`tests/audit/ecs_check.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.audit import ecs_check
from tests.integration import harness
from tests.integration.test_daemon_gitops import AGENT, FLOW
from tests.runtime.fakes import signing

pytestmark = pytest.mark.slow

SECRET = "gh-integration-secret"


def aofctl(*args: str, admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args, "--admin", admin],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def audit_lines(root: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for path in sorted(root.glob("*.jsonl")) for line in path.read_text().splitlines()
    ]


def test_a_trigger_whose_binding_is_stalled_is_served(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    audit_dir = repo / ".aofd" / "audit" / "prod-own"  # its `audit.log_path`, not the default `prod`
    files = {
        "contexts/prod.yaml": (
            "apiVersion: aof.dev/v1\nkind: Context\nmetadata: {name: prod}\nspec:\n"
            f"  namespace: default\n  kubeconfig: {tmp_path / 'no-such-kubeconfig'}\n"
            "  audit: {log_path: prod-own}\n"
        ),
        "agents/echo.yaml": AGENT,
        "flows/echo.yaml": FLOW,
        "triggers/gh.yaml": (
            "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: gh}\nspec:\n"
            f"  type: GitHub\n  config: {{webhook_secret: {SECRET}}}\n"
        ),
        "bindings/b.yaml": (
            "apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata: {name: b}\nspec:\n"
            "  flow: {name: echo-flow}\n  context: {name: prod}\n  trigger: {name: gh}\n"
        ),
    }
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    with harness.serve_directory(repo, tmp_path) as (daemon, admin):
        daemon.wait_for(
            lambda: '"ready": true' in aofctl("status", "-o", "json", admin=admin).stdout, what="ready"
        )

        def github(body: bytes, event: str, delivery: str, secret: str = SECRET) -> tuple[int, bytes]:
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signing.sha256_hub(secret, body),
            }
            return daemon.post("/hooks/github/gh", body, which="listen", headers=headers)

        assert 200 == github(b'{"zen":"Design for failure.","hook_id":1}', "ping", "d-ping")[0]
        event = json.dumps(
            {"action": "opened", "issue": {"title": "t", "body": ""}, "sender": {"login": "o", "id": 9}}
        ).encode()
        status, body = github(event, "issues", "d-1")
        assert (503, b"not ready: binding b cannot run now (ContextNotReady); retry later\n") == (
            status,
            body,
        )
        assert 401 == github(event, "issues", "d-2", secret="wrong")[0]

        def audited() -> list[tuple[str, str, str]]:
            return [
                (r["event"]["action"], r["event"]["outcome"], r["event"].get("reason", ""))
                for r in audit_lines(audit_dir)
                if r["event"]["action"].startswith("trigger.")
            ]

        daemon.wait_for(lambda: len(audited()) == 2, what="two trigger records in the Context's own log")
        assert sorted(audited()) == [
            ("trigger.received", "failure", "ContextNotReady"),
            ("trigger.rejected", "failure", "signature_invalid"),
        ]

        table = aofctl("get", "triggers", admin=admin)
        assert 0 == table.returncode, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split()[:3] == ["NAME", "READY", "STATUS"]
        assert row.split()[:2] == ["gh", "0/1"]
        as_json = json.loads(aofctl("get", "triggers", "gh", "-o", "json", admin=admin).stdout)
        assert {"ready": 0, "total": 1} == as_json["bindings"]
        assert 0 == daemon.stop()
    # Every line of the daemon's own records (start, config, triggers, stop) is ECS.
    lines = audit_lines(audit_dir)
    kinds = {"daemon.started", "config.applied", "trigger.received", "trigger.rejected", "daemon.stopping"}
    assert kinds <= {r["event"]["action"] for r in lines}
    assert [(r["event"]["action"], ecs_check.problems(r)) for r in lines if ecs_check.problems(r)] == []
    assert ecs_check.type_conflicts(lines) == []
    for record in lines:
        assert (record["event"]["dataset"], record["service"]["name"]) == ("aofd.audit", "aofd")
        assert record["host"]["hostname"]
        assert record["service"]["version"]
