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
log deleted whole; and anyone can recompute a chain. Seals (`aofd.audit.seal`) are the anchor
for those. With the verification key(s) (public keys), a first pass collects the certificates
that link each epoch's key to them, and every `audit.sealed` record is checked: its Ed25519
signature by its epoch's key, that it authenticates the very head, seq, segment, file id and
Context it follows, that its time lies in its epoch, and that the records it covers were
written in that epoch give or take one (a seal made with a key stolen at T cannot vouch for
records from before T: that is unsealed history). A recomputed chain shows up at the first
seal after the change, a rotation seal names the segment that must follow it, a log that does
not start at seq 1 needs an `audit.pruned` record, and epochs with no seal are gaps (the log
stopped being sealed: aofd died, or sealed records were removed) unless a `stop` seal explains
them (downtime, listed). A gap is never intact (`VerifyReport.ok`). `expect` (the newest seq
and head a copy off the host holds) catches a log cut back to an earlier stop seal. What is
after the last good seal is reported as not sealed yet.

Given the audit dir, verify also sums the good seals of each epoch across every Context's log and
compares their count and digest with what the next key move's certificate signed (see
`aofd.audit.seal`): a log rewritten, re-dated, cut or deleted loses seals counted before the theft,
which no one can certify again; only epochs old enough for the retention then recorded may miss
seals. One Context's directory or one segment cannot be summed: the report says so. A seal written
after its epoch ended is a late seal (a gap), one dated before its epoch a forgery; conflicting
certificates are tampering. Lines longer than `MAX_LINE` are streamed and reported, never held.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from aofd.audit import records, seal, segment

_MAX_PROBLEMS = 100
MAX_LINE = 4 * records.MAX_LINE_BYTES
"""The longest line read whole (aofd writes at most `records.MAX_LINE_BYTES`); a longer one is
hashed as it streams by and reported, never held in memory."""
CROSS_SKIPPED = "cross-Context check skipped: give the audit dir"
PRE_CHAIN_LIMIT = 3600
"""Records dated before a key chain's start are accepted (hash chain only) when the log's first seal
of that chain is for an epoch that began within this many seconds of the start: aofd was restarted
with the new sealing state right away. Later than that, an intruder with a later key could re-date
history to before the start, so such records are unsealed history."""


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _context_of(record: Mapping[str, Any] | None) -> str | None:
    aofd = record.get("aofd") if record else None
    context = aofd.get("context") if isinstance(aofd, Mapping) else None
    return context if isinstance(context, str) else None


def _pruned_first_seq(record: Mapping[str, Any] | None) -> int | None:
    aofd = record.get("aofd") if record else None
    pruned = aofd.get("pruned") if isinstance(aofd, Mapping) else None
    first = pruned.get("first_seq") if isinstance(pruned, Mapping) else None
    return first if isinstance(first, int) and not isinstance(first, bool) else None


@dataclasses.dataclass(frozen=True, slots=True)
class Expectation:
    """What a copy kept off the host (the SIEM) says a log reached: a seq and, optionally, the hash
    of its line (`aofd.seal.seq` / `aofd.seal.head` of the newest seal it received)."""

    seq: int
    head: str | None = None


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
class SealStatus:
    """How far one Context's log is sealed (with verification keys only)."""

    log: str
    seals: int  # seals that verify
    sealed_seq: int | None
    sealed_at: str | None
    unsealed: int  # records after the last good seal

    def format(self) -> str:
        if self.sealed_seq is None:
            return f"{self.log}: not sealed: none of its {self.unsealed} records is covered by a good seal"
        return (
            f"{self.log}: sealed up to seq {self.sealed_seq} at {self.sealed_at}; "
            f"{self.unsealed} records after it are not sealed yet"
        )


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
    gaps: tuple[Problem, ...] = ()  # epochs with no seal (with verification keys only)
    seals: tuple[SealStatus, ...] = ()
    downtime: tuple[str, ...] = ()  # stretches with no seal that a stop seal explains
    sealed: tuple[tuple[str, int, str, float], ...] = ()  # (chain, epoch, seal line, time) of each good seal
    cross_checked: bool | None = None  # with keys: whether the seals were summed across Contexts

    @property
    def ok(self) -> bool:
        """Intact: no problem and no gap (a gap may be a truncation: never read it as intact)."""
        return not self.problems and not self.gaps and bool(self.files)

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
    seal: Mapping[str, Any] | None = None
    ts: float | None = None  # the record's @timestamp (seconds), None when missing or malformed
    context: str | None = None  # the record's aofd.context
    pruned_first_seq: int | None = None  # of an audit.pruned record: the first seq still kept


@dataclasses.dataclass(frozen=True, slots=True)
class _Seal:
    entry: _Entry
    chain: str
    epoch: int
    reason: str
    window: tuple[float, float]
    next_file: str | None


class _Checker:
    def __init__(
        self,
        keys: Mapping[str, seal.CertStore] | None = None,
        now: float | None = None,
        *,
        context: str | None = None,
        expect: Expectation | None = None,
    ) -> None:
        self.keys = keys
        self.now = now
        self.context = context  # the Context the log belongs to (its directory's name)
        self.expect = expect
        self.expect_found: str | None = None  # the hash of the line with seq == expect.seq
        self.pending: list[_Entry] = []  # records since the last good seal (with keys only)
        self.coverage_gaps: list[Problem] = []
        self.pre_chain = 0
        self.pruned_ok = False
        self.log_context: str | None = None
        self.seal_lines = 0
        self.trusted: list[_Seal] = []
        self._trusted_per_chain: dict[str, int] = {}
        self.sealed: list[tuple[str, int, str, float]] = []
        self.good: tuple[_Entry, Mapping[str, Any]] | None = None  # last seal that matches the log
        self.after_good = 0
        self.foreign: set[str] = set()
        self._region_start: _Entry | None = None
        self._want_region_start = True
        self._problems_at_good = 0
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
        if self._want_region_start:
            self._region_start, self._want_region_start = cur, False
        self.after_good += 1
        self._check_chain(before, cur, after)
        if self.expect is not None and cur.seq == self.expect.seq:
            self.expect_found = cur.hash
        if cur.valid and cur.action == "audit.sealed":
            self.seal_lines += 1
            if self.keys is not None:
                self._check_context(cur)
                self._check_seal(before, cur)
        elif cur.valid and self.keys is not None:
            self._check_context(cur)
            self.pending.append(cur)
            stopped = self.trusted[-1] if self.trusted and self.trusted[-1].reason == "stop" else None
            if stopped is not None and stopped.entry.file == cur.file:
                self.add(
                    cur,
                    f"a record after the stop seal at {stopped.entry.file}:{stopped.entry.line} in the "
                    "same segment (aofd starts a new segment when it opens a log again): inserted",
                )
            if cur.pruned_first_seq is not None and cur.pruned_first_seq == self.first_seq:
                self.pruned_ok = True

    def _check_context(self, cur: _Entry) -> None:
        """Every record names the Context whose directory holds it (a log copied over another
        Context's, or lines moved between logs, show here)."""
        want = self.context if self.context is not None else self.log_context
        if want is None:
            self.log_context = cur.context
            return
        if cur.context != want:
            self.add(
                cur,
                f"the record belongs to context {cur.context!r} but this is the log of {want!r}: "
                "copied or moved from another Context's log",
            )

    def _check_seal(self, before: _Entry | None, cur: _Entry) -> None:
        """Check one seal against the keys and the log it sits in (see the module docstring)."""
        assert self.keys is not None
        fields = cur.seal
        if not isinstance(fields, Mapping):
            self.add(cur, "an audit.sealed record without aofd.seal fields: altered or forged")
            return
        chain = str(fields.get("chain"))
        deriver = self.keys.get(chain)
        if deriver is None:
            self.foreign.add(chain)
            return
        epoch = fields.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 1 << 40:
            self.add(cur, f"the seal's epoch {epoch!r} is not an epoch number: altered or forged")
            return
        if epoch > self._max_epoch(deriver.vk):
            self.add(cur, f"the seal claims epoch {epoch}, which has not begun yet: forged or altered")
            return
        public = deriver.public(epoch)
        if public is None:
            self.add(
                cur,
                f"no key of chain {chain} is certified for epoch {epoch}: the seal's certificate does not "
                "chain back to the verification key (forged), or the certificates in between are no longer "
                "in the logs (retention): give --certificates STATE_DIR/audit-seal/certs.jsonl",
            )
            return
        if not seal.signature_ok(public, fields.get("sig"), seal.seal_message(fields)):
            self.add(
                cur,
                f"the seal does not verify with the key of chain {chain} for epoch {epoch}: "
                "the seal was forged (for instance with a later key) or altered",
            )
            return
        last = self.trusted[-1] if self.trusted else None
        if last is not None and last.chain == chain and epoch < last.epoch:
            self.add(
                cur, f"a seal for epoch {epoch} after one for epoch {last.epoch}: seals reordered or replayed"
            )
        reason = str(fields.get("reason"))
        next_file = fields.get("next_file")
        window = deriver.vk.epoch_window(epoch)
        grace = float(deriver.vk.interval)
        sealed_at = _timestamp(fields.get("time"))
        if sealed_at is None or sealed_at < window[0] - grace:
            self.add(
                cur,
                f"the seal says it was written at {fields.get('time')}, before epoch {epoch} "
                f"({records.rfc3339(window[0])} to {records.rfc3339(window[1])}) began: forged or altered",
            )
            return
        want = self.context if self.context is not None else self.log_context
        if fields.get("context") != (want if want is not None else cur.context):
            self.add(
                cur,
                f"the seal was made for context {fields.get('context')!r}, not {want!r}: "
                "copied from another Context's log",
            )
            return
        late = sealed_at > window[1] + grace
        if late:  # the key outlived its epoch: aofd stalled, or whoever held the key then sealed
            self.coverage_gaps.append(
                Problem(
                    cur.file,
                    cur.line,
                    cur.seq,
                    f"the seal of epoch {epoch} was written at {fields.get('time')}, after its epoch ended "
                    f"({records.rfc3339(window[1])}): a late seal (aofd stalled, the host was suspended or "
                    "the clock stepped), or one made with a key kept past its epoch: not sealed in time",
                )
            )
        self.trusted.append(
            _Seal(cur, chain, epoch, reason, window, next_file if isinstance(next_file, str) else None)
        )
        self._trusted_per_chain[chain] = self._trusted_per_chain.get(chain, 0) + 1
        self.sealed.append(
            (
                chain,
                epoch,
                seal.seal_line(str(fields.get("context")), fields.get("seq"), fields.get("head")),
                min(sealed_at, window[1] + grace),
            )
        )
        matches = before is not None and fields.get("seq") == before.seq and fields.get("head") == before.hash
        if not matches:
            if len(self.problems) == self._problems_at_good:  # the chain looked intact: it was recomputed
                start = self._region_start or cur
                have = f"seq {before.seq} with head {before.hash}" if before is not None else "nothing"
                self.add(
                    start,
                    f"lines from here to the seal at {cur.file}:{cur.line} were changed, inserted, removed "
                    f"or reordered and the chain recomputed: the seal authenticates seq {fields.get('seq')} "
                    f"with head {fields.get('head')}, the log has {have}",
                )
            return
        if fields.get("segment") != os.path.basename(cur.file) or fields.get("file_id") != cur.file_id:
            self.add(
                cur,
                f"the seal was made in segment {fields.get('segment')} (file_id {fields.get('file_id')}): "
                "the segment was renamed or the seal copied here",
            )
            return
        previous = self.trusted[-2] if len(self.trusted) > 1 else None
        after_gap = previous if previous is not None and window[0] > previous.window[1] else None
        first = self._trusted_per_chain[chain] == 1
        until = sealed_at if late else None
        self._check_coverage(cur, deriver.vk, epoch, window, first=first, after_gap=after_gap, until=until)
        self.good = (cur, fields)
        self.after_good = 0
        self._want_region_start = True
        self._problems_at_good = len(self.problems)

    def _check_coverage(
        self,
        cur: _Entry,
        vk: seal.VerificationKey,
        epoch: int,
        window: tuple[float, float],
        *,
        first: bool,
        after_gap: _Seal | None,
        until: float | None = None,
    ) -> None:
        """The records this seal covers (since the last good seal) were written in its epoch, give or
        take one epoch: a seal made with a later key cannot vouch for older records. This is what
        anchors the log: whoever takes the host at T can seal only epochs from T on, so records dated
        before T must carry the seals of their own epochs."""
        grace = float(vk.interval)
        low, high = window[0] - grace, max(window[1] + grace, until or 0.0)
        pre_chain_ok = first and window[0] <= vk.start + PRE_CHAIN_LIMIT
        late_reported = False
        for entry in self.pending:
            if entry.ts is None:
                self.add(entry, "the record has no valid @timestamp: altered or forged")
                break
            if entry.ts < vk.start and pre_chain_ok:
                self.pre_chain += 1
                continue
            if (  # written after a seal that was followed by no seal for a while
                entry.ts < low
                and after_gap is not None
                and after_gap.reason != "stop"
                and entry.ts >= after_gap.window[0] - grace
            ):
                if not late_reported:
                    late = sum(1 for e in self.pending if e.ts is not None and e.ts < low)
                    self.coverage_gaps.append(
                        Problem(
                            entry.file,
                            entry.line,
                            entry.seq,
                            f"{late} record(s) from {records.rfc3339(entry.ts)} on were not sealed in "
                            f"their epoch but only by the seal at {cur.file}:{cur.line} (epoch {epoch}): "
                            "aofd died before sealing them, or they were rewritten with a later key",
                        )
                    )
                    late_reported = True
                continue
            if entry.ts < low:
                foreign = (
                    f" (or it is covered by seals of chain(s) {', '.join(sorted(self.foreign))}, "
                    "whose verification key was not given)"
                    if self.foreign
                    else ""
                )
                self.add(
                    entry,
                    f"the record is dated {records.rfc3339(entry.ts)} but the first seal after it "
                    f"({cur.file}:{cur.line}) is for epoch {epoch} of chain {vk.chain}, which began "
                    f"{records.rfc3339(window[0])}: records are sealed in the epoch they are written, so "
                    "this is unsealed history: seals removed and the log re-sealed with a later key, "
                    f"or records inserted{foreign}",
                )
                break
            if entry.ts > high:
                self.add(
                    entry,
                    f"the record is dated {records.rfc3339(entry.ts)}, after epoch {epoch} ended "
                    f"({records.rfc3339(window[1])}) yet it is covered by that epoch's seal: altered",
                )
                break
        self.pending = []

    def _max_epoch(self, vk: seal.VerificationKey) -> int:
        """The newest epoch a seal can be for (one that has begun by `now`)."""
        if self.now is None:
            return 20 * 366 * 86400 // vk.interval  # twenty years
        return max(0, int((self.now - vk.start) // vk.interval) + 1)

    def gaps(self) -> tuple[list[Problem], list[str]]:
        """Stretches of time with no seal: those no `stop` seal explains (gaps: the log stopped being
        sealed, or what was sealed after was removed) and those it does (downtime, listed so that a
        run deleted whole after a stop seal cannot hide among them); the newest one up to `now`."""
        now = self.now
        out: list[Problem] = []
        downtime: list[str] = []
        for a, b in itertools.pairwise(self.trusted):
            if b.window[0] <= a.window[1]:
                continue
            span = (
                f"epochs {a.epoch + 1}..{b.epoch - 1} of chain {a.chain}"
                if a.chain == b.chain
                else f"between chain {a.chain} epoch {a.epoch} and chain {b.chain} epoch {b.epoch}"
            )
            if a.reason == "stop":
                downtime.append(
                    f"{a.entry.file}:{a.entry.line}: aofd stopped (stop seal, epoch {a.epoch}) and sealed "
                    f"again from {records.rfc3339(b.window[0])} ({span} not sealed): downtime, or a "
                    "whole run deleted; compare with the host's records of restarts"
                )
                continue
            out.append(
                Problem(
                    a.entry.file,
                    a.entry.line,
                    a.entry.seq,
                    f"no seal from {records.rfc3339(a.window[1])} to {records.rfc3339(b.window[0])} "
                    f"({span}) "
                    "and this seal is not a stop seal: the log stopped being sealed here "
                    "(aofd died, or records sealed after this line were removed: possible truncation)",
                )
            )
        last = self.trusted[-1] if self.trusted else None
        if last is not None and now is not None and last.reason != "stop":
            overdue = last.window[1] + (last.window[1] - last.window[0])
            if now > overdue:
                out.append(
                    Problem(
                        last.entry.file,
                        last.entry.line,
                        last.entry.seq,
                        f"the newest seal is for epoch {last.epoch} "
                        f"(ended {records.rfc3339(last.window[1])}) "
                        "and is not a stop seal: nothing was sealed since (aofd died or is stuck, "
                        "or the records and segments sealed after this line were removed: "
                        "possible truncation)",
                    )
                )
                return out + self.coverage_gaps, downtime
        if last is not None and last.reason == "stop" and now is not None:
            downtime.append(
                f"{last.entry.file}:{last.entry.line}: aofd stopped (stop seal, epoch {last.epoch}) "
                "and has not sealed this log since"
            )
        tail = [e for e in self.pending if e.ts is not None]
        if last is not None:
            low = last.window[0] - (last.window[1] - last.window[0])
            early = next((e for e in tail if e.ts is not None and e.ts < low), None)
            if early is not None:
                self.add(
                    early,
                    f"the record is dated {records.rfc3339(early.ts or 0.0)}, before the newest seal's epoch "
                    f"({last.entry.file}:{last.entry.line}, epoch {last.epoch}), yet comes after it "
                    "unsealed: inserted",
                )
        if now is not None and tail and self.keys is not None:
            longest = max(d.vk.interval for d in self.keys.values())
            stale = [e for e in tail if e.ts is not None and e.ts < now - 2 * longest - longest]
            if stale:
                first = stale[0]
                out.append(
                    Problem(
                        first.file,
                        first.line,
                        first.seq,
                        f"{len(stale)} record(s) from {records.rfc3339(first.ts or 0.0)} on are older than "
                        "two epochs and not sealed: the log stopped being sealed (aofd died) or the seal "
                        "after them was removed: possible truncation",
                    )
                )
        return out + self.coverage_gaps, downtime

    def _check_chain(self, before: _Entry | None, cur: _Entry, after: _Entry | None) -> None:
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


def _lines(handle: BinaryIO) -> Iterator[tuple[bytes, str | None]]:
    """Each line of `handle` with None, or, for a line longer than `MAX_LINE`, its first bytes and
    the chain hash of the whole line (streamed: a huge line or /dev/zero never fills memory)."""
    while raw := handle.readline(MAX_LINE + 1):
        if len(raw) <= MAX_LINE or raw.endswith(b"\n"):
            yield raw, None
            continue
        digest = hashlib.sha256(raw)
        while chunk := handle.readline(1 << 16):
            digest.update(chunk)
            if chunk.endswith(b"\n"):
                break
        yield raw[:MAX_LINE] + b"\n", "sha256:" + digest.hexdigest()


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
            if not stat.S_ISREG(st.st_mode):
                checker.problems.append(Problem(name, 0, None, "the segment is not a regular file; not read"))
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            checker.problems.append(Problem(name, 0, None, f"cannot read: {exc}"))
            continue
        with os.fdopen(fd, "rb") as handle:
            lineno = 0
            name_first = segment.segment_first_seq(path.name)
            for raw, long_hash in _lines(handle):
                lineno += 1
                if long_hash is not None:
                    checker.problems.append(
                        Problem(
                            name,
                            lineno,
                            None,
                            f"the line is longer than {MAX_LINE} bytes: not an audit record",
                        )
                    )
                elif not raw.endswith(b"\n"):
                    checker.problems.append(
                        Problem(
                            name, lineno, None, "unterminated last line (torn write); aofd repairs it on open"
                        )
                    )
                    break
                record = segment.parse_line(raw) if long_hash is None else None
                aofd_file = record.get("aofd", {}).get("file", {}) if record else {}
                aofd_seal = record.get("aofd", {}).get("seal") if record else None
                event = record.get("event", {}) if record else {}
                file_id = segment.audit_field(record, "file_id")
                yield _Entry(
                    file_index=index,
                    file=name,
                    line=lineno,
                    hash=long_hash or segment.line_hash(raw),
                    seq=segment.audit_field(record, "seq"),
                    prev=segment.audit_field(record, "prev"),
                    action=str(event.get("action", "")) if isinstance(event, dict) else "",
                    file_id=file_id if isinstance(file_id, str) else None,
                    first_seq_field=aofd_file.get("first_seq") if isinstance(aofd_file, dict) else None,
                    valid=record is not None,
                    first_in_file=lineno == 1,
                    name_first_seq=name_first,
                    seal=aofd_seal if isinstance(aofd_seal, dict) else None,
                    ts=_timestamp(record.get("@timestamp")) if record else None,
                    context=_context_of(record),
                    pruned_first_seq=_pruned_first_seq(record),
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


def _verify_segments(
    paths: list[Path],
    *,
    root: Path,
    whole_log: bool,
    keys: Mapping[str, seal.CertStore] | None = None,
    now: float | None = None,
    expect: Mapping[str, Expectation] | None = None,
) -> VerifyReport:
    """Check `paths` as one chain; `whole_log` when they are all of a context's segments."""
    display = {p: os.path.relpath(p, root) if root != p else p.name for p in paths}
    log_name = os.path.relpath(paths[0].parent, root) if whole_log else display[paths[0]]
    expected = (expect or {}).get(log_name) if whole_log else None
    context = paths[0].parent.name if whole_log else None
    checker = _Checker(keys, now, context=context, expect=expected)
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
    if expected is not None:
        _check_expectation(checker, expected, log_name, display[paths[-1]])
    gaps: list[Problem] = []
    downtime: list[str] = []
    statuses: list[SealStatus] = []
    if keys is not None:
        if whole_log and checker.first_seq not in (None, 1) and not checker.pruned_ok:
            checker.problems.append(
                Problem(
                    display[paths[0]],
                    1,
                    checker.first_seq,
                    f"the log starts at seq {checker.first_seq} and no audit.pruned record says "
                    "retention removed the segments before it: the oldest segment(s) were deleted",
                )
            )
        names = {p.name for p in paths}
        for one in checker.trusted:
            if whole_log and one.next_file is not None and one.next_file not in names:
                checker.problems.append(
                    Problem(
                        one.entry.file,
                        one.entry.line,
                        one.entry.seq,
                        f"this seal names the next segment {one.next_file}, which is missing: "
                        "the newest segment(s) were removed",
                    )
                )
        gaps, downtime = checker.gaps()
        if checker.seal_lines and not checker.trusted and not checker.problems:
            checker.problems.append(
                Problem(
                    display[paths[0]],
                    0,
                    None,
                    f"none of the {checker.seal_lines} seal(s) in this log verifies with the given "
                    "verification key(s)"
                    + (
                        f" (they are of other chains: {', '.join(sorted(checker.foreign))}; give their keys)"
                        if checker.foreign
                        else ""
                    ),
                )
            )
        elif checker.records and not checker.trusted and not checker.problems and now is None:
            gaps.append(Problem(display[paths[0]], 0, None, "no seal in this log: it is not sealed (yet)"))
        if checker.pre_chain:
            checker.notes.append(
                f"{log_name}: {checker.pre_chain} record(s) predate the key chain (written before "
                "sealing was set up): checked by the hash chain only"
            )
        good = checker.good
        statuses.append(
            SealStatus(
                log=log_name,
                seals=len(checker.trusted),
                sealed_seq=good[0].seq - 1 if good and good[0].seq else None,
                sealed_at=str(good[1].get("time")) if good else None,
                unsealed=checker.after_good if good else checker.records,
            )
        )
        if checker.foreign and checker.trusted:
            checker.notes.append(
                f"{log_name}: seals of other key chains were not checked "
                f"({', '.join(sorted(checker.foreign))}); "
                "give their verification keys too"
            )
    elif checker.seal_lines:
        checker.notes.append(
            f"{checker.seal_lines} seal(s) not checked: give --verification-key to check them"
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
        gaps=tuple(gaps),
        seals=tuple(statuses),
        downtime=tuple(f"{log_name}: {d}" for d in downtime),
        sealed=tuple(checker.sealed),
    )


def _check_expectation(checker: _Checker, expected: Expectation, log_name: str, last_file: str) -> None:
    """The log still reaches what the off-host copy holds (a cut-back log does not)."""
    if checker.expect_found is None:
        checker.problems.append(
            Problem(
                last_file,
                0,
                checker.last_seq,
                f"{log_name} ends at seq {checker.last_seq} but seq {expected.seq} was sealed and "
                "shipped (--expect): records at the end of the log were removed",
            )
        )
    elif expected.head is not None and checker.expect_found != expected.head:
        checker.problems.append(
            Problem(
                last_file,
                0,
                expected.seq,
                f"the line with seq {expected.seq} does not hash to {expected.head} as shipped "
                "(--expect): the log was rewritten",
            )
        )


def verify(
    path: str | os.PathLike[str],
    *,
    keys: Iterable[seal.VerificationKey] = (),
    now: float | None = None,
    expect: Mapping[str, Expectation] | None = None,
    certificates: Iterable[str | os.PathLike[str]] = (),
) -> VerifyReport:
    """Verify a segment file, a context directory, or an audit dir of context directories.

    With verification `keys` (one per key chain the logs were sealed with) the seals are
    checked too, and the newest seal is compared with `now` (None: not compared). `expect`
    maps a Context (its directory's name) to the newest seq (and head) a copy kept off the
    host holds: a log that no longer reaches it was cut back. A Context named in `expect`
    whose log is not found is a problem too. The certificates that link each epoch's key to
    the verification key are read from the seals under `path` and from the `certificates`
    files (the daemon's `certs.jsonl`, needed once retention removed the oldest seals).
    """
    derivers = {vk.chain: seal.CertStore(vk) for vk in keys} or None
    target = Path(path)
    if derivers is not None:
        for certs in certificates:
            for cert in seal.read_certs(Path(certs)):
                store = derivers.get(str(cert.get("chain")))
                if store is not None:
                    store.add(cert)
        _collect_certs(target, derivers)
    if not target.is_dir():
        if not target.exists() and not target.is_symlink():
            raise FileNotFoundError(f"no such file or directory: {target}")
        if expect:
            raise ValueError(
                f"{target} is one segment: --expect needs a Context's directory or the audit dir"
            )
        one = _verify_segments([target], root=target.parent, whole_log=False, keys=derivers, now=now)
        return _cross_skipped(_with_conflicts(one, derivers))
    segments = segment.list_segments(target)
    if segments:
        one = _verify_members(segments, root=target.parent, keys=derivers, now=now, expect=expect)
        missing = sorted(set(expect or {}) - {target.name})
        return _cross_skipped(_with_conflicts(_with_missing(one, missing, target.parent), derivers))
    subs = [
        sub
        for sub in sorted(target.iterdir())
        if sub.is_dir() and not sub.is_symlink() and segment.list_segments(sub)
    ]
    reports = [
        _verify_members(segment.list_segments(sub), root=target, keys=derivers, now=now, expect=expect)
        for sub in subs
    ]
    if not reports:
        return VerifyReport((), 0, None, None, None, (), (f"no audit segments under {target}",))
    missing = sorted(set(expect or {}) - {sub.name for sub in subs})
    whole = _with_missing(_combined(reports), missing, target)
    whole = _with_conflicts(whole, derivers)
    if derivers is None:
        return whole
    problems, notes = _cross_check(derivers, whole.sealed, target)
    return dataclasses.replace(
        whole, problems=whole.problems + problems, notes=whole.notes + notes, cross_checked=True
    )


def _combined(reports: list[VerifyReport]) -> VerifyReport:
    """Several logs' reports as one (no single first/last seq or head)."""
    return VerifyReport(
        files=tuple(f for r in reports for f in r.files),
        records=sum(r.records for r in reports),
        first_seq=None,
        last_seq=None,
        head=None,
        problems=tuple(p for r in reports for p in r.problems),
        notes=tuple(n for r in reports for n in r.notes),
        gaps=tuple(g for r in reports for g in r.gaps),
        seals=tuple(s for r in reports for s in r.seals),
        downtime=tuple(d for r in reports for d in r.downtime),
        sealed=tuple(s for r in reports for s in r.sealed),
    )


def _verify_members(
    paths: list[Path],
    *,
    root: Path,
    keys: Mapping[str, seal.CertStore] | None,
    now: float | None,
    expect: Mapping[str, Expectation] | None,
) -> VerifyReport:
    """One Context directory's segments: one chain per member of a replica set (segment names
    `audit-<member>-...`; a single host's unnamed ones are one more), each checked on its own.
    `expect` (the newest seq a copy holds) applies only to a directory with one chain."""
    groups = segment.by_member(paths)
    if len(groups) == 1:
        return _verify_segments(paths, root=root, whole_log=True, keys=keys, now=now, expect=expect)
    reports = []
    for member, chain in groups.items():
        report = _verify_segments(chain, root=root, whole_log=True, keys=keys, now=now)
        who = f"member {member}" if member else "the single-host log"
        reports.append(
            dataclasses.replace(
                report, notes=(f"{chain[0].parent.name}: {who}: {report.records} record(s)", *report.notes)
            )
        )
    whole = _combined(reports)
    if expect and paths[0].parent.name in expect:
        extra = Problem(
            paths[0].parent.name,
            0,
            None,
            "--expect cannot be checked: this log holds several members' chains",
        )
        whole = dataclasses.replace(whole, problems=(*whole.problems, extra))
    return whole


def _cross_skipped(report: VerifyReport) -> VerifyReport:
    """One Context's log or one segment: the epoch digests need every Context's seals."""
    if not report.seals:
        return report
    return dataclasses.replace(report, notes=(*report.notes, CROSS_SKIPPED), cross_checked=False)


def _with_conflicts(report: VerifyReport, stores: Mapping[str, seal.CertStore] | None) -> VerifyReport:
    """Two certificates for one epoch, or two key moves signed by one key: one of them was forged."""
    extra: list[Problem] = []
    for chain, store in sorted((stores or {}).items()):
        store.resolve()
        extra.extend(
            Problem(
                f"certificates of chain {chain}",
                0,
                None,
                f"conflicting certificates for epoch {epoch}: two different keys (or key moves) are "
                "certified for it, so one certificate was forged (with a stolen key)",
            )
            for epoch in store.conflicts
        )
    return dataclasses.replace(report, problems=report.problems + tuple(extra)) if extra else report


def _cross_check(
    stores: Mapping[str, seal.CertStore], sealed: Iterable[tuple[str, int, str, float]], target: Path
) -> tuple[tuple[Problem, ...], tuple[str, ...]]:
    """Sum the good seals of each epoch across every Context's log and compare with what the next
    key move's certificate signed (`seal.sealed_summary`): a log rewritten, re-dated, cut or
    deleted loses seals made before the theft, which nobody can certify again. Seals an epoch old
    enough for the retention then in force to have pruned them (at the newest seal's time) may be
    missing; with retention off, none may."""
    by_epoch: dict[tuple[str, int], list[str]] = {}
    newest: dict[str, float] = {}
    for chain, epoch, line, at in sealed:
        by_epoch.setdefault((chain, epoch), []).append(line)
        newest[chain] = max(newest.get(chain, at), at)
    problems: list[Problem] = []
    unknown: list[str] = []
    pruned = 0
    for chain, store in sorted(stores.items()):
        store.resolve()
        for prev, cert in sorted(store.moves.items()):
            if "sealed" not in cert:
                continue  # a certificate of an older aofd: nothing to compare with
            summary = cert["sealed"]
            if summary is None:
                unknown.append(f"{chain}:{prev}")
                continue
            found = by_epoch.get((chain, prev), [])
            if len(found) == summary["count"] and seal.seals_digest(found) == summary["digest"]:
                continue
            retention = int(summary["retention"])
            ended = store.vk.epoch_window(prev)[1] + store.vk.interval
            if retention > 0 and chain in newest and ended <= newest[chain] - retention:
                pruned += 1
                continue
            everyone = {c for (ch, _), lines in by_epoch.items() if ch == chain for c in _contexts(lines)}
            problems.append(_lost_seals(chain, prev, int(cert["epoch"]), summary, found, everyone, target))
    notes: list[str] = []
    if unknown:
        notes.append(
            f"{len(unknown)} epoch(s) not cross-checked (aofd restarted after a crash with a key it may "
            f"have sealed with, or a seal's fsync failed): {', '.join(unknown[:10])}"
        )
    if pruned:
        notes.append(f"{pruned} epoch(s) have seals removed by retention (older than the retention allows)")
    return tuple(problems), tuple(notes)


def _contexts(lines: Iterable[str]) -> set[str]:
    return {str(json.loads(line)[0]) for line in lines}


def _lost_seals(
    chain: str,
    prev: int,
    epoch: int,
    summary: Mapping[str, Any],
    found: list[str],
    everyone: set[str],
    target: Path,
) -> Problem:
    gone = sorted(everyone - _contexts(found))
    which = f"; none of context(s) {', '.join(gone)} (sealed in other epochs)" if gone else ""
    return Problem(
        f"chain {chain} epoch {prev}",
        0,
        None,
        f"the certificate of epoch {epoch}, signed with epoch {prev}'s key before it was destroyed, "
        f"records {summary['count']} seal(s) made with that key across all Contexts; the logs under "
        f"{target} hold {len(found)} that do not match them{which}: a log was rewritten, re-dated, cut "
        "or deleted (or a Context's log is kept outside this dir)",
    )


def _collect_certs(target: Path, stores: Mapping[str, seal.CertStore]) -> None:
    """Read the certificate of every seal under `target` (a first pass: a seal's certificate chain
    may run through other Contexts' logs). Unreadable files are reported by the second pass."""
    if target.is_dir():
        direct = segment.list_segments(target)
        paths = direct or [
            p
            for sub in sorted(target.iterdir())
            if sub.is_dir() and not sub.is_symlink()
            for p in segment.list_segments(sub)
        ]
    else:
        paths = [target]
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue  # reported by the second pass
            for raw, long_hash in _lines(handle):
                if long_hash is not None or b'"audit.sealed"' not in raw:
                    continue
                record = segment.parse_line(raw)
                aofd = record.get("aofd") if record else None
                fields = aofd.get("seal") if isinstance(aofd, dict) else None
                if isinstance(fields, dict):
                    store = stores.get(str(fields.get("chain")))
                    certs = fields.get("certs")
                    if store is not None and isinstance(certs, list):
                        for cert in certs:
                            store.add(cert)


def _with_missing(report: VerifyReport, missing: list[str], root: Path) -> VerifyReport:
    """Add a problem for each Context named in `expect` that has no log under `root`."""
    if not missing:
        return report
    extra = tuple(
        Problem(name, 0, None, f"no audit log for context {name!r} under {root}, but --expect names it")
        for name in missing
    )
    return dataclasses.replace(report, problems=report.problems + extra)
