"""The garbage collector's policy around the daemon's cold load.

A cold load allocates millions of long-lived objects (documents, models, the registry) in a
few seconds. With the collector on, every 25 % of growth triggers a full collection over the
whole heap so far (about ten at 100,000 resources, a third of the load's time), and none of
them frees anything: the load makes no cyclic garbage. So, as CPython's documentation of
`gc.freeze` suggests for such a burst, the collector is paused from the start until the first
reconcile pass has ended (after a long pause, one full collection first frees the cycles made
meanwhile), and what is alive is moved to the permanent generation
(`gc.freeze()`), which later collections never scan: an edit's collections cost what the
edit allocates, not what the daemon holds. Frozen objects are still freed by reference
counting when a later revision drops them (resources hold no reference cycles).

The pause is bounded: `LoadPause.end` runs at the first pass's end, or after `MAX_PAUSE_S`
if no pass ends by then (a source that never answers), and at shutdown (`close`). What is frozen
stays frozen at shutdown, so the exit does not scan the whole heap either.

After the load, what the daemon allocates and keeps (the SDKs a first binding imports, a new
revision's resources, a directory's first full re-read) lands in the collected generations
again, and CPython runs a full collection whenever a quarter of that young heap's size was
promoted: measured at 10,000 resources, 80,000-150,000 such objects and a 35-50 ms stall of
every thread a few times per edit. So every pass that applies a revision ends with
`LoadPause.refreeze`: one collection of the young heap (what this pass and the time since the
last one left, not the daemon's whole state: it frees the cycles made meanwhile, so none is
frozen) and a freeze of what survived. The trade: an object alive at a freeze that later
becomes part of a reference cycle is not collected while frozen (reference counting still
frees everything outside cycles, and the resources hold none). Such objects exist: on
Python 3.11 an asyncio socket transport keeps a bound method of itself, so every connection
open at a freeze (keep-alive webhooks, admin calls, the model and chat APIs) would stay
after it closes, about two per applied pass (0.5 KB) as measured. So every
`FULL_COLLECTION_EVERY`-th refreeze is a full one instead: the frozen heap is unfrozen,
collected whole and frozen again. That one costs a stall of the whole heap's size (about
50 ms at 10,000 resources, half a second at 100,000), once per that many applied revisions,
at a pass's end; the garbage it finds is bounded by what that many refreezes can pin. The
garbage the daemon made while the load's pause lasted (requests served meanwhile) is left to
that full collection too, rather than paying for one at the end of the load.

Also here: `limit_malloc_arenas`. Passes, source reads and the admin API's dry runs run in
worker threads, and glibc gives each new thread its own malloc arena (up to 8 per core); what
a pass frees in one arena is kept there, so the resident size climbed with every edit (+20 MB
over 100 edits at 10,000 resources) although the live heap stayed flat. Two arenas keep it
flat (+2 MB over 100 edits). An operator's `MALLOC_ARENA_MAX` wins; other C libraries are left
alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import time

MAX_PAUSE_S = 300.0
"""Longest the collector stays paused when no first pass ends (seconds)."""

LONG_PAUSE_S = 60.0
"""A pause at least this long ends with a full collection before the freeze (see `LoadPause.end`)."""

FULL_COLLECTION_EVERY = 100
"""Every this many refreezes, one full collection of the whole heap (see the module docstring)."""

MALLOC_ARENAS = 2
"""glibc malloc arenas the daemon allows itself (`M_ARENA_MAX`); glibc's default is 8 per core."""

_M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before worker threads start); False when not applied.

    Not applied when `MALLOC_ARENA_MAX` is set (glibc read it already) or the C library is not glibc.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt ignores arenas)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


class LoadPause:
    """Collector paused from `begin()` to the first `end()`; the heap then frozen. Loop-thread only."""

    def __init__(self) -> None:
        self._paused = False
        self._was_enabled = False
        self._froze = False
        self._timer: asyncio.TimerHandle | None = None
        self._since = 0.0
        self.refreezes = 0
        self._froze_early = False  # the load's heap frozen while the pause goes on (SDK imports)

    @property
    def paused(self) -> bool:
        return self._paused

    def begin(self, *, max_pause_s: float = MAX_PAUSE_S) -> None:
        """Pause the collector (call once, on the event loop, before the cold load starts)."""
        if self._paused or self._froze:
            return
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._paused = True
        self._since = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(max_pause_s, self.end)

    def end(self) -> None:
        """The load is over: freeze what is alive and give the collector back. Idempotent."""
        if not self._paused:
            return
        self._paused = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Cycles made while paused would be frozen with the heap and never freed. The load makes
        # none, and a full collection costs a stall the size of the heap (about half a second at
        # 100,000 resources), so one runs only after a long pause (a source that failed and was
        # retried meanwhile: tracebacks, requests), when that garbage can add up.
        if time.monotonic() - self._since >= LONG_PAUSE_S:
            gc.collect()
        gc.freeze()
        self._froze = True  # a later begin() is not a cold load
        if self._was_enabled:
            gc.enable()

    def pass_ended(self, *, applied: bool, still_loading: bool = False) -> None:
        """At every pass's end: the first ends the load (`end`) unless the load goes on
        (`still_loading`: an SDK import it started, or a pass still waiting for another source;
        then `loaded` or a later pass will); a later one that applied a revision freezes what
        it left (`refreeze`)."""
        if self._paused:
            if still_loading:
                gc.freeze()  # what the load made so far; the collector stays off until `loaded`
                self._froze_early = True
            else:
                self.end()
        elif applied:
            self.refreeze()

    def loaded(self) -> None:
        """Something long-lived was loaded in the background (an SDK): end the load's pause if it
        still runs, else freeze what was loaded.

        An SDK's import leaves cyclic garbage (its classes and models are built through cycles),
        which, frozen with the rest, would stay until the next full collection. When the loaded
        heap was frozen already (`pass_ended(still_loading=True)`), one collection scans only what
        came after, the import, before it is frozen too: a one-time stall of about 50 ms at
        10,000 resources, after start, instead of automatic full collections during the import."""
        if self._paused:
            if self._froze_early:
                gc.collect()
            self.end()
        else:
            self.refreeze()

    def refreeze(self) -> None:
        """Collect the young heap, then freeze what survived; every `FULL_COLLECTION_EVERY`-th
        time the whole heap is unfrozen and collected first (see the module docstring)."""
        if not self._froze or not gc.isenabled():
            return  # the collector is off (the operator's choice, or still paused): leave it so
        self.refreezes += 1
        if self.refreezes % FULL_COLLECTION_EVERY == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        """At shutdown: end a pause still running (the frozen heap stays frozen)."""
        self.end()
