"""The install's digest key: 32 random bytes, made once 0600 in the state dir, read back after."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aofd import errors
from aofd.daemon import digestkey


def test_the_key_is_created_once_0600_and_read_back(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        key = digestkey.load_or_create(tmp_path)
    finally:
        os.umask(previous)
    path = tmp_path / digestkey.FILENAME
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert digestkey.load_or_create(tmp_path) == key
    assert [p.name for p in tmp_path.iterdir()] == [digestkey.FILENAME]  # no temporary file left


def test_two_installs_get_different_keys(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert digestkey.load_or_create(tmp_path / "a") != digestkey.load_or_create(tmp_path / "b")


def test_a_damaged_key_is_a_clear_error_not_a_new_key(tmp_path: Path) -> None:
    (tmp_path / digestkey.FILENAME).write_bytes(b"short")
    with pytest.raises(errors.Stalled, match="must be 32 bytes"):
        digestkey.load_or_create(tmp_path)
    assert (tmp_path / digestkey.FILENAME).read_bytes() == b"short"
