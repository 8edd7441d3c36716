"""The PagerDuty Webhooks v3 listener (`type: PagerDuty`) at `/hooks/pagerduty/<trigger>`.

Owns PagerDuty's delivery format: `X-PagerDuty-Signature`, a comma-separated list of
`v1=<hex HMAC-SHA256(secret, raw body)>` (one per active secret; accepted when any matches,
`v0=`-only is 403, a malformed header 400), dedupe on `event.id`, and incident events
(`incident.triggered`, `incident.acknowledged`, ...) as EventMessages: the service is the
channel (id and summary), the agent the user, the incident title the text. Other event types
(`pagey.ping`) are acknowledged and not routed.

A trigger without a secret rejects every delivery. It must not reply in chat.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from aofd.runtime import ports, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()


class PagerDutyListener(base.SignedWebhookListener):
    """`type: PagerDuty` triggers."""

    platform = "pagerduty"

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.pagerduty(
            secrets=self.secrets, body=body, signature=request.headers.get("X-PagerDuty-Signature")
        )
        payload = self.parse_json(body)
        event = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(event, dict):
            raise verify.Rejected(400, verify.MALFORMED, "no event object")
        message = normalize(self.trigger_name, event)
        if not message.event_type.startswith("incident."):
            log.info("event.ignored", trigger=self.trigger_name, event_type=message.event_type)
            return base.json_response({"accepted": False, "outcome": "ignored"})
        return base.outcome_response(await self.accept(message))


_dict = base.as_dict


def normalize(trigger: str, event: dict[str, Any]) -> ports.EventMessage:
    """A v3 webhook `event` object as an EventMessage."""
    data = _dict(event.get("data"))
    service = _dict(data.get("service"))
    agent = _dict(event.get("agent"))
    return ports.EventMessage(
        platform="pagerduty",
        trigger=trigger,
        text=str(data.get("title") or data.get("summary") or ""),
        user=ports.UserRef(str(agent.get("id", "")), str(agent.get("summary", "")), "pagerduty"),
        channel_id=str(service.get("id", "")),
        channel_name=str(service.get("summary", "")),
        thread=str(data.get("id", "")),
        event_type=str(event.get("event_type", "")),
        delivery_id=str(event.get("id", "")),
        raw=event,
        received_at=time.time(),
    )
