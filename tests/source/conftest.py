"""Fixtures for the source tests: a bare remote with a work clone, a state dir, and a check
that no test leaves a fetch thread or a test server thread running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gitkit import Remote

_OURS = ("aofd-", "test-")


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves an aofd fetch thread or a test server thread running."""
    before = {t for t in threading.enumerate() if t.name.startswith(_OURS)}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t for t in threading.enumerate() if t.name.startswith(_OURS) and t not in before and t.is_alive()
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """A bare repository with one commit on `main` (`agent.yaml`), and a work clone to push from."""
    repo = Remote.create(tmp_path)
    repo.write("agent.yaml", "kind: Agent\nmetadata: {name: a}\n")
    repo.write("flows/flow.yaml", "kind: AgentFlow\nmetadata: {name: f}\n")
    repo.commit("initial")
    return repo


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path
