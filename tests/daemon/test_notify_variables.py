"""sd_notify datagrams and the substitution variables the daemon offers the planner."""

from __future__ import annotations

import socket
from pathlib import Path

from aofd.daemon import notify, variables


def test_notify_sends_datagrams(tmp_path: Path) -> None:
    """READY, STATUS, WATCHDOG and STOPPING reach $NOTIFY_SOCKET as datagrams."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        n = notify.Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        n.ready("serving r1")
        n.watchdog()
        n.stopping()

        got = [server.recv(4096).decode() for _ in range(3)]

    assert got[0].startswith("READY=1\nSTATUS=serving r1\nMAINPID=")
    assert "WATCHDOG=1" == got[1]
    assert "STOPPING=1" == got[2]
    assert 1.0 == n.watchdog_interval


def test_notify_is_a_noop_outside_systemd() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    n = notify.Notifier({})

    assert not n.ready()
    assert n.watchdog_interval is None


def test_only_allowed_variables_are_collected(tmp_path: Path) -> None:
    """Variables outside the allow-list are never read; credentials map to upper-case names."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "slack-bot-token").write_text("xoxb-from-credential\n")
    (creds / "aws-secret").write_text("nope")
    env = {"SLACK_SIGNING_SECRET": "s", "AWS_SECRET_ACCESS_KEY": "k", "SLACK_BOT_TOKEN": "env-token"}

    got = variables.collect(("SLACK_*", "KUBECONFIG*"), environ=env, credentials_dir=creds)

    assert {"SLACK_SIGNING_SECRET": "s", "SLACK_BOT_TOKEN": "xoxb-from-credential"} == got
