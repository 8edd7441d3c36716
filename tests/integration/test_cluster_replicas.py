"""Three real `aofd serve` replicas of one set and one real etcd (each replica its own state and
audit dir, the same watched repo, `lease_ttl: 3s`), a Schedule trigger firing every second:

- kill -9 the leader: another replica fires within the lease TTL + 2 s;
- SIGSTOP the new leader past its lease, SIGCONT: it fires nothing after waking (its log shows it
  stepping down), and `aofctl status` on another replica shows another leader;
- across the three audit dirs no schedule slot ran twice, and every audit line names its member
  (`service.node.name`) in segments named after it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import segment, verify
from tests.cluster.etcdkit import EtcdCluster, requires_etcd
from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, FLOW

pytestmark = [pytest.mark.slow, requires_etcd, pytest.mark.timeout(120)]

MEMBERS = ("host-a", "host-b", "host-c")
TTL = 3.0
CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: default
"""
EVERY_SECOND = """\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {name: tick}
spec:
  type: Schedule
  config: {cron: "* * * * * *"}
"""
BINDING = """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {name: ticks}
spec:
  flow: {name: echo-flow}
  context: {name: prod}
  trigger: {name: tick}
"""


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid_time(ulid: str) -> float:
    """The wall time a ULID was made (its first ten characters: milliseconds since the epoch)."""
    ms = 0
    for char in ulid[:10]:
        ms = ms * 32 + _CROCKFORD.index(char)
    return ms / 1000


def _runs(home: Path) -> list[tuple[float, dict[str, Any]]]:
    """(wall time the run started, record) of each schedule run in one replica's audit.

    The time is the run id's (a ULID made as the run starts), not the record's `@timestamp`: a
    replica stopped between starting a run and writing its record stamps the record at waking."""
    found = []
    for path in segment.list_segments(home / "audit" / "prod"):
        for record in harness.audit_lines(path):
            if record["event"]["action"] == "agent.run.started":
                found.append((_ulid_time(record["aofd"]["agent"]["run_id"]), record))
    return found


def _tick_claims(etcd: EtcdCluster) -> dict[str, str]:
    """Slot (UTC fire time) -> the member that claimed it, read from etcd's JSON gateway."""
    prefix = b"/aofd/ops-test/sched/tick/"
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    body = json.dumps(
        {"key": base64.b64encode(prefix).decode(), "range_end": base64.b64encode(end).decode()}
    ).encode()
    request = urllib.request.Request(f"{etcd.endpoints[0]}/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        kvs = json.load(answer).get("kvs", [])
    return {
        base64.b64decode(kv["key"])[len(prefix) :].decode(): base64.b64decode(kv["value"])
        .decode()
        .split("/")[0]
        for kv in kvs
    }


def _cluster(daemon: harness.DaemonProcess) -> dict[str, Any]:
    status, data = daemon.get("/api/v1/status")
    assert status == 200, data
    return dict(data["cluster"])


def _leader(daemons: dict[str, harness.DaemonProcess], among: tuple[str, ...]) -> str | None:
    for member in among:
        with contextlib.suppress(OSError):
            if _cluster(daemons[member]).get("isLeader"):
                return member
    return None


@contextlib.contextmanager
def _set(tmp_path: Path, etcd: EtcdCluster) -> Iterator[dict[str, harness.DaemonProcess]]:
    repo = harness.write_tree(
        tmp_path / "repo",
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/tick.yaml": EVERY_SECOND,
            "bindings/ticks.yaml": BINDING,
        },
    )
    with fakes.anthropic_server() as model:
        configs = {
            m: harness.replica_config(
                tmp_path / m, repo=repo, member=m, endpoints=etcd.endpoints, model_url=fakes.url(model)
            )
            for m in MEMBERS
        }
        with harness.run_replicas(configs, env={"ANTHROPIC_API_KEY": "test-key"}) as daemons:
            yield daemons


def test_schedule_fails_over_once_and_a_paused_leader_does_not_fire(tmp_path: Path) -> None:
    with EtcdCluster.start(1) as etcd, _set(tmp_path, etcd) as daemons:
        any_one = daemons[MEMBERS[0]]

        def steady_leader() -> str | None:
            """The leader, once it has fired twice in the last 2.5 s (start-up on a busy box may
            cost the first leader its lease: the set then fails over before the test begins)."""
            leader = _leader(daemons, MEMBERS)
            recent = leader and [t for t, _ in _runs(tmp_path / leader) if t > time.time() - 2.5]
            return leader if recent and len(recent) >= 2 else None

        first = any_one.wait_for(steady_leader, timeout=20, what="a leader firing every second")

        # 1. kill -9 the leader: another replica fires within TTL + 2 s.
        daemons[first].proc.send_signal(signal.SIGKILL)
        daemons[first].proc.wait()
        killed_at = time.time()
        alive = tuple(m for m in MEMBERS if m != first)

        def fired_elsewhere() -> float | None:
            later = [t for m in alive for t, _ in _runs(tmp_path / m) if t > killed_at]
            return min(later) if later else None

        took_over = any_one.wait_for(fired_elsewhere, timeout=TTL + 6, what="a fire after the kill")
        failover = took_over - killed_at
        assert failover <= TTL + 2, f"failover took {failover:.2f}s"
        second = any_one.wait_for(lambda: _leader(daemons, alive), timeout=5, what="the new leader")

        # 2. SIGSTOP the new leader past its lease; the third takes over; SIGCONT: it fires nothing.
        third = next(m for m in alive if m != second)
        daemons[second].proc.send_signal(signal.SIGSTOP)
        paused_at = time.time()
        try:
            daemons[third].wait_for(
                lambda: _cluster(daemons[third]).get("isLeader"), timeout=TTL + 6, what="the third to lead"
            )
            daemons[third].wait_for(
                lambda: any(t > paused_at for t, _ in _runs(tmp_path / third)),
                timeout=5,
                what="the third to fire",
            )
            time.sleep(max(0.0, paused_at + TTL + 1 - time.time()))  # stopped well past its lease
        finally:
            daemons[second].proc.send_signal(signal.SIGCONT)
        woke_at = time.time()
        daemons[second].wait_for(
            lambda: _cluster(daemons[second]).get("leader") == third, timeout=10, what="the woken one to see"
        )
        time.sleep(2)  # ticks keep coming every second: give a zombie leader the chance to fire
        woken = [t for t, _ in _runs(tmp_path / second) if t > paused_at + 0.5]
        assert woken == [], f"{second} fired after waking: {woken}"
        assert "cluster.step_down" in daemons[second].log_text() or "cluster.lease_lost" in (
            daemons[second].log_text()
        )
        shown = harness.aofctl("status", "--admin", daemons[second].endpoints["admin"])
        assert shown.returncode == 0, shown.stderr
        assert f"Leader:            {third}" in shown.stdout
        assert _cluster(daemons[third])["isLeader"] is True
        assert woke_at - paused_at > TTL
        for m in alive:
            assert daemons[m].stop() == 0
        claims = _tick_claims(etcd)

    # 3. No slot ran twice across the three audit dirs: every run is one claimed slot, each slot
    # claimed once (by key) by one member, and each member ran no more slots than it claimed (the
    # killed one may have claimed a slot it had no time to run).
    assert len(claims) >= 6
    for m in MEMBERS:
        runs = _runs(tmp_path / m)
        claimed = sum(1 for who in claims.values() if who == m)
        assert runs, m
        assert len(runs) <= claimed, (m, len(runs), claimed)
        assert len(runs) >= claimed - (1 if m == first else 0), (m, len(runs), claimed)
        for _, record in runs:
            assert record["service"]["node"]["name"] == m
            assert record["aofd"]["cluster"]["name"] == "ops-test"
        names = [p.name for p in segment.list_segments(tmp_path / m / "audit" / "prod")]
        assert names
        assert all(n.startswith(f"audit-{m}-") for n in names)
    for m in alive:  # the killed one's torn tail is repaired at its next start, not here
        assert verify.verify(tmp_path / m / "audit").ok
