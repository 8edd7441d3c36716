"""One Context's audit directory on disk: segments, the hash chain, recovery (RELIABILITY.md §5.1).

This module owns the synchronous, single-threaded core of the journal. A `ContextJournal`
is confined to one thread (the context's writer thread in `aofd.audit.journal`) and does:

- paths: `<audit_dir>/<context>/audit-<UTC yyyymmddThhmmssZ>-<first_seq>.jsonl`, the
  context name checked as a DNS-1123 label before any path is built; a replica of a set
  (`cluster:`) names its segments `audit-<member>-<UTC>-<first_seq>.jsonl` and keeps its own
  chain and seq, so logs of several members collected into one directory stay apart;
- one writer per directory (`flock(LOCK_EX|LOCK_NB)` on `.lock`);
- one `os.write` per complete line, the return value checked; a short or failed write
  marks the segment failed and raises `AuditUnavailable`;
- the chain: `aofd.audit.prev = "sha256:" + sha256(previous line bytes incl. \\n)`,
  `aofd.audit.seq` monotonic, both continued across segments; every segment starts with
  an `audit.file.opened` record;
- `sync()` = `os.fsync`; a failed fsync is fatal for the segment (never retried);
- rotation to a new segment by size or age (never truncation), retention of whole closed
  segments only;
- seals (`aofd.audit.seal`): with a sealer, `seal()` appends an `audit.sealed` record that
  signs the chain head with the epoch's key, and every rotation seals the old segment first,
  naming the next one;
- at open: torn-tail repair (copy to `.broken-<ts>`, truncate to the last good line,
  fsync, append `audit.recovered`), a new segment, `command.abandoned` for commands
  started but never finished (with `killed` when the daemon found and killed what was left
  of them, `survivors`), `agent.run.finished` with status `interrupted` for runs
  started but never finished, and `approval.cancelled` for approval requests of the scanned
  tail never closed, each closed once (what the scanned tail already closes is skipped);
- the open-runs ledger `.open-runs/<run_id>.json`: written when a run's `agent.run.started`
  is appended, removed at its `agent.run.finished`, so that recovery closes a run however
  many segments back it started (entries it closes are removed once that is fsynced).

It never touches asyncio; it does not import the runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from aofd import durable, errors
from aofd.audit import records
from aofd.audit.seal import EpochKey, KeyChain
from aofd.resources import ids

log = structlog.get_logger()

GENESIS: Final = "sha256:" + "0" * 64
"""`prev` of the first record a context ever writes."""

LOCK_NAME: Final = ".lock"
OPEN_RUNS_DIR: Final = ".open-runs"
"""A Context directory's ledger of runs started and not finished: `<run_id>.json` each."""
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEGMENT_GLOB: Final = "audit-*.jsonl"
_SEGMENT_RE = re.compile(
    r"^audit-(?:(?P<member>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-)?(?P<stamp>\d{8}T\d{6}Z)-(?P<seq>\d+)\.jsonl$"
)
ANY_MEMBER: Final = "*"
"""`list_segments(member=ANY_MEMBER)`: the segments of every member (and of a single host)."""
_OPEN_APPEND: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclasses.dataclass(frozen=True, slots=True)
class JournalOptions:
    """Tunables of the audit journal (the daemon config's `audit:` section maps onto these)."""

    max_segment_bytes: int = 64 * 1024 * 1024
    max_segment_age: float = 24 * 3600.0
    max_line_bytes: int = records.MAX_LINE_BYTES
    retention_seconds: float | None = None
    tail_scan_bytes: int = 1024 * 1024
    group_commit_interval: float = 0.05
    group_commit_records: int = 256
    write_timeout: float = 5.0
    recovery_backoff: float = 1.0
    dir_mode: int = 0o750
    file_mode: int = 0o600


# -- names and paths (pure) -----------------------------------------------------------


def line_hash(line: bytes) -> str:
    """The chain value of one raw line (newline included)."""
    return "sha256:" + hashlib.sha256(line).hexdigest()


def utc_stamp(ts: float) -> str:
    """`yyyymmddThhmmssZ` in UTC."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


def segment_name(ts: float, first_seq: int, member: str | None = None) -> str:
    """`audit-<UTC yyyymmddThhmmssZ>-<first_seq>.jsonl`; a replica's: `audit-<member>-<UTC>-<seq>.jsonl`."""
    prefix = f"audit-{member}-" if member else "audit-"
    return f"{prefix}{utc_stamp(ts)}-{first_seq}.jsonl"


def segment_first_seq(name: str) -> int | None:
    """The first seq encoded in a segment file name, or None if `name` is not a segment."""
    m = _SEGMENT_RE.match(name)
    return int(m.group("seq")) if m else None


def segment_member(name: str) -> str | None:
    """The replica (`cluster.member`) a segment file name carries; None for a single host's."""
    m = _SEGMENT_RE.match(name)
    return m.group("member") if m else None


def list_segments(directory: Path, member: str | None = ANY_MEMBER) -> list[Path]:
    """The segments of one context directory in chain order (by first seq, not by time:
    the wall clock may have jumped backwards between two of them).

    `member`: only that replica's segments (None: only a single host's, unnamed ones); the
    default lists every member's, grouped by member (each member's chain in order)."""
    found: list[tuple[str, int, str, Path]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _SEGMENT_RE.match(entry.name)
        if m is None:
            continue
        owner = m.group("member")
        if member != ANY_MEMBER and owner != member:
            continue
        found.append((owner or "", int(m.group("seq")), entry.name, Path(entry.path)))
    return [path for _, _, _, path in sorted(found)]


def by_time(directory: Path) -> list[Path]:
    """Every segment of one context directory, oldest first by the UTC time in its name (then by
    first seq): reading order for a directory that holds several members' chains, or a single
    host's older segments beside a member's (`aofd.audit.tail`). `list_segments` keeps chain
    order instead, grouped by member, for verification."""
    found: list[tuple[str, int, Path]] = []
    for path in list_segments(directory):
        m = _SEGMENT_RE.match(path.name)
        if m is not None:
            found.append((m.group("stamp"), int(m.group("seq")), path))
    return [path for _, _, path in sorted(found)]


def by_member(paths: list[Path]) -> dict[str | None, list[Path]]:
    """`paths` (as `list_segments` orders them) split into one chain per member."""
    groups: dict[str | None, list[Path]] = {}
    for path in paths:
        groups.setdefault(segment_member(path.name), []).append(path)
    return groups


def context_dir(audit_dir: Path, context: str) -> Path:
    """`<audit_dir>/<context>`, after checking that `context` is a DNS-1123 label."""
    problem = ids.name_problem(context)
    if problem is not None:
        raise errors.AuditUnavailable(f"refusing to open an audit log for context {context!r}: {problem}")
    return audit_dir / context


def resolve_log_dir(audit_dir: Path, context: str, log_path: str | None) -> tuple[Path, str | None]:
    """Where a Context's segments go, honouring its `audit.log_path` only inside `audit_dir`.

    A `log_path` naming a file (`.log`/`.jsonl`/`.json`) means its directory. Relative paths
    are taken relative to `audit_dir`. Returns the directory and, when `log_path` was
    ignored, the reason (for the caller to report). Purely lexical: the opener also refuses
    symlinked directories.
    """
    default = context_dir(audit_dir, context)
    if not log_path:
        return default, None
    root = os.path.normpath(os.path.abspath(audit_dir))
    candidate = log_path if os.path.isabs(log_path) else os.path.join(root, log_path)
    candidate = os.path.normpath(candidate)
    if os.path.splitext(candidate)[1] in (".log", ".jsonl", ".json"):
        candidate = os.path.dirname(candidate)
    if candidate == root or os.path.commonpath([root, candidate]) != root:
        return default, (
            f"audit.log_path {log_path!r} of context {context!r} is not inside the audit dir {root}; "
            f"using {default}"
        )
    return Path(candidate), None


# -- reading a segment's tail ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    """One complete line of a segment: where it starts, its bytes, and its parsed record."""

    offset: int
    raw: bytes
    record: Mapping[str, Any] | None

    @property
    def seq(self) -> int | None:
        value = audit_field(self.record, "seq")
        return value if isinstance(value, int) else None

    @property
    def prev(self) -> str | None:
        value = audit_field(self.record, "prev")
        return value if isinstance(value, str) else None

    @property
    def end(self) -> int:
        return self.offset + len(self.raw)


def audit_field(record: Mapping[str, Any] | None, name: str) -> Any:
    """`aofd.audit.<name>` of a parsed record, or None."""
    if not isinstance(record, Mapping):
        return None
    aofd = record.get("aofd")
    audit = aofd.get("audit") if isinstance(aofd, Mapping) else None
    value = audit.get(name) if isinstance(audit, Mapping) else None
    if name == "seq" and (not isinstance(value, int) or isinstance(value, bool)):
        return None
    return value


def parse_line(raw: bytes) -> Mapping[str, Any] | None:
    """The record of one raw line, or None when it is not a JSON object with an audit seq."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or audit_field(value, "seq") is None:
        return None
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Tail:
    """What the end of a segment looks like, and what repairing it would do."""

    size: int
    lines: tuple[Line, ...]  # complete lines in the scanned window, in order
    good_size: int  # truncate to this many bytes to repair the tail
    dropped_bytes: int
    problem: str | None  # why the tail needs repair; None when it is clean
    corruption: str | None  # damage before the tail: never rewritten, only reported

    @property
    def good_lines(self) -> tuple[Line, ...]:
        return tuple(line for line in self.lines if line.end <= self.good_size)


def read_tail(path: Path, *, window: int) -> Tail:
    """Read up to `window` bytes from the end of `path` (never following a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - window)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    return analyze_tail(data, start=start, size=size)


def analyze_tail(data: bytes, *, start: int, size: int) -> Tail:
    """Decide what of `data` (the bytes from `start` to `size`) is a good tail (pure)."""
    base = start
    if start > 0:  # the window begins inside a line: skip to the next one
        cut = data.find(b"\n")
        data = b"" if cut < 0 else data[cut + 1 :]
        base = start + (cut + 1 if cut >= 0 else len(data))
    lines: list[Line] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        raw = data[pos : nl + 1]
        lines.append(Line(base + pos, raw, parse_line(raw)))
        pos = nl + 1
    fragment = len(data) - pos
    good = list(lines)
    problem = None
    if fragment:
        problem = f"the last {fragment} bytes are not a complete line (torn write)"
    if good and not _line_ok(good, len(good) - 1):
        bad = good.pop()
        why = "is not a valid audit record" if bad.record is None else "does not continue the chain"
        problem = (problem + "; " if problem else "") + f"the last line (offset {bad.offset}) {why}"
    corruption = None
    if good and not _line_ok(good, len(good) - 1):
        corruption = f"the line at offset {good[-1].offset} is damaged and is followed by more damage"
    if corruption is not None:
        return Tail(size, tuple(lines), size, 0, None, corruption)
    good_size = good[-1].end if good else (base if start > 0 else 0)
    return Tail(size, tuple(lines), good_size, size - good_size, problem, None)


def _line_ok(lines: list[Line], i: int) -> bool:
    line = lines[i]
    if line.record is None:
        return False
    if i == 0:
        return True
    before = lines[i - 1]
    if before.seq is None or line.seq != before.seq + 1:
        return False
    return line.prev == line_hash(before.raw)


# -- the journal of one context --------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Failure:
    kind: str  # "torn" (short/failed write: repair the tail), "sync" (fsync failed), "gone", "open"
    reason: str
    path: Path | None
    good_size: int


class ContextJournal:
    """The append-only, hash-chained log of one Context. Not thread-safe: one thread owns it.

    Invariant: `seq`/`last_hash` describe the last line known to be completely written
    (to the page cache); `unsynced` counts lines written since the last successful fsync.
    """

    def __init__(
        self,
        *,
        context: str,
        directory: Path,
        options: JournalOptions,
        origin: records.Origin,
        clock: Callable[[], float] = time.time,
        sealer: Callable[[], EpochKey | None] | None = None,
        on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
        survivors: Mapping[str, Mapping[str, Any]] | None = None,
        ledger: KeyChain | None = None,
    ) -> None:
        self.context = context
        self._survivors = dict(survivors or {})
        self.directory = directory
        self._options = options
        self._origin = origin
        self._member = origin.member  # a replica's segments carry its name; its own chain
        self._clock = clock
        self._sealer = sealer
        # The key chain that counts every seal written (for its next certificate); seals are
        # written under its lock so that none is made with a key after it was certified.
        self._ledger = ledger
        self._sealed: tuple[str, int] | None = None  # chain and epoch of the newest seal written
        self._unsynced_seals: set[int] = set()  # epochs of seals written and not yet fsynced
        self._sealed_fields: tuple[int, str] = (0, GENESIS)  # seq and head of the newest seal
        self._on_event = on_event
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self.path: Path | None = None
        self._ino: tuple[int, int] | None = None
        self.file_id = ""
        self.seq = 0
        self.last_hash = GENESIS
        self._size = 0
        self._lines_in_segment = 0
        self._opened_mono = 0.0
        self.unsynced = 0
        self._unsynced_from = 0
        self._failure: _Failure | None = None
        self._next_recovery = 0.0
        self._notes: list[dict[str, Any]] = []
        self._settled_runs: list[Path] = []  # open-runs entries closed by recovery (removed once synced)

    # -- life cycle --

    @property
    def failure(self) -> str | None:
        """Why the journal cannot write right now (None when healthy)."""
        return self._failure.reason if self._failure else None

    def open(self) -> None:
        """Lock the directory, repair the last segment's tail, start a new segment."""
        self._ensure_dir()
        self._take_lock()
        try:
            pending = self._recover_existing()
            self._new_segment(reason="start")
            for record in pending:
                self._append(record)
            self.sync()
            for path in self._settled_runs:  # their closing records are durable now
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self._settled_runs.clear()
        except OSError as exc:
            self.close()
            raise errors.AuditUnavailable(
                f"cannot open the audit log of context {self.context!r}: {exc}"
            ) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """fsync (best effort) and close the active segment, release the lock."""
        if self._fd is not None:
            if self.unsynced and self._failure is None:
                try:
                    os.fsync(self._fd)
                    self.unsynced = 0
                    self._unsynced_seals.clear()
                except OSError as exc:
                    self._emit("audit fsync failed at close", error=str(exc))
                    self._seals_uncertain()
            _close_quietly(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            _close_quietly(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- writing --

    def append(self, record: Mapping[str, Any]) -> bool:
        """Write one record (not yet fsynced); return whether it was truncated to fit.

        Raises `AuditUnavailable` when it cannot be written; the failure sticks until a
        later call manages to recover (a new segment with an `audit.recovered` record).
        """
        try:
            self._writable()
            truncated = self._append(record)
            written_seq = self.seq
        except OSError as exc:
            if self._failure is None:
                self._fail("sync", f"audit I/O on {self.path} failed: {exc}")
            raise errors.AuditUnavailable(self._unavailable()) from exc
        self._track_run(record, written_seq)
        return truncated

    # -- the open-runs ledger --

    def _run_entry(self, run_id: str) -> Path | None:
        return self.directory / OPEN_RUNS_DIR / f"{run_id}.json" if _RUN_ID.match(run_id) else None

    def _track_run(self, record: Mapping[str, Any], seq: int) -> None:
        """Keep `.open-runs/<run_id>.json` from a run's `agent.run.started` to its
        `agent.run.finished`, so that recovery closes a run whatever lies between (rotations,
        retention); best effort: a failure is logged, the record is written either way."""
        action = records.action_of(record)
        if action not in ("agent.run.started", "agent.run.finished"):
            return
        path = self._run_entry(records.run_id_of(record))
        if path is None:
            return
        try:
            if action == "agent.run.finished":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            os.makedirs(path.parent, mode=self._options.dir_mode, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(tmp, flags, self._options.file_mode)
            try:
                data = json.dumps({"seq": seq, "started": record}, default=str).encode()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            self._emit("open-runs ledger not updated", file=str(path), error=str(exc))

    def _open_runs(self) -> list[tuple[Path, Mapping[str, Any] | None]]:
        """The open-runs entries: path and (started record with its seq), None if unreadable."""
        directory = self.directory / OPEN_RUNS_DIR
        try:
            paths = sorted(p for p in directory.iterdir() if p.suffix in (".json", ".tmp"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out: list[tuple[Path, Mapping[str, Any] | None]] = []
        for path in paths:
            entry: Mapping[str, Any] | None = None
            try:
                if path.suffix == ".json" and not path.is_symlink():
                    data = json.loads(path.read_bytes())
                    started = data.get("started") if isinstance(data, dict) else None
                    if isinstance(started, dict) and isinstance(data.get("seq"), int):
                        entry = {
                            **started,
                            "aofd": {**started.get("aofd", {}), "audit": {"seq": data["seq"]}},
                        }
            except (OSError, ValueError, TypeError, AttributeError):
                entry = None
            out.append((path, entry))
        return out

    def _unavailable(self) -> str:
        reason = self._failure.reason if self._failure else "unknown failure"
        return f"audit log of context {self.context!r} is unavailable: {reason}"

    def sync(self) -> None:
        """Make every written line durable (fsync). A failure is fatal for the segment."""
        if self._failure is not None:
            raise errors.AuditUnavailable(self._unavailable())
        if self._fd is None or not self.unsynced:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # Never retry: after a failed fsync a later one may "succeed" without the data
            # (PostgreSQL's fsync lesson). Abandon the segment instead.
            reason = f"fsync of {self.path} failed: {exc}"
            self._fail("sync", reason)
            raise errors.AuditUnavailable(reason) from exc
        self.unsynced = 0
        self._unsynced_seals.clear()

    def _append(self, record: Mapping[str, Any]) -> bool:
        line, truncated = self._encode(record)
        if self._fd is None:
            self._new_segment(reason="start")
            line, truncated = self._encode(record)
        elif self._should_rotate(len(line)):
            self._rotate()
            line, truncated = self._encode(record)
        self._write_line(line)
        return truncated

    def _encode(self, record: Mapping[str, Any]) -> tuple[bytes, bool]:
        stamped = records.scrub_secrets(record)
        if "@timestamp" not in stamped:
            stamp = records.rfc3339(self._clock())
            stamped = {"@timestamp": stamp, **stamped}
        aofd = dict(stamped.get("aofd") or {})
        aofd.setdefault("schema", records.SCHEMA)
        aofd["context"] = self.context
        aofd.setdefault("truncated", False)
        aofd["audit"] = {"file_id": self.file_id, "seq": self.seq + 1, "prev": self.last_hash}
        stamped["aofd"] = aofd
        return records.encode_line(stamped, max_bytes=self._options.max_line_bytes)

    def _write_line(self, line: bytes) -> None:
        assert self._fd is not None
        before = self._size
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            reason = f"write to {self.path} failed: {exc}"
            self._fail("torn", reason, good_size=before)
            raise errors.AuditUnavailable(reason) from exc
        if written != len(line):
            reason = f"short write to {self.path}: {written} of {len(line)} bytes (disk full?)"
            self._fail("torn", reason, good_size=before)
            raise errors.AuditUnavailable(reason)
        if not self.unsynced:
            self._unsynced_from = self.seq + 1
        self.seq += 1
        self.last_hash = line_hash(line)
        self._size += written
        self._lines_in_segment += 1
        self.unsynced += 1

    def _seals_uncertain(self) -> None:
        """Seals written since the last fsync may be lost: their epochs' seals are not known."""
        if self._ledger is not None:
            for epoch in sorted(self._unsynced_seals):
                self._ledger.seal_uncertain(epoch)
        self._unsynced_seals.clear()

    def _fail(self, kind: str, reason: str, *, good_size: int = 0) -> None:
        self._seals_uncertain()
        self._failure = _Failure(kind, reason, self.path, good_size)
        self._emit("audit segment failed", reason=reason, kind=kind)
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None

    def _writable(self) -> None:
        """Before a write: the journal is open, and a failed one tries to recover (a new segment
        with an `audit.recovered` record) at most once per `recovery_backoff`.

        Raises `AuditUnavailable` while it stays failed, OSError when recovery fails.
        """
        self._check_active()
        if self._failure is not None:
            if time.monotonic() < self._next_recovery:
                raise errors.AuditUnavailable(self._unavailable())
            self._next_recovery = time.monotonic() + self._options.recovery_backoff
            self._recover()

    def _check_active(self) -> None:
        """Notice an active segment that was deleted, renamed or replaced under us."""
        if self._fd is None or self.path is None or self._failure is not None:
            return
        try:
            st = os.fstat(self._fd)
            on_disk = os.lstat(self.path)
        except OSError as exc:
            self._fail("gone", f"active segment {self.path} is gone: {exc}")
            return
        if st.st_nlink > 0 and (on_disk.st_dev, on_disk.st_ino) == self._ino:
            return
        self._fail("gone", f"active segment {self.path} was deleted or replaced")

    # -- segments --

    def _should_rotate(self, next_len: int) -> bool:
        if self._lines_in_segment < 2:
            return False
        if self._size + next_len > self._options.max_segment_bytes:
            return True
        return time.monotonic() - self._opened_mono > self._options.max_segment_age

    def _rotate(self) -> None:
        key = self._sealer() if self._sealer else None
        next_name = segment_name(self._clock(), self.seq + (3 if key else 2), self._member)
        # The seal names the next segment: removing it breaks a seal, not only a chain.
        if key is not None and not self._write_seal(None, "rotation", next_file=next_name):
            next_name = segment_name(self._clock(), self.seq + 2, self._member)
        rotated = records.build(
            "audit.file.rotated",
            context=self.context,
            now=self._clock(),
            origin=self._origin,
            extra={"file": {"name": self.path.name if self.path else "", "next_file": next_name}},
        )
        line, _ = self._encode(rotated)
        self._write_line(line)
        self.sync()
        old = self.path
        assert self._fd is not None
        _close_quietly(self._fd)
        self._fd = None
        self._new_segment(reason="rotation", name=next_name)
        self._emit("audit segment rotated", level="info", previous=str(old), current=str(self.path))
        self._prune()

    def _new_segment(self, *, reason: str, name: str | None = None) -> None:
        """Create the next segment and write its `audit.file.opened` line (fsynced)."""
        now = self._clock()
        first_seq = self.seq + 1
        name = (
            name
            if name and segment_first_seq(name) == first_seq
            else segment_name(now, first_seq, self._member)
        )
        path = self.directory / name
        previous = self.path
        try:
            fd = os.open(path, _OPEN_APPEND | os.O_EXCL, self._options.file_mode)
        except FileExistsError:
            fd = self._reuse_empty(path)
        except OSError as exc:
            raise self._open_failed(path, exc) from exc
        self._fd = fd
        self.path = path
        st = os.fstat(fd)
        self._ino = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._lines_in_segment = 0
        self._opened_mono = time.monotonic()
        self.file_id = secrets.token_hex(16)
        self._failure = None
        opened = records.build(
            "audit.file.opened",
            context=self.context,
            now=now,
            origin=self._origin,
            extra={
                "file": {
                    "name": name,
                    "file_id": self.file_id,
                    "first_seq": first_seq,
                    "prev_file_last_hash": self.last_hash,
                    "prev_file": previous.name if previous else None,
                    "reason": reason,
                }
            },
        )
        line, _ = self._encode(opened)
        self._write_line(line)
        self.sync()
        durable.fsync_dir(self.directory)

    def _reuse_empty(self, path: Path) -> int:
        """A segment name already taken: reuse it only if it is an empty leftover of ours."""
        try:
            fd = os.open(path, _OPEN_APPEND, self._options.file_mode)
        except OSError as exc:
            raise self._open_failed(path, exc) from exc
        if os.fstat(fd).st_size == 0:
            return fd
        _close_quietly(fd)
        raise self._open_failed(
            path, FileExistsError(errno.EEXIST, "segment exists and is not empty", str(path))
        )

    def _open_failed(self, path: Path, exc: OSError) -> errors.AuditUnavailable:
        if exc.errno == errno.ELOOP:
            reason = f"refusing to open audit segment {path}: it is a symlink"
        else:
            reason = f"cannot create audit segment {path}: {exc}"
        self._failure = _Failure("open", reason, None, 0)
        self._emit("audit segment open failed", reason=reason)
        return errors.AuditUnavailable(reason)

    def _recover(self) -> None:
        """Try to get writable again after a failure: repair, then a fresh segment.

        The `audit.recovered` notes are kept until they are written, so a recovery that
        fails half-way is reported by the one that succeeds.
        """
        failure = self._failure
        assert failure is not None
        if self._fd is not None:
            _close_quietly(self._fd)
            self._fd = None
        note: dict[str, Any] = {
            "reason": failure.reason,
            "kind": failure.kind,
            "file": failure.path.name if failure.path else None,
            "last_good_seq": self.seq,
            "last_good_hash": self.last_hash,
        }
        if failure.kind == "sync" and self.unsynced:
            note["unsynced_seqs"] = [self._unsynced_from, self.seq]
        self.unsynced = 0
        repaired = None
        if failure.kind == "torn" and failure.path is not None:
            repaired = self._repair(failure.path, failure.good_size, failure.reason)
        if repaired is None and note not in self._notes:
            self._notes.append(note)  # otherwise the repaired segment already carries it
        self._new_segment(reason="recovery")
        for pending in self._notes:
            self._append(self._recovered(pending))
        self.sync()
        self._emit("audit log recovered", notes=len(self._notes), failure=failure.reason)
        self._notes.clear()

    def _recovered(self, details: Mapping[str, Any]) -> dict[str, Any]:
        return records.build(
            "audit.recovered",
            context=self.context,
            now=self._clock(),
            origin=self._origin,
            reason=str(details.get("reason", "")),
            extra={"recovery": {"kind": "torn", **{k: v for k, v in details.items() if k != "reason"}}},
        )

    def _repair(self, path: Path, good_size: int, reason: str) -> Path | None:
        """Copy a torn segment aside, truncate it to `good_size`, append `audit.recovered`.

        Returns the repaired path, or None when nothing good was left (the file is then
        removed after the copy, and the caller records the recovery in the next segment).
        """
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size > good_size:
                broken = _copy_aside(fd, path, self._clock())
                os.ftruncate(fd, good_size)
                os.fsync(fd)
            else:
                broken = None
        finally:
            os.close(fd)
        dropped = max(0, size - good_size)
        if good_size == 0:
            os.unlink(path)
            durable.fsync_dir(self.directory)
            return None
        details = {
            "reason": reason,
            "file": path.name,
            "dropped_bytes": dropped,
            "last_good_seq": self.seq,
            "last_good_hash": self.last_hash,
            "broken_copy": broken.name if broken else None,
        }
        self._fd = os.open(path, _OPEN_APPEND & ~os.O_CREAT)
        self.path = path
        st = os.fstat(self._fd)
        self._ino = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._failure = None
        try:
            line, _ = self._encode(self._recovered(details))
            self._write_line(line)
            self.sync()
        finally:
            if self._fd is not None:
                _close_quietly(self._fd)
                self._fd = None
        self._emit("audit torn tail repaired", file=str(path), dropped_bytes=dropped)
        return path

    def _recover_existing(self) -> list[dict[str, Any]]:
        """At open: find where the chain stands, repair a torn tail, list orphaned commands.

        Returns the records to write right after the new segment's `audit.file.opened`.
        """
        segments = list_segments(self.directory, self._member)
        for seg in segments:
            if stat.S_ISLNK(os.lstat(seg).st_mode):
                raise errors.AuditUnavailable(
                    f"refusing to open the audit log of context {self.context!r}: {seg} is a symlink"
                )
        while segments and os.lstat(segments[-1]).st_size == 0:
            os.unlink(segments.pop())  # an empty leftover of a failed start: holds no record
        if not segments:
            return self._closing_records([])
        last = segments[-1]
        tail = read_tail(last, window=self._options.tail_scan_bytes)
        good = tail.good_lines
        pending: list[dict[str, Any]] = []
        if tail.corruption is not None:
            # Never rewrite damage that is not a torn tail: continue the chain from the
            # bytes as they are, report, and let `aofctl audit verify` name the line.
            complete = tail.lines
            self.last_hash = line_hash(complete[-1].raw) if complete else self.last_hash
            self.seq = max((line.seq or 0 for line in complete), default=0)
            self.seq = max(self.seq, (segment_first_seq(last.name) or 1) - 1)
            self.path = last
            pending.append(
                self._recovered(
                    {
                        "reason": f"{last.name}: {tail.corruption}; not repaired",
                        "file": last.name,
                        "kind": "corruption",
                        "last_good_seq": self.seq,
                        "last_good_hash": self.last_hash,
                    }
                )
            )
            self._emit("audit segment is corrupt", file=str(last), problem=tail.corruption)
        else:
            if good:
                self.seq = good[-1].seq or 0
                self.last_hash = line_hash(good[-1].raw)
                self.file_id = str(audit_field(good[-1].record, "file_id") or "")
            else:
                self._chain_from_previous(segments[:-1], last)
            self.path = last
            if tail.problem is not None and self._repair(last, tail.good_size, tail.problem) is None:
                pending.append(
                    self._recovered(
                        {
                            "reason": tail.problem,
                            "file": last.name,
                            "dropped_bytes": tail.dropped_bytes,
                            "last_good_seq": self.seq,
                            "last_good_hash": self.last_hash,
                        }
                    )
                )
        pending.extend(self._closing_records([line.record for line in good if line.record]))
        return pending

    def _closing_records(self, tail: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """What closes the commands and runs a previous daemon left open, each once.

        Commands: started in the scanned `tail` and never closed there, and the `survivors` the
        daemon found in its command ledger (unless the tail already closes them: a restart that
        died before forgetting them). Runs: started in the tail, listed in `.open-runs/` (started
        before the tail: rotations ago), or named by a survivor, unless the tail finishes them.
        """
        closed_commands = {
            records.event_id_of(rec)
            for rec in tail
            if records.action_of(rec) in ("command.finished", "command.abandoned")
        }
        finished_runs = {
            records.run_id_of(rec) for rec in tail if records.action_of(rec) == "agent.run.finished"
        }
        orphans = records.unfinished_commands(tail)
        pending = [
            self._abandoned(started, self._survivors.get(records.event_id_of(started))) for started in orphans
        ]
        known = {records.event_id_of(started) for started in orphans} | closed_commands
        pending.extend(
            self._abandoned({"event": {"id": cid}}, fields)  # started before the scanned tail
            for cid, fields in self._survivors.items()
            if cid not in known
        )
        runs: dict[str, Mapping[str, Any]] = {records.run_id_of(r): r for r in records.unfinished_runs(tail)}
        for path, started in self._open_runs():
            self._settled_runs.append(path)
            run_id = path.stem
            if started is not None and records.run_id_of(started) == run_id:
                runs.setdefault(run_id, started)
            elif _RUN_ID.match(run_id):  # torn or half-written: the run id is all there is
                runs.setdefault(run_id, {"aofd": {"agent": {"run_id": run_id}}})
        for fields in self._survivors.values():
            named = fields.get("run_id")
            if isinstance(named, str) and named:
                runs.setdefault(named, {"aofd": {"agent": {"run_id": named}}})
        pending.extend(
            self._interrupted(started) for rid, started in runs.items() if rid not in finished_runs
        )
        pending.extend(
            self._approval_cancelled(requested) for requested in records.unfinished_approvals(tail)
        )
        return pending

    def _chain_from_previous(self, earlier: list[Path], last: Path) -> None:
        """The last segment holds no good line: continue from the one before it."""
        self.seq = (segment_first_seq(last.name) or 1) - 1
        if earlier:
            tail = read_tail(earlier[-1], window=self._options.tail_scan_bytes)
            if tail.lines:
                self.last_hash = line_hash(tail.lines[-1].raw)
                self.seq = max(self.seq, tail.lines[-1].seq or 0)

    def _abandoned(
        self, started: Mapping[str, Any], survivor: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        details: dict[str, Any] = {"started_seq": audit_field(started, "seq"), "killed": False}
        reason = "aofd stopped before command.finished was written (unclean shutdown)"
        reason += "; the command is not run again"
        if survivor is not None:
            details.update(survivor)
            if survivor.get("killed"):
                reason += "; what was left of it was still running and was killed at restart"
        record = records.build(
            "command.abandoned",
            context=self.context,
            now=self._clock(),
            origin=self._origin,
            outcome="unknown",
            event_id=records.event_id_of(started),
            reason=reason,
            extra={"abandoned": details},
        )
        for key in ("user", "related", "process", "orchestrator", "trace"):
            if key in started:
                record[key] = started[key]
        started_aofd = started.get("aofd")
        if isinstance(started_aofd, Mapping) and "agent" in started_aofd:
            record["aofd"]["agent"] = started_aofd["agent"]
        return record

    def _interrupted(self, started: Mapping[str, Any]) -> dict[str, Any]:
        """The closing record of a run cut short by an unclean shutdown (`aofd.run.status`
        `interrupted`, `event.outcome` unknown); names and ids are copied from its start."""
        started_aofd = started.get("aofd")
        aofd = started_aofd if isinstance(started_aofd, Mapping) else {}
        started_agent = aofd.get("agent")
        agent: Mapping[str, Any] = started_agent if isinstance(started_agent, Mapping) else {}
        extra: dict[str, Any] = {key: aofd[key] for key in ("binding", "flow", "trigger") if key in aofd}
        extra["run"] = {
            "status": "interrupted",
            "error": "aofd stopped before the run finished (unclean shutdown)",
            "started_seq": audit_field(started, "seq"),
        }
        record = records.build(
            "agent.run.finished",
            context=self.context,
            now=self._clock(),
            origin=self._origin,
            outcome="unknown",
            reason="aofd stopped before agent.run.finished was written (unclean shutdown); "
            "the run is not resumed",
            agent=agent.get("name"),
            run_id=agent.get("run_id"),
            extra=extra,
        )
        for key in ("user", "related", "trace", "orchestrator"):
            if key in started:
                record[key] = started[key]
        return record

    def _approval_cancelled(self, requested: Mapping[str, Any]) -> dict[str, Any]:
        """The closing record of an approval request left open by an unclean shutdown (nobody can
        decide it any more: pending requests live in memory); ids are copied from the request."""
        started_aofd = requested.get("aofd")
        aofd = started_aofd if isinstance(started_aofd, Mapping) else {}
        started_agent = aofd.get("agent")
        agent: Mapping[str, Any] = started_agent if isinstance(started_agent, Mapping) else {}
        record = records.build(
            "approval.cancelled",
            context=self.context,
            now=self._clock(),
            origin=self._origin,
            outcome="failure",
            event_id=records.event_id_of(requested) or None,
            reason="aofd stopped before a decision (unclean shutdown); the command was not run",
            agent=agent.get("name"),
            run_id=agent.get("run_id"),
            extra={
                "approval": {
                    "id": records.approval_id_of(requested),
                    "final": True,
                    "requested_seq": audit_field(requested, "seq"),
                }
            },
        )
        for key in ("user", "related", "process", "orchestrator", "trace"):
            if key in requested:
                record[key] = requested[key]
        return record

    def _write_seal(self, key: EpochKey | None, reason: str, *, next_file: str | None = None) -> bool:
        """Append an `audit.sealed` record that signs the chain head as it stands (no rotation check:
        the caller has made room) with `key` (None: the current one); False when `key` was
        certified away meanwhile. Raises `AuditUnavailable`/OSError like any write."""
        if self._ledger is None:
            key = key if key is not None else (self._sealer() if self._sealer else None)
            if key is None:
                return False
            self._write_seal_line(key, reason, next_file)
            return True
        with self._ledger.lock:
            key = key if key is not None else self._ledger.current
            if not self._ledger.is_current(key):
                return False  # late: the key moved on (its certificate counts no more seals)
            self._write_seal_line(key, reason, next_file)
            self._ledger.record_seal(key, self.context, self._sealed_fields[0], self._sealed_fields[1])
            self._unsynced_seals.add(key.epoch)
            return True

    def _write_seal_line(self, key: EpochKey, reason: str, next_file: str | None) -> None:
        now = self._clock()
        fields: dict[str, Any] = {
            "chain": key.chain,
            "epoch": key.epoch,
            "reason": reason,
            "context": self.context,
            "segment": self.path.name if self.path else "",
            "file_id": self.file_id,
            "seq": self.seq,
            "head": self.last_hash,
            "next_file": next_file,
            "time": records.rfc3339(now),
            "certs": [dict(cert) for cert in key.certs],
        }
        fields["sig"] = key.sign(fields)
        record = records.build(
            "audit.sealed", context=self.context, now=now, origin=self._origin, extra={"seal": fields}
        )
        line, _ = self._encode(record)
        self._write_line(line)
        self._sealed = (key.chain, key.epoch)
        self._sealed_fields = (fields["seq"], fields["head"])

    def seal(self, reason: str, key: EpochKey | None = None) -> bool:
        """Append a seal of the chain head with `key` (default: the sealer's current key).

        Returns False when sealing is off, or when `key` is older than the newest seal here. A
        seal that cannot be written is a write failure like any other: the journal is marked
        failed and `AuditUnavailable` is raised.
        """
        key = key if key is not None else (self._sealer() if self._sealer else None)
        if key is None:
            return False
        if self._sealed is not None and self._sealed[0] == key.chain and key.epoch < self._sealed[1]:
            return False  # late (a pass that timed out): a later epoch's key has sealed this log already
        try:
            self._writable()
            if self._fd is None:
                self._new_segment(reason="start")
            elif self._should_rotate(2048):
                self._rotate()  # writes its own seal; this one follows in the new segment
            return self._write_seal(key, reason)
        except OSError as exc:
            if self._failure is None:
                self._fail("sync", f"audit I/O on {self.path} failed: {exc}")
            raise errors.AuditUnavailable(self._unavailable()) from exc

    def _prune(self) -> None:
        """Delete whole closed segments older than the retention; never the active one."""
        keep = self._options.retention_seconds
        if keep is None:
            return
        cutoff = self._clock() - keep
        removed: list[str] = []
        for seg in list_segments(self.directory, self._member):
            if seg == self.path:
                continue
            try:
                if os.lstat(seg).st_mtime < cutoff:
                    os.unlink(seg)
                    removed.append(seg.name)
                    self._emit("audit segment deleted by retention", level="info", file=str(seg))
            except OSError as exc:
                self._emit("audit retention failed", file=str(seg), error=str(exc))
        if removed:
            durable.fsync_dir(self.directory)
            self._note_pruned(removed)

    def _note_pruned(self, removed: list[str]) -> None:
        """Say in the log (chained, and sealed by the next seal) which segments retention removed
        and the first seq still kept: a verifier tells retention from deleted segments by it."""
        kept = list_segments(self.directory, self._member)
        first = segment_first_seq(kept[0].name) if kept else None
        record = records.build(
            "audit.pruned",
            context=self.context,
            now=self._clock(),
            origin=self._origin,
            extra={"pruned": {"files": sorted(removed), "first_seq": first}},
        )
        line, _ = self._encode(record)
        self._write_line(line)

    # -- directory and lock --

    def _ensure_dir(self) -> None:
        try:
            os.makedirs(self.directory, mode=self._options.dir_mode, exist_ok=True)
            st = os.lstat(self.directory)
        except OSError as exc:
            raise errors.AuditUnavailable(f"cannot create audit directory {self.directory}: {exc}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise errors.AuditUnavailable(
                f"refusing audit directory {self.directory}: it is a symlink or not a directory"
            )

    def _take_lock(self) -> None:
        path = self.directory / LOCK_NAME
        self._lock_fd = take_lock(path, what=f"the audit log of context {self.context!r}")

    def _emit(self, message: str, *, level: str = "warning", **fields: Any) -> None:
        severity = logging.WARNING if level == "warning" else logging.INFO
        log.log(severity, message, context=self.context, **fields)
        if self._on_event is not None:
            self._on_event(message, {"context": self.context, **fields})


def take_lock(path: Path, *, what: str) -> int:
    """Open `path` and hold `flock(LOCK_EX|LOCK_NB)` on it; the descriptor is the lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise errors.AuditUnavailable(f"cannot open lock file {path} for {what}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise errors.AuditUnavailable(
            f"{what} is already locked by another writer (pid {holder}) via {path}; "
            "is another aofd running against the same audit dir?"
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _copy_aside(fd: int, path: Path, now: float) -> Path:
    """Copy the whole file behind `fd` to `<path>.broken-<ts>` (never overwriting) and fsync it."""
    base = f"{path.name}.broken-{utc_stamp(now)}"
    for n in range(1000):
        target = path.with_name(base if n == 0 else f"{base}-{n}")
        try:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        try:
            offset = 0
            while True:
                chunk = os.pread(fd, 1 << 20, offset)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                offset += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
        return target
    raise errors.AuditUnavailable(f"cannot find a free name for a broken copy of {path}")


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # close errors carry nothing we can act on
        os.close(fd)
