"""`aofctl run`: `agent` and `flow` still need `--context`; `binding` needs none and reports an
unreachable daemon as an error (the end-to-end run is in tests/integration/test_aofctl_run_manual.py)."""

from __future__ import annotations

import pytest

from aofd.cli import aofctl_main


def test_agent_without_context_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert 2 == aofctl_main.main(["run", "agent", "echo", "-i", "hi"])
    assert "--context is required" in capsys.readouterr().err


def test_binding_against_no_daemon_fails_saying_where(capsys: pytest.CaptureFixture[str]) -> None:
    assert 1 == aofctl_main.main(
        ["run", "binding", "ops", "-i", "hi", "--admin", "unix:/nonexistent/aofd.sock"]
    )
    assert "cannot reach aofd at unix:/nonexistent/aofd.sock" in capsys.readouterr().err


def test_binding_with_an_empty_input_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any request (no daemon is needed to say so)."""
    assert 2 == aofctl_main.main(
        ["run", "binding", "ops", "-i", "  ", "--admin", "unix:/nonexistent/aofd.sock"]
    )
    err = capsys.readouterr().err
    assert "-i/--input is empty" in err
    assert "cannot reach" not in err


def test_binding_says_that_context_and_path_are_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    assert 1 == aofctl_main.main(
        [
            "run",
            "binding",
            "ops",
            "./repo",
            "-C",
            "prod",
            "-i",
            "hi",
            "--admin",
            "unix:/nonexistent/aofd.sock",
        ]
    )
    assert "note: --context and PATH ignored" in capsys.readouterr().err
