"""Reading a context's audit log as one stream of lines, across segments and rotations.

This module owns `last_lines` (the end of the log) and `follow` (`tail -F` for a context
directory: read the active segment, and when a newer segment appears, finish the old one
and continue in the new). Segments are read oldest first by the time in their names
(`segment.by_time`), so a directory that also holds another member's or a single host's
segments shows its newest lines last. Only complete lines are yielded; symlinks are never followed.
It never writes.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from aofd.audit import segment


def last_lines(directory: Path, count: int) -> list[bytes]:
    """The last `count` complete lines of the context's log, oldest first."""
    found: deque[bytes] = deque(maxlen=count)
    for path in reversed(segment.by_time(directory)):
        chunk: deque[bytes] = deque(maxlen=count)
        for line in _read_lines(path):
            chunk.append(line)
        found.extendleft(reversed(chunk))
        if len(found) >= count:
            break
    result = list(found)
    return result[-count:] if count else []


def _read_lines(path: Path) -> Iterator[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    with os.fdopen(fd, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield line


def follow(
    directory: Path,
    *,
    poll_interval: float = 0.25,
    stop: Callable[[], bool] = lambda: False,
    start_at_end: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """Yield complete lines of the context's log as they are written, across rotations.

    Starts with the oldest segment (or at the end of the newest with `start_at_end`) and
    runs until `stop()` is true. A partial line at the end of a segment is held back until
    its newline arrives.
    """
    done: set[str] = set()
    current: Path | None = None
    handle = None
    pending = b""
    try:
        while not stop():
            if current is None:
                segments = [p for p in segment.by_time(directory) if p.name not in done]
                if not segments:
                    sleep(poll_interval)
                    continue
                current = segments[-1] if start_at_end else segments[0]
                try:
                    fd = os.open(current, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                except OSError:
                    done.add(current.name)
                    current = None
                    continue
                handle = os.fdopen(fd, "rb")
                if start_at_end:
                    handle.seek(0, os.SEEK_END)
                    start_at_end = False
                    done.update(p.name for p in segments[:-1])
            assert handle is not None
            data = handle.read(1 << 16)
            if data:
                pending += data
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line + b"\n"
                continue
            newer = [p for p in segment.by_time(directory) if p.name not in done and p != current]
            if newer and _later(newer[-1], current):
                data = handle.read()  # whatever the writer added before it rotated
                pending += data
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line + b"\n"
                handle.close()
                handle = None
                done.add(current.name)
                current = None
                pending = b""
                continue
            sleep(poll_interval)
    finally:
        if handle is not None:
            handle.close()


def _later(candidate: Path, current: Path) -> bool:
    a = segment.segment_first_seq(candidate.name) or 0
    b = segment.segment_first_seq(current.name) or 0
    return a > b
