"""The one adapter over aiohttp's HTTP server: the trigger server and the admin API serve through it.

This module owns listening (TCP `HOST:PORT`, or `unix:PATH` with the socket's mode set before
anyone can connect) on aiohttp's low-level server (no application router, middlewares or
signals: callers route by path themselves), the translation between aiohttp and the
runtime's own request and response types (`ports.HttpRequest`, `ports.HttpResponse`), and the
limits that keep a public listener answering while clients misbehave (`Limits`):

- Header timeout: from accept (or from the first byte of the next request on a kept-alive
  connection, or from the end of a request when part of the next one came with it) to the end
  of the headers; a connection that sends nothing, or half the headers, is closed when it runs
  out. Headers larger than `max_header_bytes` in all are answered 431 (counted while a handler
  is at work too, for a request pipelined behind it).
- Body timeout: from the end of the headers to the last byte of the body, for the whole body
  (a client trickling a byte a second is cut too). A handler waiting for the body is cancelled
  and the client gets 408; nothing of the request has been acted on at that point.
- Keep-alive timeout: an idle connection between requests is closed (aiohttp's own timer).
- Write timeout: unsent answer data that has not drained for `write_timeout` (a client that
  does not read) is dropped and the connection aborted; so is an answer closed unsent after
  that long. Whenever aiohttp or a limit closes a connection otherwise, unsent data is dropped
  at once: a close waiting for a client that never reads would hold the descriptor for good.
  At most `MAX_PIPELINED` requests may wait on a connection (aiohttp 3.14 stops reading at 32).
- A cap on open connections per listener. At the cap, a new connection takes the place of one
  that may give way (`_Connection.silence`): the oldest that is lingering after an answer, over
  the header timeout, or silent for `EVICT_IDLE_AFTER` while no handler acts on its request (or
  while its client reads nothing of an answer); when there is none, the one silent the longest,
  so that a request arriving right now is the last to go. When every connection is being
  served, the new one is answered 503 and closed at once, so the sender retries instead of
  hanging; so is it while `_CLOSING_SLACK` connections cut have not released their descriptors
  for `_CLOSING_STUCK` seconds (otherwise accepting waits one loop iteration for them). The
  default cap is derived from the open-file limit (`default_max_connections`).
- Running out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM on accept) is counted, logged at
  most once per `LOG_INTERVAL` with the number of repeats, and answered by closing a connection
  that may give way; when there is none, the connection at the head of the queue is accepted on
  a spare descriptor kept for this and closed. Only when even that descriptor is gone does
  asyncio's own handling run (a logged error, and accepting paused for a second).
- aiohttp's private state read here is checked when the server starts (`check_aiohttp`: a clear
  error naming the aiohttp release rather than failures under load), and nothing raised by the
  cap's bookkeeping reaches asyncio's accept loop (the connection is answered 503, logged
  `http.limits_failed` once per interval).

Every connection closed by these limits is counted in `Stats` (`/metrics`); none is logged one
by one. aiohttp's own complaints about malformed requests are logged at most once per
`LOG_INTERVAL` per listener, with the number left out.

- `Request.body(limit)`: a body already whole in memory (the usual small webhook) is taken
  without a coroutine; otherwise `Content-Length` is checked against `limit` before a byte is
  read and before `Expect: 100-continue` is answered (413 at once), and a chunked body is counted
  while read. Failures raise `verify.Rejected`.
- A handler that raises answers 500 with a generic body (and the error is logged); it never
  reaches aiohttp. A client leaving before its body is whole (`ConnectionError` from
  `Request.body`) is no failure and is not logged.

Nothing else in aofd imports aiohttp's server; its client is behind `aofd.runtime.httpclient`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import math
import os
import resource
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import __version__ as aiohttp_version
from aiohttp import streams, web, web_protocol

from aofd.runtime import ports, verify

log = structlog.get_logger()

Handler = Callable[[ports.HttpRequest], Awaitable[ports.HttpResponse]]

LOG_INTERVAL = 10.0
"""Seconds between two log lines about the same condition on one listener (repeats are counted)."""

FD_RESERVE_MIN = 64
"""Descriptors always left to the rest of the daemon (files, git, subprocess pipes, audit, clients)."""
MAX_DERIVED_CONNECTIONS = 4096
MIN_DERIVED_CONNECTIONS = 8
ADMIN_DEFAULT_MAX_CONNECTIONS = 32

_OUT_OF_DESCRIPTORS = {
    errno.EMFILE: "EMFILE",
    errno.ENFILE: "ENFILE",
    errno.ENOBUFS: "ENOBUFS",
    errno.ENOMEM: "ENOMEM",
}
EVICT_IDLE_AFTER = 1.0
"""Seconds without a byte from its client before a connection not being served may give way at the cap."""
MAX_PIPELINED = 64
"""Requests parsed and queued on a connection, waiting for their turn; one more and it is cut.

aiohttp 3.14 stops reading from a connection with 32 requests queued, so this only ever cuts
with releases that do not (3.13 and older: the queue would grow as fast as the client pipelines).
"""

TESTED_AIOHTTP = "3.10 to 3.14"
"""The aiohttp releases `_Connection` is tested with (it reads some of aiohttp's private state)."""
AIOHTTP_INTERNALS = (
    "_close",
    "_force_close",
    "_loop",
    "_messages",
    "_reading_paused",
    "_request_count",
    "_request_in_progress",
    "_task_handler",
    "force_close",
    "pause_writing",
    "resume_reading",
    "resume_writing",
    "shutdown",
    "start",
)
"""What `_Connection` uses of aiohttp's `RequestHandler` beyond its protocol methods (`check_aiohttp`)."""

_SHED_PER_WAKEUP = 64
_CLOSING_SLACK = 16
"""Connections cut at the cap whose descriptors are not yet released, before accepting waits for them."""
_CLOSING_STUCK = 1.0
"""Seconds after which cut connections not yet released are not waited for (new ones are shed)."""

_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_503 = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"

# Why a connection was closed by the server's limits (the `reason` label of the metric).
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
HEADER_TOO_LARGE = "header_too_large"
EVICTED = "evicted"
OVER_CAPACITY = "over_capacity"
OUT_OF_DESCRIPTORS = "out_of_descriptors"
WRITE_TIMEOUT = "write_timeout"
TOO_MANY_PIPELINED = "too_many_pipelined"


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE (a very large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(*, admin: bool = False, nofile: int | None = None) -> int:
    """The connection cap used when the config names none, derived from the open-file limit.

    A quarter of the limit (at least `FD_RESERVE_MIN`) is left to the rest of the daemon; the admin
    listener takes at most `ADMIN_DEFAULT_MAX_CONNECTIONS` of the rest and the webhook listener
    the remainder, between `MIN_DERIVED_CONNECTIONS` and `MAX_DERIVED_CONNECTIONS`. With the
    usual soft limit of 1024 that is 736 webhook and 32 admin connections; with 200, 104 and 32.
    """
    limit = open_file_limit() if nofile is None else nofile
    budget = limit - max(FD_RESERVE_MIN, limit // 4)
    admin_cap = max(MIN_DERIVED_CONNECTIONS, min(ADMIN_DEFAULT_MAX_CONNECTIONS, budget // 4))
    if admin:
        return admin_cap
    return max(MIN_DERIVED_CONNECTIONS, min(MAX_DERIVED_CONNECTIONS, budget - admin_cap))


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What one listener allows its clients (seconds and bytes); see the module docstring.

    `max_connections` None is `default_max_connections()`. The defaults suit webhook senders:
    Slack gives up after 3 s, PagerDuty after a few, GitHub after 10, and each sends headers and
    body at once, so 10 s for headers and 30 s for a body only ever cut slow or stalled clients.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 32 * 1024
    max_connections: int | None = None
    write_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keepalive_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0 seconds")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be at least 1024")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


@dataclasses.dataclass(slots=True)
class Stats:
    """A listener's counters, read by `/metrics`: connections open now, closed by a limit, accept errors."""

    open: int = 0
    closed: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count
    accept_errors: dict[str, int] = dataclasses.field(default_factory=dict)  # errno name -> count

    def count_closed(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1


class Throttle:
    """At most one log line per key per `interval` seconds; `hit()` says whether to log now.

    It returns how many hits were left out since the last line (None: stay quiet, counted).
    """

    __slots__ = ("_clock", "_interval", "_seen")

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> int | None:
        """None: stay quiet (counted); else log now, reporting the returned number of repeats left out."""
        now = self._clock()
        last, suppressed = self._seen.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._seen[key] = (last, suppressed + 1)
            return None
        self._seen[key] = (now, 0)
        return suppressed


class _Pool:
    """One listener's open connections, oldest first, and what its limits do to them."""

    def __init__(self, name: str, limits: Limits, stats: Stats, throttle: Throttle) -> None:
        self.name = name
        self.limits = limits
        self.stats = stats
        self.throttle = throttle
        self.cap = limits.max_connections or default_max_connections()
        self.connections: dict[_Connection, None] = {}  # insertion order: oldest first
        # Cut, descriptor released on the next loop iteration: connection -> loop time of the cut.
        self.closing: dict[_Connection, float] = {}
        # Accepted sockets whose protocol has not started yet (a loop iteration or two), by fd.
        self.pending: dict[int, float] = {}

    def load(self) -> int:
        pending = self.pending
        if pending:
            stale = time.monotonic() - 5.0
            expired = []
            for fd, at in pending.items():  # oldest first: stop at the first fresh one
                if at >= stale:
                    break
                expired.append(fd)
            for fd in expired:
                del pending[fd]  # its transport never started; the socket is closed
        return len(self.connections) + len(pending)

    def accepted(self, conn: socket.socket) -> None:
        self.pending[conn.fileno()] = time.monotonic()

    def opened(self, connection: _Connection, fd: int) -> None:
        self.pending.pop(fd, None)
        self.connections[connection] = None
        self.stats.open = len(self.connections)

    def closed(self, connection: _Connection) -> None:
        self.connections.pop(connection, None)
        self.closing.pop(connection, None)
        self.stats.open = len(self.connections)

    def releasing(self) -> bool:
        """At the cap, with `_CLOSING_SLACK` connections just cut: accept once they are released.

        They are on the next loop iteration, so at the cap descriptors in use never exceed the cap
        by more than the slack. Cut connections still there after `_CLOSING_STUCK` seconds would
        keep the listener readable but unserved (the loop polling it in vain): not waited for.
        """
        closing = self.closing
        if len(closing) < _CLOSING_SLACK or self.load() < self.cap:
            return False
        oldest = next(iter(closing.values()))
        return asyncio.get_running_loop().time() - oldest < _CLOSING_STUCK

    def admit(self) -> bool:
        """Whether a connection just accepted may be served: under the cap, or in place of one evicted.

        Not while `_CLOSING_SLACK` connections cut stay unreleased (see `releasing`).
        """
        if self.load() < self.cap:
            return True
        if len(self.closing) >= _CLOSING_SLACK:
            return False
        return self.evict()

    def evict(self) -> bool:
        """Close a connection that may give way (`_Connection.silence`); False when none may.

        The oldest one silent for `EVICT_IDLE_AFTER` (or lingering, or over the header timeout);
        when none is, the one silent the longest among those that have sent nothing yet, and only
        when there are none of those, among the others: connections opened in a flood go before
        a request that is arriving.
        """
        now = asyncio.get_running_loop().time()
        chosen: _Connection | None = None
        best = (False, -1.0)
        for connection in self.connections:  # oldest first
            silence = connection.silence(now)
            if silence is None:
                continue
            if silence >= EVICT_IDLE_AFTER:
                chosen = connection
                break
            rank = (not connection.heard, silence)
            if rank > best:
                chosen, best = connection, rank
        if chosen is None:
            return False
        chosen.cut(EVICTED)
        return True

    def guarded(self, decide: Callable[[], bool]) -> bool:
        """`decide()`, or False when it fails: nothing raised here may reach asyncio's accept loop."""
        try:
            return decide()
        except Exception as exc:
            self.warn("limits_failed", "http.limits_failed", error=f"{type(exc).__name__}: {exc}")
            return False

    def shed(self, conn: socket.socket, reason: str) -> None:
        """Answer 503 on a connection no protocol will serve, and close it."""
        self.stats.count_closed(reason)
        try:
            conn.setblocking(False)
            conn.send(_503)
        except OSError:
            pass
        finally:
            conn.close()
        if reason == OVER_CAPACITY:
            self.warn(reason, "http.at_capacity", max_connections=self.cap)

    def out_of_descriptors(self, code: int) -> None:
        name = _OUT_OF_DESCRIPTORS.get(code, str(code))
        self.stats.accept_errors[name] = self.stats.accept_errors.get(name, 0) + 1
        self.warn(
            "accept:" + name,
            "http.out_of_descriptors",
            error=name,
            open_file_limit=open_file_limit(),
            max_connections=self.cap,
            detail="lower http.max_connections or raise the open-file limit (LimitNOFILE=)",
        )

    def warn(self, key: str, event: str, **fields: Any) -> None:
        suppressed = self.throttle.hit(key)
        if suppressed is not None:
            log.warning(event, listener=self.name, connections=self.load(), suppressed=suppressed, **fields)


_spare_fd: int | None = None


def _reserve_spare() -> None:
    """Keep one descriptor open to give back when accept() runs out (see `_ListenSocket`)."""
    global _spare_fd
    if _spare_fd is None:
        try:
            _spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            _spare_fd = None


def _release_spare() -> bool:
    global _spare_fd
    if _spare_fd is None:
        return False
    os.close(_spare_fd)
    _spare_fd = None
    return True


class _ListenSocket(socket.socket):
    """A listening socket whose `accept()` applies the pool's cap and never raises EMFILE.

    asyncio's accept loop calls `accept()` until it raises `BlockingIOError`; on EMFILE it logs
    a traceback per attempt and schedules retries that multiply. Here the cap is applied before a
    protocol is built, and running out of descriptors is handled (see the module docstring) and
    reported to asyncio as "nothing more to accept now".
    """

    __slots__ = ("pool",)
    pool: _Pool

    def accept(self) -> tuple[socket.socket, Any]:
        pool = self.pool
        for _ in range(_SHED_PER_WAKEUP):
            if pool.guarded(pool.releasing):
                raise BlockingIOError(errno.EAGAIN, "closing connections first")
            try:
                conn, addr = super().accept()
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                pool.out_of_descriptors(exc.errno)
                if not pool.guarded(pool.evict) and not self._shed_head():
                    # Not even the spare descriptor: asyncio stops watching the listener for a
                    # second (and logs it), rather than the loop polling a readable socket.
                    raise
                # The evicted connection's descriptor is closed before the listener is polled again.
                raise BlockingIOError(errno.EAGAIN, "out of descriptors") from None
            # Never stop here while the listener is readable (asyncio would poll it in a loop):
            # a connection that cannot be served is answered 503 and closed.
            if not pool.guarded(pool.admit):
                pool.shed(conn, OVER_CAPACITY)
                continue
            pool.accepted(conn)
            return conn, addr
        raise BlockingIOError(errno.EAGAIN, "connections shed")

    def _shed_head(self) -> bool:
        """Accept the connection at the head of the queue on the spare descriptor and close it.

        False when there was no spare descriptor, or accepting failed even with it.
        """
        if not _release_spare():
            _reserve_spare()
            return False
        try:
            conn, _ = super().accept()
        except BlockingIOError:
            return True  # nobody waiting: the listener is not readable
        except OSError:
            return False
        else:
            self.pool.shed(conn, OUT_OF_DESCRIPTORS)
            return True
        finally:
            _reserve_spare()


class _Connection(web_protocol.RequestHandler):
    """aiohttp's protocol for one connection, with the header, body and write timers and eviction."""

    __slots__ = (
        "_deadline",
        "_header_bytes",
        "_heard",
        "_in_body",
        "_last_received",
        "_paused_since",
        "_payload",
        "_phase",
        "_pool",
        "_request_started",
        "_timer",
        "_tr",
        "_write_timer",
    )

    def __init__(self, manager: web.Server, *, pool: _Pool, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._pool = pool
        self._tr: asyncio.Transport | None = None  # aiohttp forgets its transport before it is closed
        self._timer: asyncio.TimerHandle | None = None  # lazy: see `_arm`
        self._deadline = 0.0  # loop time the timed phase ("headers", "body") ends
        self._write_timer: asyncio.TimerHandle | None = None
        self._phase = ""  # "headers", "body" or "" (idle, or a handler is at work)
        self._header_bytes = 0
        self._payload: streams.StreamReader | None = None
        self._in_body = False
        self._last_received = 0.0  # loop time of the last byte received
        self._heard = False  # a byte has been received
        self._request_started = 0.0  # loop time of accept, or of the first byte of the request
        self._paused_since: float | None = None  # loop time writes were paused (the client not reading)

    # -- aiohttp's protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.Transport):
            self._tr = transport
        sock = transport.get_extra_info("socket")
        self._pool.opened(self, sock.fileno() if sock is not None else -1)
        self._last_received = self._loop.time()
        self._start_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._stop_write_timer()
        self._tr = None
        self._pool.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closed():
            return  # aiohttp ignores it too
        if data:
            self._last_received = self._loop.time()
            self._heard = True
            if not self._phase:
                self._start_headers()  # the first byte of the next request
        before = self._request_count
        rest = False
        if len(data) > 1:
            # Fed in two parts (as TCP may deliver it) to learn whether the request this chunk
            # completes ends before its last byte, i.e. a partial request is pipelined behind it.
            super().data_received(data[:-1])
            whole = self._request_whole(before)
            count = self._request_count
            super().data_received(data[-1:])
            rest = whole and self._request_count == count
        else:
            super().data_received(data)
        if self._closed():
            return
        if len(self._messages) > MAX_PIPELINED:
            self.cut(TOO_MANY_PIPELINED)
        elif self._request_count != before:
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._start_body(payload)
            elif rest:
                self._start_headers()
            else:
                self._stop_timer()
        elif self._phase == "headers":
            self._header_bytes += len(data)
            if self._header_bytes > self._pool.limits.max_header_bytes:
                self.cut(HEADER_TOO_LARGE, _431)
        elif self._phase == "body" and self._payload is not None and self._payload.is_eof():
            if rest:
                self._start_headers()
            else:
                self._stop_timer()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused_since = self._loop.time()
        self._arm_write_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused_since = None
        transport = self._tr
        if transport is not None and not transport.is_closing():
            self._stop_write_timer()

    def resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp's flow control; a no-op unless reading is paused.

        aiohttp's body stream calls this after every read, paused or not, and aiohttp's own
        version re-runs the whole receive path (`data_received(b"")`) each time. The parser only
        holds data back while paused (`_reading_paused`, or `_buffer_paused` for a full queue).
        """
        if self._reading_paused or getattr(self, "_buffer_paused", False):  # the latter: aiohttp 3.14
            super().resume_reading(resume_parser)

    def force_close(self) -> None:
        """aiohttp's close (keep-alive timeout, a cut, shutdown, a failure): nothing more is answered,
        so unsent data is dropped; waiting for a client that does not read would hold the descriptor."""
        super().force_close()
        transport = self._tr
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()

    async def start(self) -> None:
        try:
            await super().start()
        finally:
            transport = self._tr
            if transport is not None and transport.is_closing() and transport.get_write_buffer_size():
                self._arm_write_timer()  # answered and closed: write_timeout for the client to read it

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        if self._paused_since is not None:
            self.force_close()  # the client is not reading: waiting for the handler would be in vain
        await super().shutdown(timeout)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's "Error handling request" (a malformed request): one line per interval."""
        exc = kw.get("exc_info")
        self._pool.warn(
            "bad_request",
            "http.bad_request",
            error=type(exc).__name__ if isinstance(exc, BaseException) else "",
        )

    # -- limits ------------------------------------------------------------------------------

    def silence(self, now: float) -> float | None:
        """Seconds since this connection's last byte when it may give way at the cap, else None.

        It may when lingering after an answer, or at its request for longer than the header timeout
        (both `math.inf`), or when no handler acts on a request; a connection being served only when
        its client has sent nothing and read nothing of the answer for `EVICT_IDLE_AFTER`. Never one
        already closing.
        """
        transport = self._tr
        if transport is None or self._force_close or self in self._pool.closing:
            return None
        if transport.is_closing():  # answered and closed: lingering while its client reads
            return math.inf if transport.get_write_buffer_size() else None
        silent = now - self._last_received
        if self._unserved:
            if now - self._request_started >= self._pool.limits.header_timeout:
                return math.inf
            return silent
        paused = self._paused_since
        if paused is not None and now - paused >= EVICT_IDLE_AFTER and silent >= EVICT_IDLE_AFTER:
            return silent
        return None

    @property
    def heard(self) -> bool:
        """Whether the client has sent anything yet."""
        return self._heard

    @property
    def _unserved(self) -> bool:
        """No handler has acted on a request (none started, or it is still waiting for the body)."""
        return not self._request_in_progress or self._in_body

    def reading_body(self, active: bool) -> None:
        self._in_body = active

    def cut(self, reason: str, answer: bytes | None = None) -> None:
        """Close the connection for `reason` (answering `answer` when nothing has been answered yet).

        A handler still waiting for the body, or about to start, is cancelled: it has not acted on
        the request. A handler at work on a whole request is left to finish, unheard. Unsent data
        is dropped, so the descriptor is released on the next loop iteration.
        """
        self._cancel_timer()
        self._stop_write_timer()
        self._pool.stats.count_closed(reason)
        self._pool.closing.setdefault(self, self._loop.time())
        transport = self._tr
        unserved = self._unserved
        if answer is not None and unserved and transport is not None and not transport.is_closing():
            transport.write(answer)
        if unserved and self._task_handler is not None:
            self._task_handler.cancel()
        self.force_close()

    def _closed(self) -> bool:
        """aiohttp closes (or has closed) this connection: it reads nothing more."""
        return self._force_close or self._close

    def _request_whole(self, before: int) -> bool:
        """Whether the request this chunk works on is whole (headers and body) after the bytes fed so far."""
        if self._request_count != before:
            payload = self._messages[-1][1] if self._messages else None
            return payload is None or payload.is_eof()
        return self._phase == "body" and self._payload is not None and self._payload.is_eof()

    def _start_headers(self) -> None:
        now = self._loop.time()
        self._phase = "headers"
        self._payload = None
        self._header_bytes = 0
        self._request_started = now
        self._arm(now + self._pool.limits.header_timeout)

    def _start_body(self, payload: streams.StreamReader) -> None:
        self._phase = "body"
        self._payload = payload
        self._arm(self._loop.time() + self._pool.limits.body_timeout)

    def _arm(self, deadline: float) -> None:
        """Expire the phase just begun at `deadline`.

        The timer is lazy: one armed for an earlier phase that fires no later than `deadline` is
        kept, and re-armed for the deadline then current when it fires (`_expired`). On a busy
        kept-alive connection that is one timer per header timeout, not two per request.
        """
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._expired)

    def _stop_timer(self) -> None:
        """No phase is timed (idle, or a handler at work); a timer still armed finds that when it fires."""
        self._phase = ""
        self._payload = None

    def _cancel_timer(self) -> None:
        self._stop_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._phase:
            return
        if self._loop.time() < self._deadline:  # armed for an earlier phase: this one ends later
            self._timer = self._loop.call_at(self._deadline, self._expired)
        elif self._phase == "headers":
            self.cut(HEADER_TIMEOUT)
        elif self._phase == "body" and self._payload is not None and not self._payload.is_eof():
            self.cut(BODY_TIMEOUT, _408)
        else:
            self._stop_timer()

    def _arm_write_timer(self) -> None:
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(self._pool.limits.write_timeout, self._write_expired)

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        """Unsent data has not drained for `write_timeout`: the client is not reading; drop it."""
        self._write_timer = None
        transport = self._tr
        if transport is None or not transport.get_write_buffer_size():
            return
        self._cancel_timer()
        self._pool.stats.count_closed(WRITE_TIMEOUT)
        self._pool.closing.setdefault(self, self._loop.time())
        transport.abort()  # a handler blocked writing gets ConnectionResetError and ends


class _LowLevel(web.Server):
    """aiohttp's low-level server building `_Connection` protocols for one pool."""

    def __init__(self, handler: Any, *, pool: _Pool, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._pool = pool
        self._protocol_loop = asyncio.get_running_loop()
        self._protocol_kwargs = kwargs

    def __call__(self) -> web_protocol.RequestHandler:
        return _Connection(self, pool=self._pool, loop=self._protocol_loop, **self._protocol_kwargs)


def check_aiohttp(lowlevel: _LowLevel) -> None:
    """Fail with a clear error when the installed aiohttp lacks the internals `_Connection` relies on."""
    try:
        probe = lowlevel()
        missing = [name for name in AIOHTTP_INTERNALS if not hasattr(probe, name)]
    except (AttributeError, TypeError) as exc:
        missing = [f"({type(exc).__name__}: {exc})"]
    if missing:
        raise RuntimeError(
            f"aiohttp {aiohttp_version} is not supported by aofd's HTTP server: its request handler "
            f"lacks {', '.join(missing)}; tested with aiohttp {TESTED_AIOHTTP}"
        )


class Request:
    """`ports.HttpRequest` over aiohttp's request (one per request, no copies)."""

    __slots__ = ("_r",)

    def __init__(self, request: web.BaseRequest) -> None:
        self._r = request

    @property
    def method(self) -> str:
        return self._r.method

    @property
    def path(self) -> str:
        return self._r.path

    @property
    def query(self) -> Mapping[str, str]:
        return self._r.query

    @property
    def headers(self) -> Mapping[str, str]:
        return self._r.headers

    @property
    def content_type(self) -> str:
        return self._r.content_type

    @property
    def content_length(self) -> int | None:
        return self._r.content_length

    @property
    def remote(self) -> str:
        return self._r.remote or ""

    async def body(self, limit: int) -> bytes:
        buffered = self.buffered(limit)
        if buffered is not None:
            return buffered
        connection = self._r.protocol
        if not isinstance(connection, _Connection):
            return await self._read(limit)
        connection.reading_body(True)  # the body timeout may cancel this read (and answer 408)
        try:
            return await self._read(limit)
        finally:
            connection.reading_body(False)

    def buffered(self, limit: int) -> bytes | None:
        """The body when it is already whole in memory, else None (same checks as `_read`)."""
        declared = self._r.content_length
        if declared is None:
            return None
        if declared > limit:
            raise verify.Rejected(413, verify.BODY_TOO_LARGE, f"Content-Length {declared} > {limit}")
        if not declared:
            return b""
        content = self._r.content
        if not content.is_eof():
            return None
        data = content.read_nowait(declared)
        if len(data) < declared:
            raise verify.Rejected(400, verify.MALFORMED, "body shorter than Content-Length")
        return data

    async def _read(self, limit: int) -> bytes:
        content = self._r.content
        declared = self._r.content_length
        if declared is not None:
            await self._answer_expect()
            try:
                return await content.readexactly(declared)
            except asyncio.IncompleteReadError:
                raise verify.Rejected(400, verify.MALFORMED, "body shorter than Content-Length") from None
        await self._answer_expect()
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = await content.read(64 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise verify.Rejected(413, verify.BODY_TOO_LARGE, f"body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _answer_expect(self) -> None:
        """Answer `Expect: 100-continue` (HTTP/1.1), once the body is known to be within the cap."""
        expect = self._r.headers.get("Expect")
        if expect is None or self._r.version < (1, 1):
            return
        if expect.lower() != "100-continue":
            raise verify.Rejected(417, verify.MALFORMED, "unknown Expect header")
        writer = self._r.writer
        await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.output_size = 0  # the interim answer is not part of the response that follows


def _response(answer: ports.HttpResponse) -> web.Response:
    headers = answer.headers
    if headers and "Content-Type" in headers:  # a type with parameters (Prometheus' exposition format)
        return web.Response(body=answer.body, status=answer.status, headers=headers)
    charset = "utf-8" if answer.content_type.startswith("text/") else None
    return web.Response(
        body=answer.body,
        status=answer.status,
        content_type=answer.content_type,
        charset=charset,
        headers=headers,
    )


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` -> (host, port); an empty host is loopback."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Server:
    """Serves one handler on `HOST:PORT` or `unix:PATH`; `start()` binds, `stop()` closes.

    `lingering_time` is how long the rest of a refused upload is read and discarded so that the
    client can read the answer (aiohttp's default is 10 s); `socket_mode` is the unix socket's mode.
    `name` labels the listener in logs and metrics; `limits` and `stats` are described above.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        address: str,
        shutdown_timeout: float = 10.0,
        lingering_time: float = 0.5,
        socket_mode: int = 0o660,
        name: str = "http",
        limits: Limits | None = None,
        stats: Stats | None = None,
    ) -> None:
        self._handler = handler
        self.address = address
        self._shutdown_timeout = shutdown_timeout
        self._lingering_time = lingering_time
        self._socket_mode = socket_mode
        self.limits = limits or Limits()
        self.stats = stats if stats is not None else Stats()
        self._pool = _Pool(name, self.limits, self.stats, Throttle())
        self._runner: web.ServerRunner | None = None
        self.host = ""
        self.port = 0

    @property
    def max_connections(self) -> int:
        return self._pool.cap

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            answer = await self._handler(Request(request))
        except ConnectionError:
            # The client left before its body was whole (or cut by a limit): nobody to answer and
            # nothing failed; a line per connection would let any client flood the log.
            answer = ports.HttpResponse.text(400, "connection lost\n")
        except Exception:
            log.exception("http.handler_failed", path=request.path)
            answer = ports.HttpResponse.text(500, "internal error\n")
        return _response(answer)

    async def start(self) -> str:
        """Bind and serve; returns the bound address (with port 0, the port chosen)."""
        _reserve_spare()
        line = min(8190, self.limits.max_header_bytes)
        lowlevel = _LowLevel(
            self._serve,
            pool=self._pool,
            access_log=None,
            lingering_time=self._lingering_time,
            keepalive_timeout=self.limits.keepalive_timeout,
            max_line_size=line,
            max_field_size=line,
        )
        check_aiohttp(lowlevel)
        runner = web.ServerRunner(lowlevel, shutdown_timeout=self._shutdown_timeout, handle_signals=False)
        await runner.setup()
        try:
            if self.address.startswith("unix:"):
                path = self.address[len("unix:") :]
                sock = self._unix_socket(path)
                await web.SockSite(runner, sock).start()
                os.chmod(path, self._socket_mode)
                bound = self.address
            else:
                self.host, self.port = parse_address(self.address)
                for sock in self._tcp_sockets(self.host, self.port):
                    await web.SockSite(runner, sock).start()
                for addr in runner.addresses:
                    if isinstance(addr, tuple) and len(addr) >= 2:
                        self.port = int(addr[1])
                        break
                bound = f"{self.host}:{self.port}"
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return bound

    def _listen_socket(self, family: int) -> _ListenSocket:
        sock = _ListenSocket(family, socket.SOCK_STREAM)
        sock.pool = self._pool
        return sock

    def _unix_socket(self, path: str) -> _ListenSocket:
        """Bind `path` (a stale socket file there is replaced) under a umask giving `socket_mode`."""
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.remove(path)
        except FileNotFoundError:
            pass
        sock = self._listen_socket(socket.AF_UNIX)
        try:
            previous = os.umask(0o777 & ~self._socket_mode)
            try:
                sock.bind(path)
            finally:
                os.umask(previous)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _tcp_sockets(self, host: str, port: int) -> list[_ListenSocket]:
        """One listening socket per address `host` resolves to (SO_REUSEADDR, IPv6 sockets v6-only)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[_ListenSocket] = []
        seen: set[tuple[int, Any]] = set()
        try:
            for family, _, _, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = self._listen_socket(family)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(sockets) > 1:
                    addr = (addr[0], sockets[0].getsockname()[1], *addr[2:])
                sock.bind(addr)
                sock.listen(128)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    async def stop(self) -> None:
        """Stop listening and close; a handler in progress gets up to `shutdown_timeout`."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def abort_connections(self) -> int:
        """Drop every open connection now (a hard stop): handlers in progress lose their client,
        so a `stop()` in flight no longer waits for them. Returns how many were dropped."""
        dropped = 0
        for connection in list(self._pool.connections):
            transport = connection.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        return dropped
