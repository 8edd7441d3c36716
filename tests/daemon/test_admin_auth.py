"""The admin API's access rules, over real loopback HTTP and a real unix socket: a bearer token
guards everything but `/healthz` and `/readyz` (and `/metrics` when configured open), a
non-loopback bind without a token is refused, and the unix socket is created 0660."""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aofd import errors, settings
from aofd.daemon import admin
from aofd.resources import ids

TOKEN = "t0ken-for-the-admin-api-0123456789"


class FakeView:
    """A `DaemonView` that records what was asked of it."""

    def __init__(self) -> None:
        self.reconciles: list[str | None] = []
        self.diffs: list[dict[str, bytes]] = []

    def healthy(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        return True, ""

    def status(self) -> dict[str, Any]:
        return {"ready": True}

    def resources(self, kind: ids.Kind | None, name: str | None) -> list[dict[str, Any]]:
        return []

    def inventory(self) -> dict[str, Any]:
        return {}

    def request_reconcile(self, source: str | None) -> list[str]:
        self.reconciles.append(source)
        return ["local"]

    def diff(self, source: str | None, files: Mapping[str, bytes]) -> dict[str, Any]:
        self.diffs.append(dict(files))
        return {"errors": [], "text": "0 to create, 0 to update, 0 to delete"}

    def metrics(self) -> tuple[bytes, str]:
        return b"aofd_up 1\n", "text/plain; version=0.0.4"


@contextlib.asynccontextmanager
async def serving(api: admin.AdminApi, address: str = "127.0.0.1:0", **kw: Any) -> AsyncIterator[str]:
    server, bound = await admin.start_site(api, address, **kw)
    try:
        yield bound
    finally:
        await server.stop()


async def call(
    bound: str, method: str, path: str, *, token: str | None = None, body: Any = None
) -> tuple[int, str, Mapping[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    payload = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        payload = io.BytesIO(json.dumps(body).encode())
    if bound.startswith("unix:"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=bound[5:])
        base = "http://localhost"
    else:
        connector = aiohttp.TCPConnector()
        base = f"http://{bound}"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, base + path, headers=headers, data=payload) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/reconcile"),
        ("POST", "/api/v1/diff"),
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/resources/Context"),
        ("GET", "/api/v1/inventory"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ],
)
async def test_without_the_token_every_other_route_answers_401_and_does_nothing(
    method: str, path: str
) -> None:
    view = FakeView()
    async with serving(admin.AdminApi(view, token=TOKEN)) as bound:
        for token in (None, "wrong", TOKEN + "x", ""):
            status, text, headers = await call(bound, method, path, token=token, body={"files": {}})
            assert status == 401
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in text
    assert view.reconciles == []
    assert view.diffs == []


async def test_with_the_token_reconcile_and_diff_work() -> None:
    view = FakeView()
    async with serving(admin.AdminApi(view, token=TOKEN)) as bound:
        status, _, _ = await call(bound, "POST", "/api/v1/reconcile", token=TOKEN)
        assert status == 202
        status, text, _ = await call(bound, "POST", "/api/v1/diff", token=TOKEN, body={"files": {}})
        assert status == 200
        assert "0 to update" in text
    assert view.reconciles == [None]
    assert view.diffs == [{}]


async def test_health_and_readiness_are_open_and_metrics_closed_unless_configured_open() -> None:
    async with serving(admin.AdminApi(FakeView(), token=TOKEN)) as bound:
        assert (await call(bound, "GET", "/healthz"))[0] == 200
        assert (await call(bound, "GET", "/readyz"))[0] == 200
        assert (await call(bound, "GET", "/metrics"))[0] == 401
        assert (await call(bound, "GET", "/metrics", token=TOKEN))[0] == 200
    async with serving(admin.AdminApi(FakeView(), token=TOKEN, metrics_open=True)) as bound:
        status, text, _ = await call(bound, "GET", "/metrics")
        assert (status, text) == (200, "aofd_up 1\n")
        assert (await call(bound, "GET", "/api/v1/status"))[0] == 401


@pytest.mark.parametrize("address", ["0.0.0.0:8081", "[::]:8081", "10.1.2.3:8081", "example.com:8081"])
def test_a_bind_other_hosts_can_reach_needs_a_token(address: str) -> None:
    with pytest.raises(errors.ConfigError, match="token") as caught:
        admin.check_exposure(address, token=None)
    assert address in str(caught.value)
    admin.check_exposure(address, token=TOKEN)  # with a token: allowed


@pytest.mark.parametrize("address", ["127.0.0.1:8081", "[::1]:8081", "localhost:8081", "unix:/run/a.sock"])
def test_loopback_and_unix_binds_may_go_without_a_token(address: str) -> None:
    admin.check_exposure(address, token=None)


def test_aofd_serve_refuses_a_public_admin_bind_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    proc = subprocess.run(
        [sys.executable, "-m", "aofd", "serve", str(tmp_path / "repo"), "--admin", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "0.0.0.0:0" in proc.stdout + proc.stderr
    assert "token" in proc.stdout + proc.stderr
    assert not (tmp_path / "repo" / ".aofd" / "state" / "endpoints.json").exists()


def test_the_token_comes_from_the_file_then_the_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin-token").write_text(TOKEN + "-cred\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert admin.load_token(settings.AdminApiSpec(), environ=env) == TOKEN + "-cred"
    assert admin.load_token(settings.AdminApiSpec(), environ={}) is None
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    spec = settings.AdminApiSpec(token_file=file)
    assert admin.load_token(spec, environ=env) == TOKEN


@pytest.mark.parametrize("content", ["", "s3cr\n"])
def test_an_empty_or_short_token_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    file = tmp_path / "token"
    file.write_text(content)
    with pytest.raises(errors.ConfigError, match=r"admin_api\.token_file") as caught:
        admin.load_token(settings.AdminApiSpec(token_file=file), environ={})
    assert content.strip() == "" or content.strip() not in str(caught.value)


def test_a_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read"):
        admin.load_token(settings.AdminApiSpec(token_file=tmp_path / "nope"), environ={})


async def test_the_unix_socket_is_created_0660_even_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    previous = os.umask(0)
    try:
        async with serving(admin.AdminApi(FakeView(), token=TOKEN), f"unix:{path}") as bound:
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            assert (await call(bound, "GET", "/healthz"))[0] == 200
            assert (await call(bound, "POST", "/api/v1/reconcile"))[0] == 401
    finally:
        os.umask(previous)


async def test_the_unix_socket_gets_the_configured_group(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "admin.sock"
    async with serving(admin.AdminApi(FakeView()), f"unix:{path}", socket_group=group, socket_mode=0o600):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, os.getgid())


async def test_an_unknown_socket_group_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="no-such-group-here"):
        await admin.start_site(
            admin.AdminApi(FakeView()), f"unix:{tmp_path / 'a.sock'}", socket_group="no-such-group-here"
        )
    assert not (tmp_path / "a.sock").exists()


def test_admin_api_settings_are_read_from_the_config(tmp_path: Path) -> None:
    from aofd.daemon import config

    (tmp_path / "aofd.yaml").write_text(
        "admin: unix:/tmp/x.sock\n"
        "admin_api:\n  token_file: creds/admin-token\n  metrics_open: true\n"
        "  socket_group: aofd-admin\n  socket_mode: '0640'\n  max_diff_bytes: 1048576\n"
    )
    cfg = config.load(tmp_path / "aofd.yaml")
    assert cfg.admin_api == settings.AdminApiSpec(
        token_file=tmp_path / "creds" / "admin-token",
        metrics_open=True,
        socket_group="aofd-admin",
        socket_mode=0o640,
        max_diff_bytes=1048576,
    )
    flag = config.load(tmp_path / "aofd.yaml", config.Overrides(admin_token_file=Path("/etc/t")))
    assert flag.admin_api.token_file == Path("/etc/t")
    assert flag.admin_api.metrics_open


def test_a_socket_mode_open_to_everyone_is_refused() -> None:
    with pytest.raises(ValueError, match="other users"):
        settings.AdminApiSpec(socket_mode="0666")  # type: ignore[arg-type]
