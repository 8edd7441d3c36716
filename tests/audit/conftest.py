"""Fixtures for the audit tests: a fresh audit dir, fast journal options, no leaked threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aofd.audit import segment


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    """An audit dir that does not exist yet (the journal creates it)."""
    return tmp_path / "audit"


@pytest.fixture
def options() -> segment.JournalOptions:
    """Journal options for tests: immediate recovery, short group commit."""
    return segment.JournalOptions(recovery_backoff=0.0, group_commit_interval=0.01, write_timeout=10.0)


@pytest.fixture(autouse=True)
def _no_leaked_writer_threads() -> Iterator[None]:
    """Fail a test that leaves an audit writer thread running."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("aofd-audit-")]
    assert leaked == [], f"audit writer threads leaked: {leaked}"
