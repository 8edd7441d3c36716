"""Reconcile benchmark: the running daemon end to end, and the planner alone, at 1k to 100k resources.

Usage:
    .venv/bin/python bench/reconcile.py [--sizes 1000,10000,100000] [--rounds 10]
        [--parts planner,directory,git] [--quick] [--out bench/reconcile.json]

For each size, generates the repo of `bench/load.py` (every Context's kubeconfig a real file,
every secret variable set, a model base URL configured, so every binding can be Ready) and
measures three things, each in its own process:

    planner     the pure half alone (as before issue 14): with the tree loaded and the parse cache
                warm, one agent file changed -> `desired.build` + `compiler.build` + `diff.compute`;
                and a no-op revision. Runs in a child process.
    directory   `aofd serve --config` on a watched directory with `settle: 0`: start to ready, the
                first pass, then each round one agent file replaced by a rename (a new content
                every round: a line of its instructions changes) until the daemon's log says the
                new revision's routing table is live (`routing.swapped`: applied) and its pass is
                over (`reconcile pass`). The log is read as the daemon writes it: polling the
                admin API's status every few ms instead (megabytes of JSON at 100k) loaded the
                daemon being measured. The pass's own figures are asked once it is over.
    git         the same tree committed to a bare repository (`file://`), `aofd serve` on a git
                source polling every hour with a push-hook secret; each round one agent file is
                committed and pushed (`git push`, timed apart), then a signed `POST /hooks/git/main`
                is sent and the round is timed from the hook to the revision applied / pass finished.

The changed agent is the one used by the most bindings (through flows and fleets), counted in one
pass over the generated files. While the daemon runs, a client process (`bench/probes.py`) asks
`/healthz` on the admin listener every 5 ms over one keep-alive connection; the gaps between answers
measure how long the daemon's event loop was blocked ("loop lag"): reported during the first pass
(start to the first `lastPass`) and during the edit rounds (max and p99). Also reported: the pass as
the daemon times it (`lastPass.duration_ms` and its phases), the daemon's RSS after the first pass,
after the first (warm-up) edit and after each edit (a one-time step is not growth; `--rounds 100`
shows whether idle RSS stays flat); and, where the daemon reports it (`lastPass.loop_lag_ms`), its
own loop-lag probe. The daemon part uses only the CLI, the admin API and the push hook, so the same
script measures any aofd version (run it with `PYTHONPATH=<other checkout>`). This script replaces
`bench/daemon_pass.py` (its 10k directory measurement is `--sizes 10000 --parts directory`).

For a watched directory a second probe process watches the same tree with the daemon's own
watchfiles settings: the time watchfiles needs to report an edit (its `step`, 50 ms, is how long
a burst must be quiet) is the floor of edit -> applied, and the rest is reported beside it.

Targets (issue 14): edit -> applied p50 <= 100 ms plus the watch settle time (`settle: 0` here,
so: beyond the watcher's own notification); push hook ->
applied p50 <= 100 ms and <= 2x the 1k figure; longest /healthz gap while edits apply <= 50 ms;
first pass <= 3 s at 10k; planner one-file <= 100 ms and no-op <= 20 ms (<= 50 ms / 5 ms at 100k).
Prints a table per size and writes `bench/reconcile.json`. `--quick` is a smoke run (300
resources, 2 rounds).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # after PYTHONPATH: `PYTHONPATH=<checkout>` measures that checkout

import load  # noqa: E402
import probes  # noqa: E402

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: bench}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""
SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-bench",
    "SLACK_SIGNING_SECRET": "bench-signing-secret",
    "PAGERDUTY_WEBHOOK_SECRET": "bench-pd-secret",
}
HOOK_SECRET = b"bench-push-hook-secret"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}
PLANNER_TARGETS_MS = {"one_file": 100.0, "noop": 20.0}
DAEMON_TARGETS_MS = {"edit_to_applied_p50": 100.0, "hook_to_applied_p50": 100.0, "healthz_gap_max": 50.0}
EDIT_MARK = "    Never delete anything without an approval."


# --- the generated tree --------------------------------------------------------------------------------


def most_used_agent(repo: Path) -> tuple[Path, int]:
    """The agent file used by the most bindings, and that count, in one pass over the files.

    A binding uses the agents of its flow; a fleet's agents are counted once per fleet. Linear in
    the number of files (the planner's own `users_of` was O(agents x bindings) here before).
    """
    per_flow: Counter[str] = Counter()
    for path in repo.glob("bindings/**/*.yaml"):
        found = re.search(r"(?m)^  flow:\n    name: (\S+)$", path.read_text())
        if found:
            per_flow[found.group(1)] += 1
    uses: Counter[str] = Counter()
    for path in repo.glob("flows/**/*.yaml"):
        text = path.read_text()
        flow = re.search(r"(?m)^  name: (\S+)$", text)  # metadata.name
        for agent in set(re.findall(r"\bagent-\d+\b", text)):
            uses[agent] += per_flow[flow.group(1)] if flow else 0
    for path in repo.glob("fleets/**/*.yaml"):
        for agent in set(re.findall(r"\bagent-\d+\b", path.read_text())):
            uses[agent] += 1
    name = max(sorted(uses), key=lambda n: uses[n])
    return repo / "agents" / f"{name}.yaml", uses[name]


def edited(original: str, i: int) -> str:
    """The agent's text with one line of its instructions changed: a new blob every round."""
    assert EDIT_MARK in original, "the generated agent has no instructions line to vary"
    return original.replace(EDIT_MARK, f"{EDIT_MARK} (edit {i})")


# --- the planner alone (child process) --------------------------------------------------------------------


def planner(root: Path, repeat: int, agent: Path, uses: int) -> dict[str, Any]:
    """The pure half on the tree at `root`, with the parse cache warm (runs in a child process)."""
    from aofd.plan import compiler, desired, diff
    from aofd.resources import ids, snapshot
    from aofd.source import directory

    variables = {f"KUBECONFIG_{env.upper()}": f"/etc/aofd/kube/{env}" for env in load.ENVIRONMENTS}
    variables.update(SECRETS)

    def view(snap: snapshot.Snapshot) -> Any:
        return desired.SourceView(name="main", kinds=desired.ALL_KINDS, snapshot=snap)

    def with_file(snap: snapshot.Snapshot, path: str, content: bytes, revision: str) -> snapshot.Snapshot:
        files = dict(snap.files)
        files[path] = snapshot.SourceFile.of(path, content)
        return snapshot.Snapshot.build(
            source=snap.source, files=files, revision=ids.Revision(revision), display_root=snap.display_root
        )

    def inventory_of(state: Any, plan: Any) -> Any:
        assert plan.compiled is not None
        return diff.Inventory.of(state, listeners={n: s.digest for n, s in plan.compiled.listeners.items()})

    def timed(snap: snapshot.Snapshot, inventory: Any) -> tuple[tuple[float, float, float], Any, Any]:
        t0 = time.perf_counter()
        state = desired.build([view(snap)], variables=variables, cache=cache)
        t1 = time.perf_counter()
        compiled = compiler.build(state, cache=compiled_cache)
        t2 = time.perf_counter()
        plan = diff.compute(compiled, inventory)
        t3 = time.perf_counter()
        return ((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000), state, plan

    limits = snapshot.Limits(max_files=10_000_000, max_tree_bytes=1 << 40)
    t0 = time.perf_counter()
    snap = directory.read_tree(root, source_name="main", display_root=str(root), limits=limits)
    read_ms = (time.perf_counter() - t0) * 1000
    cache = desired.ParseCache()
    compiled_cache = compiler.Cache()
    t0 = time.perf_counter()
    state = desired.build([view(snap)], variables=variables, cache=cache)
    cold_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    compiled = compiler.build(state, cache=compiled_cache)
    cold_compile_ms = (time.perf_counter() - t0) * 1000
    if not compiled.ok:
        raise SystemExit(
            "the generated repo does not compile: " + "; ".join(i.format() for i in compiled.errors[:5])
        )
    inventory = inventory_of(state, diff.compute(compiled, diff.Inventory.empty()))

    path = next(p for p in snap.files if p.endswith(f"/{agent.name}"))
    original = snap.files[path].content.decode()
    snaps = [with_file(snap, path, edited(original, i).encode(), f"{i + 1:040x}") for i in range(repeat + 1)]
    last = snaps[-1]
    noop_snaps = [
        with_file(last, path, last.files[path].content, f"{i + 10**6:040x}") for i in range(repeat + 1)
    ]

    one: list[tuple[float, float, float]] = []
    updates: list[int] = []
    for i, candidate in enumerate(snaps):
        times, state, plan = timed(candidate, inventory)
        inventory = inventory_of(state, plan)
        if i == 0:
            continue  # the first round also warms what a first change warms
        one.append(times)
        updates.append(plan.counts()["update"])
    noop: list[tuple[float, float, float]] = []
    for candidate in noop_snaps:
        times, state, plan = timed(candidate, inventory)
        inventory = inventory_of(state, plan)
        if plan.is_noop():
            noop.append(times)
    noop = noop[1:]

    def stats(rounds: list[tuple[float, float, float]]) -> dict[str, float]:
        total = [sum(r) for r in rounds] or [float("nan")]
        return {
            "build_ms_median": statistics.median(r[0] for r in rounds) if rounds else float("nan"),
            "compile_ms_median": statistics.median(r[1] for r in rounds) if rounds else float("nan"),
            "compute_ms_median": statistics.median(r[2] for r in rounds) if rounds else float("nan"),
            "total_ms_median": statistics.median(total),
            "total_ms_max": max(total),
            "n": len(rounds),
        }

    return {
        "resources": len(state.resources),
        "files": len(snap.files),
        "bindings": len(state.bindings),
        "read_ms": read_ms,
        "cold_build_ms": cold_ms,
        "cold_compile_ms": cold_compile_ms,
        "changed_agent": agent.name,
        "bindings_using_it": uses,
        "bindings_updated_per_change": statistics.median(updates) if updates else 0,
        "one_file": stats(one),
        "noop": stats(noop),
        "targets_ms": PLANNER_TARGETS_MS,
    }


# --- the daemon ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=120) as resp:
        return json.loads(resp.read())


def wait_until(
    check: Callable[[], Any], limit: float, what: str, proc: subprocess.Popen[bytes], every: float = 0.005
) -> Any:
    deadline = time.monotonic() + limit
    got: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        try:
            got = check()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            got = exc
        if got and not isinstance(got, Exception):
            return got
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what} (last: {got!r})")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Probe:
    """One of `bench/probes.py`'s probes, in its own process: `healthz` (answers) or `watch` (batches)."""

    def __init__(self, kind: str, arg: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(HERE / "probes.py"), kind, arg, str(out)])

    def read(self) -> tuple[list[float], int]:
        """(times so far, in order; failures so far)."""
        values, failures, _ready = probes.read(self.out)
        return values, failures

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def gaps(answers: list[float], start: float, end: float) -> dict[str, float]:
    """Gaps between consecutive answers that arrived in [start, end] (the first after start counts)."""
    inside = [t for t in answers if start <= t <= end]
    before = [t for t in answers if t < start]
    points = ([before[-1]] if before else []) + inside
    between = [(b - a) * 1000 for a, b in itertools.pairwise(points)]
    return {
        "answers": len(inside),
        "max_ms": max(between) if between else float("nan"),
        "p99_ms": pct(between, 0.99),
        "p50_ms": pct(between, 0.5),
    }


class LogTail:
    """The JSON lines the daemon appended to its log since the last `read` (others skipped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        out = []
        for raw in complete:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                out.append(line)
        return out


def first_after(times: list[float], t: float) -> float | None:
    """The first of `times` (sorted) later than `t`."""
    return next((x for x in times if x > t), None)


def _git(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    )
    return out.stdout


def daemon(
    root: Path, repo: Path, *, mode: str, rounds: int, resources: int, agent: Path, uses: int
) -> dict[str, Any]:
    """`aofd serve` on `repo` (watched directory or git + push hook): start, first pass, edit rounds."""
    work = root / mode
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOFD_")}
    for name in load.ENVIRONMENTS:
        path = root / "kube" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(KUBECONFIG)
        path.chmod(0o600)
        env[f"KUBECONFIG_{name.upper()}"] = str(path)
    env.update(SECRETS, ANTHROPIC_API_KEY="bench", PYTHONUNBUFFERED="1")
    original = agent.read_text()
    rel = agent.relative_to(repo).as_posix()

    if mode == "directory":
        source: dict[str, Any] = {"name": "main", "directory": {"path": str(repo), "settle": 0}}
    else:
        git_dir = work / "local.git"
        remote = work / "remote.git"
        _git("init", "-q", "--bare", "-b", "main", str(remote))
        _git("init", "-q", "-b", "main", "--separate-git-dir", str(git_dir), str(work / "checkout"))
        shutil.rmtree(work / "checkout")
        tree = ["--git-dir", str(git_dir), "--work-tree", str(repo)]
        _git(*tree, "add", "-A")
        _git(*tree, "commit", "-q", "-m", "initial")
        _git(*tree, "push", "-q", str(remote), "main")
        secret = work / "hook-secret"
        secret.write_bytes(HOOK_SECRET)
        source = {
            "name": "main",
            "git": {
                "url": f"file://{remote}",
                "ref": {"branch": "main"},
                "interval": "1h",
                "timeout": "120s",
            },
            "webhook_secret_file": str(secret),
        }
    admin, listen = free_port(), free_port()
    config: dict[str, Any] = {
        "sources": [source],
        "listen": f"127.0.0.1:{listen}",
        "admin": f"127.0.0.1:{admin}",
        "state_dir": str(work / "state"),
        "audit_dir": str(work / "audit"),
        "models": {"anthropic_base_url": "http://127.0.0.1:9"},
    }
    config.update(_caps(resources))
    config_path = work / "aofd.yaml"
    config_path.write_text(json.dumps(config))
    base = f"http://127.0.0.1:{admin}"

    def status() -> dict[str, Any]:
        got: dict[str, Any] = get_json(f"{base}/api/v1/status")
        return got

    watcher = Probe("watch", str(repo), work / "watch.probe") if mode == "directory" else None
    log = (work / "aofd.log").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aofd", "serve", "--config", str(config_path), "--log-format", "json"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,  # not the checkout: `-m` puts the working directory first on sys.path
    )
    probe = Probe("healthz", str(admin), work / "healthz.probe")
    try:
        limit = 600 + resources / 50
        wait_until(
            lambda: urllib.request.urlopen(f"{base}/readyz", timeout=120).status == 200, limit, "ready", proc
        )
        ready_s = time.perf_counter() - t0
        # Every 50 ms: the status of 100,000 resources is megabytes of JSON, and asking for it
        # more often would load the daemon whose first pass is being timed.
        first = wait_until(
            lambda: (got := status())["lastPass"] and got, limit, "the first pass", proc, every=0.05
        )["lastPass"]
        first_s = time.perf_counter() - t0
        first_lag = gaps(probe.read()[0], t0, time.perf_counter())
        if first.get("outcome") != "applied":
            raise SystemExit(
                f"{mode}: the first pass was {first.get('outcome')}: {first.get('errors', [])[:3]}"
            )
        ready = _ready_bindings(base)
        time.sleep(0.5)  # let the first pass's follow-ups (persist, audit) settle before the idle RSS
        rss_first = rss_mb(proc.pid)

        to_applied: list[float] = []
        to_finished: list[float] = []
        edit_times: list[tuple[float, float]] = []  # (edit, applied) of each measured round
        push_ms: list[float] = []
        passes: list[float] = []
        own_lag: list[float] = []
        rss_rounds: list[float] = []  # after each edit: a step once (a new thread's arena) vs a leak
        phases: list[dict[str, float]] = []
        outcomes: Counter[str] = Counter()
        tail = LogTail(work / "aofd.log")
        tail.read()  # from here on
        rounds_start = time.perf_counter()
        for i in range(rounds + 1):
            now = status()
            before, before_applied = now["lastPass"]["revision"], now["appliedRevision"]
            content = edited(original, i)
            if mode == "directory":
                tmp = agent.with_suffix(".tmp")
                tmp.write_text(content)
                t = time.perf_counter()
                tmp.rename(agent)
            else:
                agent.write_text(content)
                t_push = time.perf_counter()
                _git(*tree, "add", rel)
                _git(*tree, "commit", "-q", "-m", f"edit {i}")
                _git(*tree, "push", "-q", str(remote), "main")
                head = _git(*tree, "rev-parse", "HEAD").strip()
                push_ms.append((time.perf_counter() - t_push) * 1000)
                t = time.perf_counter()
                _push_hook(listen, head)
            applied_at: float | None = None
            deadline = time.monotonic() + 120 + resources / 500
            while True:  # the daemon's own log, read as it is written: no request adds to its load
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{mode}: round {i} was not applied (daemon exit code {proc.poll()})")
                lines = tail.read()
                seen = time.perf_counter()
                finished = False
                for line in lines:
                    event, revision = line.get("event"), line.get("revision")
                    if applied_at is None and event == "routing.swapped" and revision != before_applied:
                        applied_at = seen
                    # A failed or waiting pass can log an empty revision: not this edit's pass.
                    if event == "reconcile pass" and revision and revision != before:
                        finished = True
                if finished:
                    finished_at = seen
                    break
                time.sleep(0.002)
            last = status()["lastPass"]  # the pass's own figures, asked once it is over
            outcomes[str(last.get("outcome"))] += 1
            rss_rounds.append(rss_mb(proc.pid))
            if i == 0:
                continue  # the first edit also pays for what a first change warms up
            to_finished.append((finished_at - t) * 1000)
            to_applied.append(((applied_at or finished_at) - t) * 1000)
            edit_times.append((t, applied_at or finished_at))
            passes.append(float(last["duration_ms"]))
            if "loop_lag_ms" in last:  # the daemon's own probe (newer versions)
                own_lag.append(float(last["loop_lag_ms"]))
            phases.append(last.get("phases_ms") or {})
            time.sleep(0.05)  # idle between edits, as a person editing would be
        answers, failures = probe.read()
        rounds_lag = gaps(answers, rounds_start, time.perf_counter())
        rss_after = rss_mb(proc.pid)
        watch_ms: list[float] = []
        beyond_ms: list[float] = []
        if watcher is not None:
            batches = watcher.read()[0]
            for edited_at, applied_at_ in edit_times:
                seen = first_after(batches, edited_at)
                if seen is not None and seen < applied_at_:
                    watch_ms.append((seen - edited_at) * 1000)
                    beyond_ms.append((applied_at_ - seen) * 1000)
    except (SystemExit, OSError) as exc:  # OSError: urllib's URLError when the daemon died
        log.flush()
        tail = (work / "aofd.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"{exc}; the daemon's last log lines: {' | '.join(tail)[-600:]}") from None
    finally:
        probe.stop()
        if watcher is not None:
            watcher.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if mode == "directory":
            agent.write_text(original)
    what = "hook_to" if mode == "git" else "edit_to"
    return {
        "mode": mode,
        "changed_file": rel,
        "bindings_using_it": uses,
        "start_to_ready_s": ready_s,
        "start_to_first_pass_s": first_s,
        "first_pass_ms": float(first["duration_ms"]),
        "first_pass_phases_ms": first.get("phases_ms") or {},
        "bindings_ready": ready,
        "healthz_gap_first_pass": first_lag,
        "healthz_gap_during_edits": rounds_lag,
        "healthz_failures": failures,
        "daemon_loop_lag_ms_first_pass": first.get("loop_lag_ms"),
        "daemon_loop_lag_ms_during_edits_max": max(own_lag) if own_lag else None,
        f"{what}_applied_ms": _summary(to_applied),
        f"{what}_pass_finished_ms": _summary(to_finished),
        "push_ms": _summary(push_ms) if push_ms else None,
        # directory: watchfiles' own notification of the edit (a probe on the same tree) and the rest
        "watch_notified_ms": _summary(watch_ms) if watch_ms else None,
        "edit_to_applied_beyond_watch_ms": _summary(beyond_ms) if beyond_ms else None,
        "pass_ms": _summary(passes),
        "phases_ms_median": {
            n: statistics.median(p.get(n, 0.0) for p in phases) for n in (phases[0] if phases else {})
        },
        "outcomes": dict(outcomes),
        "rss_mb_after_first_pass": rss_first,
        "rss_mb_after_rounds": rss_after,
        "rss_mb_after_first_edit": rss_rounds[0] if rss_rounds else float("nan"),
        "rss_mb_per_edit": rss_rounds,
        "rounds": rounds,
    }


def _caps(resources: int) -> dict[str, Any]:
    """`repo_limits:` above the default 10,000 files for the larger trees (an older aofd refuses the key)."""
    if resources <= 10_000:
        return {}
    return {"repo_limits": {"max_files": resources * 2, "max_tree_bytes": resources * 4096}}


def _push_hook(port: int, head: str) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
    sig = hmac.new(HOOK_SECRET, body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/hooks/git/main", body, {"X-Hub-Signature-256": f"sha256={sig}"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise SystemExit(f"the push hook was answered {resp.status}")
    finally:
        conn.close()


def _ready_bindings(base: str) -> dict[str, int]:
    """FlowBindings per phase, as the admin API lists them (every one should be Ready)."""
    try:
        items = get_json(f"{base}/api/v1/resources/FlowBinding").get("items", [])
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    phases: Counter[str] = Counter()
    for item in items:
        phases[str((item.get("status") or {}).get("phase"))] += 1
    return dict(phases)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else float("nan"),
        "p90": pct(values, 0.9),
        "max": max(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
    }


# --- driver ------------------------------------------------------------------------------------------------


def run_size(resources: int, rounds: int, parts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"resources": resources}
    with tempfile.TemporaryDirectory(prefix="aofd-bench-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        t = time.perf_counter()
        out["counts"] = load.generate(repo, resources)
        out["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        agent, uses = most_used_agent(repo)
        out["pick_agent_s"] = time.perf_counter() - t
        if "planner" in parts:
            proc = subprocess.run(
                [
                    *(sys.executable, __file__, "--planner-child", str(repo), "--rounds", str(rounds)),
                    *("--agent", str(agent), "--uses", str(uses)),
                ],
                capture_output=True,
                text=True,
                check=False,
                cwd=root,
            )
            if proc.returncode != 0:
                out["planner"] = {
                    "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                }
            else:
                out["planner"] = json.loads(proc.stdout)
        for mode in ("directory", "git"):
            if mode in parts:
                try:
                    out[mode] = daemon(
                        root, repo, mode=mode, rounds=rounds, resources=resources, agent=agent, uses=uses
                    )
                except SystemExit as exc:
                    out[mode] = {"error": str(exc)}
    return out


def report(result: dict[str, Any]) -> None:
    n = result["resources"]
    print(
        f"== {n} resources ({load.counts_line(result['counts'])}); generated in {result['generate_s']:.1f} s,"
        f" agent picked in {result['pick_agent_s'] * 1000:.0f} ms"
    )
    p = result.get("planner")
    if p and "error" in p:
        print(f"planner: failed: {p['error']}")
    elif p:
        one, noop = p["one_file"], p["noop"]
        print(
            f"planner   cold build {p['cold_build_ms']:.0f} ms, cold compile {p['cold_compile_ms']:.0f} ms;"
            f" one file ({p['changed_agent']}, {p['bindings_updated_per_change']:.0f} bindings updated)"
            f" {one['total_ms_median']:.1f} ms median (build {one['build_ms_median']:.1f} / compile"
            f" {one['compile_ms_median']:.1f} / compute {one['compute_ms_median']:.1f});"
            f" no-op {noop['total_ms_median']:.1f} ms"
        )
    for mode in ("directory", "git"):
        d = result.get(mode)
        if not d:
            continue
        if "error" in d:
            print(f"{mode:<9} failed: {d['error']}")
            continue
        what = "hook_to" if mode == "git" else "edit_to"
        applied, finished = d[f"{what}_applied_ms"], d[f"{what}_pass_finished_ms"]
        lag, first_lag = d["healthz_gap_during_edits"], d["healthz_gap_first_pass"]
        print(
            f"{mode:<9} ready {d['start_to_ready_s']:.2f} s, first pass {d['first_pass_ms'] / 1000:.2f} s"
            f" (done {d['start_to_first_pass_s']:.2f} s after start; /healthz gap max"
            f" {first_lag['max_ms']:.0f} ms); bindings {d['bindings_ready']}"
        )
        label = "hook -> applied" if mode == "git" else "edit -> applied"
        print(
            f"{'':<9} {label} p50 {applied['p50']:.0f} ms (max {applied['max']:.0f}), pass finished p50"
            f" {finished['p50']:.0f} ms; daemon-timed pass p50 {d['pass_ms']['p50']:.0f} ms"
            + (f"; commit+push p50 {d['push_ms']['p50']:.0f} ms" if d.get("push_ms") else "")
        )
        if d.get("edit_to_applied_beyond_watch_ms"):
            seen, beyond = d["watch_notified_ms"], d["edit_to_applied_beyond_watch_ms"]
            print(
                f"{'':<9} watchfiles itself (a probe process on the same tree) reported the edit after"
                f" p50 {seen['p50']:.0f} ms; edit -> applied beyond that p50 {beyond['p50']:.0f} ms"
                f" (max {beyond['max']:.0f})"
            )
        if d["phases_ms_median"]:
            print(
                f"{'':<9} phases (ms, medians) "
                + ", ".join(f"{k} {v:.1f}" for k, v in d["phases_ms_median"].items())
            )
        print(
            f"{'':<9} /healthz gap during edits max {lag['max_ms']:.0f} ms, p99 {lag['p99_ms']:.1f} ms"
            f" ({lag['answers']} answers)"
            + (
                f"; the daemon's own loop-lag probe: max {d['daemon_loop_lag_ms_during_edits_max']:.0f} ms"
                f" during edits, {d['daemon_loop_lag_ms_first_pass']:.0f} ms in the first pass"
                if d.get("daemon_loop_lag_ms_during_edits_max") is not None
                else ""
            )
            + f"; RSS {d['rss_mb_after_first_pass']:.0f} MB after the first pass,"
            f" {d['rss_mb_after_first_edit']:.0f} MB after the first edit,"
            f" {d['rss_mb_after_rounds']:.0f} MB after {d['rounds']} more"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated resource counts")
    parser.add_argument("--rounds", type=int, default=10, help="edits per daemon, planner rounds")
    parser.add_argument("--parts", default="planner,directory,git")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 resources, 2 rounds")
    parser.add_argument("--out", type=Path, default=HERE / "reconcile.json")
    parser.add_argument("--planner-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--agent", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--uses", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.planner_child is not None:
        json.dump(planner(args.planner_child, args.rounds, args.agent, args.uses), sys.stdout)
        return 0
    sizes = [300] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    rounds = 2 if args.quick else args.rounds
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"planner", "directory", "git"}
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; parts are planner, directory, git")
    results = []
    for size in sizes:
        results.append(run_size(size, rounds, parts))
        report(results[-1])
    args.out.write_text(
        json.dumps(
            {"python": sys.version.split()[0], "sizes": results, "targets_ms": DAEMON_TARGETS_MS}, indent=2
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    failed = [f"{r['resources']}:{k}" for r in results for k in parts if "error" in (r.get(k) or {})]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
