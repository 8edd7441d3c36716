"""Out-of-process probes for the daemon benchmarks: each runs as its own process, like a user's.

Usage (started by `bench/reconcile.py`, not by hand):
    python bench/probes.py healthz PORT OUT    ask GET /healthz every 5 ms over one keep-alive
                                               connection; one line per answer in OUT
    python bench/probes.py watch ROOT OUT      watch ROOT with watchfiles, with the daemon's own step
                                               and debounce; one line per batch in OUT

Each line is a `time.monotonic()` reading (the same clock as `time.perf_counter()` in the bench on
Linux: CLOCK_MONOTONIC, shared by every process). Both run until SIGTERM.

Why a process and not a thread of the bench: a thread shares the bench's interpreter lock with
its status polling and `git` runs, so its own stalls showed up as daemon "gaps" (83 ms at 1k
beside a daemon loop lag of 2 ms). The watch probe is the floor of edit -> applied for a watched
directory: what watchfiles itself needs to report the edit, measured on the same tree in the
same run.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import sys
import threading
import time
from pathlib import Path

HEALTHZ_EVERY_S = 0.005


def healthz(port: int, out: Path) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    conn: http.client.HTTPConnection | None = None
    with out.open("a", buffering=1) as sink:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    sink.write(f"{time.monotonic():.6f}\n")
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                sink.write("failure\n")
            pause = HEALTHZ_EVERY_S - (time.monotonic() - started)
            if pause > 0:
                stop.wait(pause)


def watch(root: Path, out: Path) -> None:
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    from aofd.source import watch as aofd_watch  # the daemon's own filter, step and debounce

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with out.open("a", buffering=1) as sink:
            sink.write("ready\n")
            async for _paths in aofd_watch.changes(root, stop=stop):
                sink.write(f"{time.monotonic():.6f}\n")

    asyncio.run(main())


def read(out: Path) -> tuple[list[float], int, bool]:
    """(answers or batches in order, failures, ready) from a probe's OUT file so far."""
    values: list[float] = []
    failures, ready = 0, False
    try:
        text = out.read_text()
    except FileNotFoundError:
        return values, failures, ready
    for line in text.splitlines()[: -1 if text and not text.endswith("\n") else None]:
        if line == "failure":
            failures += 1
        elif line == "ready":
            ready = True
        elif line:
            values.append(float(line))
    return values, failures, ready


if __name__ == "__main__":
    kind, arg, out_path = sys.argv[1:4]
    if kind == "healthz":
        healthz(int(arg), Path(out_path))
    elif kind == "watch":
        watch(Path(arg), Path(out_path))
    else:
        raise SystemExit(f"unknown probe {kind!r}")
