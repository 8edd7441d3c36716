"""The HTTP server's limits: header, body and keep-alive timeouts, the header size cap, the
connection cap (the oldest connection not being served gives way; 503 when all are busy), and
running out of descriptors as a counted, throttled condition. Real loopback sockets throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aofd.runtime import httpserver, ports, verify

QUICK = httpserver.Limits(header_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3)


class Recorder:
    """A handler that answers 200 with the body it read, and records what happened to each request."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.cancelled = 0
        self.release = asyncio.Event()
        self.entered = 0
        self.hold = False

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        self.entered += 1
        try:
            if self.hold:
                await self.release.wait()
            body = await request.body(1024 * 1024)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except verify.Rejected as exc:
            return ports.HttpResponse.text(exc.status, "rejected\n")
        self.bodies.append(body)
        return ports.HttpResponse.text(200, "ok\n")


@contextlib.asynccontextmanager
async def serving(
    limits: httpserver.Limits = QUICK, handler: Recorder | None = None
) -> AsyncIterator[tuple[httpserver.Server, Recorder, int]]:
    recorder = handler or Recorder()
    server = httpserver.Server(recorder, address="127.0.0.1:0", limits=limits)
    await server.start()
    try:
        yield server, recorder, server.port
    finally:
        recorder.release.set()
        await server.stop()


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_after(reader: asyncio.StreamReader, *, within: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sent until it closed the connection, and how long that took.

    Read chunk by chunk: a client still sending when the server closes gets a reset, and what
    arrived before it must not be lost with the exception."""
    start = time.monotonic()
    chunks: list[bytes] = []

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)

    await asyncio.wait_for(read_all(), timeout=within)
    return b"".join(chunks), time.monotonic() - start


def request(body: bytes = b"{}", path: str = "/hook", *, keep_alive: bool = True) -> bytes:
    conn = "keep-alive" if keep_alive else "close"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: {conn}\r\n\r\n"
    return head.encode() + body


@contextlib.asynccontextmanager
async def trickling(writer: asyncio.StreamWriter, data: bytes, gap: float = 0.02) -> AsyncIterator[None]:
    """Send `data` a byte every `gap` seconds in the background (a slowloris client)."""

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(gap)

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- timeouts -------------------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout() -> None:
    async with serving() as (server, _, port), connect(port) as (reader, _):
        data, took = await closed_after(reader)
    assert (b"", True) == (data, 0.2 < took < 2.0)
    assert {httpserver.HEADER_TIMEOUT: 1} == server.stats.closed


async def test_half_the_headers_trickled_is_cut_at_the_header_timeout_not_per_chunk() -> None:
    """The timeout runs from accept to the end of the headers, however steadily bytes arrive."""
    async with serving() as (server, recorder, port), connect(port) as (reader, writer):
        start = time.monotonic()
        async with trickling(writer, b"POST /hook HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200):
            data, _ = await closed_after(reader)
        took = time.monotonic() - start
    assert (b"", 0, True) == (data, recorder.entered, took < 1.5)
    assert {httpserver.HEADER_TIMEOUT: 1} == server.stats.closed


async def test_a_stalled_body_is_answered_408_and_the_waiting_handler_cancelled() -> None:
    async with serving() as (server, recorder, port), connect(port) as (reader, writer):
        writer.write(request(b"x" * 100)[:-90])  # the headers and 10 of 100 bytes
        await writer.drain()
        data, took = await closed_after(reader)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert 0.2 < took < 2.0
    assert (1, 1, []) == (recorder.entered, recorder.cancelled, recorder.bodies)
    assert {httpserver.BODY_TIMEOUT: 1} == server.stats.closed


async def test_a_body_trickled_a_byte_at_a_time_is_cut_for_the_whole_body() -> None:
    limits = httpserver.Limits(header_timeout=5, body_timeout=0.4, keepalive_timeout=5)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        body = b"y" * 200
        writer.write(request(body)[: -len(body)])
        start = time.monotonic()
        async with trickling(writer, body):
            data, _ = await closed_after(reader)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - start < 2.0
    assert ([], {httpserver.BODY_TIMEOUT: 1}) == (recorder.bodies, server.stats.closed)


async def test_headers_larger_than_the_cap_are_answered_431() -> None:
    limits = httpserver.Limits(max_header_bytes=2048)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        head = b"POST /hook HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(8)
        )
        writer.write(head)  # no blank line yet: still reading headers
        await writer.drain()
        data, _ = await closed_after(reader)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert (0, {httpserver.HEADER_TOO_LARGE: 1}) == (recorder.entered, server.stats.closed)


async def test_prompt_requests_on_a_kept_alive_connection_are_served_then_idle_is_closed() -> None:
    """Each request gets its own header timeout; the idle time between them is the keep-alive's."""
    limits = httpserver.Limits(header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.8)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        answers = []
        for n in range(3):
            await asyncio.sleep(0.3)  # longer than half the header timeout, between requests
            writer.write(request(b'{"n": %d}' % n))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            answers.append(head.split(b" ")[1])
            await reader.readexactly(3)
        data, took = await closed_after(reader)
    assert [b"200"] * 3 == answers
    assert [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}'] == recorder.bodies
    assert (b"", True) == (data, 0.6 < took < 3.0)
    assert {} == server.stats.closed  # the keep-alive close is aiohttp's own, not a limit's


async def test_the_next_request_on_a_kept_alive_connection_has_a_header_timeout_too() -> None:
    limits = httpserver.Limits(header_timeout=0.3, body_timeout=5, keepalive_timeout=30)
    async with serving(limits) as (server, _, port), connect(port) as (reader, writer):
        writer.write(request())
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        writer.write(b"POST /hook HTTP/1.1\r\nHo")
        await writer.drain()
        data, took = await closed_after(reader)
    assert (b"", True) == (data, took < 2.0)
    assert {httpserver.HEADER_TIMEOUT: 1} == server.stats.closed


# --- the connection cap ---------------------------------------------------------------------


async def test_at_the_cap_the_oldest_idle_connection_gives_way_to_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpserver, "EVICT_IDLE_AFTER", 0.2)
    limits = httpserver.Limits(header_timeout=30, max_connections=3)
    async with serving(limits) as (server, recorder, port), contextlib.AsyncExitStack() as stack:
        idle = [await stack.enter_async_context(connect(port)) for _ in range(3)]
        await until(lambda: server.stats.open == 3)
        await asyncio.sleep(0.3)  # silent for longer than EVICT_IDLE_AFTER
        reader, writer = await stack.enter_async_context(connect(port))
        writer.write(request(keep_alive=False))
        answer = await asyncio.wait_for(reader.read(), 5)
        oldest, _ = await closed_after(idle[0][0], within=2)
        others_open = [not r.at_eof() for r, _ in idle[1:]]
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert (b"", [b"{}"]) == (oldest, recorder.bodies)
    assert [True, True] == others_open
    assert {httpserver.EVICTED: 1} == server.stats.closed


async def test_a_connection_stalled_in_its_body_gives_way_and_its_handler_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpserver, "EVICT_IDLE_AFTER", 0.2)
    limits = httpserver.Limits(header_timeout=30, body_timeout=30, max_connections=1)
    async with serving(limits) as (server, recorder, port), contextlib.AsyncExitStack() as stack:
        slow_reader, slow_writer = await stack.enter_async_context(connect(port))
        slow_writer.write(request(b"z" * 50)[:-40])
        await until(lambda: recorder.entered == 1)
        await asyncio.sleep(0.3)  # stalled for longer than EVICT_IDLE_AFTER
        reader, writer = await stack.enter_async_context(connect(port))
        writer.write(request(keep_alive=False))
        answer = await asyncio.wait_for(reader.read(), 5)
        cut, _ = await closed_after(slow_reader)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert (b"", 1, [b"{}"]) == (cut, recorder.cancelled, recorder.bodies)
    assert {httpserver.EVICTED: 1} == server.stats.closed


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503_at_once() -> None:
    limits = httpserver.Limits(header_timeout=30, max_connections=2)
    recorder = Recorder()
    recorder.hold = True
    async with serving(limits, recorder) as (server, _, port), contextlib.AsyncExitStack() as stack:
        busy = [await stack.enter_async_context(connect(port)) for _ in range(2)]
        for _, writer in busy:
            writer.write(request(keep_alive=False))
        await until(lambda: recorder.entered == 2)
        reader, _ = await stack.enter_async_context(connect(port))
        refused, took = await closed_after(reader)
        recorder.release.set()
        served = [await asyncio.wait_for(r.read(), 5) for r, _ in busy]
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1" in refused
    assert took < 1.0
    assert [True, True] == [s.startswith(b"HTTP/1.1 200 ") for s in served]
    assert {httpserver.OVER_CAPACITY: 1} == server.stats.closed


async def test_requests_within_the_limits_are_unaffected() -> None:
    async with serving(httpserver.Limits()) as (server, recorder, port):
        for n in range(5):
            async with connect(port) as (reader, writer):
                writer.write(request(b"%d" % n, keep_alive=False))
                assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
    assert ([b"0", b"1", b"2", b"3", b"4"], {}) == (recorder.bodies, server.stats.closed)
    assert 0 == server.stats.open


async def test_malformed_requests_are_logged_once_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    async with serving() as (_, recorder, port):
        for _ in range(5):
            async with connect(port) as (reader, writer):
                writer.write(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
                assert b" 400 Bad Request\r\n" in await asyncio.wait_for(reader.read(), 5)
    lines = [line for line in capsys.readouterr().out.splitlines() if "http.bad_request" in line]
    assert (1, 0) == (len(lines), recorder.entered)


# --- defaults and bookkeeping -----------------------------------------------------------------


def test_the_default_cap_leaves_descriptors_for_the_rest_of_the_daemon() -> None:
    assert (104, 32) == (
        httpserver.default_max_connections(nofile=200),
        httpserver.default_max_connections(nofile=200, admin=True),
    )
    assert (736, 32) == (
        httpserver.default_max_connections(nofile=1024),
        httpserver.default_max_connections(nofile=1024, admin=True),
    )
    assert 4096 == httpserver.default_max_connections(nofile=1 << 20)
    assert (8, 8) == (
        httpserver.default_max_connections(nofile=32),
        httpserver.default_max_connections(nofile=32, admin=True),
    )
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert httpserver.Server(Recorder(), address="127.0.0.1:0").max_connections < max(soft, 72)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("header_timeout", 0.0),
        ("body_timeout", -1.0),
        ("keepalive_timeout", 0.0),
        ("write_timeout", 0.0),
        ("max_header_bytes", 10),
    ],
)
def test_limits_refuse_values_that_disable_them(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        httpserver.Limits(**{field: value})  # type: ignore[arg-type]


def test_throttle_logs_once_per_interval_and_counts_what_it_left_out() -> None:
    now = [100.0]
    throttle = httpserver.Throttle(interval=10.0, clock=lambda: now[0])
    seen = []
    for step in range(25):
        now[0] = 100.0 + step
        seen.append(throttle.hit("k"))
    assert [0, 9, 9] == [s for s in seen if s is not None]
    assert 0 == throttle.hit("other")


# --- out of descriptors -----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    from aofd.audit import logging as audit_logging
    from aofd.runtime import httpserver, ports

    async def ok(request):
        return ports.HttpResponse.text(200, "ok\\n")

    async def main():
        audit_logging.configure(fmt="json", stream=sys.stderr)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        limits = httpserver.Limits(header_timeout=30, max_connections=1000)  # far above the fd limit
        server = httpserver.Server(ok, address="127.0.0.1:0", limits=limits, name="webhook")
        await server.start()
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        stats = {"accept_errors": server.stats.accept_errors, "closed": server.stats.closed}
        print(json.dumps(stats), flush=True)
        await server.stop()

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_running_out_of_descriptors_is_counted_throttled_and_served_through(tmp_path: Path) -> None:
    """With a cap above the open-file limit, accept() fails with EMFILE: the oldest idle connections
    give way, a valid request is still answered, and the log gets a line per interval, not a flood."""
    log_path = tmp_path / "child.log"
    with log_path.open("wb") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
    assert child.stdout is not None
    assert child.stdin is not None
    idle: list[socket.socket] = []
    try:
        port = int(child.stdout.readline())
        for _ in range(150):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.5)  # let the child run into its limit
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request(keep_alive=False))
            answer = sock.recv(1024)
        child.stdin.write(b"\n")
        child.stdin.flush()
        stats = json.loads(child.stdout.readline())
    finally:
        for sock in idle:
            sock.close()
        child.stdin.close()
        child.wait(10)
        child.stdout.close()
    lines = log_path.read_text().splitlines()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert stats["accept_errors"].get("EMFILE", 0) >= 1
    assert stats["closed"].get(httpserver.EVICTED, 0) >= 1
    assert 1 <= sum("http.out_of_descriptors" in line for line in lines) <= 2
    assert not any("socket.accept() out of system resource" in line for line in lines)
    assert len(lines) < 10, lines[:20]


# --- clients that never read their answers --------------------------------------------------


class Sized(Recorder):
    """A handler answering 200 with `size` bytes to every request (counted once answered)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.answered = 0

    async def __call__(self, request: ports.HttpRequest) -> ports.HttpResponse:
        self.answered += 1
        return ports.HttpResponse(status=200, body=b"x" * self.size)


GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


@contextlib.asynccontextmanager
async def not_reading(port: int) -> AsyncIterator[socket.socket]:
    """A client with a small receive buffer that never reads what the server sends."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        yield sock
    finally:
        sock.close()


def only_connection(server: httpserver.Server) -> Any:
    (connection,) = server._pool.connections
    return connection


async def fill_until_unsent(server: httpserver.Server, handler: Sized, sock: socket.socket) -> None:
    """Ask for answers until one is left partly unsent in the server's buffer, writes not paused."""
    loop = asyncio.get_running_loop()
    for _ in range(2000):
        want = handler.answered + 1
        await loop.sock_sendall(sock, GET)
        await until(lambda: handler.answered >= want)  # noqa: B023 (awaited in this iteration)
        await asyncio.sleep(0.01)  # the answer is written right after the handler returns
        transport = only_connection(server).transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            assert only_connection(server)._paused_since is None  # writes not paused
            return
    raise AssertionError("the server never held unsent data")


async def test_a_kept_alive_client_that_never_reads_is_released_at_the_keepalive_close() -> None:
    """Closing with unsent data buffered would wait for the client forever: the descriptor and the
    connection's place under the cap must be released anyway, and the next client served."""
    limits = httpserver.Limits(header_timeout=5, keepalive_timeout=0.3, max_connections=1)
    handler = Sized(50_000)
    async with serving(limits, handler) as (server, _, port), not_reading(port) as sock:
        await fill_until_unsent(server, handler, sock)
        await until(lambda: server.stats.open == 0, within=3)
        async with connect(port) as (reader, writer):
            writer.write(request(keep_alive=False))
            answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_handler_blocked_writing_to_a_client_that_never_reads_is_cut_at_the_write_timeout() -> None:
    limits = httpserver.Limits(header_timeout=5, keepalive_timeout=5, write_timeout=0.3)
    handler = Sized(8 * 1024 * 1024)  # far more than the socket buffers hold
    async with serving(limits, handler) as (server, _, port), not_reading(port) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, GET)
        await until(lambda: handler.answered == 1)
        start = time.monotonic()
        await until(lambda: server.stats.open == 0, within=3)
        took = time.monotonic() - start
    assert 0.2 < took < 2.0
    assert {httpserver.WRITE_TIMEOUT: 1} == server.stats.closed


async def test_answers_closed_unsent_are_aborted_at_the_write_timeout() -> None:
    """`Connection: close` with the answer still buffered: the client has write_timeout to read it."""
    limits = httpserver.Limits(header_timeout=5, keepalive_timeout=30, write_timeout=0.3)
    handler = Sized(50_000)
    async with serving(limits, handler) as (server, _, port), not_reading(port) as sock:
        await fill_until_unsent(server, handler, sock)
        await asyncio.get_running_loop().sock_sendall(sock, request(b"", keep_alive=False))
        await until(lambda: handler.answered >= 2)
        await until(lambda: server.stats.open == 0, within=3)
    assert {httpserver.WRITE_TIMEOUT: 1} == server.stats.closed


async def test_a_client_pipelining_without_reading_has_a_bounded_queue_and_is_cut() -> None:
    limits = httpserver.Limits(header_timeout=5, keepalive_timeout=5, write_timeout=0.5)
    handler = Sized(30)
    async with serving(limits, handler) as (server, _, port), not_reading(port) as sock:
        queued = []
        burst = GET * 2000
        await until(lambda: server.stats.open == 1)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and server.stats.open:
            with contextlib.suppress(BlockingIOError, ConnectionError):
                sock.send(burst)
            for connection in server._pool.connections:
                queued.append(len(connection._messages))
            await asyncio.sleep(0.01)
        await until(lambda: server.stats.open == 0, within=3)
    assert max(queued) <= httpserver.MAX_PIPELINED
    # aiohttp 3.14 stops reading at 32 queued (then the write timeout cuts); older releases do not.
    cut = {httpserver.WRITE_TIMEOUT: 1} == server.stats.closed
    assert cut or {httpserver.TOO_MANY_PIPELINED: 1} == server.stats.closed, server.stats.closed


# --- accepting at the cap ---------------------------------------------------------------------


async def test_at_the_cap_with_connections_still_closing_new_ones_are_answered_not_spun_on() -> None:
    """Accepting must not stop while the listener is readable: the loop would spin at full CPU."""
    limits = httpserver.Limits(header_timeout=30, max_connections=1)
    recorder = Recorder()
    recorder.hold = True
    async with serving(limits, recorder) as (server, _, port), contextlib.AsyncExitStack() as stack:
        _, busy = await stack.enter_async_context(connect(port))
        busy.write(request(keep_alive=False))
        await until(lambda: recorder.entered == 1)
        pool = server._pool
        stuck_since = asyncio.get_running_loop().time() - 2 * httpserver._CLOSING_STUCK
        pool.closing.update((object(), stuck_since) for _ in range(2 * httpserver._CLOSING_SLACK))  # type: ignore[misc]
        cpu = time.process_time()
        reader, _ = await stack.enter_async_context(connect(port))
        refused, _ = await closed_after(reader, within=2)
        cpu = time.process_time() - cpu
        pool.closing.clear()
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert cpu < 1.0


async def test_the_pool_failing_never_escapes_into_the_accept_loop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(self: object) -> bool:
        raise AttributeError("'RequestHandler' object has no attribute '_request_in_progress'")

    limits = httpserver.Limits(header_timeout=30, max_connections=1)
    async with serving(limits) as (server, _, port), contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(connect(port))
        await until(lambda: server.stats.open == 1)
        monkeypatch.setattr(httpserver._Pool, "evict", broken)
        answers = []
        for _ in range(3):
            reader, _ = await stack.enter_async_context(connect(port))
            answers.append((await closed_after(reader, within=2))[0][:12])
    assert [b"HTTP/1.1 503"] * 3 == answers
    out = capsys.readouterr().out
    assert 1 == out.count("http.limits_failed")
    assert "Exception in callback" not in out


# --- eviction spares clients that are sending -----------------------------------------------------


async def test_at_the_cap_a_request_still_uploading_outlasts_a_silent_connection() -> None:
    """An attacker opening connections fast must not cut requests that are arriving: the
    connection that has sent nothing gives way, though the uploading one is older (and has been
    silent for longer)."""
    limits = httpserver.Limits(header_timeout=30, body_timeout=30, max_connections=2)
    async with serving(limits) as (server, recorder, port), contextlib.AsyncExitStack() as stack:
        body = b"u" * 100
        up_reader, up_writer = await stack.enter_async_context(connect(port))
        up_writer.write(request(body, keep_alive=False)[:-60])
        await until(lambda: recorder.entered == 1)
        silent, _ = await stack.enter_async_context(connect(port))
        await until(lambda: server.stats.open == 2)
        reader, writer = await stack.enter_async_context(connect(port))
        writer.write(request(keep_alive=False))
        answer = await asyncio.wait_for(reader.read(), 5)
        cut, _ = await closed_after(silent, within=2)
        up_writer.write(body[-60:])
        uploaded = await asyncio.wait_for(up_reader.read(), 5)
    assert (answer[:12], uploaded[:12], cut) == (b"HTTP/1.1 200", b"HTTP/1.1 200", b"")
    assert ([b"{}", body], {httpserver.EVICTED: 1}) == (recorder.bodies, server.stats.closed)


# --- pipelined requests -------------------------------------------------------------------------


async def test_a_partial_request_pipelined_behind_a_whole_one_gets_the_header_timeout() -> None:
    limits = httpserver.Limits(header_timeout=0.3, body_timeout=5, keepalive_timeout=30)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        writer.write(request() + b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Le")
        data, took = await closed_after(reader)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert (1, True) == (recorder.entered, took < 2.0)
    assert {httpserver.HEADER_TIMEOUT: 1} == server.stats.closed


async def test_the_rest_of_a_body_with_a_partial_request_behind_it_gets_the_header_timeout() -> None:
    limits = httpserver.Limits(header_timeout=0.3, body_timeout=5, keepalive_timeout=30)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        whole = request(b"b" * 100)
        writer.write(whole[:-50])
        await until(lambda: recorder.entered == 1)
        writer.write(whole[-50:] + b"POST /b HTTP/1.1\r\nHo")
        data, took = await closed_after(reader)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert ([b"b" * 100], True) == (recorder.bodies, took < 2.0)
    assert {httpserver.HEADER_TIMEOUT: 1} == server.stats.closed


async def test_headers_pipelined_while_a_handler_is_at_work_count_against_the_cap() -> None:
    limits = httpserver.Limits(header_timeout=30, max_header_bytes=2048)
    recorder = Recorder()
    recorder.hold = True
    async with serving(limits, recorder) as (server, _, port), connect(port) as (_, writer):
        writer.write(request())
        await until(lambda: recorder.entered == 1)
        writer.write(
            b"POST /b HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(8))
        )
        await until(lambda: bool(server.stats.closed), within=3)
    assert {httpserver.HEADER_TOO_LARGE: 1} == server.stats.closed


# --- aiohttp's internals ------------------------------------------------------------------------


async def test_start_refuses_an_aiohttp_without_the_internals_it_relies_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        httpserver, "AIOHTTP_INTERNALS", (*httpserver.AIOHTTP_INTERNALS, "_no_such_attribute")
    )
    server = httpserver.Server(Recorder(), address="127.0.0.1:0")
    with pytest.raises(RuntimeError, match=r"aiohttp \d+\.\d+.*_no_such_attribute"):
        await server.start()
    await server.stop()


async def test_stop_does_not_wait_for_clients_that_never_read() -> None:
    limits = httpserver.Limits(header_timeout=5, keepalive_timeout=5)
    handler = Sized(8 * 1024 * 1024)
    server = httpserver.Server(handler, address="127.0.0.1:0", limits=limits, shutdown_timeout=10)
    await server.start()
    async with not_reading(server.port) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, GET)
        await until(lambda: handler.answered == 1)
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await server.stop()
        took = time.monotonic() - start
    assert took < 2.0


async def test_a_client_leaving_halfway_through_its_body_is_not_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A client gone before its body is whole is no handler failure (and not a log line per connection)."""
    limits = httpserver.Limits(header_timeout=5, body_timeout=5)
    async with serving(limits) as (server, recorder, port):
        for _ in range(3):
            async with connect(port) as (_, writer):
                writer.write(request(b"h" * 100)[:-50])
                await until(lambda: recorder.entered > 0)
            await until(lambda: server.stats.open == 0)
    assert "http.handler_failed" not in capsys.readouterr().out
    assert ([], {}) == (recorder.bodies, server.stats.closed)


# --- cost per request -------------------------------------------------------------------------


async def test_requests_on_a_kept_alive_connection_do_not_each_schedule_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The header and body timers are re-armed only when they fire (a deadline moved on), not per request."""
    loop = asyncio.get_running_loop()
    scheduled: list[str] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        scheduled.append(getattr(callback, "__qualname__", repr(callback)))
        return call_at(when, callback, *args, **kwargs)

    limits = httpserver.Limits(header_timeout=5, body_timeout=5, keepalive_timeout=30)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        monkeypatch.setattr(loop, "call_at", counting_call_at)
        for n in range(50):
            writer.write(request(b'{"n": %d}' % n))
            await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        monkeypatch.undo()
    assert 50 == len(recorder.bodies)
    ours = [name for name in scheduled if name.startswith("_Connection.")]
    assert len(ours) <= 2, ours
    assert {} == server.stats.closed


async def test_headers_begun_just_before_the_last_requests_timer_fires_get_the_whole_timeout() -> None:
    """A timer armed for an earlier request that fires during the next one re-arms for the new deadline."""
    limits = httpserver.Limits(header_timeout=0.5, body_timeout=5, keepalive_timeout=30)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        writer.write(request(b"1"))
        await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        await asyncio.sleep(0.35)
        second = request(b"2")
        writer.write(second[:10])  # its header timeout runs from here, to 0.85 s
        await asyncio.sleep(0.35)  # past the first request's deadline (0.5 s), not the second's
        writer.write(second[10:])
        head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        writer.write(b"POST /c HTTP/1.1\r\nHo")  # and the next one is still cut at its own deadline
        data, took = await closed_after(reader)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert [b"1", b"2"] == recorder.bodies
    assert (b"", True) == (data, 0.3 < took < 2.0)
    assert {httpserver.HEADER_TIMEOUT: 1} == server.stats.closed


async def test_bodies_larger_than_the_read_buffer_pause_and_resume_reading_with_requests_behind() -> None:
    """Flow control still works: a body past aiohttp's buffer limit pauses reading, the handler's
    reads resume it, and the requests pipelined behind it (one with a chunked body) are served."""
    big = bytes(range(256)) * 4096  # 1 MiB, far past the stream's 64 KiB high-water mark
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    limits = httpserver.Limits(header_timeout=5, body_timeout=5, keepalive_timeout=30)
    async with serving(limits) as (server, recorder, port), connect(port) as (reader, writer):
        writer.write(request(big) + request(b"small") + chunked + request(big))
        await writer.drain()
        for _ in range(4):
            head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
    assert [big, b"small", b"hello world", big] == recorder.bodies
    assert {} == server.stats.closed
