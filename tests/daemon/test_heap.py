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
    """The daemon pauses the collector before its cold load and freezes the heap when a pass ends,
    or, when the pass started SDK imports, once they are done."""
    daemon, _, _ = make_daemon(tmp_path)
    providers = SimpleNamespace(warming=True)
    daemon.runtime = SimpleNamespace(  # type: ignore[assignment]
        metrics=metrics.Metrics(metrics.Samples), providers=providers
    )
    daemon.load_pause.begin()
    assert not gc.isenabled()

    await daemon._on_pass(status.PassSummary(revision="r1", outcome="applied", duration_s=0.02))
    assert (False, True) == (gc.isenabled(), daemon.load_pause.paused)  # an SDK is still importing

    daemon.load_pause.loaded()  # what `Providers.on_warmed` calls
    assert (True, False) == (gc.isenabled(), daemon.load_pause.paused)
    assert gc.get_freeze_count() > 0


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def test_an_applied_pass_freezes_what_it_keeps_and_frees_its_cycles() -> None:
    """After the load, each pass that applied a revision collects the young heap (its garbage
    cycles are freed, not frozen) and freezes what survived; other passes leave the heap alone."""
    import weakref

    pause = heap.LoadPause()
    pause.begin()
    pause.pass_ended(applied=True)  # the first pass: the load's heap frozen
    kept = Node()  # what the next revision keeps
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    assert collected(kept)

    pause.pass_ended(applied=False)  # a rejected or no-op pass keeps nothing new
    assert gone() is not None

    pause.pass_ended(applied=True)
    assert gone() is None  # collected, not frozen with the rest
    assert not collected(kept)  # frozen: later collections never scan it
    pause.close()


def collected(obj: object) -> bool:
    """Whether `obj` is in one of the generations the collector scans."""
    return any(o is obj for g in (0, 1, 2) for o in gc.get_objects(generation=g))


async def test_no_refreeze_while_the_collector_is_off() -> None:
    """An operator who turned the collector off keeps it off: no collection at a pass's end."""
    pause = heap.LoadPause()
    pause.begin()
    pause.end()
    gc.disable()
    frozen = gc.get_freeze_count()
    pause.pass_ended(applied=True)
    pause.loaded()
    assert (False, frozen) == (gc.isenabled(), gc.get_freeze_count())
    pause.close()


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


async def test_every_nth_refreeze_collects_what_an_earlier_freeze_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An object alive at a freeze that later joins a garbage cycle (an asyncio transport's
    bound method of itself, on 3.11) is freed by the periodic full collection, not kept for ever."""
    import weakref

    monkeypatch.setattr(heap, "FULL_COLLECTION_EVERY", 3)
    pause = heap.LoadPause()
    try:
        pause.begin()
        pause.pass_ended(applied=True)
        pinned = Node()  # alive (a connection in use) when the next pass ends
        gone = weakref.ref(pinned)
        pause.pass_ended(applied=True)  # refreeze 1: frozen with the rest
        del pinned  # closed: now cyclic garbage among frozen objects
        pause.pass_ended(applied=True)  # refreeze 2: the young heap only
        assert gone() is not None
        pause.pass_ended(applied=True)  # refreeze 3: the whole heap
        assert gone() is None
        assert pause.refreezes == 3
    finally:
        pause.close()


async def test_a_waiting_pass_does_not_end_the_load(tmp_path: Path) -> None:
    """With several sources, a pass waiting for the others loads nothing: the pause goes on."""
    daemon, _, _ = make_daemon(tmp_path)
    daemon.runtime = SimpleNamespace(  # type: ignore[assignment]
        metrics=metrics.Metrics(metrics.Samples), providers=SimpleNamespace(warming=False)
    )
    daemon.load_pause.begin()
    await daemon._on_pass(status.PassSummary(revision="", outcome="waiting", duration_s=0.0))
    assert daemon.load_pause.paused
    await daemon._on_pass(status.PassSummary(revision="r1", outcome="applied", duration_s=0.02))
    assert (True, False) == (gc.isenabled(), daemon.load_pause.paused)


async def test_an_sdk_import_after_the_load_is_collected_then_frozen() -> None:
    """The load's heap is frozen when the first pass ends with an SDK still importing; the
    collector stays off; when the import is done its garbage is collected (scanning only what
    came after the freeze) and what it keeps is frozen."""
    import weakref

    pause = heap.LoadPause()
    try:
        pause.begin()
        loaded = Node()
        pause.pass_ended(applied=True, still_loading=True)
        assert (False, True) == (gc.isenabled(), pause.paused)
        assert not collected(loaded)  # frozen with the load
        module_state = Node()  # what the import keeps
        garbage = Node()  # what building it left behind
        gone = weakref.ref(garbage)
        del garbage
        pause.loaded()
        assert gone() is None
        assert (True, False) == (gc.isenabled(), pause.paused)
        assert not collected(module_state)
    finally:
        pause.close()
