"""Deadlines that stop counting while a person decides (effects: asyncio timeouts).

A run has a deadline (its Context's `limits.max_execution_time_seconds`), and parts of it have
their own (a Script node's `timeout_seconds`, a fleet's `timeout_ms`). Time spent waiting for
an approval, a command's or an Approval node's, does not count against any of them: the wait
has its own bound, the approval's `timeout_seconds`, and a deadline that ran on while a human
read the prompt would make a late click do nothing while the buttons still looked live.

This module owns that rule:

- `deadline(when)` is `asyncio.timeout_at(when)` that can be paused; the scopes a task is in
  are kept in a context variable, so tasks a run starts (its nodes, a fleet's members) see the
  scopes they were started in;
- `paused()` stops every scope the current task is in for the length of the `with` block: their
  timeouts are lifted and, at the end, set again as far in the future as the pause lasted.
  Overlapping pauses (two branches of a run waiting at once) count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator


class _Scope:
    """One pausable timeout: how many pauses hold it and since when the first one did."""

    __slots__ = ("_holds", "_loop", "_on_extend", "_on_pause", "_since", "_timeout", "_when")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: asyncio.Timeout,
        on_extend: Callable[[float], None] | None,
        on_pause: Callable[[], None] | None,
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_extend = on_extend
        self._on_pause = on_pause
        self._holds = 0
        self._since = 0.0
        self._when: float | None = None

    def pause(self) -> None:
        if self._on_pause is not None:
            self._on_pause()
        self._holds += 1
        if self._holds > 1 or self._timeout.expired():
            return
        self._since = self._loop.time()
        self._when = self._timeout.when()
        if self._when is not None:
            self._timeout.reschedule(None)

    def resume(self) -> None:
        self._holds -= 1
        if self._holds > 0:
            return
        waited = self._loop.time() - self._since
        if self._when is not None and not self._timeout.expired():
            with contextlib.suppress(RuntimeError):  # the scope was left meanwhile
                self._timeout.reschedule(self._when + waited)
        self._when = None
        if self._on_extend is not None:
            self._on_extend(waited)


_SCOPES: contextvars.ContextVar[tuple[_Scope, ...]] = contextvars.ContextVar("aofd_deadlines", default=())


@contextlib.asynccontextmanager
async def deadline(
    when: float | None,
    *,
    on_extend: Callable[[float], None] | None = None,
    on_pause: Callable[[], None] | None = None,
) -> AsyncIterator[asyncio.Timeout]:
    """`asyncio.timeout_at(when)` (event-loop time; None: no deadline) that `paused()` can stop.

    `on_pause()` is called at each `paused()` block that starts (one per approval), and
    `on_extend(seconds)` when the scope runs again, with how long it stood still (overlapping
    pauses count once): a run moves its own record of the deadline by as much.
    """
    async with asyncio.timeout_at(when) as timeout:
        scope = _Scope(asyncio.get_running_loop(), timeout, on_extend, on_pause)
        token = _SCOPES.set((*_SCOPES.get(), scope))
        try:
            yield timeout
        finally:
            _SCOPES.reset(token)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Stop the deadlines the current task is in while the block runs (a person is deciding)."""
    scopes = _SCOPES.get()
    for scope in scopes:
        scope.pause()
    try:
        yield
    finally:
        for scope in scopes:
            scope.resume()
