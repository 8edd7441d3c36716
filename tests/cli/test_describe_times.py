"""`aofctl describe` shows times as ISO 8601 UTC with their age, never epoch floats; `-o json`
keeps the admin API's machine values (epoch seconds). Real loopback HTTP to a real admin API."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from aofd.cli import aofctl_main, output
from aofd.cli import client as client_mod
from aofd.daemon import admin
from aofd.resources import ids
from tests.daemon.test_admin_auth import TOKEN, FakeView

EPOCH_FLOAT = re.compile(r"\b1[0-9]{9}\.[0-9]+\b")


class BindingView(FakeView):
    """One binding, Ready for three minutes, with two runs."""

    def __init__(self, now: float) -> None:
        super().__init__()
        self.item: dict[str, Any] = {
            "kind": "FlowBinding",
            "namespace": "default",
            "name": "b",
            "source": "main",
            "path": "bindings/b.yaml",
            "line": 1,
            "digest": "sha256:abc",
            "status": {
                "phase": "Ready",
                "reason": "Applied",
                "message": "",
                "observedRevision": "main@1",
                "since": now - 180.25,
            },
            "spec": {},
            "runs": [
                {
                    "run_id": "01RUNB",
                    "status": "timed_out",
                    "started_at": now - 7300.5,
                    "ended_at": now - 7292.3,
                    "duration_ms": 8200.0,
                    "error": "the run did not finish within 8 s\nsecond line",
                },
                {
                    "run_id": "01RUNA",
                    "status": "running",
                    "started_at": now - 5.5,
                    "ended_at": None,
                    "duration_ms": None,
                    "error": None,
                },
            ],
        }

    def resources(self, kind: ids.Kind | None, name: str | None) -> list[dict[str, Any]]:
        return [self.item]


async def aofctl(*args: str, tmp_path: Path, now: float, capsys: pytest.CaptureFixture[str]) -> str:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server, bound = await admin.start_site(admin.AdminApi(BindingView(now), token=TOKEN), "127.0.0.1:0")
    try:
        argv = [*args, "--admin", bound, "--token-file", str(token_file)]
        assert await asyncio.to_thread(aofctl_main.main, argv) == 0
    finally:
        await server.stop()
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_ambient_admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AOFD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("AOFD_ADMIN", raising=False)
    monkeypatch.setattr(client_mod, "DEFAULT_TOKEN_FILE", tmp_path / "absent")


async def test_describe_shows_times_and_ages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    out = await aofctl("describe", "binding", "b", tmp_path=tmp_path, now=now, capsys=capsys)
    assert not EPOCH_FLOAT.search(out), out
    since = output.timestamp(now - 180.25)
    assert f"  Since:     {since} (3m ago)\n" in out, out
    runs = out.split("Recent runs:\n", 1)[1].splitlines()
    assert re.split(r"\s{3,}", runs[0].strip()) == ["RUN", "STATUS", "STARTED", "DURATION", "ERROR"]
    assert re.split(r"\s{3,}", runs[1].strip()) == [
        "01RUNB",
        "timed_out",
        f"{output.timestamp(now - 7300.5)} (2h ago)",
        "8.2s",
        "the run did not finish within 8 s",
    ]
    assert re.split(r"\s{3,}", runs[2].strip()) == [
        "01RUNA",
        "running",
        f"{output.timestamp(now - 5.5)} (5s ago)",
        "-",
    ]


async def test_get_json_keeps_epoch_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    out = await aofctl("get", "binding", "b", "-o", "json", tmp_path=tmp_path, now=now, capsys=capsys)
    assert json.loads(out)["status"]["since"] == now - 180.25


def test_time_formats() -> None:
    assert output.timestamp(1796538909.75) == "2026-12-06T06:35:09Z"
    assert [output.timestamp(v) for v in (None, 0, -5.0, 1e300)] == ["-"] * 4
    assert output.moment(1796538909.0, now=1796538909.0 + 59) == "2026-12-06T06:35:09Z (59s ago)"
    assert output.moment(1796538909.0, now=1796538909.0 - 300) == "2026-12-06T06:35:09Z (in 5m)"
    assert [output.duration(v) for v in (None, -1, 340.4, 1234.0, 125_000.0, 11_040_000.0)] == [
        "-",
        "-",
        "340ms",
        "1.2s",
        "2m05s",
        "3h04m",
    ]
