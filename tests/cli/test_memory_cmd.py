"""`aofctl memory show|clear` against a real admin API over loopback HTTP, whose conversations are the
daemon's real memory store in a temp state dir."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aofd.cli import aofctl_main
from aofd.cli import client as client_mod
from aofd.daemon import admin
from aofd.runtime import memory, ports
from aofd.specs import memory as memory_specs
from aofd.testing import recorders
from tests.daemon.test_admin_approvals import ALICE
from tests.daemon.test_admin_auth import TOKEN

KEY = memory.Key("prod", "slack-prod-bot", "C1/1700000000.000100")


class MemoryView:
    """The admin API's view of memory, as `aofd.daemon.view.AdminView` answers it."""

    def __init__(self, mem: memory.Memory) -> None:
        self.mem = mem

    async def memory_show(self, context: str, binding: str, thread: str) -> list[dict[str, Any]] | None:
        return await self.mem.show(memory.Key(context, binding, thread))

    async def memory_clear(self, context: str, binding: str, thread: str, *, user: ports.UserRef) -> int:
        return await self.mem.clear(memory.Key(context, binding, thread), user=user)


@pytest.fixture
def audit() -> recorders.RecordingAudit:
    return recorders.RecordingAudit()


@pytest.fixture
async def mem(tmp_path: Path, audit: recorders.RecordingAudit) -> memory.Memory:
    store = memory.Memory(state_dir=tmp_path / "state", audit=audit, known_context=lambda c: c == "prod")
    await store.remember(
        KEY,
        memory_specs.MemoryPolicy(),
        user_text="why is nginx crashing?",
        answer_text="OOMKilled",
        tools=[memory.ToolUse("kubectl", True)],
    )
    return store


@pytest.fixture
async def bound(mem: memory.Memory, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.delenv("AOFD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("AOFD_ADMIN", raising=False)
    monkeypatch.setattr(client_mod, "DEFAULT_TOKEN_FILE", Path("/nonexistent/admin-token"))
    api = admin.AdminApi(MemoryView(mem), token=TOKEN, named_tokens={"alice": ALICE})
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


def where(key: memory.Key = KEY) -> list[str]:
    return ["--context", key.context, "--binding", key.binding, "--thread", key.conversation]


async def test_show_prints_the_turns_and_clear_forgets_them_audited(
    bound: str,
    mem: memory.Memory,
    audit: recorders.RecordingAudit,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unnamed = ["--admin", bound, "--token-file", token_file(tmp_path, TOKEN)]
    alice = ["--admin", bound, "--token-file", token_file(tmp_path, ALICE)]

    assert await aofctl("memory", "show", *where(), *unnamed) == 0
    out = capsys.readouterr().out
    assert "# store state: 1 turn(s)" in out
    assert "user: why is nginx crashing?" in out
    assert "tools used: kubectl ok" in out
    assert "answer: OOMKilled" in out

    assert await aofctl("memory", "show", *where(), *unnamed, "-o", "json") == 0
    printed = capsys.readouterr().out
    body = json.loads(printed[printed.index("{\n") :])
    assert body["stores"][0]["turns"][0]["answer_text"] == "OOMKilled"

    other_context = KEY._replace(context="staging")
    assert await aofctl("memory", "show", *where(other_context), *unnamed) == 4
    assert "no such conversation" in capsys.readouterr().err

    assert await aofctl("memory", "clear", *where(), *unnamed) == 1  # who cleared it must be known
    assert "named admin token" in capsys.readouterr().err
    assert len(await mem.recall(KEY, memory_specs.MemoryPolicy())) == 1

    assert await aofctl("memory", "clear", *where(), *alice) == 0
    assert "cleared C1/1700000000.000100 (1 stored copies)" in capsys.readouterr().out
    assert await mem.recall(KEY, memory_specs.MemoryPolicy()) == ()
    assert not list((tmp_path / "state" / "memory" / "prod").glob("*.json"))
    ((context, record),) = [(c, r) for c, r in audit.records if r["event"]["action"] == "memory.cleared"]
    assert context == "prod"
    assert record["user"]["id"] == "admin:alice"
    assert record["event"]["category"] == ["file"]
    assert record["event"]["type"] == ["deletion"]
    assert await aofctl("memory", "show", *where(), *unnamed) == 4


async def test_missing_query_parameters_are_a_clear_error(bound: str, tmp_path: Path) -> None:
    client = client_mod.AdminClient(bound, token=TOKEN)
    status, data = await asyncio.to_thread(client.request, "GET", "/api/v1/memory?context=prod")
    assert status == 400
    assert data["error"] == "missing query parameters: binding, thread"


async def test_clearing_under_an_unknown_or_invalid_context_is_refused_unaudited(
    bound: str, audit: recorders.RecordingAudit
) -> None:
    client = client_mod.AdminClient(bound, token=ALICE)
    query = "binding=slack-prod-bot&thread=C1/1"
    status, data = await asyncio.to_thread(client.request, "DELETE", f"/api/v1/memory?context=nosuch&{query}")
    assert status == 404
    assert "no such Context" in data["error"]
    for bad in ("Bad_Name", "a..b", "x" * 64):
        status, data = await asyncio.to_thread(
            client.request, "DELETE", f"/api/v1/memory?context={bad}&{query}"
        )
        assert status == 400, bad
        assert "not a Context name" in data["error"]
        status, _data = await asyncio.to_thread(
            client.request, "GET", f"/api/v1/memory?context={bad}&{query}"
        )
        assert status == 400
    assert [r for _c, r in audit.records if r["event"]["action"] == "memory.cleared"] == []
