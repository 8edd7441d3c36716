"""Trigger path throughput: verify -> dedupe -> route -> flow started, against aiohttp's low-level server.

Each server runs in its own process pinned to CPU 0 (one core); the load client runs here, pinned
to CPU 1, with N concurrent keep-alive connections over loopback (127.0.0.1 only), for a bounded
time; the client writes prebuilt request bytes and parses only the status line and Content-Length,
so that it is not the bottleneck. Every request is a distinct, correctly signed aofd HTTP webhook delivery
(`X-Aofd-Signature` v1 HMAC over `ts.body`, a unique `X-Aofd-Delivery`), so the aofd server
verifies, de-duplicates, routes among several bindings and calls a no-op FlowStarter for each.
Three servers: `lowlevel` answers 200 on aiohttp's low-level server (`web.Server`, no router,
no application), which is what aofd's trigger server runs on: the floor, and the reference of the
verdict (issue 14: aofd's rate >= 50 % of it). `bare` is a full aiohttp application with one route
that answers 200 without reading the body; aofd's rate against it is printed for information.

Two phases per server: throughput (N connections) and latency (1 connection). The servers take
turns, round by round, so that each aofd round has a low-level round in the same round of the same
machine; the verdict is the median of those per-round ratios (on a shared virtual machine a burst
of outside load can halve one round, and a paired median is not moved by one such round). The
ratio of the two medians and the ratio per CPU-second are printed beside it. Added latency on one
connection is measured against the low-level server too. Prints a table and writes
bench/routing.json; `--quick` is a smoke run (2 rounds of 0.3 s).

    .venv/bin/python bench/routing.py [--rounds 7] [--seconds 1] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

SECRET = "bench-secret"
TRIGGER = "bench-hook"
HERE = Path(__file__).resolve().parent


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


# --- servers (child processes) ------------------------------------------------------------------


async def _serve_bare() -> web.AppRunner:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/hooks/{platform}/{trigger}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    return runner


async def _serve_lowlevel() -> web.BaseRunner:
    """The same 200 on aiohttp's low-level server (no router): the floor aofd's own server stands on."""

    async def ok(request: web.BaseRequest) -> web.Response:
        return web.Response(status=200)

    runner = web.ServerRunner(web.Server(ok, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    return runner


async def _serve_aofd() -> object:
    import structlog

    sys.path.append(str(HERE.parent))  # after PYTHONPATH: `PYTHONPATH=<checkout>` measures that one
    from aofd.plan import diff
    from aofd.runtime import applier, dedupe, dispatch, limits, routing, server
    from aofd.runtime.listeners import factory
    from aofd.runtime.providers import registry
    from aofd.settings import ModelsSpec, PlatformsSpec
    from aofd.testing import recorders, resources

    # The daemon logs JSON at info level; every routed event writes one line (to /dev/null here).
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - lives as long as the process
    structlog.configure(
        processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(devnull),
        cache_logger_on_first_use=True,
    )
    switchboard = routing.Switchboard()
    starter = recorders.NoopStarter()
    dispatcher = dispatch.Dispatcher(switchboard=switchboard, starter=starter)
    build = factory.ListenerFactory(
        platforms=PlatformsSpec(), dispatcher=dispatcher, dedupe=dedupe.DedupeCache()
    )
    hook = resources.trigger(TRIGGER, "HTTP", webhook_secret=SECRET)
    bindings = [
        resources.binding("deploys", hook, context_name="prod", filters={"patterns": ["^deploy "]}),
        resources.binding("restarts", hook, context_name="prod", match={"required_keywords": ["restart"]}),
        resources.binding("by-user", hook, context_name="prod", filters={"users": ["u-other"]}),
        resources.binding("catch-all", hook, context_name="staging"),
    ]
    apply = applier.Applier(
        switchboard=switchboard,
        build=build,
        providers=registry.Providers(models=ModelsSpec(), environ={}),
        audit_logs=recorders.RecordingAudit(),
        policies={},
        limits=limits.RateLimits(),
        starter=starter,
    )
    compiled = resources.compiled(bindings, revision="bench")
    await apply.apply(diff.compute(compiled, diff.Inventory.empty()))
    srv = server.TriggerServer(switchboard=switchboard, listen="127.0.0.1:0")
    await srv.start()
    print(srv.port, flush=True)
    return srv


def serve(kind: str) -> None:
    _pin(0)

    async def main() -> None:
        servers = {"bare": _serve_bare, "lowlevel": _serve_lowlevel, "aofd": _serve_aofd}
        handle = await servers[kind]()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        if isinstance(handle, web.BaseRunner):
            await handle.cleanup()
        else:
            await handle.stop()  # type: ignore[attr-defined]

    asyncio.run(main())


# --- load client (this process) -----------------------------------------------------------------


def _requests(count: int, offset: int) -> list[tuple[bytes, dict[str, str]]]:
    ts = str(int(time.time()))
    out = []
    for i in range(offset, offset + count):
        body = json.dumps({"text": f"deploy api build {i}", "user": "u1", "n": i}).encode()
        sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Aofd-Timestamp": ts,
            "X-Aofd-Signature": "v1=" + sig,
            "X-Aofd-Delivery": f"d-{i}",
        }
        out.append((body, headers))
    return out


def _wire(port: int, requests: list[tuple[bytes, dict[str, str]]]) -> list[bytes]:
    """Each request as the exact bytes one keep-alive HTTP/1.1 POST puts on the wire (one send)."""
    out = []
    for body, headers in requests:
        lines = [
            f"POST /hooks/http/{TRIGGER} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return out


async def _load(port: int, *, seconds: float, connections: int, offset: int) -> dict[str, float]:
    """A minimal keep-alive HTTP/1.1 client (no pipelining), cheap enough that the server is the limit."""
    pool = _wire(port, _requests(int(40_000 * seconds), offset))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline and next_index < len(pool):
                raw = pool[next_index]
                next_index += 1
                started = time.perf_counter()
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()
            await writer.wait_closed()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000,
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
    }


class _Server:
    """A server child process pinned to CPU 0; `port` once it listens."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.child.stdout is not None
        self.port = int(self.child.stdout.readline())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc), or 0 when unknown."""
        try:
            fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        assert self.child.stdin is not None
        self.child.stdin.close()
        try:
            self.child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["bare", "lowlevel", "aofd"])
    parser.add_argument("--rounds", type=int, default=7, help="alternating load rounds per server")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one throughput round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "routing.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 0.3 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
    if args.serve:
        serve(args.serve)
        return
    _pin(1)
    # Bounded: each server gets rounds * (seconds + seconds / 2) + warm-up, at most about 11 s (35 s in all).
    seconds = min(args.seconds, 10.5 / (1.5 * max(args.rounds, 1)))
    servers = {kind: _Server(kind) for kind in ("bare", "lowlevel", "aofd")}
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        k: {"throughput": [], "latency": []} for k in servers
    }
    try:
        offset = 0
        for srv in servers.values():  # warm-up
            asyncio.run(_load(srv.port, seconds=0.3, connections=args.connections, offset=offset))
            offset += 1_000_000
        # Alternate servers round by round, so that noise from other work on the machine hits both.
        for _ in range(args.rounds):
            for kind, srv in servers.items():
                cpu_before = srv.cpu_seconds()
                load = asyncio.run(
                    _load(srv.port, seconds=seconds, connections=args.connections, offset=offset)
                )
                load["cpu_us_per_request"] = (srv.cpu_seconds() - cpu_before) / max(load["requests"], 1) * 1e6
                results[kind]["throughput"].append(load)
                offset += 1_000_000
                single = asyncio.run(_load(srv.port, seconds=seconds / 2, connections=1, offset=offset))
                results[kind]["latency"].append(single)
                offset += 1_000_000
    finally:
        for srv in servers.values():
            srv.close()

    summary = {
        kind: {
            "rps": _median(r["throughput"], "rps"),
            "cpu_us_per_request": _median(r["throughput"], "cpu_us_per_request"),
            "p50_ms": _median(r["throughput"], "p50_ms"),
            "p99_ms": _median(r["throughput"], "p99_ms"),
            "single_p50_ms": _median(r["latency"], "p50_ms"),
            "single_p99_ms": _median(r["latency"], "p99_ms"),
            "non_2xx": sum(x["non_2xx"] for x in r["throughput"] + r["latency"]),
        }
        for kind, r in results.items()
    }
    # The reference is aiohttp's low-level server, what aofd's trigger server runs on (issue 14).
    ref, aofd = summary["lowlevel"], summary["aofd"]
    round_ratios = [
        a["rps"] / b["rps"]
        for a, b in zip(results["aofd"]["throughput"], results["lowlevel"]["throughput"], strict=True)
    ]
    ratio = statistics.median(round_ratios)  # the verdict: paired rounds, see the module docstring
    ratio_of_medians = aofd["rps"] / ref["rps"]
    bare_ratio = statistics.median(  # for information: against a full aiohttp application
        a["rps"] / b["rps"]
        for a, b in zip(results["aofd"]["throughput"], results["bare"]["throughput"], strict=True)
    )
    all_answered = aofd["non_2xx"] == 0 and ref["non_2xx"] == 0
    # Requests per CPU-second: what one fully busy core would serve, robust to other load on the machine.
    cpu_ratio = ref["cpu_us_per_request"] / aofd["cpu_us_per_request"] if aofd["cpu_us_per_request"] else 0.0
    added_p99 = aofd["single_p99_ms"] - ref["single_p99_ms"]
    added_p50 = aofd["single_p50_ms"] - ref["single_p50_ms"]
    result = {
        "what": "signed aofd HTTP webhook: verify -> dedupe -> route (4 bindings) -> no-op FlowStarter",
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "server_cpu": 0,
            "client_cpu": 1,
        },
        "connections": args.connections,
        "round_seconds": seconds,
        "rounds": args.rounds,
        "summary": summary,
        "raw": results,
        "reference": "lowlevel (aiohttp web.Server, what aofd's trigger server runs on)",
        "rate_ratio": ratio,
        "rate_ratio_of_medians": ratio_of_medians,
        "cpu_rate_ratio": cpu_ratio,
        "rate_ratio_to_bare_application": bare_ratio,
        "round_ratios": round_ratios,
        "added_p50_ms_single_connection": added_p50,
        "added_p99_ms_single_connection": added_p99,
        "targets": {"rate_ratio_min": 0.5, "added_p99_ms_max": 5.0},
        "pass": ratio >= 0.5 and added_p99 <= 5.0 and all_answered,
        "pass_per_cpu_second": cpu_ratio >= 0.5 and added_p99 <= 5.0 and all_answered,
    }
    header = (
        f"{'server':<8} {'req/s':>9} {'CPU us/req':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'1-conn p50':>11} {'1-conn p99':>11} {'non-2xx':>8}"
    )
    print(f"medians of {args.rounds} alternating rounds, {args.connections} connections, {seconds:.1f} s")
    print(header)
    for name, r in summary.items():
        print(
            f"{name:<8} {r['rps']:>9.0f} {r['cpu_us_per_request']:>10.1f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} "
            f"{r['single_p50_ms']:>11.3f} {r['single_p99_ms']:>11.3f} {int(r['non_2xx']):>8}"
        )
    print(
        f"aofd/lowlevel rate {ratio:.0%}, median of paired rounds (rounds: "
        f"{', '.join(f'{x:.0%}' for x in round_ratios)}; ratio of medians {ratio_of_medians:.0%}; "
        f"per CPU-second {cpu_ratio:.0%}; target >= 50%); "
        f"added latency on one connection p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms (target <= 5 ms)"
    )
    print(
        f"for information: aofd/bare (a full aiohttp application, one route) rate {bare_ratio:.0%}"
        " (median of paired rounds)"
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
