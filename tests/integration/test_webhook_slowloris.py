"""A real `aofd serve` under a 200-descriptor limit, held by 250 connections that send nothing,
half their headers or half their body: signed webhooks and `/healthz` are still answered within a
second of the header timeout, the slow connections are closed and counted, and the log stays short."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import fakes, harness

pytestmark = pytest.mark.slow

SECRET = "slowloris-secret"
NOFILE = 200
# Above the kernel's first SYN retry (1 s): on a slow host, clients that overflowed the listen queue
# come back while the first ones are still held, so the cap (not only the timeouts) is reached.
HEADER_TIMEOUT = 2.0
SLOW_CONNECTIONS = 250

RESOURCES = {
    "contexts/prod.yaml": """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: default
""",
    "agents/echo.yaml": """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {name: echo}
spec:
  model: anthropic:claude-test
  instructions: Answer briefly.
""",
    "flows/echo.yaml": """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata: {name: echo-flow}
spec:
  agents:
    - name: echo
""",
    "triggers/hook.yaml": f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: hook}}
spec:
  type: HTTP
  config: {{webhook_secret: {SECRET}}}
""",
    "bindings/b.yaml": """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {name: b}
spec:
  flow: {name: echo-flow}
  context: {name: prod}
  trigger: {name: hook}
""",
}

# Run `aofd serve` with RLIMIT_NOFILE lowered in the child only (what `prlimit --nofile` does).
LIMITED = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
    "os.execv(sys.executable, [sys.executable, '-m', 'aofd', *sys.argv[1:]])"
)


@contextlib.contextmanager
def limited_daemon(tmp_path: Path) -> Iterator[harness.DaemonProcess]:
    repo = tmp_path / "repo"
    for rel, text in RESOURCES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    log_path = tmp_path / "aofd.log"
    with fakes.anthropic_server() as model:
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(tmp_path / "audit"),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "http": {"header_timeout": f"{HEADER_TIMEOUT}s", "body_timeout": f"{HEADER_TIMEOUT}s"},
                    "drain_grace_seconds": 2,
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG"))}
        env.update({"ANTHROPIC_API_KEY": "test-key", "PYTHONUNBUFFERED": "1"})
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", LIMITED, "serve", "--config", str(config), "--log-format", "json"],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        daemon = harness.DaemonProcess(proc, tmp_path / "state", log_path)
        try:
            yield daemon
        finally:
            daemon.stop(timeout=15)


def signed_webhook(address: str, delivery: str) -> tuple[int, float]:
    """POST a signed event to the HTTP trigger; its status and how long the answer took."""
    body = json.dumps({"text": f"hello {delivery}", "user": {"id": "U1"}}).encode()
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(
        f"http://{address}/hooks/http/hook",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Aofd-Timestamp": ts,
            "X-Aofd-Signature": f"v1={sig}",
            "X-Aofd-Delivery": delivery,
        },
    )
    start = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, time.monotonic() - start


def healthz(address: str) -> tuple[int, float]:
    start = time.monotonic()
    with urllib.request.urlopen(f"http://{address}/healthz", timeout=10) as resp:
        return resp.status, time.monotonic() - start


def slow_connections(address: str, count: int) -> list[socket.socket]:
    """Connections that send nothing, half their headers, or headers and half their body."""
    host, port = address.rsplit(":", 1)
    partial = [
        b"",
        b"POST /hooks/http/hook HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
        b"POST /hooks/http/hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10,
    ]
    sockets = []
    for n in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sockets.append(sock)
        with contextlib.suppress(OSError):
            if partial[n % 3]:
                sock.sendall(partial[n % 3])
    return sockets


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == want:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_webhooks_are_answered_while_slow_connections_exhaust_the_listener(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CONNECTIONS + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with limited_daemon(tmp_path) as daemon:
        daemon.wait_ready()
        listen, admin = daemon.endpoints["listen"], daemon.endpoints["admin"]
        # The first run loads the model client (a one-off pause of the loop): out of the way first.
        assert signed_webhook(listen, "warm-up")[0] == 202
        daemon.wait_for(lambda: "/v1/messages" in daemon.log_text(), what="the warm-up run")
        lines_at_ready = len(daemon.log_text().splitlines())
        held = slow_connections(listen, SLOW_CONNECTIONS)
        try:
            first = [signed_webhook(listen, f"d-{n}") for n in range(3)]
            health = healthz(admin)
            time.sleep(HEADER_TIMEOUT + 0.5)  # every slow connection has run out of time by now
            later = [signed_webhook(listen, f"e-{n}") for n in range(3)]
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
        finally:
            for sock in held:
                sock.close()
        log = daemon.log_text().splitlines()
        assert 0 == daemon.stop()

    budget = HEADER_TIMEOUT + 1.0
    assert [202] * 6 == [status for status, _ in first + later], first + later
    assert max(took for _, took in first + later) < budget, first + later
    assert health[0] == 200
    assert health[1] < budget
    closed = {
        reason: metric(metrics, "aofd_http_connections_closed_total", listener="webhook", reason=reason)
        for reason in ("header_timeout", "body_timeout", "evicted")
    }
    # Some slow clients overflow the listen queue and get in only on the kernel's retry, later.
    assert sum(closed.values()) >= SLOW_CONNECTIONS // 2, closed
    closed["over_capacity"] = metric(
        metrics, "aofd_http_connections_closed_total", listener="webhook", reason="over_capacity"
    )
    assert closed["header_timeout"] > 0, closed  # each timeout engaged
    assert closed["body_timeout"] > 0, closed
    # The cap below the descriptor limit engaged: connections evicted, or shed when none could give way.
    assert closed["evicted"] + closed["over_capacity"] > 0, closed
    assert 0 == metric(metrics, "aofd_http_accept_errors_total", listener="webhook", error="EMFILE")
    assert not [line for line in log if "out of system resource" in line]
    assert len(log) < 100, (lines_at_ready, log[-40:])
    answers = [round(took, 3) for _, took in first + later]
    print(f"answers {answers}s, /healthz {health[1]:.3f}s, {closed}, {len(log)} log lines")
