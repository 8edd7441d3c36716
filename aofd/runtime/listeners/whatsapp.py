"""The WhatsApp Cloud API listener (`type: WhatsApp`) at `/hooks/whatsapp/<trigger>`.

Owns Meta's webhook format:

- `GET ?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...`: echo the challenge when the
  token equals the trigger's `verify_token` (constant time), else 403;
- `POST` with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, raw body)>` (401 when
  wrong or missing), then every `entry[].changes[].value.messages[]` becomes one EventMessage,
  de-duplicated on its message id (`wamid...`); status updates are acknowledged, not routed;
- the trigger's replier (Graph `/{phone_number_id}/messages`, `aofd.runtime.replies.WhatsAppReplier`).

The sender's number is both the channel and the user (a WhatsApp chat is one person). The Graph
base URL is the trigger's `base_url` or `PlatformsSpec.whatsapp_api_url`.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import structlog

from aofd.runtime import ports, replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()


class WhatsAppListener(base.WebhookListener):
    """`type: WhatsApp` triggers."""

    platform = "whatsapp"
    default_methods = frozenset({"GET", "POST"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_secrets = tuple(
            s
            for s in (
                base.secret_value(self.config.app_secret),
                *map(base.secret_value, self.config.webhook_secrets),
            )
            if s
        )
        self.verify_token = base.secret_value(self.config.verify_token)
        api_url = (self.config.base_url or self.deps.platforms.whatsapp_api_url).rstrip("/")
        self.replier = replies.WhatsAppReplier(
            api_url=api_url,
            token=base.secret_value(self.config.access_token or self.config.bot_token),
            phone_number_id=str(self.config.phone_number_id or ""),
        )

    async def start(self) -> None:
        if not self.app_secrets:
            log.warning(
                "listener.no_secret",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no app_secret is configured: every delivery will be rejected",
            )
        await super().start()

    async def on_get(self, request: ports.HttpRequest) -> ports.HttpResponse:
        mode = request.query.get("hub.mode")
        token = request.query.get("hub.verify_token")
        challenge = request.query.get("hub.challenge", "")
        if mode != "subscribe" or token is None or not self.verify_token:
            raise verify.Rejected(403, verify.SIGNATURE_INVALID, "verification handshake refused")
        if not hmac.compare_digest(self.verify_token.encode("utf-8"), token.encode("utf-8")):
            raise verify.Rejected(403, verify.SIGNATURE_INVALID, "hub.verify_token does not match")
        return ports.HttpResponse.text(200, challenge)

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.whatsapp(
            secrets=self.app_secrets, body=body, signature=request.headers.get("X-Hub-Signature-256")
        )
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not an object")
        for message in normalize(self.trigger_name, payload):
            await self.accept(message, reply_on_no_match=True)
        return ports.HttpResponse.text(200, "ok")


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


_dict = base.as_dict


def normalize(trigger: str, payload: dict[str, Any]) -> list[ports.EventMessage]:
    """Every inbound message of a webhook payload as an EventMessage (statuses are skipped)."""
    out: list[ports.EventMessage] = []
    for entry in _list(payload.get("entry")):
        waba = str(_dict(entry).get("id", ""))
        for change in _list(_dict(entry).get("changes")):
            value = _dict(_dict(change).get("value"))
            phone_number_id = str(_dict(value.get("metadata")).get("phone_number_id", ""))
            names = {
                str(_dict(c).get("wa_id", "")): str(_dict(_dict(c).get("profile")).get("name", ""))
                for c in _list(value.get("contacts"))
            }
            for msg in _list(value.get("messages")):
                m = _dict(msg)
                sender = str(m.get("from", ""))
                kind = str(m.get("type", "text"))
                if kind == "text":
                    text = str(_dict(m.get("text")).get("body", ""))
                elif kind == "button":
                    text = str(_dict(m.get("button")).get("text", ""))
                elif kind == "interactive":
                    inter = _dict(m.get("interactive"))
                    reply = _dict(inter.get("button_reply") or inter.get("list_reply"))
                    text = str(reply.get("title", ""))
                else:
                    text = ""
                out.append(
                    ports.EventMessage(
                        platform="whatsapp",
                        trigger=trigger,
                        text=text,
                        user=ports.UserRef(
                            sender, names.get(sender, ""), f"whatsapp:{waba}" if waba else "whatsapp"
                        ),
                        channel_id=sender,
                        channel_name=names.get(sender, ""),
                        thread=str(m.get("id", "")),
                        event_type=kind if kind != "text" else "message",
                        delivery_id=str(m.get("id", "")),
                        raw={"entry_id": waba, "phone_number_id": phone_number_id, "message": m},
                        received_at=time.time(),
                        conversation=sender,  # one per sender (memory starts anew after a silence)
                    )
                )
    return out
