"""The state dir: what survives a crash or a reboot.

Holds, per source, the last applied and last attempted revision; the inventory digests;
and the last good snapshot itself (every file's bytes), so that a daemon restarted with
every remote unreachable comes up with exactly the policy it had (RELIABILITY.md 5.2).

Every file is written temp + fsync + rename + fsync(dir): after a crash either the old or
the new version is there, never a torn or empty one. A state file that cannot be parsed is
moved aside (`*.corrupt-<ts>`) and treated as absent; it is never silently trusted.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aofd import errors
from aofd.resources import ids, snapshot

SNAPSHOT_FILE = "last-good-snapshot.json"
STATUS_FILE = "status.json"
INVENTORY_FILE = "inventory.json"
ENDPOINTS_FILE = "endpoints.json"
LOCK_FILE = "aofd.lock"
FORMAT = 1


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to `path` so a crash leaves either the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


class StateStore:
    """Reads and writes the state dir (snapshot, inventory, per-source status)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- the last good snapshot -------------------------------------------------------------

    def save_snapshots(self, snapshots: Mapping[str, snapshot.Snapshot], *, revision: str) -> None:
        doc = {
            "format": FORMAT,
            "revision": revision,
            "saved_at": time.time(),
            "sources": {
                name: {
                    "revision": snap.revision,
                    "display_root": snap.display_root,
                    "files": {
                        path: base64.b64encode(f.content).decode("ascii") for path, f in snap.files.items()
                    },
                }
                for name, snap in snapshots.items()
            },
        }
        atomic_write(self.dir / SNAPSHOT_FILE, json.dumps(doc, separators=(",", ":")).encode())

    def load_snapshots(self) -> tuple[str, dict[str, snapshot.Snapshot]]:
        """Return `(revision, {source: snapshot})` of the last good revision, or `("", {})`."""
        doc = _read_json(self.dir / SNAPSHOT_FILE)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return "", {}
        result: dict[str, snapshot.Snapshot] = {}
        try:
            for name, src in doc["sources"].items():
                files = {
                    path: snapshot.SourceFile.of(path, base64.b64decode(content))
                    for path, content in src["files"].items()
                }
                result[name] = snapshot.Snapshot.build(
                    source=name,
                    files=files,
                    revision=ids.Revision(src["revision"]),
                    display_root=src.get("display_root", ""),
                )
        except (KeyError, TypeError, ValueError):
            return "", {}
        return str(doc.get("revision", "")), result

    # -- inventory and status -------------------------------------------------------------

    def save_inventory(self, inventory: Mapping[str, str]) -> None:
        atomic_write(self.dir / INVENTORY_FILE, json.dumps(dict(inventory), sort_keys=True).encode())

    def load_inventory(self) -> dict[str, str]:
        doc = _read_json(self.dir / INVENTORY_FILE)
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    def save_sources(self, records: Mapping[str, SourceRecord]) -> None:
        doc = {name: dataclasses.asdict(rec) for name, rec in records.items()}
        atomic_write(self.dir / STATUS_FILE, json.dumps(doc, sort_keys=True).encode())

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
        atomic_write(self.dir / ENDPOINTS_FILE, json.dumps(dict(endpoints)).encode(), mode=0o644)

    def load_endpoints(self) -> dict[str, str]:
        doc = _read_json(self.dir / ENDPOINTS_FILE)
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
