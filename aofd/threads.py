"""Run one blocking call in its own daemon thread, awaited with a timeout.

Owns the bridge between asyncio and blocking libraries (libgit2, filesystem walks, an SDK's
import). Unlike
`asyncio.to_thread`, the thread is a daemon thread outside the default executor: a call
that never returns (a libgit2 read blocked on a dead TCP peer) is *abandoned* after the
timeout; it cannot be interrupted, keeps running until the library gives up, and does not
block interpreter exit or `loop.shutdown_default_executor()`. Callers must make abandoned
calls harmless (the git mirror holds a lock so the next call fails fast instead of racing).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_blocking(fn: Callable[[], T], *, time_limit: float | None, name: str) -> T:
    """Run `fn()` in a new daemon thread named `name`; raise `TimeoutError` after `time_limit` s.

    Exceptions raised by `fn` are re-raised here. Cancelling the awaiting task abandons the
    thread the same way a timeout does.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # timed out or cancelled: the result is dropped
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # delivered to the awaiting task, not lost in the thread
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(deliver, *outcome)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return await asyncio.wait_for(future, time_limit)
