"""The `repo_limits:` section of the daemon config: defaults, sizes, file:line errors, and the
caps each reader (sources, the parse cache, the admin API's posted trees) then applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.daemon import config
from aofd.resources import documents, snapshot
from aofd.source import directory
from aofd.source import runner as source_runner


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aofd.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_historical_caps() -> None:
    assert snapshot.DEFAULT_LIMITS == config.repo_limits(settings.DaemonConfig())


def test_caps_load_with_sizes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "repo_limits:\n  max_files: 200000\n  max_tree_bytes: 2GiB\n  max_file_bytes: 512KiB\n"
        "  max_scalar_bytes: 4096\n  max_depth: 32\n  max_nodes_per_file: 5000\n",
    )
    assert snapshot.Limits(
        max_file_bytes=512 * 1024,
        max_scalar_bytes=4096,
        max_depth=32,
        max_files=200_000,
        max_tree_bytes=2 * 1024**3,
        max_nodes_per_file=5000,
    ) == config.repo_limits(config.load(path))


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("repo_limits:\n  max_files: 0\n", 2, "repo_limits.max_files"),
        ("listen: 127.0.0.1:0\nrepo_limits:\n  max_tree_bytes: lots\n", 3, "expected a size such as 1MiB"),
        ("repo_limits:\n  max_file_bytes: 2GiB\n", 2, "repo_limits.max_file_bytes"),
        ("repo_limits:\n  max_depth: 1\n", 2, "repo_limits.max_depth"),
        ("repo_limits:\n  max_file: 10\n", 2, "unknown setting 'repo_limits.max_file'"),
    ],
)
def test_bad_caps_are_errors_at_their_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)
    (issue,) = caught.value.issues
    assert (line, True) == (issue.line, words in issue.message), issue.format()


def test_a_tree_over_the_file_cap_names_the_setting_to_raise(tmp_path: Path) -> None:
    """The source's issue says which cap stopped the read and which setting raises it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(4):
        (repo / f"f{i}.yaml").write_text(f"k: {i}\n")
    cfg = config.load(write(tmp_path, "repo_limits:\n  max_files: 3\n"))
    snap = directory.read_tree(repo, limits=config.repo_limits(cfg))
    (issue,) = snap.issues
    assert ("too-many-files", 3) == (issue.code, len(snap.files))
    assert "more than 3 resource files" in issue.message
    assert "raise repo_limits.max_files in the daemon config" in issue.message


async def test_a_raised_file_cap_reaches_the_sources(tmp_path: Path) -> None:
    """build_source hands the configured caps to the reader: 12 files pass a cap of 12, not of 11."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(12):
        (repo / f"f{i}.yaml").write_text(f"k: {i}\n")
    for cap, issues in ((12, []), (11, ["too-many-files"])):
        cfg = config.load(write(tmp_path, f"repo_limits:\n  max_files: {cap}\n"))
        spec = settings.SourceSpec(
            name="main", directory=settings.DirectorySourceSpec(path=repo, watch=False)
        )
        source = source_runner.build_source(
            spec, state_dir=tmp_path / "state", limits=config.repo_limits(cfg)
        )
        snap = await source.fetch()
        assert (issues, min(cap, 12)) == ([i.code for i in snap.issues], len(snap.files))


def test_parse_caps_apply_to_each_file(tmp_path: Path) -> None:
    """The per-file caps (nodes here) are the parser's too, so a raised cap is not refused later."""
    cfg = config.load(write(tmp_path, "repo_limits:\n  max_nodes_per_file: 4\n"))
    content = b"a: 1\nb: 2\nc: 3\n"  # 7 nodes: the root mapping, 3 keys and 3 values count 4
    assert documents.parse("x.yaml", content).ok
    assert "yaml-nodes" == documents.parse("x.yaml", content, limits=config.repo_limits(cfg)).issues[0].code
