"""Local servers speaking the platforms' wire formats: Slack Web API (+ Socket Mode), Telegram Bot API, Graph
API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import WSMsgType, web


class FakeServer:
    """An aiohttp app on 127.0.0.1 with a random port that records every request."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> FakeServer:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [body for name, body in self.requests if name == method]


async def _fields(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        return dict(request.query)
    if request.content_type == "application/json":
        data = await request.json()
        return dict(data) if isinstance(data, dict) else {"_": data}
    form = await request.post()
    return {k: str(v) for k, v in form.items()}


class FakeSlack(FakeServer):
    """Slack's Web API (`/api/<method>`), slash-command response URLs (`/hooks/<path>`) and a Socket Mode
    websocket at `/link`.

    `not_in_channels` are channels the bot is not a member of: `chat.postMessage` there answers
    `not_in_channel`, as Slack does. A POST to a response URL is recorded as method `response_url` (with
    its `_path`) and answered `response_url_status` (Slack answers `ok` with 200).
    """

    def __init__(
        self, *, channels: Mapping[str, str] | None = None, not_in_channels: Collection[str] = ()
    ) -> None:
        super().__init__()
        self.channels = dict(channels or {})
        self.not_in_channels = set(not_in_channels)
        self.response_url_status = 200
        self.response_url_redirect = ""  # answer response URLs with a 307 to this address
        self.posted = 0
        self.envelopes: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.acked = asyncio.Event()
        self.app.router.add_route("*", "/api/{method}", self._api)
        self.app.router.add_post("/hooks/{path:.*}", self._response_url)
        self.app.router.add_get("/link", self._socket)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def hooks_url(self) -> str:
        """The base of this server's response URLs (what `https://hooks.slack.com/` is for Slack)."""
        return f"{self.url}/hooks/"

    async def _response_url(self, request: web.Request) -> web.Response:
        fields = await _fields(request)
        fields["_path"] = request.match_info["path"]
        fields["_content_type"] = request.content_type
        self.requests.append(("response_url", fields))
        if self.response_url_redirect:
            return web.Response(status=307, headers={"Location": self.response_url_redirect})
        if self.response_url_status != 200:
            return web.Response(status=self.response_url_status, text="expired_url")
        return web.Response(text="ok")

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        fields = await _fields(request)
        fields["_auth"] = request.headers.get("Authorization", "")
        self.requests.append((method, fields))
        if method == "chat.postMessage":
            if fields.get("channel") in self.not_in_channels:
                return web.json_response({"ok": False, "error": "not_in_channel"})
            self.posted += 1  # each message its own ts, as Slack gives it (the first is 1700000000.000100)
            ts = f"1700000000.{99 + self.posted:06d}"
            return web.json_response(
                {"ok": True, "channel": fields.get("channel"), "ts": ts, "message": fields}
            )
        if method == "chat.update":
            return web.json_response(
                {
                    "ok": True,
                    "channel": fields.get("channel"),
                    "ts": fields.get("ts"),
                    "text": fields.get("text"),
                }
            )
        if method == "chat.postEphemeral":
            return web.json_response({"ok": True, "message_ts": "1700000000.000200"})
        if method == "conversations.info":
            cid = str(fields.get("channel", ""))
            if cid in self.channels:
                return web.json_response({"ok": True, "channel": {"id": cid, "name": self.channels[cid]}})
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if method == "apps.connections.open":
            return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.port}/link"})
        if method == "auth.test":
            return web.json_response({"ok": True, "user_id": "UBOT", "team_id": "T1", "bot_id": "B1"})
        return web.json_response({"ok": False, "error": "unknown_method"})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1}))
        for envelope in self.envelopes:
            await ws.send_str(json.dumps(envelope))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.acks.append(json.loads(msg.data))
                if len(self.acks) >= len(self.envelopes):
                    self.acked.set()
        return ws


class FakeTelegram(FakeServer):
    """Telegram's Bot API: `/bot<token>/sendMessage` and `/bot<token>/getUpdates` (serving `updates` once)."""

    def __init__(self, *, token: str) -> None:
        super().__init__()
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.offsets: list[str] = []
        self.conflicts = 0
        # As the real API does, a second getUpdates ends the one still waiting with 409 Conflict.
        self._waiting: asyncio.Event | None = None
        self.app.router.add_route("*", "/bot{token}/{method}", self._api)

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        if method == "getUpdates":
            offset = request.query.get("offset", "0")
            self.offsets.append(offset)
            if self._waiting is not None:
                self._waiting.set()
            ended = self._waiting = asyncio.Event()
            pending = [u for u in self.updates if u["update_id"] >= int(offset)]
            if not pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), min(float(request.query.get("timeout", "0")), 0.2))
            if self._waiting is ended:
                self._waiting = None
            if ended.is_set():
                self.conflicts += 1
                conflict = {"ok": False, "error_code": 409, "description": "Conflict: terminated by other"}
                return web.json_response(conflict, status=409)
            return web.json_response({"ok": True, "result": pending})
        fields = await _fields(request)
        self.requests.append((method, fields))
        return web.json_response(
            {"ok": True, "result": {"message_id": 99, "chat": {"id": fields.get("chat_id")}}}
        )


class FakeGraph(FakeServer):
    """The Graph API's `/{phone_number_id}/messages` endpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_post("/{phone}/messages", self._messages)

    async def _messages(self, request: web.Request) -> web.Response:
        fields = await _fields(request)
        fields["_phone"] = request.match_info["phone"]
        fields["_auth"] = request.headers.get("Authorization", "")
        self.requests.append(("messages", fields))
        return web.json_response({"messaging_product": "whatsapp", "messages": [{"id": "wamid.OUT"}]})
