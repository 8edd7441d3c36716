"""Process wiring for `aofd serve`: one TaskGroup owns every long-lived task.

Start-up order (readiness is signalled, never assumed):
  1. take the state-dir lock (a second aofd on the same state dir exits with a clear message),
  2. configure logging, open the audit log (tail recovery happens here),
  3. build sources and the runtime (trigger server, guard, flow starter),
  4. restore the last good snapshot from the state dir and apply it, so a restart with
     every remote unreachable comes up with the same policy,
  5. start the admin API and the sources' loops; once a revision is applied, listeners are
     up and audit files are open: `READY=1`.

Signals: SIGHUP fetches every source now and re-reads the daemon config; SIGTERM/SIGINT stop
taking events, let runs in flight finish within `drain_grace_seconds`, record the rest as
cancelled, and exit 0; a second SIGTERM stops at once (audit lines are written whole or not
at all, so nothing is torn either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from aofd import __version__, errors, settings
from aofd.audit import journal, segment
from aofd.daemon import admin, notify, variables, view, wiring
from aofd.daemon import config as config_mod
from aofd.plan import compiler
from aofd.reconcile import loop, state
from aofd.resources import ids
from aofd.runtime import ports
from aofd.source import runner as source_runner

log = structlog.get_logger("aofd.daemon")

WATCHDOG_STUCK_PASS_S = 300.0


class Daemon:
    """Owns the lifecycle; everything it starts is a child of one TaskGroup."""

    def __init__(
        self,
        cfg: settings.DaemonConfig,
        *,
        config_path: Path | None = None,
        overrides: config_mod.Overrides | None = None,
        notifier: notify.Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.clock = clock  # the watchdog's measure of the event loop's lag (tests step it)
        self.config_path = config_path
        self.overrides = overrides or config_mod.Overrides()
        self.notifier = notifier or notify.Notifier()
        self.stop = asyncio.Event()
        self.hard_stop = asyncio.Event()
        self.started_at = time.time()
        self.store = state.StateStore(cfg.state_dir)
        self.lock = state.StateLock(cfg.state_dir)
        self.audit: journal.AuditLog | None = None
        self.sources: list[source_runner.Source] = []
        self.runtime: wiring.Runtime | None = None
        self.reconciler: loop.Reconciler | None = None
        self.endpoints: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        self.lock.acquire()
        try:
            return await self._run_locked()
        finally:
            self.lock.release()

    async def _run_locked(self) -> int:
        self.store.ensure()
        self.cfg.audit_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        a = self.cfg.audit
        self.audit = journal.AuditLog(
            audit_dir=self.cfg.audit_dir,
            options=segment.JournalOptions(
                max_segment_bytes=a.max_segment_bytes,
                max_segment_age=a.max_segment_age,
                retention_seconds=a.retention,
                group_commit_interval=a.group_commit_interval,
                write_timeout=a.write_timeout,
                checkpoint_every=a.checkpoint_every,
            ),
        )
        await self.audit.open()
        self.notifier.status("loading the last good revision")
        self.sources = [
            source_runner.build_source(spec, state_dir=self.cfg.state_dir) for spec in self.cfg.sources
        ]
        self.runtime = wiring.Runtime(self.cfg, audit=self.audit, sources=self.sources)
        self.reconciler = loop.Reconciler(
            sources=[
                loop.SourcePolicy(s.name, frozenset(ids.Kind(k) for k in spec.kinds))
                for s, spec in zip(self.sources, self.cfg.sources, strict=True)
            ],
            store=self.store,
            applier=self.runtime,
            audit=self.runtime.audit,
            variables=self._variables,
            allow=self.cfg.substitution.allow,
            options=compiler.Options.of(self.cfg),
            on_pass=self._on_pass,
        )
        self.runtime.attach(self.reconciler)
        loop_ = asyncio.get_running_loop()
        for sig, handler in (
            (signal.SIGTERM, self._on_sigterm),
            (signal.SIGINT, self._on_sigterm),
            (signal.SIGHUP, self._on_sighup),
        ):
            loop_.add_signal_handler(sig, handler)
        admin_runner = None
        try:
            listen = await self.runtime.start(self.cfg.listen)
            self.endpoints["listen"] = listen
            admin_runner, admin_address = await admin.start_site(
                admin.AdminApi(view.AdminView(self)), self.cfg.admin
            )
            self.endpoints["admin"] = admin_address
            self.endpoints["pid"] = str(os.getpid())
            self.store.save_endpoints(self.endpoints)
            restored = self.reconciler.restore()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.reconciler.run(stop=self.stop), name="reconciler")
                for source in self.sources:
                    tg.create_task(
                        source.run(on_snapshot=self._on_snapshot, stop=self.stop),
                        name=f"source:{source.name}",
                    )
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._announce_ready(restored), name="readiness")
                await self.stop.wait()
                self.notifier.stopping("draining runs in flight")
                log.info("stopping: no new events; draining runs", grace_s=self.cfg.drain_grace_seconds)
                await self.runtime.stop_accepting()
                drain = asyncio.create_task(self.runtime.drain(self.cfg.drain_grace_seconds))
                hard = asyncio.create_task(self.hard_stop.wait())
                await asyncio.wait({drain, hard}, return_when=asyncio.FIRST_COMPLETED)
                if not drain.done():
                    log.warning("second stop signal: cancelling runs now")
                    drain.cancel()
                    await self.runtime.cancel_all()
                hard.cancel()
                await asyncio.gather(drain, hard, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):
                await self._audit_all("daemon.stopping")
            if self.runtime is not None:
                await self.runtime.aclose()
            if admin_runner is not None:
                await admin_runner.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop_.remove_signal_handler(sig)
            if self.audit is not None:
                await self.audit.aclose()
        log.info("stopped")
        return 0

    async def _announce_ready(self, restored: bool) -> None:
        assert self.reconciler is not None
        self.notifier.status("restored last good revision; applying" if restored else "waiting for sources")
        await self.reconciler.first_applied.wait()
        applied = self.reconciler.applied
        revision = applied.revision if applied is not None else ""
        await self._audit_all("daemon.started")
        self.notifier.ready(f"serving revision {revision}")
        log.info(
            "ready", revision=revision, listen=self.endpoints.get("listen"), admin=self.endpoints.get("admin")
        )

    # -- inputs -----------------------------------------------------------------------------

    async def _on_snapshot(self, snap: Any) -> None:
        assert self.reconciler is not None
        self.reconciler.offer(snap)

    def _variables(self) -> dict[str, str]:
        return variables.collect(self.cfg.substitution.allow)

    async def _on_pass(self, summary: Any) -> None:
        assert self.reconciler is not None
        if self.runtime is not None:
            errs = sum(1 for i in summary.issues if i.is_error) if summary.outcome == "rejected" else 0
            self.runtime.metrics.observe_pass(summary.outcome, summary.duration_s, errs)
        applied = self.reconciler.applied
        revision = applied.revision if applied is not None else "-"
        if summary.outcome == "rejected":
            self.notifier.status(f"serving {revision}; revision {summary.revision} rejected")
        else:
            self.notifier.status(f"serving revision {revision}")

    def _on_sigterm(self) -> None:
        if self.stop.is_set():
            self.hard_stop.set()
        self.stop.set()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: fetching every source now and re-reading the daemon config")
        self.notifier.reloading()
        if self.config_path is not None:
            try:
                new_cfg = config_mod.load(self.config_path, self.overrides)
            except errors.ConfigError as exc:
                log.error(
                    "daemon config reload failed; keeping the running config",
                    error=str(exc),
                    issues=[i.format() for i in exc.issues],
                )
            else:
                changed = sorted(
                    name
                    for name in type(new_cfg).model_fields
                    if name != "substitution" and getattr(new_cfg, name) != getattr(self.cfg, name)
                )
                if changed:
                    log.warning(
                        "daemon config settings changed that a reload does not apply: restart aofd to apply",
                        settings=changed,
                    )
                self.cfg = self.cfg.model_copy(update={"substitution": new_cfg.substitution})
                if self.reconciler is not None:
                    self.reconciler.set_allow(new_cfg.substitution.allow)
        self.request_reconcile(None)
        if self.reconciler is None or not self.reconciler.first_applied.is_set():
            # Not ready yet: READY=1 must wait for the first applied revision (_announce_ready).
            self.notifier.status("reloaded; waiting for the first good revision")
            return
        applied = self.reconciler.applied
        self.notifier.send("READY=1", f"STATUS=serving revision {applied.revision if applied else '-'}")

    def request_reconcile(self, source: str | None) -> list[str]:
        woke = []
        for src in self.sources:
            if source is None or src.name == source:
                src.wake()
                woke.append(src.name)
        if self.reconciler is not None and woke:
            self.reconciler.request()
        return woke

    # -- watchdog ---------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Ping WATCHDOG=1 from the event loop, only while the loop and the reconciler progress."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            await self.stop.wait()
            return
        while not self.stop.is_set():
            before = self.clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=interval)
            lag = self.clock() - before - interval
            if lag > interval:
                log.warning("event loop stalled", lag_s=round(lag, 3))
                continue
            if self.healthy():
                self.notifier.watchdog()

    def healthy(self) -> bool:
        """Audit writable, runtime healthy, and no reconcile pass stuck for `WATCHDOG_STUCK_PASS_S`."""
        if self.audit is not None and self.audit.unavailable():
            return False
        started = self.reconciler.pass_started if self.reconciler is not None else None
        if started is not None and time.monotonic() - started > WATCHDOG_STUCK_PASS_S:
            return False
        return self.runtime is None or self.runtime.healthy()

    async def _audit_all(self, action: str) -> None:
        if self.runtime is None or self.reconciler is None:
            return
        applied = self.reconciler.applied
        if applied is None:
            return
        event = ports.AuditEvent(action, details={"version": __version__, "pid": os.getpid()})
        for key in applied.resources:
            if key.kind is ids.Kind.CONTEXT:
                with contextlib.suppress(errors.AofdError):
                    await self.runtime.audit.write(key.name, event)


def serve(cfg: settings.DaemonConfig, **kwargs: Any) -> int:
    daemon = Daemon(cfg, **kwargs)
    try:
        return asyncio.run(daemon.run())
    except errors.Stalled as exc:
        print(f"aofd: {exc}", flush=True)
        return 1
    except errors.AofdError as exc:
        print(f"aofd: cannot start: {exc}", flush=True)
        return 1
    except OSError as exc:  # e.g. the listen or admin address is already in use
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"aofd: cannot start: {exc.strerror or exc}{where}", flush=True)
        return 1
