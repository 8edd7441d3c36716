"""Durable-file primitives shared by the audit log, its sealing state and the state dir.

Owns `fsync_dir`: after a file is created, renamed or removed, the directory entry is durable
only once the directory itself is fsynced. No other I/O, no policy: callers decide when.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """fsync `directory` (its entries: files created, renamed or removed in it). Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
