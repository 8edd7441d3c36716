"""The settle time of directory sources in the daemon config and for the zero-config `aofd serve PATH`."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.cli import aofd_main
from aofd.daemon import config as config_mod


def test_config_file_settle_is_a_duration(tmp_path: Path) -> None:
    (tmp_path / "res").mkdir()
    path = tmp_path / "aofd.yaml"
    path.write_text("sources:\n  - name: local\n    directory: {path: res, settle: 2s}\n")
    cfg = config_mod.load(path)
    assert cfg.sources[0].directory is not None
    assert 2.0 == cfg.sources[0].directory.settle


def test_a_negative_settle_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "aofd.yaml"
    path.write_text("sources:\n  - name: local\n    directory:\n      path: res\n      settle: -1\n")
    with pytest.raises(errors.ConfigError) as caught:
        config_mod.load(path)
    assert [(5, "sources.0.directory.settle")] == [
        (i.line, i.message.split(":")[0]) for i in caught.value.issues
    ]


def test_zero_config_takes_the_default_or_the_flag(tmp_path: Path) -> None:
    default = config_mod.zero_config(tmp_path)
    flagged = config_mod.zero_config(tmp_path, settle=0.25)
    assert (settings.DEFAULT_DIRECTORY_SETTLE, 0.25) == (
        default.sources[0].directory.settle,  # type: ignore[union-attr]
        flagged.sources[0].directory.settle,  # type: ignore[union-attr]
    )


def test_serve_flag_parses_a_duration_and_applies_to_path_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = aofd_main.build_parser().parse_args(["serve", str(tmp_path), "--settle", "250ms"])
    assert 0.25 == args.settle
    code = aofd_main.main(["serve", "--config", str(tmp_path / "aofd.yaml"), "--settle", "2s"])
    assert (2, True) == (code, "sources[].directory.settle" in capsys.readouterr().err)


@pytest.mark.parametrize("value", ["-1", "10m", "soon"])
def test_a_bad_settle_flag_is_a_usage_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(SystemExit) as caught:
        aofd_main.build_parser().parse_args(["serve", str(tmp_path), "--settle", value])
    assert 2 == caught.value.code
