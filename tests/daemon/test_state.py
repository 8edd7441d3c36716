"""The state dir: atomic writes, the last good snapshot, the single-daemon lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aofd import durable, errors
from aofd.reconcile import state
from aofd.resources import ids, snapshot


def test_snapshot_round_trips(tmp_path: Path) -> None:
    """The last good snapshot comes back byte for byte with its revision."""
    store = state.StateStore(tmp_path)
    snap = snapshot.Snapshot.build(
        source="main",
        files={"agents/a.yaml": snapshot.SourceFile.of("agents/a.yaml", b"kind: Agent\n\xc3\xa9")},
        revision=ids.Revision("abc123"),
    )

    store.save_snapshots({"main": snap}, revision="main@abc123")
    revision, loaded = store.load_snapshots()

    assert "main@abc123" == revision
    assert snap.files["agents/a.yaml"].content == loaded["main"].files["agents/a.yaml"].content
    assert "abc123" == loaded["main"].revision


def test_corrupt_state_file_is_moved_aside(tmp_path: Path) -> None:
    """A torn state file is never trusted: it is moved aside and treated as absent."""
    store = state.StateStore(tmp_path)
    (tmp_path / state.SNAPSHOT_FILE).write_bytes(b'{"format": 1, "sour')

    assert ("", {}) == store.load_snapshots()
    assert [] == list(tmp_path.glob(state.SNAPSHOT_FILE))
    assert 1 == len(list(tmp_path.glob(state.SNAPSHOT_FILE + ".corrupt-*")))


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    """After a write only the final file exists, with the new content."""
    target = tmp_path / "x.json"
    durable.atomic_write(target, b"one")
    durable.atomic_write(target, b"two")

    assert b"two" == target.read_bytes()
    assert ["x.json"] == sorted(p.name for p in tmp_path.iterdir())


def test_second_daemon_on_same_state_dir_is_refused(tmp_path: Path) -> None:
    """Only one process may hold the state-dir lock; the second gets a clear message."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path; from aofd.reconcile import state; "
            "l=state.StateLock(Path(sys.argv[1])); l.acquire(); print('locked', flush=True); time.sleep(30)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert "locked" == holder.stdout.readline().strip()
        lock = state.StateLock(tmp_path)
        with pytest.raises(errors.Stalled, match=f"pid {holder.pid}"):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    lock = state.StateLock(tmp_path)
    lock.acquire()
    lock.release()


def test_endpoints_round_trip(tmp_path: Path) -> None:
    """The bound addresses are readable by aofctl."""
    store = state.StateStore(tmp_path)
    store.save_endpoints({"admin": "127.0.0.1:5555", "pid": str(os.getpid())})

    assert "127.0.0.1:5555" == store.load_endpoints()["admin"]
