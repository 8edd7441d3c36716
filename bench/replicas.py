"""Replicas through etcd under load, with the leader killed mid-run.

Three `aofd serve` replicas of one set (`cluster:`, `lease_ttl: 3s`) and one etcd (loopback, data
dir on /dev/shm), sharing a watched repo with a Schedule trigger firing every second and a signed
HTTP trigger. For `--seconds` a sender posts one delivery every `--interval` to the replicas in
turn and retries it at the next replica (as a platform retries after a timeout or a 503: a
delivery is retried at the next live replica until one answers 2xx, at most 4 attempts); after
`--kill-at` seconds the leader is killed with SIGKILL. A single host (no `cluster:`) serving the
same repo gets one delivery per step too: its latency is the comparison.

Reported: failover time (SIGKILL -> the first schedule run by another replica; target <= TTL +
2 s), duplicate runs (webhook deliveries run more than once, from the fake model's requests;
schedule slots run more than claimed; target 0), ticks missed (slots in the run with no fire,
the ones inside the failover are coalesced into one catch-up fire), events lost (a delivery no
replica ever ran; a 503 followed by a successful retry is not lost), the delivery claim's latency
p50/p99 from the replicas' `aofd_cluster_claim_seconds` histograms, and the webhook latency
(first answer) of the replicas against the single host.

    python bench/replicas.py [--seconds 30] [--interval 0.1] [--kill-at 10]

Prints a table and writes bench/replicas.json. Needs `etcd` (Debian: etcd-server).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aofd.audit import segment
from tests.cluster.etcdkit import EtcdCluster
from tests.integration import fakes, harness

OUT = Path(__file__).with_suffix(".json")
SECRET = "bench-secret"
MEMBERS = ("host-a", "host-b", "host-c")
TTL = 3.0
REPO = {
    "contexts/prod.yaml": (
        "apiVersion: aof.dev/v1\nkind: Context\nmetadata: {name: prod}\nspec: {namespace: default}\n"
    ),
    "agents/echo.yaml": (
        "apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {name: echo}\n"
        "spec: {model: 'anthropic:claude-bench', instructions: answer, max_iterations: 1}\n"
    ),
    "flows/echo.yaml": (
        "apiVersion: aof.dev/v1\nkind: AgentFlow\nmetadata: {name: echo-flow}\n"
        "spec: {agents: [{name: echo}]}\n"
    ),
    "triggers/hook.yaml": (
        "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: hook}\n"
        f"spec: {{type: HTTP, config: {{webhook_secret: {SECRET}}}}}\n"
    ),
    "triggers/tick.yaml": (
        "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: tick}\n"
        "spec: {type: Schedule, config: {cron: '* * * * * *'}}\n"
    ),
    "bindings/hooks.yaml": (
        "apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata: {name: hooks}\n"
        "spec: {flow: {name: echo-flow}, context: {name: prod}, trigger: {name: hook}}\n"
    ),
    "bindings/ticks.yaml": (
        "apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata: {name: ticks}\n"
        "spec: {flow: {name: echo-flow}, context: {name: prod}, trigger: {name: tick}}\n"
    ),
}
DELIVERY = re.compile(r"delivery-[0-9]+-[a-z]+")


class ModelLog:
    """The fake model's responder: counts the requests that name each delivery."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> None:
        for found in set(DELIVERY.findall(json.dumps(request.get("messages", [])))):
            with self.lock:
                self.seen[found] = self.seen.get(found, 0) + 1


def post(url: str, delivery: str) -> tuple[int, float]:
    body = json.dumps({"text": f"run {delivery}", "user": {"id": "U1"}}).encode()
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Aofd-Timestamp": ts,
        "X-Aofd-Signature": f"v1={sig}",
        "X-Aofd-Delivery": delivery,
    }
    started = time.perf_counter()
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0  # refused / reset: the replica is dead
    return status, time.perf_counter() - started


def cluster_of(daemon: harness.DaemonProcess) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError, KeyError):
        status, data = daemon.get("/api/v1/status")
        if status == 200:
            return dict(data["cluster"])
    return {}


def claim_histogram(daemon: harness.DaemonProcess) -> dict[float, float]:
    """`le -> cumulative count` of `aofd_cluster_claim_seconds` from one replica's /metrics."""
    out: dict[float, float] = {}
    with contextlib.suppress(OSError):
        _, text = daemon.get("/metrics")
        for m in re.finditer(r'aofd_cluster_claim_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', str(text)):
            out[float(m.group(1))] = float(m.group(2))
    return out


def quantile(hist: dict[float, float], q: float) -> float | None:
    """histogram_quantile: linear within the bucket that holds the q-th observation."""
    bounds = sorted(hist)
    total = hist[bounds[-1]] if bounds else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        if hist[le] >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(hist[le] - below, 1e-9)
        lower, below = le, hist[le]
    return lower


def runs_of(home: Path, binding: str) -> list[float]:
    """Start times of the runs of `binding` in one replica's audit log."""
    out = []
    for path in segment.list_segments(home / "audit" / "prod"):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                record = json.loads(line)
                if (
                    record["event"]["action"] == "agent.run.started"
                    and record["aofd"].get("binding") == binding
                ):
                    out.append(datetime.datetime.fromisoformat(record["@timestamp"]).timestamp())
    return out


def tick_claims(etcd: EtcdCluster) -> dict[str, str]:
    prefix = b"/aofd/bench/sched/tick/"
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    body = json.dumps({"key": base64.b64encode(prefix).decode(), "range_end": base64.b64encode(end).decode()})
    request = urllib.request.Request(f"{etcd.endpoints[0]}/v3/kv/range", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        kvs = json.load(answer).get("kvs", [])
    return {
        base64.b64decode(kv["key"])[len(prefix) :].decode(): base64.b64decode(kv["value"])
        .decode()
        .split("/")[0]
        for kv in kvs
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--kill-at", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aofd-bench-replicas-"))
    repo = harness.write_tree(root / "repo", REPO)
    model_log = ModelLog()
    env = {"ANTHROPIC_API_KEY": "bench-key"}
    result: dict[str, Any] = {}
    with (
        EtcdCluster.start(1) as etcd,
        fakes.anthropic_server(responder=model_log) as model,
        contextlib.ExitStack() as stack,
    ):
        configs = {
            m: harness.replica_config(
                root / m,
                repo=repo,
                member=m,
                endpoints=etcd.endpoints,
                model_url=fakes.url(model),
                cluster="bench",
            )
            for m in MEMBERS
        }
        daemons = stack.enter_context(harness.run_replicas(configs, env=env))
        single_home = root / "single"
        single_home.mkdir()
        single_cfg = single_home / "aofd.yaml"
        single_cfg.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(single_home / "state"),
                    "audit_dir": str(single_home / "audit"),
                    "models": {"anthropic_base_url": fakes.url(model)},
                }
            )
        )
        single = stack.enter_context(
            harness.run_daemon(
                "--config", str(single_cfg), cwd=single_home, state_dir=single_home / "state", env=env
            )
        )
        single.wait_ready()
        # Warm-up: every replica imports its model SDK (seconds of CPU) before the clock starts.
        for i, m in enumerate((*MEMBERS, "single")):
            d = single if m == "single" else daemons[m]
            post(d.url("listen", "/hooks/http/hook"), f"delivery-{i}-warm")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(model_log.seen) < 4:
            time.sleep(0.1)
        for m in MEMBERS:
            daemons[m].wait_ready()

        leader = next((m for m in MEMBERS if cluster_of(daemons[m]).get("isLeader")), None)
        while leader is None and time.monotonic() < deadline:
            time.sleep(0.1)
            leader = next((m for m in MEMBERS if cluster_of(daemons[m]).get("isLeader")), None)
        assert leader is not None, "no leader"
        hist_before_kill: dict[float, float] = {}
        alive = list(MEMBERS)
        sent: dict[str, list[int]] = {}
        replica_latency: list[float] = []
        single_latency: list[float] = []
        refused_then_retried = 0
        started = time.time()
        killed_at: float | None = None
        step = 0
        while time.time() - started < args.seconds:
            tick = time.monotonic()
            if killed_at is None and time.time() - started >= args.kill_at:
                hist_before_kill = claim_histogram(daemons[leader])
                daemons[leader].proc.send_signal(signal.SIGKILL)
                daemons[leader].proc.wait()
                killed_at = time.time()
                alive.remove(leader)
            delivery = f"delivery-{step}-r"
            statuses: list[int] = []
            order = [MEMBERS[(step + k) % 3] for k in range(4)]  # first, then the retries elsewhere
            for k, member in enumerate(order):
                status, took = post(daemons[member].url("listen", "/hooks/http/hook"), delivery)
                statuses.append(status)
                if k == 0 and 200 <= status < 300:
                    replica_latency.append(took)
                if k >= 1 and 200 <= status < 300:
                    break  # the retry at another replica answered (200: a duplicate, 202: it ran)
            if not 200 <= statuses[0] < 300 and any(200 <= s < 300 for s in statuses[1:]):
                refused_then_retried += 1
            sent[delivery] = statuses
            status, took = post(single.url("listen", "/hooks/http/hook"), f"delivery-{step}-s")
            if 200 <= status < 300:
                single_latency.append(took)
            step += 1
            time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
        ended = time.time()
        time.sleep(2)  # the last runs finish
        hists = [claim_histogram(daemons[m]) for m in alive] + [hist_before_kill]
        merged: dict[float, float] = {}
        for h in hists:
            for le, n in h.items():
                merged[le] = merged.get(le, 0) + n
        for m in alive:
            daemons[m].stop()
        claims = tick_claims(etcd)

    assert killed_at is not None
    tick_runs = {m: runs_of(root / m, "ticks") for m in MEMBERS}
    after_kill = [t for m in MEMBERS if m != leader for t in tick_runs[m] if t > killed_at]
    failover = (min(after_kill) - killed_at) if after_kill else None
    slots = [datetime.datetime.fromisoformat(s).timestamp() for s in claims]
    window = [s for s in slots if started + 1 <= s <= ended - 1]
    expected = int(ended - 1) - int(started + 1) + 1
    claimed_by = {m: sum(1 for who in claims.values() if who == m) for m in MEMBERS}
    tick_duplicates = sum(max(0, len(tick_runs[m]) - claimed_by[m]) for m in MEMBERS)
    replica_deliveries = [d for d in sent if d.endswith("-r")]
    answered = [d for d in replica_deliveries if any(200 <= s < 300 for s in sent[d])]
    hook_duplicates = sum(1 for d in replica_deliveries if model_log.seen.get(d, 0) > 1)
    never_run = [d for d in replica_deliveries if model_log.seen.get(d, 0) == 0]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "settings": {
            "seconds": args.seconds,
            "interval": args.interval,
            "kill_at": args.kill_at,
            "lease_ttl": TTL,
            "etcd": "1 member, data dir on /dev/shm",
        },
        "killed": leader,
        "failover_s": round(failover, 3) if failover is not None else None,
        "failover_target_s": TTL + 2,
        "schedule": {
            "slots_in_window": expected,
            "slots_fired": len(window),
            "ticks_missed": max(0, expected - len(window)),
            "duplicate_runs": tick_duplicates,
            "runs_by_member": {m: len(v) for m, v in tick_runs.items()},
        },
        "webhooks": {
            "deliveries": len(replica_deliveries),
            "answered_2xx": len(answered),
            "refused_then_retried_ok": refused_then_retried,
            "duplicate_runs": hook_duplicates,
            "events_lost": len(never_run),
            "lost": never_run[:20],
        },
        "claim_latency_ms": {
            "count": merged.get(float("inf"), 0),
            "p50": round(1000 * (quantile(merged, 0.5) or 0), 3),
            "p99": round(1000 * (quantile(merged, 0.99) or 0), 3),
            "buckets": {repr(k): v for k, v in sorted(merged.items())},
        },
        "webhook_latency_ms": {
            "replicas_p50": round(1000 * statistics.median(replica_latency), 2),
            "replicas_p99": round(1000 * pct(replica_latency, 0.99), 2),
            "single_p50": round(1000 * statistics.median(single_latency), 2),
            "single_p99": round(1000 * pct(single_latency, 0.99), 2),
        },
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "claim_latency_ms"}, indent=2))
    print(
        "claim latency ms: p50", result["claim_latency_ms"]["p50"], "p99", result["claim_latency_ms"]["p99"]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
