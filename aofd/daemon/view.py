"""`AdminView`: what the admin API (`aofd.daemon.admin`) shows of the running daemon.

It reads the daemon's reconciler, runtime, sources and audit log and answers the admin API's
questions (health, readiness, status, resources with their conditions, inventory, a dry-run
plan of a candidate tree, metrics). A dry run goes through the same pure half as a pass:
desired state, compile, diff against the inventory. It changes nothing.

Pending command approvals are shown and decided through `ApprovalsView`: argv as the audit log
writes it (secret values replaced by the audit's keyed hash), and every decision goes through
the command guard, which checks the Context's rules and audits it.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aofd import __version__
from aofd.daemon import admin, webui
from aofd.plan import compiler, desired, dryrun, extract, render
from aofd.reconcile import status as status_mod
from aofd.resources import ids, snapshot
from aofd.resources.kinds import base as kinds_base
from aofd.runtime import approvals as approvals_mod
from aofd.runtime import memory as memory_mod
from aofd.runtime import ports
from aofd.runtime.listeners import manual

if TYPE_CHECKING:  # the daemon builds the view; the view never builds a daemon
    from aofd.daemon.main import Daemon


class AdminView:
    """`admin.DaemonView` over the running daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self._pages = webui.Pages(daemon)  # the web page's runs, graphs and audit tails

    def healthy(self) -> bool:
        return self._d.healthy()

    def ready(self) -> tuple[bool, str]:
        rec = self._d.reconciler
        rt = self._d.runtime
        if rec is None or rt is None or rec.applied is None:
            return False, "no revision applied yet"
        if not rt.ready():
            return False, "listeners are not up"
        cluster_why = rt.cluster_unready()
        if cluster_why:
            return False, cluster_why
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
                    "lastError": (record.last_error if record else "") or (st.last_error or ""),
                    "consecutiveFailures": st.consecutive_failures,
                    "stale": st.stale,
                    # Sources that verify signatures: who signed the snapshot in force, and the
                    # latest fetched commit refused (commit, reason, key fingerprint).
                    "signature": dict(st.provenance) if st.provenance is not None else None,
                    "rejectedCommit": dict(st.rejected) if st.rejected is not None else None,
                }
            )
        runtime = self._d.runtime
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
                    for name, x in runtime.switchboard.current.listeners.items()
                }
                if runtime is not None
                else {}
            ),
            "endpoints": dict(self._d.endpoints),  # a copy: encoded in a worker thread
            "auditSealing": (
                self._d.audit.sealing_status() if self._d.audit is not None else {"enabled": False}
            ),
            # Replicas (`cluster:`): members, leader, the revision each serves; None on a single host.
            "cluster": runtime.cluster_status() if runtime is not None else None,
        }

    def resources(self, kind: ids.Kind | None, name: str | None) -> Iterator[dict[str, Any]]:
        """The applied resources of `kind` (all kinds when None) named `name` (any when None),
        in key order; produced as consumed, so the admin API can let the loop in between."""
        rec = self._d.reconciler
        if rec is None or rec.applied is None:
            return
        # Both immutable and taken once: a pass that ends meanwhile does not mix into this listing.
        state, conditions = rec.applied, rec.conditions
        keys = [
            key
            for key in state.resources
            if (kind is None or key.kind is kind) and (name is None or key.name == name)
        ]
        keys.sort(key=lambda k: (k.kind.value, k.namespace, k.name))
        ready: dict[ids.ResourceKey, status_mod.ReadyCount] = {}
        if any(key.kind is ids.Kind.TRIGGER for key in keys):
            ready = status_mod.ready_counts(
                ((b.trigger.key, b.key) for b in state.bindings.values() if b.trigger is not None),
                conditions,
            )
        for key in keys:
            item = self._item(state, conditions, key, state.resources[key], detail=name is not None)
            if key.kind is ids.Kind.TRIGGER:
                item["bindings"] = ready.get(key, status_mod.ReadyCount()).as_dict()
            yield item

    def _item(
        self,
        state: desired.DesiredState,
        conditions: Mapping[ids.ResourceKey, status_mod.Condition],
        key: ids.ResourceKey,
        res: kinds_base.LoadedResource,
        *,
        detail: bool,
    ) -> dict[str, Any]:
        cond = conditions.get(key)
        item: dict[str, Any] = {
            "kind": key.kind.value,
            "namespace": key.namespace,
            "name": key.name,
            "source": state.origins.get(key, ""),
            "path": res.path,
            "line": res.line,
            "digest": state.digests.get(key, ""),
            "status": cond.as_dict() if cond is not None else None,
        }
        bound = state.binding_for(key) if key.kind is ids.Kind.BINDING else None
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
            item["spec"] = admin.mask_secrets(extract.masked_spec(res))
            item["usedBy"] = sorted(b.name for b in state.users_of(key) if b.key != key)
            if bound is not None and self._d.runtime is not None:
                item["runs"] = self._pages.runs(bound.name, 10)  # redacted and capped as /api/v1/runs
        return item

    def inventory(self) -> dict[str, Any]:
        """The applied inventory's JSON form. Safe in a worker thread: it reads one immutable object."""
        rec = self._d.reconciler
        return rec.inventory.to_json() if rec is not None else {}

    def request_reconcile(self, source: str | None) -> list[str]:
        return self._d.request_reconcile(source)

    def diff(self, source: str | None, files: Mapping[str, bytes]) -> dict[str, Any]:
        """Plan `files` as source `source` against what runs (`aofd.plan.dryrun`: no secret is
        substituted or compared). Runs in a worker thread: it reads, never writes, the daemon."""
        rec = self._d.reconciler
        if rec is None:
            return {"errors": ["not started"], "text": "", "plan": None}
        names = [s.name for s in self._d.cfg.sources]
        target = source or (names[0] if names else "")
        if target not in names:
            return {"errors": [f"unknown source {target!r}; sources are {names}"], "text": "", "plan": None}
        applied = rec.applied if rec.applied is not None else desired.DesiredState.empty()
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
            views.append(desired.SourceView(name=spec.name, kinds=kinds, snapshot=snap))
        result = dryrun.plan(
            views,
            applied=applied,
            running_listeners=tuple(rec.inventory.listeners),
            allow=self._d.cfg.substitution.allow,
            options=compiler.Options.of(self._d.cfg),
        )
        if isinstance(result, list):
            return {"errors": result, "text": "", "plan": None, "notes": [dryrun.NOT_COMPARED]}
        text = render.plan_text(result) + f"Note: {dryrun.NOT_COMPARED}.\n"
        return {"errors": [], "text": text, "plan": result.as_dict(), "notes": [dryrun.NOT_COMPARED]}

    def metrics(self) -> tuple[bytes, str]:
        rt = self._d.runtime
        if rt is None:
            return b"", "text/plain"
        return rt.metrics.render()

    def _approvals(self) -> ApprovalsView | None:
        rt = self._d.runtime
        if rt is None:
            return None
        return ApprovalsView(rt.approvals, rt.guard.decide, rt.audit.redact)

    def approvals(self) -> list[dict[str, Any]]:
        found = self._approvals()
        return found.approvals() if found is not None else []

    def approval(self, request_id: str) -> dict[str, Any] | None:
        found = self._approvals()
        return found.approval(request_id) if found is not None else None

    async def decide_approval(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals_mod.Decision:
        found = self._approvals()
        if found is None:
            return approvals_mod.Decision.UNKNOWN
        return await found.decide_approval(request_id, user=user, approve=approve, action_id=action_id)

    def start_run(self, binding: str, *, text: str, user: ports.UserRef) -> ports.RouteOutcome:
        """One run of `binding`, whose trigger must be Manual, for `text` as `user` (the operator)."""
        rt = self._d.runtime
        if rt is None:
            raise LookupError("no revision is applied yet")
        table = rt.switchboard.current
        spec = table.bindings.get(binding)
        if spec is None:
            raise LookupError(f"no binding {binding!r} is applied")
        listener = table.listeners.get(spec.trigger) if spec.trigger else None
        if spec.trigger is not None and listener is None:
            # Its trigger is not served here now (its listener failed: the binding is stalled).
            return ports.RouteOutcome(
                "stalled",
                binding,
                spec.context,
                detail=f"binding {binding}: its Trigger {spec.trigger} is not served here now",
                reason="ListenerFailed",
            )
        if spec.trigger is None or listener is None or listener.platform != manual.ManualListener.platform:
            raise ValueError(
                f"binding {binding} is not bound to a Manual trigger (its trigger: "
                f"{spec.trigger or 'none'}); it runs on its trigger's events"
            )
        return rt.dispatcher.start_binding(binding, manual.event(spec.trigger, text, user))

    def runs(self, binding: str | None, limit: int) -> list[dict[str, Any]]:
        return self._pages.runs(binding, limit)

    async def run(self, run_id: str) -> dict[str, Any] | None:
        return await self._pages.run(run_id)

    def graph(self, focus: str | None) -> dict[str, Any]:
        return self._pages.graph(focus)

    async def audit(self) -> list[dict[str, Any]]:
        return await self._pages.audit()

    async def audit_tail(self, context: str, lines: int, *, verify: bool = False) -> dict[str, Any] | None:
        return await self._pages.audit_tail(context, lines, verify=verify)

    async def memory_show(self, context: str, binding: str, thread: str) -> list[dict[str, Any]] | None:
        rt = self._d.runtime
        if rt is None:
            return None
        return await rt.memory.show(memory_mod.Key(context, binding, thread))

    async def memory_clear(self, context: str, binding: str, thread: str, *, user: ports.UserRef) -> int:
        rt = self._d.runtime
        if rt is None:
            return 0
        return await rt.memory.clear(memory_mod.Key(context, binding, thread), user=user)


class Decide(Protocol):
    """`CommandGuard.decide`: apply one approver's decision and audit it."""

    def __call__(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> Awaitable[approvals_mod.Decision]: ...


class ApprovalsView:
    """The admin API's approvals: pending requests listed for people, decisions through the guard.

    `clock` must be the store's clock (monotonic: ages and time left), `wall` the time of day
    (the ISO 8601 times shown); `redact` is the audit log's argv redaction.
    """

    def __init__(
        self,
        store: approvals_mod.ApprovalStore,
        decide: Decide,
        redact: Callable[[Sequence[str]], tuple[str, ...]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._decide = decide
        self._redact = redact
        self._clock = clock
        self._wall = wall

    def approvals(self) -> list[dict[str, Any]]:
        """Every pending request, oldest first."""
        items = []
        for request in sorted(self._store.pending(), key=lambda r: r.created_at):
            outcome = self._store.outcome(request.id)
            if outcome is not None:
                items.append(self._item(outcome))
        return items

    def approval(self, request_id: str) -> dict[str, Any] | None:
        """One request by its full id, pending or decided (while the store keeps it)."""
        outcome = self._store.outcome(request_id)
        return self._item(outcome) if outcome is not None else None

    async def decide_approval(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals_mod.Decision:
        return await self._decide(request_id, user=user, approve=approve, action_id=action_id)

    def _item(self, outcome: approvals_mod.Outcome) -> dict[str, Any]:
        req = outcome.request
        argv = self._redact(req.argv)
        now = self._clock()
        return {
            "id": req.id,
            "state": outcome.state.value,
            "reason": outcome.reason,
            "context": req.context,
            "argv": list(argv),
            "command": approvals_mod.render_argv(argv),
            "requester": {
                "id": req.requester.id,
                "name": req.requester.name,
                "platform": req.requester.domain.split(":", 1)[0],
            },
            "agent": req.agent,
            "runId": req.run_id,
            "rule": req.rule,
            "requestedAt": iso_time(req.requested_at),
            "expiresAt": iso_time(req.requested_at + req.timeout_seconds),
            "ageSeconds": round(max(0.0, now - req.created_at), 3),
            "expiresInSeconds": round(max(0.0, req.expires_at - now), 3),
            "approvals": len(outcome.approvers),
            "minApprovers": req.min_approvers,
            "approvedBy": [u.id for u in outcome.approvers],
            "deniedBy": outcome.denier.id if outcome.denier is not None else None,
            "allowedUsers": list(req.allowed_users),
            "allowSelfApproval": req.allow_self_approval,
        }


def iso_time(ts: float) -> str:
    """`2026-12-06T06:37:10Z`: a wall time for people, ISO 8601, UTC, whole seconds."""
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
