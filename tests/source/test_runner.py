"""The Source run loop (aofd.source.runner): wake coalescing, delivery on new revisions only,
backoff, prompt stop, and watch mode coalescing bursts of writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.resources.ids import Revision
from aofd.settings import DirectorySourceSpec, GitSourceSpec, SourceSpec
from aofd.source import backoff, runner


class ScriptedSource(runner._BaseSource):
    """A source whose fetches wait on a gate and return scripted revisions (or raise)."""

    type = "directory"

    def __init__(self, *, interval: float = 3600.0) -> None:
        spec = SourceSpec(name="scripted", directory=DirectorySourceSpec(path=Path("/nonexistent")))
        super().__init__(
            spec=spec, interval=interval, retry=backoff.Backoff(base=0.05, jitter=0.0), clock=lambda: 0.0
        )
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_fetch = asyncio.Event()
        self.revisions: list[str | Exception] = []
        self.produced = 0

    @property
    def location(self) -> str:
        return "scripted"

    def _time_limit(self) -> float:
        return 10.0

    async def _produce(self, previous: snapshot.Snapshot | None) -> snapshot.Snapshot:
        self.produced += 1
        self.in_fetch.set()
        await self.gate.wait()
        self.in_fetch.clear()
        item = self.revisions.pop(0) if self.revisions else "same"
        if isinstance(item, Exception):
            raise item
        if previous is not None and previous.revision == item:
            return previous
        return snapshot.Snapshot.build(source=self.name, files={}, revision=Revision(item))


async def _settle(seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)


async def _until(check: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait until `check()` holds (backoffs and intervals here are 50-100 ms; a loaded CI host is
    slower than that, so a fixed sleep is not enough)."""
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.01)


async def test_wakes_during_fetch_coalesce_into_one_more() -> None:
    """Three wake-ups during a slow fetch cause exactly one more fetch, not three."""
    source = ScriptedSource()
    delivered: list[str] = []

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        delivered.append(snap.revision)

    stop = asyncio.Event()
    source.revisions = ["r1", "r2", "r3"]
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    await _until(lambda: delivered == ["r1"])
    assert 1 == source.produced
    source.gate.clear()
    source.wake()
    await asyncio.wait_for(source.in_fetch.wait(), 2)
    for _ in range(3):
        source.wake()
    source.gate.set()
    await _until(lambda: len(delivered) == 3)
    await _settle(0.1)  # room for a fourth fetch, which must not come
    stop.set()
    await asyncio.wait_for(task, 2)
    assert 3 == source.produced
    assert ["r1", "r2", "r3"] == delivered


async def test_on_snapshot_only_for_new_revisions() -> None:
    """Wake-ups that find the same revision do not call on_snapshot again."""
    source = ScriptedSource()
    delivered: list[str] = []

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        delivered.append(snap.revision)

    stop = asyncio.Event()
    source.revisions = ["r1", "r1", "r1", "r2"]
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    for produced in (1, 2, 3):
        await _until(lambda produced=produced: source.produced >= produced)
        source.wake()
    await _until(lambda: source.produced >= 4)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert 4 == source.produced
    assert ["r1", "r2"] == delivered


async def test_errors_back_off_and_keep_last_good() -> None:
    """Failures retry after the backoff delay (not the interval); the last good snapshot stays."""
    source = ScriptedSource()
    delivered: list[str] = []

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        delivered.append(snap.revision)

    stop = asyncio.Event()
    source.revisions = ["r1"]
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    await _until(lambda: delivered == ["r1"])
    source.revisions = [SourceError("down"), SourceError("down"), "r2"]
    source.wake()
    await _until(lambda: len(delivered) == 2)  # 0.05 s + 0.1 s of backoff, then success
    stop.set()
    await asyncio.wait_for(task, 2)
    assert ["r1", "r2"] == delivered
    assert 4 == source.produced
    assert 0 == source.status().consecutive_failures


async def test_stop_is_prompt_during_sleep() -> None:
    """Setting stop ends run at once even with an hour-long interval."""
    source = ScriptedSource(interval=3600)
    stop = asyncio.Event()

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        return None

    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    await _until(lambda: source.fetch_count >= 1)
    stop.set()
    await asyncio.wait_for(task, 0.5)
    assert (1, None) == (source.fetch_count, task.exception())


async def test_interval_polls() -> None:
    """Without wake-ups the source fetches again every interval."""
    source = ScriptedSource(interval=0.05)
    stop = asyncio.Event()

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        return None

    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    await _until(lambda: source.produced >= 4)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert source.produced >= 4


def test_build_source(tmp_path: Path) -> None:
    """build_source returns a GitSource or DirectorySource exposing name and kinds."""
    git_spec = SourceSpec(
        name="main", git=GitSourceSpec(url="https://u:p@example.com/r.git"), kinds=("Agent",)
    )
    dir_spec = SourceSpec(name="secrets", directory=DirectorySourceSpec(path=tmp_path), kinds=("Context",))
    git_source = runner.build_source(git_spec, state_dir=tmp_path / "state")
    dir_source = runner.build_source(dir_spec, state_dir=tmp_path / "state")
    assert isinstance(git_source, runner.GitSource)
    assert isinstance(dir_source, runner.DirectorySource)
    assert (("Agent",), ("Context",)) == (git_source.kinds, dir_source.kinds)
    assert "https://***@example.com/r.git" == git_source.status().location
    assert (None, False) == (dir_source.status().revision, dir_source.status().stale)


@pytest.mark.slow
async def test_watch_coalesces_a_burst(tmp_path: Path) -> None:
    """A burst of 100 writes gives one or two snapshots; writes under .aofd/ and editor temps give none."""
    root = tmp_path / "resources"
    root.mkdir()
    (root / "seed.yaml").write_text("k: v\n")
    spec = SourceSpec(name="local", directory=DirectorySourceSpec(path=root))
    source = runner.DirectorySource(spec)
    snaps: list[snapshot.Snapshot] = []
    first = asyncio.Event()

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        snaps.append(snap)
        first.set()

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    try:
        await asyncio.wait_for(first.wait(), 5)
        await asyncio.sleep(0.3)  # let the watcher settle in
        (root / ".aofd").mkdir()
        fetches = source.fetch_count
        for i in range(30):
            (root / ".aofd" / f"state{i}.json").write_text("{}")
            (root / f".seed.yaml.swp{i}").write_text("x")
        await asyncio.sleep(0.5)
        assert fetches == source.fetch_count
        for i in range(100):
            (root / f"f{i:03}.yaml").write_text(f"n: {i}\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline and len(snaps[-1].files) != 101:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert 101 == len(snaps[-1].files)
    assert 1 <= len(snaps) - 1 <= 2, [len(s.files) for s in snaps]


async def test_an_unexpected_fetch_exception_is_a_failed_fetch_not_a_dead_loop() -> None:
    """A bug-shaped exception in a fetch backs off and retries; the run loop keeps going."""
    source = ScriptedSource()
    delivered: list[str] = []

    async def on_snapshot(snap: snapshot.Snapshot) -> None:
        delivered.append(snap.revision)

    stop = asyncio.Event()
    source.revisions = [RuntimeError("libgit2 said something odd"), "r1"]
    task = asyncio.create_task(source.run(on_snapshot=on_snapshot, stop=stop))
    await _until(lambda: bool(delivered) or task.done())  # the retry follows a 50 ms backoff
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 2)
    assert ["r1"] == delivered
    assert 2 == source.produced


async def test_an_unexpected_fetch_exception_is_reported_in_status() -> None:
    """`fetch()` turns an unexpected exception into a SourceError with backoff, shown in status."""
    source = ScriptedSource()
    source.revisions = [ValueError("boom")]

    with pytest.raises(SourceError) as caught:
        await source.fetch()

    assert caught.value.retry_after > 0
    st = source.status()
    assert 1 == st.consecutive_failures
    assert st.last_error is not None
    assert "ValueError: boom" in st.last_error
