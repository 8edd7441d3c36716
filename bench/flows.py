"""Flow engine benchmark: runs/second of a 3-node flow and aofd's added latency per model call.

The flow is Agent -> Transform -> Agent on the real anthropic client against a loopback
server that answers instantly (tests/runtime/fakes_models/servers.py). The HTTP round trip
of every model call is timed inside the HTTP client's transport (request sent to response
body read); everything else a run spends is aofd's (engine scheduling, templates, the SDK's
request building and response parsing, records). Reported per model call:

- `aofd_overhead_ms`: (run wall time - sum of HTTP round trips) / model calls, p50/p99;
- `sdk_ms`: the part of that spent inside `AnthropicProvider.complete` outside HTTP.

Target: aofd overhead per model call <= 2 ms p50.

MCP tool calls (issue 16), in the same run: the real stdio server `mcp-server-time` (the `test`
extra) called `get_current_time` over three paths, in alternating rounds so drift hits all
three alike:

- `bare_sdk_ms`: the SDK's own `stdio_client` + `ClientSession.call_tool`, nothing of aofd's
  (the server's own time, the SDK and the pipe);
- `pool_ms`: aofd's server pool (`McpPool.call`: its stdio transport, one session per server);
- `guard_ms`: `CommandGuard.call_tool` over that pool with a real audit journal as the daemon
  has it (`command.requested`, `command.started` fsynced before the call, `command.finished`).

`added_ms` = guard p50 - bare p50 (target <= 2 ms); `audit_writes_ms` is the time a guarded
call spends waiting for its three audit records, `durable_write_ms` the fsynced
`command.started` write alone, reported separately because on a slow disk they dominate.
Writes bench/flows.json.
Usage: python bench/flows.py [--runs 400] [--concurrency 16] [--mcp-calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aofd import settings
from aofd.audit import journal, records, segment
from aofd.daemon import auditsink
from aofd.runtime import approvals, commands, engine, guard, limits, mcpservers, ports, runs
from aofd.runtime.providers import anthropic as anthropic_provider
from aofd.runtime.providers import base, registry
from aofd.specs import flows, policy
from aofd.specs import mcp as mcp_specs
from tests.runtime.fakes_models import servers


class TimingTransport(httpx2.AsyncBaseTransport):
    """Wraps the real transport; records each request's round trip (send to body read) in seconds."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.samples: list[float] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        began = time.perf_counter()
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        self.samples.append(time.perf_counter() - began)
        return httpx2.Response(response.status_code, headers=response.headers, content=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class TimedProvider:
    """Times `complete` of the wrapped provider."""

    name = "anthropic"

    def __init__(self, inner: base.ModelProvider) -> None:
        self.inner = inner
        self.samples: list[float] = []

    async def complete(self, request: base.ModelRequest) -> base.ModelResponse:
        began = time.perf_counter()
        try:
            return await self.inner.complete(request)
        finally:
            self.samples.append(time.perf_counter() - began)

    async def aclose(self) -> None:
        await self.inner.aclose()


class NullReplier:
    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        return None


class NoCommands:
    async def run(self, request: Any) -> Any:
        raise AssertionError("no commands in the benchmark")


def plan() -> flows.RunPlan:
    """Agent -> Transform -> Agent, compiled as the daemon compiles a binding's flow."""
    from aofd.testing import resources

    flow = resources.flow(
        "bench",
        nodes=[
            {"id": "triage", "type": "Agent", "config": {"agent": "triage", "input": "${event.text}"}},
            {"id": "shape", "type": "Transform", "config": {"script": 'export SUMMARY="${triage.output}"'}},
            {"id": "answer", "type": "Agent", "config": {"agent": "answer", "input": "Sum up: ${SUMMARY}"}},
        ],
        connections=[
            {"from": "start", "to": "triage"},
            {"from": "triage", "to": "shape"},
            {"from": "shape", "to": "answer"},
        ],
    )
    agents = [
        resources.agent(n, model="anthropic:claude-bench", instructions=n) for n in ("triage", "answer")
    ]
    binding = resources.bind("bench", ctx=resources.context("bench"), flow_res=flow, agents=agents)
    return resources.run_plan(binding)


class TimedSink:
    """The daemon's audit port, timing its durable (fsynced) writes and the time spent in writes."""

    def __init__(self, inner: auditsink.AuditAdapter) -> None:
        self.inner = inner
        self.durable: list[float] = []
        self.busy = 0.0
        self._open = 0
        self._since = 0.0

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        began = time.perf_counter()
        if self._open == 0:
            self._since = began
        self._open += 1
        try:
            await self.inner.write(context, event, durable=durable)
        finally:
            self._open -= 1
            ended = time.perf_counter()
            if self._open == 0:  # wall time with any write in flight (overlapping writes count once)
                self.busy += ended - self._since
        if durable:
            self.durable.append(ended - began)


def ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values) * 1000, 3), "p99": round(pct(values, 0.99) * 1000, 3)}


async def mcp_cost(calls: int) -> dict[str, Any] | None:
    """The added cost of an MCP call through the guard (see the module doc); None without the server."""
    exe = Path(sys.executable).parent / "mcp-server-time"
    if calls <= 0 or not exe.exists():
        return None
    from mcp import ClientSession, StdioServerParameters, stdio_client

    arguments = {"timezone": "UTC"}
    spec = mcp_specs.McpServerSpec(name="time", command="mcp-server-time", args=("--local-timezone", "UTC"))
    bare: list[float] = []
    pooled: list[float] = []
    guarded: list[float] = []
    audited: list[float] = []
    with tempfile.TemporaryDirectory(prefix="aofd-bench-mcp-") as tmp_name:
        tmp = Path(tmp_name)
        paths = {"mcp-server-time": exe}
        runner = commands.CommandRunner(
            executables=settings.ExecutablesSpec(paths=paths), cache_dir=tmp / "cache", work_dir=tmp / "work"
        )
        pol = policy.GuardPolicy(context="bench")
        pool = mcpservers.McpPool(
            build_env=runner.build_env, servers=paths, executables={}, state_dir=tmp / "state"
        )
        params = StdioServerParameters(
            command=str(exe), args=["--local-timezone", "UTC"], env=runner.build_env(pol), cwd=str(tmp)
        )
        async with (
            journal.AuditLog(audit_dir=tmp / "audit", options=segment.JournalOptions()) as log,
            stdio_client(params, errlog=sys.stderr) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await log.open(["bench"])
            sink = TimedSink(auditsink.AuditAdapter(log, redactor=records.ArgvRedactor(key=b"bench")))
            key = mcpservers.key_of("bench", spec)
            assert await pool.ensure({key: (pol, spec)}) == {}
            the_guard = guard.CommandGuard(
                runner=runner,
                limits=limits.RateLimits(),
                approvals=approvals.ApprovalStore(),
                audit=sink,
                approval_requester=lambda _request: asyncio.sleep(0, None),
                policy_provider={"bench": pol}.get,
                mcp=pool,
            )
            request = guard.ToolRequest(
                context_name="bench",
                key=key,
                server="time",
                tool="get_current_time",
                arguments=arguments,
                run_id="bench",
                agent="bench",
                user=ports.UserRef("U1"),
            )
            try:
                for round_ in range(calls + 20):  # the first 20 rounds warm up
                    t0 = time.perf_counter()
                    raw = await session.call_tool("get_current_time", arguments)
                    t1 = time.perf_counter()
                    via_pool = await pool.call(key, "get_current_time", arguments, timeout=30.0)
                    t2 = time.perf_counter()
                    busy = sink.busy
                    via_guard = await the_guard.call_tool(request)
                    t3 = time.perf_counter()
                    assert not raw.is_error
                    assert not via_pool.is_error
                    assert isinstance(via_guard, mcpservers.McpResult), via_guard
                    if round_ >= 20:
                        bare.append(t1 - t0)
                        pooled.append(t2 - t1)
                        guarded.append(t3 - t2)
                        audited.append(sink.busy - busy)
                    else:
                        sink.durable.clear()
            finally:
                await pool.aclose()
                await the_guard.aclose()
    out: dict[str, Any] = {
        "server": "mcp-server-time get_current_time (stdio)",
        "calls": calls,
        "bare_sdk_ms": ms(bare),
        "pool_ms": ms(pooled),
        "guard_ms": ms(guarded),
        "audit_writes_ms": ms(audited),
        "durable_write_ms": ms(sink.durable),
    }
    out["added_ms_p50"] = round(out["guard_ms"]["p50"] - out["bare_sdk_ms"]["p50"], 3)
    out["added_ms_p50_without_fsync"] = round(out["added_ms_p50"] - out["durable_write_ms"]["p50"], 3)
    out["target_added_ms"] = 2.0
    out["meets_target"] = out["added_ms_p50"] <= 2.0
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs_n: int, concurrency: int, mcp_calls: int = 0) -> dict[str, Any]:
    server = servers.FakeModelServer(servers.sequence(servers.a_text("ok")))
    url = await server.start()
    transport = TimingTransport()
    http = httpx2.AsyncClient(transport=transport)
    inner = anthropic_provider.AnthropicProvider(
        api_key="bench", base_url=url, timeout=30.0, http_client=http
    )
    timed = TimedProvider(inner)
    providers = registry.Providers(
        models=settings.ModelsSpec(anthropic_base_url=url), environ={}, factories={"anthropic": lambda: timed}
    )
    eng = engine.Engine(
        providers=providers,
        commands=NoCommands(),
        replier=NullReplier(),
        history=runs.RunHistory(capacity=100),
    )
    the_plan = plan()
    msg = ports.EventMessage("bench", "bench", "why is nginx crashing", ports.UserRef("U1"))
    for _ in range(20):  # warm up connections and caches
        await eng.run(the_plan, msg)
    server.requests.clear()

    # Sequential runs: per-call overhead without queueing noise.
    overhead: list[float] = []
    sdk: list[float] = []
    for _ in range(runs_n):
        transport.samples.clear()
        timed.samples.clear()
        began = time.perf_counter()
        record = await eng.run(the_plan, msg)
        wall = time.perf_counter() - began
        assert record.status is runs.RunStatus.COMPLETED, record.error
        calls = len(transport.samples)
        overhead.append((wall - sum(transport.samples)) / calls)
        sdk.extend(c - h for c, h in zip(timed.samples, transport.samples, strict=True))

    # Throughput: `concurrency` runs in flight.
    async def worker(n: int) -> None:
        for _ in range(n):
            record = await eng.run(the_plan, msg)
            assert record.status is runs.RunStatus.COMPLETED

    transport.samples.clear()
    began = time.perf_counter()
    per = max(1, runs_n // concurrency)
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    http_rt = list(transport.samples)
    await eng.aclose()
    await server.close()
    result: dict[str, Any] = {
        "flow": "Agent -> Transform -> Agent (2 model calls per run)",
        "runs_sequential": runs_n,
        "concurrency": concurrency,
        "runs_concurrent": per * concurrency,
        "runs_per_second": round(per * concurrency / elapsed, 1),
        "aofd_overhead_ms_per_model_call": {
            "p50": round(statistics.median(overhead) * 1000, 3),
            "p99": round(pct(overhead, 0.99) * 1000, 3),
        },
        "sdk_ms_per_model_call": {
            "p50": round(statistics.median(sdk) * 1000, 3),
            "p99": round(pct(sdk, 0.99) * 1000, 3),
        },
        "http_round_trip_ms": {
            "p50": round(statistics.median(http_rt) * 1000, 3),
            "p99": round(pct(http_rt, 0.99) * 1000, 3),
        },
        "target_p50_ms": 2.0,
        "python": sys.version.split()[0],
    }
    result["meets_target"] = result["aofd_overhead_ms_per_model_call"]["p50"] <= 2.0
    result["mcp_call"] = await mcp_cost(mcp_calls)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mcp-calls", type=int, default=300, help="MCP calls per path (0: skip)")
    ns = parser.parse_args()
    out = asyncio.run(main(ns.runs, ns.concurrency, ns.mcp_calls))
    print(f"{'metric':<44} {'p50':>10} {'p99':>10}")
    for key in ("aofd_overhead_ms_per_model_call", "sdk_ms_per_model_call", "http_round_trip_ms"):
        print(f"{key:<44} {out[key]['p50']:>10.3f} {out[key]['p99']:>10.3f}")
    print(f"{'runs/second (concurrency ' + str(out['concurrency']) + ')':<44} {out['runs_per_second']:>10}")
    print(f"target: overhead p50 <= 2 ms -> {'met' if out['meets_target'] else 'NOT met'}")
    mcp_out = out["mcp_call"]
    if mcp_out is None:
        print("MCP call cost: skipped (mcp-server-time is not installed, or --mcp-calls 0)")
    else:
        print(f"\nMCP call ({mcp_out['server']}, {mcp_out['calls']} calls per path)")
        for key in ("bare_sdk_ms", "pool_ms", "guard_ms", "audit_writes_ms", "durable_write_ms"):
            print(f"{key:<44} {mcp_out[key]['p50']:>10.3f} {mcp_out[key]['p99']:>10.3f}")
        print(
            f"added by aofd (guard p50 - bare SDK p50): {mcp_out['added_ms_p50']:.3f} ms, of which the fsync "
            f"of command.started {mcp_out['durable_write_ms']['p50']:.3f} ms"
        )
        print(f"target: added <= 2 ms -> {'met' if mcp_out['meets_target'] else 'NOT met'}")
    Path(__file__).with_name("flows.json").write_text(json.dumps(out, indent=2) + "\n")
