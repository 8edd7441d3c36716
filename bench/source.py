"""Benchmark of aofd.source: push-to-snapshot latency (wake, polling), save-to-snapshot in
watch mode, and aofd's fetch side by side with `git fetch` of the same repository.

Run: `.venv/bin/python bench/source.py [--trials N] [--quick]`. Prints a table and writes
`bench/source.json`. Everything runs on loopback: the remote is a bare repo served by
`git daemon`; pushes go through the git CLI.

- push+wake: timer starts when `git push` returns (the moment a push hook would fire); the
  hook is verified (`hooks.verify`) and `source.wake()` called; stops when `on_snapshot`
  receives the new commit.
- push+poll: the same, with no hook and `interval: 1s` (expected about half the interval).
- watch save: timer starts before a file is written; stops at `on_snapshot` (`settle: 0`: the
  directory source's settle time, 1 s by default, adds itself to this by design).
- fetch unchanged / one commit ahead: `GitSource.fetch()` (ls-remote, fetch, tree read,
  snapshot, in a worker thread) against two baselines:
  - `ls-remote` in process: the same library (pygit2, `Remote.list_heads()` of an anonymous
    remote) listing the remote's refs, called directly: the floor of an unchanged check, which
    is all aofd needs to do when the remote has not moved (ratio target <= 1.5);
  - `git fetch` (CLI, same refspec, same depth) into its own bare mirror: a new process and a
    full fetch negotiation each time (what a script around git would pay; for information when
    unchanged, the comparison when one commit ahead).

`--quick` is a smoke run (3 trials, 1,000 files for `read_tree`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "source"))

import gitkit
import pygit2

from aofd.resources import snapshot
from aofd.settings import DirectorySourceSpec, GitSourceSpec, SourceSpec
from aofd.source import directory, hooks, runner

HOOK_SECRET = b"bench-secret"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 0.5) * 1000, 2),
        "p90_ms": round(pct(values, 0.9) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def make_repo(root: Path, files: int) -> gitkit.Remote:
    remote = gitkit.Remote.create(root)
    for i in range(files):
        remote.write(
            f"agents/agent-{i:04}.yaml", f"apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {{name: a{i}}}\n"
        )
    remote.commit("initial")
    return remote


class Watcher:
    """Runs a source and lets a trial wait for a given revision to be delivered."""

    def __init__(self, source: runner.GitSource | runner.DirectorySource) -> None:
        self.source = source
        self.stop = asyncio.Event()
        self.delivered: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.first = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def on_snapshot(self, snap: snapshot.Snapshot) -> None:
        self.delivered[snap.revision] = time.perf_counter()
        self.changed.set()
        self.first.set()

    async def __aenter__(self) -> Watcher:
        self.task = asyncio.create_task(self.source.run(on_snapshot=self.on_snapshot, stop=self.stop))
        await asyncio.wait_for(self.first.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    async def until(self, predicate: Callable[[], bool], limit: float = 10.0) -> float:
        deadline = time.perf_counter() + limit
        while not predicate():
            self.changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError("snapshot not delivered in time")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue
        return time.perf_counter()


async def push_trials(
    remote: gitkit.Remote, url: str, state: Path, *, trials: int, wake: bool, interval: float
) -> list[float]:
    spec = SourceSpec(name="bench", git=GitSourceSpec(url=url, interval=interval, timeout=20))
    source = runner.GitSource(spec, state)
    out: list[float] = []
    async with Watcher(source) as watcher:
        for i in range(trials):
            remote.write(
                f"agents/agent-{i % 50:04}.yaml", f"kind: Agent\nmetadata: {{name: changed-{i}-{wake}}}\n"
            )
            await asyncio.to_thread(remote.commit, f"trial {i}")
            started = time.perf_counter()
            head = remote.head()
            if wake:
                body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
                headers = {"X-Hub-Signature-256": hooks.github_signature(HOOK_SECRET, body)}
                assert (
                    hooks.verify(secret=HOOK_SECRET, headers=headers, body=body, now=time.time())
                    == hooks.Verdict.OK
                )
                source.wake()
            done = await watcher.until(lambda h=head: h in watcher.delivered)
            out.append(done - started)
            if not wake:
                await asyncio.sleep(0.37 * (i % 3))  # vary the push's phase against the poll timer
    return out


async def watch_trials(root: Path, *, trials: int) -> list[float]:
    spec = SourceSpec(name="local", directory=DirectorySourceSpec(path=root, settle=0))
    source = runner.DirectorySource(spec)
    out: list[float] = []
    async with Watcher(source) as watcher:
        await asyncio.sleep(0.3)
        for i in range(trials):
            before = len(watcher.delivered)
            started = time.perf_counter()
            (root / f"agent-{i % 10}.yaml").write_text(f"kind: Agent\nmetadata: {{name: save-{i}}}\n")
            done = await watcher.until(lambda b=before: len(watcher.delivered) > b)
            out.append(done - started)
            await asyncio.sleep(0.15)
    return out


def ls_remote(repo: pygit2.Repository, url: str) -> float:
    """One in-process ref listing through pygit2 (what `git ls-remote` does, without a process)."""
    started = time.perf_counter()
    heads = repo.remotes.create_anonymous(url).list_heads()
    elapsed = time.perf_counter() - started
    assert any(h.name == "refs/heads/main" for h in heads)
    return elapsed


def git_cli_fetch(mirror: Path, url: str, depth: int) -> float:
    args = [
        "git",
        "-C",
        str(mirror),
        "fetch",
        "-q",
        "--no-tags",
        url,
        "+refs/heads/main:refs/aofd/heads/main",
    ]
    if depth:
        args.insert(5, f"--depth={depth}")
    started = time.perf_counter()
    subprocess.run(args, check=True, env={**os.environ, **gitkit.GIT_ENV}, capture_output=True)
    return time.perf_counter() - started


async def fetch_compare(
    remote: gitkit.Remote, url: str, state: Path, *, trials: int
) -> dict[str, list[float]]:
    spec = SourceSpec(name="cmp", git=GitSourceSpec(url=url, timeout=20))
    source = runner.GitSource(spec, state)
    await source.fetch()
    cli = state / "cli.git"
    gitkit.git("init", "-q", "--bare", str(cli))
    depth = source.mirror._depth()
    git_cli_fetch(cli, url, depth)
    lister = pygit2.init_repository(str(state / "ls.git"), bare=True)
    ls_remote(lister, url)
    result: dict[str, list[float]] = {
        "aofd_unchanged": [],
        "ls_remote_unchanged": [],
        "git_unchanged": [],
        "aofd_ahead": [],
        "git_ahead": [],
    }
    for i in range(trials):
        started = time.perf_counter()
        await source.fetch()
        result["aofd_unchanged"].append(time.perf_counter() - started)
        result["ls_remote_unchanged"].append(ls_remote(lister, url))
        result["git_unchanged"].append(git_cli_fetch(cli, url, depth))
        remote.write(f"agents/agent-{i % 50:04}.yaml", f"kind: Agent\nmetadata: {{name: ahead-{i}}}\n")
        remote.commit(f"ahead {i}")
        order = (
            [("aofd_ahead", None), ("git_ahead", None)]
            if i % 2 == 0
            else [("git_ahead", None), ("aofd_ahead", None)]
        )
        for name, _ in order:
            if name == "aofd_ahead":
                started = time.perf_counter()
                snap = await source.fetch()
                result[name].append(time.perf_counter() - started)
                assert snap.revision == remote.head()
            else:
                result[name].append(git_cli_fetch(cli, url, depth))
    return result


async def main(trials: int, read_tree_files: int = 10_000) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="aofd-bench-") as tmp:
        base = Path(tmp)
        remote = make_repo(base / "repos", files=200)
        with gitkit.git_daemon(base / "repos") as daemon:
            url = f"{daemon}/{remote.bare.name}"
            results["push_wake"] = summary(
                await push_trials(remote, url, base / "s1", trials=trials, wake=True, interval=3600)
            )
            results["push_poll_1s"] = summary(
                await push_trials(remote, url, base / "s2", trials=trials, wake=False, interval=1.0)
            )
            cmp = await fetch_compare(remote, url, base / "s3", trials=trials)
            for key, values in cmp.items():
                results[f"fetch_{key}"] = summary(values)
            results["fetch_ratio_unchanged_vs_ls_remote_p50"] = round(
                pct(cmp["aofd_unchanged"], 0.5) / pct(cmp["ls_remote_unchanged"], 0.5), 3
            )
            results["fetch_ratio_unchanged_p50"] = round(
                pct(cmp["aofd_unchanged"], 0.5) / pct(cmp["git_unchanged"], 0.5), 3
            )
            results["fetch_ratio_ahead_p50"] = round(
                pct(cmp["aofd_ahead"], 0.5) / pct(cmp["git_ahead"], 0.5), 3
            )
        watched = base / "watched"
        watched.mkdir()
        for i in range(10):
            (watched / f"agent-{i}.yaml").write_text("kind: Agent\n")
        results["watch_save"] = summary(await watch_trials(watched, trials=trials))
        results[f"read_tree_{read_tree_files}_files"] = summary(
            await asyncio.to_thread(read_tree_trials, Path(tmp), read_tree_files)
        )
    results["targets"] = {
        "push_wake_p50_ms": 500,
        "watch_save_p50_ms": 300,
        "fetch_ratio_unchanged_vs_ls_remote": 1.5,
    }
    return results


def read_tree_trials(tmp: Path, files: int = 10_000) -> list[float]:
    """`read_tree` of `files` small files (what `aofctl validate DIR` pays), on tmpfs if there is one."""
    tree = Path(tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else tmp))
    try:
        for d in range(max(1, files // 100)):
            (tree / f"d{d}").mkdir()
            for f in range(100):
                (tree / f"d{d}" / f"f{f}.yaml").write_bytes(b"kind: Agent\nmetadata: {name: x}\n")
        time.sleep(0.2)
        reads = []
        for _ in range(5):
            started = time.perf_counter()
            directory.read_tree(tree)
            reads.append(time.perf_counter() - started)
        return reads
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def table(results: dict[str, object]) -> str:
    rows = [f"{'measure':<26} {'n':>4} {'p50 ms':>9} {'p90 ms':>9} {'mean ms':>9}"]
    for key, value in results.items():
        if isinstance(value, dict) and "p50_ms" in value:
            rows.append(
                f"{key:<26} {value['n']:>4} {value['p50_ms']:>9} {value['p90_ms']:>9} {value['mean_ms']:>9}"
            )
    rows.append(
        "fetch unchanged, aofd / in-process ls-remote (pygit2) p50:"
        f" {results['fetch_ratio_unchanged_vs_ls_remote_p50']} (target <= 1.5)"
    )
    rows.append(
        "fetch unchanged, aofd / `git fetch` (a process, full negotiation) p50:"
        f" {results['fetch_ratio_unchanged_p50']}"
    )
    rows.append(f"fetch one commit ahead, aofd / `git fetch` p50: {results['fetch_ratio_ahead_p50']}")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 trials, 1,000 files read")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ns = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = asyncio.run(main(3, 1_000) if ns.quick else main(ns.trials))
    ns.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
