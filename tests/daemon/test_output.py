"""aofctl's human output helpers and the admin API's secret masking."""

from __future__ import annotations

from typing import Any

from aofd.cli import output
from aofd.daemon import admin


def test_yaml_emitter_quotes_what_could_be_misread() -> None:
    """Reserved words and odd strings are quoted; structure is indented."""
    text = output.to_yaml({"a": "no", "b": [1, {"c": "x y"}], "d": None, "e": {}})

    assert 'a: "no"\nb:\n  - 1\n  - c: "x y"\nd: null\ne: {}' == text


def test_table_aligns_columns() -> None:
    """Columns are padded to the widest cell."""
    assert "A      B\nlong   x" == output.table(["A", "B"], [["long", "x"]])


def test_secrets_are_masked() -> None:
    """Token-like keys and every env value are masked in admin responses."""
    spec = {"config": {"bot_token": "xoxb-1", "channels": ["a"]}, "env": {"REGION": "eu"}, "name": "n"}

    assert {"config": {"bot_token": "***", "channels": ["a"]}, "env": {"REGION": "***"}, "name": "n"} == (
        admin.mask_secrets(spec)
    )


def test_a_bad_admin_address_is_an_error_message_not_a_traceback(capsys: Any) -> None:
    """`aofctl status --admin nonsense` exits 1 with a message."""
    from aofd.cli import aofctl_main

    assert 1 == aofctl_main.main(["status", "--admin", "nonsense"])
    assert "bad admin address" in capsys.readouterr().err
