"""Approvals and limits across three real `aofd serve` replicas of one set (one real etcd, each
replica its own state and audit dir, the same watched repo):

- a run on replica A asks to `kubectl delete pod x` in a Context that requires approval for it;
  `aofctl approvals` on replica B lists the request and `aofctl approve` on B grants it: the run
  waiting on A resumes and the command runs (once);
- a Context with `max_requests_per_minute: 3`: nine signed webhooks spread over the three
  replicas (three each) start exactly three runs across the set.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import segment
from tests.cluster.etcdkit import EtcdCluster, requires_etcd
from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import FLOW, SECRET, send_event
from tests.runtime.test_command_lifetime import AGENT, install_fake

pytestmark = [pytest.mark.slow, requires_etcd, pytest.mark.timeout(120)]

MEMBERS = ("host-a", "host-b", "host-c")
ALICE = "alice-admin-token-0123456789abcdef"
APPROVING = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {{name: prod}}
spec:
  namespace: default
  env: {{FAKE_RECORD: "{record}"}}
  approval:
    required: true
    allowed_users: ["admin:alice"]
    require_for: ["kubectl delete"]
    timeout_seconds: 60
"""
LIMITED = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: limited}
spec:
  namespace: default
  limits: {max_requests_per_minute: 3}
"""
TRIGGER = f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: hook}}
spec:
  type: HTTP
  config: {{webhook_secret: {SECRET}}}
"""
CAPPED = f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: capped}}
spec:
  type: HTTP
  config: {{webhook_secret: {SECRET}}}
"""


def _binding(name: str, context: str, trigger: str) -> str:
    return f"""\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {{name: {name}}}
spec:
  flow: {{name: echo-flow}}
  context: {{name: {context}}}
  trigger: {{name: {trigger}}}
"""


def _model(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    """`kubectl delete pod x` when asked to delete and no tool result came back yet; else text."""
    text = json.dumps(request.get("messages", []))
    if "delete pod x" in text and "tool_result" not in text:
        return [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "kubectl",
                "input": {"args": ["delete", "pod", "x"]},
            }
        ]
    return None


def _actions(home: Path, context: str, action: str) -> list[dict[str, Any]]:
    found = []
    for path in segment.list_segments(home / "audit" / context):
        for record in harness.audit_lines(path):
            if record["event"]["action"] == action:
                found.append(record)
    return found


def _cluster_up(daemon: harness.DaemonProcess) -> bool:
    """Ready again: `/readyz` is 503 while the replica has no valid etcd session."""
    return bool(daemon.get("/readyz")[0] == 200)


def _aofctl(*args: str, admin: str, token: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args, "--admin", admin, "--token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _send(daemon: harness.DaemonProcess, trigger: str, text: str, delivery: str) -> int:
    if trigger == "hook":
        return send_event(daemon, text, delivery)
    # Same signing as `send_event`, another trigger's path.
    body = json.dumps({"text": text, "user": {"id": "U1"}}).encode()
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Aofd-Timestamp": ts,
        "X-Aofd-Signature": f"v1={sig}",
        "X-Aofd-Delivery": delivery,
    }
    return daemon.post(f"/hooks/http/{trigger}", body, which="listen", headers=headers)[0]


@contextlib.contextmanager
def _set(
    tmp_path: Path, etcd: EtcdCluster, record: Path
) -> Iterator[tuple[dict[str, harness.DaemonProcess], Path]]:
    repo = harness.write_tree(
        tmp_path / "repo",
        {
            "contexts/prod.yaml": APPROVING.format(record=record),
            "contexts/limited.yaml": LIMITED,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "triggers/capped.yaml": CAPPED,
            "bindings/b1.yaml": _binding("b1", "prod", "hook"),
            "bindings/b2.yaml": _binding("b2", "limited", "capped"),
        },
    )
    kubectl = install_fake(tmp_path / "bin")
    token = tmp_path / "alice.token"
    token.write_text(ALICE + "\n")
    extra = {
        "admin_api": {"tokens": [{"name": "alice", "token_file": str(token)}]},
        "executables": {"paths": {"kubectl": str(kubectl)}},
    }
    with fakes.anthropic_server(responder=_model) as model:
        configs = {
            m: harness.replica_config(
                tmp_path / m,
                repo=repo,
                member=m,
                endpoints=etcd.endpoints,
                model_url=fakes.url(model),
                extra=extra,
            )
            for m in MEMBERS
        }
        with harness.run_replicas(configs, env={"ANTHROPIC_API_KEY": "test-key"}) as daemons:
            yield daemons, token


def test_an_approval_is_decided_on_another_replica_and_a_limit_holds_across_the_set(tmp_path: Path) -> None:
    record = tmp_path / "kubectl.jsonl"
    with EtcdCluster.start(1) as etcd, _set(tmp_path, etcd, record) as (daemons, token):
        a, b = daemons["host-a"], daemons["host-b"]

        # Warm-up: one plain run per replica, so that each has imported its model SDK (seconds of
        # CPU on a busy box, which may cost a replica its 3 s session once: it then joins again).
        for i, member in enumerate(MEMBERS):
            assert send_event(daemons[member], f"hello {i}", f"warm-{i}") == 202
        for member in MEMBERS:
            home = tmp_path / member
            daemons[member].wait_for(
                lambda home=home: _actions(home, "prod", "agent.run.finished"), timeout=20, what="warm-up"
            )
            daemons[member].wait_for(
                lambda member=member: _cluster_up(daemons[member]), timeout=10, what="a valid session"
            )

        # Requested on A, listed and granted on B: A's run resumes and runs the command once.
        assert send_event(a, "delete pod x", "approve-1") == 202

        def pending_on_b() -> list[dict[str, Any]]:
            listed = _aofctl("approvals", "-o", "json", admin=b.endpoints["admin"], token=token)
            assert listed.returncode == 0, listed.stderr
            return list(json.loads(listed.stdout))

        [item] = b.wait_for(pending_on_b, timeout=20, what="A's request listed on B")
        assert item["argv"][-3:] == ["delete", "pod", "x"]
        assert not record.exists()
        granted = _aofctl("approve", item["id"], admin=b.endpoints["admin"], token=token)
        assert granted.returncode == 0, granted.stdout + granted.stderr
        ran = a.wait_for(lambda: record.exists() and record.read_text(), timeout=10, what="kubectl on A")
        assert [json.loads(line)["argv"][-3:] for line in ran.splitlines()] == [["delete", "pod", "x"]]
        a.wait_for(
            lambda: _actions(tmp_path / "host-a", "prod", "agent.run.finished"), timeout=10, what="A's run"
        )
        assert [
            r["aofd"]["agent"]["run_id"] for r in _actions(tmp_path / "host-a", "prod", "approval.granted")
        ] or [r for m in MEMBERS for r in _actions(tmp_path / m, "prod", "approval.granted")]

        # max_requests_per_minute: 3 across the set: nine events, three per replica, three runs.
        for i in range(9):
            target = daemons[MEMBERS[i % 3]]
            assert _send(target, "capped", f"hello {i}", f"capped-{i}") in (200, 202)

        def started() -> int:
            return sum(len(_actions(tmp_path / m, "limited", "agent.run.started")) for m in MEMBERS)

        a.wait_for(lambda: started() >= 3, timeout=15, what="three runs")

        def decided() -> int:
            """Events of the capped trigger done with (run or refused), from each replica's log
            (refusals are audited once per quiet window, not each)."""
            return sum(
                1
                for d in daemons.values()
                for line in d.log_text().splitlines()
                if '"event": "flow run"' in line and '"binding": "b2"' in line
            )

        a.wait_for(lambda: decided() >= 9, timeout=15, what="all nine events decided")
        assert started() == 3
        assert decided() == 9
        refused = [r for m in MEMBERS for r in _actions(tmp_path / m, "limited", "ratelimit.exceeded")]
        assert refused
        assert {r["event"]["reason"] for r in refused} == {"max_requests_per_minute"}
        for daemon in daemons.values():
            assert daemon.stop() == 0
