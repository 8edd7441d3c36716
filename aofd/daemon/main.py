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
cancelled, and exit 0; a second SIGTERM/SIGINT stops at once (audit lines are written whole
or not at all, so nothing is torn either way), also while a listener closes: its open
connections are dropped instead of waiting out its handlers (`_close_listener`). This holds
in every phase, also before a first revision was applied: the sources (a fetch in flight is
abandoned), the watchdog and the readiness waiter are cancelled at the first signal, a
reconcile pass in flight gets `PASS_STOP_GRACE_S`.

Before the audit log opens, the commands a killed predecessor left running are killed
(`wiring.reap_survivors`); right after it opens, each one's Context log, where it was, gets
`command.abandoned` (`killed`) and `agent.run.finished` (`interrupted`) for its run, and the
command leaves the ledger once that is durable (`wiring.close_survivors`). Other runs left
open are closed when their Context's log opens (`aofd.audit.segment`, `.open-runs/`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import structlog

from aofd import __version__, errors, settings
from aofd.audit import journal, seal, segment
from aofd.daemon import admin, digestkey, heap, notify, variables, view, wiring
from aofd.daemon import config as config_mod
from aofd.plan import compiler
from aofd.reconcile import loop, state
from aofd.resources import ids
from aofd.runtime import ports
from aofd.source import runner as source_runner

log = structlog.get_logger("aofd.daemon")

WATCHDOG_STUCK_PASS_S = 300.0
PASS_STOP_GRACE_S = 5.0
"""How long a stop waits for a reconcile pass in flight to end before cancelling it."""
HARD_STOP_CLOSE_S = 0.5
"""After a second stop signal: how long a listener's close may still take once its
connections are dropped, before it is abandoned."""


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
        self.load_pause = heap.LoadPause()  # the collector, paused through the cold load
        self.store = state.StateStore(cfg.state_dir)
        self.lock = state.StateLock(cfg.state_dir)
        self.audit: journal.AuditLog | None = None
        self.sources: list[source_runner.Source] = []
        self.runtime: wiring.Runtime | None = None
        self.reconciler: loop.Reconciler | None = None
        self.endpoints: dict[str, str] = {}
        self._admin_token: str | None = None
        self._admin_tokens: dict[str, str] = {}  # operators' named tokens (admin_api.tokens)

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        # Before anything starts: an admin API others can reach without a token is refused.
        self._admin_token = admin.load_token(self.cfg.admin_api)
        self._admin_tokens = admin.load_named_tokens(self.cfg.admin_api, unnamed=self._admin_token)
        admin.check_exposure(self.cfg.admin, token=self._admin_token, named_tokens=len(self._admin_tokens))
        self.lock.acquire()
        try:
            return await self._run_locked()
        finally:
            self.lock.release()

    async def _run_locked(self) -> int:
        heap.limit_malloc_arenas()  # before the first worker thread: keeps the RSS flat across edits
        self.store.ensure()
        # Before anything else starts: kill what a killed predecessor's commands left running.
        ledger = wiring.command_ledger(self.cfg)
        survivors = wiring.reap_survivors(ledger)
        self.cfg.audit_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        a = self.cfg.audit
        try:
            keychain = seal.load_for_daemon(self.cfg.state_dir, interval=int(a.seal_interval))
        except seal.SealStateError as exc:
            raise errors.AuditUnavailable(str(exc)) from None
        if keychain is None:
            log.warning(
                "audit sealing is off: no sealing state; run `aofctl audit setup-keys --state-dir "
                f"{self.cfg.state_dir}` to make the audit logs tamper-evident",
                state=str(seal.state_path(self.cfg.state_dir)),
            )
        else:
            log.info("audit sealing on", chain=keychain.chain, epoch_seconds=keychain.interval)
        self.audit = journal.AuditLog(
            audit_dir=self.cfg.audit_dir,
            options=segment.JournalOptions(
                max_segment_bytes=a.max_segment_bytes,
                max_segment_age=a.max_segment_age,
                retention_seconds=a.retention,
                group_commit_interval=a.group_commit_interval,
                write_timeout=a.write_timeout,
            ),
            origin=wiring.audit_origin(self.cfg),
            keychain=keychain,
        )
        await self.audit.open()
        self.audit.start_sealing()
        # Their closing records, now (a revision may never be applied, the Context may be gone);
        # a command is forgotten once its record is durable.
        await wiring.close_survivors(self.audit, ledger, survivors)
        self.notifier.status("loading the last good revision")
        repo_limits = config_mod.repo_limits(self.cfg)
        self.sources = [
            source_runner.build_source(spec, state_dir=self.cfg.state_dir, limits=repo_limits)
            for spec in self.cfg.sources
        ]
        self.runtime = wiring.Runtime(self.cfg, audit=self.audit, sources=self.sources)
        # An SDK import (tens of thousands of functions and classes) is kept for good: frozen too.
        self.runtime.providers.on_warmed = self.load_pause.loaded
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
            digest_key=digestkey.load_or_create(self.cfg.state_dir),
            limits=repo_limits,
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
            access = self.cfg.admin_api
            admin_runner, admin_address = await admin.start_site(
                admin.AdminApi(
                    view.AdminView(self),
                    token=self._admin_token,
                    named_tokens=self._admin_tokens,
                    metrics_open=access.metrics_open,
                    max_diff_bytes=access.max_diff_bytes,
                    limits=config_mod.repo_limits(self.cfg),
                ),
                self.cfg.admin,
                socket_mode=access.socket_mode,
                socket_group=access.socket_group,
                limits=self.runtime.admin_limits,
                stats=self.runtime.http_stats["admin"],
            )
            if self._admin_token is None and not self._admin_tokens:
                who = "the socket's group" if admin_address.startswith("unix:") else "any local user"
                log.warning(f"admin API has no token, so {who} can reconcile and diff", admin=admin_address)
            self.endpoints["admin"] = admin_address
            if self.runtime.coordinator is not None:  # shown with this member in `aofctl status`
                self.runtime.coordinator.set_member_info(admin=admin_address)
            self.endpoints["pid"] = str(os.getpid())
            self.store.save_endpoints(self.endpoints)
            self.load_pause.begin()
            restored = self.reconciler.restore()
            self._mark_applied()
            async with asyncio.TaskGroup() as tg:
                reconciling = tg.create_task(self.reconciler.run(stop=self.stop), name="reconciler")
                # Tasks that hold nothing to finish: cancelled as soon as a stop signal arrives
                # (a fetch in flight may be a minute from its timeout; its thread is abandoned).
                idle = [
                    tg.create_task(
                        source.run(
                            on_snapshot=self._on_snapshot, stop=self.stop, on_rejected=self._on_rejected
                        ),
                        name=f"source:{source.name}",
                    )
                    for source in self.sources
                ]
                idle.append(tg.create_task(self._watchdog(), name="watchdog"))
                idle.append(tg.create_task(self._announce_ready(restored), name="readiness"))
                await self.stop.wait()
                for task in idle:
                    task.cancel()
                await self._shut_down(reconciling)
        finally:
            self.load_pause.close()
            with contextlib.suppress(Exception):
                await self._audit_all("daemon.stopping")
            if self.runtime is not None:
                await self.runtime.aclose()
            if admin_runner is not None:
                await self._close_listener("admin", admin_runner.stop(), admin_runner.abort_connections)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop_.remove_signal_handler(sig)
            if self.audit is not None:
                await self.audit.aclose()
        log.info("stopped")
        return 0

    async def _shut_down(self, reconciling: asyncio.Task[None]) -> None:
        """After the first stop signal: stop taking events, drain runs, let a pass in flight end.

        Runs get `drain_grace_seconds`, a reconcile pass in flight `PASS_STOP_GRACE_S`; a second
        signal (`hard_stop`) cancels both at once.
        """
        assert self.runtime is not None
        self.notifier.stopping("draining runs in flight")
        log.info("stopping: no new events; draining runs", grace_s=self.cfg.drain_grace_seconds)
        hard = asyncio.create_task(self.hard_stop.wait())
        try:
            await self._close_listener(
                "webhook", self.runtime.stop_accepting(), self.runtime.abort_connections
            )
            drain = asyncio.create_task(self.runtime.drain(self.cfg.drain_grace_seconds))
            await asyncio.wait({drain, hard}, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                log.warning("second stop signal: cancelling runs now")
                drain.cancel()
                await self.runtime.cancel_all()
            await asyncio.gather(drain, return_exceptions=True)
            if not reconciling.done() and not hard.done():
                await asyncio.wait(
                    {reconciling, hard}, timeout=PASS_STOP_GRACE_S, return_when=asyncio.FIRST_COMPLETED
                )
            if not reconciling.done():
                log.warning("stopping: cancelling the reconcile pass in flight")
                reconciling.cancel()
        finally:
            hard.cancel()
            await asyncio.gather(hard, return_exceptions=True)

    async def _close_listener(
        self, name: str, closing: Coroutine[Any, Any, object], abort: Callable[[], int]
    ) -> None:
        """Await `closing` (a listener's stop, which waits for handlers in progress), unless a
        second stop signal comes first or came already: then drop its connections with `abort` and
        give the close `HARD_STOP_CLOSE_S` more before abandoning it."""
        task = asyncio.create_task(closing, name=f"close:{name}")
        hard = asyncio.create_task(self.hard_stop.wait())
        try:
            await asyncio.wait({task, hard}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                dropped = abort()
                log.warning(
                    "second stop signal: closing open connections now", listener=name, dropped=dropped
                )
                await asyncio.wait({task}, timeout=HARD_STOP_CLOSE_S)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return
            task.result()
        finally:
            for pending in (task, hard):
                pending.cancel()
            await asyncio.gather(task, hard, return_exceptions=True)

    async def _announce_ready(self, restored: bool) -> None:
        assert self.reconciler is not None
        self.notifier.status("restored last good revision; applying" if restored else "waiting for sources")
        # Wait for the first applied revision, or a stop signal (the TaskGroup cancels this task).
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

    async def _on_rejected(self, source: str, details: Mapping[str, str]) -> None:
        """A source refused a fetched revision (signature verification): audit it."""
        assert self.reconciler is not None
        await self.reconciler.source_rejected(source, details)

    def _variables(self) -> dict[str, str]:
        return variables.collect(self.cfg.substitution.allow)

    def _mark_applied(self) -> None:
        """Tell each source which of its revisions is in force, as the state dir records it (at
        start: the restored one): a git source that verifies signatures refuses a new commit
        that does not descend from it (`verify.allow_rollback`)."""
        assert self.reconciler is not None
        for source in self.sources:
            record = self.reconciler.records.get(source.name)
            source.mark_applied(ids.Revision(record.last_applied) if record and record.last_applied else None)

    async def _on_pass(self, summary: Any) -> None:
        assert self.reconciler is not None
        self._mark_applied()
        # The first pass that is not waiting for another source ends the cold load (the loaded
        # heap frozen), once the SDKs it needs are imported too; later ones freeze what they keep.
        self.load_pause.pass_ended(
            applied=summary.outcome == "applied",
            still_loading=summary.outcome == "waiting"
            or (self.runtime is not None and self.runtime.providers.warming),
        )
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

    def admin_tokens(self) -> tuple[str, ...]:
        """The admin API's tokens (the status page hides them wherever run output echoes one)."""
        unnamed = (self._admin_token,) if self._admin_token is not None else ()
        return unnamed + tuple(self._admin_tokens.values())

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
