"""Durable-file primitives shared by the audit log, its sealing state and the state dir.

Owns `fsync_dir` (after a file is created, renamed or removed, the directory entry is durable
only once the directory itself is fsynced), `write_synced` (every byte written, then fsync) and
`atomic_write` (temp file, fsync, rename, directory fsync: a crash leaves the old file or the
new one, never a torn one). No policy: callers decide what and when.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync `directory` (its entries: files created, renamed or removed in it). Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, pieces: Iterable[bytes], flag: int, mode: int = 0o600) -> None:
    """Write every byte of `pieces` to `path` (opened with `flag`: truncate or append; never
    through a symlink), then fsync it. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flag | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o600) -> None:
    """Write `data` (bytes, or pieces of it) to `path` so a crash leaves either the old or the new
    file, never a torn one. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_synced(tmp, (data,) if isinstance(data, bytes) else data, os.O_TRUNC, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)
