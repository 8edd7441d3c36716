"""The container image runs aofd as non-root, with state and audit volumes and a /readyz healthcheck."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def final_stage() -> list[tuple[str, str]]:
    """Return the (INSTRUCTION, arguments) pairs of the Dockerfile's last stage, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, args = stripped.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :]


def values(keyword: str) -> list[str]:
    return [args for kw, args in final_stage() if kw == keyword]


def test_runs_as_non_root() -> None:
    """The last USER of the final stage is neither root nor uid 0."""
    user = values("USER")[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_declares_state_and_audit_volumes() -> None:
    """State and audit directories are volumes."""
    assert [["/var/lib/aofd", "/var/log/aofd"]] == [json.loads(v) for v in values("VOLUME")]


def test_healthcheck_polls_readyz() -> None:
    """The HEALTHCHECK asks /readyz on the admin port and bypasses any configured proxy."""
    (healthcheck,) = values("HEALTHCHECK")
    assert "http://127.0.0.1:8081/readyz" in healthcheck
    assert "ProxyHandler({})" in healthcheck


def test_default_command_serves_the_mounted_config() -> None:
    """The image runs `aofd serve --config /etc/aofd/aofd.yaml` under tini."""
    assert [["tini", "--", "aofd"]] == [json.loads(v) for v in values("ENTRYPOINT")]
    assert [["serve", "--config", "/etc/aofd/aofd.yaml"]] == [json.loads(v) for v in values("CMD")]


@pytest.mark.parametrize("pattern", [".git", ".venv", ".aofd", "**/__pycache__", ".pytest_cache"])
def test_dockerignore_excludes(pattern: str) -> None:
    """Local state, caches and the venv never enter the build context."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert pattern in lines
