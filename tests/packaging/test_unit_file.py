"""The systemd unit and the example daemon config keep the promises of issue 8 and RELIABILITY.md §5.3."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aofd.daemon import config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "aofd.service"
EXAMPLE = ROOT / "systemd" / "aofd.yaml.example"
CREDENTIALS = "/run/credentials/aofd.service/"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Parse a unit file into section -> key -> every value assigned, in order (keys may repeat)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("StateDirectory", "aofd"),
        ("LogsDirectory", "aofd"),
        ("CacheDirectory", "aofd"),
        ("RuntimeDirectory", "aofd"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("LimitCORE", "0"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ],
)
def test_service_setting(service: dict[str, list[str]], key: str, value: str) -> None:
    """Each promised [Service] setting is assigned exactly once, to the promised value."""
    assert [value] == service.get(key)


def test_watchdog_is_armed(service: dict[str, list[str]]) -> None:
    """WatchdogSec is a positive number of seconds, so a stalled event loop gets restarted."""
    (value,) = service["WatchdogSec"]
    match = re.fullmatch(r"(\d+)s?", value)
    assert match is not None
    assert int(match.group(1)) > 0


def test_reload_sends_hup(service: dict[str, list[str]]) -> None:
    """`systemctl reload` sends SIGHUP to the main process (fetch now, re-read the config)."""
    assert ["/bin/kill -HUP $MAINPID"] == service["ExecReload"]


def test_exec_start_runs_serve_with_the_config(service: dict[str, list[str]]) -> None:
    """ExecStart runs `aofd serve --config /etc/aofd/aofd.yaml` from the venv."""
    assert ["/opt/aofd/venv/bin/aofd serve --config /etc/aofd/aofd.yaml"] == service["ExecStart"]


def test_kubectl_cache_is_in_the_cache_directory(service: dict[str, list[str]]) -> None:
    """KUBECACHEDIR and HOME point under %C/aofd, the only cache path writable under ProtectSystem=strict."""
    env = dict(item.split("=", 1) for value in service["Environment"] for item in value.split())
    assert "%C/aofd/kube" == env["KUBECACHEDIR"]
    assert "%C/aofd" == env["HOME"]


def test_no_secret_in_the_environment(service: dict[str, list[str]]) -> None:
    """Secrets come from LoadCredential=, never from Environment= lines."""
    names = [item.split("=", 1)[0] for value in service["Environment"] for item in value.split()]
    assert [] == [n for n in names if re.search(r"TOKEN|SECRET|KEY|PASSWORD", n)]


def test_credentials_come_from_etc_aofd(service: dict[str, list[str]]) -> None:
    """Every LoadCredential= line maps a name to a file under /etc/aofd/credentials/ of the same name."""
    pairs = [value.split(":", 1) for value in service["LoadCredential"]]
    assert [f"/etc/aofd/credentials/{name}" for name, _ in pairs] == [path for _, path in pairs]


def test_example_credentials_are_loaded_by_the_unit(service: dict[str, list[str]]) -> None:
    """Every credential file the example config reads has a LoadCredential= line in the unit."""
    referenced = set(re.findall(re.escape(CREDENTIALS) + r"([A-Za-z0-9_.-]+)", EXAMPLE.read_text()))
    loaded = {value.split(":", 1)[0] for value in service["LoadCredential"]}
    assert set() == referenced - loaded


def test_example_config_loads() -> None:
    """The example daemon config validates although its credential files do not exist here."""
    cfg = config.load(EXAMPLE)
    assert ["main", "secrets"] == [s.name for s in cfg.sources]
    assert ("Context",) == cfg.sources[1].kinds


def test_example_config_uses_the_unit_directories() -> None:
    """state_dir, audit_dir and the admin socket are the unit's State/Logs/Runtime directories."""
    cfg = config.load(EXAMPLE)
    assert Path("/var/lib/aofd") == cfg.state_dir
    assert Path("/var/log/aofd") == cfg.audit_dir
    assert cfg.admin.startswith("unix:/run/aofd/")


def test_kill_mode_reaches_every_child(service: dict[str, list[str]]) -> None:
    """Commands must not outlive aofd: the kill mode signals the whole cgroup in the end
    (`mixed`: SIGTERM to aofd so it can drain, then SIGKILL to the rest), never `process`/`none`."""
    assert service.get("KillMode", ["control-group"])[-1] in ("mixed", "control-group")
    assert service.get("SendSIGKILL", ["yes"])[-1] == "yes"
