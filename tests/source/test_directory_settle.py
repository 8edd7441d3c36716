"""Directory sources hand a file over only once it has been quiet for the settle time.

The reproduction: a Context file rewritten in place by a writer that pauses 150 ms mid-write
(the first half is valid YAML without `blocked_commands`) must never be delivered half-written.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.settings import DirectorySourceSpec, SourceSpec
from aofd.source import directory, runner

HEAD = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod, labels: {round: "%d"}}
spec:
  namespace: default
"""
TAIL = """\
  security:
    blocked_commands:
      - "kubectl delete *"
"""
MID_WRITE_PAUSE = 0.15


def version(i: int) -> tuple[bytes, bytes]:
    """Round `i`'s file as (first half, rest): the first half alone is a Context with no guardrail."""
    return (HEAD % i).encode(), TAIL.encode()


def whole(i: int) -> bytes:
    head, tail = version(i)
    return head + tail


def rewrite_in_place(path: Path, i: int, pause: Callable[[], None]) -> None:
    """What a non-atomic writer does: truncate, write a first part, stall, write the rest."""
    head, tail = version(i)
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(head)
        fh.flush()
        pause()
        fh.write(tail)
        fh.flush()


class FakeTime:
    """The clocks `read_settled` reads, advanced only by its own waits; a hook runs during each wait."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.waits: list[float] = []
        self.during_wait: list[Callable[[], None]] = []

    def clock(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return int(self.now * 1e9)

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        if self.during_wait:
            self.during_wait.pop(0)()
        return False  # not cancelled


def stamp(path: Path, at: float) -> None:
    """Give `path` the fake clock's time as its mtime, as the kernel would for a write then."""
    os.utime(path, ns=(int(at * 1e9), int(at * 1e9)))


def test_a_writer_pausing_mid_write_is_never_read_half(tmp_path: Path) -> None:
    """25 rounds: the first half is on disk when the read starts, the rest lands during the settle
    wait; every snapshot handed over holds the whole file, and it took one more settle wait."""
    fake = FakeTime()
    target = tmp_path / "prod.yaml"
    target.write_bytes(whole(0))
    stamp(target, fake.now - 3600)
    previous = directory.read_settled(
        tmp_path, settle=1.0, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
    )
    assert ([], whole(0)) == (fake.waits, previous.files["prod.yaml"].content)  # old files need no wait
    seen: list[bytes] = []
    for i in range(1, 26):
        fake.waits.clear()
        head, tail = version(i)
        target.write_bytes(head)
        stamp(target, fake.now)

        def finish(head: bytes = head, tail: bytes = tail) -> None:
            target.write_bytes(head + tail)
            stamp(target, fake.now - 0.85)  # the rest landed 150 ms into the 1 s wait

        fake.during_wait.append(finish)
        snap = directory.read_settled(
            tmp_path, settle=1.0, previous=previous, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
        )
        seen.append(snap.files["prod.yaml"].content)
        assert [1.0, 1.0] == fake.waits, f"round {i}"
        previous = snap
    assert [whole(i) for i in range(1, 26)] == seen


def test_a_tree_that_never_settles_is_a_source_error_not_a_snapshot(tmp_path: Path) -> None:
    fake = FakeTime()
    target = tmp_path / "prod.yaml"
    target.write_bytes(whole(0))
    counter = iter(range(1, 1000))

    def keep_writing() -> None:
        target.write_bytes(whole(next(counter)))
        stamp(target, fake.now)
        fake.during_wait.append(keep_writing)

    fake.during_wait.append(keep_writing)
    with pytest.raises(SourceError, match=r"prod\.yaml.*still changing.*quiet for 1s"):
        directory.read_settled(tmp_path, settle=1.0, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait)
    assert sum(fake.waits) >= directory.SETTLE_DEADLINE_S


def test_a_file_appearing_during_the_wait_restarts_it(tmp_path: Path) -> None:
    """The tree must be quiet, not only the files seen first: a `cp -r` adding files is waited for."""
    fake = FakeTime()
    (tmp_path / "a.yaml").write_bytes(b"k: a\n")
    stamp(tmp_path / "a.yaml", fake.now)

    def add() -> None:
        (tmp_path / "b.yaml").write_bytes(b"k: b\n")
        stamp(tmp_path / "b.yaml", fake.now)

    fake.during_wait.append(add)
    snap = directory.read_settled(
        tmp_path, settle=2.0, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
    )
    assert (["a.yaml", "b.yaml"], [2.0, 2.0]) == (sorted(snap.files), fake.waits)


def test_same_size_same_content_rewrite_with_a_new_inode_is_waited_for(tmp_path: Path) -> None:
    """Content alone is not the measure: a file replaced during the wait (new inode) is checked again."""
    fake = FakeTime()
    target = tmp_path / "a.yaml"
    target.write_bytes(b"k: a\n")
    stamp(target, fake.now)

    def replace() -> None:
        other = tmp_path / "a.yaml.new"
        other.write_bytes(b"k: a\n")
        stamp(other, fake.now)
        other.replace(target)

    fake.during_wait.append(replace)
    snap = directory.read_settled(
        tmp_path, settle=1.0, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
    )
    assert (b"k: a\n", [1.0, 1.0]) == (snap.files["a.yaml"].content, fake.waits)


def test_settle_zero_reads_once(tmp_path: Path) -> None:
    fake = FakeTime()
    (tmp_path / "a.yaml").write_bytes(b"k: a\n")
    stamp(tmp_path / "a.yaml", fake.now)
    snap = directory.read_settled(
        tmp_path, settle=0.0, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
    )
    assert (["a.yaml"], []) == (list(snap.files), fake.waits)


def test_a_cancelled_wait_hands_nothing_over(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"k: a\n")
    with pytest.raises(SourceError, match="stopped"):
        directory.read_settled(tmp_path, settle=1.0, wait=lambda _s: True)


def test_settle_is_a_duration_setting() -> None:
    """`directory: {settle: 2s}`; the default defeats writers that pause for a moment."""
    assert (2.0, 0.25, directory.DEFAULT_SETTLE_S) == (
        DirectorySourceSpec(path=Path("/x"), settle="2s").settle,
        DirectorySourceSpec(path=Path("/x"), settle="250ms").settle,
        DirectorySourceSpec(path=Path("/x")).settle,
    )
    assert directory.DEFAULT_SETTLE_S >= 1.0
    with pytest.raises(ValueError, match="settle"):
        DirectorySourceSpec(path=Path("/x"), settle=-1)


SETTLE = 0.5


@pytest.mark.slow
async def test_watched_source_never_delivers_a_half_written_context(tmp_path: Path) -> None:
    """A real watched directory and a real writer: 25 in-place rewrites, each with a 150 ms pause
    mid-write, back to back. Every snapshot the source delivers holds a whole version, and the last
    version is delivered once the writer stops."""
    root = tmp_path / "resources"
    root.mkdir()
    target = root / "prod.yaml"
    target.write_bytes(whole(0))
    source = runner.DirectorySource(
        SourceSpec(name="local", directory=DirectorySourceSpec(path=root, settle=SETTLE))
    )
    delivered: list[bytes] = []
    first = asyncio.Event()

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        delivered.append(snap.files["prod.yaml"].content if "prod.yaml" in snap.files else b"")
        first.set()

    pauses: list[float] = []

    def pause() -> None:
        started = time.monotonic()
        time.sleep(MID_WRITE_PAUSE)
        pauses.append(time.monotonic() - started)

    def writer() -> None:
        for i in range(1, 26):
            rewrite_in_place(target, i, pause)
            time.sleep(0.05)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    try:
        await asyncio.wait_for(first.wait(), 10)
        await asyncio.sleep(0.3)  # let the watcher settle in
        thread = threading.Thread(target=writer, name="test-writer")
        thread.start()
        await asyncio.to_thread(thread.join)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline and delivered[-1] != whole(25):
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    halves = [d for d in delivered if d not in {whole(i) for i in range(26)}]
    stalled = [p for p in pauses if p >= SETTLE]  # a writer stalled past the settle time: not covered
    assert not halves or stalled, f"{len(halves)} half-written versions delivered: {halves[:2]}"
    assert whole(25) == delivered[-1]


async def test_stop_cuts_a_settle_wait_short(tmp_path: Path) -> None:
    """Stopping the source during a long settle wait returns promptly and delivers nothing."""
    (tmp_path / "a.yaml").write_bytes(b"k: a\n")  # just written: the first read must wait
    spec = SourceSpec(name="local", directory=DirectorySourceSpec(path=tmp_path, watch=False, settle=60))
    source = runner.DirectorySource(spec)
    delivered: list[snapshot.Snapshot] = []

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        delivered.append(snap)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while source.fetch_count == 0 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    started = loop.time()
    await asyncio.wait_for(task, 10)
    assert ([], True) == (delivered, loop.time() - started < 5)


def test_a_change_with_old_mtimes_is_still_waited_for(tmp_path: Path) -> None:
    """`rsync -a` moves finished files into place with their old mtimes while the rest is still
    coming (and an NFS server's clock may lag): after start-up, every change waits a settle."""
    fake = FakeTime()
    (tmp_path / "a.yaml").write_bytes(b"k: a\n")
    stamp(tmp_path / "a.yaml", fake.now - 3600)
    previous = directory.read_settled(
        tmp_path, settle=1.0, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
    )
    assert fake.waits == []  # start-up: files finished long ago
    (tmp_path / "b.yaml").write_bytes(b"k: b\n")
    stamp(tmp_path / "b.yaml", fake.now - 3600)  # an old mtime, but new to this source

    def the_rest_arrives() -> None:
        (tmp_path / "c.yaml").write_bytes(b"k: c\n")
        stamp(tmp_path / "c.yaml", fake.now - 3600)

    fake.during_wait.append(the_rest_arrives)
    snap = directory.read_settled(
        tmp_path, settle=1.0, previous=previous, clock=fake.clock, wall_ns=fake.wall_ns, wait=fake.wait
    )
    assert (["a.yaml", "b.yaml", "c.yaml"], [1.0, 1.0]) == (sorted(snap.files), fake.waits)
