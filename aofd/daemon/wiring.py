"""The daemon's runtime: builds the guard, flow engine, listeners and trigger server from the
daemon config, and applies a planned revision to them (the reconciler's `Applier`).

Apply is make-before-break (DESIGN.md section 2):
  1. decide what cannot run and why (a Context whose policy or kubeconfig is unusable, an
     agent whose model provider is missing, a trigger type without a listener) - those
     resources are Stalled with a reason, the rest of the revision still applies;
  2. build and start the listeners whose trigger config changed (unchanged ones are reused,
     the same objects), publish the new Context policies, swap the routing table in one
     assignment, then drain and stop the replaced listeners;
  3. runs of bindings that no longer exist finish within the grace period or are cancelled,
     and that outcome is recorded on the run.

State that must outlive a swap (rate-limit windows, pending approvals, dedupe, audit files)
is held here, keyed by Context or delivery id, never by the resource objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from aofd import __version__, errors, settings
from aofd.audit import journal, records
from aofd.daemon import metrics as metrics_mod
from aofd.plan import desired as desired_mod
from aofd.plan import diff as diff_mod
from aofd.reconcile import loop
from aofd.resources import ids, snapshot
from aofd.runtime import (
    approvals,
    commands,
    dedupe,
    engine,
    guard,
    limits,
    policy,
    replies,
    router,
    routing,
    runs,
    server,
    starter,
    verify,
)
from aofd.runtime.listeners import base as listener_base
from aofd.runtime.listeners import factory as listener_factory
from aofd.runtime.listeners import schedule
from aofd.runtime.providers import registry
from aofd.source import hooks

if TYPE_CHECKING:
    from aofd.daemon.main import Daemon
    from aofd.source import runner as source_runner

log = structlog.get_logger("aofd.runtime")

MAX_GIT_HOOK_BYTES = 1024 * 1024


class AuditAdapter:
    """`ports.AuditSink` over the journal: completes the ECS envelope and redacts argv secrets."""

    def __init__(self, journal_: journal.AuditLog, *, redactor: records.ArgvRedactor) -> None:
        self._journal = journal_
        self._redactor = redactor
        self._host = socket.gethostname()

    async def write(self, context: str, record: Mapping[str, Any], *, durable: bool = False) -> None:
        out = dict(record)
        out.setdefault("ecs", {"version": records.ECS_VERSION})
        event = dict(out.get("event") or {})
        event.setdefault("kind", "event")
        event.setdefault("dataset", "aofd.audit")
        event.setdefault("provider", "aofd")
        out["event"] = event
        out.setdefault("service", {"name": "aofd", "version": __version__})
        out.setdefault("host", {"hostname": self._host})
        process = out.get("process")
        if isinstance(process, Mapping) and isinstance(process.get("args"), list | tuple):
            proc = dict(process)
            proc["args"] = list(self._redactor.redact([str(a) for a in proc["args"]]))
            proc["args_count"] = len(proc["args"])
            out["process"] = proc
            out.setdefault("command", " ".join(proc["args"]))
        out.setdefault("status", event.get("outcome", "unknown"))
        await self._journal.write(context, out, durable=durable)


class _Counters:
    """Monotonic counters for `/metrics` that the runtime modules do not keep themselves."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.tokens: dict[str, int] = {"input": 0, "output": 0}
        self.refusals: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.rejected: dict[tuple[str, str], int] = {}

    def event_rejected(self, platform: str, reason: str) -> None:
        self.rejected[(platform, reason)] = self.rejected.get((platform, reason), 0) + 1

    def run_finished(self, record: runs.RunRecord) -> None:
        status = str(record.status.value)
        self.runs[status] = self.runs.get(status, 0) + 1
        self.tokens["input"] += record.input_tokens
        self.tokens["output"] += record.output_tokens


class _CountingGuard(guard.CommandGuard):
    """The guard, counting rate-limit refusals per Context for `/metrics`."""

    counters: _Counters

    async def admit(
        self, context_name: str, *, user: Any, run_id: str, agent: str = ""
    ) -> limits.Lease | guard.Denial:
        result = await super().admit(context_name, user=user, run_id=run_id, agent=agent)
        if isinstance(result, guard.Denial):
            self.counters.refusals[context_name] = self.counters.refusals.get(context_name, 0) + 1
        return result


class _CountingDispatcher(router.Dispatcher):
    """The router's dispatcher, counting verified, de-duplicated events per platform."""

    counters: _Counters

    def dispatch(self, message: Any, *, reply_on_no_match: bool = False) -> router.RouteOutcome:
        platform = str(getattr(message, "platform", "unknown"))
        self.counters.received[platform] = self.counters.received.get(platform, 0) + 1
        return super().dispatch(message, reply_on_no_match=reply_on_no_match)


class Runtime:
    """Everything that runs flows; implements `loop.Applier`."""

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
        hmac_key = _read_optional(cfg.audit.hmac_key_file)
        self.audit = AuditAdapter(audit, redactor=records.ArgvRedactor(key=hmac_key))
        self.switchboard = routing.Switchboard()
        self.dedupe = dedupe.DedupeCache()
        self.scheduler = schedule.ScheduleHub()
        self.replier = replies.MultiReplier(switchboard=self.switchboard)
        self.history = runs.RunHistory(capacity=cfg.run_history)
        self.limits = limits.RateLimits()
        self.approvals = approvals.ApprovalStore()
        cache_dir = Path(env.get("CACHE_DIRECTORY") or cfg.state_dir / "cache")
        self.runner = commands.CommandRunner(
            executables=cfg.executables, cache_dir=cache_dir, work_dir=cfg.state_dir / "work"
        )
        self._policies: dict[str, policy.GuardPolicy] = {}
        self.counters = _Counters()
        self.guard = _CountingGuard(
            runner=self.runner,
            limits=self.limits,
            approvals=self.approvals,
            audit=self.audit,
            approval_requester=self._ask_approval,
            policy_provider=self._policies.get,
        )
        self.guard.counters = self.counters
        self.providers = registry.Providers(models=cfg.models, environ=env)
        self.engine = engine.Engine(
            providers=self.providers,
            commands=self.guard,
            replier=self.replier,
            history=self.history,
            approvals=engine.StoreApprovals(
                store=self.approvals, requester=self._ask_approval, replier=self.replier
            ),
            audit=self.audit,
            admission=self.guard,
        )
        self.starter = starter.FlowStarter(
            engine=self.engine, grace=cfg.drain_grace_seconds, on_finished=self.counters.run_finished
        )
        self.dispatcher = _CountingDispatcher(
            switchboard=self.switchboard, starter=self.starter, replier=self.replier
        )
        self.dispatcher.counters = self.counters
        self.factory = listener_factory.ListenerFactory(
            platforms=cfg.platforms,
            dispatcher=self.dispatcher,
            dedupe=self.dedupe,
            audit=self.audit,
            approvals=_Decider(self.guard),
            scheduler=self.scheduler,
            on_rejected=self.counters.event_rejected,
        )
        self.server = server.TriggerServer(switchboard=self.switchboard, listen=cfg.listen)
        self.server.add_hook("git", self._git_hook)
        self.reconciler: loop.Reconciler | None = None
        self.metrics = metrics_mod.Metrics(self._samples)
        self._retiring: set[asyncio.Task[None]] = set()
        self._executable_problems = commands.check_executables(cfg.executables)
        self._ready = False

    def attach(self, reconciler: loop.Reconciler) -> None:
        self.reconciler = reconciler

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

    async def drain(self, grace: float) -> None:
        await self.starter.drain(grace)

    async def cancel_all(self) -> None:
        await self.starter.drain(0.0)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.stop()
        table = self.switchboard.swap(routing.RoutingTable.empty())
        await asyncio.gather(*(x.stop(drain=0.0) for x in table.listeners.values()), return_exceptions=True)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.starter.drain(0.0)
        self.approvals.expire_all("restart")
        self.scheduler.shutdown()
        await self.dispatcher.aclose()
        await self.engine.aclose()
        await self.providers.aclose()

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    # -- apply (the reconciler's Applier) ---------------------------------------------------

    async def apply(self, desired: desired_mod.DesiredState, plan: diff_mod.Plan) -> loop.ApplyOutcome:
        stalled: dict[ids.ResourceKey, str] = {}
        reasons: dict[ids.ResourceKey, str] = {}
        policies: dict[str, policy.GuardPolicy] = {}
        tools = policy.known_tools(self.cfg.executables.paths)
        for res in desired.of_kind(ids.Kind.CONTEXT):
            pol = policy.policy_from_context(res.model)
            problems = list(policy.policy_problems(pol, tools=tools))
            problems += commands.env_problems(dict(pol.env))
            if pol.kubeconfig:
                problem = await asyncio.to_thread(
                    commands.check_kubeconfig, pol.kubeconfig, self.cfg.executables.allowed_credential_plugins
                )
                if problem:
                    problems.append(problem)
            if problems:
                stalled[res.key] = "; ".join(problems)
                reasons[res.key] = "PolicyInvalid"
            else:
                policies[res.name] = pol
        runnable: list[desired_mod.ResolvedBinding] = []
        for bound in desired.bindings.values():
            reason, problems = self._binding_problems(bound, stalled)
            if problems:
                stalled[bound.key] = "; ".join(problems)
                reasons[bound.key] = reason
            else:
                runnable.append(bound)
        await self._open_audit_logs(desired, stalled, reasons)
        transition = self._prepare(desired, runnable, stalled, reasons)
        await transition.start_new()
        self._policies.clear()
        self._policies.update(policies)
        old = self.switchboard.swap(transition.table)
        self._ready = True
        self.limits.forget(keep=set(policies))
        self._retire(transition, old)
        return loop.ApplyOutcome(stalled=stalled, reasons=reasons)

    async def _open_audit_logs(
        self,
        desired: desired_mod.DesiredState,
        stalled: dict[ids.ResourceKey, str],
        reasons: dict[ids.ResourceKey, str],
    ) -> None:
        """Every Context's audit log is open (tail recovered) before its bindings take events."""
        for res in desired.of_kind(ids.Kind.CONTEXT):
            model: Any = res.model
            audit_spec = getattr(model.spec, "audit", None)
            log_path = getattr(audit_spec, "log_path", None) if audit_spec is not None else None
            try:
                ignored = await self.journal.open_context(res.name, log_path=log_path)
            except errors.AuditUnavailable as exc:
                stalled[res.key] = f"audit log unavailable: {exc}"
                reasons[res.key] = "AuditUnavailable"
                continue
            if ignored:
                log.warning("audit log_path ignored", context=res.name, reason=ignored)

    def _binding_problems(
        self, bound: desired_mod.ResolvedBinding, stalled: Mapping[ids.ResourceKey, str]
    ) -> tuple[str, list[str]]:
        """Why `bound` cannot take events now: (a condition reason, the messages)."""
        reasons: list[str] = []
        kind = "NotRunnable"
        binding_model: Any = bound.binding.model
        if not bool(getattr(binding_model.spec, "enabled", True)):
            return "Disabled", ["disabled (enabled: false)"]
        if bound.context is None:
            reasons.append("no Context: aofd never runs a flow without one")
        elif bound.context.key in stalled:
            kind = "ContextNotReady"
            reasons.append(f"Context {bound.context.name} is stalled: {stalled[bound.context.key]}")
        if bound.trigger is None:
            reasons.append("no Trigger: only `aofctl run` can start it")
        else:
            trigger_model: Any = bound.trigger.model
            platform = str(getattr(trigger_model.spec.type, "value", trigger_model.spec.type)).lower()
            if platform not in listener_factory.LISTENERS:
                kind = "ListenerUnsupported"
                reasons.append(f"trigger type {platform} has no listener in aofd")
        try:
            plan = self.engine.prepare(bound)
        except Exception as exc:  # a flow the engine cannot run is a stalled binding, not a crash
            reasons.append(f"the flow cannot run: {exc}")
        else:
            problems = self.engine.problems(plan)
            if problems and kind == "NotRunnable":
                kind = "ProviderNotReady"
            reasons += problems
        return kind, reasons

    def _prepare(
        self,
        desired: desired_mod.DesiredState,
        runnable: list[desired_mod.ResolvedBinding],
        stalled: dict[ids.ResourceKey, str],
        reasons: dict[ids.ResourceKey, str],
    ) -> routing.Transition:
        """`routing.prepare`, stalling the bindings of a trigger whose listener cannot be built."""
        candidates = list(runnable)
        failed: dict[str, str] = {}

        def build(resource: Any) -> listener_base.Listener:
            try:
                return self.factory(resource)
            except listener_base.ListenerError as exc:
                failed[resource.name] = str(exc)
                raise

        for _ in range(len(candidates) + 1):
            failed.clear()
            try:
                return routing.prepare(
                    self.switchboard.current, revision=desired.revision, bindings=candidates, build=build
                )
            except listener_base.ListenerError:
                for name, reason in failed.items():
                    for b in candidates:
                        if b.trigger is not None and b.trigger.name == name:
                            stalled[b.key] = f"Trigger {name}: {reason}"
                            reasons[b.key] = "ListenerFailed"
                            if b.trigger.key not in stalled:
                                stalled[b.trigger.key] = reason
                                reasons[b.trigger.key] = "ListenerFailed"
                candidates = [b for b in candidates if b.key not in stalled]
        return routing.prepare(
            self.switchboard.current, revision=desired.revision, bindings=[], build=self.factory
        )

    def _retire(self, transition: routing.Transition, old: routing.RoutingTable) -> None:
        gone = {b.name for bs in old.bindings_by_trigger.values() for b in bs} - {
            b.name for bs in transition.table.bindings_by_trigger.values() for b in bs
        }

        async def retire() -> None:
            await transition.retire_old(drain=self.cfg.drain_grace_seconds)
            if gone:
                await self._finish_deleted(gone)

        task = asyncio.get_running_loop().create_task(retire(), name="retire-listeners")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _finish_deleted(self, names: set[str]) -> None:
        """Runs of deleted bindings finish within the grace period, else they are cancelled."""
        deadline = time.monotonic() + self.cfg.drain_grace_seconds
        while time.monotonic() < deadline:
            active = [r for r in self.history.active() if r.binding in names]
            if not active:
                return
            await asyncio.sleep(0.1)
        for record in self.history.active():
            if record.binding in names:
                log.warning("run of a deleted binding cancelled after the grace period", run_id=record.run_id)
                await self.starter.cancel(record.run_id, reason="binding deleted")

    # -- approvals, git push hook -----------------------------------------------------------

    async def _ask_approval(self, request: approvals.ApprovalRequest) -> None:
        if request.origin is None:
            log.warning("approval requested with no origin to ask", request_id=request.id)
            return
        summary = f"Approval needed in context {request.context} (agent {request.agent or '-'})"
        await self.replier.ask_approval(
            request.origin, request_id=request.id, summary=summary, argv=request.argv
        )

    async def _git_hook(self, request: web.BaseRequest, name: str) -> web.Response:
        source = self.sources.get(name)
        spec = next((s for s in self.cfg.sources if s.name == name), None)
        if source is None or spec is None:
            return web.Response(status=404, text="not found\n")
        if request.content_length is not None and request.content_length > MAX_GIT_HOOK_BYTES:
            return web.Response(status=413, text="too large\n")
        try:
            await listener_base.answer_expect(request)
        except verify.Rejected:
            return web.Response(status=417, text="expectation failed\n")
        body = await request.content.read(MAX_GIT_HOOK_BYTES + 1)
        if len(body) > MAX_GIT_HOOK_BYTES:
            return web.Response(status=413, text="too large\n")
        secret = _read_optional(spec.webhook_secret_file)
        if not secret:
            log.warning("git push hook refused: the source has no webhook_secret_file", source=name)
            return web.Response(status=403, text="forbidden\n")
        verdict = hooks.verify(
            secret=secret.strip(), headers=dict(request.headers), body=body, now=time.time()
        )
        if verdict is not hooks.Verdict.OK:
            log.info("git push hook rejected", source=name, reason=verdict.value)
            return web.Response(status=401, text="unauthorized\n")
        source.wake()
        return web.Response(status=202, text="accepted\n")

    # -- metrics ----------------------------------------------------------------------------

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
            sources[name] = {
                "revision": str(getattr(st, "revision", "") or ""),
                "failures": float(getattr(st, "consecutive_failures", 0) or 0),
            }
        return metrics_mod.Samples(
            applied_revision=rec.applied.revision if rec is not None and rec.applied is not None else "",
            ready=self._ready,
            sources=sources,
            listeners=listener_counts,
            events_received=dict(self.counters.received),
            events_rejected=dict(self.counters.rejected),
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


def _read_optional(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot read a secret file", path=str(path), error=exc.strerror)
        return None


class _Decider:
    """`listeners.base.ApprovalDecider` over the guard (clicks are audited there)."""

    def __init__(self, guard_: guard.CommandGuard) -> None:
        self._guard = guard_

    async def decide(self, request_id: str, user: Any, approve: bool, action_id: str) -> object:
        return await self._guard.decide(request_id, user=user, approve=approve, action_id=action_id)


class AdminView:
    """`admin.DaemonView` over the running daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    def healthy(self) -> bool:
        return self._d.healthy()

    def ready(self) -> tuple[bool, str]:
        rec = self._d.reconciler
        rt = self._d.runtime
        if rec is None or rt is None or rec.applied is None:
            return False, "no revision applied yet"
        if not rt.ready():
            return False, "listeners are not up"
        unavailable = self._d.audit.unavailable() if self._d.audit is not None else {}
        if unavailable:
            return False, f"audit unavailable for {sorted(unavailable)}"
        return True, ""

    def status(self) -> dict[str, Any]:
        rec = self._d.reconciler
        ok, why = self.ready()
        sources = []
        for src in self._d.sources:
            record = rec.records.get(src.name) if rec is not None else None
            st = src.status()
            sources.append(
                {
                    "name": src.name,
                    "lastApplied": record.last_applied if record else "",
                    "lastAttempted": record.last_attempted if record else "",
                    "lastError": (record.last_error if record else "")
                    or str(getattr(st, "last_error", "") or ""),
                    "consecutiveFailures": getattr(st, "consecutive_failures", 0),
                    "stale": bool(getattr(st, "stale", False)),
                }
            )
        return {
            "ready": ok,
            "readyReason": why,
            "pid": os.getpid(),
            "version": __version__,
            "startedAt": self._d.started_at,
            "appliedRevision": rec.applied.revision if rec is not None and rec.applied is not None else "",
            "sources": sources,
            "passes": rec.passes if rec is not None else 0,
            "lastPass": rec.last_pass.as_dict() if rec is not None and rec.last_pass is not None else None,
            "lastRejected": (
                rec.last_rejected.as_dict() if rec is not None and rec.last_rejected is not None else None
            ),
            "listeners": (
                {
                    name: {"platform": x.platform, "digest": x.config_digest, "id": id(x)}
                    for name, x in self._d.runtime.switchboard.current.listeners.items()
                }
                if self._d.runtime is not None
                else {}
            ),
            "endpoints": self._d.endpoints,
        }

    def resources(self, kind: ids.Kind | None, name: str | None) -> list[dict[str, Any]]:
        rec = self._d.reconciler
        if rec is None or rec.applied is None:
            return []
        desired = rec.applied
        items = []
        for key, res in sorted(desired.resources.items()):
            if kind is not None and key.kind is not kind:
                continue
            if name is not None and key.name != name:
                continue
            items.append(self._item(desired, key, res, detail=name is not None))
        return items

    def _item(
        self, desired: desired_mod.DesiredState, key: ids.ResourceKey, res: Any, *, detail: bool
    ) -> dict[str, Any]:
        from aofd.daemon import admin  # local: admin imports nothing from wiring

        rec = self._d.reconciler
        cond = rec.conditions.get(key) if rec is not None else None
        item: dict[str, Any] = {
            "kind": key.kind.value,
            "namespace": key.namespace,
            "name": key.name,
            "source": desired.origins.get(key, ""),
            "path": res.path,
            "line": res.line,
            "digest": desired.digests.get(key, ""),
            "status": cond.as_dict() if cond is not None else None,
        }
        bound = desired.binding_for(key) if key.kind is ids.Kind.BINDING else None
        if bound is not None:
            item["resolves"] = {
                "flow": bound.flow.name if bound.flow else None,
                "agent": bound.agent.name if bound.agent else None,
                "fleet": bound.fleet.name if bound.fleet else None,
                "context": bound.context.name if bound.context else None,
                "trigger": bound.trigger.name if bound.trigger else None,
                "agents": sorted(bound.agents),
                "fleets": sorted(bound.fleets),
                "effectiveDigest": bound.digest,
            }
        if detail:
            from aofd.resources.kinds import base as kinds_base

            item["spec"] = admin.mask_secrets(kinds_base.canonical(res.model).get("spec", {}))
            item["usedBy"] = sorted(b.name for b in desired.users_of(key) if b.key != key)
            if bound is not None and self._d.runtime is not None:
                item["runs"] = self._d.runtime.history.recent(binding=bound.name, limit=10)
        return item

    def inventory(self) -> dict[str, Any]:
        rec = self._d.reconciler
        return rec.inventory.to_json() if rec is not None else {}

    def request_reconcile(self, source: str | None) -> list[str]:
        return self._d.request_reconcile(source)

    def diff(self, source: str | None, files: Mapping[str, bytes]) -> dict[str, Any]:
        from aofd.plan import render

        rec = self._d.reconciler
        if rec is None:
            return {"error": "not started"}
        names = [s.name for s in self._d.cfg.sources]
        target = source or (names[0] if names else "")
        if target not in names:
            return {"errors": [f"unknown source {target!r}; sources are {names}"], "text": ""}
        views = []
        for spec in self._d.cfg.sources:
            kinds = frozenset(ids.Kind(k) for k in spec.kinds)
            if spec.name == target:
                snap = snapshot.Snapshot.build(
                    source=spec.name, files={p: snapshot.SourceFile.of(p, c) for p, c in files.items()}
                )
            else:
                current = rec.snapshots.get(spec.name)
                if current is None:
                    continue
                snap = current
            views.append(desired_mod.SourceView(name=spec.name, kinds=kinds, snapshot=snap))
        desired = desired_mod.build(
            views, variables=self._d._variables(), allow=self._d.cfg.substitution.allow
        )
        errs = [i.format() for i in desired.issues if i.is_error]
        if errs:
            return {"errors": errs, "text": "", "plan": None}
        plan = diff_mod.compute(desired, rec.inventory)
        return {"errors": [], "text": render.plan_text(plan), "plan": plan.as_dict()}

    def metrics(self) -> tuple[bytes, str]:
        rt = self._d.runtime
        if rt is None:
            return b"", "text/plain"
        return rt.metrics.render()
