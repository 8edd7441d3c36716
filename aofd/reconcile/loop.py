"""The reconcile loop: sources' snapshots -> desired state -> compiled specs -> plan -> apply -> status.

One pass at a time (single flight). Triggers that arrive during a pass - a new snapshot,
`aofctl reconcile`, SIGHUP - coalesce into exactly one follow-up pass (kopf's "pressure"
flag). A pass is transactional: any error in the new revision means nothing changes, the
last good revision keeps running, and the status names every error with file:line and
the revision (Flux: "by design transactional").

Each pass is the same ordered list of steps - build, compile, plan, apply, persist, record -
and its outcome is recorded in a `finally` (status, one canonical log line, audit records).
Build and compile are the pure half (`aofd.plan`); a revision with any error from either is
rejected whole. The pure half (build, compile, plan, the Contexts a change touches) and the
persist run in a worker thread, so a pass over a large repo never holds the event loop (the
listeners, the admin API) for long; the loop's longest stall during the pass is measured
(`aofd.reconcile.lag`) and reported as `PassSummary.loop_lag_s`. Nothing the thread touches is
shared with the loop while it runs: the caches are the pass's own, the pass is single-flight,
and its inputs (snapshots, variables, inventory, the applied state) are taken before it starts.
A listener of the running revision that could not start is started again
after `LISTENER_RETRY_S` (`retry_listeners`: the running revision planned against what runs),
also while newer revisions are being rejected. The same retry re-applies while an MCP server the
bindings need is not ready, and at once when the server pool says one failed or recovered
(`retry_soon`), so the bindings' stall reasons (`aofctl get`) stay current.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import structlog

from aofd import errors
from aofd.plan import compiler
from aofd.plan import desired as desired_mod
from aofd.plan import diff as diff_mod
from aofd.reconcile import lag as lag_mod
from aofd.reconcile import state as state_mod
from aofd.reconcile import status as status_mod
from aofd.resources import ids, snapshot
from aofd.runtime import applier as applier_mod
from aofd.runtime import ports

log = structlog.get_logger("aofd.reconcile")

ApplyOutcome = applier_mod.ApplyOutcome

LISTENER_RETRY_S = 30.0
"""Seconds before a pass retries the listeners that did not start."""


class Applier(Protocol):
    """The effectful half of a pass: execute the plan (it carries its compiled revision)."""

    async def apply(self, plan: diff_mod.Plan) -> applier_mod.ApplyOutcome: ...


@dataclasses.dataclass(frozen=True, slots=True)
class SourcePolicy:
    name: str
    kinds: frozenset[ids.Kind]


class Reconciler:
    """Owns the desired/applied state and runs passes; everything effectful is injected."""

    def __init__(
        self,
        *,
        sources: Sequence[SourcePolicy],
        store: state_mod.StateStore,
        applier: Applier,
        audit: ports.AuditSink,
        variables: Callable[[], Mapping[str, str]],
        allow: Sequence[str],
        options: compiler.Options | None = None,
        on_pass: Callable[[status_mod.PassSummary], Awaitable[None] | None] | None = None,
        digest_key: bytes | None = None,
        limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    ) -> None:
        self._sources = {s.name: s for s in sources}
        self._digest_key = digest_key
        self._store = store
        self._applier = applier
        self._audit = audit
        self._variables = variables
        self._allow = tuple(allow)
        self._on_pass = on_pass
        self._options = options or compiler.Options()
        self._cache = desired_mod.ParseCache(limits=limits)
        self._compile_cache = compiler.Cache()
        self._retry_at: float | None = None
        self._wake = asyncio.Event()
        self._pass_wanted = False
        self._retry_now = False
        self._mcp_waiting = 0
        """MCP servers the running revision wants that were not ready at its last apply."""
        self._lock = asyncio.Lock()
        self._snapshots: dict[str, snapshot.Snapshot] = {}
        self._applied_snapshots: dict[str, snapshot.Snapshot] = {}
        self.applied: desired_mod.DesiredState | None = None
        self.compiled: compiler.Compiled | None = None
        self.inventory = diff_mod.Inventory.empty()
        self.conditions: Mapping[ids.ResourceKey, status_mod.Condition] = {}
        self.last_pass: status_mod.PassSummary | None = None
        self.last_rejected: status_mod.PassSummary | None = None
        self.records: dict[str, state_mod.SourceRecord] = store.load_sources()
        self.passes = 0
        self.pass_started: float | None = None  # monotonic start of the pass in progress, if any
        self.first_applied = asyncio.Event()
        # Conditions as the last apply left them (before any rejected revision marked them),
        # and the applied state whose persistence failed and must be retried.
        self._applied_conditions: Mapping[ids.ResourceKey, status_mod.Condition] = {}
        self._unsaved: desired_mod.DesiredState | None = None

    # -- inputs ---------------------------------------------------------------------------

    def offer(self, snap: snapshot.Snapshot) -> None:
        """A source produced a snapshot; reconcile soon (coalesced with other triggers)."""
        self._snapshots[snap.source] = snap
        self.request()

    def request(self) -> None:
        self._pass_wanted = True
        self._wake.set()

    def retry_soon(self) -> None:
        """Re-apply the running revision soon (not a pass): an MCP server failed or recovered."""
        self._retry_now = True
        self._wake.set()

    def restore(self) -> bool:
        """Load the last good snapshot from the state dir (restart without network)."""
        revision, snaps = self._store.load_snapshots()
        known = {name: snap for name, snap in snaps.items() if name in self._sources}
        if not known:
            return False
        for snap in known.values():
            self._snapshots.setdefault(snap.source, snap)
        self.inventory = diff_mod.Inventory.from_json(self._store.load_inventory())
        log.info("restored last good snapshot", revision=revision, sources=sorted(known))
        self.request()
        return True

    def set_allow(self, allow: Sequence[str]) -> None:
        """Replace the substitution allow-list (SIGHUP re-read the daemon config); next pass uses it."""
        self._allow = tuple(allow)

    @property
    def snapshots(self) -> Mapping[str, snapshot.Snapshot]:
        return dict(self._snapshots)

    # -- the loop -------------------------------------------------------------------------

    async def run(self, *, stop: asyncio.Event) -> None:
        """Run passes until `stop` is set; triggers during a pass give one follow-up pass."""
        stop_wait = asyncio.ensure_future(stop.wait())
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                wake_wait = asyncio.ensure_future(self._wake.wait())
                retry_in = None if self._retry_at is None else max(0.0, self._retry_at - loop.time())
                try:
                    await asyncio.wait(
                        {stop_wait, wake_wait}, timeout=retry_in, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if not wake_wait.done():
                        wake_wait.cancel()
                        await asyncio.gather(wake_wait, return_exceptions=True)
                if stop.is_set():
                    break
                if self._wake.is_set():
                    self._wake.clear()
                    if self._pass_wanted or not self._retry_now:
                        self._pass_wanted = False
                        await self.reconcile_once()
                    if self._retry_now:
                        await self.retry_listeners()
                elif retry_in is not None:
                    await self.retry_listeners()
        finally:
            stop_wait.cancel()
            await asyncio.gather(stop_wait, return_exceptions=True)

    async def reconcile_once(self) -> status_mod.PassSummary:
        async with self._lock:
            started = time.monotonic()
            self.pass_started = started
            summary = status_mod.PassSummary(revision="", outcome="failed", at=time.time())
            probe = lag_mod.LagProbe()
            probe.start()
            try:
                summary = await self._pass(started)
            except Exception as exc:  # a bug or an effect failed: keep the last good state
                log.exception("reconcile pass failed")
                issue = errors.Issue("<daemon>", 0, 0, "error", f"reconcile pass failed: {exc}", "internal")
                summary = status_mod.PassSummary(
                    revision=summary.revision,
                    outcome="failed",
                    issues=(issue,),
                    duration_s=time.monotonic() - started,
                    at=time.time(),
                )
            finally:
                summary = dataclasses.replace(summary, loop_lag_s=await probe.stop())
                if summary.outcome == "rejected":
                    self.last_rejected = summary
                self.pass_started = None
                self.passes += 1
                self.last_pass = summary
                self._log_pass(summary)
            if self._on_pass is not None:
                result = self._on_pass(summary)
                if result is not None:
                    await result
            return summary

    async def _pass(self, started: float) -> status_mod.PassSummary:
        # The snapshots this pass works on, taken once: `offer()` may replace entries while
        # the pass awaits the applier, and what is recorded and persisted as applied must be
        # exactly what was validated and applied, never a newer, unchecked snapshot.
        snaps = dict(self._snapshots)
        missing = [name for name in self._sources if name not in snaps]
        if missing:
            return status_mod.PassSummary(
                revision="",
                outcome="waiting",
                issues=(
                    errors.Issue(
                        "<daemon>", 0, 0, "warning", f"waiting for the first snapshot of {missing}", "waiting"
                    ),
                ),
                duration_s=time.monotonic() - started,
                at=time.time(),
            )
        views = [
            desired_mod.SourceView(name=name, kinds=policy.kinds, snapshot=snaps[name])
            for name, policy in self._sources.items()
        ]
        phases = _Phases(started)
        worked = await _in_thread(
            self._plan, views, self._variables(), self._allow, self.inventory, self.applied, phases
        )
        desired, compiled = worked.desired, worked.compiled
        now = time.time()
        for name, snap in snaps.items():
            old = self.records.get(name, state_mod.SourceRecord())
            self.records[name] = dataclasses.replace(old, last_attempted=snap.revision, attempted_at=now)

        if worked.plan is None:
            return await self._reject(compiled, worked.key_of_path, snaps, started, phases)

        plan, counts = worked.plan, worked.counts
        if plan.is_noop() and self.applied is not None and self.applied.revision == desired.revision:
            await self._back_to_applied()
            phases.mark("persist")
            return status_mod.PassSummary(
                revision=desired.revision,
                outcome="unchanged",
                unchanged=counts.get("unchanged", 0),
                issues=compiled.warnings,
                duration_s=time.monotonic() - started,
                at=time.time(),
                phases=phases.done,
            )

        outcome = await self._applier.apply(plan)
        phases.mark("apply")
        self.applied = desired
        self.compiled = compiled
        failed = _planned_not_running(compiled, plan, outcome.listeners)
        self.inventory = diff_mod.Inventory.of(
            desired, listeners=outcome.listeners, serving=None if failed else compiled.listeners
        )
        self._mcp_waiting = outcome.mcp_waiting
        self._arm_retry(failed)
        self._applied_snapshots = snaps
        self.conditions = status_mod.conditions_after_apply(
            keys=desired.resources.keys(),
            revision=desired.revision,
            stalled=outcome.stalled,
            reasons=outcome.reasons,
            previous=self.conditions,
        )
        self._applied_conditions = self.conditions
        for name, snap in snaps.items():
            old = self.records.get(name, state_mod.SourceRecord())
            self.records[name] = dataclasses.replace(
                old, last_applied=snap.revision, applied_at=now, last_error=""
            )
        self.last_rejected = None
        # The revision runs from here on, whatever happens to the state dir.
        self.first_applied.set()
        self._unsaved = desired
        await self._save()
        phases.mark("persist")
        await self._audit_applied(desired, worked.touched, snaps)
        phases.mark("audit")
        return status_mod.PassSummary(
            revision=desired.revision,
            outcome="applied",
            created=counts.get("create", 0),
            updated=counts.get("update", 0),
            deleted=counts.get("delete", 0),
            unchanged=counts.get("unchanged", 0),
            failed=len(outcome.stalled),
            issues=compiled.warnings,
            duration_s=time.monotonic() - started,
            at=time.time(),
            phases=phases.done,
        )

    def _plan(
        self,
        views: Sequence[desired_mod.SourceView],
        variables: Mapping[str, str],
        allow: Sequence[str],
        inventory: diff_mod.Inventory,
        applied: desired_mod.DesiredState | None,
        phases: _Phases,
    ) -> _Worked:
        """The pure half of a pass, in a worker thread: build, compile, and either the plan and the
        Contexts it touches, or (a rejected revision) where each error's file's resources are."""
        desired = desired_mod.build(
            views,
            variables=variables,
            allow=allow,
            undefined="error",
            cache=self._cache,
            digest_key=self._digest_key,
        )
        phases.mark("build")
        compiled = compiler.build(desired, options=self._options, cache=self._compile_cache)
        phases.mark("compile")
        if not compiled.ok:
            return _Worked(desired, compiled, key_of_path=_keys_of_paths(compiled, applied))
        plan = diff_mod.compute(compiled, inventory)
        touched = {} if plan.is_noop() else plan.touched_contexts(desired, applied)
        counts = plan.counts()
        phases.mark("plan")
        return _Worked(desired, compiled, plan=plan, counts=counts, touched=touched)

    async def retry_listeners(self) -> None:
        """Start the running revision's listeners that are not running (they failed to start), and
        re-apply it while MCP servers it wants are not ready or after the pool said one changed.

        Not a pass: the running revision is planned against what runs, which starts only the
        missing listeners; newer revisions are not looked at (a rejected one is not rejected and
        audited again). Conditions the running revision set are refreshed; rejection marks stay.
        """
        async with self._lock:
            compiled = self.compiled
            self._retry_at = None
            servers_changed, self._retry_now = self._retry_now, False
            missing = _not_running(compiled, self.inventory.listeners) if compiled is not None else set()
            if compiled is None or not (missing or self._mcp_waiting or servers_changed):
                return
            try:
                outcome = await self._applier.apply(diff_mod.compute(compiled, self.inventory))
            except Exception:  # a bug or an effect failed: try again later
                log.exception("listener retry failed")
                self._retry_at = asyncio.get_running_loop().time() + LISTENER_RETRY_S
                return
            failed = _not_running(compiled, outcome.listeners)
            self.inventory = diff_mod.Inventory.of(
                compiled.desired, listeners=outcome.listeners, serving=None if failed else compiled.listeners
            )
            self._mcp_waiting = outcome.mcp_waiting
            self._arm_retry(failed)
            refreshed = status_mod.conditions_after_apply(
                keys=compiled.desired.resources.keys(),
                revision=compiled.revision,
                stalled=outcome.stalled,
                reasons=outcome.reasons,
                previous=self._applied_conditions,
            )
            self.conditions = status_mod.carry_marks(self.conditions, self._applied_conditions, refreshed)
            self._applied_conditions = refreshed
            log.info(
                "listeners.retried",
                started=sorted(missing - failed),
                failed=sorted(failed) or None,
                mcp_waiting=outcome.mcp_waiting or None,
            )

    def _arm_retry(self, failed: set[str]) -> None:
        waiting = failed or self._mcp_waiting
        self._retry_at = asyncio.get_running_loop().time() + LISTENER_RETRY_S if waiting else None

    async def _back_to_applied(self) -> None:
        """The desired state is the running one again (e.g. a bad commit was reverted):
        forget the rejection, and retry persisting the applied state if that failed."""
        if self.last_rejected is not None:
            self.last_rejected = None
            self.conditions = self._applied_conditions
            for name, old in list(self.records.items()):
                self.records[name] = dataclasses.replace(old, last_error="")
            if self._unsaved is None:
                await self._save_sources()
        if self._unsaved is not None:
            await self._save()

    async def _reject(
        self,
        compiled: compiler.Compiled,
        key_of_path: Mapping[str, Sequence[ids.ResourceKey]],
        snaps: Mapping[str, snapshot.Snapshot],
        started: float,
        phases: _Phases,
    ) -> status_mod.PassSummary:
        desired = compiled.desired
        errs = compiled.errors
        for name in snaps:
            old = self.records.get(name, state_mod.SourceRecord())
            self.records[name] = dataclasses.replace(
                old, last_error=f"revision {desired.revision} rejected: {len(errs)} error(s)"
            )
        self.conditions = status_mod.mark_rejected(
            self.conditions, revision=desired.revision, issues=errs, key_of_path=key_of_path
        )
        await self._save_sources()
        phases.mark("persist")
        summary = status_mod.PassSummary(
            revision=desired.revision,
            outcome="rejected",
            failed=len(errs),
            issues=compiled.issues,
            duration_s=time.monotonic() - started,
            at=time.time(),
        )
        self.last_rejected = summary
        await self._audit_rejected(compiled, errs)
        phases.mark("audit")
        summary = dataclasses.replace(summary, phases=phases.done, duration_s=time.monotonic() - started)
        self.last_rejected = summary
        return summary

    # -- effects at the end of a pass -----------------------------------------------------

    async def _save(self) -> None:
        """Persist the applied state; on failure (disk full, read-only) log it and retry on the
        next pass - the revision already runs, and a pass must not fail after the swap."""
        desired = self._unsaved
        if desired is None:
            return
        snaps, inventory, records = dict(self._applied_snapshots), self.inventory, dict(self.records)
        try:
            await asyncio.to_thread(self._persist, desired.revision, snaps, inventory, records)
        except OSError as exc:
            log.error(
                "cannot persist the applied revision; will retry", revision=desired.revision, error=str(exc)
            )
            return
        if self._unsaved is desired:
            self._unsaved = None

    async def _save_sources(self) -> None:
        try:
            await asyncio.to_thread(self._store.save_sources, dict(self.records))
        except OSError as exc:
            log.error("cannot persist source status", error=str(exc))

    def _persist(
        self,
        revision: str,
        snaps: Mapping[str, snapshot.Snapshot],
        inventory: diff_mod.Inventory,
        records: Mapping[str, state_mod.SourceRecord],
    ) -> None:
        """In a worker thread: everything it reads is immutable or a copy made for it."""
        self._store.ensure()
        self._store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
        self._store.save_sources(records)

    async def _audit_applied(
        self,
        desired: desired_mod.DesiredState,
        touched: Mapping[str, list[str]],
        snaps: Mapping[str, snapshot.Snapshot],
    ) -> None:
        """One `config.applied` record per touched Context, written concurrently (one log each).

        Sources that verify signatures add who signed their revision (`signatures`: source,
        commit, signer, fingerprint, format)."""
        signed = [
            {"source": name, **snap.provenance}
            for name, snap in sorted(snaps.items())
            if snap.provenance is not None
        ]
        base: dict[str, object] = {"revision": desired.revision}
        if signed:
            base["signatures"] = signed
        await asyncio.gather(
            *(
                self._safe_audit(
                    context, ports.AuditEvent("config.applied", details={**base, "changes": changes})
                )
                for context, changes in sorted(touched.items())
            )
        )

    async def source_rejected(self, source: str, details: Mapping[str, str]) -> None:
        """A source refused a fetched revision before it reached a pass (a signature check
        failed): audit `config.rejected` to every running Context. Nothing else changes; the
        source's status names the commit, the reason and the key."""
        contexts = sorted(self.compiled.context_keys) if self.compiled is not None else []
        event = ports.AuditEvent(
            "config.rejected",
            outcome="failure",
            details={"source": source, "revision": details.get("commit", ""), "signature": dict(details)},
        )
        log.warning("revision rejected by its source", source=source, **dict(details))
        await asyncio.gather(*(self._safe_audit(context, event) for context in contexts))

    async def _audit_rejected(self, compiled: compiler.Compiled, errs: Sequence[errors.Issue]) -> None:
        desired = compiled.desired
        contexts: set[str] = set(compiled.context_keys)
        if self.compiled is not None:
            contexts |= set(self.compiled.context_keys)
        # The first 50 errors, and how many there are (an audit record stays small; status has all).
        details = {
            "revision": desired.revision,
            "errors": [i.format() for i in errs[:50]],
            "error_count": len(errs),
        }
        event = ports.AuditEvent("config.rejected", outcome="failure", details=details)
        await asyncio.gather(*(self._safe_audit(context, event) for context in sorted(contexts)))

    async def _safe_audit(self, context: str, event: ports.AuditEvent) -> None:
        try:
            await self._audit.write(context, event)
        except errors.AofdError as exc:
            log.warning("audit write failed", context=context, error=str(exc))

    def _log_pass(self, summary: status_mod.PassSummary) -> None:
        # At most 20 of each, formatted (a revision may carry thousands; status has them all).
        errs = [i.format() for i in itertools.islice((i for i in summary.issues if i.is_error), 20)]
        # A revision's warnings (settings that cannot all hold ...) once, when it is applied.
        warns = (
            [i.format() for i in itertools.islice((i for i in summary.issues if not i.is_error), 20)]
            if summary.outcome == "applied"
            else []
        )
        (log.warning if warns else log.info)(
            "reconcile pass",
            revision=summary.revision,
            outcome=summary.outcome,
            created=summary.created,
            updated=summary.updated,
            deleted=summary.deleted,
            failed=summary.failed,
            duration_ms=round(summary.duration_s * 1000, 2),
            phases_ms={name: round(seconds * 1000, 2) for name, seconds in summary.phases} or None,
            loop_lag_ms=round(summary.loop_lag_s * 1000, 2),
            errors=errs or None,
            warnings=warns or None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Worked:
    """What the pure half of a pass hands back to the loop."""

    desired: desired_mod.DesiredState
    compiled: compiler.Compiled
    plan: diff_mod.Plan | None = None
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    touched: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    key_of_path: Mapping[str, Sequence[ids.ResourceKey]] = dataclasses.field(default_factory=dict)


def _keys_of_paths(
    compiled: compiler.Compiled, applied: desired_mod.DesiredState | None
) -> dict[str, list[ids.ResourceKey]]:
    """The running and the rejected revision's resources in each file that carries an error."""
    paths = {i.path for i in compiled.issues if i.is_error}
    found: dict[str, list[ids.ResourceKey]] = {}
    running = applied.resources if applied is not None else {}
    for resources in (running, compiled.desired.resources):
        for key, res in resources.items():
            if res.path in paths:
                found.setdefault(res.path, []).append(key)
    return found


T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a worker thread; if the pass is cancelled meanwhile, the thread is still
    waited for before the pass ends, so the next pass never runs beside it."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


class _Phases:
    """Where a pass spent its time: `mark(name)` closes the phase that began at the last mark."""

    def __init__(self, started: float) -> None:
        self._last = started
        self._done: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self._done.append((name, now - self._last))
        self._last = now

    @property
    def done(self) -> tuple[tuple[str, float], ...]:
        return tuple(self._done)


def _planned_not_running(
    compiled: compiler.Compiled, plan: diff_mod.Plan, running: Mapping[str, str]
) -> set[str]:
    """`_not_running` after applying `plan`: only the listeners it named can differ (every other
    one ran as compiled already), so this costs the plan's listener actions."""
    specs = compiled.listeners
    return {
        a.trigger
        for a in plan.listeners
        if a.trigger in specs and running.get(a.trigger) != specs[a.trigger].digest
    }


def _not_running(compiled: compiler.Compiled, running: Mapping[str, str]) -> set[str]:
    """Triggers whose listener is not running as compiled: none started, or an older one kept."""
    return {name for name, spec in compiled.listeners.items() if running.get(name) != spec.digest}
