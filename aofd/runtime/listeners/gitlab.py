"""The GitLab webhook listener (`type: GitLab`) at `/hooks/gitlab/<trigger>`.

Owns GitLab's delivery format: `X-Gitlab-Token` (a static token GitLab sends as configured; it
must equal `webhook_secret` or one of `webhook_secrets`, compared in constant time; a trigger
without one rejects everything), `X-Gitlab-Event` (required), `X-Gitlab-Event-UUID` (a dedupe
key, with the digest of the raw body), and the payload's `object_kind`. Served kinds:
`merge_request`, `note`, `pipeline` and `push`, as event types `<kind>.<action>`
(`merge_request.open`, `note.create`), a pipeline's `pipeline.<status>` (`pipeline.failed`), and
`push`; others are acknowledged, not routed.

The project's numeric id is the channel id and its `path_with_namespace` the channel name
(upstream's `projects` filter), the acting user the user; the thread is where an answer goes:
`merge_requests/<iid>`, `issues/<iid>` or `commits/<sha>`. The text is the merge request's
title and description, the note, the pipeline's status and commit message, or the pushed
commit's message. Answers are notes (`aofd.runtime.tracker_replies.GitLabReplier`) with the
trigger's `token` through `api_url` (default `platforms.gitlab_api_url`), each ending with the
hidden marker `<!-- aofd -->`. Note events about aofd's own notes (by the marker or the note id)
are acknowledged, not routed and logged at warning (answering them would loop); never by their
author (the token may be a person's).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from aofd.runtime import ports, tracker_replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()

SERVED = frozenset({"merge_request", "note", "pipeline", "push"})
"""`object_kind`s that are routed."""
OWN = "aofd's own note"


class GitLabListener(base.SignedWebhookListener):
    """`type: GitLab` triggers."""

    platform = "gitlab"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        token = base.secret_value(self.config.token)
        api_url = self.config.api_url or self.deps.platforms.gitlab_api_url
        self.gitlab = tracker_replies.GitLabReplier(api_url=api_url, token=token) if token else None
        self.replier = self.gitlab

    def succeed(self, previous: base.Listener) -> None:
        """Recognise the notes the replaced listener posted."""
        if isinstance(previous, GitLabListener) and previous.gitlab is not None and self.gitlab is not None:
            self.gitlab.share(previous.gitlab)

    async def start(self) -> None:
        if self.gitlab is None:
            log.warning(
                "listener.no_reply_credentials",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no token: answers are not posted",
            )
        await super().start()

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.shared_token(
            secrets=self.secrets, given=request.headers.get("X-Gitlab-Token"), name="X-Gitlab-Token"
        )
        if not (request.headers.get("X-Gitlab-Event") or "").strip():
            raise verify.Rejected(400, verify.MALFORMED, "X-Gitlab-Event missing")
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not a JSON object")
        kind = payload.get("object_kind")
        if not isinstance(kind, str) or not kind:
            raise verify.Rejected(400, verify.MALFORMED, "object_kind missing")
        skip = self._skip(kind, payload)
        if skip:
            emit = log.warning if skip == OWN else log.info
            emit("event.ignored", trigger=self.trigger_name, object_kind=kind, why=skip)
            return base.json_response({"accepted": False, "outcome": "ignored"})
        delivery = (request.headers.get("X-Gitlab-Event-UUID") or "").strip()
        message = normalize(self.trigger_name, kind, delivery, payload)
        return base.outcome_response(await self.accept(message, body=body))

    def _skip(self, kind: str, payload: dict[str, Any]) -> str:
        if kind not in SERVED:
            return "object kind not served"
        if kind == "note" and self.gitlab is not None:
            note = _dict(payload.get("object_attributes"))
            if self.gitlab.authored.mine(item=_id(note.get("id")), text=str(note.get("note") or "")):
                return OWN
        return ""


_dict = base.as_dict


def _id(value: object) -> str:
    return str(value) if isinstance(value, int | str) and not isinstance(value, bool) and value != "" else ""


def _thread(kind: str, payload: dict[str, Any], attrs: dict[str, Any]) -> str:
    """Where an answer to this event goes, below the project."""
    if kind == "merge_request":
        return f"merge_requests/{_id(attrs.get('iid'))}" if _id(attrs.get("iid")) else ""
    if kind == "note":
        noteable = attrs.get("noteable_type")
        if noteable == "MergeRequest" and _id(_dict(payload.get("merge_request")).get("iid")):
            return f"merge_requests/{_id(_dict(payload.get('merge_request')).get('iid'))}"
        if noteable == "Issue" and _id(_dict(payload.get("issue")).get("iid")):
            return f"issues/{_id(_dict(payload.get('issue')).get('iid'))}"
        sha = _id(_dict(payload.get("commit")).get("id")) or _id(attrs.get("commit_id"))
        return f"commits/{sha}" if sha else ""
    if kind == "pipeline":
        mr = _dict(payload.get("merge_request"))
        if _id(mr.get("iid")):
            return f"merge_requests/{_id(mr.get('iid'))}"
        sha = _id(attrs.get("sha"))
        return f"commits/{sha}" if sha else ""
    sha = _id(payload.get("checkout_sha")) or _id(payload.get("after"))
    return f"commits/{sha}" if sha and set(sha) != {"0"} else ""


def _text(kind: str, payload: dict[str, Any], attrs: dict[str, Any]) -> str:
    if kind == "merge_request":
        return "\n".join(str(x) for x in (attrs.get("title"), attrs.get("description")) if x)
    if kind == "note":
        return str(attrs.get("note") or "")
    if kind == "pipeline":
        commit = _dict(payload.get("commit"))
        head = f"pipeline {attrs.get('status', '')} on {attrs.get('ref', '')}".strip()
        return "\n".join(x for x in (head, str(commit.get("message") or "")) if x)
    commits = payload.get("commits")
    last = commits[-1] if isinstance(commits, list) and commits else {}
    return str(_dict(last).get("message") or "")


def normalize(trigger: str, kind: str, delivery: str, payload: dict[str, Any]) -> ports.EventMessage:
    """A GitLab webhook as an EventMessage (event type `<object_kind>.<action or status>`)."""
    attrs = _dict(payload.get("object_attributes"))
    action = attrs.get("status") if kind == "pipeline" else attrs.get("action")
    event_type = f"{kind}.{action}" if isinstance(action, str) and action else kind
    project = _dict(payload.get("project"))
    user = _dict(payload.get("user"))
    if kind == "push":
        user_id, user_name = _id(payload.get("user_id")), str(payload.get("user_username") or "")
    else:
        user_id, user_name = _id(user.get("id")), str(user.get("username") or "")
    project_id = _id(project.get("id")) or _id(payload.get("project_id"))
    return ports.EventMessage(
        platform="gitlab",
        trigger=trigger,
        text=_text(kind, payload, attrs),
        user=ports.UserRef(user_id, user_name, "gitlab"),
        channel_id=project_id,
        channel_name=str(project.get("path_with_namespace") or ""),
        thread=_thread(kind, payload, attrs),
        event_type=event_type,
        delivery_id=delivery,
        raw=payload,
        received_at=time.time(),
    )
