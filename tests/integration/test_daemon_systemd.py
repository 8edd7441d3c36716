"""`aofd serve` as systemd sees it: sd_notify messages and their timing, SIGHUP, SIGTERM
draining a run in flight, and one daemon per state dir."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, TRIGGER, binding, send_event

pytestmark = pytest.mark.slow


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    return repo


class NotifyListener:
    """A unix datagram socket standing in for systemd's notify socket; records (time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def find(self, prefix: str) -> list[tuple[float, str]]:
        self.poll()
        return [(t, m) for t, m in self.messages if any(line.startswith(prefix) for line in m.splitlines())]

    def close(self) -> None:
        self.sock.close()


def audit_records(tmp: Path, context: str = "prod") -> list[dict[str, Any]]:
    """Every record of a context's audit log, in segment order (names sort by time and seq)."""
    return [
        json.loads(line)
        for segment in sorted((tmp / "audit" / context).glob("audit-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]


def serve_args(
    repo: Path, model_url: str, tmp: Path, *, drain_grace: float = 10
) -> tuple[list[str], dict[str, str]]:
    config = tmp / "aofd.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "state_dir": str(tmp / "state"),
                "audit_dir": str(tmp / "audit"),
                "models": {"anthropic_base_url": model_url},
                "drain_grace_seconds": drain_grace,
            }
        )
    )
    return ["--config", str(config)], {"ANTHROPIC_API_KEY": "test-key"}


def test_notify_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    """READY comes after the revision is applied and listeners are up; WATCHDOG pings; STOPPING on SIGTERM."""
    repo = make_repo(tmp_path)
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        with fakes.anthropic_server() as model:
            args, env = serve_args(repo, fakes.url(model), tmp_path)
            env.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
            started = time.monotonic()
            with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
                daemon.wait_for(lambda: notify.find("READY=1"), what="READY=1")
                ready_at, ready = notify.find("READY=1")[0]
                assert "STATUS=serving revision local@" in ready
                daemon.wait_endpoints()
                assert 200 == daemon.get("/readyz")[0]
                statuses = notify.find("STATUS=")
                assert statuses[0][0] <= ready_at
                daemon.wait_for(lambda: len(notify.find("WATCHDOG=1")) >= 2, what="two watchdog pings")
                pings = [t for t, _ in notify.find("WATCHDOG=1")]
                assert all(t > started for t in pings)
                assert pings[1] - pings[0] < 1.5  # WatchdogSec/2 = 0.5 s, with slack for a loaded machine
                assert 0 == daemon.stop(signal.SIGTERM)
                assert notify.find("STOPPING=1")
    finally:
        notify.close()


def test_sighup_fetches_now(tmp_path: Path) -> None:
    """SIGHUP makes the daemon read its sources at once, even with the watcher far behind."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        args, env = serve_args(repo, fakes.url(model), tmp_path)
        with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
            daemon.wait_ready()
            before = daemon.get("/api/v1/status")[1]["passes"]
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_for(
                lambda: daemon.get("/api/v1/status")[1]["passes"] > before, what="a pass after SIGHUP"
            )
            assert "SIGHUP" in daemon.log_text()
            assert 0 == daemon.stop()


def test_sigterm_drains_a_run_in_flight(tmp_path: Path) -> None:
    """SIGTERM stops new events, lets the slow run finish, records it, and exits 0."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        model.delay = 2.0
        args, env = serve_args(repo, fakes.url(model), tmp_path)
        with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
            daemon.wait_ready()
            assert 202 == send_event(daemon, "slow question", "slow-1")
            daemon.wait_for(lambda: model.requests, what="the model call to start")
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.proc.wait(30)
            assert 0 == code
    lines = audit_records(tmp_path)
    actions = [line["event"]["action"] for line in lines]
    assert "agent.run.finished" in actions
    finished = [line for line in lines if line["event"]["action"] == "agent.run.finished"]
    assert "success" == finished[-1]["event"]["outcome"]
    assert "daemon.stopping" in actions


def test_second_instance_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    """A second aofd on the same state dir exits 1 with a message naming the first one's pid."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        args, env = serve_args(repo, fakes.url(model), tmp_path)
        with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
            daemon.wait_ready()
            second = subprocess.run(
                [sys.executable, "-m", "aofd", "serve", *args],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=tmp_path,
                check=False,
            )
            assert 1 == second.returncode
            assert f"pid {daemon.pid}" in second.stdout + second.stderr
            assert 200 == daemon.get("/readyz")[0]
            assert 0 == daemon.stop()


def test_metrics_are_exported(tmp_path: Path) -> None:
    """/metrics speaks Prometheus text with reconcile, listener, run and audit series."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        args, env = serve_args(repo, fakes.url(model), tmp_path)
        with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
            daemon.wait_ready()
            assert 202 == send_event(daemon, "q", "m-1")
            bad = daemon.post(
                "/hooks/http/hook", b"{}", which="listen", headers={"X-Aofd-Signature": "v1=00"}
            )
            assert 401 == bad[0]
            daemon.wait_for(
                lambda: 'aofd_runs_total{outcome="completed"}' in str(daemon.get("/metrics")[1]),
                what="a completed run in the metrics",
            )
            text: Any = daemon.get("/metrics")[1]
            for series in (
                "aofd_reconcile_passes_total",
                "aofd_reconcile_duration_seconds_bucket",
                "aofd_listeners{",
                "aofd_applied_revision_info",
                "aofd_audit_records_total",
                "aofd_audit_durable_write_seconds_bucket",
                'aofd_events_received_total{platform="http"} 1.0',
                'aofd_events_rejected_total{platform="http",reason=',
                'aofd_model_tokens_total{direction="input"}',
            ):
                assert series in text
            assert 0 == daemon.stop()


def test_deleted_binding_run_is_cancelled_after_the_grace_period(tmp_path: Path) -> None:
    """A run of a binding deleted by a new revision gets the grace period, then is cancelled and recorded."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        model.delay = 30.0
        args, env = serve_args(repo, fakes.url(model), tmp_path, drain_grace=1)
        with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
            daemon.wait_ready()
            assert 202 == send_event(daemon, "slow question", "del-1")
            daemon.wait_for(lambda: model.requests, what="the model call to start")
            (repo / "bindings" / "b1.yaml").unlink()
            daemon.wait_for(
                lambda: 404 == daemon.get("/api/v1/resources/FlowBinding/b1")[0], what="b1 deleted"
            )

            def finished() -> list[dict[str, Any]]:
                return [r for r in audit_records(tmp_path) if r["event"]["action"] == "agent.run.finished"]

            records = daemon.wait_for(finished, timeout=20, what="the cancelled run to be recorded")
            assert "cancelled" == records[0]["aofd"]["run"]["status"]
            assert "b1" == records[0]["aofd"]["binding"]
            model.release.set()
            assert 0 == daemon.stop()


def test_second_sigterm_stops_at_once_without_a_torn_audit_line(tmp_path: Path) -> None:
    """A second SIGTERM cancels the run still draining; the exit is prompt and the audit chain intact."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        model.delay = 30.0
        args, env = serve_args(repo, fakes.url(model), tmp_path, drain_grace=60)
        with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
            daemon.wait_ready()
            assert 202 == send_event(daemon, "very slow question", "twice-1")
            daemon.wait_for(lambda: model.requests, what="the model call to start")
            daemon.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert daemon.proc.poll() is None
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            assert 0 == daemon.proc.wait(20)
            assert time.monotonic() - started < 10
            model.release.set()
    verified = subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", "audit", "verify", str(tmp_path / "audit" / "prod")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 0 == verified.returncode, verified.stdout + verified.stderr
    finished = [x for x in audit_records(tmp_path) if x["event"]["action"] == "agent.run.finished"]
    assert "cancelled" == finished[-1]["aofd"]["run"]["status"]
