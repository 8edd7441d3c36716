"""The Jira webhook listener (`type: Jira`) at `/hooks/jira/<trigger>`.

Owns Jira's delivery format: `X-Hub-Signature` (`sha256=` HMAC-SHA256 of the raw body with
`webhook_secret`/`webhook_secrets`; a trigger without a secret rejects everything),
`X-Atlassian-Webhook-Identifier` (a dedupe key; Jira keeps it across its retries, but it is not
signed, so the digest of the raw body is a dedupe key as well: a captured body replayed under a
new identifier is a duplicate), and the
`webhookEvent` field. Served events: `jira:issue_created`, `jira:issue_updated` and
`comment_created`, as event types `issue_created`, `issue_updated`, `comment_created`
(upstream's `jira_events` names). Other events are acknowledged and not routed, and so is an
`issue_updated` that only reports a comment (`issue_event_type_name: issue_commented`; the
`comment_created` event carries it).

The project key is the channel, the issue key the thread, the acting user (or the comment's
author) the user; the text is the summary and description, or the comment. Answers are
comments on the issue (`aofd.runtime.tracker_replies.JiraReplier`) through the site's REST API:
`base_url` (listed in `platforms.trigger_base_urls`), else Jira Cloud by `cloud_id` under
`platforms.jira_api_url` (`cloud_id` must be a cloud id: letters, digits and `-`, else the
trigger does not start), with `user_email` (or `email`) and `api_token`. A `comment_created`
about a comment aofd posted (by its id, or its text just posted) is acknowledged, not routed and
logged at warning: answering it would loop. Issue events are never dropped by their author (the
API token may be a person's).
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog

from aofd.runtime import ports, tracker_replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()

SERVED = frozenset({"issue_created", "issue_updated", "comment_created"})
"""Event types (upstream's `jira_events` names) that are routed."""
COMMENT_ONLY = frozenset({"issue_commented", "issue_comment_edited", "issue_comment_deleted"})
"""`issue_event_type_name`s of an `issue_updated` that only reports a comment."""
OWN = "aofd's own comment"
CLOUD_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
"""The shape of a Jira Cloud id (a UUID), which is put in the API URL as it is."""


class JiraListener(base.SignedWebhookListener):
    """`type: Jira` triggers."""

    platform = "jira"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self.config
        email = config.user_email or config.email or ""
        token = base.secret_value(config.api_token)
        site = config.base_url or ""
        self.bad_cloud_id = bool(config.cloud_id) and not CLOUD_ID.fullmatch(config.cloud_id or "")
        if not site and config.cloud_id and not self.bad_cloud_id:
            site = f"{self.deps.platforms.jira_api_url.rstrip('/')}/ex/jira/{config.cloud_id}"
        self.jira: tracker_replies.JiraReplier | None = None
        if site and email and token:
            self.jira = tracker_replies.JiraReplier(api_url=site, email=email, token=token)
        self.replier = self.jira

    def succeed(self, previous: base.Listener) -> None:
        """Recognise the comments the replaced listener posted."""
        if isinstance(previous, JiraListener) and previous.jira is not None and self.jira is not None:
            self.jira.share(previous.jira)

    async def start(self) -> None:
        if self.bad_cloud_id and not self.config.base_url:
            raise base.ListenerError(
                f"Jira trigger {self.trigger_name}: cloud_id is not a Jira Cloud id (expected letters, "
                "digits and '-', at most 64; it is put in the API URL)"
            )
        if self.jira is None:
            log.warning(
                "listener.no_reply_credentials",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no base_url or cloud_id, user_email and api_token: answers are not posted",
            )
        await super().start()

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.jira(secrets=self.secrets, body=body, signature=request.headers.get("X-Hub-Signature"))
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not a JSON object")
        webhook_event = payload.get("webhookEvent")
        if not isinstance(webhook_event, str) or not webhook_event:
            raise verify.Rejected(400, verify.MALFORMED, "webhookEvent missing")
        event_type = webhook_event.removeprefix("jira:")
        delivery = (request.headers.get("X-Atlassian-Webhook-Identifier") or "").strip()
        skip = self._skip(event_type, payload)
        if skip:
            emit = log.warning if skip == OWN else log.info
            emit("event.ignored", trigger=self.trigger_name, event_type=event_type, why=skip)
            return base.json_response({"accepted": False, "outcome": "ignored"})
        message = normalize(self.trigger_name, event_type, delivery or _fallback_id(payload), payload)
        return base.outcome_response(await self.accept(message, body=body))

    def _skip(self, event_type: str, payload: dict[str, Any]) -> str:
        """Why this event is not routed ('' when it is)."""
        if event_type not in SERVED:
            return "event type not served"
        if event_type == "issue_updated" and payload.get("issue_event_type_name") in COMMENT_ONLY:
            return "a comment, reported by comment_created"
        if event_type == "comment_created" and self.jira is not None:
            comment = _dict(payload.get("comment"))
            if self.jira.authored.mine(
                item=str(comment.get("id") or ""), text=plain_text(comment.get("body"))
            ):
                return OWN
        return ""


_dict = base.as_dict


def _fallback_id(payload: dict[str, Any]) -> str:
    """A delivery id for a sender without `X-Atlassian-Webhook-Identifier` (Jira Server)."""
    issue, comment = _dict(payload.get("issue")), _dict(payload.get("comment"))
    parts = (payload.get("webhookEvent"), payload.get("timestamp"), issue.get("id"), comment.get("id"))
    return ":".join(str(p) for p in parts if p not in (None, ""))


def plain_text(value: object) -> str:
    """A Jira text field as plain text: wiki markup as it is, an ADF document's text nodes joined."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return ""
    if value.get("type") == "text":
        return str(value.get("text") or "")
    content = value.get("content")
    if not isinstance(content, list):
        return ""
    inner = [plain_text(node) for node in content]
    sep = "\n" if value.get("type") in ("doc", "bulletList", "orderedList") else ""
    return sep.join(inner)


def normalize(trigger: str, event_type: str, delivery: str, payload: dict[str, Any]) -> ports.EventMessage:
    """A Jira webhook as an EventMessage: project key as channel, issue key as thread."""
    issue = _dict(payload.get("issue"))
    fields = _dict(issue.get("fields"))
    project = _dict(fields.get("project"))
    comment = _dict(payload.get("comment"))
    user = _dict(comment.get("author")) if comment else _dict(payload.get("user"))
    if not user:
        user = _dict(payload.get("user"))
    if event_type.startswith("comment_"):
        text = plain_text(comment.get("body"))
    else:
        text = "\n".join(
            t for t in (plain_text(fields.get("summary")), plain_text(fields.get("description"))) if t
        )
    key = str(project.get("key") or "")
    return ports.EventMessage(
        platform="jira",
        trigger=trigger,
        text=text,
        user=ports.UserRef(
            str(user.get("accountId") or user.get("name") or ""),
            str(user.get("displayName") or user.get("name") or ""),
            "jira",
        ),
        channel_id=key,
        channel_name=key,
        thread=str(issue.get("key") or ""),
        event_type=event_type,
        delivery_id=delivery,
        raw=payload,
        received_at=time.time(),
    )
