"""The running daemon on 10,000 resources: cold start to ready, then one agent file saved in the
watched directory to the new revision applied, as the user of `aofd serve DIR` sees it.

    python bench/daemon_pass.py [--resources 10000] [--rounds 12] [--out bench/daemon_pass.json]

Generates the repo of `bench/load.py` (every Context's kubeconfig a real file, every secret
variable set, a model base URL configured, so every binding can be Ready), starts `aofd serve
--config` on it and waits for `/readyz`. Then, each round, replaces the agent file used by the
most bindings (one rename, alternating two contents) and polls `/api/v1/status` until the last
pass names a new revision. Reported: start to ready; per change, the pass as the daemon timed it
(build, compile, plan, apply, persist, audit) and save to applied (adds the watch's debounce and
the status poll, 5 ms); the daemon's RSS after the rounds. Uses only the CLI and the admin API,
so the same script measures any aofd version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: bench}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def wait_until(check: Any, limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    got: Any = None
    while time.monotonic() < deadline:
        try:
            got = check()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            got = exc
        if got and not isinstance(got, Exception):
            return got
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what} (last: {got!r})")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(root: Path, resources: int, rounds: int) -> dict[str, Any]:
    repo = root / "repo"
    load.generate(repo, resources)
    env = dict(os.environ)
    for name in load.ENVIRONMENTS:
        path = root / "kube" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(KUBECONFIG)
        path.chmod(0o600)
        env[f"KUBECONFIG_{name.upper()}"] = str(path)
    env.update(
        SLACK_BOT_TOKEN="xoxb-bench",
        SLACK_SIGNING_SECRET="bench-signing-secret",
        PAGERDUTY_WEBHOOK_SECRET="bench-pd-secret",
        ANTHROPIC_API_KEY="bench",
    )
    admin = free_port()
    config = root / "aofd.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                "listen": f"127.0.0.1:{free_port()}",
                "admin": f"127.0.0.1:{admin}",
                "state_dir": str(root / "state"),
                "audit_dir": str(root / "audit"),
                "models": {"anthropic_base_url": "http://127.0.0.1:9"},
            }
        )
    )
    base = f"http://127.0.0.1:{admin}"
    agent = _most_used_agent(repo)
    original = agent.read_text()
    variants = [original.replace("temperature: 0.", "temperature: 0.1"), original]
    assert variants[0] != original, "the generated agent has no temperature to vary"

    log = (root / "aofd.log").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aofd", "serve", "--config", str(config), "--log-format", "json"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_until(lambda: urllib.request.urlopen(f"{base}/readyz", timeout=10).status == 200, 120, "ready")
        ready_s = time.perf_counter() - t0
        status = wait_until(
            lambda: (got := get_json(f"{base}/api/v1/status"))["lastPass"] and got, 120, "the first pass"
        )
        stalled = _stalled(status)
        passes: list[float] = []
        phases: list[dict[str, float]] = []
        saved_to_applied: list[float] = []
        for i in range(rounds + 1):
            before = get_json(f"{base}/api/v1/status")["lastPass"]["revision"]
            tmp = agent.with_suffix(".tmp")
            tmp.write_text(variants[i % 2])
            t = time.perf_counter()
            tmp.rename(agent)

            def applied(before: str = before) -> dict[str, Any] | None:
                last: dict[str, Any] = get_json(f"{base}/api/v1/status")["lastPass"]
                return last if last["revision"] != before else None

            last = wait_until(applied, 60, f"round {i} to apply")
            took = time.perf_counter() - t
            if last.get("outcome") != "applied":
                raise SystemExit(f"round {i}: the pass was {last.get('outcome')}: {last}")
            if i == 0:
                continue  # the first round also parses the variant's blob for the first time
            passes.append(float(last["duration_ms"]))
            phases.append(last.get("phases_ms") or {})
            saved_to_applied.append(took * 1000)
        rss = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return {
        "resources": resources,
        "changed_file": str(agent.relative_to(repo)),
        "start_to_ready_s": ready_s,
        "stalled_after_start": stalled,
        "pass_ms": {"median": statistics.median(passes), "max": max(passes), "all": passes},
        "phases_ms_median": {
            name: statistics.median(p.get(name, 0.0) for p in phases)
            for name in (phases[0] if phases else {})
        },
        "saved_to_applied_ms": {
            "median": statistics.median(saved_to_applied),
            "max": max(saved_to_applied),
        },
        "rss_mb_after": rss,
        "rounds": rounds,
    }


def _most_used_agent(repo: Path) -> Path:
    """The agent file whose name the most flow and fleet files mention (each file read once)."""
    mentions: dict[str, int] = {}
    for path in [*repo.glob("flows/**/*.yaml"), *repo.glob("fleets/**/*.yaml")]:
        for word in set(re.findall(r"\bagent-\d+\b", path.read_text())):
            mentions[word] = mentions.get(word, 0) + 1
    name = max(sorted(mentions), key=lambda n: mentions[n])
    return next(repo.glob(f"agents/**/{name}.yaml"))


def _stalled(status: dict[str, Any]) -> int:
    """How many resources the status lists as not Ready (0 when the bench set up everything)."""
    count = 0
    for item in status.get("resources", []) or []:
        if (item.get("status") or {}).get("phase") not in (None, "Ready"):
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aofd-bench-") as tmp:
        result = measure(Path(tmp), args.resources, args.rounds)
    print(f"{result['resources']} resources; changing {result['changed_file']} each round")
    print(f"start to ready                 {result['start_to_ready_s']:8.2f} s")
    print(
        f"pass (daemon-timed), median    {result['pass_ms']['median']:8.1f} ms"
        f"  (max {result['pass_ms']['max']:.1f})"
    )
    if result["phases_ms_median"]:
        split = ", ".join(f"{k} {v:.1f}" for k, v in result["phases_ms_median"].items())
        print(f"  of which (ms, medians)       {split}")
    print(
        f"saved to applied, median       {result['saved_to_applied_ms']['median']:8.1f} ms"
        f"  (max {result['saved_to_applied_ms']['max']:.1f})"
    )
    print(f"daemon RSS after the rounds    {result['rss_mb_after']:8.1f} MB")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
