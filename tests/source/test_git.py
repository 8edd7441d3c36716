"""Git sources over file:// (aofd.source.git and GitSource): refs, pins, short-circuit, reuse,
force-push, refused entries, corrupt mirrors, unreachable remotes."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitkit import Remote, git

from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.settings import GitRef, GitSourceSpec, SourceSpec
from aofd.source import backoff, runner


def _source(
    url: str, state_dir: Path, *, ref: GitRef | None = None, path: str = ".", **kw: object
) -> runner.GitSource:
    spec = SourceSpec(name="main", git=GitSourceSpec(url=url, ref=ref or GitRef(branch="main"), path=path))
    return runner.GitSource(spec, state_dir, **kw)  # type: ignore[arg-type]


async def test_branch_snapshot_from_objects(remote: Remote, state_dir: Path) -> None:
    """A branch is read from the mirror's objects: revision is the commit, files keyed by repo path."""
    source = _source(remote.url, state_dir)
    snap = await source.fetch()
    assert remote.head() == snap.revision
    assert ["agent.yaml", "flows/flow.yaml"] == list(snap.files)
    assert "git:main" == snap.display_root
    assert (state_dir / "sources" / "main.git" / "HEAD").exists()
    assert not (state_dir / "sources" / "main.git" / "agent.yaml").exists()  # no work tree


async def test_unchanged_remote_costs_no_fetch_and_no_parse(remote: Remote, state_dir: Path) -> None:
    """When ls-remote shows the ref has not moved, nothing is fetched or read and the same object returns."""
    source = _source(remote.url, state_dir)
    first = await source.fetch()
    stats = source.mirror.stats
    before = (stats.fetches, stats.trees_read, stats.blobs_read)
    second = await source.fetch()
    assert second is first
    assert before == (stats.fetches, stats.trees_read, stats.blobs_read)
    assert 2 == stats.ls_remotes


async def test_one_file_change_reuses_other_files(remote: Remote, state_dir: Path) -> None:
    """A one-file push reads one blob; every other SourceFile is the previous object."""
    for i in range(10):
        remote.write(f"agents/a{i}.yaml", f"n: {i}\n")
    remote.commit("ten")
    source = _source(remote.url, state_dir)
    first = await source.fetch()
    blobs = source.mirror.stats.blobs_read
    remote.write("agents/a3.yaml", "n: changed\n")
    remote.commit("one")
    second = await source.fetch()
    assert 1 == source.mirror.stats.blobs_read - blobs
    reused = {p for p in second.files if second.files[p] is first.files[p]}
    assert set(first.files) - {"agents/a3.yaml"} == reused
    assert b"n: changed\n" == second.files["agents/a3.yaml"].content


async def test_restart_with_existing_mirror_reads_without_fetch(remote: Remote, state_dir: Path) -> None:
    """A new source over an up-to-date mirror reads the tree without fetching objects."""
    await _source(remote.url, state_dir).fetch()
    again = _source(remote.url, state_dir)
    snap = await again.fetch()
    assert remote.head() == snap.revision
    assert (0, 1) == (again.mirror.stats.fetches, again.mirror.stats.trees_read)


async def test_tag_pin_and_moved_tag(remote: Remote, state_dir: Path) -> None:
    """An annotated tag pins its commit; later branch commits are ignored; a moved tag is followed."""
    tagged = remote.head()
    remote.git("tag", "-a", "v1", "-m", "v1")
    remote.git("push", "-q", "origin", "v1")
    remote.write("later.yaml", "k: v\n")
    remote.commit("later")
    source = _source(remote.url, state_dir, ref=GitRef(tag="v1"))
    assert tagged == (await source.fetch()).revision
    remote.git("tag", "-f", "-a", "v1", "-m", "moved")
    remote.git("push", "-q", "--force", "origin", "v1")
    snap = await source.fetch()
    assert remote.head() == snap.revision
    assert "later.yaml" in snap.files


async def test_commit_pin_alone(remote: Remote, state_dir: Path) -> None:
    """A commit pin reads that commit; once present, fetching it again never touches the network."""
    pinned = remote.head()
    remote.write("later.yaml", "k: v\n")
    remote.commit("later")
    source = _source(remote.url, state_dir, ref=GitRef(commit=pinned))
    assert pinned == (await source.fetch()).revision
    calls = (source.mirror.stats.ls_remotes, source.mirror.stats.fetches)
    assert pinned == (await source.fetch()).revision
    assert calls == (source.mirror.stats.ls_remotes, source.mirror.stats.fetches)


async def test_commit_pin_on_branch(remote: Remote, state_dir: Path) -> None:
    """`ref: {branch, commit}` fetches the branch and reads the pinned commit if it is on it."""
    pinned = remote.head()
    remote.write("later.yaml", "k: v\n")
    remote.commit("later")
    source = _source(remote.url, state_dir, ref=GitRef(branch="main", commit=pinned[:12]))
    snap = await source.fetch()
    assert pinned == snap.revision
    assert "later.yaml" not in snap.files


async def test_commit_pin_not_on_branch(remote: Remote, state_dir: Path) -> None:
    """A pinned commit that is not on the named branch is an error naming the commit."""
    remote.git("checkout", "-q", "-b", "other")
    remote.write("other.yaml", "k: v\n")
    other = remote.commit("other", push=False)
    remote.git("push", "-q", "origin", "other")
    source = _source(remote.url, state_dir, ref=GitRef(branch="main", commit=other))
    with pytest.raises(SourceError, match="not reachable"):
        await source.fetch()


async def test_force_push_followed(remote: Remote, state_dir: Path) -> None:
    """After a history rewrite the new commit is the truth; the vanished commit is no error."""
    remote.write("doomed.yaml", "k: v\n")
    doomed = remote.commit("doomed")
    source = _source(remote.url, state_dir)
    assert doomed == (await source.fetch()).revision
    remote.git("reset", "-q", "--hard", "HEAD~1")
    remote.write("rewritten.yaml", "k: v\n")
    rewritten = remote.commit("rewritten", force=True)
    git("gc", "-q", "--prune=now", cwd=remote.bare)  # the old commit is gone from the remote
    snap = await source.fetch()
    assert rewritten == snap.revision
    assert "doomed.yaml" not in snap.files
    assert "rewritten.yaml" in snap.files


async def test_subpath(remote: Remote, state_dir: Path) -> None:
    """`path:` limits the snapshot to a folder; a missing folder is an issue, not a crash."""
    assert ["flows/flow.yaml"] == list((await _source(remote.url, state_dir, path="flows").fetch()).files)
    snap = await _source(remote.url, state_dir / "b", path="nope").fetch()
    assert [] == list(snap.files)
    assert ["path-not-found"] == [i.code for i in snap.issues]


async def test_symlink_and_submodule_refused(remote: Remote, state_dir: Path, tmp_path: Path) -> None:
    """Symlink and gitlink entries are issues; the symlink target's content never enters the snapshot."""
    other = Remote.create(tmp_path, "other")
    other.write("x.yaml", "k: v\n")
    other.commit("other")
    (remote.work / "link.yaml").symlink_to("/etc/passwd")
    remote.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(other.bare), "mods/other")
    remote.commit("links")
    snap = await _source(remote.url, state_dir).fetch()
    assert {"git:main/link.yaml": "symlink", "git:main/mods/other": "submodule"} == {
        i.path: i.code for i in snap.issues
    }
    assert ["agent.yaml", "flows/flow.yaml"] == list(snap.files)
    assert all(b"root:" not in f.content for f in snap.files.values())


async def test_caps_from_blob_headers(remote: Remote, state_dir: Path) -> None:
    """A blob over the size cap is refused by its header, never read."""
    remote.write("big.yaml", "x" * 2000)
    remote.commit("big")
    source = _source(remote.url, state_dir, limits=snapshot.Limits(max_file_bytes=1000))
    snap = await source.fetch()
    assert ["file-too-large"] == [i.code for i in snap.issues]
    assert "big.yaml" not in snap.files
    assert 2 == source.mirror.stats.blobs_read


async def test_corrupt_mirror_rebuilt(remote: Remote, state_dir: Path) -> None:
    """A mirror with truncated packs and missing objects is deleted and re-cloned."""
    source = _source(remote.url, state_dir)
    await source.fetch()
    objects = state_dir / "sources" / "main.git" / "objects"
    for path in objects.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    remote.write("new.yaml", "k: v\n")
    remote.commit("new")
    snap = await source.fetch()
    assert remote.head() == snap.revision
    assert "new.yaml" in snap.files
    assert 1 == source.mirror.stats.rebuilds


async def test_mirror_that_is_not_a_repo_rebuilt(remote: Remote, state_dir: Path) -> None:
    """Garbage where the mirror should be is replaced by a fresh mirror."""
    mirror = state_dir / "sources" / "main.git"
    mirror.mkdir(parents=True)
    (mirror / "HEAD").write_text("garbage")
    snap = await _source(remote.url, state_dir).fetch()
    assert remote.head() == snap.revision


async def test_unreachable_keeps_last_good_and_backs_off(remote: Remote, state_dir: Path) -> None:
    """An unreachable remote raises SourceError with growing, capped delays; last_good stays in force."""
    clock = [1000.0]
    source = _source(remote.url, state_dir, retry=backoff.Backoff(jitter=0.0), clock=lambda: clock[0])
    good = await source.fetch()
    remote.bare.rename(remote.bare.with_name("moved.git"))
    delays = []
    for _ in range(4):
        with pytest.raises(SourceError) as caught:
            await source.fetch()
        delays.append(caught.value.retry_after)
    assert [1.0, 2.0, 4.0, 8.0] == delays
    assert source.last_good is good
    status = source.status()
    assert (4, True, good.revision) == (status.consecutive_failures, status.stale, status.revision)
    assert status.last_error is not None
    assert 1008.0 == status.next_retry_at
    remote.bare.with_name("moved.git").rename(remote.bare)
    assert good is await source.fetch()
    assert (0, False, None) == (
        source.status().consecutive_failures,
        source.status().stale,
        source.status().last_error,
    )


async def test_missing_branch(remote: Remote, state_dir: Path) -> None:
    """A branch the remote does not have is a SourceError naming the ref."""
    with pytest.raises(SourceError, match="branch nope not found"):
        await _source(remote.url, state_dir, ref=GitRef(branch="nope")).fetch()
