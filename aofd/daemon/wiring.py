"""The composition root of the running daemon: builds every runtime collaborator from the config.

`Runtime` constructs, once per daemon, the pieces that outlive any revision and wires them
together: the routing `Switchboard`, dedupe cache, schedule hub, repliers, run history, rate
limits, approvals store, command runner and guard, MCP server pool, model providers, flow
engine and starter, dispatcher, listener factory, trigger server (with the git push hook), the `Applier` the
reconciler drives, and the metrics. It owns their lifecycle (start, stop accepting, drain,
close) and nothing else: applying plans is `aofd.runtime.applier`'s, the push hook
`aofd.daemon.githook`'s, the admin view `aofd.daemon.view`'s, the audit envelope
`aofd.daemon.auditsink`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from aofd import __version__, errors, settings
from aofd.audit import journal, records, redact
from aofd.daemon import auditsink, githook
from aofd.daemon import metrics as metrics_mod
from aofd.plan import diff as diff_mod
from aofd.reconcile import loop
from aofd.runtime import (
    applier,
    approvaldesk,
    approvals,
    claims,
    cluster,
    commands,
    dedupe,
    dispatch,
    engine,
    guard,
    httpserver,
    limits,
    mcpservers,
    replies,
    routing,
    runs,
    server,
    starter,
)
from aofd.runtime import memory as memory_mod
from aofd.runtime.listeners import factory as listener_factory
from aofd.runtime.listeners import schedule
from aofd.runtime.providers import registry
from aofd.source import runner as source_runner
from aofd.specs import http_policy, policy

log = structlog.get_logger("aofd.runtime")
MEMORY_SWEEP_SECONDS = 3600.0
"""How often conversation memory is swept of expired turns besides after an apply."""


def audit_origin(cfg: settings.DaemonConfig) -> records.Origin:
    """Who this daemon's audit lines say wrote them: a replica of a set (`cluster:`) adds its
    member (`service.node.name`, also in its segment names) and the set (`aofd.cluster.name`)."""
    if cfg.cluster is None:
        return records.Origin(service_version=__version__)
    return records.Origin(
        service_version=__version__, member=cfg.cluster.member, cluster_name=cfg.cluster.name
    )


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
        self.audit = auditsink.AuditAdapter(
            audit, redactor=records.ArgvRedactor(key=hmac_key), origin=audit_origin(cfg)
        )
        self.counters = metrics_mod.Counters()
        self.switchboard = routing.Switchboard()
        self.dedupe = dedupe.DedupeCache()
        # Replicas (`cluster:`): this process's etcd adapter, started by `main` before the first
        # apply; None on a single host (etcd is then never imported).
        self.coordinator = (
            cluster.Coordinator(cfg.cluster, info={"version": __version__})
            if cfg.cluster is not None
            else None
        )
        self.claims = claims.Claims(self.dedupe, self.coordinator, observe=self.counters.claim_observed)
        self.scheduler = schedule.ScheduleHub()
        self.replier = replies.MultiReplier(lookup=self.switchboard.replier)
        self.history = runs.RunHistory(capacity=cfg.run_history)
        # Replicas: limits and approvals count and decide across the set (etcd); they start
        # following etcd on first use (`start`/`aclose` when wired in the lifecycle).
        self.limits: limits.RateLimits = (
            limits.SharedLimits(self.coordinator) if self.coordinator is not None else limits.RateLimits()
        )
        self.approvals: approvals.ApprovalStore = (
            approvals.SharedApprovals(self.coordinator)
            if self.coordinator is not None
            else approvals.ApprovalStore()
        )
        cache_dir = Path(env.get("CACHE_DIRECTORY") or cfg.state_dir / "cache")
        self.runner = commands.CommandRunner(
            executables=cfg.executables,
            cache_dir=cache_dir,
            work_dir=cfg.state_dir / "work",
            ledger=command_ledger(cfg, audit),
        )
        # MCP servers per Context (`aofd.runtime.mcpservers`): the command guard's environment,
        # the pinned MCP servers (never a guard tool), listed in the command ledger while they
        # run; started at apply. Endpoints pass the daemon's outbound HTTP policy.
        self.mcp = mcpservers.McpPool(
            build_env=self.runner.build_env,
            servers=cfg.executables.mcp_servers,
            executables=cfg.executables.paths,
            endpoints=http_policy.HttpPolicy(
                allowed_hosts=frozenset(h.lower() for h in cfg.executables.mcp_endpoint_hosts),
                allow_loopback=cfg.executables.mcp_allow_loopback,
            ),
            state_dir=cfg.state_dir,
            ledger=command_ledger(cfg, audit),
            on_change=self._mcp_changed,
            drain_grace=cfg.drain_grace_seconds,
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
            mcp=self.mcp,
            redact=records.redact_argument,  # MCP arguments as approvers and the audit log see them
        )
        self.providers = registry.Providers(models=cfg.models, environ=env)
        # Conversations (`<state_dir>/memory/`): redacted with the audit log's patterns, the
        # Context's secret-looking env values and the daemon's own secrets before they are stored;
        # swept (expired turns, Contexts no longer in the revision) after an apply and hourly.
        self._daemon_secrets = tuple(v for k, v in env.items() if redact.is_secret_key(k) and v)
        self.memory = memory_mod.Memory(
            state_dir=cfg.state_dir,
            redact=redact.redact_text,
            secrets_of=self._memory_secrets,
            audit=self.audit,
            known_context=lambda name: name in self.policies,
        )
        self._memory_contexts: frozenset[str] | None = None
        self._memory_sweep = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self.engine = engine.Engine(
            providers=self.providers,
            commands=self.guard,
            replier=self.replier,
            history=self.history,
            approvals=engine.StoreApprovals(desk=self.desk, replier=self.replier),
            audit=self.audit,
            admission=self.guard,
            memory=self.memory,
            mcp=self.mcp,
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
            claims=self.claims,
            coordinator=self.coordinator,
            on_not_run=self.counters.event_not_run,
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
            mcp=self.mcp,
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
        outcome = await self.applier.apply(plan)
        if self.coordinator is not None and plan.compiled is not None:
            # `aofctl status` on any replica shows the revision each member serves.
            self.coordinator.set_member_info(revision=plan.compiled.revision)
        if plan.compiled is not None:  # the revision's Contexts: memory of any other is swept away
            contexts = frozenset(plan.compiled.contexts)
            if contexts != self._memory_contexts:
                self._memory_contexts = contexts
                self._memory_sweep.set()
        return outcome

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, listen: str) -> str:
        for problem in self._executable_problems:
            log.warning("executable problem", problem=problem)
        # Replicas: join the set before the first apply; without a session within `dial_timeout`
        # aofd serves but is not ready (webhooks answer 503) and keeps trying. A member name held
        # by another running replica raises `ConfigError` (exit 1).
        if self.coordinator is not None and not await self.coordinator.start():
            log.warning(
                "cluster: etcd unreachable; not ready until it answers",
                error=self.coordinator.state().last_error,
            )
        await self.approvals.start()  # a replica set's store follows etcd from here
        self.scheduler.start()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_memory(), name="memory-sweep")
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
        if self.coordinator is not None:
            # Hand the singleton duties (schedules, polling) to another replica now, not after
            # the drain; the session stays, so the runs' claims and approvals keep working.
            try:
                await self.coordinator.retire()
            except errors.CoordinatorUnavailable as exc:
                log.warning("cluster.resign_failed", error=str(exc))
        await self.starter.drain(grace)

    async def cancel_all(self) -> None:
        await self.starter.drain(0.0)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        with contextlib.suppress(Exception):
            await self.server.stop()
        await self.applier.aclose()
        await self.starter.drain(0.0)
        self.approvals.cancel_all("aofd is shutting down")
        await self.mcp.aclose()  # after the runs, before the guard: no call is left to audit
        await self.guard.aclose()
        self.scheduler.shutdown()
        await self.dispatcher.aclose()
        await self.engine.aclose()
        # A replica set's stores: stop following etcd, write the buffered token counts.
        await self.approvals.aclose()
        await self.limits.aclose()
        if self.coordinator is not None:
            # Last, after the runs: resign and revoke the session so the others take over now.
            await self.coordinator.aclose()

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.applier.applied

    def cluster_unready(self) -> str:
        """Why this replica is not ready for the set ('' when it is, or on a single host): without
        a valid session it cannot claim deliveries, so a load balancer should send them elsewhere."""
        if self.coordinator is None:
            return ""
        st = self.coordinator.state()
        if st.etcd_up:
            return ""
        since = _iso(st.last_error_at) if st.last_error_at is not None else "start"
        return f"cluster: etcd unreachable since {since}"

    def cluster_status(self) -> dict[str, Any] | None:
        """The `cluster` block of `/api/v1/status` (None on a single host)."""
        if self.coordinator is None:
            return None
        st = self.coordinator.state()
        members = [
            {
                "member": str(m.get("member", "")),
                "revision": str(m.get("revision", "") or ""),
                "version": str(m.get("version", "") or ""),
                "admin": str(m.get("admin", "") or ""),
                "updatedAt": _iso(float(at)) if isinstance(at := m.get("updated_at"), int | float) else "",
            }
            for m in st.members
        ]
        return {
            "name": st.name,
            "member": st.member,
            "leader": st.leader or "",
            "leaderSince": _iso(st.leader_since) if st.leader_since is not None else "",
            "isLeader": st.is_leader,
            "leaseValidFor": round(st.lease_valid_for, 3),
            "etcd": {
                "endpoints": list(st.endpoints),
                "up": st.etcd_up,
                "revision": st.revision,
                "lastError": st.last_error or "",
                "lastErrorAt": _iso(st.last_error_at) if st.last_error_at is not None else "",
            },
            "members": sorted(members, key=lambda m: m["member"]),
        }

    # -- callbacks ----------------------------------------------------------------------------

    def _mcp_changed(self) -> None:
        """An MCP server failed or recovered: re-apply so its bindings' stall reasons are current."""
        if self.reconciler is not None:
            self.reconciler.retry_soon()

    def _memory_secrets(self, context: str) -> list[str]:
        """The literal secrets conversation memory redacts besides the audit patterns: the values of the
        Context's `env` entries whose name looks secret (`redact.is_secret_key`) and the daemon's own
        (environment variables named like tokens and keys: model keys, trigger tokens and secrets)."""
        found = self.policies.get(context)
        env = [value for name, value in found.env if redact.is_secret_key(name)] if found is not None else []
        return [*env, *self._daemon_secrets]

    async def _sweep_memory(self) -> None:
        """Sweep conversation memory after an apply changed the set of Contexts, and hourly."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._memory_sweep.wait(), MEMORY_SWEEP_SECONDS)
            self._memory_sweep.clear()
            if self._memory_contexts is None:
                continue  # nothing applied yet: every Context would look removed
            try:
                removed = await self.memory.sweep(self._memory_contexts)
            except Exception as exc:  # best effort: the next sweep tries again
                log.warning("memory.sweep_failed", error=type(exc).__name__)
            else:
                if removed:
                    log.info("memory.swept", removed=removed)

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
            **self._cluster_samples(),
        )

    def _cluster_samples(self) -> dict[str, Any]:
        """The replica set's part of the metrics (nothing on a single host)."""
        if self.coordinator is None:
            return {}
        st = self.coordinator.state()
        lat = self.counters.claim_latency
        return {
            "cluster": metrics_mod.ClusterSample(
                etcd_up=st.etcd_up,
                is_leader=st.is_leader,
                leader_changes=st.leader_changes,
                lease_valid_seconds=st.lease_valid_for,
                approvals_unrecorded=getattr(self.approvals, "unrecorded", 0),
            ),
            "cluster_claims": dict(self.counters.claims),
            "cluster_claim_latency": metrics_mod.HistogramSample(lat.cumulative(), lat.sum, lat.count),
        }


def _iso(wall: float) -> str:
    return (
        datetime.datetime.fromtimestamp(wall, datetime.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
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
