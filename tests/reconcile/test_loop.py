"""The reconcile loop with the real planner and a recording applier: transactional passes,
last good revision kept, status on rejection, restart from the state dir, coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aofd.plan import diff as diff_mod
from aofd.reconcile import loop, state
from aofd.resources import ids, snapshot
from aofd.testing import recorders

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: default
  approval: {required: true, allowed_users: [U1], require_for: [kubectl delete]}
"""
AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {name: k8s-ops}
spec:
  model: anthropic:claude-sonnet-4
  instructions: You are a Kubernetes ops assistant.
  tools: [kubectl]
"""
FLOW = """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata: {name: ops-flow}
spec:
  agents:
    - name: k8s-ops
"""
TRIGGER = """\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {name: hook}
spec:
  type: HTTP
  config: {webhook_secret: s3cret}
"""
BINDING = """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {name: prod-hook}
spec:
  flow: {name: ops-flow}
  context: {name: prod}
  trigger: {name: hook}
"""


def files(**overrides: str) -> dict[str, str]:
    base = {
        "contexts/prod.yaml": CONTEXT,
        "agents/k8s-ops.yaml": AGENT,
        "flows/ops.yaml": FLOW,
        "triggers/hook.yaml": TRIGGER,
        "bindings/prod.yaml": BINDING,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v}


def snap(contents: Mapping[str, str], name: str = "main") -> snapshot.Snapshot:
    return snapshot.Snapshot.build(
        source=name, files={p: snapshot.SourceFile.of(p, t.encode()) for p, t in contents.items()}
    )


class RecordingApplier:
    """Records what it was asked to apply; can report stalled resources; every listener starts
    but those named in `failing`."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, dict[str, int]]] = []
        self.stalled: dict[ids.ResourceKey, str] = {}
        self.failing: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None

    async def apply(self, plan: diff_mod.Plan) -> loop.ApplyOutcome:
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        assert plan.compiled is not None
        self.applied.append((plan.revision, plan.counts()))
        running = {
            name: spec.digest for name, spec in plan.compiled.listeners.items() if name not in self.failing
        }
        stalled = dict(self.stalled)
        stalled.update({ids.ResourceKey.of(ids.Kind.TRIGGER, name): "cannot start" for name in self.failing})
        return loop.ApplyOutcome(stalled=stalled, listeners=running)


RecordingAudit = recorders.RecordingAudit


def make(
    tmp_path: Path, applier: RecordingApplier | None = None
) -> tuple[loop.Reconciler, RecordingApplier, RecordingAudit]:
    applier = applier or RecordingApplier()
    audit = RecordingAudit()
    rec = loop.Reconciler(
        sources=[loop.SourcePolicy("main", frozenset(ids.Kind))],
        store=state.StateStore(tmp_path / "state"),
        applier=applier,
        audit=audit,
        variables=dict,
        allow=("KUBECONFIG*",),
    )
    return rec, applier, audit


async def test_first_revision_is_applied_and_audited(tmp_path: Path) -> None:
    """A valid revision is applied, persisted, and `config.applied` lands in its context's log."""
    rec, applier, audit = make(tmp_path)
    rec.offer(snap(files()))

    summary = await rec.reconcile_once()

    assert "applied" == summary.outcome
    assert 5 == summary.created
    assert 1 == len(applier.applied)
    assert ["config.applied"] == [r["event"]["action"] for c, r in audit.records if c == "prod"]
    assert (tmp_path / "state" / state.SNAPSHOT_FILE).exists()
    binding = ids.ResourceKey.of(ids.Kind.BINDING, "prod-hook")
    assert "Ready" == rec.conditions[binding].phase.value
    phases = dict(summary.phases)
    assert ["build", "compile", "plan", "apply", "persist", "audit"] == list(phases)
    assert sum(phases.values()) <= summary.duration_s
    assert set(summary.as_dict()["phases_ms"]) == set(phases)  # type: ignore[arg-type]


async def test_broken_revision_keeps_the_last_good_one(tmp_path: Path) -> None:
    """An invalid revision changes nothing; status names the error at file:line."""
    rec, applier, audit = make(tmp_path)
    rec.offer(snap(files()))
    await rec.reconcile_once()
    good = rec.applied

    rec.offer(snap(files(**{"bindings/prod.yaml": BINDING.replace("ops-flow", "ops-flwo")})))
    summary = await rec.reconcile_once()

    assert "rejected" == summary.outcome
    assert good is rec.applied
    assert 1 == len(applier.applied)
    assert any(i.path == "bindings/prod.yaml" and i.line > 0 for i in summary.issues if i.is_error)
    binding = ids.ResourceKey.of(ids.Kind.BINDING, "prod-hook")
    assert "NewRevisionRejected" == rec.conditions[binding].reason
    assert "bindings/prod.yaml:" in rec.conditions[binding].message
    assert "config.rejected" == audit.records[-1][1]["event"]["action"]


async def test_noop_revision_does_not_apply(tmp_path: Path) -> None:
    """The same content again is a no-op pass: nothing is applied twice."""
    rec, applier, _ = make(tmp_path)
    rec.offer(snap(files()))
    await rec.reconcile_once()
    rec.offer(snap(files()))

    summary = await rec.reconcile_once()

    assert "unchanged" == summary.outcome
    assert 1 == len(applier.applied)


async def test_restart_restores_the_last_good_snapshot(tmp_path: Path) -> None:
    """A new reconciler on the same state dir comes up on the persisted revision with no source."""
    rec, _, _ = make(tmp_path)
    rec.offer(snap(files()))
    await rec.reconcile_once()
    revision = rec.applied.revision if rec.applied else ""

    again, applier, _ = make(tmp_path)
    assert again.restore()
    summary = await again.reconcile_once()

    assert "applied" == summary.outcome
    assert revision == summary.revision
    assert [] == [c for c in applier.applied[0][1].items() if c[0] in ("create", "update", "delete") and c[1]]


async def test_stalled_resources_are_reported(tmp_path: Path) -> None:
    """A binding the runtime cannot run is Stalled with the runtime's reason."""
    applier = RecordingApplier()
    binding = ids.ResourceKey.of(ids.Kind.BINDING, "prod-hook")
    applier.stalled[binding] = "provider anthropic is not configured"
    rec, _, _ = make(tmp_path, applier)
    rec.offer(snap(files()))

    await rec.reconcile_once()

    assert "Stalled" == rec.conditions[binding].phase.value
    assert "provider anthropic" in rec.conditions[binding].message


async def test_triggers_during_a_pass_coalesce_into_one_follow_up(tmp_path: Path) -> None:
    """Five triggers while a pass runs give exactly one more pass, never a queue: once that pass is
    done the loop waits for a new trigger with none pending."""
    applier = RecordingApplier()
    applier.gate = asyncio.Event()
    applier.entered = asyncio.Event()
    rec, _, _ = make(tmp_path, applier)
    two = asyncio.Event()
    rec._on_pass = lambda summary: two.set() if rec.passes == 2 else None
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop=stop))
    rec.offer(snap(files()))
    await applier.entered.wait()  # the first pass is applying
    for i in range(5):
        rec.offer(snap(files(**{"agents/k8s-ops.yaml": AGENT.replace("assistant", f"assistant {i}")})))
    applier.gate.set()
    await two.wait()
    pending = rec._wake.is_set()
    stop.set()
    await task

    assert (2, 2, False) == (rec.passes, len(applier.applied), pending)


async def test_snapshot_offered_during_apply_is_not_persisted_as_applied(tmp_path: Path) -> None:
    """A snapshot that arrives while a pass applies is neither recorded nor persisted as applied."""
    applier = RecordingApplier()
    applier.gate = asyncio.Event()
    applier.entered = asyncio.Event()
    rec, _, _ = make(tmp_path, applier)
    good = snap(files())
    rec.offer(good)
    pass_ = asyncio.create_task(rec.reconcile_once())
    await applier.entered.wait()  # the pass is inside apply()
    broken = snap(files(**{"bindings/prod.yaml": BINDING.replace("ops-flow", "ops-flwo")}))
    rec.offer(broken)
    applier.gate.set()
    await pass_

    assert good.revision == rec.records["main"].last_applied
    _, persisted = state.StateStore(tmp_path / "state").load_snapshots()
    assert good.revision == persisted["main"].revision
    assert "rejected" == (await rec.reconcile_once()).outcome
    again, _, _ = make(tmp_path)
    again.restore()
    assert "applied" == (await again.reconcile_once()).outcome


async def test_reverting_a_rejected_revision_clears_the_rejection(tmp_path: Path) -> None:
    """Going back to the running revision (a revert) clears the rejection from status."""
    rec, _, _ = make(tmp_path)
    rec.offer(snap(files()))
    await rec.reconcile_once()
    binding = ids.ResourceKey.of(ids.Kind.BINDING, "prod-hook")
    ready = rec.conditions[binding]
    rec.offer(snap(files(**{"bindings/prod.yaml": BINDING.replace("ops-flow", "ops-flwo")})))
    await rec.reconcile_once()
    assert rec.last_rejected is not None

    rec.offer(snap(files()))
    summary = await rec.reconcile_once()

    assert "unchanged" == summary.outcome
    assert rec.last_rejected is None
    assert "" == rec.records["main"].last_error
    assert ready == rec.conditions[binding]
    assert "" == state.StateStore(tmp_path / "state").load_sources()["main"].last_error


async def test_a_state_dir_write_failure_is_retried_and_does_not_fail_the_pass(tmp_path: Path) -> None:
    """The revision runs even if the state dir cannot be written; the next pass persists it."""
    rec, applier, _ = make(tmp_path)
    real = rec._store.save_snapshots
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    rec._store.save_snapshots = flaky  # type: ignore[method-assign]
    rec.offer(snap(files()))

    assert "applied" == (await rec.reconcile_once()).outcome
    assert rec.first_applied.is_set()
    assert not (tmp_path / "state" / state.SNAPSHOT_FILE).exists()
    rec.request()
    assert "unchanged" == (await rec.reconcile_once()).outcome
    assert (tmp_path / "state" / state.SNAPSHOT_FILE).exists()
    assert 1 == len(applier.applied)


@pytest.mark.looptime
async def test_a_failed_listener_is_started_again_while_newer_revisions_are_rejected(tmp_path: Path) -> None:
    """The retry timer starts the running revision's missing listener; a rejected revision that
    arrived meanwhile is neither applied nor rejected (and audited) again by the retry."""
    rec, applier, audit = make(tmp_path)
    applier.failing = {"hook"}
    hook = ids.ResourceKey.of(ids.Kind.TRIGGER, "hook")
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop=stop))
    rec.offer(snap(files()))
    await asyncio.sleep(1)
    assert [] == list(rec.inventory.listeners)
    assert "Stalled" == rec.conditions[hook].phase.value

    rec.offer(snap(files(**{"agents/k8s-ops.yaml": AGENT.replace("model:", "modle:")})))  # rejected
    await asyncio.sleep(1)
    assert rec.last_rejected is not None
    applier.failing.clear()
    await asyncio.sleep(loop.LISTENER_RETRY_S)

    assert ["hook"] == list(rec.inventory.listeners)
    assert "Ready" == rec.conditions[hook].phase.value
    assert rec.last_rejected is not None, "the newer revision is still the rejected one"
    assert 2 == len(applier.applied), "the first apply and the retry; the rejected revision never"
    rejected = [r for _, r in audit.records if r["event"]["action"] == "config.rejected"]
    assert 1 == len(rejected)
    await asyncio.sleep(loop.LISTENER_RETRY_S * 3)
    assert 2 == len(applier.applied), "nothing is missing: no more retries"
    stop.set()
    await task
