"""Incremental git reads (only the subtrees whose ids changed) equal a full read of the commit."""

from __future__ import annotations

import os
import random
from pathlib import Path

from gitkit import Remote

from aofd.settings import GitRef, GitSourceSpec
from aofd.source import git


def mirror(url: str, state_dir: Path) -> git.Mirror:
    return git.Mirror(
        name="main", spec=GitSourceSpec(url=url, ref=GitRef(branch="main")), state_dir=state_dir
    )


def test_random_pushes_read_incrementally_equal_a_full_read(remote: Remote, tmp_path: Path) -> None:
    rng = random.Random(14)
    ours = mirror(remote.url, tmp_path / "ours")
    snap = ours.sync(None)
    for round_ in range(12):
        for _ in range(rng.randrange(1, 4)):
            files = sorted(
                str(p.relative_to(remote.work))
                for p in remote.work.rglob("*.y*ml")
                if ".git" not in p.parts and not p.is_symlink()
            )
            op = rng.choice(["write", "write", "remove", "link", "dir"])
            if op == "write" or not files:
                remote.write(
                    f"d{rng.randrange(3)}/f{rng.randrange(8)}.yaml", f"kind: Agent # {rng.random()}\n"
                )
            elif op == "remove":
                remote.remove(rng.choice(files))
            elif op == "link":
                link = remote.work / f"l{rng.randrange(3)}.yaml"
                if not link.exists() and not link.is_symlink():
                    os.symlink("agent.yaml", link)
            else:
                remote.write(f"n{round_}/deep/x.yaml", "kind: Agent\n")
        remote.commit(f"round {round_}")
        before = snap
        read = ours.stats.incremental_reads
        snap = ours.sync(before)
        assert ours.stats.incremental_reads == read + 1
        full = mirror(remote.url, tmp_path / f"full{round_}").sync(None)
        assert snap.revision == full.revision
        assert list(snap.files) == list(full.files)
        assert {p: (f.content, f.blob) for p, f in snap.files.items()} == {
            p: (f.content, f.blob) for p, f in full.files.items()
        }
        assert snap.issues == full.issues
        for path, file in snap.files.items():
            if path in before.files and before.files[path].blob == file.blob:
                assert file is before.files[path]


def test_an_unchanged_tree_hands_over_the_same_files_mapping(remote: Remote, tmp_path: Path) -> None:
    ours = mirror(remote.url, tmp_path / "ours")
    first = ours.sync(None)
    remote.commit("empty")  # a new commit, the same tree
    again = ours.sync(first)
    assert again.revision != first.revision
    assert again.files is first.files
    assert ours.stats.blobs_read == 2  # only the first read read blobs


def test_a_commit_unknown_to_the_mirror_is_read_in_full(remote: Remote, tmp_path: Path) -> None:
    ours = mirror(remote.url, tmp_path / "ours")
    first = ours.sync(None)
    other = mirror(remote.url, tmp_path / "other")
    remote.write("agent.yaml", "kind: Agent\nmetadata: {name: b}\n")
    remote.commit("two")
    stale = other.sync(None)  # a snapshot at a commit `ours` has, then one it does not
    assert ours.sync(stale).revision == stale.revision
    assert ours.stats.incremental_reads == 0
    assert first.revision != stale.revision
