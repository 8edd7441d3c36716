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
"""

from __future__ import annotations

import time
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
        # still be caught, so the signature itself is a dedupe key too.
        if self.secrets and signature and not self.first_time("sig:" + signature.strip()):
            return base.json_response(base.outcome_body(None))
        message = self.normalize(request, body, delivery)
        # `self.accept(message)`, inlined (this is the hottest path): dedupe on the delivery id, then route.
        dedupe = self.deps.dedupe
        if not dedupe.first_time(self.platform, self.trigger_name, message.delivery_id):
            self.duplicate(message.delivery_id)
            return base.outcome_response(None)
        outcome = self.deps.dispatcher.dispatch(message)
        if base.retry_later(outcome):  # the sender retries this very request: let it through then
            dedupe.forget(self.platform, self.trigger_name, message.delivery_id)
            if self.secrets and signature:
                dedupe.forget(self.platform, self.trigger_name, "sig:" + signature.strip())
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
        thread = get("thread")
        # Positional, in field order (platform, trigger, text, user, channel_id, channel_name, thread,
        # event_type, delivery_id, raw, received_at): the cheapest call of the frozen dataclass.
        return ports.EventMessage(
            self.platform,
            self.trigger_name,
            text,
            user_ref,
            channel,
            channel,
            thread if isinstance(thread, str) else "",
            event_type,
            delivery,
            payload,
            time.time(),
        )


_JSON_START = (b"{", b"[")


def _looks_like_json(body: bytes) -> bool:
    """`body.lstrip()[:1] in (b"{", b"[")` without copying the body unless it starts with whitespace."""
    first = body[:1]
    if first in _JSON_START:
        return True
    return first.isspace() and body.lstrip()[:1] in _JSON_START
