"""Hot swap under load: signed webhook events at the highest rate a loopback client can send
for 30 s while a script changes the binding every 200 ms; then the same with the daemon
restarted (stop + start) for every change instead.

Each event's text carries a unique delivery id, and the flow's agent prompt carries
`${trigger.binding_name}`, so the fake model server sees which binding version handled which
event. Reported per mode: events sent (answered 2xx), handled, lost, handled twice, and
events whose binding version was not current at any instant between send and answer.

    python bench/hotswap.py [--seconds 30] [--interval 0.2] [--concurrency 16]

Prints a table and writes bench/hotswap.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

SECRET = "bench-secret"
OUT = Path(__file__).with_suffix(".json")

CONTEXT = "apiVersion: aof.dev/v1\nkind: Context\nmetadata: {name: prod}\nspec: {namespace: default}\n"
AGENT = (
    "apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {name: echo}\n"
    "spec: {model: 'anthropic:claude-bench', instructions: answer, max_iterations: 1}\n"
)
FLOW = """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata: {name: echo-flow}
spec:
  nodes:
    - id: ask
      type: Agent
      config: {agent: echo, input: "binding=${trigger.binding_name} delivery=${event.text}"}
"""
TRIGGER = (
    "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: hook}\n"
    f"spec: {{type: HTTP, config: {{webhook_secret: {SECRET}}}}}\n"
)


def binding(version: int) -> str:
    return (
        "apiVersion: aof.dev/v1\nkind: FlowBinding\n"
        f"metadata: {{name: v{version:05d}}}\n"
        "spec: {flow: {name: echo-flow}, context: {name: prod}, trigger: {name: hook}}\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelServer:
    """An instant Anthropic Messages API that records (binding version, delivery id)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = json.dumps(body.get("messages", []))
        m = re.search(r"binding=v(\d+) delivery=(\S+?)[\\\"]", text)
        if m:
            self.seen.append((int(m.group(1)), m.group(2)))
        return web.json_response(
            {
                "id": "msg",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        )

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Daemon:
    def __init__(self, root: Path, model_url: str, listen_port: int) -> None:
        self.root = root
        self.repo = root / "repo"
        self.config = root / "aofd.yaml"
        self.admin_port = free_port()
        self.listen_port = listen_port
        self.config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(self.repo)}}],
                    "listen": f"127.0.0.1:{listen_port}",
                    "admin": f"127.0.0.1:{self.admin_port}",
                    "state_dir": str(root / "state"),
                    "audit_dir": str(root / "audit"),
                    "models": {"anthropic_base_url": model_url},
                    "drain_grace_seconds": 5,
                    "run_history": 200,
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (root / "aofd.log").open("ab")

    def start(self) -> None:
        env = {**os.environ, "ANTHROPIC_API_KEY": "bench"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aofd", "serve", "--config", str(self.config), "--log-format", "json"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    async def watch_applied(self, applied: dict[int, float], stop: asyncio.Event) -> None:
        """Record when each binding version is first seen Ready through the admin API."""
        url = f"http://127.0.0.1:{self.admin_port}/api/v1/resources/FlowBinding"
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                    async with session.get(url) as resp:
                        data = await resp.json()
                    now = time.time()
                    for item in data.get("items", []):
                        if (item.get("status") or {}).get("phase") == "Ready":
                            applied.setdefault(int(item["name"][1:]), now)
                await asyncio.sleep(0.005)

    async def wait_binding(self, version: int, limit: float = 20.0) -> float:
        deadline = time.monotonic() + limit
        url = f"http://127.0.0.1:{self.admin_port}/api/v1/resources/FlowBinding/v{version:05d}"
        last: object = None
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as resp:
                        last = resp.status
                        if resp.status == 200:
                            data = await resp.json()
                            last = data["items"][0].get("status")
                            if (data["items"][0].get("status") or {}).get("phase") == "Ready":
                                return time.time()
                await asyncio.sleep(0.005)
        raise RuntimeError(f"binding v{version:05d} was not applied within {limit}s (last answer: {last})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def write_version(repo: Path, version: int) -> None:
    """Replace the binding atomically (one rename), as a git checkout of one commit would."""
    tmp = repo / f".v{version}.tmp"
    tmp.write_text(binding(version))
    tmp.rename(repo / "bindings" / "binding.yaml")


async def client(
    port: int, stop: asyncio.Event, sent: dict[str, tuple[float, float]], refused: list[str], worker: int
) -> None:
    url = f"http://127.0.0.1:{port}/hooks/http/hook"
    n = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        while not stop.is_set():
            n += 1
            delivery = f"w{worker}-{n}"
            body = json.dumps({"text": delivery}).encode()
            ts = str(int(time.time()))
            sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            headers = {
                "X-Aofd-Timestamp": ts,
                "X-Aofd-Signature": f"v1={sig}",
                "X-Aofd-Delivery": delivery,
                "Content-Type": "application/json",
            }
            t0 = time.time()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        sent[delivery] = (t0, time.time())
                    else:
                        refused.append(delivery)
            except (aiohttp.ClientError, OSError):
                refused.append(delivery)
                await asyncio.sleep(0.01)


async def run_mode(mode: str, seconds: float, interval: float, concurrency: int) -> dict[str, Any]:
    """One timed run; the daemon is always stopped, even when the run fails."""
    holder: list[Daemon] = []
    try:
        return await _run_mode(mode, seconds, interval, concurrency, holder)
    finally:
        for daemon in holder:
            await asyncio.to_thread(daemon.stop)


async def _run_mode(
    mode: str, seconds: float, interval: float, concurrency: int, holder: list[Daemon]
) -> dict[str, Any]:
    model = ModelServer()
    await model.start()
    root = Path(tempfile.mkdtemp(prefix=f"aofd-hotswap-{mode}-"))
    repo = root / "repo"
    for path, text in {
        "contexts/prod.yaml": CONTEXT,
        "agents/echo.yaml": AGENT,
        "flows/echo.yaml": FLOW,
        "triggers/hook.yaml": TRIGGER,
    }.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    (repo / "bindings").mkdir()
    write_version(repo, 0)
    daemon = Daemon(root, model.url, free_port())
    holder.append(daemon)
    daemon.start()
    applied: dict[int, float] = {0: await daemon.wait_binding(0)}
    stop = asyncio.Event()
    sent: dict[str, tuple[float, float]] = {}
    refused: list[str] = []
    clients = [
        asyncio.create_task(client(daemon.listen_port, stop, sent, refused, i)) for i in range(concurrency)
    ]
    watcher = asyncio.create_task(daemon.watch_applied(applied, stop))
    version = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(interval)
        version += 1
        if mode == "restart":
            # a restart cannot keep a 200 ms cadence: each change waits for the new daemon
            await asyncio.to_thread(daemon.stop)
            write_version(repo, version)
            daemon.start()
            applied.setdefault(version, await daemon.wait_binding(version))
        else:
            write_version(repo, version)
    with contextlib.suppress(RuntimeError):
        applied.setdefault(version, await daemon.wait_binding(version))
    stop.set()
    await asyncio.gather(*clients, watcher)
    # let in-flight runs finish
    last = -1
    while last != len(model.seen):
        last = len(model.seen)
        await asyncio.sleep(1.0)
    await asyncio.to_thread(daemon.stop)
    await model.close()

    handled: dict[str, list[int]] = {}
    for ver, delivery in model.seen:
        handled.setdefault(delivery, []).append(ver)
    times = sorted(applied.items())
    wrong = 0
    for delivery, versions in handled.items():
        window = sent.get(delivery)
        if window is None:
            continue
        t_send, t_answer = window
        ok = set()
        for i, (ver, t_applied) in enumerate(times):
            t_next = times[i + 1][1] if i + 1 < len(times) else float("inf")
            # version `ver` was current somewhere in [t_applied - slack, t_next): the admin poll
            # that timestamps `t_applied` runs a few ms after the swap itself.
            if t_applied - 0.25 <= t_answer and t_next >= t_send:
                ok.add(ver)
        if versions[0] not in ok:
            wrong += 1
    lost = [d for d in sent if d not in handled]
    twice = [d for d, v in handled.items() if len(v) > 1]
    return {
        "mode": mode,
        "seconds": seconds,
        "changes": version,
        "versions_applied": len(applied),
        "sent": len(sent),
        "refused": len(refused),
        "handled": sum(1 for d in sent if d in handled),
        "lost": len(lost),
        "handled_twice": len(twice),
        "wrong_version": wrong,
        "rate_per_s": round(len(sent) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--modes", default="hotswap,restart")
    args = parser.parse_args()
    results = [
        asyncio.run(run_mode(mode, args.seconds, args.interval, args.concurrency))
        for mode in args.modes.split(",")
    ]
    columns = (
        "mode",
        "changes",
        "versions_applied",
        "sent",
        "refused",
        "handled",
        "lost",
        "handled_twice",
        "wrong_version",
        "rate_per_s",
    )
    print("  ".join(f"{c:>16}" for c in columns))
    for r in results:
        print("  ".join(f"{r[c]!s:>16}" for c in columns))
    OUT.write_text(
        json.dumps({"results": results, "machine": os.uname().nodename, "cpus": os.cpu_count()}, indent=2)
    )


if __name__ == "__main__":
    main()
