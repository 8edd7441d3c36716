"""Reading a local tree into a snapshot (aofd.source.directory)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.source import directory


def _write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_reads_yaml_skips_hidden_and_temp(tmp_path: Path) -> None:
    """Only visible `*.yaml`/`*.yml` files are read; dot dirs, dot files and editor temps are skipped."""
    for rel in [
        "a.yaml",
        "sub/b.yml",
        "README.md",
        ".aofd/state.yaml",
        ".git/x.yaml",
        ".h.yaml",
        "a.yaml~",
        "4913",
    ]:
        _write(tmp_path, rel, "k: v\n")
    _write(tmp_path, ".#a.yaml", "lock")
    snap = directory.read_tree(tmp_path, source_name="dir")
    assert ["a.yaml", "sub/b.yml"] == list(snap.files)
    assert () == snap.issues
    assert snapshot.blob_id(b"k: v\n") == snap.files["a.yaml"].blob
    assert snap.revision.startswith("sha256:")


def test_revision_is_content_digest(tmp_path: Path) -> None:
    """Same content gives the same revision; one changed byte gives another."""
    _write(tmp_path, "a.yaml", "k: 1\n")
    first = directory.read_tree(tmp_path)
    assert first.revision == directory.read_tree(tmp_path).revision
    _write(tmp_path, "a.yaml", "k: 2\n")
    assert first.revision != directory.read_tree(tmp_path).revision


def test_symlinks_refused_and_never_read(tmp_path: Path) -> None:
    """Symlinks (to files or dirs, inside or outside the root) are issues; their targets are not read."""
    outside = tmp_path / "outside"
    _write(outside, "secret.yaml", "password: x\n")
    root = tmp_path / "root"
    _write(root, "a.yaml", "k: v\n")
    (root / "link.yaml").symlink_to(outside / "secret.yaml")
    (root / "linkdir").symlink_to(outside)
    snap = directory.read_tree(root)
    assert ["a.yaml"] == list(snap.files)
    assert {f"{root}/link.yaml", f"{root}/linkdir"} == {i.path for i in snap.issues}
    assert all(i.code == "not-regular" and "symlink" in i.message for i in snap.issues)


def test_fifo_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO named like a resource file is an issue, and reading the tree does not block on it."""
    _write(tmp_path, "a.yaml", "k: v\n")
    os.mkfifo(tmp_path / "pipe.yaml")
    snap = directory.read_tree(tmp_path)
    assert ["a.yaml"] == list(snap.files)
    assert ["a FIFO"] == [i.message.split(";")[0].removeprefix("is ") for i in snap.issues]


def test_device_refused(tmp_path: Path) -> None:
    """A device node is refused (checked via its type, never opened)."""
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    # mknod needs privileges; a socket is the portable stand-in for "not a regular file".
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.yaml"))
        snap = directory.read_tree(tmp_path)
    assert [f"{tmp_path}/sock.yaml"] == [i.path for i in snap.issues]
    assert "socket" in snap.issues[0].message


def test_caps_checked_before_reading(tmp_path: Path) -> None:
    """Files over the size cap are refused; file-count and total caps stop the read with one issue each."""
    _write(tmp_path, "big.yaml", "x" * 101)
    for i in range(5):
        _write(tmp_path, f"f{i}.yaml", "y" * 10)
    snap = directory.read_tree(tmp_path, limits=snapshot.Limits(max_file_bytes=100, max_files=3))
    assert ["f0.yaml", "f1.yaml", "f2.yaml"] == list(snap.files)
    assert ["file-too-large", "too-many-files"] == [i.code for i in snap.issues]
    snap = directory.read_tree(tmp_path, limits=snapshot.Limits(max_file_bytes=100, max_tree_bytes=25))
    assert ["f0.yaml", "f1.yaml"] == list(snap.files)
    assert {"file-too-large", "tree-too-large"} == {i.code for i in snap.issues}


def test_issue_changes_revision(tmp_path: Path) -> None:
    """Adding a symlink alone yields a new revision (so the new issue is reported)."""
    _write(tmp_path, "a.yaml", "k: v\n")
    before = directory.read_tree(tmp_path).revision
    (tmp_path / "l.yaml").symlink_to(tmp_path / "a.yaml")
    assert before != directory.read_tree(tmp_path).revision


def test_unchanged_files_reuse_previous_objects(tmp_path: Path) -> None:
    """After a one-file change every other SourceFile is the previous object (identity)."""
    for i in range(20):
        _write(tmp_path, f"f{i}.yaml", f"n: {i}\n")
    first = directory.read_tree(tmp_path)
    _write(tmp_path, "f7.yaml", "n: changed\n")
    second = directory.read_tree(tmp_path, previous=first)
    same = [p for p in second.files if second.files[p] is first.files[p]]
    assert sorted(set(first.files) - {"f7.yaml"}) == sorted(same)
    assert b"n: changed\n" == second.files["f7.yaml"].content


def test_stat_cache_skips_reads_of_old_files(tmp_path: Path) -> None:
    """With a stat cache, files unchanged since an old mtime are not opened again."""
    for i in range(5):
        path = _write(tmp_path, f"f{i}.yaml", f"n: {i}\n")
        os.utime(path, ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
    cache = directory.StatCache()
    first = directory.read_tree(tmp_path, stat_cache=cache)
    assert 5 == len(cache)
    os.chmod(tmp_path / "f1.yaml", 0)  # unreadable now: a re-read would be an issue
    try:
        second = directory.read_tree(tmp_path, stat_cache=cache, previous=first)
    finally:
        os.chmod(tmp_path / "f1.yaml", 0o644)
    assert () == second.issues
    assert all(second.files[p] is first.files[p] for p in first.files)


def test_a_full_re_read_of_unchanged_files_keeps_their_stat_keys(tmp_path: Path) -> None:
    """A full read over a tree whose files did not change keeps the objects of the last read, so
    it leaves nothing new per file for the collector to scan (10,000 keys at 10k resources)."""
    for i in range(5):
        path = _write(tmp_path, f"f{i}.yaml", f"n: {i}\n")
        os.utime(path, ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
    cache, memo = directory.StatCache(), directory.TreeMemo()
    first = directory.read_settled(tmp_path, settle=0, stat_cache=cache, memo=memo)
    assert memo.state is not None
    keys = dict(memo.state.keys)
    directory.read_settled(tmp_path, settle=0, stat_cache=cache, memo=memo, previous=first)
    assert memo.mode == "full"
    assert memo.state is not None
    assert all(memo.state.keys[p] is keys[p] for p in keys)


def test_fresh_files_are_not_trusted_by_stat(tmp_path: Path) -> None:
    """A file modified just now is re-read even if its stat looks unchanged (racy-git rule)."""
    _write(tmp_path, "a.yaml", "n: 1\n")
    cache = directory.StatCache()
    directory.read_tree(tmp_path, stat_cache=cache)
    assert 0 == len(cache)


def test_subpath_inside_root(tmp_path: Path) -> None:
    """`subpath` limits the walk; keys stay relative to the root; `..` and symlinked components fail."""
    _write(tmp_path, "a.yaml", "k: v\n")
    _write(tmp_path, "deploy/b.yaml", "k: v\n")
    (tmp_path / "alias").symlink_to(tmp_path / "deploy")
    assert ["deploy/b.yaml"] == list(directory.read_tree(tmp_path, subpath="deploy").files)
    for bad in ("..", "deploy/../..", "alias", "missing"):
        with pytest.raises(SourceError):
            directory.read_tree(tmp_path, subpath=bad)


def test_missing_root_is_source_error(tmp_path: Path) -> None:
    """A missing directory is a (temporary) SourceError, not a crash."""
    with pytest.raises(SourceError, match="not readable"):
        directory.read_tree(tmp_path / "nope")


def test_partial_writes_never_read_half(fast_tmp: Path) -> None:
    """While a writer rewrites a file in place, chunk by chunk, every read sees a whole version.

    The guarantee holds for writers that never pause longer than the settle pause mid-write;
    on a loaded machine the writer thread itself can be descheduled for longer, so a half read
    is tolerated only in a round where the writer measurably stalled.
    """
    tmp_path = fast_tmp  # on a busy disk a single write() can stall longer than the settle pause
    versions = [("a" * 200_000).encode(), ("b" * 150_000).encode()]
    target = _write(tmp_path, "big.yaml", versions[0])
    stop = threading.Event()
    stalls: list[float] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            data = versions[i % 2]
            with open(target, "r+b") as fh:
                last = time.monotonic()
                fh.truncate(0)
                for start in range(0, len(data), 16_384):
                    fh.write(data[start : start + 16_384])
                    fh.flush()
                    now = time.monotonic()
                    if now - last > directory._SETTLE_S * 0.8:
                        stalls.append(now - last)
                    last = now
                    time.sleep(0.0005)
            i += 1
            time.sleep(0.15)  # a finished version rests a while, as after an editor's save

    thread = threading.Thread(target=writer, name="test-writer")
    thread.start()
    seen: set[bytes] = set()
    half_reads = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            snap = directory.read_tree(tmp_path)
            if "big.yaml" in snap.files:
                content = snap.files["big.yaml"].content
                if content in versions:
                    seen.add(content)
                else:
                    half_reads += 1
            else:
                assert ["unstable"] == [i.code for i in snap.issues]
    finally:
        stop.set()
        thread.join()
    assert seen, "never got a whole read"
    assert half_reads == 0 or stalls, f"{half_reads} half reads without a writer stall"


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A temp dir on tmpfs when there is one: creating 10,000 files on a busy disk takes seconds."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="aofd-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_ten_thousand_files_fast(fast_tmp: Path) -> None:
    """10,000 small files are read in well under a second (the `aofctl validate` budget is 0.5 s)."""
    tmp_path = fast_tmp
    for d in range(100):
        sub = tmp_path / f"d{d:02}"
        sub.mkdir()
        for f in range(100):
            (sub / f"f{f:02}.yaml").write_bytes(b"kind: Agent\nmetadata: {name: x}\n")
    started = time.perf_counter()
    snap = directory.read_tree(tmp_path)
    elapsed = time.perf_counter() - started
    assert 10_000 == len(snap.files)
    assert elapsed < 20.0, f"took {elapsed:.2f}s"  # a sanity bound; bench/source.py measures it
