"""Run a real `aofd serve` process for integration tests, and talk to it over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.integration import fakes


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Write `files` (path relative to `root` -> text) under `root`, making directories; returns `root`."""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def aofctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `aofctl` with `args` (text output, 60 s cap, never raises on its exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The records of one audit segment written so far: a line the daemon is still writing (no
    newline yet) is left out, so a test may read while the daemon runs."""
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonProcess:
    """A running `aofd serve` subprocess with helpers to wait for it and query its admin API."""

    def __init__(self, proc: subprocess.Popen[bytes], state_dir: Path, log_path: Path) -> None:
        self.proc = proc
        self.state_dir = state_dir
        self.log_path = log_path
        self.endpoints: dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_endpoints(self, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        path = self.state_dir / "endpoints.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"aofd exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                if str(data.get("pid")) == str(self.proc.pid):
                    self.endpoints = data
                    return data
            time.sleep(0.05)
        raise AssertionError(f"aofd did not publish its endpoints:\n{self.log_text()}")

    def url(self, which: str, path: str) -> str:
        if not self.endpoints:
            self.wait_endpoints()
        return f"http://{self.endpoints[which]}{path}"

    def get(self, path: str, *, which: str = "admin") -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url(which, path), timeout=10) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body = exc.read()
            status = exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def post(
        self, path: str, body: bytes = b"", *, which: str = "admin", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(
            self.url(which, path), data=body, method="POST", headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_endpoints(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.get("/readyz")
            if status == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"aofd not ready:\n{self.log_text()}")

    def wait_for(self, predicate: Any, *, timeout: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last={last!r}\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


@contextlib.contextmanager
def run_daemon(
    *args: str,
    cwd: Path,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
    log_name: str = "aofd.log",
) -> Iterator[DaemonProcess]:
    """Start `aofd serve ARGS...` with loopback ports chosen by the OS; kill it on exit."""
    log_path = cwd / log_name
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG"))}
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aofd", "serve", *args, "--log-format", "json"],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    daemon = DaemonProcess(proc, state_dir, log_path)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_directory(repo: Path, tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    """`aofd serve REPO` (a watched directory) against a fake model server, its admin API on a
    unix socket in `tmp_path`, endpoints up; yields the daemon and the `--admin` address."""
    admin = f"unix:{tmp_path / 'admin.sock'}"
    with (
        fakes.anthropic_server() as model,
        run_daemon(
            str(repo),
            "--admin",
            admin,
            "--listen",
            "127.0.0.1:0",
            cwd=tmp_path,
            state_dir=repo / ".aofd" / "state",
            env={"ANTHROPIC_BASE_URL": fakes.url(model)},
        ) as daemon,
    ):
        daemon.wait_endpoints()
        yield daemon, admin


def replica_config(
    home: Path,
    *,
    repo: Path,
    member: str,
    endpoints: tuple[str, ...],
    model_url: str,
    cluster: str = "ops-test",
    lease_ttl: str = "3s",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """`home/aofd.yaml` of one replica of a set (`cluster:`): its own state and audit dirs under
    `home`, the shared watched `repo`, loopback ports chosen by the OS, plus `extra` top-level
    settings; returns the file."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "aofd.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "state_dir": str(home / "state"),
                "audit_dir": str(home / "audit"),
                "models": {"anthropic_base_url": model_url},
                "cluster": {
                    "name": cluster,
                    "member": member,
                    "etcd": {"endpoints": list(endpoints), "request_timeout": "1s"},
                    "lease_ttl": lease_ttl,
                },
                **(extra or {}),
            }
        )
    )
    return config


@contextlib.contextmanager
def run_replicas(
    configs: Mapping[str, Path], *, env: Mapping[str, str] | None = None
) -> Iterator[dict[str, DaemonProcess]]:
    """Start one `aofd serve --config FILE` per member (all at once), wait until each is ready;
    yields them by member name and kills whatever is left on exit."""
    with contextlib.ExitStack() as stack:
        daemons = {
            member: stack.enter_context(
                run_daemon(
                    "--config", str(config), cwd=config.parent, state_dir=config.parent / "state", env=env
                )
            )
            for member, config in configs.items()
        }
        for daemon in daemons.values():
            daemon.wait_ready()
        yield daemons
