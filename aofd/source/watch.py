"""The watchfiles adapter: coalesced change signals for a watched directory.

Owns the only import of watchfiles. `changes()` yields one signal (the set of changed
paths) per burst: watchfiles groups events until `step_ms` pass without a new one (capped
at `debounce_ms`), so an editor save or a `git checkout` of 100 files gives one or two
signals, not 100. Hidden paths (the `.aofd/` state dir, `.git/`, dot files), editor temp
files and any `ignore` path are filtered out before they can wake anyone.

A signal carries no content: the consumer re-reads the tree (read-then-confirm lives in
`aofd.source.directory`). Must not read files, must not import aofd.source.git.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import watchfiles

from aofd.errors import SourceError
from aofd.source import rules

DEFAULT_STEP_MS = 50
DEFAULT_DEBOUNCE_MS = 400


def relevant(root: Path, path: str, *, ignore: tuple[Path, ...] = ()) -> bool:
    """Whether a change at `path` can affect the snapshot of `root`."""
    candidate = Path(path)
    for ignored in ignore:
        if candidate == ignored or ignored in candidate.parents:
            return False
    try:
        parts = candidate.relative_to(root).parts
    except ValueError:
        return False
    return not any(rules.is_ignored(part) for part in parts)


def _absolute(root: Path, ignore: Iterable[Path]) -> tuple[Path, tuple[Path, ...]]:
    return Path(os.path.abspath(root)), tuple(Path(os.path.abspath(p)) for p in ignore)


async def changes(
    root: Path,
    *,
    stop: asyncio.Event,
    ignore: Iterable[Path] = (),
    step_ms: int = DEFAULT_STEP_MS,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    force_polling: bool | None = None,
) -> AsyncIterator[frozenset[str]]:
    """Yield the set of relevant changed paths under `root`, one set per burst, until `stop`.

    Raises:
        SourceError: `root` cannot be watched (missing, permission denied, inotify limits).
    """
    root, ignored = _absolute(root, ignore)

    def keep(_change: watchfiles.Change, path: str) -> bool:
        return relevant(root, path, ignore=ignored)

    try:
        async for batch in watchfiles.awatch(
            root,
            watch_filter=keep,
            step=step_ms,
            debounce=debounce_ms,
            stop_event=stop,
            force_polling=force_polling,
            ignore_permission_denied=True,
        ):
            paths = frozenset(path for _change, path in batch)
            if paths:
                yield paths
    except (OSError, RuntimeError) as exc:  # watchfiles raises these for missing roots, inotify limits
        raise SourceError(f"cannot watch {root}: {exc}", retry_after=5.0) from exc
