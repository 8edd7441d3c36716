"""The daemon's process wiring, without a process: SIGHUP, readiness, watchdog, pass metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog.testing

from aofd import errors
from aofd.daemon import config, main, metrics, notify
from aofd.reconcile import loop, state, status
from aofd.resources import ids


class RecordingNotifier(notify.Notifier):
    def __init__(self) -> None:
        super().__init__(environ={})
        self.sent: list[str] = []

    def send(self, *lines: str) -> bool:
        self.sent.extend(lines)
        return True


class NoAudit:
    async def write(self, context: str, record: Any, *, durable: bool = False) -> None:
        return None


class NoApply:
    async def apply(self, desired: Any, plan: Any) -> loop.ApplyOutcome:
        return loop.ApplyOutcome()


CONFIG = """\
sources:
  - name: local
    directory: {{path: repo}}
state_dir: state
audit_dir: audit
substitution:
  allow: [{allow}]
"""


def make_daemon(
    tmp_path: Path, allow: str = "AOF_*", *, clock: Callable[[], float] = time.monotonic
) -> tuple[main.Daemon, RecordingNotifier, Path]:
    (tmp_path / "repo").mkdir(exist_ok=True)
    path = tmp_path / "aofd.yaml"
    path.write_text(CONFIG.format(allow=allow))
    cfg = config.load(path)
    notifier = RecordingNotifier()
    daemon = main.Daemon(cfg, config_path=path, notifier=notifier, clock=clock)
    daemon.reconciler = loop.Reconciler(
        sources=[loop.SourcePolicy("local", frozenset(ids.Kind))],
        store=state.StateStore(cfg.state_dir),
        applier=NoApply(),
        audit=NoAudit(),
        variables=daemon._variables,
        allow=cfg.substitution.allow,
    )
    return daemon, notifier, path


async def test_sighup_before_the_first_revision_does_not_report_ready(tmp_path: Path) -> None:
    """SIGHUP while nothing is applied yet never sends READY=1 (readiness is not assumed)."""
    daemon, notifier, _ = make_daemon(tmp_path)

    daemon._on_sighup()

    assert "RELOADING=1" in notifier.sent
    assert "READY=1" not in notifier.sent


async def test_sighup_after_the_first_revision_reports_ready_again(tmp_path: Path) -> None:
    """Once serving, a reload ends with READY=1 (RELOADING=1 ... READY=1, as systemd expects)."""
    daemon, notifier, _ = make_daemon(tmp_path)
    assert daemon.reconciler is not None
    daemon.reconciler.first_applied.set()

    daemon._on_sighup()

    assert ["RELOADING=1", "READY=1"] == [x for x in notifier.sent if x.endswith("=1")]


async def test_sighup_reload_of_the_allow_list_reaches_the_reconciler(tmp_path: Path) -> None:
    """A new substitution allow-list is used by the next pass, not only by the variable reader."""
    daemon, _, path = make_daemon(tmp_path, allow="AOF_*")
    path.write_text(CONFIG.format(allow="SLACK_*"))

    daemon._on_sighup()

    assert ("SLACK_*",) == tuple(daemon.cfg.substitution.allow)
    assert daemon.reconciler is not None
    assert ("SLACK_*",) == daemon.reconciler._allow


async def test_a_broken_config_on_sighup_keeps_the_running_one(tmp_path: Path) -> None:
    """A config that does not load on SIGHUP changes nothing."""
    daemon, _, path = make_daemon(tmp_path, allow="AOF_*")
    path.write_text("sources: [\n")

    daemon._on_sighup()

    assert ("AOF_*",) == tuple(daemon.cfg.substitution.allow)
    assert daemon.reconciler is not None
    assert ("AOF_*",) == daemon.reconciler._allow


async def test_passes_are_counted_in_metrics(tmp_path: Path) -> None:
    """Every pass shows up in aofd_reconcile_passes_total and the duration histogram."""
    daemon, _, _ = make_daemon(tmp_path)
    registry = metrics.Metrics(metrics.Samples)
    daemon.runtime = SimpleNamespace(metrics=registry, providers=SimpleNamespace(warming=False))  # type: ignore[assignment]
    issue = errors.Issue("a.yaml", 1, 1, "error", "bad", "x")

    await daemon._on_pass(status.PassSummary(revision="r1", outcome="applied", duration_s=0.02))
    await daemon._on_pass(status.PassSummary(revision="r2", outcome="rejected", issues=(issue,)))

    text = registry.render()[0].decode()
    assert 'aofd_reconcile_passes_total{outcome="applied"} 1.0' in text
    assert 'aofd_reconcile_passes_total{outcome="rejected"} 1.0' in text
    assert "aofd_reconcile_duration_seconds_count 2.0" in text
    assert "aofd_reconcile_errors_total 1.0" in text


async def test_a_stuck_pass_stops_the_watchdog(tmp_path: Path) -> None:
    """A reconcile pass running longer than WATCHDOG_STUCK_PASS_S makes the daemon unhealthy."""
    daemon, _, _ = make_daemon(tmp_path)
    assert daemon.reconciler is not None
    assert daemon.healthy()

    daemon.reconciler.pass_started = time.monotonic() - main.WATCHDOG_STUCK_PASS_S - 1

    assert not daemon.healthy()


@pytest.mark.looptime
async def test_a_stalled_event_loop_misses_its_watchdog_ping(tmp_path: Path) -> None:
    """Pings come from the loop itself: a tick that took longer than the interval (the loop was blocked)
    sends no ping (so systemd's WatchdogSec can kill a wedged daemon), then pings resume.

    Loop time is fake (each wait is instant); the daemon's clock is the loop's plus a stall the test
    adds, as if the loop had been blocked for 0.3 s between two ticks.
    """
    loop = asyncio.get_running_loop()
    stalled = [0.0]
    daemon, notifier, _ = make_daemon(tmp_path, clock=lambda: loop.time() + stalled[0])
    notifier.watchdog_interval = 0.05
    pings: list[tuple[float, float]] = []  # (loop time, stall so far) of each ping
    notifier.send = lambda *lines: bool(pings.append((loop.time(), stalled[0]))) or True  # type: ignore[method-assign]
    task = asyncio.create_task(daemon._watchdog())
    await asyncio.sleep(0.2)
    before = len(pings)
    stalled[0] = 0.3  # the next tick measures a 0.3 s lag
    stall_at = loop.time()
    await asyncio.sleep(0.2)
    daemon.stop.set()
    await task
    assert before >= 3
    missed = [t for t, stall in pings if stall and t < stall_at + 0.05]
    resumed = [t for t, stall in pings if stall and t >= stall_at + 0.05]
    assert ([], True) == (missed, len(resumed) >= 2)


async def test_sighup_names_the_settings_a_reload_does_not_apply(tmp_path: Path) -> None:
    """Only the substitution allow-list is reloaded; any other changed setting is named in a warning
    (a changed `executables` would make `aofctl validate --config` compile differently)."""
    daemon, _, path = make_daemon(tmp_path, allow="AOF_*")
    with structlog.testing.capture_logs() as quiet:
        path.write_text(CONFIG.format(allow="SLACK_*"))
        daemon._on_sighup()
    assert not [e for e in quiet if e["log_level"] == "warning"]

    with structlog.testing.capture_logs() as logs:
        path.write_text(CONFIG.format(allow="SLACK_*") + "drain_grace_seconds: 5\nlisten: 127.0.0.1:9999\n")
        daemon._on_sighup()
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert ["drain_grace_seconds", "listen"] == warning["settings"]
