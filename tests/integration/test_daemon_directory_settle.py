"""A real `aofd serve PATH`: a Context rewritten in place with a 150 ms pause mid-write is never
applied half-written (its first half is a valid Context without `blocked_commands`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aofd.plan import desired
from aofd.source import directory
from tests.integration import fakes, harness
from tests.source.test_directory_settle import MID_WRITE_PAUSE, rewrite_in_place, whole

pytestmark = pytest.mark.slow

ROUNDS = 25
SETTLE = "400ms"


def revision_of(content: bytes, scratch: Path) -> str:
    """The short revision the daemon records for a tree holding only `prod.yaml` = `content`."""
    scratch.mkdir(exist_ok=True)
    (scratch / "prod.yaml").write_bytes(content)
    return desired.short_revision(directory.read_tree(scratch).revision)


def applied_revisions(audit_dir: Path) -> list[str]:
    """The revisions of the `config.applied` records of Context `prod`, in order."""
    found: list[str] = []
    for segment in sorted((audit_dir / "prod").glob("audit-*.jsonl")):
        for line in segment.read_text().splitlines():
            record = json.loads(line)
            if record.get("event", {}).get("action") == "config.applied":
                found.append(str(_find(record, "revision")).split("@")[-1])
    return found


def _find(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for value in node.values():
            hit = _find(value, key)
            if hit is not None:
                return hit
    return None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[harness.DaemonProcess, Path]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "prod.yaml").write_bytes(whole(0))
    with (
        fakes.anthropic_server() as model,
        harness.run_daemon(
            str(repo),
            "--settle",
            SETTLE,
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            cwd=tmp_path,
            state_dir=repo / ".aofd" / "state",
            env={"ANTHROPIC_BASE_URL": fakes.url(model)},
        ) as daemon,
    ):
        daemon.wait_ready()
        yield daemon, repo


def test_a_context_written_with_a_pause_is_never_applied_half_written(
    served: tuple[harness.DaemonProcess, Path], tmp_path: Path
) -> None:
    daemon, repo = served
    whole_revisions = {revision_of(whole(i), tmp_path / "scratch") for i in range(ROUNDS + 1)}
    last = revision_of(whole(ROUNDS), tmp_path / "scratch")
    audit_dir = repo / ".aofd" / "audit"
    for i in range(1, ROUNDS + 1):
        rewrite_in_place(repo / "prod.yaml", i, lambda: time.sleep(MID_WRITE_PAUSE))
        time.sleep(0.05)
    applied = daemon.wait_for(
        lambda: (found := applied_revisions(audit_dir)) and found[-1] == last and found,
        what="the last version to be applied",
    )
    half_written = [r for r in applied if r not in whole_revisions]
    assert [] == half_written, f"{len(half_written)} of {len(applied)} applied revisions were half-written"
