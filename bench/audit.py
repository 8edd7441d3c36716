"""Benchmark of the audit journal: gated (fsynced) and grouped records per second, gated latency.

Run: `.venv/bin/python bench/audit.py [--dir DIR] [--quick] [--seal-contexts N]`. Writes
`bench/audit.json` and prints a table plus the disk it ran on (`df`, `findmnt`). Targets
(RELIABILITY.md §5.1 and the journal's brief): >= 5,000 grouped records/s; gated p99 <= 10 ms.
It also times one epoch's seal pass over N open Context logs (docs/audit-sealing.md): a seal
line per Context, then the key evolved durably; and `verify` of those logs with the key.
`--month-epochs N` (default 43,200: a month of 60 s epochs) times `verify` of one Context's log
holding N seals (each with its own key and certificate): linear in the seals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aofd.audit import journal, records, seal, segment, verify


def record(context: str, i: int) -> dict[str, Any]:
    return records.build(
        "command.started",
        context=context,
        agent="k8s-oncall",
        run_id="01JX5Q5",
        user=records.Actor("U012AB3CD", "alice", "slack:T0001"),
        process=records.Process(
            ("/usr/local/bin/kubectl", "--namespace", "payments", "get", "pods", f"p{i}")
        ),
        cluster="prod-eu",
        namespace="payments",
        decision={"result": "allow", "rule": "kubectl-read"},
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def gated(
    audit: journal.AuditLog, contexts: list[str], per_context: int, interval: float = 0.0
) -> dict[str, Any]:
    """Each context writes gated records back to back (closed loop, interval 0: saturation)
    or one every `interval` seconds (paced: latency without queueing behind the others)."""
    latencies: list[float] = []

    async def one(context: str) -> None:
        if interval:
            await asyncio.sleep(interval * (hash(context) % 1000) / 1000)  # spread the phases
        for i in range(per_context):
            rec = record(context, i)
            t0 = time.perf_counter()
            await audit.write(context, rec, durable=True)
            latencies.append(time.perf_counter() - t0)
            if interval:
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in contexts))
    elapsed = time.perf_counter() - t0
    return {
        "records": len(latencies),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


async def grouped(
    audit: journal.AuditLog, contexts: list[str], per_context: int, window: int
) -> dict[str, Any]:
    async def one(context: str) -> None:
        for start in range(0, per_context, window):
            n = min(window, per_context - start)
            await asyncio.gather(*(audit.write(context, record(context, start + i)) for i in range(n)))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in contexts))
    elapsed = time.perf_counter() - t0
    total = per_context * len(contexts)
    return {"records": total, "seconds": elapsed, "rate": total / elapsed}


async def run(base: Path, quick: bool) -> list[dict[str, Any]]:
    scale = 0.2 if quick else 1.0
    rows: list[dict[str, Any]] = []
    plans = [
        ("gated", 1, int(2000 * scale)),
        ("gated", 50, int(100 * scale)),
        ("gated-paced", 50, int(40 * scale)),
        ("grouped", 1, int(20000 * scale)),
        ("grouped", 50, int(1000 * scale)),
    ]
    for index, (kind, n_contexts, per_context) in enumerate(plans):
        audit_dir = base / f"run-{index}"
        contexts = [f"ctx-{i}" for i in range(n_contexts)]
        async with journal.AuditLog(audit_dir=audit_dir, options=segment.JournalOptions()) as audit:
            await audit.open(contexts)
            if kind == "gated":
                result = await gated(audit, contexts, per_context)
            elif kind == "gated-paced":
                result = await gated(audit, contexts, per_context, interval=0.05)
            else:
                result = await grouped(audit, contexts, per_context, window=256)
        report = verify.verify(audit_dir)
        result.update({"kind": kind, "contexts": n_contexts, "verified": report.ok})
        rows.append(result)
    return rows


async def seal_passes(base: Path, n_contexts: int, passes: int = 5) -> dict[str, Any]:
    """Time `passes` epoch seal passes over `n_contexts` open logs (fake clock: no waiting)."""
    start = 1_700_000_000
    vk = seal.setup_keys(base / "state", interval=60, now=start)
    chain = seal.KeyChain.load(base / "state")
    assert chain is not None
    now = [start + 1.0]
    contexts = [f"ctx-{i}" for i in range(n_contexts)]
    audit_dir = base / "sealed"
    times: list[float] = []
    async with journal.AuditLog(
        audit_dir=audit_dir, options=segment.JournalOptions(), clock=lambda: now[0], keychain=chain
    ) as audit:
        t0 = time.perf_counter()
        await audit.open(contexts)
        opened = time.perf_counter() - t0
        await asyncio.gather(*(audit.write(c, record(c, 0)) for c in contexts))
        for _ in range(passes):
            now[0] += 60
            done = await audit.seal_epoch()
            if done.sealed != n_contexts or done.failed:
                raise RuntimeError(f"seal pass sealed {done.sealed} of {n_contexts}: {dict(done.failed)}")
            times.append(done.seconds)
    t0 = time.perf_counter()
    report = verify.verify(audit_dir, keys=[vk], now=now[0])
    verify_s = time.perf_counter() - t0
    return {
        "kind": "seal-pass",
        "contexts": n_contexts,
        "passes": passes,
        "open_s": opened,
        "pass_ms_median": statistics.median(times) * 1000,
        "pass_ms_max": max(times) * 1000,
        "per_context_us": statistics.median(times) / n_contexts * 1e6,
        "verify_s": verify_s,
        "verified": report.ok and not report.gaps,
    }


def verify_month(base: Path, epochs: int) -> dict[str, Any]:
    """One Context sealed every 60 s for `epochs` epochs (a record, a seal, a key move each), then
    `verify` of the audit dir with the key; the time to build is reported too."""
    start = 1_700_000_000
    vk = seal.setup_keys(base / "state", interval=60, now=start)
    chain = seal.KeyChain.load(base / "state")
    assert chain is not None
    now = [start + 1.0]
    log = segment.ContextJournal(
        context="prod",
        directory=base / "audit" / "prod",
        options=segment.JournalOptions(),
        origin=records.Origin(),
        clock=lambda: now[0],
        sealer=lambda: chain.current,
        ledger=chain,
    )
    t0 = time.perf_counter()
    log.open()
    for epoch in range(epochs):
        rec = record("prod", epoch)
        rec["@timestamp"] = records.rfc3339(now[0])  # written in its epoch (fake time)
        log.append(rec)
        now[0] = start + (epoch + 1) * 60 + 1
        log.seal("epoch", chain.current)
        log.sync()
        chain.advance_to(epoch + 1)
    log.close()
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = verify.verify(base / "audit", keys=[vk], now=now[0])
    verify_s = time.perf_counter() - t0
    return {
        "kind": "verify-month",
        "seals": epochs,
        "build_s": built,
        "verify_s": verify_s,
        "verified": not report.problems,
        "cross_checked": report.cross_checked,
    }


def raw_baseline(base: Path, n_threads: int, per_thread: int) -> dict[str, Any]:
    """The disk without aofd: threads doing write + fsync of a ~1 KB line on their own file."""
    import os
    import threading

    latencies: list[float] = []
    lock = threading.Lock()
    line = b"x" * 1000 + b"\n"
    base.mkdir(parents=True, exist_ok=True)

    def worker(i: int) -> None:
        fd = os.open(base / f"raw-{i}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        mine: list[float] = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            mine.append(time.perf_counter() - t0)
        os.close(fd)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {
        "kind": "raw-fsync",
        "contexts": n_threads,
        "records": len(latencies),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "verified": None,
    }


def disk_info(path: Path) -> dict[str, str]:
    info: dict[str, str] = {}
    for name, cmd in (("df", ["df", "-hT", str(path)]), ("findmnt", ["findmnt", "-T", str(path)])):
        try:
            info[name] = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError as exc:
            info[name] = f"unavailable: {exc}"
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="a fifth of the records")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("audit.json"))
    parser.add_argument("--seal-contexts", type=int, default=1000, help="open logs per seal pass")
    parser.add_argument("--seal-only", action="store_true", help="only the seal pass (and verify-month)")
    parser.add_argument("--month-epochs", type=int, default=43_200, help="seals in the verify-month log")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="aofd-audit-bench-", dir=args.dir))
    try:
        month = verify_month(base / "month", args.month_epochs)
        print(
            f"verify of one Context with {month['seals']} seals (a month of 60 s epochs): "
            f"{month['verify_s']:.1f} s (built in {month['build_s']:.1f} s); verified {month['verified']}"
        )
        sealing = asyncio.run(seal_passes(base / "seal", args.seal_contexts))
        rows = [] if args.seal_only else asyncio.run(run(base, args.quick))
        scale = 0.2 if args.quick else 1.0
        if not args.seal_only:
            rows.append(raw_baseline(base / "raw-1", 1, int(2000 * scale)))
            rows.append(raw_baseline(base / "raw-50", 50, int(100 * scale)))
        disk = disk_info(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"seal pass over {sealing['contexts']} contexts: median {sealing['pass_ms_median']:.1f} ms, "
        f"max {sealing['pass_ms_max']:.1f} ms ({sealing['per_context_us']:.0f} us a context); "
        f"verify with the key {sealing['verify_s']:.2f} s; verified {sealing['verified']}"
    )

    print(
        f"{'kind':11} {'contexts':>8} {'records':>8} {'rec/s':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} verified"
    )
    for row in rows:
        extra = (
            f"{row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f}"
            if row["kind"] != "grouped"
            else f"{'-':>8} {'-':>8} {'-':>8}"
        )
        print(
            f"{row['kind']:11} {row['contexts']:8d} {row['records']:8d} {row['rate']:10.0f} "
            f"{extra} {row['verified']}"
        )
    print()
    print(disk["df"])
    print(disk["findmnt"])
    targets = {
        "grouped_rate_min": 5000,
        "gated_p99_ms_max": 10.0,
        "grouped_ok": all(r["rate"] >= 5000 for r in rows if r["kind"] == "grouped"),
        "gated_p99_ok": all(r["p99_ms"] <= 10.0 for r in rows if r["kind"].startswith("gated")),
        "note": (
            "gated = closed loop (each context writes its next gated record as soon as the last returns: "
            "saturation, latency includes queueing); gated-paced = each context one gated record per 50 ms "
            "(1,000/s in all for 50 contexts); raw-fsync = the disk alone (threads doing write+fsync)"
        ),
    }
    print(
        f"targets: grouped >= 5000 rec/s: {targets['grouped_ok']}; "
        f"gated p99 <= 10 ms: {targets['gated_p99_ok']}"
    )
    if args.seal_only:
        return 0
    args.out.write_text(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "quick": args.quick,
                "rows": rows,
                "seal": sealing,
                "verify_month": month,
                "disk": disk,
                "targets": targets,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
