"""The daemon config loader: shapes, defaults, file:line errors, overrides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

from aofd import errors, settings
from aofd.daemon import config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aofd.yaml"
    path.write_text(text)
    return path


def test_design_example_loads(tmp_path: Path) -> None:
    """The config sketched in DESIGN.md section 4 loads with its durations and kinds."""
    path = write(
        tmp_path,
        """\
sources:
  - name: main
    git:
      url: https://git.example.com/ops/aof-deployment.git
      ref: {branch: main}
      path: .
      interval: 60s
      auth: {token_file: /run/credentials/aofd.service/git-token}
    kinds: [Agent, AgentFleet, AgentFlow, Trigger, FlowBinding]
  - name: secrets
    directory: {path: contexts}
    kinds: [Context]
listen: 127.0.0.1:8080
admin: unix:/run/aofd/admin.sock
state_dir: /var/lib/aofd
audit_dir: /var/log/aofd
substitution:
  allow: [KUBECONFIG_*, SLACK_*]
""",
    )
    cfg = config.load(path)

    assert ("main", "secrets") == tuple(s.name for s in cfg.sources)
    assert cfg.sources[0].git is not None
    assert 60.0 == cfg.sources[0].git.interval
    assert ("Context",) == cfg.sources[1].kinds
    assert cfg.sources[1].directory is not None
    assert tmp_path / "contexts" == cfg.sources[1].directory.path
    assert ("KUBECONFIG_*", "SLACK_*") == cfg.substitution.allow


def test_unknown_setting_is_an_error_with_position(tmp_path: Path) -> None:
    """A misspelt setting is reported at its file:line:col, never ignored."""
    path = write(tmp_path, "listen: 127.0.0.1:8080\naudit_dri: /tmp/x\n")

    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)

    assert [f"{path}:2:1: error: unknown setting 'audit_dri'"] == [i.format() for i in caught.value.issues]


def test_bad_value_points_at_the_value(tmp_path: Path) -> None:
    """A source with both git and directory is an error at that source's line."""
    path = write(
        tmp_path,
        "sources:\n  - name: x\n    directory: {path: .}\n    git: {url: 'file:///tmp/r'}\n",
    )

    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)

    (issue,) = caught.value.issues
    assert 2 == issue.line
    assert "exactly one of git: or directory:" in issue.message


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    """Hostile YAML in the config is refused like in resources (no aliases)."""
    path = write(tmp_path, "a: &x [1]\nb: *x\n")

    with pytest.raises(errors.ConfigError):
        config.load(path)


def test_zero_config_watches_the_directory(tmp_path: Path) -> None:
    """`aofd serve PATH` is one watched directory source with state under PATH/.aofd."""
    cfg = config.zero_config(tmp_path, config.Overrides(listen="127.0.0.1:0"))

    (source,) = cfg.sources
    assert source.directory is not None
    assert tmp_path.resolve() == source.directory.path
    assert settings.ALL_KIND_NAMES == source.kinds
    assert tmp_path.resolve() / ".aofd" / "state" == cfg.state_dir
    assert "127.0.0.1:0" == cfg.listen


def test_overrides_win(tmp_path: Path) -> None:
    """Command-line flags override the file."""
    path = write(tmp_path, "listen: 127.0.0.1:8080\nadmin: 127.0.0.1:8081\n")

    cfg = config.load(path, config.Overrides(admin="unix:/tmp/a.sock", state_dir=tmp_path / "s"))

    assert "unix:/tmp/a.sock" == cfg.admin
    assert tmp_path / "s" == cfg.state_dir
    assert "127.0.0.1:8080" == cfg.listen


def test_zero_config_pins_tools_from_path(tmp_path: Path) -> None:
    """Zero-config pins the tools it finds to real absolute paths and leaves out the rest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = tmp_path / "real-kubectl"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    (bin_dir / "kubectl").symlink_to(real)

    pinned = config.pinned_tools(("kubectl", "helm"), search_path=str(bin_dir))

    assert {"kubectl": real.resolve()} == pinned


def test_zero_config_pins_mcp_server_time_as_a_server_only(tmp_path: Path) -> None:
    """`mcp-server-time` goes to `executables.mcp_servers` (never the guard's `paths`), alone."""
    cfg = config.zero_config(tmp_path, config.Overrides(listen="127.0.0.1:0"))
    assert "mcp-server-time" not in cfg.executables.paths
    assert set(cfg.executables.mcp_servers) <= {"mcp-server-time"}
    if (Path(sys.executable).parent / "mcp-server-time").exists():
        assert cfg.executables.mcp_servers["mcp-server-time"].is_absolute()


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ({"paths": {"kubectl": "/usr/bin/kubectl"}, "mcp_servers": {"kubectl": "/usr/bin/kubectl"}}, "guard"),
        ({"mcp_servers": {"helm": "/usr/bin/helm"}}, "guard"),
        ({"mcp_servers": {"mcp-x": "bin/mcp-x"}}, "absolute"),
    ],
)
def test_mcp_servers_pins_are_apart_from_the_guards_tools(spec: dict[str, Any], want: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=want):
        settings.ExecutablesSpec.model_validate(spec)
