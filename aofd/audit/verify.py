"""Offline verification of audit logs: the hash chain, seq continuity and segment links.

This module owns `verify(path)`, what `aofctl audit verify` runs (from cron or a systemd
timer, to alert on tampering). It reads raw bytes only (no JSON canonicalisation: the
chain is over the bytes of each line), never follows symlinks and never writes.

`path` may be one segment, a context directory (all its segments, in seq order) or the
audit dir (every context below it). The report names the first bad line as
`FILE:LINE: seq N: why`. A changed line is blamed on itself when the line after it still
agrees with the chain (the next line's `prev` is the hash of the *changed* line's
successor), so a bit flip is reported at the line that was flipped, not the one after.

For a directory the log must also end where the writer left it: a last segment that ends
with `audit.file.rotated` means the segment(s) after it were removed, and an empty segment
that is not the newest means its records were removed.

What a chain cannot show: lines cut off the end of the newest segment (or a rewritten last
line whose `prev` was kept), older segments removed (indistinguishable from retention), or a
log deleted whole. The chain head printed by `aofctl audit verify`, compared with the SIEM
copy or shipped checkpoints, is the anchor for those.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from aofd.audit import segment

_MAX_PROBLEMS = 100


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One bad place in a log: a file, a 1-based line (0 = the whole file), its seq, why."""

    file: str
    line: int
    seq: int | None
    reason: str

    def format(self) -> str:
        seq = f"seq {self.seq}" if self.seq is not None else "seq ?"
        return f"{self.file}:{self.line}: {seq}: {self.reason}"


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of `verify`: intact when `problems` is empty."""

    files: tuple[str, ...]
    records: int
    first_seq: int | None
    last_seq: int | None
    head: str | None  # chain value of the last line read
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.files)

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclasses.dataclass(slots=True)
class _Entry:
    file_index: int
    file: str
    line: int
    hash: str
    seq: int | None
    prev: str | None
    action: str
    file_id: str | None
    first_seq_field: object
    valid: bool
    first_in_file: bool
    name_first_seq: int | None


class _Checker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._blamed: set[tuple[str, int]] = set()
        self._file_ids: dict[int, str | None] = {}
        self.records = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.head: str | None = None
        self.last: _Entry | None = None

    def add(self, entry: _Entry, reason: str) -> None:
        key = (entry.file, entry.line)
        if key in self._blamed or len(self.problems) >= _MAX_PROBLEMS:
            return
        self._blamed.add(key)
        self.problems.append(Problem(entry.file, entry.line, entry.seq, reason))

    def blamed(self, entry: _Entry) -> bool:
        return (entry.file, entry.line) in self._blamed

    def run(self, entries: Iterator[_Entry]) -> None:
        before: _Entry | None = None
        current = next(entries, None)
        while current is not None:
            after = next(entries, None)
            self.check(before, current, after)
            before, current = current, after

    def check(self, before: _Entry | None, cur: _Entry, after: _Entry | None) -> None:
        self.records += 1
        self.head = cur.hash
        self.last = cur
        if not cur.valid:
            self.add(cur, "not a JSON audit record (no aofd.audit.seq): the line was altered or torn")
            return
        if self.first_seq is None:
            self.first_seq = cur.seq
        self.last_seq = cur.seq
        self._check_segment_shape(cur)
        if before is None:
            if cur.seq == 1 and cur.prev != segment.GENESIS:
                self.add(
                    cur, "the first record of the log does not start the chain (prev is not the genesis)"
                )
            elif cur.seq != 1:
                self.notes.append(f"the chain starts at seq {cur.seq} (older segments were removed)")
            return
        if not before.valid:
            return  # already blamed; re-synchronise on this line
        assert before.seq is not None
        assert cur.seq is not None
        if cur.seq != before.seq + 1:
            if after is not None and after.valid and after.seq == before.seq + 2:
                self.add(cur, f"seq is {cur.seq} where {before.seq + 1} was expected: the line was altered")
            elif cur.seq <= before.seq:
                self.add(
                    cur, f"seq {cur.seq} does not increase after {before.seq}: lines reordered or replayed"
                )
            else:
                missing = cur.seq - before.seq - 1
                self.add(cur, f"seq jumps from {before.seq} to {cur.seq}: {missing} record(s) missing")
        if cur.prev != before.hash:
            if after is not None and after.valid and after.prev == cur.hash and not self.blamed(cur):
                where = f"seq {cur.seq} in {cur.file}" if cur.file != before.file else f"seq {cur.seq}"
                self.add(
                    before,
                    f"the line's bytes do not match the hash recorded by the next record ({where}): "
                    "the line was altered",
                )
            else:
                self.add(cur, "prev does not match the hash of the previous line: the chain is broken here")

    def _check_segment_shape(self, cur: _Entry) -> None:
        if cur.first_in_file:
            self._file_ids[cur.file_index] = cur.file_id
            if cur.action != "audit.file.opened":
                self.add(cur, "the first line of a segment is not an audit.file.opened record")
            elif cur.first_seq_field != cur.seq or cur.name_first_seq != cur.seq:
                self.add(
                    cur,
                    f"segment link mismatch: first_seq field {cur.first_seq_field}, file name says "
                    f"{cur.name_first_seq}, record seq {cur.seq}",
                )
        elif cur.file_id != self._file_ids.get(cur.file_index):
            self.add(cur, "file_id differs from the segment's audit.file.opened record")


def _entries(
    paths: list[Path], checker: _Checker, display: dict[Path, str], *, whole_log: bool
) -> Iterator[_Entry]:
    for index, path in enumerate(paths):
        name = display[path]
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                checker.problems.append(Problem(name, 0, None, "the segment is a symlink; not read"))
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            checker.problems.append(Problem(name, 0, None, f"cannot read: {exc}"))
            continue
        with os.fdopen(fd, "rb") as handle:
            lineno = 0
            name_first = segment.segment_first_seq(path.name)
            for raw in handle:
                lineno += 1
                if not raw.endswith(b"\n"):
                    checker.problems.append(
                        Problem(
                            name, lineno, None, "unterminated last line (torn write); aofd repairs it on open"
                        )
                    )
                    break
                record = segment.parse_line(raw)
                aofd_file = record.get("aofd", {}).get("file", {}) if record else {}
                event = record.get("event", {}) if record else {}
                file_id = segment.audit_field(record, "file_id")
                yield _Entry(
                    file_index=index,
                    file=name,
                    line=lineno,
                    hash=segment.line_hash(raw),
                    seq=segment.audit_field(record, "seq"),
                    prev=segment.audit_field(record, "prev"),
                    action=str(event.get("action", "")) if isinstance(event, dict) else "",
                    file_id=file_id if isinstance(file_id, str) else None,
                    first_seq_field=aofd_file.get("first_seq") if isinstance(aofd_file, dict) else None,
                    valid=record is not None,
                    first_in_file=lineno == 1,
                    name_first_seq=name_first,
                )
            if lineno == 0 and whole_log and index < len(paths) - 1:
                checker.problems.append(
                    Problem(
                        name,
                        0,
                        None,
                        "the segment is empty but newer segments follow: its records were removed",
                    )
                )
            elif lineno == 0:
                checker.notes.append(f"{name} is empty")


def _verify_segments(paths: list[Path], *, root: Path, whole_log: bool) -> VerifyReport:
    """Check `paths` as one chain; `whole_log` when they are all of a context's segments."""
    display = {p: os.path.relpath(p, root) if root != p else p.name for p in paths}
    checker = _Checker()
    checker.run(_entries(paths, checker, display, whole_log=whole_log))
    last = checker.last
    if whole_log and last is not None and last.valid and last.action == "audit.file.rotated":
        checker.problems.append(
            Problem(
                last.file,
                last.line,
                last.seq,
                "the log ends with audit.file.rotated but the next segment is missing: "
                "the newest segment(s) were removed",
            )
        )
    order = {display[p]: i for i, p in enumerate(paths)}
    problems = sorted(checker.problems, key=lambda p: (order.get(p.file, -1), p.line))
    return VerifyReport(
        files=tuple(display[p] for p in paths),
        records=checker.records,
        first_seq=checker.first_seq,
        last_seq=checker.last_seq,
        head=checker.head,
        problems=tuple(problems),
        notes=tuple(checker.notes),
    )


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Verify a segment file, a context directory, or an audit dir of context directories."""
    target = Path(path)
    if not target.is_dir():
        if not target.exists() and not target.is_symlink():
            raise FileNotFoundError(f"no such file or directory: {target}")
        return _verify_segments([target], root=target.parent, whole_log=False)
    segments = segment.list_segments(target)
    if segments:
        return _verify_segments(segments, root=target.parent, whole_log=True)
    reports = [
        _verify_segments(segment.list_segments(sub), root=target, whole_log=True)
        for sub in sorted(target.iterdir())
        if sub.is_dir() and not sub.is_symlink() and segment.list_segments(sub)
    ]
    if not reports:
        return VerifyReport((), 0, None, None, None, (), (f"no audit segments under {target}",))
    return VerifyReport(
        files=tuple(f for r in reports for f in r.files),
        records=sum(r.records for r in reports),
        first_seq=None,
        last_seq=None,
        head=None,
        problems=tuple(p for r in reports for p in r.problems),
        notes=tuple(n for r in reports for n in r.notes),
    )
