"""Loopback fakes for daemon-level tests: an Anthropic Messages API server in a thread, and the
chat platforms' fakes (`tests.runtime.fakes.platforms`) served from a thread of their own.

The Messages API answers every request with a short text, or, for the first requests, with the
content blocks of a script (`anthropic_server(script=...)`: a tool call, say), or with what a
`responder` makes of each request (runs that overlap each get their own answers).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

Responder = Callable[[dict[str, Any]], Sequence[dict[str, Any]] | None]
"""Content blocks for one Messages API request body (None: the default short text)."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append(body)
        if self.server.delay:
            self.server.release.wait(self.server.delay)
        turn = len(self.server.requests) - 1
        content: list[dict[str, Any]] = [{"type": "text", "text": f"answer from {body.get('model')}"}]
        if turn < len(self.server.script):
            content = list(self.server.script[turn])
        elif self.server.responder is not None:
            content = list(self.server.responder(body) or content)
        stop = "tool_use" if any(block.get("type") == "tool_use" for block in content) else "end_turn"
        reply: dict[str, Any] = {
            "id": f"msg_{len(self.server.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 3},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, script: Sequence[Sequence[dict[str, Any]]] = (), responder: Responder | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0
        self.release = threading.Event()


@contextmanager
def anthropic_server(
    script: Sequence[Sequence[dict[str, Any]]] = (), responder: Responder | None = None
) -> Iterator[_Server]:
    """A Messages API that answers every request with a short text (optionally after a delay);
    request N (from 0) gets `script[N]`'s content blocks instead while there is one, and, after
    the script, `responder(request body)`'s blocks when it gives any."""
    server = _Server(script, responder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


class AsyncServer(Protocol):
    """An in-process aiohttp fake (`tests.runtime.fakes.platforms.FakeSlack`, `FakeTelegram`)."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...


@contextmanager
def serve_in_thread(server: AsyncServer) -> Iterator[None]:
    """Serve an aiohttp fake from its own event loop in a thread, so that a synchronous test and
    an `aofd serve` subprocess can both use it; stopped, and its loop closed, on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-platform", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
