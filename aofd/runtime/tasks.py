"""`TaskSet`: the one owner of background tasks in the runtime (spawn, drain with a grace, cancel).

Listeners (audit writes, polling loops), the dispatcher (no-match replies), the applier
(retiring replaced listeners) and the flow starter (runs) each own the tasks they start through
one of these, instead of keeping a set of their own. The set holds a task until it is done; a
task that fails is logged with the owner's name and never goes unnoticed; `drain(grace)` waits
up to `grace` seconds, then cancels what is left and waits for it to finish, so nothing leaks
past the owner's stop. Tasks may be keyed (a run's id) to be found or cancelled one by one.

Only asyncio and structlog; it knows nothing of what the tasks do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("aofd.runtime")

T = TypeVar("T")


class TaskSet(Generic[T]):
    """Background tasks of one owner (`name` is logged when one fails).

    Invariant: `_tasks` holds exactly the tasks started here that have not finished, each under
    its key (its own id when spawned without one); `_idle` is set exactly when it is empty.
    """

    def __init__(self, name: str, *, on_done: Callable[[str, asyncio.Task[T]], None] | None = None) -> None:
        self.name = name
        self._on_done = on_done
        self._tasks: dict[str, asyncio.Task[T]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def spawn(
        self, coro: Coroutine[Any, Any, T], *, key: str | None = None, name: str | None = None
    ) -> asyncio.Task[T]:
        """Run `coro` in a task owned by this set; `key` finds it again (`get`, `cancel`)."""
        task = asyncio.get_running_loop().create_task(coro, name=name or key)
        task_key = key if key is not None else f"task-{id(task)}"
        self._tasks[task_key] = task
        self._idle.clear()
        task.add_done_callback(lambda t: self._finished(task_key, t))
        return task

    def get(self, key: str) -> asyncio.Task[T] | None:
        return self._tasks.get(key)

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("task.failed", owner=self.name, task=task.get_name(), error=repr(task.exception()))
        if self._on_done is not None:
            self._on_done(key, task)

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for every task, then cancel the rest; returns how many it cancelled.

        Cancelled while waiting, it still cancels every task before it gives up.
        """
        return await self._drain(set(self._tasks.values()), grace)

    async def drain_keys(self, keys: set[str], grace: float) -> int:
        """`drain`, for the tasks under `keys` only; returns how many it cancelled."""
        return await self._drain({task for key, task in self._tasks.items() if key in keys}, grace)

    @staticmethod
    async def _drain(pending: set[asyncio.Task[T]], grace: float) -> int:
        if not pending:
            return 0
        try:
            if grace > 0:
                _done, pending = await asyncio.wait(pending, timeout=grace)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
        return len(pending)

    async def cancel(self, key: str) -> bool:
        """Cancel one task and wait for it to end; False when no such task is running."""
        task = self._tasks.get(key)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def wait(self, key: str) -> None:
        """Wait for one task to finish (at once when it is not running)."""
        task = self._tasks.get(key)
        if task is not None:
            await asyncio.wait({task})

    async def idle(self) -> None:
        """Wait until no task of this set is running."""
        await self._idle.wait()
