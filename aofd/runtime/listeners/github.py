"""The GitHub webhook listener (`type: GitHub`) at `/hooks/github/<trigger>`.

Owns GitHub's delivery format: `X-Hub-Signature-256` (`sha256=` HMAC of the raw body with
`webhook_secret`/`webhook_secrets`; the legacy SHA-1 header is ignored), `X-GitHub-Event`
(required), `X-GitHub-Delivery` (a dedupe key; not signed, so the digest
of the raw body is one as well), JSON or form-encoded (`payload=`) bodies, and
event types `<event>.<action>` (`pull_request.opened`, `issues.labeled`, `push`). `ping` is
answered without starting anything. The repository's full name is the channel; `sender` is the
user; the text is the PR/issue title and body, the comment, or the head commit message.

A trigger without a secret rejects every delivery (GitHub signs when a secret is set; aofd
requires it). It must not reply in chat.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from aofd.runtime import ports, verify
from aofd.runtime.listeners import base

GITHUB_MAX_BODY = 25 * 1024 * 1024
"""GitHub caps webhook payloads at 25 MB."""


class GitHubListener(base.SignedWebhookListener):
    """`type: GitHub` triggers."""

    platform = "github"
    default_max_body = GITHUB_MAX_BODY

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.github(secrets=self.secrets, body=body, signature=request.headers.get("X-Hub-Signature-256"))
        event = (request.headers.get("X-GitHub-Event") or "").strip()
        if not event:
            raise verify.Rejected(400, verify.MALFORMED, "X-GitHub-Event missing")
        delivery = (request.headers.get("X-GitHub-Delivery") or "").strip()
        payload = self._payload(request, body)
        if event == "ping":
            return base.json_response({"ok": True, "outcome": "pong"})
        message = normalize(self.trigger_name, event, delivery, payload)
        return base.outcome_response(await self.accept(message, body=body))

    def _payload(self, request: ports.HttpRequest, body: bytes) -> dict[str, Any]:
        if request.content_type == "application/x-www-form-urlencoded":
            form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
            raw = form.get("payload", [""])[0]
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                raise verify.Rejected(400, verify.MALFORMED, "payload field is not JSON") from None
        else:
            parsed = self.parse_json(body)
        if not isinstance(parsed, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not a JSON object")
        return parsed


def normalize(trigger: str, event: str, delivery: str, payload: dict[str, Any]) -> ports.EventMessage:
    """A GitHub delivery as an EventMessage (event type `<event>.<action>` when there is an action)."""
    action = payload.get("action")
    event_type = f"{event}.{action}" if isinstance(action, str) and action else event
    repo = payload.get("repository") if isinstance(payload.get("repository"), dict) else {}
    sender = payload.get("sender") if isinstance(payload.get("sender"), dict) else {}
    assert isinstance(repo, dict)
    assert isinstance(sender, dict)
    full_name = str(repo.get("full_name", ""))
    thread = ""
    text = ""
    for key in ("pull_request", "issue"):
        item = payload.get(key)
        if isinstance(item, dict):
            thread = str(item.get("number", ""))
            text = "\n".join(str(x) for x in (item.get("title"), item.get("body")) if x)
            break
    comment = payload.get("comment")
    if isinstance(comment, dict) and comment.get("body"):
        text = str(comment["body"])
    head = payload.get("head_commit")
    if not text and isinstance(head, dict):
        text = str(head.get("message", ""))
    return ports.EventMessage(
        platform="github",
        trigger=trigger,
        text=text,
        user=ports.UserRef(str(sender.get("id", "")), str(sender.get("login", "")), "github"),
        channel_id=full_name,
        channel_name=full_name,
        thread=thread,
        event_type=event_type,
        delivery_id=delivery,
        raw=payload,
        received_at=time.time(),
    )
