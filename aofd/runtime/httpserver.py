"""The one adapter over aiohttp's HTTP server: the trigger server and the admin API serve through it.

This module owns listening (TCP `HOST:PORT`, or `unix:PATH` with the socket's mode set before
anyone can connect) on aiohttp's low-level server (no application router, middlewares or
signals: callers route by path themselves), and the translation between aiohttp and the
runtime's own request and response types (`ports.HttpRequest`, `ports.HttpResponse`):

- `Request.body(limit)`: a body already whole in memory (the usual small webhook) is taken
  without a coroutine; otherwise `Content-Length` is checked against `limit` before a byte is
  read and before `Expect: 100-continue` is answered (413 at once), and a chunked body is counted
  while read. Failures raise `verify.Rejected`.
- A handler that raises answers 500 with a generic body (and the error is logged); it never
  reaches aiohttp.

Nothing else in aofd imports aiohttp's server; its client is behind `aofd.runtime.httpclient`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from aofd.runtime import ports, verify

log = structlog.get_logger()

Handler = Callable[[ports.HttpRequest], Awaitable[ports.HttpResponse]]


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
        return await self._read(limit)

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
    """

    def __init__(
        self,
        handler: Handler,
        *,
        address: str,
        shutdown_timeout: float = 10.0,
        lingering_time: float = 0.5,
        socket_mode: int = 0o660,
    ) -> None:
        self._handler = handler
        self.address = address
        self._shutdown_timeout = shutdown_timeout
        self._lingering_time = lingering_time
        self._socket_mode = socket_mode
        self._runner: web.ServerRunner | None = None
        self.host = ""
        self.port = 0

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            answer = await self._handler(Request(request))
        except Exception:
            log.exception("http.handler_failed", path=request.path)
            answer = ports.HttpResponse.text(500, "internal error\n")
        return _response(answer)

    async def start(self) -> str:
        """Bind and serve; returns the bound address (with port 0, the port chosen)."""
        lowlevel = web.Server(self._serve, access_log=None, lingering_time=self._lingering_time)
        runner = web.ServerRunner(lowlevel, shutdown_timeout=self._shutdown_timeout, handle_signals=False)
        await runner.setup()
        try:
            if self.address.startswith("unix:"):
                path = self.address[len("unix:") :]
                previous = os.umask(0o777 & ~self._socket_mode)
                try:
                    await web.UnixSite(runner, path).start()
                finally:
                    os.umask(previous)
                os.chmod(path, self._socket_mode)
                bound = self.address
            else:
                self.host, self.port = parse_address(self.address)
                await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
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

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
