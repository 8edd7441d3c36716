"""The composition root of the running daemon: builds every runtime collaborator from the config.

`Runtime` constructs, once per daemon, the pieces that outlive any revision and wires them
together: the routing `Switchboard`, dedupe cache, schedule hub, repliers, run history, rate
limits, approvals store, command runner and guard, model providers, flow engine and starter,
dispatcher, listener factory, trigger server (with the git push hook), the `Applier` the
reconciler drives, and the metrics. It owns their lifecycle (start, stop accepting, drain,
close) and nothing else: applying plans is `aofd.runtime.applier`'s, the push hook
`aofd.daemon.githook`'s, the admin view `aofd.daemon.view`'s, the audit envelope
`aofd.daemon.auditsink`'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import structlog

from aofd import errors, settings
from aofd.audit import journal, records
from aofd.daemon import auditsink, githook
from aofd.daemon import metrics as metrics_mod
from aofd.plan import diff as diff_mod
from aofd.reconcile import loop
from aofd.runtime import (
    applier,
    approvaldesk,
    approvals,
    commands,
    dedupe,
    dispatch,
    engine,
    guard,
    httpserver,
    limits,
    replies,
    routing,
    runs,
    server,
    starter,
)
from aofd.runtime.listeners import factory as listener_factory
from aofd.runtime.listeners import schedule
from aofd.runtime.providers import registry
from aofd.source import runner as source_runner
from aofd.specs import policy

log = structlog.get_logger("aofd.runtime")


def command_ledger(cfg: settings.DaemonConfig, audit: journal.AuditLog | None = None) -> commands.Ledger:
    """The commands running now: `<state_dir>/commands/` (see `aofd.runtime.commands.Ledger`);
    with `audit`, each entry records where its Context's audit log is."""
    return commands.Ledger(cfg.state_dir / "commands", log_dir=audit.log_dir if audit is not None else None)


def reap_survivors(ledger: commands.Ledger) -> list[commands.Reaped]:
    """Kill what is left of commands a previous aofd started and never saw end (it was killed).

    Call holding the state dir lock, before the audit log opens; then `close_survivors`.
    """
    found = commands.reap_survivors(ledger)
    for reaped in found:
        log.warning(
            "command left by a previous aofd",
            context=reaped.context,
            command_id=reaped.command_id,
            run_id=reaped.run_id,
            pid=reaped.pid,
            killed=reaped.killed,
            processes=reaped.processes,
            reason=reaped.reason,
        )
    return found


async def close_survivors(
    audit: journal.AuditLog, ledger: commands.Ledger, reaped: list[commands.Reaped]
) -> int:
    """Write the closing records of `reaped` commands now, before any revision is applied, and
    forget each command once they are durable; returns how many were forgotten.

    Per Context: its log is opened where it was when the command started (the ledger says; else
    `<audit_dir>/<context>`), whether or not the Context still exists, and gets
    `command.abandoned` (`killed` ...) and its runs' `interrupted`. A log that cannot be written
    keeps the entries (logged; the next start tries again, reporting the same).
    """
    by_context: dict[tuple[str, str], list[commands.Reaped]] = {}
    for one in reaped:
        by_context.setdefault((one.context, one.audit_dir), []).append(one)
    settled = 0
    for (context, where), group in sorted(by_context.items()):
        try:
            await audit.close_leftovers(
                context, {r.command_id: r.audit_fields() for r in group}, log_path=where or None
            )
        except errors.AofdError as exc:
            log.warning(
                "commands left by a previous aofd not closed in the audit log; kept for the next start",
                context=context,
                commands=len(group),
                error=str(exc),
            )
            continue
        for one in group:
            ledger.remove(one.command_id)
            settled += 1
    return settled


class Runtime:
    """Everything that runs flows, built from the daemon config; `apply` is the reconciler's Applier."""

    def __init__(
        self,
        cfg: settings.DaemonConfig,
        *,
        audit: journal.AuditLog,
        sources: list[source_runner.Source],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sources = {s.name: s for s in sources}
        self.journal = audit
        env = dict(os.environ if environ is None else environ)
        hmac_key = githook.read_secret(cfg.audit.hmac_key_file)
        self.audit = auditsink.AuditAdapter(audit, redactor=records.ArgvRedactor(key=hmac_key))
        self.counters = metrics_mod.Counters()
        self.switchboard = routing.Switchboard()
        self.dedupe = dedupe.DedupeCache()
        self.scheduler = schedule.ScheduleHub()
        self.replier = replies.MultiReplier(lookup=self.switchboard.replier)
        self.history = runs.RunHistory(capacity=cfg.run_history)
        self.limits = limits.RateLimits()
        self.approvals = approvals.ApprovalStore()
        cache_dir = Path(env.get("CACHE_DIRECTORY") or cfg.state_dir / "cache")
        self.runner = commands.CommandRunner(
            executables=cfg.executables,
            cache_dir=cache_dir,
            work_dir=cfg.state_dir / "work",
            ledger=command_ledger(cfg, audit),
        )
        self.policies: dict[str, policy.GuardPolicy] = {}
        self.desk = approvaldesk.ApprovalDesk(
            store=self.approvals, audit=self.audit, prompter=approvaldesk.ChatPrompter(self.replier)
        )
        self.guard = guard.CommandGuard(
            runner=self.runner,
            limits=self.limits,
            approvals=self.approvals,
            audit=self.audit,
            desk=self.desk,
            policy_provider=self.policies.get,
            on_refused=self.counters.refused,
        )
        self.providers = registry.Providers(models=cfg.models, environ=env)
        self.engine = engine.Engine(
            providers=self.providers,
            commands=self.guard,
            replier=self.replier,
            history=self.history,
            approvals=engine.StoreApprovals(desk=self.desk, replier=self.replier),
            audit=self.audit,
            admission=self.guard,
        )
        self.starter = starter.FlowStarter(
            engine=self.engine, grace=cfg.drain_grace_seconds, on_finished=self._run_finished
        )
        self.dispatcher = dispatch.Dispatcher(
            switchboard=self.switchboard,
            starter=self.starter,
            replier=self.replier,
            on_event=self.counters.event_received,
            on_not_run=self.counters.event_not_run,
            audit=self.audit,
        )
        self.factory = listener_factory.ListenerFactory(
            platforms=cfg.platforms,
            dispatcher=self.dispatcher,
            dedupe=self.dedupe,
            audit=self.audit,
            approvals=guard.Decider(self.guard),
            scheduler=self.scheduler,
            on_rejected=self.counters.event_rejected,
        )
        self.applier = applier.Applier(
            switchboard=self.switchboard,
            build=self.factory,
            providers=self.providers,
            audit_logs=audit,
            policies=self.policies,
            limits=self.limits,
            starter=self.starter,
            credential_plugins=cfg.executables.allowed_credential_plugins,
            drain_grace=cfg.drain_grace_seconds,
        )
        # Connection limits and counters of the two HTTP listeners (the admin one is started by main).
        self.http_stats = {"webhook": httpserver.Stats(), "admin": httpserver.Stats()}
        self.admin_limits = http_limits(cfg.http, admin=True)
        self.server = server.TriggerServer(
            switchboard=self.switchboard,
            listen=cfg.listen,
            limits=http_limits(cfg.http),
            stats=self.http_stats["webhook"],
        )
        self.server.add_hook(
            "git", githook.GitHook(sources={s.name: s for s in cfg.sources}, wake=self._wake_source)
        )
        self.reconciler: loop.Reconciler | None = None
        self.metrics = metrics_mod.Metrics(self._samples)
        self._executable_problems = commands.check_executables(cfg.executables)

    def attach(self, reconciler: loop.Reconciler) -> None:
        self.reconciler = reconciler

    # -- the reconciler's Applier -----------------------------------------------------------

    async def apply(self, plan: diff_mod.Plan) -> applier.ApplyOutcome:
        return await self.applier.apply(plan)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, listen: str) -> str:
        for problem in self._executable_problems:
            log.warning("executable problem", problem=problem)
        self.scheduler.start()
        await self.server.start()
        return f"{self.server.host}:{self.server.port}"

    async def stop_accepting(self) -> None:
        """Stop taking events: close the trigger server (in-flight requests finish)."""
        await self.server.stop()

    def abort_connections(self) -> int:
        """A hard stop: drop the trigger server's open connections (see `stop_accepting`)."""
        return self.server.abort_connections()

    async def drain(self, grace: float) -> None:
        """Let runs in flight finish within `grace` seconds. Pending approvals end at once
        (`approval.cancelled`, "aofd is shutting down"; their prompts say so): nobody could
        decide them in time, and their runs go on to finish instead of holding the stop; a request
        made during the drain ends the same way as it is made."""
        self.approvals.cancel_all("aofd is shutting down", close=True)
        await self.starter.drain(grace)

    async def cancel_all(self) -> None:
        await self.starter.drain(0.0)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.stop()
        await self.applier.aclose()
        await self.starter.drain(0.0)
        self.approvals.cancel_all("aofd is shutting down")
        await self.guard.aclose()
        self.scheduler.shutdown()
        await self.dispatcher.aclose()
        await self.engine.aclose()

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.applier.applied

    # -- callbacks ----------------------------------------------------------------------------

    def _wake_source(self, name: str) -> bool:
        source = self.sources.get(name)
        if source is None:
            return False
        source.wake()
        return True

    def _run_finished(self, record: runs.RunRecord) -> None:
        self.counters.run_finished(str(record.status.value), record.input_tokens, record.output_tokens)

    def _samples(self) -> metrics_mod.Samples:
        table = self.switchboard.current
        listener_counts: dict[tuple[str, str], int] = {}
        for listener in table.listeners.values():
            key = (listener.platform, "running")
            listener_counts[key] = listener_counts.get(key, 0) + 1
        m = self.journal.metrics
        rec = self.reconciler
        sources: dict[str, dict[str, str | float]] = {}
        for name, src in self.sources.items():
            st = src.status()
            sources[name] = {"revision": st.revision or "", "failures": float(st.consecutive_failures)}
        return metrics_mod.Samples(
            applied_revision=rec.applied.revision if rec is not None and rec.applied is not None else "",
            ready=self.ready(),
            sources=sources,
            listeners=listener_counts,
            events_received=dict(self.counters.received),
            events_rejected=dict(self.counters.rejected),
            http_connections={name: st.open for name, st in self.http_stats.items()},
            http_closed={
                (name, reason): n for name, st in self.http_stats.items() for reason, n in st.closed.items()
            },
            http_accept_errors={
                (name, error): n
                for name, st in self.http_stats.items()
                for error, n in st.accept_errors.items()
            },
            events_not_run=dict(self.counters.not_run),
            runs=dict(self.counters.runs),
            model_tokens=dict(self.counters.tokens),
            ratelimit_refusals=dict(self.counters.refusals),
            runs_active=self.starter.running,
            approvals_pending=len(self.approvals.pending()),
            audit_records=m.records_total,
            audit_failures=m.failures_total,
            audit_durable_latency=metrics_mod.HistogramSample(
                m.durable_latency.cumulative(), m.durable_latency.sum, m.durable_latency.count
            ),
            audit_grouped_latency=metrics_mod.HistogramSample(
                m.grouped_latency.cumulative(), m.grouped_latency.sum, m.grouped_latency.count
            ),
        )


def http_limits(spec: settings.HttpSpec, *, admin: bool = False) -> httpserver.Limits:
    """The `http:` settings as one listener's `httpserver.Limits` (the admin one has its own cap)."""
    return httpserver.Limits(
        header_timeout=spec.header_timeout,
        body_timeout=spec.body_timeout,
        keepalive_timeout=spec.keepalive_timeout,
        write_timeout=spec.write_timeout,
        max_header_bytes=spec.max_header_bytes,
        max_connections=(spec.admin_max_connections if admin else spec.max_connections)
        or httpserver.default_max_connections(admin=admin),
    )
