"""Posting answers as comments: Jira issues, GitLab merge requests, Bitbucket pull requests,
Opsgenie alerts, each with its trigger's own credentials.

Owns

- `JiraReplier`: `POST {site}/rest/api/3/issue/{key}/comment` with an Atlassian Document Format
  body (upstream uses API v3), basic auth `email:api_token`;
- `GitLabReplier`: notes through the REST API v4 (`/projects/{id}/merge_requests/{iid}/notes`,
  `/projects/{id}/issues/{iid}/notes`, `/projects/{id}/repository/commits/{sha}/comments`),
  `PRIVATE-TOKEN` header;
- `BitbucketReplier`: pull request (and commit) comments through the 2.0 API, basic auth
  `username:app_password` or a bearer access `token`;
- `OpsgenieReplier`: alert notes (`POST {api}/v2/alerts/{id}/notes`), `Authorization: GenieKey`;
- `Authored`: what aofd itself posted (the ids of its comments and digests of their texts; GitLab
  notes also carry the hidden `MARKER`), so a listener can drop the webhook a platform sends about
  aofd's own comment instead of answering it (which would loop). Never the author account: the
  credentials may be a person's, whose own comments and issues must still be answered.

A `ReplyTarget` names where to post: its `thread` is the item's path below the project or
repository (`merge_requests/7`, `pullrequests/3`, `commit/<sha>`), or an issue key or alert id.
Every id is checked against its shape before it is percent-encoded into the URL (digits for
GitLab project ids, iids and Bitbucket pull request ids, hex for commits, `PROJ-7` or digits for
Jira issues, `[A-Za-z0-9_.-]` and not only dots for slugs and alert ids); any other value is a
`replies.ReplyError` and no request is sent. None of these platforms has buttons: an approval prompt
says how to decide (`aofctl approve`). Errors become `replies.ReplyError` with the HTTP status,
never the URL, the answer body or a credential.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog

from aofd.runtime import httpclient, ports, replies

log = structlog.get_logger()

MAX_COMMENT_CHARS = 30_000
"""Stay under every platform's comment limit (Jira's is 32,767 characters)."""
AUTHORED_MEMORY = 4096
"""Comment ids an `Authored` remembers (the oldest is forgotten first)."""


MARKER = "<!-- aofd -->"
"""Appended to GitLab notes: an HTML comment GitLab's Markdown does not show, by which a Note Hook
about aofd's own note is recognised even before the note's id is known."""


def _text_key(text: str) -> str:
    """A posted text, whitespace-insensitive, as a short digest (platforms re-render line breaks)."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:32]


TEXT_WINDOW_S = 120.0
"""How long a posted text is recognised by its digest: enough for the platform's webhook about it
to arrive before the answer to the POST (which gives the comment id) is read."""


class Authored:
    """What aofd posted: the ids of its comments, and digests of the texts it just posted (bounded).

    Never the author account: the credentials may be a person's (Jira API tokens and GitLab
    personal access tokens are), and that person's own comments and issues must still be
    answered. Shared by the listener that replaces another for the same trigger (`share`), so the
    webhook about an answer the old listener posted is still recognised.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Invariant: at most AUTHORED_MEMORY entries each, oldest first; texts map to when posted.
        self.items: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.texts: collections.OrderedDict[str, float] = collections.OrderedDict()

    def note(self, *, item: str = "", text: str = "") -> None:
        """Remember one posted comment: its id (from the platform's answer) and/or its text (recorded
        before the request is sent, so a webhook that arrives before the answer is recognised)."""
        if item:
            self.items[item] = None
            self.items.move_to_end(item)
            while len(self.items) > AUTHORED_MEMORY:
                self.items.popitem(last=False)
        if text.strip():
            key = _text_key(text)
            self.texts[key] = self._clock()
            self.texts.move_to_end(key)
            while len(self.texts) > AUTHORED_MEMORY:
                self.texts.popitem(last=False)

    def mine(self, *, item: str = "", text: str = "") -> bool:
        """Was this comment aofd's: its id, the marker in its text, or a text posted just now?"""
        if item and item in self.items:
            return True
        if not text:
            return False
        if MARKER in text:
            return True
        posted = self.texts.get(_text_key(text))
        return posted is not None and self._clock() - posted <= TEXT_WINDOW_S


_DIGITS = re.compile(r"[0-9]{1,20}")
_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_JIRA_KEY = re.compile(r"[A-Z][A-Z0-9_]+-[0-9]{1,20}|[0-9]{1,20}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _checked(value: str, shape: re.Pattern[str], what: str, expected: str) -> str:
    """`value` percent-encoded as one path segment when it has the expected shape; else ReplyError.

    A dot-only segment (`.`, `..`) is refused whatever the shape: the URL would resolve it and
    post somewhere else than the item named.
    """
    if not shape.fullmatch(value) or set(value) == {"."}:
        raise replies.ReplyError(f"refused to post: {what} {value[:80]!r} is not {expected}")
    return urllib.parse.quote(value, safe="")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _str(value: object) -> str:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""


class _TrackerReplier:
    """Shared plumbing: one HTTP client, JSON POSTs, the `Authored` record, no buttons."""

    what = "comment"

    def __init__(self, *, api_url: str, headers: dict[str, str]) -> None:
        self._api = api_url.rstrip("/")
        self._headers = {"Accept": "application/json", **headers}
        self._http = httpclient.HttpClient(timeout=30.0)
        self.authored = Authored()

    def share(self, other: _TrackerReplier) -> None:
        """Recognise the comments `other` (the replaced listener's replier) posted."""
        self.authored = other.authored

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._http.request("POST", url, json_body=body, headers=self._headers)
        except httpclient.HttpError as exc:
            raise replies.ReplyError(f"{self.what} failed: {exc}") from exc
        if answer.status >= 300:
            raise replies.ReplyError(f"{self.what} answered HTTP {answer.status}")
        try:
            data = answer.json()
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    def url(self, target: ports.ReplyTarget) -> str | None:
        raise NotImplementedError

    def body(self, target: ports.ReplyTarget, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def remember(self, answer: dict[str, Any]) -> None:
        """Record the posted comment's `id` from the platform's answer."""
        self.authored.note(item=_str(answer.get("id")))

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        url = self.url(target)
        if url is None:
            log.info("reply.no_thread", platform=target.platform, trigger=target.trigger, chars=len(text))
            return
        text = text[:MAX_COMMENT_CHARS]
        self.authored.note(text=text)
        answer = await self._post(url, self.body(target, text))
        self.remember(answer)

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        """No buttons here: the prompt says how to decide (`aofctl approve`)."""
        await self.reply(
            target,
            f"{summary}\n{replies.argv_json(argv)}\nAn approver decides with: aofctl approve {request_id} "
            f"(or aofctl deny {request_id}).",
        )
        return ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """The outcome is told in the thread instead (`ask_approval` returns no reference)."""
        return

    async def aclose(self) -> None:
        await self._http.aclose()


def _adf(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document Format document: one paragraph per line (blank lines kept
    as paragraph breaks), no marks, so nothing in the text is interpreted as markup."""
    content: list[dict[str, Any]] = []
    for line in text.split("\n"):
        paragraph: dict[str, Any] = {"type": "paragraph", "content": []}
        if line:
            paragraph["content"] = [{"type": "text", "text": line}]
        content.append(paragraph)
    return {"type": "doc", "version": 1, "content": content}


class JiraReplier(_TrackerReplier):
    """Comments on Jira issues (REST API v3); `target.thread` is the issue key."""

    what = "Jira comment"

    def __init__(self, *, api_url: str, email: str, token: str) -> None:
        super().__init__(api_url=api_url, headers={"Authorization": _basic(email, token)})

    def url(self, target: ports.ReplyTarget) -> str | None:
        if not target.thread:
            return None
        key = _checked(target.thread, _JIRA_KEY, "issue", "a Jira issue key (PROJ-7) or id")
        return f"{self._api}/rest/api/3/issue/{key}/comment"

    def body(self, target: ports.ReplyTarget, text: str) -> dict[str, Any]:
        return {"body": _adf(text)}


_ITEM_SHAPES: dict[str, tuple[re.Pattern[str], str]] = {
    "merge_requests": (_DIGITS, "a merge request iid (digits)"),
    "issues": (_DIGITS, "an issue iid (digits)"),
    "commits": (_SHA, "a commit SHA (hex)"),
    "pullrequests": (_DIGITS, "a pull request id (digits)"),
    "commit": (_SHA, "a commit hash (hex)"),
}


def _project_path(kind: str, thread: str) -> str | None:
    """`merge_requests/7` -> the checked path; None when `thread` is not `<kind>/...`; ReplyError when
    the id after `<kind>/` does not have the kind's shape."""
    head, sep, ident = thread.partition("/")
    if not sep or head != kind:
        return None
    shape, expected = _ITEM_SHAPES[kind]
    return f"{head}/{_checked(ident, shape, kind, expected)}"


class GitLabReplier(_TrackerReplier):
    """Notes on GitLab merge requests, issues and commits (REST API v4, `PRIVATE-TOKEN`).

    `target.channel_id` is the project's numeric id; `target.thread` is `merge_requests/<iid>`,
    `issues/<iid>` or `commits/<sha>`.
    """

    what = "GitLab note"

    def __init__(self, *, api_url: str, token: str) -> None:
        super().__init__(api_url=api_url, headers={"PRIVATE-TOKEN": token})

    def url(self, target: ports.ReplyTarget) -> str | None:
        if not target.channel_id or not target.thread:
            return None
        project_id = _checked(target.channel_id, _DIGITS, "project", "a numeric project id")
        project = f"{self._api}/projects/{project_id}"
        for kind in ("merge_requests", "issues"):
            path = _project_path(kind, target.thread)
            if path is not None:
                return f"{project}/{path}/notes"
        path = _project_path("commits", target.thread)
        return f"{project}/repository/{path}/comments" if path is not None else None

    def body(self, target: ports.ReplyTarget, text: str) -> dict[str, Any]:
        # A commit comment's text is its `note`; a note's is its `body`. The hidden marker lets the
        # listener recognise the Note Hook about this note.
        text = f"{text}\n\n{MARKER}"
        return {"note": text} if target.thread.startswith("commits/") else {"body": text}


class BitbucketReplier(_TrackerReplier):
    """Comments on Bitbucket Cloud pull requests and commits (API 2.0).

    `target.channel_id` is the repository's `workspace/repo_slug`; `target.thread` is
    `pullrequests/<id>` or `commit/<hash>`. Auth: `username:app_password`, else a bearer `token`.
    """

    what = "Bitbucket comment"

    def __init__(self, *, api_url: str, username: str, app_password: str, token: str) -> None:
        auth = _basic(username, app_password) if username and app_password else f"Bearer {token}"
        super().__init__(api_url=api_url, headers={"Authorization": auth})

    def url(self, target: ports.ReplyTarget) -> str | None:
        workspace, sep, slug = target.channel_id.partition("/")
        if not sep or not workspace or not slug or not target.thread:
            return None
        workspace = _checked(workspace, _NAME, "workspace", "a workspace slug")
        slug = _checked(slug, _NAME, "repository", "a repository slug")
        repo = f"{self._api}/repositories/{workspace}/{slug}"
        for kind in ("pullrequests", "commit"):
            path = _project_path(kind, target.thread)
            if path is not None:
                return f"{repo}/{path}/comments"
        return None

    def body(self, target: ports.ReplyTarget, text: str) -> dict[str, Any]:
        return {"content": {"raw": text}}


class OpsgenieReplier(_TrackerReplier):
    """Notes on Opsgenie alerts (`POST /v2/alerts/{id}/notes?identifierType=id`, `GenieKey`);
    `target.thread` is the alert id."""

    what = "Opsgenie note"

    def __init__(self, *, api_url: str, api_key: str, user: str = "") -> None:
        super().__init__(api_url=api_url, headers={"Authorization": f"GenieKey {api_key}"})
        self._user = user or "aofd"

    def url(self, target: ports.ReplyTarget) -> str | None:
        if not target.thread:
            return None
        alert = _checked(target.thread, _NAME, "alert", "an alert id")
        return f"{self._api}/v2/alerts/{alert}/notes?identifierType=id"

    def body(self, target: ports.ReplyTarget, text: str) -> dict[str, Any]:
        # Opsgenie caps a note at 25,000 characters.
        return {"note": text[:25_000], "user": self._user, "source": "aofd"}
