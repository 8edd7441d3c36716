"""The state dir: what survives a crash or a reboot.

Holds, per source, the last applied and last attempted revision; the inventory digests;
and the last good snapshot itself (every file's bytes), so that a daemon restarted with
every remote unreachable comes up with exactly the policy it had (RELIABILITY.md 5.2).

Every file is written temp + fsync + rename + fsync(dir): after a crash either the old or
the new version is there, never a torn or empty one. A state file that cannot be parsed is
moved aside (`*.corrupt-<ts>`) and treated as absent; it is never silently trusted.

An applied revision is saved (`save_applied`) as what changed since the last save: one line
appended to `last-good-snapshot.journal` (the changed files' bytes, the removed paths, the
inventory entries that changed) and fsynced, so a one-file edit writes about one file however
large the repo. The snapshot and inventory files are the base the journal applies to, tagged
with a generation that each journal line repeats; they are rewritten whole (a new generation,
the journal then removed) on the first save of a process, after a failed write, and when the
journal has grown past half the base. Reading applies the base's lines in order and stops at a
line that does not parse (a crash during an append), so a crash leaves the revision before or
the revision after that save, never a mix.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import itertools
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aofd import durable, errors
from aofd.plan import desired, diff
from aofd.resources import ids, snapshot

SNAPSHOT_FILE = "last-good-snapshot.json"
JOURNAL_FILE = "last-good-snapshot.journal"
COMPACT_MIN_BYTES = 1 << 20
"""The journal is folded into the base once it is larger than this and half the base."""
_GENERATION = "@generation"
STATUS_FILE = "status.json"
INVENTORY_FILE = "inventory.json"
ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = "aofd.lock"
FORMAT = 1


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return None


class StateLock:
    """One aofd per state dir: an exclusive, non-blocking flock held for the process's life."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 64, 0).decode().strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise errors.Stalled(
                f"another aofd{who} is already running with state dir {self.path.parent}; "
                "only one daemon may use a state dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclasses.dataclass(frozen=True, slots=True)
class SourceRecord:
    """What the state dir remembers of one source."""

    last_applied: str = ""
    last_attempted: str = ""
    last_error: str = ""
    applied_at: float = 0.0
    attempted_at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Saved:
    """What the base and journal hold, as this process last wrote them."""

    generation: str
    revision: str
    snapshots: Mapping[str, snapshot.Snapshot]
    inventory: diff.Inventory
    base_bytes: int
    journal_bytes: int


class StateStore:
    """Reads and writes the state dir (snapshot, inventory, per-source status).

    Not thread-safe: one writer at a time (the reconcile loop's single-flight pass)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self._saved: _Saved | None = None

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- the applied revision: base + journal -----------------------------------------------

    def save_applied(
        self, *, revision: str, snapshots: Mapping[str, snapshot.Snapshot], inventory: diff.Inventory
    ) -> None:
        """Persist an applied revision: a journal line of what changed since the last save, or
        the whole base (see the module docstring for when)."""
        saved, self._saved = self._saved, None  # a failure below: the next save writes the whole
        line = _journal_line(saved, revision, snapshots, inventory) if saved is not None else None
        if (
            saved is None
            or line is None
            or saved.journal_bytes + len(line) > max(COMPACT_MIN_BYTES, saved.base_bytes // 2)
        ):
            generation = secrets.token_hex(8)
            self.save_snapshots(snapshots, revision=revision, generation=generation)
            self.save_inventory({**inventory.to_json(), _GENERATION: generation})
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / JOURNAL_FILE)
            size = sum(os.stat(self.dir / name).st_size for name in (SNAPSHOT_FILE, INVENTORY_FILE))
            self._saved = _Saved(generation, revision, dict(snapshots), inventory, size, 0)
            return
        _append(self.dir / JOURNAL_FILE, line)
        self._saved = dataclasses.replace(
            saved,
            revision=revision,
            snapshots=dict(snapshots),
            inventory=inventory,
            journal_bytes=saved.journal_bytes + len(line),
        )

    def _journal(self, generation: str) -> list[dict[str, Any]]:
        """The journal's records of `generation`, in order, up to the first that does not parse."""
        if not generation:
            return []
        try:
            raw = (self.dir / JOURNAL_FILE).read_bytes()
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for text in raw.split(b"\n"):
            if not text:
                continue
            try:
                record = json.loads(text)
            except (ValueError, UnicodeDecodeError):
                break  # torn by a crash during the append: what follows was never acknowledged
            if not isinstance(record, dict):
                break
            if record.get("generation") == generation:
                out.append(record)
        return out

    # -- the last good snapshot -------------------------------------------------------------

    def save_snapshots(
        self, snapshots: Mapping[str, snapshot.Snapshot], *, revision: str, generation: str = ""
    ) -> None:
        """Write the whole snapshot file (in pieces: see `_json_pieces`)."""
        head = {"format": FORMAT, "revision": revision, "generation": generation, "saved_at": time.time()}

        def pieces() -> Iterator[bytes]:
            yield _dumps(head)[:-1].encode() + b',"sources":{'
            for i, (name, snap) in enumerate(snapshots.items()):
                meta = {"revision": snap.revision, "display_root": snap.display_root}
                yield (b"," if i else b"") + _dumps(name).encode() + b":" + _dumps(meta)[:-1].encode()
                yield b',"files":'
                files = snap.files
                yield from _json_pieces(
                    (path, base64.b64encode(f.content).decode("ascii")) for path, f in files.items()
                )
                yield b"}"
            yield b"}}"

        durable.atomic_write(self.dir / SNAPSHOT_FILE, pieces())

    def load_snapshots(self) -> tuple[str, dict[str, snapshot.Snapshot]]:
        """Return `(revision, {source: snapshot})` of the last good revision, or `("", {})`."""
        doc = _read_json(self.dir / SNAPSHOT_FILE)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return "", {}
        result: dict[str, snapshot.Snapshot] = {}
        revision = str(doc.get("revision", ""))
        try:
            sources: dict[str, dict[str, Any]] = {
                name: {
                    "revision": src["revision"],
                    "display_root": src.get("display_root", ""),
                    "files": {
                        path: snapshot.SourceFile.of(path, base64.b64decode(content))
                        for path, content in src["files"].items()
                    },
                }
                for name, src in doc["sources"].items()
            }
            for record in self._journal(str(doc.get("generation", ""))):
                for name, change in record["sources"].items():
                    src = sources[name]
                    src["revision"] = change["revision"]
                    src["display_root"] = change.get("display_root", "")
                    for path in change.get("del", ()):
                        src["files"].pop(path, None)
                    for path, content in change.get("set", {}).items():
                        src["files"][path] = snapshot.SourceFile.of(path, base64.b64decode(content))
                revision = str(record["revision"])
            for name, src in sources.items():
                result[name] = snapshot.Snapshot.build(
                    source=name,
                    files=src["files"],
                    revision=ids.Revision(src["revision"]),
                    display_root=src["display_root"],
                )
        except (KeyError, TypeError, ValueError, AttributeError):
            return "", {}
        return revision, result

    # -- inventory and status -------------------------------------------------------------

    def save_inventory(self, inventory: Mapping[str, str]) -> None:
        durable.atomic_write(self.dir / INVENTORY_FILE, _json_pieces(inventory.items()))

    def load_inventory(self) -> dict[str, str]:
        doc = _read_json(self.dir / INVENTORY_FILE)
        if not isinstance(doc, dict):
            return {}
        out = {str(k): str(v) for k, v in doc.items()}
        for record in self._journal(out.pop(_GENERATION, "")):
            changes = record.get("inventory")
            if not isinstance(changes, dict):
                continue
            for key, value in changes.items():
                if value is None:
                    out.pop(str(key), None)
                else:
                    out[str(key)] = str(value)
        return out

    def save_sources(self, records: Mapping[str, SourceRecord]) -> None:
        doc = {name: dataclasses.asdict(rec) for name, rec in records.items()}
        durable.atomic_write(self.dir / STATUS_FILE, json.dumps(doc, sort_keys=True).encode())

    def load_sources(self) -> dict[str, SourceRecord]:
        doc = _read_json(self.dir / STATUS_FILE)
        if not isinstance(doc, dict):
            return {}
        out: dict[str, SourceRecord] = {}
        for name, rec in doc.items():
            if isinstance(rec, dict):
                with contextlib.suppress(TypeError):
                    out[str(name)] = SourceRecord(**rec)
        return out

    # -- where the daemon listens (for aofctl and tests; ports may be 0 in config) -----------

    def save_endpoints(self, endpoints: Mapping[str, str]) -> None:
        durable.atomic_write(self.dir / ENDPOINTS_FILE, json.dumps(dict(endpoints)).encode(), mode=0o644)

    def load_endpoints(self) -> dict[str, str]:
        doc = _read_json(self.dir / ENDPOINTS_FILE)
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


PIECE = 1000
"""Entries per `json.dumps` call when a large map is written: each call holds the interpreter
lock throughout, and a worker thread writing 100,000 entries in one call would stall the event
loop for a quarter of a second; between pieces the loop gets its turn."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_pieces(items: Iterable[tuple[str, str]]) -> Iterator[bytes]:
    """A JSON object of `items`, as the bytes of `PIECE` entries at a time."""
    yield b"{"
    first = True
    it = iter(items)
    while batch := dict(itertools.islice(it, PIECE)):
        text = _dumps(batch)[1:-1]
        yield (text if first else "," + text).encode()
        first = False
    yield b"}"


def _journal_line(
    saved: _Saved, revision: str, snapshots: Mapping[str, snapshot.Snapshot], inventory: diff.Inventory
) -> bytes | None:
    """One journal line taking `saved` to this revision, or None when it must be saved whole."""
    if saved.snapshots.keys() != snapshots.keys():
        return None
    inventory_changes = inventory.json_changes(saved.inventory)
    if inventory_changes is None:
        return None
    sources: dict[str, dict[str, Any]] = {}
    for name, snap in snapshots.items():
        changed, removed = desired.changed_files(saved.snapshots[name].files, snap.files)
        sources[name] = {
            "revision": snap.revision,
            "display_root": snap.display_root,
            "set": {path: base64.b64encode(snap.files[path].content).decode("ascii") for path in changed},
            "del": removed,
        }
    record = {
        "generation": saved.generation,
        "revision": revision,
        "saved_at": time.time(),
        "sources": sources,
        "inventory": inventory_changes,
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _append(path: Path, line: bytes) -> None:
    """Append `line` and fsync it (and the directory, when the file is new)."""
    created = not path.exists()
    durable.write_synced(path, (line,), os.O_APPEND)
    if created:
        durable.fsync_dir(path.parent)
