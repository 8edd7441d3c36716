"""The Opsgenie outgoing-webhook listener (`type: Opsgenie`) at `/hooks/opsgenie/<trigger>`.

Opsgenie does not sign its webhooks. aofd requires a shared token instead: the integration
sends it as a custom header, `X-Opsgenie-Token: <webhook_token>` (upstream's field; with
`webhook_secrets` as well during a rotation), compared in constant time. A trigger without a
`webhook_token` does not start (its bindings stall with that reason): an open endpoint would
let anyone start runs.

Served alert actions: `Create`, `Acknowledge`, `Close`, as event types `alert.created`,
`alert.acknowledged`, `alert.closed` (narrowed further by upstream's `allowed_actions`);
other actions (notes included: aofd's own answers are notes) are acknowledged and not routed.
Opsgenie sends no delivery id: `<alertId>:<action>:<updatedAt>` (the action lower-cased) is the
dedupe key, and so is the digest of the raw body (the only key when the alert has no `updatedAt`
or `createdAt`).

The integration (`integrationId`, `integrationName`) is the channel, the alert id the thread,
the alert's user the user, the alert message and description the text. Answers are alert notes
(`aofd.runtime.tracker_replies.OpsgenieReplier`) with `api_key` through `api_url` (default
`platforms.opsgenie_api_url`; EU accounts list `https://api.eu.opsgenie.com`).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from aofd.runtime import ports, tracker_replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()

TOKEN_HEADER = "X-Opsgenie-Token"  # noqa: S105 (a header name)
ACTIONS = {"create": "alert.created", "acknowledge": "alert.acknowledged", "close": "alert.closed"}
"""Served actions (lower-cased) -> event type."""


class OpsgenieListener(base.WebhookListener):
    """`type: Opsgenie` triggers."""

    platform = "opsgenie"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self.config
        first = base.secret_value(config.webhook_token)
        rest = tuple(base.secret_value(s) for s in config.all_webhook_secrets)
        self.tokens = tuple(t for t in (first, *rest) if t)
        allowed = {a.strip().lower() for a in config.allowed_actions if a.strip()}
        self.actions = {k: v for k, v in ACTIONS.items() if not allowed or k in allowed}
        api_key = base.secret_value(config.api_key)
        self.opsgenie: tracker_replies.OpsgenieReplier | None = None
        if api_key:
            self.opsgenie = tracker_replies.OpsgenieReplier(
                api_url=config.api_url or self.deps.platforms.opsgenie_api_url,
                api_key=api_key,
                user=config.bot_name or "",
            )
        self.replier = self.opsgenie

    async def start(self) -> None:
        if not self.tokens:
            raise base.ListenerError(
                f"Opsgenie trigger {self.trigger_name} has no webhook_token: Opsgenie does not sign "
                f"its webhooks, so aofd requires a shared token (sent as the {TOKEN_HEADER} header)"
            )
        if self.opsgenie is None:
            log.warning(
                "listener.no_reply_credentials",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no api_key: answers are not posted",
            )
        await super().start()

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.shared_token(secrets=self.tokens, given=request.headers.get(TOKEN_HEADER), name=TOKEN_HEADER)
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not a JSON object")
        action = payload.get("action")
        alert = payload.get("alert")
        if (
            not isinstance(action, str)
            or not action
            or not isinstance(alert, dict)
            or not alert.get("alertId")
        ):
            raise verify.Rejected(400, verify.MALFORMED, "action or alert.alertId missing")
        event_type = self.actions.get(action.lower())
        if event_type is None:
            log.info("event.ignored", trigger=self.trigger_name, action=action[:64])
            return base.json_response({"accepted": False, "outcome": "ignored"})
        message = normalize(self.trigger_name, event_type, payload)
        return base.outcome_response(await self.accept(message, body=body))


_dict = base.as_dict


def normalize(trigger: str, event_type: str, payload: dict[str, Any]) -> ports.EventMessage:
    """An Opsgenie webhook as an EventMessage: the integration as channel, the alert id as thread."""
    alert = _dict(payload.get("alert"))
    alert_id = str(alert.get("alertId") or "")
    stamp = alert.get("updatedAt") or alert.get("createdAt") or ""
    text = "\n".join(str(x) for x in (alert.get("message"), alert.get("description")) if x)
    return ports.EventMessage(
        platform="opsgenie",
        trigger=trigger,
        text=text,
        user=ports.UserRef(str(alert.get("userId") or ""), str(alert.get("username") or ""), "opsgenie"),
        channel_id=str(payload.get("integrationId") or ""),
        channel_name=str(payload.get("integrationName") or ""),
        thread=alert_id,
        event_type=event_type,
        delivery_id=f"{alert_id}:{str(payload.get('action') or '').lower()}:{stamp}" if stamp else "",
        raw=payload,
        received_at=time.time(),
    )
