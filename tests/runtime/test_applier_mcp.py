"""The applier and MCP servers: started at apply per Context, a server that cannot start stalls the
bindings that need it (`McpServerNotReady`, shown by `aofctl get`), a changed config is
make-before-break, and a server nobody uses any more is stopped. Real processes throughout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aofd.resources.kinds.base import LoadedResource
from aofd.runtime import mcpservers
from aofd.runtime.providers import registry
from aofd.settings import ModelsSpec
from aofd.specs import mcp as mcp_specs
from aofd.testing import resources as res
from tests.runtime.fakes import harness
from tests.runtime.test_mcpservers import alive, install_fixture, make_pool, until

JSON = {"Content-Type": "application/json"}
PROVIDERS = {"ANTHROPIC_API_KEY": "sk-test-not-used"}


def mcp_flow(name: str, servers: list[dict[str, Any]]) -> tuple[LoadedResource, LoadedResource]:
    agent = res.agent(
        f"{name}-agent", model="anthropic:claude-sonnet-4", instructions="You help.", mcp_servers=servers
    )
    flow = res.flow(name, nodes=[{"id": "a", "type": "Agent", "config": {"agent": f"{name}-agent"}}])
    return agent, flow


def fixture_server(*args: str, command: str = "mcp-fixture") -> dict[str, Any]:
    return {"name": "fx", "command": command, "args": ["stdio", *args]}


def rig(pool: mcpservers.McpPool | None) -> harness.Rig:
    return harness.Rig(providers=registry.Providers(models=ModelsSpec(), environ=PROVIDERS), mcp=pool)


def bound(name: str, ctx: str, trigger: str, servers: list[dict[str, Any]]) -> Any:
    agent, flow = mcp_flow(name, servers)
    return res.bind(
        name, ctx=res.context(ctx), flow_res=flow, agents=[agent], trigger_res=res.trigger(trigger, "HTTP")
    )


def key(ctx: str, server: dict[str, Any]) -> mcpservers.ServerKey:
    spec = mcp_specs.McpServerSpec(name=server["name"], command=server["command"], args=tuple(server["args"]))
    return mcpservers.key_of(ctx, spec)


async def test_servers_start_at_apply_one_per_context(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")})
    server = fixture_server()
    prod, staging = (
        bound("b-prod", "prod", "hook", [server]),
        bound("b-staging", "staging", "hook2", [server]),
    )
    try:
        async with rig(pool) as r:
            outcome = await r.apply([prod, staging])
            assert outcome.reasons == {}
            assert outcome.mcp_waiting == 0
            k_prod, k_staging = key("prod", server), key("staging", server)
            assert pool.status(k_prod)[0] == pool.status(k_staging)[0] == "ready"
            assert pool.pid(k_prod) != pool.pid(k_staging)
            assert (await r.send("http", "hook", b"{}", JSON))[0] == 202
    finally:
        await pool.aclose()


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("npx", "wrapper or interpreter"),
        ("mcp-server-nothing", "not pinned in the daemon's executables.mcp_servers"),
    ],
)
async def test_an_unpinned_server_stalls_its_binding_with_a_reason(
    tmp_path: Path, command: str, why: str
) -> None:
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")})
    bad = bound("b-bad", "prod", "hook", [fixture_server(command=command)])
    good = bound("b-good", "prod", "hook2", [fixture_server()])
    try:
        async with rig(pool) as r:
            outcome = await r.apply([bad, good])
            assert outcome.reasons == {bad.key: "McpServerNotReady"}
            message = outcome.stalled[bad.key]
            assert message.startswith("MCP server fx (Context prod): ")
            assert why in message
            assert outcome.mcp_waiting == 1
            assert (await r.send("http", "hook", b"{}", JSON))[0] == 503
            assert (await r.send("http", "hook2", b"{}", JSON))[0] == 202
            assert r.not_run == [("http", "McpServerNotReady")]
    finally:
        await pool.aclose()


async def test_without_a_pool_mcp_bindings_stall(tmp_path: Path) -> None:
    plain = res.bind("b-plain", ctx=res.context("prod"), trigger_res=res.trigger("hook2", "HTTP"))
    with_mcp = bound("b-mcp", "prod", "hook", [fixture_server()])
    async with rig(None) as r:
        outcome = await r.apply([with_mcp, plain])
        assert outcome.reasons == {with_mcp.key: "McpServerNotReady"}
        assert "runs no MCP servers" in outcome.stalled[with_mcp.key]


async def test_a_recovered_server_clears_the_stall_at_the_next_apply(tmp_path: Path) -> None:
    """A server whose command is pinned later (here: the executable appears) runs at the next apply."""
    exe = tmp_path / "bin" / "mcp-fixture"
    pool = make_pool(tmp_path, {"mcp-fixture": exe})
    binding = bound("b", "prod", "hook", [fixture_server()])
    try:
        async with rig(pool) as r:
            outcome = await r.apply([binding])
            assert outcome.reasons == {binding.key: "McpServerNotReady"}
            assert "cannot start" in outcome.stalled[binding.key]
            install_fixture(tmp_path / "bin")
            # The owner restarts with backoff; a later apply reports what the pool says then.
            await until(lambda: pool.status(key("prod", fixture_server()))[0] == "ready", "the restart", 30)
            outcome = await r.apply([binding])
            assert outcome.reasons == {}
            assert outcome.mcp_waiting == 0
            assert (await r.send("http", "hook", b"{}", JSON))[0] == 202
    finally:
        await pool.aclose()


async def test_a_changed_server_config_is_make_before_break(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")})
    v1, v2 = fixture_server("v1"), fixture_server("v2")
    try:
        async with rig(pool) as r:
            assert (await r.apply([bound("b", "prod", "hook", [v1])])).reasons == {}
            old_key, new_key = key("prod", v1), key("prod", v2)
            old_pid = pool.pid(old_key)
            assert old_pid is not None
            release = asyncio.Event()

            async def run_in_flight() -> str:  # what the engine does around a run
                async with pool.lease([old_key]):
                    await release.wait()
                    return (await pool.call(old_key, "pid", {}, timeout=10)).text

            run = asyncio.create_task(run_in_flight())
            await until(lambda: pool._servers[old_key].leases == 1, "the run's lease")
            assert (await r.apply([bound("b", "prod", "hook", [v2])])).reasons == {}
            new_pid = pool.pid(new_key)
            assert new_pid is not None
            assert new_pid != old_pid
            assert alive(old_pid), "the old server serves its run until the run ends"
            assert (await r.send("http", "hook", b"{}", JSON))[0] == 202  # no event lost meanwhile
            release.set()
            assert await run == str(old_pid)
            await until(lambda: not alive(old_pid), "the old server to stop")
            assert alive(new_pid)
    finally:
        await pool.aclose()


async def test_a_server_nobody_uses_is_stopped(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")})
    server = fixture_server()
    plain = res.bind("b", ctx=res.context("prod"), trigger_res=res.trigger("hook", "HTTP"))
    try:
        async with rig(pool) as r:
            assert (await r.apply([bound("b", "prod", "hook", [server])])).reasons == {}
            pid = pool.pid(key("prod", server))
            assert pid is not None
            assert (await r.apply([plain])).reasons == {}
            await until(lambda: not alive(pid), "the unused server to stop")
            assert pool.status(key("prod", server))[0] == "stopped"
    finally:
        await pool.aclose()


async def test_old_servers_retire_only_after_the_new_table_is_live(tmp_path: Path) -> None:
    """A run planned on the old table that takes its lease after the servers started (the applier's
    step 1b) but before the table swap still finds its server, and it serves that run."""
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")})
    v1, v2 = fixture_server("v1"), fixture_server("v2")
    old_key = key("prod", v1)
    real_ensure = pool.ensure
    seen: list[tuple[bool, str]] = []
    release = asyncio.Event()
    leased = asyncio.Event()
    runs: list[asyncio.Task[str]] = []

    async def run_on_the_old_table() -> str:
        async with pool.lease([old_key]):
            leased.set()
            await release.wait()
            return (await pool.call(old_key, "pid", {}, timeout=10)).text

    async def ensure_then_lease(wanted: Any, *, retire: bool = True) -> dict[Any, str]:
        out = await real_ensure(wanted, retire=retire)
        if old_key not in wanted and not runs:
            seen.append((old_key in pool._servers, pool.status(old_key)[0]))
            runs.append(asyncio.create_task(run_on_the_old_table()))
            await leased.wait()
        return out

    pool.ensure = ensure_then_lease  # type: ignore[method-assign]
    try:
        async with rig(pool) as r:
            assert (await r.apply([bound("b", "prod", "hook", [v1])])).reasons == {}
            old_pid = pool.pid(old_key)
            assert (await r.apply([bound("b", "prod", "hook", [v2])])).reasons == {}
            assert seen == [(True, "ready")]  # not retired before the swap
            release.set()
            assert await runs[0] == str(old_pid)
            assert old_pid is not None
            await until(lambda: not alive(old_pid), "the old server to stop once its run ended")
    finally:
        release.set()
        await asyncio.gather(*runs, return_exceptions=True)
        await pool.aclose()
