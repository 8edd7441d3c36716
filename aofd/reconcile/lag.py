"""Event-loop lag: how long the loop could not run anything, measured while a pass runs.

This module owns `LagProbe`: a task that asks to wake every `interval` seconds and records by
how much each wake-up comes late. Whatever runs on the loop without yielding (a pass's work,
a large JSON dump) delays it by that long, so the largest overshoot is the longest a webhook or
an admin request waited for the loop. Each reconcile pass runs one and reports the maximum as
`PassSummary.loop_lag_s`; tests and `bench/` read it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

DEFAULT_INTERVAL_S = 0.01


class LagProbe:
    """`async with LagProbe() as probe:` ... `probe.max_lag_s` (seconds, 0.0 when never late)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.max_lag_s = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._due: float | None = None

    async def __aenter__(self) -> LagProbe:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Start sampling on the running loop (once); the first wake-up is due one interval from now,
        so a stall that begins before the probe's task first runs is counted too."""
        if self._task is None:
            self._due = time.monotonic() + self.interval_s
            self._task = asyncio.get_running_loop().create_task(self._run(), name="aofd-loop-lag")

    async def stop(self) -> float:
        """Stop sampling; counts the wake-up in flight if it is already late. Returns `max_lag_s`."""
        task, self._task = self._task, None
        if task is not None:
            due = self._due
            if due is not None:
                self._record(time.monotonic() - due)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return self.max_lag_s

    def _record(self, late: float) -> None:
        if late > self.max_lag_s:
            self.max_lag_s = late

    async def _run(self) -> None:
        interval = self.interval_s
        while True:
            due = self._due if self._due is not None else time.monotonic() + interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            self._record(now - due)
            self.samples += 1
            self._due = now + interval
