"""MCP servers per Context: start, list, call, restart, retire (effects; the only module importing `mcp`).

This module owns the daemon's MCP servers (`McpPool`, one per daemon):

- **Per Context, never shared.** A server is keyed by `(Context, McpServerSpec.digest)`: the
  same config under prod and staging is two servers, and a changed config is a new key.
- **stdio servers** run under an aofd-owned transport, not the SDK's `stdio_client` (which
  inherits `HOME`, `PATH`, `USER` ... from the daemon and hides the pid): argv[0] is the absolute
  path the daemon pins for the bare `command` in `executables.mcp_servers` (never a command-guard
  tool of `executables.paths`; paths, wrappers and interpreters are refused), the environment is
  the Context's (`build_env`: the command guard's, nothing inherited) with the server's own `env`
  on top (`policy.server_env_problems` refused), cwd is the Context's `working_dir` or
  `<state_dir>/work/mcp/<context>/<server>`, the process leads its own session
  and gets SIGKILL when the daemon dies (`commands.die_with_parent`), and it is listed in the
  command `Ledger` while it runs, so a crash's survivors are reaped at the next start. Its stderr
  goes to `<state_dir>/mcp/<context>/<server>.stderr` (at most `STDERR_CAP` bytes per start).
- **http / sse servers** use the SDK's `streamable_http_client` / `sse_client` (redirects to
  another origin are not followed) over an httpx client whose response bodies are capped
  (`MAX_HTTP_BYTES`); the endpoint, and the addresses its host resolves to, must pass the
  daemon's `HttpPolicy` at every start.
- **One owner task per server** holds the transport and the `ClientSession` (anyio scopes must
  exit in the task that entered them): it initializes, lists the tools (every page, the spec's
  filter applied, descriptions and schemas capped), re-lists on
  `notifications/tools/list_changed`, notices the process exiting or the stream ending, and
  restarts with exponential backoff and jitter when `auto_reconnect` is set. Calls come from run
  tasks, bounded per server by `MAX_CONCURRENT_CALLS`.
- **Lifecycle.** `ensure(wanted)` (the applier, at apply) starts the new keys in parallel, each
  within its `timeout_secs` and all within `apply_wait` (a server still starting then is
  reported not ready and goes on; `on_change` fires when it is ready); `retire_unwanted` (the
  applier, after its table swap) retires the keys nobody wants: a retiring server
  serves the runs that lease it until none does (or `drain_grace` passes) and is stopped after
  (make-before-break). `on_change()` is called when a server fails or recovers outside an
  `ensure`, so the reconciler re-applies and the bindings' stall reasons stay current.
  `aclose()` stops every server: stdin closed, `STOP_GRACE` seconds, then SIGKILL to its group.

`import mcp` costs about a second, so it happens inside functions only (`warm()` does it in a
thread ahead of time). Nothing here logs or reports an environment value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import importlib
import itertools
import json
import logging
import os
import random
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from aofd import errors, threads
from aofd.runtime import commands, tasks
from aofd.specs import http_policy, policy
from aofd.specs import mcp as mcp_specs

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.client.session import IncomingMessage
    from mcp.shared._stream_protocols import ReadStream, WriteStream
    from mcp.shared.message import SessionMessage

log = structlog.get_logger("aofd.runtime")

ServerKey = tuple[str, str]
"""(Context name, `McpServerSpec.digest`): a server is never shared across Contexts."""

MAX_RESULT_CHARS = 16 * 1024
"""The most of a tool result the model is shown (the audit log records its digest and size)."""
MAX_DESCRIPTION_CHARS = 1024
"""A tool's description as offered to the model is cut here."""
MAX_SCHEMA_BYTES = 16 * 1024
"""A tool whose input schema is larger than this (as JSON) is not offered."""
MAX_TOOLS = 256
"""The most tools one server may list (the rest are not offered)."""
MAX_LIST_PAGES = 64
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The longest line a stdio server may send (one JSON-RPC message)."""
MAX_CONCURRENT_CALLS = 8
"""Calls in flight per server; more wait their turn (within their timeout)."""
STOP_GRACE = 2.0
"""Seconds a stdio server has to exit after its stdin is closed, before SIGKILL."""
STDERR_CAP = 1024 * 1024
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
BACKOFF_JITTER = 0.2
APPLY_WAIT = 60.0
"""The longest an apply waits for servers to start (it holds the reconciler meanwhile)."""
MAX_HTTP_BYTES = MAX_MESSAGE_BYTES
"""The largest http response body, or event of an event stream, an http/sse server may send (the
SDK's own event parser stops at 1 MiB first)."""
STABLE_AFTER = 60.0
"""A server that stayed ready this long starts its backoff from the beginning after a failure."""

FailureKind = Literal["not_ready", "closed", "timeout", "protocol"]
PARSE_ERROR = -32700
"""JSON-RPC's "parse error": the SDK's message for it quotes the unparsable body."""


def key_of(context: str, spec: mcp_specs.McpServerSpec) -> ServerKey:
    return (context, spec.digest)


@dataclasses.dataclass(frozen=True, slots=True)
class McpTool:
    """One tool a running server lists (after the spec's filter)."""

    server: str
    """The server's name (`McpServerSpec.name`)."""
    name: str
    """The server's own name for the tool."""
    description: str
    input_schema: Mapping[str, Any]
    hints: policy.ToolHints


@dataclasses.dataclass(frozen=True, slots=True)
class McpResult:
    """A tool call's result as the model sees it: text blocks joined, other blocks described,
    structured content as JSON; `text` capped at `MAX_RESULT_CHARS`, `size` and `sha256` over the
    whole rendered result."""

    is_error: bool
    text: str
    size: int
    sha256: str


class McpCallFailed(Exception):
    """A call that got no result: the server is not ready, died, timed out or spoke nonsense.

    `str(exc)` is safe to show to the model, the chat and the audit log.
    """

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind


ServerState = Literal["starting", "ready", "failed", "stopped"]


class _Permanent(Exception):
    """A start failure that retrying cannot fix (the command is not pinned, the env is refused)."""


def backoff_delay(failures: int, *, rand: Callable[[], float] = random.random) -> float:
    """Seconds before restart number `failures` (>= 1): 0.5 s doubling up to 60 s, +/- 20 %."""
    raw = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(max(failures, 1) - 1, 32))
    return max(0.0, min(BACKOFF_CAP, raw * (1.0 + BACKOFF_JITTER * (2.0 * rand() - 1.0))))


def warm() -> None:
    """Import the SDK (about a second): call from a worker thread before the first server starts."""
    for module in ("mcp", "mcp.client.sse", "mcp.client.streamable_http"):
        importlib.import_module(module)
    # The SDK's client logs what it could not parse, body and all; the pool reports every failure
    # itself (`mcp.server_failed`, the stall reason), without bodies.
    logging.getLogger("mcp.client").setLevel(logging.CRITICAL)


@dataclasses.dataclass(eq=False)
class _Server:
    """One server of one Context, and the state its owner task keeps."""

    key: ServerKey
    spec: mcp_specs.McpServerSpec
    pol: policy.GuardPolicy
    env_digest: str
    state: ServerState = "starting"
    reason: str | None = None
    tools: tuple[McpTool, ...] | None = None
    session: ClientSession | None = None
    pid: int | None = None
    owner: asyncio.Task[None] | None = None
    settled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set when the current start attempt ended: ready, or failed."""
    poke: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Wakes the owner: stop, death, or a changed tool list."""
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set when no lease and no call holds the server."""
    stopping: bool = False
    dead: str | None = None
    """Why the current connection ended (set by the transport or a call that saw it close)."""
    relist: bool = False
    late: bool = False
    awaited: bool = False
    """An `ensure` is waiting for this start (it reports the outcome itself: no `on_change`)."""
    leases: int = 0
    calls: int = 0
    failures: int = 0
    ready_since: float | None = None
    sem: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_CALLS)
    )

    def __post_init__(self) -> None:
        self.idle.set()

    # Read through these where the owner awaits: other tasks change them meanwhile.
    def died(self) -> str | None:
        return self.dead

    def halting(self) -> bool:
        return self.stopping


class McpPool:
    """The daemon's MCP servers, keyed by `ServerKey`.

    Args:
        build_env: the Context's child environment (`CommandRunner.build_env`).
        servers: the daemon's pinned MCP servers (`executables.mcp_servers`): the only programs a
            stdio server may start.
        executables: the command guard's pinned tools (`executables.paths`): never started as a
            server, even when `servers` names them too.
        endpoints: what an http/sse server's endpoint may reach (checked again at every start,
            resolved addresses included).
        apply_wait: the longest an `ensure` waits for starts (servers still starting then are
            reported not ready and keep starting; `on_change` fires when they get there).
        state_dir: where working directories and stderr files go.
        ledger: the command ledger (stdio servers are listed while they run).
        on_change: called when a server fails or recovers outside an `ensure`.
        drain_grace: how long a retired server waits for the runs that lease it.
        clock: monotonic time (tests).
    """

    def __init__(
        self,
        *,
        build_env: Callable[[policy.GuardPolicy], dict[str, str]],
        servers: Mapping[str, Path],
        executables: Mapping[str, Path],
        state_dir: Path,
        endpoints: http_policy.HttpPolicy | None = None,
        apply_wait: float = APPLY_WAIT,
        ledger: commands.Ledger | None = None,
        on_change: Callable[[], None] | None = None,
        drain_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build_env = build_env
        self._pins = servers
        self._executables = executables
        self._endpoints = endpoints or http_policy.HttpPolicy()
        self._apply_wait = apply_wait
        self._replaced: list[_Server] = []
        self._state_dir = state_dir
        self._ledger = ledger
        self._on_change = on_change
        self._grace = drain_grace
        self._clock = clock
        self._servers: dict[ServerKey, _Server] = {}
        self._retiring: set[_Server] = set()
        self._tasks: tasks.TaskSet[None] = tasks.TaskSet("mcp-servers")
        self._ids = itertools.count(1)
        self._closed = False
        self._imported = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def ensure(
        self,
        wanted: Mapping[ServerKey, tuple[policy.GuardPolicy, mcp_specs.McpServerSpec]],
        *,
        retire: bool = True,
    ) -> dict[ServerKey, str]:
        """Start every wanted server not running (in parallel, each within its `timeout_secs`, all
        within `apply_wait`); with `retire`, retire the ones no longer wanted right away (the
        applier passes False and calls `retire_unwanted` once its new routing table is live);
        key -> reason for every wanted server that is not ready."""
        if self._closed:
            return dict.fromkeys(wanted, "aofd is shutting down")
        if wanted and not self._imported:
            # The SDK's import takes about a second: in a thread, never on the event loop.
            try:
                await threads.run_blocking(warm, time_limit=120.0, name="mcp-import")
            except Exception as exc:
                return {key: f"the MCP SDK cannot be imported: {_describe(exc)}" for key in wanted}
            self._imported = True
            if self.closing():  # aclose ran during the import
                return dict.fromkeys(wanted, "aofd is shutting down")
        waits: list[_Server] = []
        replaced: list[_Server] = []
        for key, (pol, spec) in wanted.items():
            env_digest = self._env_digest(pol, spec)
            server = self._servers.get(key)
            if server is not None and server.env_digest != env_digest:
                # The Context's environment changed (kubeconfig, env): a new process, make-before-break.
                replaced.append(server)
                server = None
            if server is None:
                server = _Server(key=key, spec=spec, pol=pol, env_digest=env_digest)
                self._servers[key] = server
                self._start(server)
                waits.append(server)
            elif server.owner is None or server.owner.done():
                server.pol = pol
                self._start(server)  # it gave up (no auto_reconnect, or a permanent failure): try again
                waits.append(server)
            elif server.state == "starting" and not server.settled.is_set():
                waits.append(server)
        for server in waits:
            server.awaited = True
        self._replaced.extend(replaced)
        if waits:
            limit = min(self._apply_wait, max(server.spec.timeout_secs for server in waits) + 1.0)
            await asyncio.gather(*(self._settle(server, limit) for server in waits))
        if self.closing():  # aclose ran meanwhile: what this call started must not outlive it
            await asyncio.gather(*(self._stop(server) for server in waits), return_exceptions=True)
            return dict.fromkeys(wanted, "aofd is shutting down")
        if retire:
            self.retire_unwanted(wanted)
        out: dict[ServerKey, str] = {}
        for key in wanted:
            state, reason = self.status(key)
            if state != "ready":
                out[key] = reason or state
        return out

    def _env_digest(self, pol: policy.GuardPolicy, spec: mcp_specs.McpServerSpec) -> str:
        if spec.transport != "stdio":
            return ""
        try:
            env = self._build_env(pol)
        except errors.AofdError:
            env = {}
        body = json.dumps([sorted(env.items()), pol.working_dir], separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def closing(self) -> bool:
        """Whether `aclose` has begun (read after an await: it may have run meanwhile)."""
        return self._closed

    def retire_unwanted(self, wanted: Iterable[ServerKey]) -> None:
        """Retire the servers not in `wanted` and those an `ensure` replaced: each is stopped once
        no lease or call holds it (or `drain_grace` passes). Called after the routing table that no
        longer names them is live, so a run planned on the previous table still finds them."""
        keep = set(wanted)
        replaced, self._replaced = self._replaced, []
        for server in replaced:
            self._retire(server)
        for key in [k for k in self._servers if k not in keep]:
            self._retire(self._servers.pop(key))

    async def _settle(self, server: _Server, limit: float) -> None:
        try:
            async with asyncio.timeout(limit):
                await server.settled.wait()
        except TimeoutError:
            if server.state == "starting":
                server.reason = f"still starting after {limit:g} s"
                server.late = True  # reported not ready: say so when it gets there
        finally:
            server.awaited = False

    def _start(self, server: _Server) -> None:
        server.settled.clear()
        server.state = "starting"
        server.stopping = False
        server.owner = self._tasks.spawn(self._own(server), name=f"mcp-{server.key[0]}-{server.spec.name}")

    def _retire(self, server: _Server) -> None:
        self._retiring.add(server)
        self._tasks.spawn(self._drain_and_stop(server), name=f"mcp-retire-{server.spec.name}")

    async def _drain_and_stop(self, server: _Server) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace):
                await server.idle.wait()
        await self._stop(server)
        self._retiring.discard(server)
        log.info("mcp.server_retired", context=server.key[0], server=server.spec.name)

    async def _stop(self, server: _Server) -> None:
        server.stopping = True
        server.poke.set()
        owner = server.owner
        if owner is not None and not owner.done():
            done, _ = await asyncio.wait({owner}, timeout=STOP_GRACE + 3.0)
            if not done:
                owner.cancel()
                await asyncio.gather(owner, return_exceptions=True)
        server.state, server.session, server.tools = "stopped", None, None

    async def aclose(self) -> None:
        """Stop every server (stdin closed, `STOP_GRACE`, then SIGKILL to its process group)."""
        self._closed = True
        everything = [*self._servers.values(), *self._retiring, *self._replaced]
        self._servers.clear()
        self._replaced.clear()
        await asyncio.gather(*(self._stop(server) for server in everything), return_exceptions=True)
        await self._tasks.drain(0.0)
        self._retiring.clear()

    # -- what runs read -------------------------------------------------------------------------

    def status(self, key: ServerKey) -> tuple[ServerState, str | None]:
        """The state of the server under `key` (or of a retiring one still serving its runs)."""
        server = self._serving(key)
        if server is None:
            return "stopped", "not started"
        return server.state, server.reason

    def tools(self, key: ServerKey) -> tuple[McpTool, ...] | None:
        """The server's current tools (filter applied), None when it is not ready."""
        server = self._serving(key)
        if server is None or server.state != "ready":
            return None
        return server.tools

    def tool(self, key: ServerKey, name: str) -> McpTool | None:
        for one in self.tools(key) or ():
            if one.name == name:
                return one
        return None

    def pid(self, key: ServerKey) -> int | None:
        """The stdio server's process id while it runs (tests, diagnostics)."""
        server = self._servers.get(key)
        return server.pid if server is not None else None

    @contextlib.asynccontextmanager
    async def lease(self, keys: Iterable[ServerKey]) -> AsyncIterator[None]:
        """Held by a run for its whole length: its servers are not retired meanwhile."""
        held = [server for key in dict.fromkeys(keys) if (server := self._serving(key)) is not None]
        for server in held:
            server.leases += 1
            server.idle.clear()
        try:
            yield
        finally:
            for server in held:
                server.leases -= 1
                self._maybe_idle(server)

    def _serving(self, key: ServerKey) -> _Server | None:
        """The server under `key`, or a retiring one still up (a run of the previous revision)."""
        server = self._servers.get(key)
        if server is None:
            server = next(
                (s for s in (*self._replaced, *self._retiring) if s.key == key and s.state == "ready"), None
            )
        return server

    @staticmethod
    def _maybe_idle(server: _Server) -> None:
        if server.leases == 0 and server.calls == 0:
            server.idle.set()

    async def call(
        self,
        key: ServerKey,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the contract: one time limit per call, applied here
    ) -> McpResult:
        """Call `tool` on the server; raises `McpCallFailed`."""
        server = self._serving(key)
        if server is None:
            raise McpCallFailed("not_ready", f"MCP server for key {key[0]}/{key[1][:12]} is not running")
        server.calls += 1
        server.idle.clear()
        try:
            return await self._call(server, tool, arguments, timeout)
        finally:
            server.calls -= 1
            self._maybe_idle(server)

    async def _call(
        self,
        server: _Server,
        tool: str,
        arguments: Mapping[str, Any],
        timeout: float,  # noqa: ASYNC109 - see `call`
    ) -> McpResult:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        name = server.spec.name
        started = self._clock()
        try:
            async with asyncio.timeout(timeout):
                async with server.sem:
                    session = server.session
                    if server.state != "ready" or session is None:
                        why = f": {server.reason}" if server.reason else ""
                        raise McpCallFailed("not_ready", f"MCP server {name} is not ready{why}")
                    left = max(0.001, timeout - (self._clock() - started))
                    result = await session.call_tool(tool, dict(arguments), read_timeout_seconds=left)
        except McpCallFailed:
            raise
        except TimeoutError:
            raise McpCallFailed(
                "timeout", f"MCP tool {name}/{tool} did not answer within {timeout:g} s"
            ) from None
        except MCPError as exc:
            code = exc.error.code
            if code == REQUEST_TIMEOUT:
                raise McpCallFailed(
                    "timeout", f"MCP tool {name}/{tool} did not answer within {timeout:g} s"
                ) from None
            if code == CONNECTION_CLOSED:
                raise self._closed_failure(server, tool) from None
            raise McpCallFailed(
                "protocol", f"MCP server {name} refused {tool}: {_short(exc.error.message)} (code {code})"
            ) from None
        except (OSError, EOFError) as exc:
            raise self._closed_failure(server, tool, type(exc).__name__) from None
        except Exception as exc:
            import anyio

            if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError | anyio.EndOfStream):
                raise self._closed_failure(server, tool) from None
            raise McpCallFailed("protocol", f"MCP server {name}: {type(exc).__name__}") from None
        return render_result(result)

    def _closed_failure(self, server: _Server, tool: str, detail: str | None = None) -> McpCallFailed:
        if server.dead is None and not server.stopping:
            server.dead = detail or "the connection closed"
            server.poke.set()
        what = server.dead or "the connection closed"
        then = "; it is restarting" if server.spec.auto_reconnect and not server.stopping else ""
        return McpCallFailed("closed", f"MCP server {server.spec.name} stopped during {tool} ({what}){then}")

    # -- the owner task -------------------------------------------------------------------------

    async def _own(self, server: _Server) -> None:
        """Connect, serve until the connection ends, restart with backoff while wanted."""
        spec = server.spec
        while not server.stopping:
            permanent = False
            try:
                reason = await self._connect_once(server)
            except _Permanent as exc:
                reason, permanent = str(exc), True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = _describe(exc)
            reason = _scrub(reason, spec)
            if server.halting():
                break
            was_ready = server.state == "ready"
            stable = server.ready_since is not None and self._clock() - server.ready_since >= STABLE_AFTER
            server.failures = 1 if stable else server.failures + 1
            server.session, server.tools, server.pid, server.ready_since = None, None, None, None
            retry = spec.auto_reconnect and not permanent
            delay = backoff_delay(server.failures) if retry else 0.0
            if retry:
                server.reason = f"{reason}; restarting in {delay:.1f} s (attempt {server.failures})"
            else:
                server.reason = reason
            server.state = "failed"
            server.settled.set()
            log.warning(
                "mcp.server_failed",
                context=server.key[0],
                server=spec.name,
                reason=reason,
                was_ready=was_ready,
                restart_in=round(delay, 2) if retry else None,
            )
            self._changed(server)
            if not retry:
                return
            server.poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await server.poke.wait()
            server.state = "starting"
        server.state = "stopped"

    def _changed(self, server: _Server) -> None:
        if self._on_change is not None and not server.awaited and not self._closed and not server.stopping:
            try:
                self._on_change()
            except Exception as exc:  # a callback's bug never stops a server's owner
                log.error("mcp.on_change_failed", error=repr(exc))

    async def _connect_once(self, server: _Server) -> str:
        """One connection: start, initialize, list, serve; returns why it ended."""
        from mcp import ClientSession

        spec = server.spec
        server.dead, server.relist = None, False
        server.poke.clear()

        async def on_message(message: IncomingMessage) -> None:
            import mcp_types

            if isinstance(message, mcp_types.ToolListChangedNotification):
                server.relist = True
                server.poke.set()

        async with contextlib.AsyncExitStack() as stack:
            if spec.transport == "stdio":
                read, write = await stack.enter_async_context(self._stdio(server))
            elif spec.transport == "http":
                import httpx2
                from mcp.client.streamable_http import streamable_http_client

                endpoint = await self._checked_endpoint(spec)
                client = await stack.enter_async_context(
                    _capped_client(timeout=httpx2.Timeout(spec.timeout_secs, read=300.0))
                )
                streams = await stack.enter_async_context(
                    streamable_http_client(endpoint, http_client=client)
                )
                read, write = streams[0], streams[1]
            else:
                from mcp.client.sse import sse_client

                endpoint = await self._checked_endpoint(spec)
                read, write = await stack.enter_async_context(
                    sse_client(endpoint, timeout=spec.timeout_secs, httpx_client_factory=_capped_client)
                )
            session = await stack.enter_async_context(
                ClientSession(read, write, read_timeout_seconds=spec.timeout_secs, message_handler=on_message)
            )
            try:
                async with asyncio.timeout(spec.timeout_secs):
                    await session.initialize()
                    listed = await _list_tools(session, spec)
            except TimeoutError:
                return (
                    server.died() or f"no answer to initialize or tools/list within {spec.timeout_secs:g} s"
                )
            except Exception as exc:
                if spec.transport == "stdio" and server.died() is None:
                    # The stream ends before the exit status is in: wait for it (the better reason).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STOP_GRACE):
                            while server.died() is None:
                                server.poke.clear()
                                await server.poke.wait()
                dead = server.died()
                if dead is not None:
                    return f"{dead} before it was ready"
                raise _StartError(_describe(exc)) from exc
            recovered, server.late = server.failures > 0 or server.late, False
            server.session, server.tools, server.reason = session, listed, None
            server.state, server.ready_since = "ready", self._clock()
            server.settled.set()
            log.info(
                "mcp.server_ready",
                context=server.key[0],
                server=spec.name,
                transport=spec.transport,
                tools=len(listed),
                pid=server.pid,
            )
            if recovered:
                self._changed(server)
            while True:
                await server.poke.wait()
                server.poke.clear()
                if server.halting():
                    return "stopped"
                dead = server.died()
                if dead is not None:
                    return dead
                if server.relist:
                    server.relist = False
                    try:
                        async with asyncio.timeout(spec.timeout_secs):
                            server.tools = await _list_tools(session, spec)
                        log.info(
                            "mcp.tools_relisted",
                            context=server.key[0],
                            server=spec.name,
                            tools=len(server.tools),
                        )
                    except Exception as exc:
                        return server.died() or f"tools/list after list_changed failed: {_describe(exc)}"

    async def _checked_endpoint(self, spec: mcp_specs.McpServerSpec) -> str:
        """The endpoint, if the daemon's policy lets it be reached (its resolved addresses too)."""
        endpoint = _endpoint(spec)
        refused = self._endpoints.check(endpoint)
        if refused is not None:
            raise _Permanent(f"endpoint refused: {refused}")
        parts = urllib.parse.urlsplit(endpoint)
        host = parts.hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443)
        except OSError:
            return endpoint  # the connection reports it
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            why = self._endpoints.check(f"http://[{address}]/" if ":" in address else f"http://{address}/")
            if why is not None and "allowed hosts" not in why:
                raise _Permanent(f"endpoint refused: {host} resolves to {address} ({why})")
        return endpoint

    # -- the stdio transport --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _stdio(
        self, server: _Server
    ) -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
        import anyio
        import mcp_types
        from mcp.shared.message import SessionMessage

        spec, pol, context = server.spec, server.pol, server.key[0]
        executable = self._pinned(spec.command or "")
        try:
            env = self._build_env(pol)
        except errors.PolicyDenied as exc:
            raise _Permanent(f"command {spec.command!r} cannot start: {exc.reason}") from None
        problems = policy.server_env_problems(dict(spec.env))
        if problems:
            raise _Permanent(f"env {problems[0][0]}: {problems[0][1]}")
        env.update(dict(spec.env))
        try:
            cwd, err_path = self._prepare_dirs(server, env)
        except OSError as exc:
            raise RuntimeError(f"cannot prepare its directories: {exc.strerror or exc}") from None
        try:
            proc = await asyncio.create_subprocess_exec(
                str(executable),
                *spec.args,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=commands.die_with_parent(),
                limit=MAX_MESSAGE_BYTES,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot start {executable}: {exc.strerror or exc}") from None
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        server.pid = proc.pid
        command_id = f"mcp-{spec.name}-{next(self._ids)}-{os.getpid()}"
        if self._ledger is not None:
            self._ledger.record(command_id, context=context, run_id="", pid=proc.pid)
        log.info(
            "mcp.server_started", context=context, server=spec.name, pid=proc.pid, executable=str(executable)
        )
        incoming_w, incoming_r = anyio.create_memory_object_stream[SessionMessage | Exception](64)
        outgoing_w, outgoing_r = anyio.create_memory_object_stream[SessionMessage](64)

        def died(why: str) -> None:
            if server.dead is None:
                server.dead = why
            server.poke.set()

        async def read_stdout() -> None:
            async with incoming_w:
                while True:
                    try:
                        line = await stdout.readline()
                    except ValueError:
                        died(f"sent a message over {MAX_MESSAGE_BYTES} bytes")
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        break
                    if not line:
                        break
                    if not line.strip():
                        continue
                    item: SessionMessage | Exception
                    try:
                        item = SessionMessage(
                            mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                        )
                    except ValueError as exc:
                        item = exc
                    try:
                        await incoming_w.send(item)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        break
            code = await proc.wait()
            died(_exit_text(code))

        async def write_stdin() -> None:
            async with outgoing_r:
                async for message in outgoing_r:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
                    try:
                        stdin.write(data)
                        await stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        break

        async def copy_stderr() -> None:
            written = 0
            fd = os.open(
                err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                while chunk := await stderr.read(65536):
                    if written < STDERR_CAP:
                        part = chunk[: STDERR_CAP - written]
                        written += os.write(fd, part)
            finally:
                os.close(fd)

        pumps = [
            asyncio.create_task(read_stdout(), name=f"mcp-read-{spec.name}"),
            asyncio.create_task(write_stdin(), name=f"mcp-write-{spec.name}"),
            asyncio.create_task(copy_stderr(), name=f"mcp-stderr-{spec.name}"),
        ]
        try:
            yield incoming_r, outgoing_w
        finally:
            with contextlib.suppress(OSError):
                stdin.close()
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_GRACE):
                        await proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
            if self._ledger is not None:
                self._ledger.remove(command_id)
            _, pending = await asyncio.wait(pumps, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for stream in (incoming_r, incoming_w, outgoing_r, outgoing_w):
                stream.close()
            server.pid = None

    def _pinned(self, command: str) -> Path:
        """The pinned path of a stdio server's command (`executables.mcp_servers` only)."""
        if command in self._executables or command in mcp_specs.GUARD_TOOLS:
            raise _Permanent(
                f"command {command!r} is a command-guard tool (executables.paths), never started as an "
                "MCP server"
            )
        if command not in self._pins:
            if "/" in command or "\\" in command or policy.is_wrapper(command):
                try:
                    policy.resolve_executable(command, {})
                except errors.PolicyDenied as exc:
                    raise _Permanent(f"command {command!r} cannot start: {exc.reason}") from None
            raise _Permanent(
                f"command {command!r} cannot start: it is not pinned in the daemon's executables.mcp_servers"
            )
        try:
            return policy.resolve_executable(command, self._pins)
        except errors.PolicyDenied as exc:
            raise _Permanent(f"command {command!r} cannot start: {exc.reason}") from None

    def _prepare_dirs(self, server: _Server, env: Mapping[str, str]) -> tuple[str, Path]:
        """The Context's HOME and kube cache, the server's cwd and its stderr file's path."""
        for var in ("HOME", "KUBECACHEDIR"):
            if env.get(var, "").startswith("/"):
                Path(env[var]).mkdir(mode=0o700, parents=True, exist_ok=True)
        err_path = self._state_dir / "mcp" / server.key[0] / f"{server.spec.name}.stderr"
        err_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._cwd(server), err_path

    def _cwd(self, server: _Server) -> str:
        if server.pol.working_dir:
            cwd = server.pol.working_dir
            if not os.path.isabs(cwd) or not os.path.isdir(cwd):
                raise _Permanent(f"working_dir {cwd} is not an existing absolute directory")
            return cwd
        path = self._state_dir / "work" / "mcp" / server.key[0] / server.spec.name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(path)


class _StartError(Exception):
    """initialize or tools/list failed on a connection that is still up."""


def _capped_client(headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None) -> Any:
    """An `httpx2.AsyncClient` (the SDK's `McpHttpClientFactory`) whose responses are capped: a
    body over `MAX_HTTP_BYTES`, or an event of an event stream over it, ends the connection."""
    import httpx2

    class CappedStream(httpx2.AsyncByteStream):
        def __init__(self, inner: Any, events: bool) -> None:
            self._inner, self._events = inner, events

        async def __aiter__(self) -> AsyncIterator[bytes]:
            pending, tail = 0, b""
            async for chunk in self._inner:
                pending += len(chunk)
                if self._events:
                    seen = tail + chunk
                    cut = max(seen.rfind(b"\n\n"), seen.rfind(b"\r\n\r\n"))
                    if cut >= 0:
                        pending = len(seen) - cut - 2
                    tail = seen[-3:]
                if pending > MAX_HTTP_BYTES:
                    what = "an event" if self._events else "a response"
                    raise httpx2.ReadError(f"the server sent {what} over {MAX_HTTP_BYTES} bytes")
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class CappedTransport(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self._inner = httpx2.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            response = await self._inner.handle_async_request(request)
            events = "text/event-stream" in response.headers.get("content-type", "")
            length = response.headers.get("content-length", "")
            if not events and length.isdigit() and int(length) > MAX_HTTP_BYTES:
                await response.aclose()
                raise httpx2.ReadError(f"the server sent a response over {MAX_HTTP_BYTES} bytes")
            response.stream = CappedStream(response.stream, events)
            return response

        async def aclose(self) -> None:
            await self._inner.aclose()

    kwargs: dict[str, Any] = {"transport": CappedTransport()}
    kwargs["timeout"] = timeout if timeout is not None else httpx2.Timeout(30.0, read=300.0)
    if headers is not None:
        kwargs["headers"] = headers
    if auth is not None:
        kwargs["auth"] = auth
    return httpx2.AsyncClient(**kwargs)


def _endpoint(spec: mcp_specs.McpServerSpec) -> str:
    if not spec.endpoint:
        raise _Permanent(f"a {spec.transport} server needs an endpoint")
    return spec.endpoint


async def _list_tools(session: ClientSession, spec: mcp_specs.McpServerSpec) -> tuple[McpTool, ...]:
    """Every page of tools/list, the spec's filter applied, descriptions and schemas capped."""
    import mcp_types

    out: list[McpTool] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        for tool in page.tools:
            if not spec.offers(tool.name) or len(out) >= MAX_TOOLS:
                continue
            schema = tool.input_schema
            if schema.get("type") != "object":
                log.warning(
                    "mcp.tool_dropped", server=spec.name, tool=tool.name, why="input schema is not an object"
                )
                continue
            if len(json.dumps(schema, separators=(",", ":"), default=str)) > MAX_SCHEMA_BYTES:
                log.warning(
                    "mcp.tool_dropped", server=spec.name, tool=tool.name, why="input schema too large"
                )
                continue
            notes = tool.annotations
            out.append(
                McpTool(
                    server=spec.name,
                    name=tool.name,
                    description=(tool.description or "")[:MAX_DESCRIPTION_CHARS],
                    input_schema=schema,
                    hints=policy.ToolHints(
                        read_only=notes.read_only_hint if notes is not None else None,
                        destructive=notes.destructive_hint if notes is not None else None,
                    ),
                )
            )
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(out)


def render_result(result: Any) -> McpResult:
    """A `CallToolResult` as the model sees it (see `McpResult`).

    Text blocks are joined with newlines; images, audio and binary resources are described
    (`[image image/png 1024 bytes]`); a text resource is shown with its URI; structured content is
    shown as JSON when the result has no text block (servers usually send both, the same data).
    """
    import mcp_types

    parts: list[str] = []
    has_text = False
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
            has_text = True
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} {block.mime_type} {_b64_size(block.data)} bytes]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            res = block.resource
            if isinstance(res, mcp_types.TextResourceContents):
                parts.append(f"[resource {res.uri}]\n{res.text}")
                has_text = True
            else:
                parts.append(f"[resource {res.uri} {res.mime_type or 'binary'} {_b64_size(res.blob)} bytes]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link {block.uri}]")
        else:
            parts.append(f"[{getattr(block, 'type', 'unknown')} content]")
    structured = result.structured_content
    if structured is not None and not has_text:
        parts.append(json.dumps(structured, ensure_ascii=False, sort_keys=True, default=str))
    full = "\n".join(parts)
    raw = full.encode("utf-8", "replace")
    text = full
    if len(full) > MAX_RESULT_CHARS:
        note = f"\n[... {len(full) - MAX_RESULT_CHARS} more characters not shown]"
        text = full[: MAX_RESULT_CHARS - len(note)] + note
    return McpResult(
        is_error=bool(result.is_error), text=text, size=len(raw), sha256=hashlib.sha256(raw).hexdigest()
    )


def _scrub(text: str, spec: mcp_specs.McpServerSpec) -> str:
    """`text` without the endpoint's user info, query and fragment (where tokens are put)."""
    if not spec.endpoint:
        return text
    parts = urllib.parse.urlsplit(spec.endpoint)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
    if parts.port:
        shown = urllib.parse.urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", ""))
    out = text.replace(spec.endpoint, shown)
    for secret in (parts.query, parts.fragment, parts.password or "", parts.username or ""):
        if len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


def _b64_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        return len(data) * 3 // 4


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the process was killed by {name} (exit {code})"
    return f"the process exited with code {code}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """Why a connection failed, for a stall reason (never headers, env or bodies)."""
    if isinstance(exc, _StartError):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        first = exc.exceptions[0] if exc.exceptions else None
        return _describe(first) if first is not None else type(exc).__name__
    try:
        from mcp.shared.exceptions import MCPError

        if isinstance(exc, MCPError):
            if exc.error.code == PARSE_ERROR or "input_value" in exc.error.message:
                # The SDK quotes what it could not parse (a response body): never shown.
                return f"the server sent a message that is not valid JSON-RPC (code {exc.error.code})"
            return f"{_short(exc.error.message)} (code {exc.error.code})"
    except ImportError:  # pragma: no cover - the SDK is a dependency
        pass
    if isinstance(exc, ValueError) and type(exc).__name__ in ("ValidationError", "JSONDecodeError"):
        # pydantic quotes the input (a response body): never shown.
        return "the server sent a message that is not valid JSON-RPC"
    message = _short(str(exc)) if str(exc) else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
