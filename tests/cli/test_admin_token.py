"""`aofctl` sends the admin token it finds (`--token-file`, `$AOFD_ADMIN_TOKEN`, the default
credential file) as `Authorization: Bearer`, over real loopback HTTP to a real admin API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aofd.cli import aofctl_main
from aofd.cli import client as client_mod
from aofd.daemon import admin
from tests.daemon.test_admin_auth import TOKEN, FakeView


def test_the_token_file_wins_then_the_environment_then_the_default_file(tmp_path: Path) -> None:
    given, default = tmp_path / "given", tmp_path / "default"
    given.write_text("from-file\n")
    default.write_text("from-default\n")
    env = {"AOFD_ADMIN_TOKEN": "from-env"}
    assert client_mod.resolve_token(given, environ=env, default_file=default) == "from-file"
    assert client_mod.resolve_token(None, environ=env, default_file=default) == "from-env"
    assert client_mod.resolve_token(None, environ={}, default_file=default) == "from-default"
    assert client_mod.resolve_token(None, environ={}, default_file=tmp_path / "none") is None
    with pytest.raises(client_mod.AdminError, match="cannot read"):
        client_mod.resolve_token(tmp_path / "none", environ={})


async def test_aofctl_reconcile_with_and_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AOFD_ADMIN_TOKEN", raising=False)
    monkeypatch.setattr(client_mod, "DEFAULT_TOKEN_FILE", tmp_path / "absent")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    view = FakeView()
    server, bound = await admin.start_site(admin.AdminApi(view, token=TOKEN), "127.0.0.1:0")
    try:
        refused = await asyncio.to_thread(aofctl_main.main, ["reconcile", "--admin", bound])
        assert refused == 1
        assert "AOFD_ADMIN_TOKEN" in capsys.readouterr().err
        assert view.reconciles == []
        args = ["reconcile", "--admin", bound, "--token-file", str(token_file)]
        assert await asyncio.to_thread(aofctl_main.main, args) == 0
        monkeypatch.setenv("AOFD_ADMIN_TOKEN", TOKEN)
        assert await asyncio.to_thread(aofctl_main.main, ["reconcile", "--admin", bound]) == 0
        assert view.reconciles == [None, None]
    finally:
        await server.stop()


def test_the_token_goes_only_where_the_user_pointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A committed or shared endpoints file, or a squatter on the default port, gets no token."""
    monkeypatch.delenv("AOFD_ADMIN", raising=False)
    default = client_mod.resolve_endpoint(None, cwd=tmp_path)
    assert (default.address, default.trusted) == (client_mod.DEFAULT_ADMIN, False)
    assert client_mod.token_for(default, TOKEN) is None
    assert "not sending the admin token" in capsys.readouterr().err

    state = tmp_path / ".aofd" / "state"
    state.mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    endpoints = state / "endpoints.json"
    endpoints.write_text('{"admin": "127.0.0.1:18999"}')
    endpoints.chmod(0o644)
    mine = client_mod.resolve_endpoint(None, cwd=tmp_path)
    assert (mine.address, mine.trusted) == ("127.0.0.1:18999", True)
    assert client_mod.token_for(mine, TOKEN) == TOKEN

    endpoints.chmod(0o666)  # anyone could have pointed it elsewhere
    assert not client_mod.resolve_endpoint(None, cwd=tmp_path).trusted
    endpoints.chmod(0o644)
    state.chmod(0o777)
    assert not client_mod.resolve_endpoint(None, cwd=tmp_path).trusted

    named = client_mod.resolve_endpoint("10.0.0.5:8081")
    assert client_mod.token_for(named, TOKEN) == TOKEN
    assert "clear text" in capsys.readouterr().err
    monkeypatch.setenv("AOFD_ADMIN", "unix:/run/aofd/admin.sock")
    assert client_mod.token_for(client_mod.resolve_endpoint(None, cwd=tmp_path), TOKEN) == TOKEN
    assert capsys.readouterr().err == ""


async def test_a_held_back_token_gets_a_hint_that_helps() -> None:
    """When aofctl kept the token from an address nobody named, the 401 says how to name it."""
    server, bound = await admin.start_site(admin.AdminApi(FakeView(), token=TOKEN), "127.0.0.1:0")
    try:
        held = client_mod.AdminClient(bound, held_back=True)
        with pytest.raises(client_mod.AdminError, match="give --admin or set AOFD_ADMIN"):
            await asyncio.to_thread(held.get, "/api/v1/status")
    finally:
        await server.stop()
