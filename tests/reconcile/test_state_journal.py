"""The applied revision is saved as what changed (a journal line), and reads back exactly as
saved: after random edits, after a crash during an append, after the base is rewritten."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from aofd.plan import desired, diff
from aofd.reconcile import state
from aofd.resources import ids, snapshot
from tests.plan.conftest import agent, binding, context, flow, trigger


def tree() -> dict[str, str]:
    files = {"contexts/prod.yaml": context("prod"), "triggers/hook.yaml": trigger("hook")}
    for i in range(40):
        files[f"agents/a{i}.yaml"] = agent(f"a{i}")
    for i in range(10):
        files[f"flows/f{i}.yaml"] = flow(f"f{i}", f"a{i}", f"a{i + 10}")
    for i in range(30):
        files[f"bindings/b{i}.yaml"] = binding(f"b{i}", f"f{i % 10}", "prod")
    return files


class Revisions:
    """Successive revisions of one tree as the daemon makes them: unchanged files keep their
    `SourceFile` object, each state built incrementally from the last."""

    def __init__(self) -> None:
        self.files = tree()
        self.cache = desired.ParseCache()
        self.snap: snapshot.Snapshot | None = None
        self.count = 0

    def next(self) -> tuple[str, dict[str, snapshot.Snapshot], diff.Inventory]:
        old = self.snap.files if self.snap is not None else {}
        made = {}
        for path, text in self.files.items():
            before = old.get(path)
            made[path] = (
                before
                if before is not None and before.content == text.encode()
                else snapshot.SourceFile.of(path, text.encode())
            )
        self.count += 1
        self.snap = snapshot.Snapshot.build(
            source="main", files=made, revision=ids.Revision(f"{self.count:040x}"), display_root="repo"
        )
        view = desired.SourceView("main", desired.ALL_KINDS, self.snap)
        built = desired.build([view], variables={}, cache=self.cache)
        return built.revision, {"main": self.snap}, diff.Inventory.of(built, listeners={"hook": "x"})


def edit(files: dict[str, str], rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        files[f"agents/a{rng.randrange(50)}.yaml"] = agent(f"a{rng.randrange(50)}", f"v{rng.random()}")
    elif choice == 1:
        files.pop(f"agents/a{rng.randrange(50)}.yaml", None)
    elif choice == 2:
        files[f"bindings/b{rng.randrange(35)}.yaml"] = binding(f"b{rng.randrange(35)}", "f1", "prod")
    else:
        files.pop(f"bindings/b{rng.randrange(35)}.yaml", None)


def loaded(directory: Path) -> tuple[str, dict[str, bytes], dict[str, str]]:
    """What a restarted daemon reads back: revision, file bytes, inventory."""
    fresh = state.StateStore(directory)
    revision, snaps = fresh.load_snapshots()
    return revision, {p: f.content for p, f in snaps["main"].files.items()}, fresh.load_inventory()


@pytest.mark.parametrize("seed", range(6))
def test_saved_revisions_read_back_exactly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = state.StateStore(tmp_path)
    revisions = Revisions()
    for step in range(30):
        revision, snaps, inventory = revisions.next()
        store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
        got = loaded(tmp_path)
        want = (revision, {p: f.content for p, f in snaps["main"].files.items()}, inventory.to_json())
        assert want == got, step
        edit(revisions.files, rng)
    assert (tmp_path / state.JOURNAL_FILE).exists(), "later saves were journaled"


def test_a_one_file_edit_appends_about_one_file(tmp_path: Path) -> None:
    store = state.StateStore(tmp_path)
    revisions = Revisions()
    revision, snaps, inventory = revisions.next()
    store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
    base = os.stat(tmp_path / state.SNAPSHOT_FILE)

    revisions.files["agents/a3.yaml"] = agent("a3", "changed")
    revision, snaps, inventory = revisions.next()
    store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)

    journal = (tmp_path / state.JOURNAL_FILE).read_bytes()
    assert 1 == journal.count(b"\n")
    assert len(journal) < 2_000 < base.st_size  # the file, the agent's and 1 binding's digests
    assert base.st_ino == os.stat(tmp_path / state.SNAPSHOT_FILE).st_ino, "the base is not rewritten"
    assert revision == loaded(tmp_path)[0]


def test_a_line_torn_by_a_crash_leaves_the_revision_before(tmp_path: Path) -> None:
    store = state.StateStore(tmp_path)
    revisions = Revisions()
    saved = []
    for i in range(3):
        revisions.files[f"agents/a{i}.yaml"] = agent(f"a{i}", f"edit {i}")
        revision, snaps, inventory = revisions.next()
        store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
        saved.append((revision, inventory.to_json()))
    path = tmp_path / state.JOURNAL_FILE
    path.write_bytes(path.read_bytes()[:-40])  # the last append never completed

    revision, _, inventory_json = loaded(tmp_path)
    assert saved[1] == (revision, inventory_json)


def test_the_base_is_rewritten_when_the_journal_grows_and_a_stale_journal_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "COMPACT_MIN_BYTES", 0)  # fold as soon as the journal passes half the base
    store = state.StateStore(tmp_path)
    revisions = Revisions()
    generations = set()
    for i in range(12):
        revisions.files[f"agents/a{i}.yaml"] = agent(f"a{i}", "x" * 2_000)
        revision, snaps, inventory = revisions.next()
        store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
        assert store._saved is not None
        generations.add(store._saved.generation)
        assert revision == loaded(tmp_path)[0]
    assert len(generations) > 1, "the base was written again"

    # A journal of another generation (a crash after the base was rewritten, before the old
    # journal was removed) is never applied to the new base.
    (tmp_path / state.JOURNAL_FILE).write_bytes(
        b'{"generation":"0000","revision":"stale","sources":{},"inventory":{"@revision":"stale"}}\n'
    )
    revision, _, inventory_json = loaded(tmp_path)
    assert "stale" not in (revision, inventory_json["@revision"])


def test_a_failed_write_makes_the_next_save_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = state.StateStore(tmp_path)
    revisions = Revisions()
    revision, snaps, inventory = revisions.next()
    store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)

    def full_disk(path: Path, line: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state, "_append", full_disk)
    revisions.files["agents/a1.yaml"] = agent("a1", "changed")
    revision, snaps, inventory = revisions.next()
    with pytest.raises(OSError, match="No space"):
        store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
    store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)  # whole: no append
    assert not (tmp_path / state.JOURNAL_FILE).exists()
    assert revision == loaded(tmp_path)[0]


def test_a_whole_save_written_in_pieces_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large maps are written a few entries per `json.dumps` call (the event loop gets turns in
    between); the pieces join into the same documents."""
    monkeypatch.setattr(state, "PIECE", 7)
    store = state.StateStore(tmp_path)
    revision, snaps, inventory = Revisions().next()
    store.save_applied(revision=revision, snapshots=snaps, inventory=inventory)
    assert len(snaps["main"].files) > 7 * 3
    want = (revision, {p: f.content for p, f in snaps["main"].files.items()}, inventory.to_json())
    assert want == loaded(tmp_path)
