"""`FlowStarter`: starts runs without blocking the router, owns their tasks, drains them on stop.

This module owns the run tasks. `start(binding, message)` registers a run record, starts
one task and returns the run id at once (the router's `FlowStarter` protocol). The tasks
belong to this supervisor, like a TaskGroup's: `serve()` lives in the daemon's TaskGroup
and, when cancelled (shutdown), stops accepting runs, waits up to `grace` seconds for runs
in flight, then cancels the rest; a cancelled run is recorded as `cancelled` and its origin
is told. `drain(grace)` does the same on demand (tests, `aofctl run`).

A run keeps the `ResolvedBinding` it was started with: the plan is taken from that object
inside the task, and nothing later swaps it.

It must not run flows itself (the engine does) or leak tasks: every task it creates is in
`_tasks` until done, and `drain` leaves none behind.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import structlog

from aofd.runtime import engine, ports, runs

log = structlog.get_logger()


class NotAccepting(RuntimeError):
    """The starter is draining or closed: no new runs."""


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
        # Invariant: holds exactly the run tasks that have not finished (each removes itself).
        self._tasks: dict[str, asyncio.Task[runs.RunRecord]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self, binding: Any, message: ports.EventMessage) -> str:
        """Start a run of `binding` (an `aofd.plan.desired.ResolvedBinding`) for `message`; returns its id.

        Non-blocking. Raises `NotAccepting` while draining.
        """
        if not self._accepting:
            raise NotAccepting("aofd is shutting down; no new runs are started")
        flow = (
            binding.flow.name
            if binding.flow is not None
            else (
                binding.agent.name
                if binding.agent is not None
                else (binding.fleet.name if binding.fleet is not None else "")
            )
        )
        context = binding.context.name if binding.context is not None else ""
        record = self._engine.new_record(binding=binding.name, flow=flow, context=context, message=message)
        self._spawn(record, self._run_binding(binding, message, record))
        return record.run_id

    def start_plan(self, plan: engine.RunPlan, message: ports.EventMessage) -> str:
        """Start a run of a ready plan (`aofctl run`, tests); returns its id."""
        if not self._accepting:
            raise NotAccepting("aofd is shutting down; no new runs are started")
        record = self._engine.new_record(
            binding=plan.binding, flow=plan.flow.name, context=plan.context.name, message=message
        )
        self._spawn(record, self._engine.run(plan, message, record=record))
        return record.run_id

    def _spawn(self, record: runs.RunRecord, coro: Any) -> None:
        task: asyncio.Task[runs.RunRecord] = asyncio.get_running_loop().create_task(
            coro, name=f"run:{record.run_id}"
        )
        self._tasks[record.run_id] = task
        self._idle.clear()
        task.add_done_callback(functools.partial(self._done, record.run_id))

    def _done(self, run_id: str, task: asyncio.Task[runs.RunRecord]) -> None:
        self._tasks.pop(run_id, None)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("run.task_crashed", run_id=run_id, error=repr(task.exception()))
        if self._on_finished is not None:
            record = self._engine.history.record(run_id)
            if record is not None:
                self._on_finished(record)

    async def _run_binding(
        self, binding: Any, message: ports.EventMessage, record: runs.RunRecord
    ) -> runs.RunRecord:
        try:
            plan = self._engine.prepare(binding)
        except Exception as exc:
            record.finish(runs.RunStatus.FAILED, error=f"the binding cannot run: {exc}")
            await self._engine.reply(message.reply_target(), engine.failure_text(record))
            self._engine.history.prune()
            return record
        return await self._engine.run(plan, message, record=record)

    async def wait(self, run_id: str) -> runs.RunRecord | None:
        """Wait for one run to finish; its record (None if unknown)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task})
        return self._engine.history.record(run_id)

    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting runs, wait up to `grace` seconds for runs in flight, then cancel the rest."""
        self._accepting = False
        grace = self._grace if grace is None else grace
        pending = set(self._tasks.values())
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            log.warning("runs.cancelled_at_shutdown", count=len(late))
            await asyncio.gather(*late, return_exceptions=True)

    async def cancel(self, run_id: str, *, reason: str = "cancelled") -> bool:
        """Cancel one run in flight (a deleted binding's run after its grace period).

        The engine records the cancellation on the run and tells its origin; `reason` is logged.
        Returns False when the run is not in flight.
        """
        task = self._tasks.get(run_id)
        if task is None:
            return False
        log.warning("run.cancelled", run_id=run_id, reason=reason)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def serve(self) -> None:
        """Run until cancelled (the daemon's TaskGroup), then drain with the grace period."""
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.drain())

    def reopen(self) -> None:
        """Accept runs again after a `drain` (tests)."""
        self._accepting = True
