"""The generic HTTP webhook listener (`type: HTTP`) at `/hooks/http/<trigger>`.

Owns aofd's own signing scheme (RELIABILITY.md section 2): `X-Aofd-Timestamp`,
`X-Aofd-Signature: v1=<hex HMAC-SHA256(secret, ts + "." + raw body)>` (several `v1=` values for
rotation; any of `webhook_secret`/`webhook_secrets` verifies), a 300 s window, and dedupe on
`X-Aofd-Delivery` and on the signature itself (the delivery header is not signed, so a replay
with a new delivery id inside the window is caught by the signature). Also the
trigger's `methods` (default POST) and `required_headers` (compared in constant time; their values
are secret fields, so `${VAR}` in them arrives here already substituted by the planner).
No secret configured means no signature is required: a warning says so at start.

The body may be JSON (`text`/`message`, `user`, `channel`, `event`/`type`, `thread` are read) or
plain text. The answer is 202 with the run id when a flow started. It must not reply in chat.

Conversation memory (`aofd.runtime.memory`): the body's `thread`, else the `X-Aofd-Thread` header,
names the thread a request continues (stripped; an id over `MAX_THREAD_CHARS` or with control
characters is ignored). The conversation is `<user>/<thread>` (the user id percent-encoded, '' when
the body names none): a caller continues its own threads, never another user's. A trigger without a
webhook secret has no conversations at all (anyone who can reach it could write turns that later
runs replay). The signature covers the body only: a `thread` in the body is signed, the header is
not (it is no secret, but whoever can alter a signed request in flight can move it into another
conversation of the same binding and user).
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import structlog

from aofd.runtime import ports, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()


class HttpListener(base.WebhookListener):
    """`type: HTTP` triggers."""

    platform = "http"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.secrets = tuple(base.secret_value(s) for s in self.config.all_webhook_secrets if s)
        self._keys = verify.keyed(self.secrets)  # HMAC keyed once; `secrets` changes mean a new listener
        self.methods = frozenset(m.upper() for m in self.config.methods) or self.default_methods
        self._required = tuple(
            (name, base.secret_value(value)) for name, value in sorted(self.config.required_headers.items())
        )

    async def start(self) -> None:
        if not self.secrets:
            log.warning(
                "listener.unsigned",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no webhook_secret is configured: requests are accepted without a signature",
            )
        await super().start()

    async def on_get(self, request: ports.HttpRequest) -> ports.HttpResponse:
        return await self.on_request(request, b"")

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        headers = request.headers
        signature = headers.get("X-Aofd-Signature")
        delivery = headers.get("X-Aofd-Delivery", "").strip()
        if self.secrets:
            verify.aofd_http_keyed(
                keys=self._keys,
                body=body,
                timestamp=headers.get("X-Aofd-Timestamp"),
                signature=signature,
                now=self.deps.clock(),
            )
        # After the signature: who lacks the signing secret learns nothing about the header values
        # (their check answers differently from a bad signature's).
        for name, expected in self._required:
            verify.static_header(expected=expected, given=headers.get(name), name=name)
        # X-Aofd-Delivery is not signed: a replay inside the window with a new delivery id must
        # still be caught, so the signature itself is a dedupe key too; both are claimed at once
        # (one etcd round trip with `cluster:`).
        sig_key = "sig:" + signature.strip() if self.secrets and signature else ""
        message = self.normalize(request, body, delivery)
        if not await self.first_time(sig_key, message.delivery_id):
            return base.outcome_response(None)
        outcome = self.deps.dispatcher.dispatch(message)
        if base.retry_later(outcome):  # the sender retries this very request: let it through then
            await self.forget(message.delivery_id, sig_key)
        return base.outcome_response(outcome)

    def normalize(self, request: ports.HttpRequest, body: bytes, delivery: str) -> ports.EventMessage:
        payload: dict[str, Any] = {}
        text = ""
        if body and (_looks_like_json(body) or request.content_type == "application/json"):
            parsed = self.parse_json(body)
            payload = parsed if isinstance(parsed, dict) else {"data": parsed}
        elif body:
            text = body.decode("utf-8", errors="replace")
        elif request.method == "GET":
            payload = dict(request.query)
        get = payload.get
        if not text:
            value = get("text") or get("message")
            text = value if isinstance(value, str) else ""
        user = get("user")
        if isinstance(user, dict):
            user_ref = ports.UserRef(str(user.get("id", "")), str(user.get("name", "")), "http")
        else:
            name = user if isinstance(user, str) else ""
            user_ref = ports.UserRef(name, name, "http")
        event_type = request.headers.get("X-Aofd-Event")
        if not event_type:
            value = get("event") or get("type")
            event_type = value if isinstance(value, str) and value else "webhook"
        channel = get("channel")
        if not isinstance(channel, str):
            channel = ""
        thread = _thread_id(get("thread")) or _thread_id(request.headers.get("X-Aofd-Thread"))
        # memory only where requests are signed, and per user: `<user>/<thread>`
        conversation = (
            f"{urllib.parse.quote(user_ref.id, safe='')}/{thread}" if thread and self.secrets else ""
        )
        # Positional, in field order (platform, trigger, text, user, channel_id, channel_name, thread,
        # event_type, delivery_id, raw, received_at, conversation): the cheapest call of the named tuple.
        return ports.EventMessage(
            self.platform,
            self.trigger_name,
            text,
            user_ref,
            channel,
            channel,
            thread,
            event_type,
            delivery,
            payload,
            time.time(),
            conversation,  # the conversation this request continues ('' none)
        )


_JSON_START = (b"{", b"[")
MAX_THREAD_CHARS = 200


def _thread_id(value: object) -> str:
    """A thread id from the body or the header, stripped; '' when absent, too long or not printable."""
    if not isinstance(value, str):
        return ""
    value = value.strip()
    if len(value) > MAX_THREAD_CHARS or not value.isprintable():
        return ""
    return value


def _looks_like_json(body: bytes) -> bool:
    """`body.lstrip()[:1] in (b"{", b"[")` without copying the body unless it starts with whitespace."""
    first = body[:1]
    if first in _JSON_START:
        return True
    return first.isspace() and body.lstrip()[:1] in _JSON_START
