"""The reconciler re-applies the running revision while MCP servers it wants are not ready, and at
once when the server pool says one failed or recovered (`retry_soon`): the stall reasons
`aofctl get` shows stay current without a new revision."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aofd.plan import diff as diff_mod
from aofd.reconcile import loop
from tests.reconcile.test_loop import RecordingApplier, files, make, snap


class McpApplier(RecordingApplier):
    """Reports `waiting` MCP servers not ready on every apply."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.done = asyncio.Event()

    async def apply(self, plan: diff_mod.Plan) -> loop.ApplyOutcome:
        outcome = await super().apply(plan)
        self.done.set()
        return loop.ApplyOutcome(
            stalled=outcome.stalled, listeners=outcome.listeners, mcp_waiting=self.waiting
        )


@pytest.mark.looptime
async def test_servers_not_ready_are_retried_and_a_pool_change_reapplies_at_once(tmp_path: Path) -> None:
    applier = McpApplier()
    applier.waiting = 1
    rec, _, _ = make(tmp_path, applier)
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop=stop))
    try:
        rec.offer(snap(files()))
        await asyncio.sleep(1)
        assert (rec.passes, len(applier.applied)) == (1, 1)

        applier.waiting = 0
        await asyncio.sleep(loop.LISTENER_RETRY_S)
        assert (rec.passes, len(applier.applied)) == (1, 2), "a re-apply, not a pass"
        await asyncio.sleep(loop.LISTENER_RETRY_S * 3)
        assert len(applier.applied) == 2, "every server ready: no more retries"

        applier.done.clear()
        rec.retry_soon()  # the pool: a server died
        await asyncio.wait_for(applier.done.wait(), 1)
        assert (rec.passes, len(applier.applied)) == (1, 3)
    finally:
        stop.set()
        await task
