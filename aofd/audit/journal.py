"""The audit log of the daemon: one append-only, hash-chained JSONL journal per Context.

This module owns the asynchronous front (`AuditLog`, which satisfies
`aofd.runtime.ports.AuditSink` structurally) and the threads behind it. Disk I/O never
runs on the event loop: each Context has one writer thread that owns its
`aofd.audit.segment.ContextJournal`, takes requests from a queue, writes every line with
one `os.write`, and commits in groups:

- `durable=True` (a record that authorises an action, e.g. `command.started`) resolves
  only after an fsync covering it; concurrent durable writes share one fsync. Any failure
  raises `AuditUnavailable`: fail closed.
- `durable=False` resolves once the line is written; an fsync follows within
  `group_commit_interval` seconds or `group_commit_records` records.

A write that does not finish within `write_timeout` raises `AuditUnavailable` (a hung
disk becomes a refusal, not a hang). Counters and latency histograms live on
`AuditLog.metrics` as plain attributes for the daemon to export.

With a key chain (`aofd.audit.seal.KeyChain`) `AuditLog` also seals: `seal_epoch` (run each
epoch by the task `start_sealing` starts) puts one `audit.sealed` record in every open
Context's log through its writer thread, fsyncs those seals, and only then evolves the key
durably; each writer seals at rotation and as the last line when it stops, and once every stop
seal is durable `aclose` moves the key on one more epoch, so the key left on disk while aofd is
down cannot seal the stop epoch.

The files, the chain and recovery are `aofd.audit.segment`'s business.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import structlog

from aofd import errors
from aofd.audit import records, seal, segment

log = structlog.get_logger()

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the write latency histograms, Prometheus style."""

ROOT_LOCK_NAME: Final = ".aofd-audit.lock"


@dataclasses.dataclass(slots=True)
class Histogram:
    """A Prometheus-style histogram: per-bucket counts (not cumulative), sum and count."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """`(le, count)` pairs including `+Inf`, as Prometheus exposes them."""
        total = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclasses.dataclass(slots=True)
class AuditMetrics:
    """What the daemon exports to Prometheus. Updated on the event loop, except `events`
    (appended by writer threads under `lock`)."""

    records_total: int = 0
    durable_total: int = 0
    failures_total: int = 0
    timeouts_total: int = 0
    truncated_total: int = 0
    durable_latency: Histogram = dataclasses.field(default_factory=Histogram)
    grouped_latency: Histogram = dataclasses.field(default_factory=Histogram)
    segment_events: dict[str, int] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def count_event(self, message: str) -> None:
        """Count a journal event (rotation, recovery, failed fsync ...) by its message."""
        with self.lock:
            self.segment_events[message] = self.segment_events.get(message, 0) + 1


@dataclasses.dataclass(slots=True)
class _Request:
    record: Mapping[str, Any]
    durable: bool
    future: asyncio.Future[bool]


@dataclasses.dataclass(slots=True)
class _SealRequest:
    key: seal.EpochKey
    future: asyncio.Future[bool]


@dataclasses.dataclass(frozen=True, slots=True)
class SealPass:
    """What one epoch's seal pass did: the epoch it closed, the Contexts sealed, those that failed."""

    epoch: int | None
    sealed: int
    failed: Mapping[str, str]
    seconds: float


_STOP: Final = object()
SEAL_SLICE: Final = 32
"""How many Contexts a seal pass seals at once (see `AuditLog.seal_epoch`)."""


class _Writer:
    """One Context's writer thread and its queue."""

    def __init__(
        self,
        *,
        journal: segment.ContextJournal,
        options: segment.JournalOptions,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.journal = journal
        self._options = options
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"aofd-audit-{journal.context}", daemon=True)
        self._opened: asyncio.Future[None] = loop.create_future()
        self._stopped: asyncio.Future[None] = loop.create_future()

    async def start(self) -> None:
        self._thread.start()
        try:
            await self._opened
        except BaseException:
            await asyncio.shield(self._stopped)
            self._thread.join()
            raise

    def submit(self, request: _Request | _SealRequest) -> None:
        self._queue.put(request)

    async def stop(self) -> None:
        self._queue.put(_STOP)
        await asyncio.shield(self._stopped)
        self._thread.join()

    # -- the thread --

    def _run(self) -> None:
        try:
            self.journal.open()
        except BaseException as exc:
            self._resolve_fn(self._opened, exc)
            self._resolve_fn(self._stopped, None)
            return
        self._resolve_fn(self._opened, None)
        try:
            self._loop_forever()
        finally:
            self.journal.close()
            self._resolve_fn(self._stopped, None)

    def _loop_forever(self) -> None:
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._sync_quietly()
                deadline = None
                continue
            batch = [item]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 512:
                    batch.append(self._queue.get_nowait())
            stop = any(entry is _STOP for entry in batch)
            self._process([entry for entry in batch if isinstance(entry, _Request | _SealRequest)])
            if stop:
                self._seal_at_stop()
                return
            if self.journal.unsynced >= self._options.group_commit_records:
                self._sync_quietly()
            if self.journal.unsynced and deadline is None:
                deadline = time.monotonic() + self._options.group_commit_interval
            elif not self.journal.unsynced:
                deadline = None

    def _process(self, batch: list[_Request | _SealRequest]) -> None:
        results: list[tuple[asyncio.Future[bool], bool | BaseException]] = []
        durable: list[tuple[asyncio.Future[bool], bool]] = []
        for request in batch:
            if isinstance(request, _SealRequest):
                results.append((request.future, self._seal(request.key)))
                continue
            try:
                truncated = self.journal.append(request.record)
            except errors.AuditUnavailable as exc:
                results.append((request.future, exc))
                continue
            except Exception as exc:  # a bug or a record json cannot encode: fail this write only
                results.append(
                    (request.future, errors.AuditUnavailable(f"audit record not written: {exc!r}"))
                )
                continue
            if request.durable:
                durable.append((request.future, truncated))
            else:
                results.append((request.future, truncated))
        if durable:
            try:
                self.journal.sync()
            except errors.AuditUnavailable as exc:
                results.extend((future, exc) for future, _ in durable)
            else:
                results.extend(durable)
        if results:
            self._loop_call(_resolve_all, results)

    def _seal(self, key: seal.EpochKey) -> bool | BaseException:
        """Seal and fsync: the pass moves the key on only after every seal is durable (a seal lost
        in a crash after its key was destroyed could never be written again)."""
        try:
            written = self.journal.seal("epoch", key)
            self.journal.sync()
            return written
        except errors.AuditUnavailable as exc:
            return exc
        except Exception as exc:  # a bug: fail this seal only
            return errors.AuditUnavailable(f"audit seal not written: {exc!r}")

    def _seal_at_stop(self) -> None:
        """The last line of a log that stops cleanly: a `stop` seal (fsynced by the close)."""
        try:
            self.journal.seal("stop")
        except errors.AuditUnavailable as exc:
            log.warning("audit stop seal not written", context=self.journal.context, error=str(exc))

    def _sync_quietly(self) -> None:
        with contextlib.suppress(errors.AuditUnavailable):
            self.journal.sync()  # the failure is recorded; the next write reports and recovers

    def _resolve_fn(self, future: asyncio.Future[None], exc: BaseException | None) -> None:
        def resolve() -> None:
            if future.done():
                return
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)

        self._loop_call(resolve)

    def _loop_call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)


def _resolve_all(results: list[tuple[asyncio.Future[bool], bool | BaseException]]) -> None:
    for future, outcome in results:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class AuditLog:
    """The daemon's audit log: `<audit_dir>/<context>/audit-*.jsonl`, one writer per context.

    Use as `async with AuditLog(audit_dir=...) as audit:` or call `open()`/`aclose()`.
    `open()` takes a lock on the audit dir (a second daemon on the same dir fails there);
    contexts open on first write or explicitly with `open_context` (readiness wants them
    all open and tail-recovered before `READY=1`).
    """

    def __init__(
        self,
        *,
        audit_dir: Path,
        options: segment.JournalOptions | None = None,
        origin: records.Origin | None = None,
        clock: Callable[[], float] = time.time,
        keychain: seal.KeyChain | None = None,
        on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
        survivors: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> None:
        self.audit_dir = Path(audit_dir)
        # Commands of a previous daemon found at start-up, per Context, by command id: their
        # `command.abandoned` records (written when the Context opens) carry these fields.
        self._survivors: dict[str, Mapping[str, Mapping[str, Any]]] = dict(survivors or {})
        self.options = options or segment.JournalOptions()
        self.metrics = AuditMetrics()
        self._origin = origin or records.Origin()
        self._clock = clock
        self.keychain = keychain
        if keychain is not None:  # signed into each certificate: what a verifier may find pruned
            keychain.retention = int(self.options.retention_seconds or 0)
        self._sealing: asyncio.Task[None] | None = None
        self._on_event = on_event
        self._writers: dict[str, _Writer] = {}
        self._open_lock = asyncio.Lock()
        self._root_lock_fd: int | None = None
        self._closed = False

    async def __aenter__(self) -> AuditLog:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(
        self, contexts: Iterable[str] = (), *, log_paths: Mapping[str, str | None] | None = None
    ) -> list[str]:
        """Lock the audit dir and open `contexts`; return the reasons of ignored `log_paths`."""
        if self._root_lock_fd is None:
            self._root_lock_fd = await asyncio.to_thread(self._lock_root)
        if self.keychain is not None:  # never seal with a key older than the current epoch's
            try:
                await asyncio.to_thread(self.keychain.advance_to, self.keychain.epoch_at(self._clock()))
                await asyncio.to_thread(self.keychain.claim)
            except OSError as exc:
                raise errors.AuditUnavailable(
                    f"cannot move the audit sealing key forward in {self.keychain.directory}: {exc}"
                ) from exc
        ignored: list[str] = []
        for context in contexts:
            reason = await self.open_context(context, log_path=(log_paths or {}).get(context))
            if reason:
                ignored.append(reason)
        return ignored

    def _lock_root(self) -> int:
        try:
            os.makedirs(self.audit_dir, mode=self.options.dir_mode, exist_ok=True)
        except OSError as exc:
            raise errors.AuditUnavailable(f"cannot create audit dir {self.audit_dir}: {exc}") from exc
        return segment.take_lock(self.audit_dir / ROOT_LOCK_NAME, what=f"audit dir {self.audit_dir}")

    async def open_context(self, context: str, *, log_path: str | None = None) -> str | None:
        """Open (lock, recover, start a segment for) one context; idempotent.

        Returns why the Context's `audit.log_path` was ignored, or None. Raises
        `AuditUnavailable` for an invalid name, a symlinked segment, a held lock ...
        """
        if context in self._writers:
            return None
        directory, ignored = segment.resolve_log_dir(self.audit_dir, context, log_path)
        async with self._open_lock:
            if context in self._writers:
                return None
            if self._closed:
                raise errors.AuditUnavailable("the audit log is closed")
            if self._root_lock_fd is None:
                self._root_lock_fd = await asyncio.to_thread(self._lock_root)
            journal = segment.ContextJournal(
                context=context,
                directory=directory,
                options=self.options,
                origin=self._origin,
                clock=self._clock,
                sealer=self._current_seal_key,
                ledger=self.keychain,
                on_event=self._journal_event,
                survivors=self._survivors.get(context),
            )
            writer = _Writer(journal=journal, options=self.options, loop=asyncio.get_running_loop())
            await writer.start()
            self._writers[context] = writer
            self._survivors.pop(context, None)  # closed now, and durably: never again
        if ignored:
            log.warning("audit log_path ignored", context=context, reason=ignored)
        return ignored

    def _current_seal_key(self) -> seal.EpochKey | None:
        return self.keychain.current if self.keychain is not None else None

    def sealing_status(self) -> dict[str, Any]:
        """For `aofctl status`: whether the logs are sealed, the chain, epoch and epoch length."""
        chain = self.keychain
        if chain is None:
            return {"enabled": False}
        return {"enabled": True, "chain": chain.chain, "epoch": chain.epoch, "interval": chain.interval}

    async def seal_epoch(self, now: float | None = None) -> SealPass:
        """Close the current epoch if `now` is past it: seal every open Context's log with the
        epoch's key, then evolve the key durably to `now`'s epoch (destroying the old one).

        Every open Context is sealed, idle or not: a verifier reads an epoch without a seal as
        a gap. A Context whose seal cannot be written is reported in `failed` (its journal is
        failed like after any write failure). Raises OSError when the key cannot be evolved;
        the next pass tries again (the epochs in between show as gaps).
        """
        started = time.perf_counter()
        chain = self.keychain
        if chain is None:
            return SealPass(None, 0, {}, 0.0)
        at = self._clock() if now is None else now
        target = chain.epoch_at(at)
        if target <= chain.epoch:
            return SealPass(None, 0, {}, 0.0)
        key = chain.current
        if at >= chain.epoch_end(key.epoch) + chain.interval:
            # Late (the host was suspended, the clock stepped, the loop stalled): a seal now would
            # be dated outside its epoch. Retire the key unused; the epochs show as a gap.
            await asyncio.to_thread(chain.advance_to, target)
            log.warning(
                "audit seal pass late: key moved on without sealing (a gap)",
                epoch=key.epoch,
                late_seconds=round(at - chain.epoch_end(key.epoch), 1),
            )
            return SealPass(key.epoch, 0, {}, time.perf_counter() - started)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.write_timeout
        pending: list[tuple[str, asyncio.Future[bool]]] = []
        writers = list(self._writers.items())
        for begin in range(0, len(writers), SEAL_SLICE):
            # A slice at a time: a thousand writer threads encoding and fsyncing at once starve the
            # event loop of the GIL (a 100-200 ms stall); a slice keeps it responsive.
            batch: list[asyncio.Future[bool]] = []
            for context, writer in writers[begin : begin + SEAL_SLICE]:
                future: asyncio.Future[bool] = loop.create_future()
                writer.submit(_SealRequest(key, future))
                pending.append((context, future))
                batch.append(future)
            await asyncio.wait(batch, timeout=max(0.0, deadline - loop.time()))
        failed: dict[str, str] = {}
        sealed = 0
        for context, future in pending:
            if not future.done():
                future.cancel()  # the writer skips it; a hung disk is a failure like any other
                failed[context] = f"seal not written within {self.options.write_timeout}s"
            elif (exc := future.exception()) is not None:
                failed[context] = str(exc) or type(exc).__name__
            else:
                sealed += 1
        self.metrics.failures_total += len(failed)
        if not failed:
            chain.published(key.epoch)
        await asyncio.to_thread(chain.advance_to, target)
        for context, why in failed.items():
            log.error("audit seal not written", context=context, epoch=key.epoch, error=why)
        return SealPass(key.epoch, sealed, failed, time.perf_counter() - started)

    def start_sealing(self) -> None:
        """Seal every epoch from now on, in a task (until `aclose`); no-op without a key chain."""
        if self.keychain is None or self._sealing is not None:
            return
        self._sealing = asyncio.get_running_loop().create_task(self._seal_forever(), name="aofd-audit-seal")

    async def _seal_forever(self) -> None:
        chain = self.keychain
        assert chain is not None
        while True:
            await asyncio.sleep(max(0.0, chain.epoch_end(chain.epoch) - self._clock()))
            try:
                await self.seal_epoch()
            except OSError as exc:
                log.error(
                    "audit sealing key not evolved; retrying", error=str(exc), directory=str(chain.directory)
                )
                await asyncio.sleep(min(float(chain.interval), 5.0))

    def _journal_event(self, message: str, fields: Mapping[str, Any]) -> None:
        self.metrics.count_event(message)
        if self._on_event is not None:
            self._on_event(message, fields)

    async def write(self, context: str, record: Mapping[str, Any], *, durable: bool = False) -> None:
        """Append `record` to `context`'s log; with `durable=True`, return only once fsynced.

        Raises `AuditUnavailable` when the record could not be written (or made durable).
        """
        started = time.perf_counter()
        try:
            writer = self._writers.get(context)
            if writer is None:
                await self.open_context(context)
                writer = self._writers[context]
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            writer.submit(_Request(record, durable, future))
            try:
                async with asyncio.timeout(self.options.write_timeout):
                    truncated = await future
            except TimeoutError:
                self.metrics.timeouts_total += 1
                raise errors.AuditUnavailable(
                    f"audit write for context {context!r} did not finish within {self.options.write_timeout}s"
                ) from None
        except errors.AuditUnavailable:
            self.metrics.failures_total += 1
            raise
        elapsed = time.perf_counter() - started
        self.metrics.records_total += 1
        if truncated:
            self.metrics.truncated_total += 1
        if durable:
            self.metrics.durable_total += 1
            self.metrics.durable_latency.observe(elapsed)
        else:
            self.metrics.grouped_latency.observe(elapsed)

    async def close_leftovers(
        self, context: str, survivors: Mapping[str, Mapping[str, Any]], *, log_path: str | None = None
    ) -> None:
        """Close what a previous daemon left open in `context`'s log now, whether or not a
        revision will ever name the Context again: open the log at `log_path` (where it was),
        which writes `command.abandoned` for `survivors` (by command id, with their fields) and
        `interrupted` for their runs and every run still listed open, fsync, and close the log
        again (a revision opens it where it then says). Returns once the records are durable.

        Raises `AuditUnavailable` when the log cannot be opened or written.
        """
        if context in self._writers:
            raise errors.AuditUnavailable(f"the audit log of context {context!r} is already open")
        self._survivors[context] = survivors
        try:
            await self.open_context(context, log_path=log_path)
        finally:
            self._survivors.pop(context, None)
        await self.close_context(context)

    async def close_context(self, context: str) -> None:
        """fsync and close one Context's log (a later write opens it again)."""
        async with self._open_lock:
            writer = self._writers.pop(context, None)
            if writer is not None:
                await writer.stop()

    def log_dir(self, context: str) -> Path | None:
        """The directory `context`'s open log writes to (None if it is not open)."""
        writer = self._writers.get(context)
        return writer.journal.directory if writer else None

    def opened_contexts(self) -> tuple[str, ...]:
        """The contexts whose logs are open, sorted."""
        return tuple(sorted(self._writers))

    def active_segment(self, context: str) -> Path | None:
        """The segment `context` currently appends to (None if not open)."""
        writer = self._writers.get(context)
        return writer.journal.path if writer else None

    def unavailable(self) -> dict[str, str]:
        """Contexts whose log cannot be written right now, with the reason (for /readyz)."""
        return {name: w.journal.failure for name, w in self._writers.items() if w.journal.failure}

    async def aclose(self) -> None:
        """Flush and fsync every context, stop the writer threads, release the locks."""
        self._closed = True
        if self._sealing is not None:
            self._sealing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sealing
            self._sealing = None
        writers = list(self._writers.values())
        self._writers.clear()
        await asyncio.gather(*(w.stop() for w in writers))
        chain = self.keychain
        if chain is not None:  # the stop seals are durable (fsynced by close): retire their key too
            try:
                await asyncio.to_thread(chain.advance_to, chain.epoch + 1, final=True)
            except OSError as exc:
                log.error(
                    "audit sealing key not moved on after the stop seals; it stays on disk until the "
                    "next start",
                    error=str(exc),
                    directory=str(chain.directory),
                )
        if self._root_lock_fd is not None:
            os.close(self._root_lock_fd)
            self._root_lock_fd = None
