"""`aofctl approvals`, `aofctl approve ID` and `aofctl deny ID` against a real admin API over loopback
HTTP, whose approvals are a real store decided through a real command guard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aofd.cli import aofctl_main
from aofd.cli import client as client_mod
from aofd.daemon import admin
from aofd.runtime import approvals
from tests.daemon.test_admin_approvals import ALICE, BOB, ApprovalsFakeView, Clock
from tests.daemon.test_admin_auth import TOKEN


@pytest.fixture
def fake(tmp_path: Path) -> ApprovalsFakeView:
    return ApprovalsFakeView(Clock(), tmp_path)


@pytest.fixture
async def bound(fake: ApprovalsFakeView, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.delenv("AOFD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("AOFD_ADMIN", raising=False)
    monkeypatch.setattr(client_mod, "DEFAULT_TOKEN_FILE", Path("/nonexistent/admin-token"))
    api = admin.AdminApi(fake, token=TOKEN, named_tokens={"alice": ALICE, "bob": BOB})
    server, address = await admin.start_site(api, "127.0.0.1:0")
    try:
        yield address
    finally:
        await server.stop()


def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / f"token-{token[:5]}"
    path.write_text(token + "\n")
    return str(path)


async def aofctl(*args: str) -> int:
    return await asyncio.to_thread(aofctl_main.main, list(args))


async def test_approvals_lists_pending_requests_as_a_table_json_and_yaml(
    bound: str, fake: ApprovalsFakeView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--admin", bound, "--token-file", token_file(tmp_path, TOKEN)]
    assert await aofctl("approvals", *common) == 0
    assert "No pending approvals" in capsys.readouterr().out
    req = fake.ask(("kubectl", "delete", "pod", "x", "--password=hunter2-secret"))
    fake.clock.now += 75
    assert await aofctl("approvals", *common) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["ID", "CONTEXT", "ARGV", "REQUESTER", "AGE", "EXPIRES", "IN"]
    assert row.startswith(req.id[:12] + " ")
    assert req.id[:13] not in row
    assert " prod " in row
    assert '["kubectl", "delete", "pod", "x", ' in row
    assert "slack:U0REQ" in row
    assert " 1m15s " in row
    assert row.endswith("3m45s")
    assert "hunter2" not in out
    assert await aofctl("approvals", "-o", "json", *common) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item["id"] == req.id
    assert item["ageSeconds"] == 75
    assert await aofctl("approvals", "-o", "yaml", *common) == 0
    assert f"id: {req.id}" in capsys.readouterr().out


async def test_approve_and_deny_print_the_outcome_and_exit_by_it(
    bound: str, fake: ApprovalsFakeView, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = fake.ask(("kubectl", "delete", "pod", "x"))
    other = fake.ask(("kubectl", "delete", "pod", "y"), run_id="run-2", allowed_users=("admin:bob",))
    unnamed = ["--admin", bound, "--token-file", token_file(tmp_path, TOKEN)]
    alice = ["--admin", bound, "--token-file", token_file(tmp_path, ALICE)]

    assert await aofctl("approve", req.id[:12], *unnamed) == 1
    assert "named admin token" in capsys.readouterr().err
    assert await aofctl("approve", other.id[:12], *alice) == 1
    assert "admin:alice is not in Context prod's approval.allowed_users" in capsys.readouterr().err

    assert await aofctl("approve", req.id[:12], *alice) == 0
    out = capsys.readouterr().out
    assert "granted by admin:alice" in out
    assert req.id in out
    outcome = fake.store.outcome(req.id)
    assert outcome is not None
    assert outcome.state is approvals.State.GRANTED

    assert await aofctl("deny", req.id, *alice) == 3  # no longer pending
    assert "already granted" in capsys.readouterr().err
    assert await aofctl("deny", "ab" * 32, *alice) == 4
    assert await aofctl("approve", "nothex", *alice) == 4
    capsys.readouterr()

    bob = ["--admin", bound, "--token-file", token_file(tmp_path, BOB)]
    assert await aofctl("deny", other.id[:8], *bob) == 0
    assert "denied by admin:bob" in capsys.readouterr().out
    assert await aofctl("approve", other.id, *alice, "-o", "json") == 3
    printed = capsys.readouterr().out  # the daemon's log lines (same process) come first
    body = json.loads(printed[printed.index("{\n") :])
    assert body["decision"] == "already_decided"
