"""The Bitbucket Cloud webhook listener (`type: Bitbucket`) at `/hooks/bitbucket/<trigger>`.

Owns Bitbucket Cloud's delivery format: `X-Hub-Signature` (`sha256=` HMAC-SHA256 of the raw body
with `webhook_secret`/`webhook_secrets`; a trigger without a secret rejects everything),
`X-Event-Key` (required; the event type as Bitbucket names it, `pullrequest:created`),
`X-Request-UUID` (a dedupe key; it is not signed, so the digest of the raw body is one as well,
and the only one when the header is absent). Served: every `pullrequest:*` event (opened, updated,
approved, merged, declined, comments) and `repo:commit_status_created`/`_updated` (upstream's
example binds those); `diagnostics:ping` is answered, other keys are acknowledged and not routed.

The repository's `workspace/repo_slug` is the channel (upstream's `repositories` filter), the
actor the user; the thread is where an answer goes: `pullrequests/<id>` or `commit/<hash>`. The
text is the pull request's title and description, the comment, or the build status. Answers are
comments (`aofd.runtime.tracker_replies.BitbucketReplier`) through `api_url` (default
`platforms.bitbucket_api_url`) with `username` and `app_password`, or a bearer `token`. Comment
events about a comment aofd posted (by its id, or its text just posted) are acknowledged, not
routed and logged at warning (answering them would loop); never by their author.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from aofd.runtime import ports, tracker_replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()

COMMIT_STATUS = frozenset({"repo:commit_status_created", "repo:commit_status_updated"})
OWN = "aofd's own comment"


class BitbucketListener(base.SignedWebhookListener):
    """`type: Bitbucket` triggers."""

    platform = "bitbucket"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self.config
        username = config.username or ""
        password = base.secret_value(config.app_password)
        token = base.secret_value(config.token)
        self.bitbucket: tracker_replies.BitbucketReplier | None = None
        if (username and password) or token:
            self.bitbucket = tracker_replies.BitbucketReplier(
                api_url=config.api_url or self.deps.platforms.bitbucket_api_url,
                username=username,
                app_password=password,
                token=token,
            )
        self.replier = self.bitbucket

    def succeed(self, previous: base.Listener) -> None:
        """Recognise the comments the replaced listener posted."""
        if (
            isinstance(previous, BitbucketListener)
            and previous.bitbucket is not None
            and self.bitbucket is not None
        ):
            self.bitbucket.share(previous.bitbucket)

    async def start(self) -> None:
        if self.bitbucket is None:
            log.warning(
                "listener.no_reply_credentials",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no username and app_password, nor token: answers are not posted",
            )
        await super().start()

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.bitbucket(secrets=self.secrets, body=body, signature=request.headers.get("X-Hub-Signature"))
        event = (request.headers.get("X-Event-Key") or "").strip()
        if not event:
            raise verify.Rejected(400, verify.MALFORMED, "X-Event-Key missing")
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not a JSON object")
        if event == "diagnostics:ping":
            return base.json_response({"ok": True, "outcome": "pong"})
        skip = self._skip(event, payload)
        if skip:
            emit = log.warning if skip == OWN else log.info
            emit("event.ignored", trigger=self.trigger_name, event_type=event, why=skip)
            return base.json_response({"accepted": False, "outcome": "ignored"})
        delivery = (request.headers.get("X-Request-UUID") or "").strip()
        message = normalize(self.trigger_name, event, delivery, payload)
        return base.outcome_response(await self.accept(message, body=body))

    def _skip(self, event: str, payload: dict[str, Any]) -> str:
        if not event.startswith("pullrequest:") and event not in COMMIT_STATUS:
            return "event not served"
        comment = _dict(payload.get("comment"))
        if comment and self.bitbucket is not None:
            text = str(_dict(comment.get("content")).get("raw") or "")
            if self.bitbucket.authored.mine(item=str(comment.get("id") or ""), text=text):
                return OWN
        return ""


_dict = base.as_dict


def normalize(trigger: str, event: str, delivery: str, payload: dict[str, Any]) -> ports.EventMessage:
    """A Bitbucket Cloud webhook as an EventMessage (event type: the `X-Event-Key`)."""
    repo = _dict(payload.get("repository"))
    actor = _dict(payload.get("actor"))
    pull = _dict(payload.get("pullrequest"))
    comment = _dict(payload.get("comment"))
    status = _dict(payload.get("commit_status"))
    full_name = str(repo.get("full_name") or "")
    thread = ""
    text = ""
    if pull.get("id") not in (None, ""):
        thread = f"pullrequests/{pull['id']}"
        text = "\n".join(str(x) for x in (pull.get("title"), pull.get("description")) if x)
    if comment:
        text = str(_dict(comment.get("content")).get("raw") or "")
    if status:
        commit = _dict(status.get("commit"))
        if commit.get("hash") and not thread:
            thread = f"commit/{commit['hash']}"
        parts = (status.get("name"), status.get("state"), status.get("description"))
        text = " ".join(str(x) for x in parts if x)
    return ports.EventMessage(
        platform="bitbucket",
        trigger=trigger,
        text=text,
        user=ports.UserRef(
            str(actor.get("account_id") or actor.get("uuid") or ""),
            str(actor.get("nickname") or actor.get("display_name") or ""),
            "bitbucket",
        ),
        channel_id=full_name,
        channel_name=full_name,
        thread=thread,
        event_type=event,
        delivery_id=delivery,
        raw=payload,
        received_at=time.time(),
    )
