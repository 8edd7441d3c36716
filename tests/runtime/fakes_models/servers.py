"""Loopback aiohttp servers speaking the Anthropic Messages API and OpenAI Chat Completions.

Each server answers from a script: a callable taking the request body and returning either
a response body (dict) or `(status, error body)`. Requests (body and headers) are recorded.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

Reply = dict[str, Any] | tuple[int, dict[str, Any]]
Script = Callable[[dict[str, Any]], Reply]

_ids = itertools.count(1)


def a_text(text: str, *, input_tokens: int = 10, output_tokens: int = 5) -> dict[str, Any]:
    """An Anthropic Messages response with one text block."""
    return {
        "id": f"msg_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def a_tool_use(name: str, tool_input: dict[str, Any], *, text: str = "") -> dict[str, Any]:
    """An Anthropic Messages response asking for one tool call."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": name, "input": tool_input})
    return {
        "id": f"msg_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 8},
    }


def a_error(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    """Anthropic's error shape: {"type": "error", "error": {"type": ..., "message": ...}}."""
    return status, {"type": "error", "error": {"type": kind, "message": message}}


def o_text(text: str) -> dict[str, Any]:
    """An OpenAI chat completion with a text answer."""
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }


def o_tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion asking for one function call."""
    call = {
        "id": f"call_{next(_ids)}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }


class FakeModelServer:
    """One loopback server; `base_url` is set after `start()`; `requests` holds (path, body, headers)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body, {k.lower(): v for k, v in request.headers.items()}))
        reply = self.script(body)
        if isinstance(reply, tuple):
            status, payload = reply
            headers = {"retry-after": "0"} if status in (429, 529, 503) else {}
            return web.json_response(payload, status=status, headers=headers)
        return web.json_response(reply)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self) -> list[dict[str, Any]]:
        return [body for _path, body, _headers in self.requests]


def sequence(*replies: Reply) -> Script:
    """A script that answers with `replies` in order (the last one repeats)."""
    items = list(replies)

    def script(_body: dict[str, Any]) -> Reply:
        return items.pop(0) if len(items) > 1 else items[0]

    return script
