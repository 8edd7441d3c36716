"""aofd.daemon.heap: the collector is paused through the cold load, the loaded heap frozen after it,
the pause is bounded and ends at shutdown; glibc's malloc arenas are capped."""

from __future__ import annotations

import asyncio
import gc
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from aofd.daemon import heap, metrics
from aofd.reconcile import status
from tests.daemon.test_main import make_daemon


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


async def test_paused_through_the_load_then_frozen() -> None:
    pause = heap.LoadPause()
    pause.begin()
    assert (False, True) == (gc.isenabled(), pause.paused)
    loaded = [{"resource": i} for i in range(1000)]  # what the load keeps
    pause.end()
    assert (True, False) == (gc.isenabled(), pause.paused)
    assert gc.get_freeze_count() >= len(loaded)
    assert id(loaded[0]) not in {id(o) for o in gc.get_objects(generation=2)}  # never rescanned
    pause.close()  # shutdown leaves the loaded heap frozen: the exit does not scan it either
    assert (True, True) == (gc.isenabled(), gc.get_freeze_count() >= len(loaded))


async def test_end_is_idempotent_and_begin_after_a_freeze_does_nothing() -> None:
    pause = heap.LoadPause()
    pause.begin()
    pause.end()
    frozen = gc.get_freeze_count()
    pause.end()
    pause.begin()  # a later pass is not a cold load
    assert (True, frozen) == (gc.isenabled(), gc.get_freeze_count())
    pause.close()


async def test_the_pause_ends_by_itself_when_no_pass_ends() -> None:
    pause = heap.LoadPause()
    pause.begin(max_pause_s=0.0)
    assert not gc.isenabled()
    for _ in range(3):  # the timer fires on the loop's next iterations
        await asyncio.sleep(0)
    assert (True, False) == (gc.isenabled(), pause.paused)
    pause.close()


async def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    pause = heap.LoadPause()
    pause.begin()
    pause.end()
    assert not gc.isenabled()
    pause.close()


async def test_close_during_the_pause_gives_the_collector_back() -> None:
    pause = heap.LoadPause()
    pause.begin()
    pause.close()
    assert (True, False) == (gc.isenabled(), pause.paused)


async def test_the_daemons_first_pass_ends_the_pause(tmp_path: Path) -> None:
    """The daemon pauses the collector before its cold load and freezes the heap when a pass ends."""
    daemon, _, _ = make_daemon(tmp_path)
    daemon.runtime = SimpleNamespace(metrics=metrics.Metrics(metrics.Samples))  # type: ignore[assignment]
    daemon.load_pause.begin()
    assert not gc.isenabled()

    await daemon._on_pass(status.PassSummary(revision="r1", outcome="applied", duration_s=0.02))

    assert (True, False) == (gc.isenabled(), daemon.load_pause.paused)
    assert gc.get_freeze_count() > 0


def test_malloc_arenas_are_capped_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's arena cap is set from the daemon; an operator's MALLOC_ARENA_MAX is left to glibc."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not heap.limit_malloc_arenas()
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert glibc == heap.limit_malloc_arenas(heap.MALLOC_ARENAS)


async def test_cycles_made_during_a_long_pause_are_freed_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a long pause (a source failing and retried), what became garbage during it is collected
    before the heap is frozen."""
    monkeypatch.setattr(heap, "LONG_PAUSE_S", 0.0)
    import weakref

    class Node:
        def __init__(self) -> None:
            self.me = self

    pause = heap.LoadPause()
    try:
        pause.begin()
        node = Node()
        alive = weakref.ref(node)
        del node
        pause.end()
        assert alive() is None
    finally:
        pause.close()
        gc.unfreeze()
