"""`FlowStarter`: starts runs without blocking the dispatcher, owns their tasks, drains them on stop.

This module owns the run tasks. `start(binding, message)` registers a run record, starts one
task running the binding's compiled `RunPlan` and returns the run id at once (the dispatcher's
`FlowStarter` protocol). The tasks belong to this supervisor (a `tasks.TaskSet` keyed by run
id): `serve()` lives in the daemon's TaskGroup and, when cancelled (shutdown), stops accepting
runs, waits up to `grace` seconds for runs in flight, then cancels the rest; a cancelled run is
recorded as `cancelled` and its origin is told. `drain(grace)` does the same on demand (tests,
`aofctl run`).

A run keeps the plan of the `BindingSpec` it was started with; nothing later swaps it.

Each run ends with one canonical log line, `flow run` (`RunRecord.log_fields`: run id,
binding, flow, Context, trigger, platform, user id, status, duration, node counts, model and
tool calls, commands run and refused, approvals waited for, tokens, a short error), whatever
ended it: completed, failed, not started (refused by the Context's limits), timed out,
stopped by an approval, cancelled. It is logged at warning level for `failed` and `timed_out`.

It must not run flows itself (the engine does) or leak tasks: `drain` leaves none behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from aofd import errors
from aofd.runtime import engine, ports, runs, tasks
from aofd.specs import bindings, flows

log = structlog.get_logger()

_LOUD = frozenset({runs.RunStatus.FAILED.value, runs.RunStatus.TIMED_OUT.value})
"""Run outcomes logged at warning level (the rest at info): the operator should look at these."""


class FlowStarter:
    """Starts and supervises flow runs (see the module docstring)."""

    def __init__(
        self,
        *,
        engine: engine.Engine,
        grace: float = 30.0,
        on_finished: Callable[[runs.RunRecord], None] | None = None,
    ) -> None:
        self._engine = engine
        self._grace = grace
        self._on_finished = on_finished
        self._accepting = True
        self._tasks: tasks.TaskSet[runs.RunRecord] = tasks.TaskSet("runs", on_done=self._done)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, binding: bindings.BindingSpec, message: ports.EventMessage) -> str:
        """Start a run of `binding`'s plan for `message`; returns its id. Non-blocking.

        Raises:
            errors.NotAccepting: the starter is draining.
        """
        return self.start_plan(binding.plan, message)

    def start_plan(self, plan: flows.RunPlan, message: ports.EventMessage) -> str:
        """Start a run of a compiled plan (`aofctl run`, tests); returns its id."""
        if not self._accepting:
            raise errors.NotAccepting("aofd is shutting down; no new runs are started")
        record = self._engine.new_record(
            binding=plan.binding, flow=plan.flow.name, context=plan.context.name, message=message
        )
        self._tasks.spawn(
            self._engine.run(plan, message, record=record), key=record.run_id, name=f"run:{record.run_id}"
        )
        return record.run_id

    def _done(self, run_id: str, task: asyncio.Task[runs.RunRecord]) -> None:
        record = self._engine.history.record(run_id)
        if record is None:
            return
        fields = record.log_fields()
        level = log.warning if fields["status"] in _LOUD else log.info
        level("flow run", **fields)
        if self._on_finished is not None:
            self._on_finished(record)

    async def wait(self, run_id: str) -> runs.RunRecord | None:
        """Wait for one run to finish; its record (None if unknown)."""
        await self._tasks.wait(run_id)
        return self._engine.history.record(run_id)

    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting runs, wait up to `grace` seconds for runs in flight, then cancel the rest."""
        self._accepting = False
        cancelled = await self._tasks.drain(self._grace if grace is None else grace)
        if cancelled:
            log.warning("runs.cancelled_at_shutdown", count=cancelled)

    async def finish(self, bindings: set[str], grace: float) -> None:
        """Let the runs of `bindings` (deleted ones) finish within `grace` seconds, then cancel them.

        The engine records each cancellation on its run and tells the origin.
        """
        run_ids = {r.run_id for r in self._engine.history.active() if r.binding in bindings}
        cancelled = await self._tasks.drain_keys(run_ids, grace)
        if cancelled:
            log.warning("runs.cancelled", reason="binding deleted", count=cancelled)

    async def cancel(self, run_id: str, *, reason: str = "cancelled") -> bool:
        """Cancel one run in flight (a deleted binding's run after its grace period).

        The engine records the cancellation on the run and tells its origin; `reason` is logged.
        Returns False when the run is not in flight.
        """
        if run_id not in self._tasks:
            return False
        log.warning("run.cancelled", run_id=run_id, reason=reason)
        return await self._tasks.cancel(run_id)

    async def serve(self) -> None:
        """Run until cancelled (the daemon's TaskGroup), then drain with the grace period."""
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.drain())

    def reopen(self) -> None:
        """Accept runs again after a `drain` (tests)."""
        self._accepting = True
