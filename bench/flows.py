"""Flow engine benchmark: runs/second of a 3-node flow and aofd's added latency per model call.

The flow is Agent -> Transform -> Agent on the real anthropic client against a loopback
server that answers instantly (tests/runtime/fakes_models/servers.py). The HTTP round trip
of every model call is timed inside the HTTP client's transport (request sent to response
body read); everything else a run spends is aofd's (engine scheduling, templates, the SDK's
request building and response parsing, records). Reported per model call:

- `aofd_overhead_ms`: (run wall time - sum of HTTP round trips) / model calls, p50/p99;
- `sdk_ms`: the part of that spent inside `AnthropicProvider.complete` outside HTTP.

Target: aofd overhead per model call <= 2 ms p50. Writes bench/flows.json.
Usage: python bench/flows.py [--runs 400] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aofd import settings
from aofd.runtime import engine, ports, runs
from aofd.runtime.providers import anthropic as anthropic_provider
from aofd.runtime.providers import base, registry
from aofd.specs import flows
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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs_n: int, concurrency: int) -> dict[str, Any]:
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
    result = {
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
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    ns = parser.parse_args()
    out = asyncio.run(main(ns.runs, ns.concurrency))
    print(f"{'metric':<44} {'p50':>10} {'p99':>10}")
    for key in ("aofd_overhead_ms_per_model_call", "sdk_ms_per_model_call", "http_round_trip_ms"):
        print(f"{key:<44} {out[key]['p50']:>10.3f} {out[key]['p99']:>10.3f}")
    print(f"{'runs/second (concurrency ' + str(out['concurrency']) + ')':<44} {out['runs_per_second']:>10}")
    print(f"target: overhead p50 <= 2 ms -> {'met' if out['meets_target'] else 'NOT met'}")
    Path(__file__).with_name("flows.json").write_text(json.dumps(out, indent=2) + "\n")
