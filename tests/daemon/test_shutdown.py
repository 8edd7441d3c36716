"""SIGTERM and SIGINT stop a real `aofd serve` at once in every phase: before a first revision
was ever applied (remote unreachable, one broken file, an SSH host key mismatch), while a
fetch hangs, and while serving; a second signal cuts a slow graceful shutdown short."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aofd.daemon import config, main
from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, send_event
from tests.integration.test_daemon_systemd import make_repo
from tests.source import gitkit

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 2.0
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def write_config(tmp: Path, source: dict[str, Any], **extra: Any) -> list[str]:
    config = tmp / "aofd.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": [{"name": "main", **source}],
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "state_dir": str(tmp / "state"),
                "audit_dir": str(tmp / "audit"),
                **extra,
            }
        )
    )
    return ["--config", str(config)]


@contextlib.contextmanager
def daemon_with(tmp: Path, source: dict[str, Any], **extra: Any) -> Iterator[harness.DaemonProcess]:
    args = write_config(tmp, source, **extra)
    with harness.run_daemon(*args, cwd=tmp, state_dir=tmp / "state") as daemon:
        daemon.wait_endpoints()
        yield daemon


def stops_promptly(daemon: harness.DaemonProcess, sig: int) -> float:
    """Send `sig`; assert exit status 0 within `STOP_WITHIN_S`; return how long it took."""
    assert daemon.proc.poll() is None, daemon.log_text()
    started = time.monotonic()
    daemon.proc.send_signal(sig)
    try:
        code = daemon.proc.wait(STOP_WITHIN_S)
    except Exception:
        name = signal.Signals(sig).name
        raise AssertionError(
            f"aofd did not stop within {STOP_WITHIN_S}s of {name}:\n{daemon.log_text()[-3000:]}"
        ) from None
    assert 0 == code, daemon.log_text()[-3000:]
    return time.monotonic() - started


def logged(daemon: harness.DaemonProcess, event: str) -> bool:
    return f'"event": "{event}"' in daemon.log_text()


@pytest.mark.parametrize("sig", SIGNALS)
def test_unreachable_remote_before_the_first_revision(tmp_path: Path, sig: int) -> None:
    """No revision was ever applied (the remote path does not exist): a signal still stops aofd."""
    source = {"git": {"url": f"file://{tmp_path / 'missing.git'}"}}
    with daemon_with(tmp_path, source) as daemon:
        daemon.wait_for(lambda: logged(daemon, "source.fetch_failed"), what="a failed fetch")
        stops_promptly(daemon, sig)
    assert "daemon.stopping" not in daemon.log_text()  # nothing was applied, no Context to audit


@pytest.mark.parametrize("sig", SIGNALS)
def test_nothing_listening_on_the_remote_port(tmp_path: Path, sig: int) -> None:
    """A loopback port with nothing listening: fetches fail and back off; a signal stops aofd."""
    source = {"git": {"url": f"git://127.0.0.1:{harness.free_port()}/r.git"}}
    with daemon_with(tmp_path, source) as daemon:
        daemon.wait_for(lambda: logged(daemon, "source.fetch_failed"), what="a failed fetch")
        stops_promptly(daemon, sig)


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_fetch_in_flight_that_never_answers(tmp_path: Path, sig: int) -> None:
    """The remote accepts and never answers (the fetch timeout is a minute away): aofd stops at once."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(20)
        port = listener.getsockname()[1]
        source = {"git": {"url": f"git://127.0.0.1:{port}/r.git", "timeout": "60s"}}
        with daemon_with(tmp_path, source) as daemon:
            conn, _ = listener.accept()  # the fetch is in flight now
            with conn:
                stops_promptly(daemon, sig)


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_directory_with_one_broken_file(tmp_path: Path, sig: int) -> None:
    """The only revision there is is rejected (one file does not parse): a signal stops aofd."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "agent.yaml").write_text(AGENT)
    (repo / "broken.yaml").write_text("kind: Agent\nmetadata: {name: [unclosed\n")
    with daemon_with(tmp_path, {"directory": {"path": str(repo)}}) as daemon:
        daemon.wait_for(lambda: '"outcome": "rejected"' in daemon.log_text(), what="the rejected pass")
        stops_promptly(daemon, sig)


@pytest.mark.skipif(not gitkit.sshd_available(), reason="sshd is not installed")
@pytest.mark.parametrize("sig", SIGNALS)
def test_an_ssh_host_key_mismatch(tmp_path: Path, sig: int) -> None:
    """known_hosts lists another key for the server: every fetch is refused; a signal stops aofd."""
    remote = gitkit.Remote.create(tmp_path)
    remote.write("agent.yaml", AGENT)
    remote.commit("initial")
    with gitkit.sshd(tmp_path / "sshd") as server:
        other = tmp_path / "other"
        gitkit.subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        known = tmp_path / "known_hosts"
        known.write_text(
            f"[127.0.0.1]:{server.port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n"
        )
        auth = {"ssh_key_file": str(server.client_key), "known_hosts_file": str(known)}
        source = {"git": {"url": f"{server.url_prefix}{remote.bare}", "auth": auth}}
        with daemon_with(tmp_path, source) as daemon:
            daemon.wait_for(lambda: "does not match" in daemon.log_text(), what="the host key refusal")
            stops_promptly(daemon, sig)


@pytest.mark.parametrize("sig", SIGNALS)
def test_serving_with_nothing_in_flight(tmp_path: Path, sig: int) -> None:
    """Ready and idle: a signal stops aofd at once and `daemon.stopping` is audited."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        source = {"directory": {"path": str(repo)}}
        extra = {"models": {"anthropic_base_url": fakes.url(model)}}
        args = write_config(tmp_path, source, **extra)
        with harness.run_daemon(
            *args, cwd=tmp_path, state_dir=tmp_path / "state", env={"ANTHROPIC_API_KEY": "k"}
        ) as daemon:
            daemon.wait_ready()
            stops_promptly(daemon, sig)
    audit = (tmp_path / "audit" / "prod").glob("audit-*.jsonl")
    actions = [json.loads(line)["event"]["action"] for seg in audit for line in seg.read_text().splitlines()]
    assert "daemon.stopping" in actions


def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    """SIGTERM then SIGINT while a run drains (grace 60 s): the second signal stops aofd at once."""
    repo = make_repo(tmp_path)
    with fakes.anthropic_server() as model:
        model.delay = 30.0
        source = {"directory": {"path": str(repo)}}
        extra = {"models": {"anthropic_base_url": fakes.url(model)}, "drain_grace_seconds": 60}
        args = write_config(tmp_path, source, **extra)
        with harness.run_daemon(
            *args, cwd=tmp_path, state_dir=tmp_path / "state", env={"ANTHROPIC_API_KEY": "k"}
        ) as daemon:
            daemon.wait_ready()
            assert 202 == send_event(daemon, "slow question", "drain-1")
            daemon.wait_for(lambda: model.requests, what="the model call to start")
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.wait_for(lambda: logged(daemon, "stopping: no new events; draining runs"), what="draining")
            assert daemon.proc.poll() is None
            stops_promptly(daemon, signal.SIGINT)
            model.release.set()


def slow_upload(address: str, path: str) -> socket.socket:
    """A client that sends a request's headers and a first byte of its body, then nothing more:
    the handler is at work, reading the body (aiohttp's close waits `shutdown_timeout` for it)."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n{".encode()
    )
    return sock


def test_a_second_signal_stops_at_once_while_listeners_close(tmp_path: Path) -> None:
    """Requests in progress on each listener (bodies that never come): the first SIGTERM waits for
    them, the second stops aofd at once, dropping their connections."""
    source = {"git": {"url": f"file://{tmp_path / 'missing.git'}"}}
    with daemon_with(tmp_path, source) as daemon:
        clients = [
            slow_upload(daemon.endpoints["listen"], "/hooks/git/main"),
            slow_upload(daemon.endpoints["admin"], "/api/v1/diff"),
        ]
        try:
            time.sleep(0.2)  # let both handlers start
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.wait_for(lambda: logged(daemon, "stopping: no new events; draining runs"), what="stopping")
            time.sleep(0.5)
            assert daemon.proc.poll() is None, "the first stop should wait for the requests in progress"
            stops_promptly(daemon, signal.SIGTERM)
        finally:
            for client in clients:
                client.close()
    assert logged(daemon, "second stop signal: closing open connections now")


def bare_daemon(tmp_path: Path) -> main.Daemon:
    path = tmp_path / "aofd.yaml"
    path.write_text(json.dumps({"sources": [], "state_dir": "state", "audit_dir": "audit"}))
    return main.Daemon(config.load(path))


async def test_a_second_signal_drops_the_connections_a_listener_close_waits_for(tmp_path: Path) -> None:
    daemon = bare_daemon(tmp_path)
    released = asyncio.Event()
    aborted: list[str] = []

    def abort() -> int:  # dropping the connections ends the handlers the close waits for
        aborted.append("webhook")
        released.set()
        return 2

    closing = asyncio.create_task(daemon._close_listener("webhook", released.wait(), abort))
    await asyncio.wait({closing}, timeout=0.05)
    assert not closing.done()
    daemon.hard_stop.set()
    await asyncio.wait_for(closing, 1.0)
    assert aborted == ["webhook"]
    # After the second signal, a later close (the admin API's) drops its connections at once.
    released.clear()
    await asyncio.wait_for(daemon._close_listener("admin", released.wait(), abort), 1.0)
    assert aborted == ["webhook", "webhook"]


async def test_a_close_that_ignores_the_abort_is_abandoned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main, "HARD_STOP_CLOSE_S", 0.01)
    daemon = bare_daemon(tmp_path)
    daemon.hard_stop.set()
    never = asyncio.Event()
    await asyncio.wait_for(daemon._close_listener("webhook", never.wait(), lambda: 0), 1.0)
    assert not never.is_set()


async def test_a_close_without_a_second_signal_is_awaited_and_its_error_raised(tmp_path: Path) -> None:
    daemon = bare_daemon(tmp_path)

    async def failing() -> None:
        raise OSError("close failed")

    with pytest.raises(OSError, match="close failed"):
        await daemon._close_listener("webhook", failing(), lambda: 0)
