"""The `Source` objects the reconciler drives: `GitSource`, `DirectorySource`, `build_source`.

Owns the per-source life cycle: fetch (in a thread, with a timeout), the last good snapshot,
status, backoff after failures, and the `run` loop that polls (or watches) and wakes up on
demand. Wake-ups (push hook, SIGHUP, `aofctl reconcile`) set one flag: however many arrive
while a fetch is running, exactly one more fetch follows it, never a queue.

Contract of `run(on_snapshot=..., stop=...)`:

- fetches immediately, then every `interval` (+/- jitter), or on a wake-up, or (directory
  sources that watch) on a coalesced burst of file changes;
- calls `on_snapshot` only when the revision differs from the last one it delivered
  (the first successful fetch is always delivered); exceptions from `on_snapshot` propagate
  and end `run` (the owner's TaskGroup decides what happens then);
- any other exception from a fetch (a bug, an untranslated library error) is logged and
  handled as a failed fetch: the loop never dies of it;
- after a failed fetch sleeps `SourceError.retry_after` (exponential backoff with jitter,
  1 s ... 5 min); a wake-up cuts any sleep short; the last good snapshot stays in force;
- returns when `stop` is set (promptly, also during a sleep; a fetch in flight is awaited
  up to its own timeout);
- a fetched revision that fails signature verification (`verify.SignatureRejected`) is a
  failed fetch whose details (commit, reason, key fingerprint) `status()` shows; `on_rejected`
  is awaited once per refused commit (the owner audits it);
- `mark_applied(revision)`: the owner says which revision of this source is in force (at
  start, the one restored from the state dir; then after each applied pass). A git source
  that verifies signatures refuses a new commit that does not descend from it (unless
  `verify.allow_rollback`), and until its first fetch verifies a revision, its status says the
  restored revision was "not re-verified since restart".

`wake()` must be called from the event loop thread (signal handlers registered with
`loop.add_signal_handler` and aiohttp handlers are). Which kinds a source may define
(`kinds`) is exposed here and enforced by the planner, which parses the files.

A watched directory source collects the paths the watcher reports and hands them to the read
thread, which reads only those (`directory.read_settled(changed=...)`); `wake()` (SIGHUP,
hook, `aofctl reconcile`), a watcher restart and the periodic resync ask for a full walk.

Must not import aofd.runtime, aofd.audit, aofd.reconcile, pygit2 or watchfiles.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import structlog

from aofd import threads
from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.resources.ids import Revision
from aofd.settings import DirectorySourceSpec, GitSourceSpec, SourceSpec
from aofd.source import backoff, directory, git, redact, verify, watch

log = structlog.get_logger("aofd.source")

OnSnapshot = Callable[[snapshot.Snapshot], Awaitable[None]]
OnRejected = Callable[[str, Mapping[str, str]], Awaitable[None]]
"""Called with (source name, `verify.Rejection.as_details()`) once per rejected commit."""
Clock = Callable[[], float]

DIRECTORY_READ_TIMEOUT = 60.0
DIRECTORY_RESYNC_INTERVAL = 300.0  # watched directories are re-read this often in case an event was lost
DIRECTORY_POLL_INTERVAL = 10.0  # directories with watch: false


@dataclasses.dataclass(frozen=True, slots=True)
class SourceStatus:
    """What `/api/v1/status` and `aofctl get sources` show for one source (already redacted).

    `stale` is true when the snapshot in force is older than the last attempt: the most
    recent fetch failed and the last good snapshot is still being served. `provenance` is who
    signed the snapshot in force (sources that verify signatures); `rejected` names the commit,
    reason and key fingerprint of the latest fetched revision that failed verification.
    """

    name: str
    type: Literal["git", "directory"]
    location: str
    revision: Revision | None
    last_fetch_at: float | None
    last_success_at: float | None
    last_error: str | None
    consecutive_failures: int
    next_retry_at: float | None
    stale: bool
    provenance: Mapping[str, str] | None = None
    rejected: Mapping[str, str] | None = None


class Source(Protocol):
    """What the reconciler needs from a source."""

    @property
    def name(self) -> str: ...

    @property
    def kinds(self) -> tuple[str, ...]: ...

    @property
    def last_good(self) -> snapshot.Snapshot | None: ...

    async def fetch(self) -> snapshot.Snapshot: ...

    def status(self) -> SourceStatus: ...

    def wake(self) -> None: ...

    def mark_applied(self, revision: Revision | None) -> None: ...

    async def run(
        self, *, on_snapshot: OnSnapshot, stop: asyncio.Event, on_rejected: OnRejected | None = None
    ) -> None: ...


class _BaseSource(abc.ABC):
    """Shared bookkeeping: last good snapshot, failure count, backoff, status, the run loop.

    Invariants: `_failures` counts consecutive failed fetches (0 after a success);
    `_last_error` is the redacted message of the latest failure, None after a success.
    """

    type: Literal["git", "directory"]

    def __init__(
        self,
        *,
        spec: SourceSpec,
        interval: float,
        retry: backoff.Backoff,
        clock: Clock,
    ) -> None:
        self._spec = spec
        self._interval = interval
        self._retry = retry
        self._clock = clock
        self._wake = asyncio.Event()
        self._fetch_lock = asyncio.Lock()
        self._last_good: snapshot.Snapshot | None = None
        self._last_fetch_at: float | None = None
        self._last_success_at: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._next_retry_at: float | None = None
        self._rejection: Mapping[str, str] | None = None  # the latest failed signature check
        self._applied: Revision | None = None  # the owner's word: this source's revision in force
        self.fetch_count = 0  # fetch attempts started (tests and metrics)

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def kinds(self) -> tuple[str, ...]:
        return self._spec.kinds

    @property
    def spec(self) -> SourceSpec:
        return self._spec

    @property
    def last_good(self) -> snapshot.Snapshot | None:
        return self._last_good

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the source reads from, safe to show (a redacted URL or a path)."""

    @abc.abstractmethod
    async def _produce(self, previous: snapshot.Snapshot | None) -> snapshot.Snapshot:
        """Read one snapshot; raise `SourceError` (redacted) or `TimeoutError`."""

    @abc.abstractmethod
    def _time_limit(self) -> float: ...

    def wake(self) -> None:
        """Ask for a fetch now; wake-ups during a fetch coalesce into exactly one more."""
        self._wake.set()

    def mark_applied(self, revision: Revision | None) -> None:
        """The revision of this source in force (restored at start, or applied by a pass)."""
        self._applied = revision

    async def fetch(self) -> snapshot.Snapshot:
        """Fetch now and return the snapshot in force (the previous object if nothing changed).

        Raises:
            SourceError: the fetch failed; `retry_after` is the backoff delay and the last
                good snapshot stays in force.
        """
        async with self._fetch_lock:
            self.fetch_count += 1
            self._last_fetch_at = self._clock()
            try:
                snap = await self._produce(self._last_good)
            except TimeoutError as exc:
                failure = SourceError(
                    f"fetch of {self.location} timed out after {self._time_limit():g}s", retry_after=5.0
                )
                raise self._failed(failure) from exc
            except verify.SignatureRejected as exc:
                self._rejection = exc.rejection.as_details()
                raise self._failed(exc) from exc
            except SourceError as exc:
                raise self._failed(exc) from exc
            except Exception as exc:  # a bug or an untranslated library error: retry, never crash
                log.exception("source.fetch_crashed", source=self.name)
                failure = SourceError(f"fetch of {self.location} failed: {type(exc).__name__}: {exc}")
                raise self._failed(failure) from exc
            if self._last_good is None or snap.revision != self._last_good.revision:
                log.info(
                    "source.revision",
                    source=self.name,
                    revision=snap.revision,
                    files=len(snap.files),
                    issues=len(snap.issues),
                )
            self._failures = 0
            self._last_error = None
            self._rejection = None
            self._next_retry_at = None
            self._last_success_at = self._last_fetch_at
            self._last_good = snap
            return snap

    def _failed(self, exc: SourceError) -> SourceError:
        """Record a failure; return the error to raise, carrying the backoff delay."""
        self._failures += 1
        delay = self._retry.delay(self._failures)
        message = redact.text(str(exc))
        self._last_error = message
        self._next_retry_at = self._clock() + delay
        log.warning(
            "source.fetch_failed",
            source=self.name,
            location=self.location,
            error=message,
            failures=self._failures,
            retry_after=round(delay, 3),
        )
        return SourceError(message, retry_after=delay)

    def status(self) -> SourceStatus:
        good = self._last_good
        return SourceStatus(
            name=self.name,
            type=self.type,
            location=self.location,
            revision=good.revision if good is not None else None,
            last_fetch_at=self._last_fetch_at,
            last_success_at=self._last_success_at,
            last_error=self._last_error,
            consecutive_failures=self._failures,
            next_retry_at=self._next_retry_at,
            stale=self._last_error is not None and good is not None,
            provenance=good.provenance if good is not None else self._unverified(),
            rejected=self._rejection if self._last_error is not None else None,
        )

    def _unverified(self) -> Mapping[str, str] | None:
        """The provenance shown before any fetch succeeded (none for sources that do not verify)."""
        return None

    def _next_interval(self) -> float:
        return backoff.jittered(self._interval, fraction=0.1)

    async def run(
        self, *, on_snapshot: OnSnapshot, stop: asyncio.Event, on_rejected: OnRejected | None = None
    ) -> None:
        """Fetch now and then on interval, wake-up or change, until `stop` is set.

        `on_rejected` is awaited once per fetched revision that fails signature verification
        (again only if a different commit, or the same one for a different reason, fails).
        """
        async with asyncio.TaskGroup() as group:
            feeder = self._start_feeder(group, stop)
            try:
                await self._loop(on_snapshot=on_snapshot, stop=stop, on_rejected=on_rejected)
            finally:
                if feeder is not None:
                    feeder.cancel()

    def _start_feeder(self, group: asyncio.TaskGroup, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Directory sources start their watcher here; it calls `wake()` per burst."""
        return None

    async def _loop(
        self, *, on_snapshot: OnSnapshot, stop: asyncio.Event, on_rejected: OnRejected | None
    ) -> None:
        delivered: Revision | None = None
        reported: Mapping[str, str] | None = None
        while not stop.is_set():
            # Cleared before the fetch: a wake-up that arrives during it sets the flag again,
            # and the wait below returns at once -> exactly one more fetch, however many came.
            self._wake.clear()
            try:
                snap = await self.fetch()
            except SourceError as exc:
                delay = exc.retry_after
                rejection = self._rejection
                if rejection is not None and rejection != reported:
                    reported = rejection
                    if on_rejected is not None:
                        await on_rejected(self.name, rejection)
            else:
                reported = None
                delay = self._next_interval()
                if snap.revision != delivered:
                    delivered = snap.revision
                    await on_snapshot(snap)
            await _wait_any(stop, self._wake, seconds=delay)


async def _wait_any(*events: asyncio.Event, seconds: float) -> None:
    """Return when any event is set or after `seconds`; leaves no task behind."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


class GitSource(_BaseSource):
    """A git repository mirrored under `state_dir/sources/<name>.git` (see `aofd.source.git`)."""

    type = "git"

    def __init__(
        self,
        spec: SourceSpec,
        state_dir: Path,
        *,
        limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
        retry: backoff.Backoff = backoff.DEFAULT,
        clock: Clock = time.time,
    ) -> None:
        if spec.git is None:
            raise ValueError(f"source {spec.name!r} is not a git source")
        super().__init__(spec=spec, interval=spec.git.interval, retry=retry, clock=clock)
        self._git: GitSourceSpec = spec.git
        self.mirror = git.Mirror(name=spec.name, spec=spec.git, state_dir=state_dir, limits=limits)

    @property
    def location(self) -> str:
        return self.mirror.display_url

    def _time_limit(self) -> float:
        return self._git.timeout

    def _unverified(self) -> Mapping[str, str] | None:
        # A revision restored from the state dir was verified by an earlier process, and the
        # provenance is not kept there: say so until a fetch verifies it (or a newer one) again.
        if self._git.verify is None or self._applied is None:
            return None
        return {"commit": self._applied, "verified": "not re-verified since restart"}

    async def _produce(self, previous: snapshot.Snapshot | None) -> snapshot.Snapshot:
        applied = self._applied
        return await threads.run_blocking(
            lambda: self.mirror.sync(previous, applied=applied),
            time_limit=self._git.timeout,
            name=f"aofd-git-{self.name}",
        )


class DirectorySource(_BaseSource):
    """A local directory, watched with watchfiles (or polled when `watch: false`).

    `ignore` lists paths under the directory that never wake it (the daemon's state and
    audit dirs when they live inside it; `.aofd/` is hidden and ignored anyway). A changed
    tree is handed over only once it has been quiet for `directory.settle` seconds
    (`directory.read_settled`); stopping the source cuts that wait short.
    """

    type = "directory"

    def __init__(
        self,
        spec: SourceSpec,
        *,
        limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
        ignore: Iterable[Path] = (),
        retry: backoff.Backoff = backoff.DEFAULT,
        clock: Clock = time.time,
        resync_interval: float | None = None,
        step_ms: int = watch.DEFAULT_STEP_MS,
        force_polling: bool | None = None,
    ) -> None:
        if spec.directory is None:
            raise ValueError(f"source {spec.name!r} is not a directory source")
        self._dir: DirectorySourceSpec = spec.directory
        default = DIRECTORY_RESYNC_INTERVAL if self._dir.watch else DIRECTORY_POLL_INTERVAL
        super().__init__(spec=spec, interval=resync_interval or default, retry=retry, clock=clock)
        self._limits = limits
        self._ignore = tuple(ignore)
        self._stat_cache = directory.StatCache()
        self.memo = directory.TreeMemo()
        # Paths the watcher reported since the last read (None: unknown, read everything).
        # Filled on the loop, drained by the read thread (also during its settle wait).
        self._changed: set[str] | None = None
        self._changed_lock = threading.Lock()
        self._step_ms = step_ms
        self._force_polling = force_polling
        self._closing = threading.Event()  # set once `stop` is: ends a settle wait in the read thread

    @property
    def location(self) -> str:
        return str(self._dir.path)

    def _time_limit(self) -> float:
        settle = self._dir.settle
        return DIRECTORY_READ_TIMEOUT + max(directory.SETTLE_DEADLINE_S, 10 * settle) + settle

    def wake(self) -> None:
        """An explicit request (SIGHUP, push hook, `aofctl reconcile`): the next read is a full one."""
        with self._changed_lock:
            self._changed = None
        super().wake()

    def note_changes(self, paths: Iterable[str]) -> None:
        """The watcher saw `paths` change: read them (and only them) soon."""
        with self._changed_lock:
            if self._changed is not None:
                self._changed.update(paths)
        self._wake.set()

    def _drain_changes(self) -> frozenset[str] | None:
        """The paths reported since the last call (None: unknown); starts a new tally."""
        with self._changed_lock:
            changed, self._changed = self._changed, set()
        return None if changed is None else frozenset(changed)

    async def _produce(self, previous: snapshot.Snapshot | None) -> snapshot.Snapshot:
        try:
            snap = await threads.run_blocking(
                lambda: directory.read_settled(
                    self._dir.path,
                    settle=self._dir.settle,
                    limits=self._limits,
                    previous=previous,
                    source_name=self.name,
                    stat_cache=self._stat_cache,
                    wait=self._closing.wait,
                    memo=self.memo,
                    changed=self._drain_changes,
                ),
                time_limit=self._time_limit(),
                name=f"aofd-dir-{self.name}",
            )
        except BaseException:
            with self._changed_lock:
                self._changed = None  # the paths drained by the failed read are lost: walk the tree
            raise
        if self.memo.reason is not None:
            log.info("source.full_read", source=self.name, reason=self.memo.reason)
        return snap

    def _start_feeder(self, group: asyncio.TaskGroup, stop: asyncio.Event) -> asyncio.Task[None] | None:
        self._closing.clear()
        return group.create_task(self._feed_and_close(stop), name=f"aofd-watch-{self.name}")

    async def _feed_and_close(self, stop: asyncio.Event) -> None:
        """Watch (when `watch: true`) until `stop`; then end any settle wait in progress."""
        try:
            if self._dir.watch:
                await self._feed(stop)
            else:
                await stop.wait()
        finally:
            self._closing.set()

    async def _feed(self, stop: asyncio.Event) -> None:
        """Turn change bursts into wake-ups; if watching fails, fall back to the resync interval."""
        while not stop.is_set():
            # What changed before the watcher was running is not reported: the first read after
            # it starts (or restarts) walks the whole tree, as a read with unknown paths does.
            with self._changed_lock:
                self._changed = None
            try:
                async for paths in watch.changes(
                    self._dir.path,
                    stop=stop,
                    ignore=self._ignore,
                    step_ms=self._step_ms,
                    force_polling=self._force_polling,
                ):
                    self.note_changes(paths)
            except SourceError as exc:
                self._last_error = redact.text(str(exc))
                self.wake()  # changes may have been missed while not watching: read everything
                await _wait_any(stop, seconds=exc.retry_after)
            except Exception:  # the watcher must not take the source (and the daemon) down
                log.exception("source.watch_crashed", source=self.name)
                self.wake()
                await _wait_any(stop, seconds=5.0)


def build_source(
    spec: SourceSpec,
    *,
    state_dir: Path,
    limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    ignore: Iterable[Path] = (),
) -> GitSource | DirectorySource:
    """The `Source` for one configured source (`ignore` only matters for directories)."""
    if spec.git is not None:
        return GitSource(spec, state_dir, limits=limits)
    return DirectorySource(spec, limits=limits, ignore=(*ignore, Path(state_dir)))
