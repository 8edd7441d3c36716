"""Read a local directory tree into an immutable `Snapshot` (directory sources, `aofctl validate`).

Owns the walk of a local tree and the safety rules for reading it (GITOPS-ANCHORS.md
section 5.2, RELIABILITY.md section 4.2):

- `os.scandir` without following symlinks; hidden names (`.git/`, `.aofd/`, dot files) and
  editor temp files are skipped before their type is looked at;
- symlinks, devices, FIFOs and sockets are refused as issues, their contents never read;
- caps (file size, file count, total bytes) are checked from `stat` before reading;
- files are opened with `O_NOFOLLOW` and read-then-confirmed: `stat` before and `fstat`
  after must agree on inode, size and mtime, else the file is read again (a few times, then
  an issue); files that are new or changed since `previous` (all files when there is no
  `previous`) are stat'ed again after one 50 ms pause for the whole tree, and re-read if
  they changed, so an editor's partial write never yields a half-read snapshot.
  Limit: a writer that stalls for longer than the pause in the middle of an in-place write
  can still be read half-written by `read_tree` alone; hence `read_settled`.
- `read_settled` (what directory sources use) hands a changed tree over only once it has been
  quiet for `settle` seconds: it reads, waits `settle`, reads again and compares every file's
  (device, inode, size, mtime_ns) and the content digest of the tree; any difference starts
  the wait again, up to a deadline (then a `SourceError`, the last good snapshot stays). Only
  the first read (start-up) is taken at once when every file's mtime is older than `settle`
  (plus a margin for coarse timestamps); every later change waits, whatever its mtimes say
  (`rsync -a` moves finished files into place with their old mtimes while others still come).

Incremental reads: `read_settled(memo=..., changed=...)` reads only the paths a watcher
reported (a directory among them with everything below it; ancestors are checked to be real
directories, so nothing below a symlink is read) on top of the `TreeState` of the last read,
reusing the rest; the result equals a full walk. A full walk is done instead at the first
read, when the paths are unknown, when the root itself changed, when more than
`MAX_INCREMENTAL_PATHS` changed, and while a tree-wide cap (`max_files`, `max_tree_bytes`)
is or was in the way (its cut-off depends on the walk order).

The revision is a content digest of the files (and of the issues, so a new symlink is a new
revision). When nothing changed, the previous snapshot itself (same `files` mapping) is
returned. A file whose content is unchanged is handed over as the previous snapshot's
`SourceFile` object (identity), so the parse cache reuses it; with a `StatCache`, a file
whose stat (size, mtime, inode) did not change is not even re-read.

Must not: follow a symlink, read outside `root`, import third-party I/O libraries, use asyncio.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import NamedTuple

from aofd import settings
from aofd.errors import Issue, SourceError
from aofd.resources import snapshot
from aofd.resources.ids import Revision
from aofd.source import rules

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_READ_ATTEMPTS = 5
# A file modified this recently may still be being written (in place, chunk by chunk, with
# pauses shorter than a timestamp tick): such files are re-checked after `_SETTLE_S`.
_RECENT_NS = 100_000_000
_SETTLE_S = 0.05
# A stat entry is trusted only for files last modified this long before they were read:
# filesystem timestamps are coarse, so a same-size rewrite within one tick would otherwise
# be invisible ("racy git").
_RACY_NS = 2_000_000_000
DEFAULT_SETTLE_S = settings.DEFAULT_DIRECTORY_SETTLE
SETTLE_DEADLINE_S = 30.0
"""A tree still changing after max(this, 10 x settle) is not handed over: `SourceError`."""


class StatKey(NamedTuple):
    """What must be equal for a file to count as unchanged without reading it.

    A NamedTuple rather than a frozen dataclass: four are built per file, and tuples are
    several times cheaper to construct and compare.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StatCache:
    """`path -> (StatKey, SourceFile)` from the previous read of one tree.

    Owned by exactly one reader (a `DirectorySource`); `read_tree` replaces its contents on
    every call. Not thread-safe: reads of one tree never overlap.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[StatKey, snapshot.SourceFile]] = {}

    def __len__(self) -> int:
        return len(self.entries)


@dataclasses.dataclass(slots=True)
class _Walk:
    """Mutable state of one `read_tree` call."""

    root: Path
    display_root: str
    budget: rules.Budget
    previous: snapshot.Snapshot | None
    old_cache: dict[str, tuple[StatKey, snapshot.SourceFile]]
    new_cache: dict[str, tuple[StatKey, snapshot.SourceFile]]
    now_ns: int
    files: dict[str, snapshot.SourceFile] = dataclasses.field(default_factory=dict)
    issues: list[Issue] = dataclasses.field(default_factory=list)
    recent: dict[str, tuple[str, StatKey]] = dataclasses.field(default_factory=dict)
    keys: dict[str, StatKey] = dataclasses.field(default_factory=dict)
    dirs: set[str] = dataclasses.field(default_factory=set)
    reads: int = 0

    def display(self, rel: str) -> str:
        return f"{self.display_root.rstrip('/')}/{rel}" if self.display_root else rel


def _new_walk(
    root: Path,
    shown: str,
    limits: snapshot.Limits,
    previous: snapshot.Snapshot | None,
    stat_cache: StatCache | None,
    now_ns: int,
) -> _Walk:
    """The state of a new read (a full walk or the changed paths), with the stat cache's entries."""
    return _Walk(
        root=root,
        display_root=shown,
        budget=rules.Budget(limits),
        previous=previous,
        old_cache=stat_cache.entries if stat_cache is not None else {},
        new_cache={},
        now_ns=now_ns,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class TreeState:
    """What one read knew about a tree: the base an incremental read starts from.

    `keys`: the stat key each file of `snapshot` was read under; `dirs`: every directory
    walked (relative, "" for the root); `capped`: a tree-wide cap (file count, total bytes)
    cut the read short, so the next read must be a full one.
    """

    snapshot: snapshot.Snapshot
    keys: Mapping[str, StatKey]
    dirs: frozenset[str]
    total_bytes: int
    capped: bool


_TREE_CAPS = frozenset({"too-many-files", "tree-too-large"})
MAX_INCREMENTAL_PATHS = 2_000
"""More changed paths than this in one read: the full walk is about as cheap, and simpler."""


class TreeMemo:
    """The last read of one tree (owned by one `DirectorySource`), and how the last read went.

    `mode` is "full" or "incremental"; `reason` says why the last read was a full one when
    changed paths were known (None otherwise).
    """

    def __init__(self) -> None:
        self.state: TreeState | None = None
        self.mode = "full"
        self.reason: str | None = None
        self.full_reads = 0
        self.incremental_reads = 0


def read_tree(
    root: Path,
    *,
    subpath: str = ".",
    limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    previous: snapshot.Snapshot | None = None,
    source_name: str = "directory",
    stat_cache: StatCache | None = None,
    display_root: str | None = None,
) -> snapshot.Snapshot:
    """Read every candidate resource file under `root/subpath` into a `Snapshot`.

    Args:
        root: the source's directory (it may itself be reached through a symlink; nothing
            below it is).
        subpath: a relative folder under `root`; no `..`, no symlinked components.
        limits: the content caps; exceeding one is an issue, never an exception.
        previous: the last snapshot of this tree; unchanged files are handed over as its
            `SourceFile` objects.
        source_name: the `Snapshot.source` name.
        stat_cache: if given, files whose stat did not change since the cached read are not
            re-read; the cache is refreshed in place.
        display_root: prefix for paths shown to users (default: `root`).

    Returns:
        The snapshot: files keyed by POSIX path relative to `root`, plus issues. Issue paths
        are display paths (`display_root/rel`).

    Raises:
        SourceError: `root` or `subpath` does not exist or is not a readable directory.
    """
    snap, _keys = _read(
        root,
        subpath=subpath,
        limits=limits,
        previous=previous,
        source_name=source_name,
        stat_cache=stat_cache,
        display_root=display_root,
        now_ns=time.time_ns(),
        pause=True,
    )
    return snap


def read_settled(
    root: Path,
    *,
    settle: float = DEFAULT_SETTLE_S,
    subpath: str = ".",
    limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    previous: snapshot.Snapshot | None = None,
    source_name: str = "directory",
    stat_cache: StatCache | None = None,
    display_root: str | None = None,
    wait: Callable[[float], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_ns: Callable[[], int] = time.time_ns,
    memo: TreeMemo | None = None,
    changed: Callable[[], Collection[str] | None] | None = None,
) -> snapshot.Snapshot:
    """`read_tree`, handing a changed tree over only once it has been unchanged for `settle` s.

    Args:
        settle: seconds the tree must stay identical (every file's stat key and the content
            digest); 0 reads once, as `read_tree` does.
        wait: sleeps up to its argument in seconds; returns True when the caller is stopping
            (default: `time.sleep`, never stopping).
        clock: monotonic seconds, for the deadline; `wall_ns`: the wall clock files are
            stamped with. Both injectable for tests.
        memo: the last read of this tree; with `changed`, allows an incremental read.
        changed: drains the paths (absolute, or relative to `root`) reported changed since
            it was last called; None means "unknown". When it names paths, `memo` holds the
            read that produced `previous` and `subpath` is ".", only those paths (and
            everything below the directories among them) are read again and the rest of
            `previous` is reused, `SourceFile` objects and all; paths reported during the
            settle wait join the read and restart the wait. Otherwise the tree is walked.
        The other arguments are those of `read_tree`.

    Returns:
        A snapshot whose every file was read twice, `settle` apart, with identical results,
        or `previous`'s revision again, or a change older than `settle` by its mtimes.

    Raises:
        SourceError: the tree is unreadable (as `read_tree`), kept changing past the deadline,
            or `wait` reported that the caller is stopping.
    """

    def read(prior: snapshot.Snapshot | None) -> tuple[snapshot.Snapshot, dict[str, StatKey]]:
        return _read(
            root,
            subpath=subpath,
            limits=limits,
            previous=prior,
            source_name=source_name,
            stat_cache=stat_cache,
            display_root=display_root,
            now_ns=wall_ns(),
            pause=settle <= 0,  # the settle wait replaces the short timestamp-tick pause
            memo=memo,
        )

    if memo is not None and changed is not None:
        paths = changed()
        if memo.state is not None and memo.state.snapshot is previous and paths is not None and paths:
            incremental = _read_settled_paths(
                root,
                paths,
                base=memo.state,
                settle=settle,
                limits=limits,
                source_name=source_name,
                stat_cache=stat_cache,
                display_root=display_root,
                sleep=wait if wait is not None else _sleep,
                clock=clock,
                wall_ns=wall_ns,
                changed=changed,
            )
            if isinstance(incremental, TreeState):
                memo.state = incremental
                memo.mode, memo.reason = "incremental", None
                memo.incremental_reads += 1
                return incremental.snapshot
            memo.reason = incremental
        elif previous is None or memo.state is None:
            memo.reason = None  # a first read
        elif paths is None:
            memo.reason = "the changed paths are not known"
        elif not paths:
            memo.reason = None  # a periodic re-read or an explicit request: a full read is wanted
        else:
            memo.reason = "the last read was not the one in force"
    if memo is not None:
        memo.mode = "full"
        memo.full_reads += 1
    snap, keys = read(previous)
    if settle <= 0 or not _needs_settling(snap, keys, previous, settle=settle, now_ns=wall_ns()):
        return snap
    sleep = wait if wait is not None else _sleep
    deadline = clock() + max(SETTLE_DEADLINE_S, 10 * settle)
    while True:
        if sleep(settle):
            raise SourceError(
                f"stopped while waiting for {display_root or root} to be quiet for {settle:g}s",
                retry_after=settle,
            )
        again, again_keys = read(snap)
        if again.revision == snap.revision and again_keys == keys:
            return again
        if clock() >= deadline:
            changing = _differences(snap, keys, again, again_keys)
            raise SourceError(
                f"{', '.join(changing) or display_root or root}: still changing; a directory is applied "
                f"only once it has been quiet for {settle:g}s (directory.settle)",
                retry_after=settle,
            )
        snap, keys = again, again_keys


def _read_settled_paths(
    root: Path,
    paths: Collection[str],
    *,
    base: TreeState,
    settle: float,
    limits: snapshot.Limits,
    source_name: str,
    stat_cache: StatCache | None,
    display_root: str | None,
    sleep: Callable[[float], bool],
    clock: Callable[[], float],
    wall_ns: Callable[[], int],
    changed: Callable[[], Collection[str] | None],
) -> TreeState | str:
    """The incremental `read_settled`: a settled `TreeState`, or why a full read must be done."""
    rels: set[str] = set()

    def add(more: Collection[str]) -> str | None:
        for path in more:
            rel = _relative(root, path)
            if rel is None:
                return f"{path} is not below the source's directory"
            rels.add(rel)
        if len(rels) > MAX_INCREMENTAL_PATHS:
            return f"more than {MAX_INCREMENTAL_PATHS} paths changed"
        return None

    def read() -> tuple[TreeState, dict[str, StatKey]] | str:
        return _read_paths(
            root,
            rels,
            base=base,
            limits=limits,
            source_name=source_name,
            stat_cache=stat_cache,
            display_root=display_root,
            now_ns=wall_ns(),
            pause=settle <= 0,
        )

    problem = add(paths)
    if problem is not None:
        return problem
    first = read()
    if isinstance(first, str) or settle <= 0 or first[0].snapshot is base.snapshot:
        return first if isinstance(first, str) else first[0]
    deadline = clock() + max(SETTLE_DEADLINE_S, 10 * settle)
    state, keys = first
    while True:
        if sleep(settle):
            raise SourceError(
                f"stopped while waiting for {display_root or root} to be quiet for {settle:g}s",
                retry_after=settle,
            )
        more = changed()
        if more is None:
            return "the changed paths are not known"
        problem = add(more)
        if problem is not None:
            return problem
        again = read()
        if isinstance(again, str):
            return again
        if not more and again[0].snapshot.revision == state.snapshot.revision and again[1] == keys:
            return again[0]
        if clock() >= deadline:
            shown = [again[0].snapshot.display_path(rel) for rel in sorted(rels)[:3]]
            raise SourceError(
                f"{', '.join(shown) or display_root or root}: still changing; a directory is applied "
                f"only once it has been quiet for {settle:g}s (directory.settle)",
                retry_after=settle,
            )
        state, keys = again


def _relative(root: Path, path: str) -> str | None:
    """`path` (absolute, or relative to `root`) as a POSIX path relative to `root`; None if outside."""
    if not os.path.isabs(path):
        rel = os.path.normpath(path)
    else:
        rel = os.path.relpath(os.path.normpath(path), os.path.abspath(root))
    if rel == ".":
        return ""
    if rel.startswith("..") or os.path.isabs(rel):
        return None
    return Path(rel).as_posix()


def _read_paths(
    root: Path,
    rels: Collection[str],
    *,
    base: TreeState,
    limits: snapshot.Limits,
    source_name: str,
    stat_cache: StatCache | None,
    display_root: str | None,
    now_ns: int,
    pause: bool,
) -> tuple[TreeState, dict[str, StatKey]] | str:
    """Read only `rels` (and all below those that are directories) on top of `base`.

    Returns the new state and the stat keys of the files read, or why a full read is needed
    instead (the root itself changed, a tree-wide cap is or was in the way).
    """
    if base.capped:
        return "a tree-wide cap cut the last read short"
    if "" in rels:
        return "the directory itself changed"
    root = Path(root)
    shown = str(root) if display_root is None else display_root
    prev = base.snapshot
    walk = _new_walk(root, shown, limits, prev, stat_cache, now_ns)
    exact: set[str] = set()
    prefixes: list[str] = []
    is_dir: dict[str, bool] = {}

    def real_dir(rel: str) -> bool:
        if rel not in is_dir:
            try:
                is_dir[rel] = stat.S_ISDIR(os.lstat(os.path.join(root, rel)).st_mode)
            except OSError:
                is_dir[rel] = False
        return is_dir[rel]

    walked: set[str] = set()
    for rel in sorted(rels):
        parts = rel.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in walked for a in ancestors):
            continue  # below a directory read again in this batch
        exact.add(rel)
        # Whatever was below `rel` goes unless it is a directory read again below or a regular
        # file (which has nothing below it): `base.dirs` may not know every directory (one created
        # empty, or holding no resource file), and a directory moved away is reported alone.
        if any(part in ("", ".", "..") or rules.is_ignored(part) for part in parts):
            prefixes.append(rel + "/")
            continue
        if not all(real_dir(a) for a in ancestors):
            prefixes.append(rel + "/")
            continue  # below a symlink or a vanished directory: not part of the tree
        path = os.path.join(root, rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            prefixes.append(rel + "/")
            continue
        except OSError as exc:
            walk.issues.append(rules.error(walk.display(rel), f"not readable: {exc.strerror}", "unreadable"))
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            walked.add(rel)
            prefixes.append(rel + "/")
            _walk_dir(walk, Path(path), rel + "/")
        elif stat.S_ISREG(mode):
            if rel in base.dirs:
                prefixes.append(rel + "/")  # a directory replaced by a file
            if rules.is_candidate(parts[-1]):
                _read_path(walk, rel, path, st)
        else:
            prefixes.append(rel + "/")
            what = "a symlink" if stat.S_ISLNK(mode) else _special_kind(mode)
            walk.issues.append(
                rules.error(walk.display(rel), f"is {what}; only regular files are read", "not-regular")
            )
    if pause:
        _settle(walk)
    if walk.budget.exhausted:
        return "a tree-wide cap was reached"
    removed = {rel for rel in exact if rel in prev.files}
    if prefixes:
        below = tuple(prefixes)
        removed.update(rel for rel in prev.files if rel.startswith(below))
    files = snapshot.merged_files(prev.files, walk.files, removed)
    total = base.total_bytes - sum(len(prev.files[rel].content) for rel in removed)
    total += sum(len(f.content) for f in walk.files.values())
    if len(files) > limits.max_files or total > limits.max_tree_bytes:
        return "a tree-wide cap was reached"
    gone = {walk.display(rel) for rel in exact}
    gone_below = tuple(walk.display(p) for p in prefixes)
    kept = [i for i in prev.issues if i.path not in gone and not i.path.startswith(gone_below)]
    issues = tuple(sorted([*kept, *walk.issues]))
    touched = {rel: walk.keys[rel] for rel in walk.files}
    if stat_cache is not None:
        for rel in removed:
            stat_cache.entries.pop(rel, None)
        stat_cache.entries.update(walk.new_cache)
    if files is prev.files and issues == prev.issues:
        return base, touched
    revision = snapshot.tree_digest(files)
    if issues:
        revision = _with_issues(revision, issues)
    keys = dict(base.keys)
    for rel in removed:
        keys.pop(rel, None)
    keys.update(touched)
    dirs = base.dirs
    if prefixes or walk.dirs:
        dirs = frozenset(
            {d for d in base.dirs if d not in exact and not (d + "/").startswith(tuple(prefixes))} | walk.dirs
        )
    snap = snapshot.Snapshot(
        source=source_name, revision=revision, files=files, issues=issues, display_root=shown
    )
    return TreeState(snapshot=snap, keys=keys, dirs=dirs, total_bytes=total, capped=False), touched


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def _needs_settling(
    snap: snapshot.Snapshot,
    keys: dict[str, StatKey],
    previous: snapshot.Snapshot | None,
    *,
    settle: float,
    now_ns: int,
) -> bool:
    """Whether `snap` must be confirmed after a wait before it may be handed over.

    Not when nothing changed since `previous`. Every change is confirmed by a quiet period of
    our own, whatever the files' mtimes say: `rsync -a` moves finished files into place with
    their old mtimes while the rest of the tree is still coming, and an NFS server's clock may
    lag. Only the very first read (start-up) is taken at once when every file's mtime is older
    than `settle` plus a margin for coarse timestamps.
    """
    if previous is not None:
        return snap.revision != previous.revision
    if snap.issues:
        return True
    quiet_before = now_ns - int(settle * 1e9) - _RACY_NS
    return any(key.mtime_ns > quiet_before for key in keys.values()) or len(keys) != len(snap.files)


def _differences(
    one: snapshot.Snapshot, one_keys: dict[str, StatKey], two: snapshot.Snapshot, two_keys: dict[str, StatKey]
) -> list[str]:
    """Display paths (at most three) that differ between two reads of one tree."""
    changed = sorted(
        rel
        for rel in set(one.files) | set(two.files)
        if one_keys.get(rel) != two_keys.get(rel)
        or (rel in one.files) != (rel in two.files)
        or (rel in one.files and one.files[rel].blob != two.files[rel].blob)
    )
    shown = [two.display_path(rel) for rel in changed[:3]]
    return shown + ([f"and {len(changed) - 3} more"] if len(changed) > 3 else [])


def _read(
    root: Path,
    *,
    subpath: str,
    limits: snapshot.Limits,
    previous: snapshot.Snapshot | None,
    source_name: str,
    stat_cache: StatCache | None,
    display_root: str | None,
    now_ns: int,
    pause: bool,
    memo: TreeMemo | None = None,
) -> tuple[snapshot.Snapshot, dict[str, StatKey]]:
    """One walk: the snapshot and the stat key each of its files was read under.

    `pause`: re-check new and changed files after one short pause (`_settle`).
    `memo`: receives the read as the base of the next incremental one.
    """
    root = Path(root)
    shown = str(root) if display_root is None else display_root
    start, prefix = _resolve_subpath(root, subpath)
    walk = _new_walk(root, shown, limits, previous, stat_cache, now_ns)
    _walk_dir(walk, start, prefix, top=True)
    if pause:
        _settle(walk)
    if stat_cache is not None:
        stat_cache.entries = walk.new_cache
    issues = tuple(sorted(walk.issues))
    revision = snapshot.tree_digest(walk.files)
    if issues:
        revision = _with_issues(revision, issues)
    if previous is not None and revision == previous.revision and issues == previous.issues:
        snap = previous  # nothing changed: the very same snapshot, files mapping and all
    else:
        snap = snapshot.Snapshot.build(
            source=source_name, files=walk.files, revision=revision, issues=issues, display_root=shown
        )
    keys = {rel: walk.keys[rel] for rel in walk.files}
    if memo is not None:
        memo.state = TreeState(
            snapshot=snap,
            keys=keys,
            dirs=frozenset(walk.dirs),
            total_bytes=sum(len(f.content) for f in walk.files.values()),
            capped=any(issue.code in _TREE_CAPS for issue in issues) or prefix != "",
        )
    return snap, keys


def _with_issues(revision: Revision, issues: tuple[Issue, ...]) -> Revision:
    """Mix the issues into a directory revision: a new symlink alone is a new revision."""
    h = hashlib.sha256(revision.encode())
    for issue in issues:
        h.update(b"\0" + issue.format().encode("utf-8", "surrogateescape"))
    return Revision("sha256:" + h.hexdigest()[:16])


def _resolve_subpath(root: Path, subpath: str) -> tuple[Path, str]:
    """Check `subpath` component by component (no `..`, no symlinks); return (dir, rel prefix)."""
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SourceError(f"directory {root} is not readable: {exc.strerror}", retry_after=5.0) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{root} is not a directory", retry_after=5.0)
    parts = [p for p in Path(subpath).parts if p not in (".", "")]
    if Path(subpath).is_absolute() or ".." in parts:
        raise SourceError(f"path {subpath!r} must be relative and stay inside the source", retry_after=60.0)
    current = root
    for part in parts:
        current = current / part
        try:
            st = os.lstat(current)
        except OSError as exc:
            raise SourceError(f"{current} does not exist: {exc.strerror}", retry_after=5.0) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{current} is not a directory (symlinks are not followed)", retry_after=5.0)
    prefix = "/".join(parts)
    return current, (prefix + "/" if prefix else "")


def _walk_dir(walk: _Walk, path: Path, prefix: str, *, top: bool = False) -> None:
    """Depth-first walk in name order (deterministic issue order and cap cut-off)."""
    walk.dirs.add(prefix.rstrip("/"))
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if top:
            raise SourceError(f"directory {path} is not readable: {exc.strerror}", retry_after=5.0) from exc
        shown = walk.display(prefix.rstrip("/"))
        walk.issues.append(rules.error(shown, f"not readable: {exc.strerror}", "unreadable"))
        return
    for entry in entries:
        name = entry.name
        if rules.is_ignored(name):
            continue
        rel = prefix + name
        try:
            if entry.is_dir(follow_symlinks=False):
                _walk_dir(walk, Path(entry.path), rel + "/")
                continue
            if entry.is_file(follow_symlinks=False):
                if rules.is_candidate(name):
                    _read_candidate(walk, entry, rel)
                continue
            if entry.is_symlink():
                what = "a symlink"
            else:
                what = _special_kind(entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            continue  # removed while we walked: it is simply not part of this snapshot
        except OSError as exc:
            walk.issues.append(rules.error(walk.display(rel), f"not readable: {exc.strerror}", "unreadable"))
            continue
        walk.issues.append(
            rules.error(walk.display(rel), f"is {what}; only regular files are read", "not-regular")
        )


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _read_candidate(walk: _Walk, entry: os.DirEntry[str], rel: str) -> None:
    """Admit, then read-and-confirm one resource file; record a `SourceFile` or an issue."""
    _read_path(walk, rel, entry.path, entry.stat(follow_symlinks=False))


def _read_path(walk: _Walk, rel: str, path: str, st: os.stat_result) -> None:
    display = walk.display(rel)
    refused = walk.budget.admit(display, st.st_size)
    if refused is not None or walk.budget.exhausted:
        if refused is not None:
            walk.issues.append(refused)
        return
    key = StatKey.of(st)
    cached = walk.old_cache.get(rel)
    if cached is not None and cached[0] == key:
        walk.files[rel] = cached[1]
        walk.keys[rel] = cached[0]  # the key kept since the last read: a full read keeps no new one
        walk.new_cache[rel] = cached
        return
    for _ in range(_READ_ATTEMPTS):
        result = _read_once(path, key)
        if isinstance(result, str):
            walk.issues.append(rules.error(display, result, "unreadable"))
            return
        if isinstance(result, tuple):
            content, key = result
            break
        # changed under us: re-stat and try again
        time.sleep(0.002)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            walk.issues.append(rules.error(display, f"not readable: {exc.strerror}", "unreadable"))
            return
        if not stat.S_ISREG(st.st_mode):
            walk.issues.append(
                rules.error(display, "replaced by a non-regular file while read", "not-regular")
            )
            return
        if st.st_size > walk.budget.limits.max_file_bytes:
            walk.issues.append(
                rules.error(
                    display, f"grew over the {walk.budget.limits.max_file_bytes}-byte cap", "file-too-large"
                )
            )
            return
        walk.budget.adjust(key.size, st.st_size)
        key = StatKey.of(st)
    else:
        walk.issues.append(
            rules.error(display, f"kept changing while being read ({_READ_ATTEMPTS} tries)", "unstable")
        )
        return
    walk.reads += 1
    blob = snapshot.blob_id(content)
    prior = walk.previous.files.get(rel) if walk.previous is not None else None
    if prior is not None and prior.blob == blob:
        source_file = prior
    else:
        source_file = snapshot.SourceFile(rel, content, blob)
    walk.files[rel] = source_file
    walk.keys[rel] = key
    age = walk.now_ns - key.mtime_ns
    if age > _RACY_NS:
        walk.new_cache[rel] = (key, source_file)
    if source_file is not prior or age < _RECENT_NS:
        # New or changed content may be a write in progress. The mtime alone cannot tell:
        # the kernel stamps files from a coarse clock that can lag by a tick or more (it was
        # seen 150 ms stale after an idle spell), so every new or changed file is confirmed.
        walk.recent[rel] = (path, key)


def _settle(walk: _Walk) -> None:
    """Re-check files modified within the last moment after a short pause; re-read the changed.

    Read-then-confirm cannot see a writer that pauses between chunks for less than a
    timestamp tick; waiting once (for the whole tree) and comparing stats again does.
    """
    for _ in range(_READ_ATTEMPTS):
        if not walk.recent:
            return
        time.sleep(_SETTLE_S)
        pending, walk.recent = walk.recent, {}
        for rel, (path, key) in pending.items():
            try:
                current = StatKey.of(os.lstat(path))
            except OSError:
                current = None
            if current == key:
                continue  # unchanged across a pause longer than a timestamp tick: confirmed
            stale = walk.files.pop(rel, None)
            if stale is not None:
                walk.budget.release(len(stale.content))
            _reread(walk, rel, path)
    for rel in walk.recent:
        walk.files.pop(rel, None)
        walk.issues.append(
            rules.error(walk.display(rel), "kept changing while being read; try again", "unstable")
        )


def _reread(walk: _Walk, rel: str, path: str) -> None:
    """Read one file again after it changed during the settle pause."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        walk.issues.append(rules.error(walk.display(rel), f"not readable: {exc.strerror}", "unreadable"))
        return
    if not stat.S_ISREG(st.st_mode):
        walk.issues.append(
            rules.error(walk.display(rel), "replaced by a non-regular file while read", "not-regular")
        )
        return
    _read_path(walk, rel, path, st)


def _read_once(path: str, expected: StatKey) -> tuple[bytes, StatKey] | str | None:
    """Read `path` if it still matches `expected` before and after; None means "changed, retry"."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "became a symlink while being read (not followed)"
        return f"not readable: {exc.strerror}"
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return "is not a regular file (not read)"
        if StatKey.of(before) != expected:
            return None
        # A regular file returns short reads only at EOF: asking for one byte more than
        # expected detects growth, fewer detects truncation.
        content = os.read(fd, expected.size + 1)
        if len(content) != expected.size:
            return None
        after = os.fstat(fd)
    except OSError as exc:
        return f"not readable: {exc.strerror}"
    finally:
        os.close(fd)
    if StatKey.of(after) != expected:
        return None
    return content, expected
