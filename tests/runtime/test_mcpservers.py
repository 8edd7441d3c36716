"""The MCP server pool against real servers: mcp-server-time, the SDK's MCPServer, server-everything.

Every server here is a real process (stdio) or a real loopback HTTP server; executables are
pinned through `executables.paths` as the daemon pins them. No test sleeps for timing: waits
poll a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aofd import settings
from aofd.runtime import commands, mcpservers
from aofd.specs import http_policy, policy
from aofd.specs import mcp as mcp_specs
from aofd.specs.problems import Problem

BIN = Path(sys.executable).parent
FIXTURE = Path(__file__).parent / "bin" / "mcp_fixture.py"
REPO = Path(__file__).resolve().parents[2]
EVERYTHING = REPO / ".cache" / "npm" / "node_modules" / ".bin" / "mcp-server-everything"


def install_fixture(directory: Path, name: str = "mcp-fixture") -> Path:
    """The fixture server as a pinned executable (this interpreter in its shebang)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    target.write_text(f"#!{sys.executable}\n" + FIXTURE.read_text())
    target.chmod(0o755)
    return target


def make_pool(
    tmp_path: Path,
    servers: dict[str, Path],
    *,
    tools: dict[str, Path] | None = None,
    on_change: Callable[[], None] | None = None,
    ledger: commands.Ledger | None = None,
    drain_grace: float = 30.0,
    apply_wait: float = mcpservers.APPLY_WAIT,
    allow_loopback: bool = True,
) -> mcpservers.McpPool:
    """A pool with `servers` pinned as MCP servers (`executables.mcp_servers`) and `tools` as the
    command guard's tools (`executables.paths`); loopback endpoints allowed unless told not to."""
    helpers = tmp_path / "helpers"
    helpers.mkdir(exist_ok=True)
    runner = commands.CommandRunner(
        executables=settings.ExecutablesSpec(paths=tools or {}, helpers_dir=helpers),
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "work",
    )
    return mcpservers.McpPool(
        build_env=runner.build_env,
        servers=servers,
        executables=tools or {},
        endpoints=http_policy.HttpPolicy(allow_loopback=allow_loopback),
        state_dir=tmp_path / "state",
        ledger=ledger,
        on_change=on_change,
        drain_grace=drain_grace,
        apply_wait=apply_wait,
    )


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def group_members(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rpartition(")")[2].split()
                if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                    found.append(int(name))
    return found


async def until(check: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
    """Poll `check` (every 10 ms) until it holds or `deadline` seconds pass."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def pool_closer() -> AsyncIterator[list[mcpservers.McpPool]]:
    pools: list[mcpservers.McpPool] = []
    yield pools
    for pool in pools:
        await pool.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def http_server(argv: list[str], port: int, env: dict[str, str] | None = None) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 30.0
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > end or proc.returncode is not None:
                    raise AssertionError(f"{argv[0]} did not listen on {port}") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


PROD = policy.GuardPolicy(
    context="prod", kubeconfig="/etc/k/prod", namespace="payments", env=(("TEAM", "pay"),)
)
STAGING = policy.GuardPolicy(context="staging", kubeconfig="/etc/k/staging", env=(("TEAM", "qa"),))


# -- real servers -----------------------------------------------------------------------------


async def test_time_server_lists_calls_and_filters(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    paths = {"mcp-server-time": BIN / "mcp-server-time"}
    pool = make_pool(tmp_path, paths)
    pool_closer.append(pool)
    full = mcp_specs.McpServerSpec(name="time", command="mcp-server-time", args=("--local-timezone", "UTC"))
    narrow = mcp_specs.McpServerSpec(
        name="time",
        command="mcp-server-time",
        args=("--local-timezone", "UTC"),
        tools=frozenset({"convert_time"}),
    )
    k_full, k_narrow = mcpservers.key_of("prod", full), mcpservers.key_of("prod", narrow)
    assert await pool.ensure({k_full: (PROD, full), k_narrow: (PROD, narrow)}) == {}

    tools = pool.tools(k_full)
    assert tools is not None
    assert {t.name for t in tools} == {"get_current_time", "convert_time"}
    assert all(t.hints == policy.ToolHints(read_only=True, destructive=False) for t in tools)
    assert all(t.server == "time" and t.input_schema["type"] == "object" for t in tools)
    assert [t.name for t in pool.tools(k_narrow) or ()] == ["convert_time"]
    assert pool.tool(k_narrow, "get_current_time") is None

    result = await pool.call(k_full, "get_current_time", {"timezone": "Europe/Paris"}, timeout=10)
    assert not result.is_error
    assert json.loads(result.text)["timezone"] == "Europe/Paris"
    assert result.size == len(result.text.encode())
    assert result.sha256 == hashlib.sha256(result.text.encode()).hexdigest()

    bad = await pool.call(k_full, "get_current_time", {"timezone": "Mars/Olympus"}, timeout=10)
    assert bad.is_error
    assert "Mars/Olympus" in bad.text

    with pytest.raises(mcpservers.McpCallFailed) as info:
        await pool.call(k_full, "no_such_tool", {}, timeout=10)
    assert info.value.kind == "protocol"
    assert "no_such_tool" in str(info.value)


async def test_two_contexts_are_two_processes_with_their_own_environment(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths)
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(
        name="fx", command="mcp-fixture", args=("stdio",), env=(("FX_MODE", "on"),)
    )
    k_prod, k_staging = mcpservers.key_of("prod", spec), mcpservers.key_of("staging", spec)
    assert k_prod != k_staging
    assert await pool.ensure({k_prod: (PROD, spec), k_staging: (STAGING, spec)}) == {}

    seen = {}
    for name, key in (("prod", k_prod), ("staging", k_staging)):
        out = await pool.call(key, "env", {}, timeout=10)
        seen[name] = json.loads(out.text)
    prod, staging = seen["prod"]["env"], seen["staging"]["env"]
    assert (prod["AOF_CONTEXT"], prod["KUBECONFIG"], prod["TEAM"]) == ("prod", "/etc/k/prod", "pay")
    assert (staging["AOF_CONTEXT"], staging["KUBECONFIG"], staging["TEAM"]) == (
        "staging",
        "/etc/k/staging",
        "qa",
    )
    assert prod["AOF_NAMESPACE"] == "payments"
    assert "AOF_NAMESPACE" not in staging
    for env in (prod, staging):
        assert env["FX_MODE"] == "on"
        assert env["PATH"] == str(tmp_path / "helpers")
        assert "AWS_SECRET_ACCESS_KEY" not in env
        assert env["HOME"].startswith(str(tmp_path / "cache"))
    assert seen["prod"]["cwd"] == str(tmp_path / "state" / "work" / "mcp" / "prod" / "fx")
    assert seen["staging"]["cwd"] == str(tmp_path / "state" / "work" / "mcp" / "staging" / "fx")
    assert pool.pid(k_prod) != pool.pid(k_staging)


async def test_killed_mid_call_fails_closed_then_restarts_with_backoff(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    changes: list[str] = []
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths, on_change=lambda: changes.append("x"))
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",))
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (PROD, spec)}) == {}
    first = pool.pid(key)
    assert first is not None

    call = asyncio.create_task(pool.call(key, "slow", {"seconds": 30}, timeout=60))
    await until(lambda: pool._servers[key].calls == 1, "the call to be in flight")
    os.kill(first, signal.SIGKILL)
    with pytest.raises(mcpservers.McpCallFailed) as info:
        await call
    assert info.value.kind == "closed"
    assert "restarting" in str(info.value)

    await until(lambda: pool.status(key)[0] == "failed" or len(changes) >= 2, "the failure to be noticed")
    assert changes, "on_change was not called when the server died"
    await until(lambda: pool.status(key)[0] == "ready", "the restart", deadline=30)
    assert len(changes) == 2  # failed, then recovered
    second = pool.pid(key)
    assert second is not None
    assert second != first
    assert not alive(first)
    assert (await pool.call(key, "pid", {}, timeout=10)).text == str(second)


async def test_calls_while_down_fail_fast_and_timeouts_have_their_kind(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths)
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",), auto_reconnect=False)
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (PROD, spec)}) == {}
    with pytest.raises(mcpservers.McpCallFailed) as info:
        await pool.call(key, "slow", {"seconds": 30}, timeout=0.3)
    assert info.value.kind == "timeout"
    # The server survives a timed-out call.
    assert (await pool.call(key, "pid", {}, timeout=10)).text == str(pool.pid(key))

    pid = pool.pid(key)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await until(lambda: pool.status(key)[0] == "failed", "the death to be noticed")
    _state, reason = pool.status(key)
    assert reason is not None
    assert "SIGKILL" in reason
    assert "restarting" not in reason
    with pytest.raises(mcpservers.McpCallFailed) as info:
        await pool.call(key, "pid", {}, timeout=10)
    assert info.value.kind == "not_ready"
    # Without auto_reconnect the next ensure (the next apply) starts it again.
    assert await pool.ensure({key: (PROD, spec)}) == {}
    assert pool.pid(key) not in (None, pid)


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("npx", "wrapper or interpreter"),
        ("python3", "wrapper or interpreter"),
        ("/usr/bin/mcp-server-time", "bare command name"),
        ("mcp-server-nothing", "not pinned in the daemon's executables.mcp_servers"),
        ("kubectl", "command-guard tool"),
        ("git", "command-guard tool"),
    ],
)
async def test_unpinned_commands_do_not_start(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool], command: str, why: str
) -> None:
    changes: list[str] = []
    pool = make_pool(
        tmp_path, {"mcp-server-time": BIN / "mcp-server-time"}, on_change=lambda: changes.append("x")
    )
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="bad", command=command)
    key = mcpservers.key_of("prod", spec)
    reasons = await pool.ensure({key: (PROD, spec)})
    assert why in reasons[key]
    assert "restarting" not in reasons[key]
    assert pool.status(key)[0] == "failed"
    assert pool.tools(key) is None
    assert changes == []  # ensure reported it; nothing to wake
    assert not (tmp_path / "state" / "work").exists() or not any((tmp_path / "state" / "work").iterdir())


async def test_a_server_that_exits_at_start_reports_why(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    """mcp-server-git needs `git` on PATH (the helpers dir): without it, it exits before initialize."""
    pool = make_pool(tmp_path, {"mcp-server-git": BIN / "mcp-server-git"})
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="git", command="mcp-server-git", timeout_secs=20)
    key = mcpservers.key_of("prod", spec)
    reasons = await pool.ensure({key: (PROD, spec)})
    assert "exited with code" in reasons[key]
    assert "restarting in" in reasons[key]
    assert (tmp_path / "state" / "mcp" / "prod" / "git.stderr").stat().st_size > 0


async def test_git_server_runs_git_from_the_helpers_dir(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    git = Path("/usr/bin/git")
    if not git.exists():
        pytest.skip("no /usr/bin/git on this host")
    pool = make_pool(tmp_path, {"mcp-server-git": BIN / "mcp-server-git"})
    pool_closer.append(pool)
    (tmp_path / "helpers" / "git").symlink_to(git)
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = await asyncio.create_subprocess_exec(str(git), "init", "-q", str(repo))
    assert await proc.wait() == 0
    spec = mcp_specs.McpServerSpec(name="git", command="mcp-server-git", args=("--repository", str(repo)))
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (PROD, spec)}) == {}
    reset = pool.tool(key, "git_reset")
    assert reset is not None
    assert reset.hints == policy.ToolHints(read_only=False, destructive=True)
    status = await pool.call(key, "git_status", {"repo_path": str(repo)}, timeout=10)
    assert not status.is_error
    assert "branch" in status.text.lower()


# -- lifecycle ----------------------------------------------------------------------------------


async def test_ledger_lists_a_running_server_and_aclose_leaves_no_process(tmp_path: Path) -> None:
    ledger = commands.Ledger(tmp_path / "state" / "commands")
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths, ledger=ledger)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",))
    keys = {mcpservers.key_of(ctx.context, spec): (ctx, spec) for ctx in (PROD, STAGING)}
    try:
        assert await pool.ensure(keys) == {}
        pids = {pool.pid(key) for key in keys}
        entries = [entry for _, entry in ledger.entries()]
        assert {e["pid"] for e in entries if e is not None} == pids
        assert {e["context"] for e in entries if e is not None} == {"prod", "staging"}
    finally:
        await pool.aclose()
    assert ledger.entries() == []
    for pid in pids:
        assert pid is not None
        assert not alive(pid)
        assert group_members(pid) == []
    assert await pool.ensure(keys) == dict.fromkeys(keys, "aofd is shutting down")


async def test_make_before_break_on_a_changed_config(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths, drain_grace=30.0)
    pool_closer.append(pool)
    old = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio", "v1"))
    new = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio", "v2"))
    k_old, k_new = mcpservers.key_of("prod", old), mcpservers.key_of("prod", new)
    assert await pool.ensure({k_old: (PROD, old)}) == {}
    old_pid = pool.pid(k_old)
    assert old_pid is not None

    release = asyncio.Event()

    async def run_in_flight() -> str:
        async with pool.lease([k_old]):
            await release.wait()
            return (await pool.call(k_old, "pid", {}, timeout=10)).text

    run = asyncio.create_task(run_in_flight())
    await until(lambda: pool._servers[k_old].leases == 1, "the lease")
    assert await pool.ensure({k_new: (PROD, new)}) == {}
    new_pid = pool.pid(k_new)
    # The new server is up before the old one goes, and the old one still serves its run.
    assert new_pid is not None
    assert new_pid != old_pid
    assert alive(old_pid)
    assert alive(new_pid)
    # The old key still answers for the run that leases it (the guard and mcp_tools read these).
    assert pool.status(k_old)[0] == "ready"
    assert pool.tool(k_old, "pid") is not None
    release.set()
    assert await run == str(old_pid)
    await until(lambda: not alive(old_pid), "the old server to stop once its run ended")
    assert alive(new_pid)


async def test_a_retired_server_stops_after_the_drain_grace(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths, drain_grace=0.2)
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",))
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (PROD, spec)}) == {}
    pid = pool.pid(key)
    assert pid is not None
    stuck = asyncio.Event()
    async with pool.lease([key]):
        assert await pool.ensure({}) == {}
        await until(lambda: not alive(pid), "the grace to end the lease's hold")
        stuck.set()
    assert stuck.is_set()


async def test_a_changed_context_environment_restarts_the_server(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths, drain_grace=0.0)
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",))
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (PROD, spec)}) == {}
    moved = policy.GuardPolicy(context="prod", kubeconfig="/etc/k/prod-2")
    assert await pool.ensure({key: (moved, spec)}) == {}
    out = json.loads((await pool.call(key, "env", {}, timeout=10)).text)
    assert out["env"]["KUBECONFIG"] == "/etc/k/prod-2"


# -- HTTP, SSE, list_changed ------------------------------------------------------------------


async def test_list_changed_over_streamable_http_relists(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    port = free_port()
    async with http_server([sys.executable, str(FIXTURE), "http", str(port)], port):
        pool = make_pool(tmp_path, {})
        pool_closer.append(pool)
        spec = mcp_specs.McpServerSpec(name="fx", transport="http", endpoint=f"http://127.0.0.1:{port}/mcp")
        key = mcpservers.key_of("prod", spec)
        assert await pool.ensure({key: (PROD, spec)}) == {}
        assert pool.tool(key, "extra") is None
        assert (await pool.call(key, "grow", {}, timeout=10)).text == "grown"
        await until(lambda: pool.tool(key, "extra") is not None, "the re-listing")
        assert (await pool.call(key, "extra", {}, timeout=10)).text == "new"
        await pool.aclose()


async def test_unreachable_http_server_stalls_with_a_reason(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    pool = make_pool(tmp_path, {})
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(
        name="fx", transport="http", endpoint=f"http://127.0.0.1:{free_port()}/mcp", timeout_secs=5
    )
    key = mcpservers.key_of("prod", spec)
    reasons = await pool.ensure({key: (PROD, spec)})
    assert "restarting in" in reasons[key]


def _everything() -> Path:
    if not EVERYTHING.exists():
        pytest.skip(
            "@modelcontextprotocol/server-everything is not installed under .cache/npm "
            "(.ci/run installs it when npm is present)"
        )
    return EVERYTHING


@pytest.mark.parametrize(
    ("mode", "path", "transport"), [("streamableHttp", "/mcp", "http"), ("sse", "/sse", "sse")]
)
async def test_server_everything_over_http_and_sse(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool], mode: str, path: str, transport: str
) -> None:
    exe = _everything()
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(port)}
    async with http_server([str(exe), mode], port, env=env):
        pool = make_pool(tmp_path, {})
        pool_closer.append(pool)
        spec = mcp_specs.McpServerSpec(
            name="every",
            transport="http" if transport == "http" else "sse",
            endpoint=f"http://127.0.0.1:{port}{path}",
        )
        key = mcpservers.key_of("prod", spec)
        assert await pool.ensure({key: (PROD, spec)}) == {}
        assert pool.tool(key, "get-sum") is not None
        result = await pool.call(key, "get-sum", {"a": 2, "b": 3}, timeout=10)
        assert not result.is_error
        assert "5" in result.text
        await pool.aclose()


# -- rendering ----------------------------------------------------------------------------------


async def test_results_are_rendered_capped_and_hashed(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    paths = {"mcp-fixture": install_fixture(tmp_path / "bin")}
    pool = make_pool(tmp_path, paths)
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",))
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (PROD, spec)}) == {}
    picture = await pool.call(key, "picture", {}, timeout=10)
    assert picture.text == "[image image/png 5 bytes]"
    big = await pool.call(key, "big", {"chars": 50_000}, timeout=10)
    assert len(big.text) == mcpservers.MAX_RESULT_CHARS
    assert big.text.endswith(f"[... {50_000 - mcpservers.MAX_RESULT_CHARS} more characters not shown]")
    assert big.size == 50_000
    assert big.sha256 == hashlib.sha256(b"x" * 50_000).hexdigest()


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    assert mcpservers.backoff_delay(1, rand=lambda: 0.5) == 0.5
    assert mcpservers.backoff_delay(3, rand=lambda: 0.5) == 2.0
    assert mcpservers.backoff_delay(30, rand=lambda: 0.5) == mcpservers.BACKOFF_CAP
    assert mcpservers.backoff_delay(1, rand=lambda: 1.0) == pytest.approx(0.6)
    assert mcpservers.backoff_delay(1, rand=lambda: 0.0) == pytest.approx(0.4)


# -- what a crash leaves --------------------------------------------------------------------------

CRASHING_DAEMON = """
import asyncio, sys
from pathlib import Path
from aofd import settings
from aofd.runtime import commands, mcpservers
from aofd.specs import mcp as mcp_specs, policy

async def main() -> None:
    tmp, exe = Path(sys.argv[1]), Path(sys.argv[2])
    paths = {"mcp-fixture": exe}
    runner = commands.CommandRunner(
        executables=settings.ExecutablesSpec(paths=paths), cache_dir=tmp / "cache", work_dir=tmp / "work"
    )
    pool = mcpservers.McpPool(
        build_env=runner.build_env, servers=paths, executables={}, state_dir=tmp / "state",
        ledger=commands.Ledger(tmp / "state" / "commands"),
    )
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio", "linger"))
    key = mcpservers.key_of("prod", spec)
    assert await pool.ensure({key: (policy.GuardPolicy(context="prod"), spec)}) == {}
    print("PID", pool.pid(key), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_server_dies_with_the_daemon_and_its_ledger_entry_is_reaped(tmp_path: Path) -> None:
    """SIGKILL to the daemon: the server gets SIGKILL too (PR_SET_PDEATHSIG; this one would outlive
    the end of its stdin); the next start finds its ledger entry and reports it (nothing is left
    to kill)."""
    exe = install_fixture(tmp_path / "bin")
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_DAEMON, str(tmp_path), str(exe), stdout=asyncio.subprocess.PIPE
    )
    assert daemon.stdout is not None
    try:
        line = b""
        while not line.startswith(b"PID "):  # structlog prints its lines to stdout too
            line = await asyncio.wait_for(daemon.stdout.readline(), 60)
            assert line, "the daemon exited"
        pid = int(line.split()[1])
        assert alive(pid)
    finally:
        daemon.kill()
        await daemon.wait()
    await until(lambda: not alive(pid), "the server to die with its daemon")
    ledger = commands.Ledger(tmp_path / "state" / "commands")
    [(_, entry)] = ledger.entries()
    assert entry is not None
    assert (entry["pid"], entry["context"]) == (pid, "prod")
    [reaped] = commands.reap_survivors(ledger)
    assert (reaped.pid, reaped.context, reaped.killed) == (pid, "prod", False)


async def test_the_reaper_kills_a_server_left_running(tmp_path: Path) -> None:
    """The ledger entry names the server's process exactly (pid and start time): the reaper of a
    later start kills it."""
    ledger = commands.Ledger(tmp_path / "state" / "commands")
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")}, ledger=ledger)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",), auto_reconnect=False)
    key = mcpservers.key_of("prod", spec)
    try:
        assert await pool.ensure({key: (PROD, spec)}) == {}
        pid = pool.pid(key)
        assert pid is not None
        [reaped] = commands.reap_survivors(ledger)
        assert (reaped.pid, reaped.killed) == (pid, True)
        await until(lambda: pool.status(key)[0] == "failed", "the pool to see it killed")
    finally:
        await pool.aclose()
    assert not alive(pid)


async def test_a_token_in_the_endpoint_never_reaches_the_reason(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    port = free_port()
    async with http_server([sys.executable, str(FIXTURE), "http", str(port)], port):
        pool = make_pool(tmp_path, {})
        pool_closer.append(pool)
        endpoint = f"http://127.0.0.1:{port}/nope?token=s3cr3t-t0ken"
        spec = mcp_specs.McpServerSpec(name="fx", transport="sse", endpoint=endpoint, timeout_secs=5)
        key = mcpservers.key_of("prod", spec)
        reasons = await pool.ensure({key: (PROD, spec)})
        await pool.aclose()
    assert "404" in reasons[key]
    assert "s3cr3t-t0ken" not in reasons[key]
    with_user = mcp_specs.McpServerSpec(
        name="fx", transport="sse", endpoint="http://u:pa55word@127.0.0.1:9/x"
    )
    assert mcp_specs._server_problems(with_user, ()) == [
        Problem(("endpoint",), "MCP server 'fx': endpoint refused: credentials in the URL are not allowed")
    ]
    raw = f"failed for url {endpoint}"
    assert mcpservers._scrub(raw, spec) == f"failed for url http://127.0.0.1:{port}/nope"


# -- review findings: pinning, env, bounded starts, endpoints, sizes, dirs, shutdown --------------


def _marker_tool(directory: Path, name: str, marker: Path) -> Path:
    """A pinned "tool" that records it ran (a stand-in for kubectl run with prod's kubeconfig)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    target.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"open({str(marker)!r}, 'w').write(repr(sys.argv[1:]) + os.environ.get('KUBECONFIG', ''))\n"
    )
    target.chmod(0o755)
    return target


async def test_a_guard_tool_is_never_started_as_a_server_even_when_listed(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    marker = tmp_path / "ran"
    tool = _marker_tool(tmp_path / "bin", "mytool", marker)
    pool = make_pool(tmp_path, {"mytool": tool}, tools={"mytool": tool})
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="bad", command="mytool", args=("delete", "namespace", "prod"))
    key = mcpservers.key_of("prod", spec)
    reasons = await pool.ensure({key: (PROD, spec)})
    assert "command-guard tool" in reasons[key]
    assert "executables.paths" in reasons[key]
    assert not marker.exists()
    # Pinned only as a guard tool (the reviewer's kubectl case): not a server either.
    only_tool = make_pool(tmp_path, {}, tools={"mytool": tool})
    pool_closer.append(only_tool)
    reasons = await only_tool.ensure({key: (PROD, spec)})
    assert "command-guard tool" in reasons[key]
    assert not marker.exists()


async def test_an_unpinned_server_names_the_setting_and_not_the_inventory(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    pool = make_pool(tmp_path, {"mcp-secret-inventory": BIN / "mcp-server-time"})
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="time", command="mcp-server-time")
    key = mcpservers.key_of("prod", spec)
    reason = (await pool.ensure({key: (PROD, spec)}))[key]
    assert "executables.mcp_servers" in reason
    assert "mcp-secret-inventory" not in reason


async def test_git_config_in_a_server_env_is_refused_before_anything_starts(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    """The review's reproduction: GIT_CONFIG_KEY_0=core.fsmonitor makes git_status run a shell."""
    marker = tmp_path / "pwned"
    pool = make_pool(tmp_path, {"mcp-server-git": BIN / "mcp-server-git"})
    pool_closer.append(pool)
    env = (
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "core.fsmonitor"),
        ("GIT_CONFIG_VALUE_0", f"touch {marker}; false"),
    )
    spec = mcp_specs.McpServerSpec(name="git", command="mcp-server-git", env=env)
    key = mcpservers.key_of("prod", spec)
    reason = (await pool.ensure({key: (PROD, spec)}))[key]
    assert "env GIT_CONFIG_COUNT" in reason
    assert "restarting" not in reason
    assert pool.pid(key) is None
    assert not marker.exists()
    assert f"touch {marker}" not in reason  # never an env value


def _silent_server(directory: Path, gate: Path) -> Path:
    """A stdio "server" that answers nothing until `gate` exists, then serves the fixture."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "mcp-slow"
    target.write_text(
        f"#!{sys.executable}\nimport os, sys, time\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}, {str(FIXTURE)!r}, 'stdio'])\n"
    )
    target.chmod(0o755)
    return target


async def test_a_hung_initialize_holds_apply_only_for_the_apply_wait(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    gate = tmp_path / "gate"
    changes: list[str] = []
    pool = make_pool(
        tmp_path,
        {"mcp-slow": _silent_server(tmp_path / "bin", gate)},
        apply_wait=0.5,
        on_change=lambda: changes.append("x"),
    )
    pool_closer.append(pool)
    spec = mcp_specs.McpServerSpec(name="slow", command="mcp-slow", timeout_secs=300)
    key = mcpservers.key_of("prod", spec)
    loop = asyncio.get_running_loop()
    began = loop.time()
    reasons = await pool.ensure({key: (PROD, spec)})
    assert loop.time() - began < 5.0  # not timeout_secs (300 s)
    assert "still starting after 0.5 s" in reasons[key]
    assert pool.status(key)[0] == "starting"
    assert changes == []
    gate.touch()  # it answers now: the pool asks for the re-apply that clears the stall
    await until(lambda: changes != [], "on_change after the late start")
    assert pool.status(key) == ("ready", None)
    assert await pool.ensure({key: (PROD, spec)}) == {}


async def test_working_dirs_of_contexts_and_servers_never_collide(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")})
    pool_closer.append(pool)
    one = mcp_specs.McpServerSpec(name="c", command="mcp-fixture", args=("stdio",))
    two = mcp_specs.McpServerSpec(name="b-c", command="mcp-fixture", args=("stdio",))
    k_one, k_two = mcpservers.key_of("a-b", one), mcpservers.key_of("a", two)
    wanted = {
        k_one: (policy.GuardPolicy(context="a-b", kubeconfig="/k/a-b.yaml"), one),
        k_two: (policy.GuardPolicy(context="a", kubeconfig="/k/a.yaml"), two),
    }
    assert await pool.ensure(wanted) == {}
    cwds = {json.loads((await pool.call(k, "env", {}, timeout=10)).text)["cwd"] for k in wanted}
    assert cwds == {
        str(tmp_path / "state" / "work" / "mcp" / "a-b" / "c"),
        str(tmp_path / "state" / "work" / "mcp" / "a" / "b-c"),
    }


async def test_ensure_racing_aclose_starts_nothing(tmp_path: Path) -> None:
    ledger = commands.Ledger(tmp_path / "state" / "commands")
    pool = make_pool(tmp_path, {"mcp-fixture": install_fixture(tmp_path / "bin")}, ledger=ledger)
    spec = mcp_specs.McpServerSpec(name="fx", command="mcp-fixture", args=("stdio",))
    key = mcpservers.key_of("prod", spec)
    pending = asyncio.create_task(pool.ensure({key: (PROD, spec)}))
    await asyncio.sleep(0)  # ensure is now in the SDK import (a thread)
    await pool.aclose()
    assert await pending == {key: "aofd is shutting down"}
    assert pool.pid(key) is None
    assert ledger.entries() == []


@contextlib.asynccontextmanager
async def raw_http(
    body: bytes, content_type: str = "application/json", *, length: bool = True
) -> AsyncIterator[int]:
    """A loopback HTTP server that answers every request with `body` (chunked when not `length`)."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b" ", 2)[0].decode())
            size = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    size = int(line.split(b":", 1)[1])
            await reader.readexactly(size)
            headers = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
            if length:
                writer.write(f"{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            else:
                writer.write(f"{headers}Transfer-Encoding: chunked\r\n\r\n".encode())
                for start in range(0, len(body), 65536):
                    part = body[start : start + 65536]
                    writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_endpoints_follow_the_daemons_http_policy(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    async with raw_http(b"{}") as port:
        pool = make_pool(tmp_path, {}, allow_loopback=False)
        pool_closer.append(pool)
        wanted = {}
        for endpoint in (
            f"http://127.0.0.1:{port}/mcp",
            f"http://localhost:{port}/mcp",
            "http://169.254.169.254/x",
        ):
            spec = mcp_specs.McpServerSpec(name="ep", transport="http", endpoint=endpoint, timeout_secs=5)
            wanted[mcpservers.key_of("prod", spec)] = (PROD, spec)
        reasons = await pool.ensure(wanted)
    assert len(reasons) == 3
    for reason in reasons.values():
        assert reason.startswith("endpoint refused: ")
        assert "restarting" not in reason


async def test_a_host_resolving_to_loopback_is_refused(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    """`127.1` and `2130706433` are not IP literals to the policy's parser, but connect to 127.0.0.1."""
    pool = make_pool(tmp_path, {}, allow_loopback=False)
    pool_closer.append(pool)
    wanted = {}
    for host in ("127.1", "2130706433"):
        spec = mcp_specs.McpServerSpec(
            name="ep", transport="http", endpoint=f"http://{host}:9/mcp", timeout_secs=5
        )
        wanted[mcpservers.key_of("prod", spec)] = (PROD, spec)
    reasons = await pool.ensure(wanted)
    assert sorted(reasons.values()) == [
        "endpoint refused: 127.1 resolves to 127.0.0.1 (loopback address 127.0.0.1 is not allowed)",
        "endpoint refused: 2130706433 resolves to 127.0.0.1 (loopback address 127.0.0.1 is not allowed)",
    ]


async def test_a_response_body_never_reaches_the_stall_reason(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    leak = b'{"AccessKeyId": "ASIAEXAMPLEKEY1234", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG"}'
    async with raw_http(leak) as port:
        pool = make_pool(tmp_path, {})
        pool_closer.append(pool)
        spec = mcp_specs.McpServerSpec(
            name="ep", transport="http", endpoint=f"http://127.0.0.1:{port}/mcp", timeout_secs=5
        )
        key = mcpservers.key_of("prod", spec)
        reason = (await pool.ensure({key: (PROD, spec)}))[key]
        await pool.aclose()
    assert "ASIAEXAMPLE" not in reason
    assert "wJalr" not in reason


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_response_over_the_cap_ends_the_start(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool], length: bool
) -> None:
    huge = (
        b'{"jsonrpc": "2.0", "id": 0, "result": {"pad": "'
        + b"x" * (mcpservers.MAX_HTTP_BYTES + 1024)
        + b'"}}'
    )
    async with raw_http(huge, length=length) as port:
        pool = make_pool(tmp_path, {})
        pool_closer.append(pool)
        spec = mcp_specs.McpServerSpec(
            name="ep", transport="http", endpoint=f"http://127.0.0.1:{port}/mcp", timeout_secs=10
        )
        key = mcpservers.key_of("prod", spec)
        reason = (await pool.ensure({key: (PROD, spec)}))[key]
        await pool.aclose()
    assert f"over {mcpservers.MAX_HTTP_BYTES} bytes" in reason


async def test_an_event_over_the_cap_ends_an_sse_start(
    tmp_path: Path, pool_closer: list[mcpservers.McpPool]
) -> None:
    event = b"event: endpoint\ndata: /" + b"x" * (mcpservers.MAX_HTTP_BYTES + 1024) + b"\n\n"
    async with raw_http(event, "text/event-stream", length=False) as port:
        pool = make_pool(tmp_path, {})
        pool_closer.append(pool)
        spec = mcp_specs.McpServerSpec(
            name="ep", transport="sse", endpoint=f"http://127.0.0.1:{port}/sse", timeout_secs=10
        )
        key = mcpservers.key_of("prod", spec)
        reason = (await pool.ensure({key: (PROD, spec)}))[key]
        await pool.aclose()
    assert "byte limit" in reason  # the SDK's 1 MiB event limit, under MAX_HTTP_BYTES
