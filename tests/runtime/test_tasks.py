"""`TaskSet`: the one owner of the runtime's background tasks."""

from __future__ import annotations

import asyncio

from aofd.runtime import tasks


async def test_a_drain_cut_short_still_cancels_every_task() -> None:
    """Shutdown during a hot swap's drain cancels the drain: the tasks it waited for are cancelled
    too, never left running without an owner."""
    owned: tasks.TaskSet[None] = tasks.TaskSet("test")
    forever = asyncio.Event()
    task = owned.spawn(forever.wait())
    drain = asyncio.create_task(owned.drain(30.0))
    await asyncio.sleep(0)
    drain.cancel()
    await asyncio.gather(drain, return_exceptions=True)
    assert task.cancelled()
    await owned.idle()
