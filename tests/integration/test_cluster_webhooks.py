"""Two real `aofd serve` replicas sharing one real etcd (`cluster:`): the same signed HTTP webhook
POSTed to both runs once across the set; `aofctl status` on either shows both members, the leader
and the revision each serves; with etcd stopped a webhook gets 503 + `Retry-After` and `/readyz`
is 503 (while `/healthz` stays 200)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.etcdkit import EtcdCluster, requires_etcd
from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, SECRET, TRIGGER, binding
from tests.runtime.fakes import signing

pytestmark = [pytest.mark.slow, requires_etcd]


def _config(tmp_path: Path, repo: Path, member: str, etcd: EtcdCluster, model_url: str) -> Path:
    home = tmp_path / member
    home.mkdir()
    config = home / "aofd.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "state_dir": str(home / "state"),
                "audit_dir": str(home / "audit"),
                "models": {"anthropic_base_url": model_url},
                "cluster": {
                    "name": "ops-test",
                    "member": member,
                    "etcd": {"endpoints": list(etcd.endpoints), "request_timeout": "1s"},
                    "lease_ttl": "3s",
                },
            }
        )
    )
    return config


def _runs_started(audit_dir: Path) -> list[dict[str, Any]]:
    found = []
    for segment in sorted((audit_dir / "prod").glob("audit-*.jsonl")):
        for record in harness.audit_lines(segment):
            if record["event"]["action"] == "agent.run.started":
                found.append(record)
    return found


@contextlib.contextmanager
def _replicas(tmp_path: Path, etcd: EtcdCluster) -> Iterator[list[harness.DaemonProcess]]:
    repo = harness.write_tree(
        tmp_path / "repo",
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    env = {"ANTHROPIC_API_KEY": "test-key"}
    with fakes.anthropic_server() as model, contextlib.ExitStack() as stack:
        daemons = []
        for member in ("host-a", "host-b"):
            config = _config(tmp_path, repo, member, etcd, fakes.url(model))
            daemons.append(
                stack.enter_context(
                    harness.run_daemon(
                        "--config",
                        str(config),
                        cwd=config.parent,
                        state_dir=config.parent / "state",
                        env=env,
                    )
                )
            )
        for daemon in daemons:
            daemon.wait_ready()
        yield daemons


def _signed(body: bytes, delivery: str) -> dict[str, str]:
    stamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "X-Aofd-Timestamp": str(stamp),
        "X-Aofd-Signature": signing.aofd(SECRET, body, stamp),
        "X-Aofd-Delivery": delivery,
    }


def _status(daemon: harness.DaemonProcess) -> dict[str, Any]:
    status, data = daemon.get("/api/v1/status")
    assert status == 200, data
    return dict(data)


def test_two_replicas_run_a_delivery_once_and_refuse_while_etcd_is_down(tmp_path: Path) -> None:
    with EtcdCluster.start(1) as etcd, _replicas(tmp_path, etcd) as (a, b):
        body = json.dumps({"text": "restart api", "user": {"id": "svc-1"}}).encode()
        headers = _signed(body, "delivery-1")
        first = a.post("/hooks/http/hook", body, which="listen", headers=headers)
        second = b.post("/hooks/http/hook", body, which="listen", headers=headers)
        assert (202, 200) == (first[0], second[0]), (first, second)

        # Both members, one leader, the revision each serves (published after its apply).
        def both_members_with_revisions() -> dict[str, Any] | None:
            cluster = _status(b)["cluster"]
            members = cluster["members"]
            if len(members) == 2 and all(m["revision"] for m in members) and cluster["leader"]:
                return dict(cluster)
            return None

        cluster = b.wait_for(both_members_with_revisions, what="both members in the status")
        assert ["host-a", "host-b"] == [m["member"] for m in cluster["members"]]
        assert cluster["leader"] in ("host-a", "host-b")
        assert cluster["etcd"]["up"] is True
        revision = _status(a)["appliedRevision"]
        assert {revision} == {m["revision"] for m in cluster["members"]}
        shown = harness.aofctl("status", "--admin", a.endpoints["admin"])
        assert shown.returncode == 0, shown.stderr
        assert "Cluster:           ops-test as host-a" in shown.stdout
        assert f"Leader:            {cluster['leader']}" in shown.stdout
        for member in ("host-a", "host-b"):
            assert f"member {member}: revision {revision}" in shown.stdout

        # etcd gone: a new delivery cannot be claimed -> 503 + Retry-After; not ready; still healthy.
        etcd.members[0].kill()
        other = json.dumps({"text": "scale api"}).encode()
        refused = a.wait_for(
            lambda: (
                r
                if (r := a.post("/hooks/http/hook", other, which="listen", headers=_signed(other, "d-2")))[0]
                == 503
                else None
            ),
            timeout=10,
            what="a 503 while etcd is down",
        )
        assert b"retry later" in refused[1]
        ready = a.wait_for(lambda: (s := a.get("/readyz"))[0] == 503 and s, timeout=10, what="readyz 503")
        assert "cluster: etcd unreachable since" in str(ready[1])
        assert 200 == a.get("/healthz")[0]
        metrics = a.get("/metrics")[1]
        assert 'aofd_events_not_run_total{platform="http",reason="coordinator_unavailable"}' in str(metrics)
        assert "aofd_cluster_claim_seconds_count" in str(metrics)
        assert a.stop() == 0
        assert b.stop() == 0
    runs = _runs_started(tmp_path / "host-a" / "audit") + _runs_started(tmp_path / "host-b" / "audit")
    assert 1 == len(runs), "the delivery ran once across the two replicas"
