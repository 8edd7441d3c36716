"""Incremental directory reads (only the paths the watcher reported) equal a full read.

The property test applies random edits (create, modify, delete, rename files and
directories, symlinks, non-resource files) and after each batch compares the incremental
snapshot with a from-scratch read of the same tree: files, bytes, blob ids, revision, issues.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.settings import DirectorySourceSpec, SourceSpec
from aofd.source import directory, runner


class Reporter:
    """What the watcher would report: the paths touched since the last drain."""

    def __init__(self) -> None:
        self.paths: set[str] = set()

    def drain(self) -> Collection[str] | None:
        paths, self.paths = self.paths, set()
        return frozenset(paths)


def read_incremental(
    root: Path, memo: directory.TreeMemo, previous: snapshot.Snapshot | None, reporter: Reporter, **kw: object
) -> snapshot.Snapshot:
    return directory.read_settled(
        root,
        settle=0,
        previous=previous,
        memo=memo,
        changed=reporter.drain,
        **kw,  # type: ignore[arg-type]
    )


def assert_same(one: snapshot.Snapshot, full: snapshot.Snapshot) -> None:
    assert list(one.files) == list(full.files)
    assert {p: (f.content, f.blob) for p, f in one.files.items()} == {
        p: (f.content, f.blob) for p, f in full.files.items()
    }
    assert one.issues == full.issues
    assert one.revision == full.revision


def _random_edit(rng: random.Random, root: Path, reporter: Reporter) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    dirs = sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())
    op = rng.choice(
        ["create", "create", "modify", "modify", "delete", "rename", "mkdir", "rmdir", "mvdir", "link"]
    )
    if op == "create" or (not files and op in ("modify", "delete", "rename")):
        parent = rng.choice([root, *dirs])
        name = (
            rng.choice(["a", "b", "c", "d", "e"])
            + str(rng.randrange(50))
            + rng.choice([".yaml", ".yml", ".txt"])
        )
        path = parent / name
        path.write_bytes(b"kind: Agent\nmetadata: {name: %d}\n" % rng.randrange(10**6))
        reporter.paths.add(str(path))
    elif op == "modify":
        path = rng.choice(files)
        path.write_bytes(path.read_bytes() + b"# more\n")
        reporter.paths.add(str(path))
    elif op == "delete":
        path = rng.choice(files)
        path.unlink()
        reporter.paths.add(str(path))
    elif op == "rename":
        path = rng.choice(files)
        target = rng.choice([root, *dirs]) / ("r" + str(rng.randrange(100)) + ".yaml")
        if not target.exists():
            path.rename(target)
            reporter.paths.update({str(path), str(target)})  # a delete plus an add
    elif op == "mkdir":
        path = rng.choice([root, *dirs]) / ("d" + str(rng.randrange(20)))
        if not path.exists():
            path.mkdir()
            (path / "x.yaml").write_bytes(b"kind: Agent\n")
            reporter.paths.update({str(path), str(path / "x.yaml")})
    elif op == "rmdir" and dirs:
        path = rng.choice(dirs)
        shutil.rmtree(path)
        reporter.paths.add(str(path))  # one event for the directory: everything below goes
    elif op == "mvdir" and dirs:
        path = rng.choice(dirs)
        target = root / ("m" + str(rng.randrange(100)))
        if not target.exists() and target not in path.parents:
            path.rename(target)
            reporter.paths.update({str(path), str(target)})
    elif op == "link":
        path = rng.choice([root, *dirs]) / ("l" + str(rng.randrange(10)) + ".yaml")
        if not path.exists() and not path.is_symlink():
            os.symlink(rng.choice([*files, root]) if files else root, path)
            reporter.paths.add(str(path))


def test_random_edits_read_incrementally_equal_a_full_read(tmp_path: Path) -> None:
    rng = random.Random(1414)
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(30):
        sub = root / f"ctx{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"agent{i}.yaml").write_bytes(b"kind: Agent\nmetadata: {name: a%d}\n" % i)
    memo, reporter = directory.TreeMemo(), Reporter()
    cache = directory.StatCache()
    snap = read_incremental(root, memo, None, reporter, stat_cache=cache)
    assert memo.mode == "full"
    for _round in range(40):
        for _ in range(rng.randrange(1, 4)):
            _random_edit(rng, root, reporter)
        before = snap
        snap = read_incremental(root, memo, before, reporter, stat_cache=cache)
        assert memo.mode == "incremental", memo.reason
        assert_same(snap, directory.read_tree(root))
        for path, file in snap.files.items():
            if path in before.files and before.files[path].blob == file.blob:
                assert file is before.files[path]  # unchanged files are the previous objects
    assert memo.incremental_reads == 40


def test_nothing_changed_hands_over_the_same_snapshot_and_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"kind: Agent\n")
    memo, reporter = directory.TreeMemo(), Reporter()
    first = read_incremental(tmp_path, memo, None, reporter)
    reporter.paths.add(str(tmp_path / "a.yaml"))  # touched, content unchanged
    again = read_incremental(tmp_path, memo, first, reporter)
    assert memo.mode == "incremental"
    assert again is first
    full = read_incremental(tmp_path, memo, first, reporter)  # no paths known: a full walk
    assert memo.mode == "full"
    assert full is first
    assert full.files is first.files


def test_a_tree_wide_cap_falls_back_to_a_full_read(tmp_path: Path) -> None:
    limits = snapshot.Limits(max_files=3)
    for i in range(3):
        (tmp_path / f"f{i}.yaml").write_bytes(b"kind: Agent\n")
    memo, reporter = directory.TreeMemo(), Reporter()
    snap = read_incremental(tmp_path, memo, None, reporter, limits=limits)
    (tmp_path / "f3.yaml").write_bytes(b"kind: Agent\n")
    reporter.paths.add(str(tmp_path / "f3.yaml"))
    snap = read_incremental(tmp_path, memo, snap, reporter, limits=limits)
    assert memo.mode == "full"
    assert memo.reason == "a tree-wide cap was reached"
    assert_same(snap, directory.read_tree(tmp_path, limits=limits))
    assert [i.code for i in snap.issues] == ["too-many-files"]
    (tmp_path / "f0.yaml").write_bytes(b"kind: Agent\n# edited\n")
    reporter.paths.add(str(tmp_path / "f0.yaml"))
    snap = read_incremental(tmp_path, memo, snap, reporter, limits=limits)
    assert memo.mode == "full"
    assert memo.reason == "a tree-wide cap cut the last read short"
    assert_same(snap, directory.read_tree(tmp_path, limits=limits))


def test_paths_below_a_symlinked_directory_are_not_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.yaml").write_bytes(b"kind: Agent\n")
    (root / "a.yaml").write_bytes(b"kind: Agent\n")
    memo, reporter = directory.TreeMemo(), Reporter()
    snap = read_incremental(root, memo, None, reporter)
    os.symlink(outside, root / "link")
    reporter.paths.update({str(root / "link"), str(root / "link" / "secret.yaml")})
    snap = read_incremental(root, memo, snap, reporter)
    assert memo.mode == "incremental"
    assert "link/secret.yaml" not in snap.files
    assert [i.code for i in snap.issues] == ["not-regular"]
    assert_same(snap, directory.read_tree(root))


@pytest.mark.slow
async def test_a_watched_directory_reads_only_the_reported_paths(tmp_path: Path) -> None:
    """Edits seen by the watcher are read incrementally (after one walk once it runs); a wake-up
    (SIGHUP, hook) walks the tree."""
    root = tmp_path / "resources"
    root.mkdir()
    for i in range(20):
        (root / f"f{i}.yaml").write_text(f"n: {i}\n")
    spec = SourceSpec(name="local", directory=DirectorySourceSpec(path=root, settle=0.05))
    source = runner.DirectorySource(spec)
    snaps: list[snapshot.Snapshot] = []
    arrived = asyncio.Event()

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        snaps.append(snap)
        arrived.set()

    async def next_snapshot() -> snapshot.Snapshot:
        await asyncio.wait_for(arrived.wait(), 10)
        arrived.clear()
        return snaps[-1]

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    try:
        await next_snapshot()
        await asyncio.sleep(0.3)  # let the watcher settle in
        # The first change after the watcher started is read with a walk of the whole tree: what
        # changed before it ran was never reported.
        full_reads = source.memo.full_reads
        (root / "f1.yaml").write_text("n: after start\n")
        first = await next_snapshot()
        while first.files["f1.yaml"].content != b"n: after start\n":
            first = await next_snapshot()
        assert source.memo.full_reads == full_reads + 1
        (root / "f3.yaml").write_text("n: changed\n")
        (root / "sub").mkdir()
        (root / "sub" / "new.yaml").write_text("n: new\n")
        (root / "f4.yaml").unlink()
        snap = await next_snapshot()
        while "sub/new.yaml" not in snap.files or "f4.yaml" in snap.files:
            snap = await next_snapshot()
        assert source.memo.incremental_reads >= 1
        assert snap.files["f3.yaml"].content == b"n: changed\n"
        assert snap.files["f5.yaml"] is first.files["f5.yaml"]
        assert_same(snap, directory.read_tree(root, source_name="local"))
        full_reads = source.memo.full_reads
        (root / "f6.yaml").write_text("n: by wake\n")
        source.wake()
        await next_snapshot()
        assert source.memo.full_reads > full_reads
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_paths_drained_by_a_failed_read_are_not_lost(tmp_path: Path) -> None:
    """A read that fails after taking the reported paths leaves a full walk for the next one."""
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("n: 1\n")
    spec = SourceSpec(name="local", directory=DirectorySourceSpec(path=tmp_path, settle=0.05))
    source = runner.DirectorySource(spec)
    await source.fetch()
    (tmp_path / "a.yaml").write_text("n: 2\n")
    source.note_changes([str(tmp_path / "a.yaml")])
    source._closing.set()  # the settle wait is cut short, as when the daemon stops
    with pytest.raises(SourceError):
        await source.fetch()
    source._closing.clear()
    source.note_changes([str(tmp_path / "b.yaml")])
    snap = await source.fetch()
    assert snap.files["a.yaml"].content == b"n: 2\n"
    assert source.memo.mode == "full"


def _reader(root: Path) -> tuple[directory.TreeMemo, list[str], Callable[[], list[str]]]:
    memo = directory.TreeMemo()
    pending: list[str] = []

    def changed() -> list[str]:
        taken = list(pending)
        pending.clear()
        return taken

    return memo, pending, changed


def test_a_directory_moved_out_after_it_was_filled_takes_its_files_along(tmp_path: Path) -> None:
    """Created empty (read), filled (read), then moved away with one event for the directory alone:
    its files leave the snapshot, as a full walk says."""
    root = tmp_path / "conf"
    root.mkdir()
    (root / "keep.yaml").write_text("kind: X\n")
    memo, pending, changed = _reader(root)

    def read(prev: snapshot.Snapshot | None) -> snapshot.Snapshot:
        return directory.read_settled(root, settle=0, previous=prev, memo=memo, changed=changed)

    snap = read(None)
    (root / "new").mkdir()
    pending.append(str(root / "new"))
    snap = read(snap)
    (root / "new" / "agent.yaml").write_text("kind: X\n")
    pending.append(str(root / "new" / "agent.yaml"))
    snap = read(snap)
    os.rename(root / "new", tmp_path / "moved-away")
    pending.append(str(root / "new"))
    snap = read(snap)
    assert memo.mode == "incremental"
    assert sorted(snap.files) == sorted(directory.read_tree(root).files) == ["keep.yaml"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_watcher_style_events_read_incrementally_equal_a_full_walk(tmp_path: Path, seed: int) -> None:
    """Random creates, directories, deletes, symlinks (also to outside the root) and renames, each
    reported as a watcher would (the path, and directories it created): every incremental read
    equals a full walk, files and issues."""
    rnd = random.Random(seed)
    root, outside = tmp_path / "tree", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.yaml").write_text("kind: Secret\n")
    names = ["a", "b", "c.yaml", "d.yaml", ".hid", "e.yml"]
    memo, pending, changed = _reader(root)
    cache = directory.StatCache()

    def rpath() -> str:
        return "/".join(rnd.choice(names) for _ in range(rnd.randint(1, 2)))

    prev: snapshot.Snapshot | None = None
    for step in range(150):
        rel = rpath()
        p = root / rel
        parts = rel.split("/")
        created = [
            root / "/".join(parts[:i])
            for i in range(1, len(parts))
            if not (root / "/".join(parts[:i])).exists()
        ]
        op = rnd.random()
        try:
            if op < 0.35:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(f"kind: X\nn: {step}\n")
            elif op < 0.5:
                p.mkdir(parents=True, exist_ok=True)
            elif op < 0.7:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
            elif op < 0.8:
                p.parent.mkdir(parents=True, exist_ok=True)
                if not p.exists() and not p.is_symlink():
                    p.symlink_to(outside if rnd.random() < 0.5 else outside / "secret.yaml")
            else:
                q = root / rpath()
                movable = (p.exists() or p.is_symlink()) and not q.exists() and q.parent.is_dir()
                if movable and not str(q).startswith(str(p) + "/"):
                    os.rename(p, q)
                    pending.append(str(q))
        except OSError:
            continue
        pending.append(str(p))
        pending.extend(str(d) for d in created)
        if rnd.random() < 0.5:
            continue
        snap = directory.read_settled(
            root, settle=0, previous=prev, memo=memo, changed=changed, stat_cache=cache
        )
        full = directory.read_tree(root)
        assert {k: v.content for k, v in snap.files.items()} == {k: v.content for k, v in full.files.items()}
        assert sorted(i.format() for i in snap.issues) == sorted(i.format() for i in full.issues)
        prev = snap
    assert memo.incremental_reads > 20
