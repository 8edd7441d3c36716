"""Shared fixtures: every test gets a hard timeout (pyproject), warnings are errors, and no
test may leave asyncio tasks running behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture(autouse=True)
async def _no_leaked_asyncio_tasks() -> AsyncIterator[None]:
    """Fail any async test that leaves tasks running (kopf's 'unattended tasks' rule)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - sync tests run without a loop
        yield
        return
    before = asyncio.all_tasks(loop)
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks(loop) - before if t is not current and not t.done()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"Unattended asyncio tasks detected: {leaked!r}")
