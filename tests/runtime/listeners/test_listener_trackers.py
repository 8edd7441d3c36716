"""Jira, GitLab, Bitbucket Cloud and Opsgenie through the real listeners and trigger server over loopback:
verification on the raw body (signatures made here with `hmac`), de-duplication by each platform's delivery
id, audited 4xx rejections, routing by the binding filters, answers posted as comments to a loopback server
speaking each API, and webhooks about aofd's own comments not answered (across a hot swap too)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aofd.runtime import ports, replies, tracker_replies
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import harness, trackers

JIRA_SECRET = "jira-webhook-secret"
GITLAB_TOKEN = "gitlab-hook-token"
BB_SECRET = "bitbucket-webhook-secret"
OG_TOKEN = "opsgenie-shared-token"


def hub_signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>` as Jira and Bitbucket compute it (independent of aofd's code)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
async def api() -> AsyncIterator[trackers.FakeTrackers]:
    async with trackers.FakeTrackers() as fake:
        yield fake


def platforms_for(fake: trackers.FakeTrackers) -> PlatformsSpec:
    return PlatformsSpec(
        jira_api_url=fake.url,
        gitlab_api_url=f"{fake.url}/api/v4",
        bitbucket_api_url=f"{fake.url}/2.0",
        opsgenie_api_url=fake.url,
    )


def gitlab_trigger(token: str = GITLAB_TOKEN) -> Any:
    return resources.trigger("gl", "GitLab", webhook_secret=token, token="glpat-secret")


@pytest.fixture
async def rig(api: trackers.FakeTrackers) -> AsyncIterator[harness.Rig]:
    jira = resources.trigger(
        "jr",
        "Jira",
        webhook_secret=JIRA_SECRET,
        cloud_id="cloud-1",
        user_email="bot@example.com",
        api_token="jira-api-token",
        projects=["PROJ"],
    )
    bitbucket = resources.trigger(
        "bb", "Bitbucket", webhook_secret=BB_SECRET, username="aofd-bot", app_password="app-pass"
    )
    opsgenie = resources.trigger("og", "Opsgenie", webhook_token=OG_TOKEN, api_key="genie-key")
    async with harness.Rig(platforms=platforms_for(api)) as r:
        await r.apply(
            [
                resources.binding("jira-triage", jira, context_name="prod"),
                resources.binding(
                    "mr-review", gitlab_trigger(), context_name="ci", filters={"events": ["merge_request"]}
                ),
                resources.binding(
                    "gl-pipelines",
                    gitlab_trigger(),
                    context_name="ci",
                    filters={"events": ["pipeline.failed"]},
                ),
                resources.binding(
                    "gl-notes", gitlab_trigger(), context_name="ci", filters={"events": ["note"]}
                ),
                resources.binding("pr-review", bitbucket, context_name="ci"),
                resources.binding("alerts", opsgenie, context_name="prod"),
            ]
        )
        yield r


def started(rig: harness.Rig) -> list[tuple[str, str, str, str, str]]:
    return [(n, m.event_type, m.channel_name, m.thread, m.user.name) for n, m in rig.starter.calls]


# --- Jira -------------------------------------------------------------------------------------------

JIRA_USER = {
    "self": "https://acme.atlassian.net/rest/api/2/user?accountId=5b10a2844c20165700ede21g",
    "accountId": "5b10a2844c20165700ede21g",
    "displayName": "Mia Krystof",
    "active": True,
    "accountType": "atlassian",
}
JIRA_ISSUE = {
    "id": "10002",
    "self": "https://acme.atlassian.net/rest/api/2/issue/10002",
    "key": "PROJ-7",
    "fields": {
        "summary": "Pods crash-looping in prod",
        "description": "api-7f9 restarts every 30s",
        "issuetype": {"id": "10004", "name": "Bug"},
        "project": {"id": "10000", "key": "PROJ", "name": "Platform"},
        "priority": {"id": "2", "name": "High"},
    },
}


def jira_issue_created() -> bytes:
    return json.dumps(
        {
            "timestamp": 1717171717171,
            "webhookEvent": "jira:issue_created",
            "issue_event_type_name": "issue_created",
            "user": JIRA_USER,
            "issue": JIRA_ISSUE,
        }
    ).encode()


def jira_comment(
    comment_id: str = "10100", author: dict[str, Any] | None = None, text: str = "/triage"
) -> bytes:
    return json.dumps(
        {
            "timestamp": 1717171718000,
            "webhookEvent": "comment_created",
            "comment": {
                "id": comment_id,
                "self": f"https://acme.atlassian.net/rest/api/2/issue/10002/comment/{comment_id}",
                "author": author or JIRA_USER,
                "body": text,
                "created": "2024-05-31T16:08:38.000+0000",
            },
            "issue": JIRA_ISSUE,
        }
    ).encode()


def jira_headers(body: bytes, *, secret: str = JIRA_SECRET, ident: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature": hub_signature(secret, body),
        "X-Atlassian-Webhook-Identifier": ident or str(uuid.uuid4()),
    }


async def test_jira_issue_created_runs_once_per_webhook_identifier(rig: harness.Rig) -> None:
    """A signed issue_created starts the binding (project key as channel, issue key as thread); the same
    X-Atlassian-Webhook-Identifier again (Jira's retry) runs nothing and is audited as a replay."""
    body = jira_issue_created()
    first = await rig.send("jira", "jr", body, jira_headers(body, ident="wh-1"))
    again = await rig.send("jira", "jr", body, jira_headers(body, ident="wh-1"))
    assert (202, 200) == (first[0], again[0])
    assert {"accepted": True, "outcome": "duplicate"} == json.loads(again[1])
    assert [("jira-triage", "issue_created", "PROJ", "PROJ-7", "Mia Krystof")] == started(rig)
    [(_, message)] = rig.starter.calls
    assert "Pods crash-looping in prod\napi-7f9 restarts every 30s" == message.text
    await rig.settle(lambda: "replay" in rig.audit.reasons())


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("wrong_secret", 401, "signature_invalid"),
        ("missing_signature", 401, "malformed"),
        ("sha1_signature", 401, "malformed"),
        ("tampered_body", 401, "signature_invalid"),
        ("no_webhook_event", 400, "malformed"),
    ],
)
async def test_jira_rejections_are_4xx_and_audited(
    rig: harness.Rig, case: str, status: int, reason: str
) -> None:
    body = jira_issue_created()
    headers = jira_headers(body)
    if case == "wrong_secret":
        headers = jira_headers(body, secret="not-the-secret")
    elif case == "missing_signature":
        del headers["X-Hub-Signature"]
    elif case == "sha1_signature":
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(JIRA_SECRET.encode(), body, hashlib.sha1).hexdigest()
    elif case == "tampered_body":
        body = body.replace(b"PROJ-7", b"PROJ-8")
    elif case == "no_webhook_event":
        body = json.dumps({"issue": JIRA_ISSUE}).encode()
        headers = jira_headers(body)
    assert status == (await rig.send("jira", "jr", body, headers))[0]
    await rig.settle(lambda: len(rig.audit.records) == 1)
    assert [reason] == rig.audit.reasons()
    assert [] == rig.starter.calls


async def test_jira_answer_is_an_issue_comment_and_its_own_webhook_is_not_answered(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    """The answer is posted as an ADF comment on the issue with basic auth; Jira's webhooks about that
    comment (comment_created, and the issue_updated that reports it) start nothing."""
    body = jira_comment()
    assert 202 == (await rig.send("jira", "jr", body, jira_headers(body)))[0]
    [(_, message)] = rig.starter.calls
    assert ("comment_created", "/triage") == (message.event_type, message.text)
    await rig.replier.reply(message.reply_target(), "triaged: <b>High</b>\n\nowner: platform")
    [posted] = api.calls("jira")
    assert "/ex/jira/cloud-1/rest/api/3/issue/PROJ-7/comment" == posted["_path"]
    assert "Basic " + base64.b64encode(b"bot@example.com:jira-api-token").decode() == posted["_auth"]
    assert {"type": "doc", "version": 1} == {k: posted["body"][k] for k in ("type", "version")}
    texts = [p["content"][0]["text"] if p["content"] else "" for p in posted["body"]["content"]]
    assert ["triaged: <b>High</b>", "", "owner: platform"] == texts
    own = jira_comment("10000", author={"accountId": "bot-account", "displayName": "aofd"}, text="triaged")
    commented = json.dumps(
        {
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_commented",
            "user": {"accountId": "bot-account"},
            "issue": JIRA_ISSUE,
        }
    ).encode()
    for payload in (own, commented):
        answer = await rig.send("jira", "jr", payload, jira_headers(payload))
        assert (200, "ignored") == (answer[0], json.loads(answer[1])["outcome"])
    assert 1 == len(rig.starter.calls)


async def test_jira_refused_comment_is_a_reply_error(api: trackers.FakeTrackers) -> None:
    """A non-2xx answer from Jira is a ReplyError naming the status, never the token."""
    api.status = 403
    replier = tracker_replies.JiraReplier(
        api_url=f"{api.url}/jira", email="bot@example.com", token="tok-SECRET"
    )
    try:
        with pytest.raises(replies.ReplyError) as caught:
            await replier.reply(ports.ReplyTarget("jira", "jr", "PROJ", "PROJ-7"), "hi")
    finally:
        await replier.aclose()
    assert "HTTP 403" in str(caught.value)
    assert "tok-SECRET" not in str(caught.value)


# --- GitLab -----------------------------------------------------------------------------------------

GL_PROJECT = {
    "id": 15,
    "name": "api",
    "path_with_namespace": "platform/api",
    "web_url": "https://gitlab.example.com/platform/api",
    "default_branch": "main",
}
GL_USER = {"id": 1, "name": "Administrator", "username": "root", "email": "admin@example.com"}


def gitlab_mr(action: str = "open") -> bytes:
    return json.dumps(
        {
            "object_kind": "merge_request",
            "event_type": "merge_request",
            "user": GL_USER,
            "project": GL_PROJECT,
            "object_attributes": {
                "id": 99,
                "iid": 1,
                "title": "MS-Viewport",
                "description": "Adds the viewport",
                "state": "opened",
                "action": action,
                "source_branch": "ms-viewport",
                "target_branch": "main",
            },
        }
    ).encode()


def gitlab_note(
    note_id: int = 1244, user: dict[str, Any] | None = None, text: str = "/review please"
) -> bytes:
    return json.dumps(
        {
            "object_kind": "note",
            "event_type": "note",
            "user": user or GL_USER,
            "project_id": 15,
            "project": GL_PROJECT,
            "object_attributes": {
                "id": note_id,
                "note": text,
                "noteable_type": "MergeRequest",
                "author_id": (user or GL_USER)["id"],
                "project_id": 15,
                "action": "create",
            },
            "merge_request": {"id": 99, "iid": 1, "title": "MS-Viewport", "state": "opened"},
        }
    ).encode()


def gitlab_pipeline(status: str = "failed") -> bytes:
    return json.dumps(
        {
            "object_kind": "pipeline",
            "object_attributes": {
                "id": 31,
                "ref": "main",
                "sha": "bcbb5ec396a2c0f828686f14fac9b80b780504f2",
                "status": status,
                "stages": ["build", "test"],
            },
            "user": GL_USER,
            "project": GL_PROJECT,
            "commit": {"id": "bcbb5ec396a2c0f828686f14fac9b80b780504f2", "message": "test\n"},
        }
    ).encode()


def gitlab_headers(
    event: str = "Merge Request Hook", *, token: str | None = GITLAB_TOKEN, uuid_: str | None = None
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": event,
        "X-Gitlab-Event-UUID": uuid_ or str(uuid.uuid4()),
        "X-Gitlab-Instance": "https://gitlab.example.com",
    }
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return headers


async def test_gitlab_merge_request_and_failed_pipeline_route_by_event(rig: harness.Rig) -> None:
    """merge_request.open goes to the MR binding, pipeline.failed to the pipeline one (a passing pipeline
    matches no binding); the same X-Gitlab-Event-UUID again runs nothing."""
    mr = await rig.send("gitlab", "gl", gitlab_mr(), gitlab_headers(uuid_="ev-1"))
    again = await rig.send("gitlab", "gl", gitlab_mr(), gitlab_headers(uuid_="ev-1"))
    failed = await rig.send("gitlab", "gl", gitlab_pipeline(), gitlab_headers("Pipeline Hook"))
    passed = await rig.send("gitlab", "gl", gitlab_pipeline("success"), gitlab_headers("Pipeline Hook"))
    assert (202, 200, 202, 200) == (mr[0], again[0], failed[0], passed[0])
    assert "duplicate" == json.loads(again[1])["outcome"]
    assert [
        ("mr-review", "merge_request.open", "platform/api", "merge_requests/1", "root"),
        (
            "gl-pipelines",
            "pipeline.failed",
            "platform/api",
            "commits/bcbb5ec396a2c0f828686f14fac9b80b780504f2",
            "root",
        ),
    ] == started(rig)


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("wrong_token", 403, "signature_invalid"),
        ("missing_token", 401, "malformed"),
        ("missing_event", 400, "malformed"),
        ("not_json", 400, "malformed"),
    ],
)
async def test_gitlab_rejections_are_4xx_and_audited(
    rig: harness.Rig, case: str, status: int, reason: str
) -> None:
    body, headers = gitlab_mr(), gitlab_headers()
    if case == "wrong_token":
        headers = gitlab_headers(token="guess")
    elif case == "missing_token":
        headers = gitlab_headers(token=None)
    elif case == "missing_event":
        del headers["X-Gitlab-Event"]
    elif case == "not_json":
        body = b"object_kind=merge_request"
    assert status == (await rig.send("gitlab", "gl", body, headers))[0]
    await rig.settle(lambda: len(rig.audit.records) == 1)
    assert [reason] == rig.audit.reasons()
    assert [] == rig.starter.calls


async def test_gitlab_answer_is_an_mr_note_and_own_notes_are_not_answered_across_a_swap(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    """A note on the MR is answered with a note (PRIVATE-TOKEN); the Note Hook for aofd's own note is not
    routed, also after the trigger's listener was replaced by a hot swap (a rotated webhook token)."""
    assert 202 == (await rig.send("gitlab", "gl", gitlab_note(), gitlab_headers("Note Hook")))[0]
    [(_, message)] = rig.starter.calls
    assert ("gl-notes", "note.create", "merge_requests/1") == (
        rig.starter.calls[0][0],
        message.event_type,
        message.thread,
    )
    await rig.replier.reply(message.reply_target(), "LGTM")
    [posted] = api.calls("gitlab")
    assert ("/api/v4/projects/15/merge_requests/1/notes", "glpat-secret", "LGTM\n\n<!-- aofd -->") == (
        posted["_path"],
        posted["_token"],
        posted["body"],
    )
    old = rig.switchboard.current.listener("gl")
    rotated = gitlab_trigger("rotated-token")
    await rig.apply([resources.binding("gl-notes", rotated, context_name="ci", filters={"events": ["note"]})])
    assert rig.switchboard.current.listener("gl") is not old
    own = gitlab_note(10000, user={"id": 4242, "name": "aofd", "username": "aofd-bot"}, text="LGTM")
    answer = await rig.send("gitlab", "gl", own, gitlab_headers("Note Hook", token="rotated-token"))
    assert (200, "ignored") == (answer[0], json.loads(answer[1])["outcome"])
    assert 403 == (await rig.send("gitlab", "gl", gitlab_note(), gitlab_headers("Note Hook")))[0]
    assert 1 == len(rig.starter.calls)


# --- Bitbucket Cloud --------------------------------------------------------------------------------

BB_ACTOR = {
    "type": "user",
    "uuid": "{d301aafa-d676-4ee0-88be-962be7417567}",
    "display_name": "Ada Lovelace",
    "nickname": "ada",
    "account_id": "557058:c0b72ad0-1cb5-4018-9cdc-0cde8492c443",
}
BB_REPO = {
    "type": "repository",
    "full_name": "acme/backend",
    "name": "backend",
    "uuid": "{b9d4b7ae-4b5c-4c0c-9d0f-0f1a2b3c4d5e}",
    "is_private": True,
}


def bb_pr(comment: dict[str, Any] | None = None, actor: dict[str, Any] | None = None) -> bytes:
    payload: dict[str, Any] = {
        "actor": actor or BB_ACTOR,
        "repository": BB_REPO,
        "pullrequest": {
            "type": "pullrequest",
            "id": 3,
            "title": "Fix the pod restarts",
            "description": "Raises the memory limit",
            "state": "OPEN",
            "author": BB_ACTOR,
            "source": {"branch": {"name": "fix"}, "repository": BB_REPO},
            "destination": {"branch": {"name": "main"}, "repository": BB_REPO},
        },
    }
    if comment is not None:
        payload["comment"] = comment
    return json.dumps(payload).encode()


def bb_headers(
    body: bytes,
    event: str = "pullrequest:created",
    *,
    secret: str = BB_SECRET,
    request_uuid: str | None = None,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Event-Key": event,
        "X-Request-UUID": request_uuid or str(uuid.uuid4()),
        "X-Hook-UUID": "{aaaa-bbbb}",
        "X-Hub-Signature": hub_signature(secret, body),
    }


async def test_bitbucket_pull_request_created_runs_once_per_request_uuid(rig: harness.Rig) -> None:
    body = bb_pr()
    first = await rig.send("bitbucket", "bb", body, bb_headers(body, request_uuid="req-1"))
    again = await rig.send("bitbucket", "bb", body, bb_headers(body, request_uuid="req-1"))
    push = await rig.send("bitbucket", "bb", body, bb_headers(body, "repo:push"))
    assert (202, 200, 200) == (first[0], again[0], push[0])
    assert [("pr-review", "pullrequest:created", "acme/backend", "pullrequests/3", "ada")] == started(rig)
    [(_, message)] = rig.starter.calls
    assert "Fix the pod restarts\nRaises the memory limit" == message.text


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("wrong_secret", 401, "signature_invalid"),
        ("missing_signature", 401, "malformed"),
        ("missing_event_key", 400, "malformed"),
    ],
)
async def test_bitbucket_rejections_are_4xx_and_audited(
    rig: harness.Rig, case: str, status: int, reason: str
) -> None:
    body = bb_pr()
    headers = bb_headers(body)
    if case == "wrong_secret":
        headers = bb_headers(body, secret="nope")
    elif case == "missing_signature":
        del headers["X-Hub-Signature"]
    elif case == "missing_event_key":
        del headers["X-Event-Key"]
    assert status == (await rig.send("bitbucket", "bb", body, headers))[0]
    await rig.settle(lambda: len(rig.audit.records) == 1)
    assert [reason] == rig.audit.reasons()
    assert [] == rig.starter.calls


async def test_bitbucket_answer_is_a_pr_comment_and_its_own_comment_is_not_answered(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    comment = {"id": 17, "content": {"raw": "/review", "markup": "markdown"}, "user": BB_ACTOR}
    body = bb_pr(comment)
    assert (
        202 == (await rig.send("bitbucket", "bb", body, bb_headers(body, "pullrequest:comment_created")))[0]
    )
    [(_, message)] = rig.starter.calls
    assert "/review" == message.text
    await rig.replier.reply(message.reply_target(), "looks fine")
    [posted] = api.calls("bitbucket")
    assert "/2.0/repositories/acme/backend/pullrequests/3/comments" == posted["_path"]
    assert "Basic " + base64.b64encode(b"aofd-bot:app-pass").decode() == posted["_auth"]
    assert {"raw": "looks fine"} == posted["content"]
    bot = {"uuid": "{bot-uuid}", "nickname": "aofd-bot", "display_name": "aofd"}
    own = bb_pr({"id": 10000, "content": {"raw": "looks fine"}, "user": bot}, actor=bot)
    answer = await rig.send("bitbucket", "bb", own, bb_headers(own, "pullrequest:comment_created"))
    assert (200, "ignored") == (answer[0], json.loads(answer[1])["outcome"])
    assert 1 == len(rig.starter.calls)


# --- Opsgenie ---------------------------------------------------------------------------------------


def og_alert(action: str = "Create", updated: int = 1517395528567) -> bytes:
    return json.dumps(
        {
            "action": action,
            "alert": {
                "alertId": "8418d193-2dab-4490-b331-8c02cdd196b7",
                "message": "api-7f9 is crash-looping",
                "description": "CrashLoopBackOff for 5 minutes",
                "tags": ["prod", "k8s"],
                "tinyId": "1791",
                "entity": "api",
                "alias": "api-crashloop",
                "createdAt": 1517395528567,
                "updatedAt": updated,
                "username": "System",
                "userId": "",
                "priority": "P2",
                "source": "Prometheus",
            },
            "source": {"name": "", "type": "API"},
            "integrationName": "Prod Webhook",
            "integrationId": "4513b7ea-3b91-438f-b7e4-e3e54af9147c",
            "integrationType": "Webhook",
        }
    ).encode()


def og_headers(token: str | None = OG_TOKEN) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Opsgenie-Token"] = token
    return headers


async def test_opsgenie_alert_actions_with_the_shared_token(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    """Create and Close are routed (once each: a redelivery is a duplicate), AddNote is not; the answer is
    an alert note with the GenieKey."""
    created = await rig.send("opsgenie", "og", og_alert(), og_headers())
    again = await rig.send("opsgenie", "og", og_alert(), og_headers())
    note = await rig.send("opsgenie", "og", og_alert("AddNote", 1517395529000), og_headers())
    closed = await rig.send("opsgenie", "og", og_alert("Close", 1517395530000), og_headers())
    assert (202, 200, 200, 202) == (created[0], again[0], note[0], closed[0])
    assert ["alert.created", "alert.closed"] == [m.event_type for _, m in rig.starter.calls]
    message = rig.starter.calls[0][1]
    assert ("Prod Webhook", "8418d193-2dab-4490-b331-8c02cdd196b7") == (message.channel_name, message.thread)
    await rig.replier.reply(message.reply_target(), "restarted the deployment")
    [posted] = api.calls("opsgenie")
    assert "/v2/alerts/8418d193-2dab-4490-b331-8c02cdd196b7/notes" == posted["_path"]
    assert ({"identifierType": "id"}, "GenieKey genie-key") == (posted["_query"], posted["_auth"])
    assert "restarted the deployment" == posted["note"]


@pytest.mark.parametrize(
    ("token", "status", "reason"), [(None, 401, "malformed"), ("guess", 403, "signature_invalid")]
)
async def test_opsgenie_without_the_token_is_refused_and_audited(
    rig: harness.Rig, token: str | None, status: int, reason: str
) -> None:
    assert status == (await rig.send("opsgenie", "og", og_alert(), og_headers(token)))[0]
    await rig.settle(lambda: len(rig.audit.records) == 1)
    assert [reason] == rig.audit.reasons()
    assert [] == rig.starter.calls


async def test_opsgenie_trigger_without_webhook_token_does_not_start(api: trackers.FakeTrackers) -> None:
    """Opsgenie cannot sign: a trigger without `webhook_token` stalls its binding, saying why."""
    bare = resources.trigger("og-open", "Opsgenie", api_key="genie-key")
    async with harness.Rig(platforms=platforms_for(api)) as rig:
        bound = resources.binding("open-alerts", bare, context_name="prod")
        outcome = await rig.apply([bound])
        assert rig.switchboard.current.listener("og-open") is None
        assert "webhook_token" in outcome.stalled[bound.key]
        assert 404 == (await rig.send("opsgenie", "og-open", og_alert(), og_headers()))[0]
        assert [] == rig.starter.calls


# --- replays past the unsigned delivery id --------------------------------------------------------


async def test_jira_signed_body_replayed_under_a_new_identifier_is_a_duplicate(rig: harness.Rig) -> None:
    """X-Atlassian-Webhook-Identifier is not signed: the same signed body under another identifier (or
    none) is recognised by its digest and runs nothing, audited as a replay."""
    body = jira_issue_created()
    first = await rig.send("jira", "jr", body, jira_headers(body, ident="wh-1"))
    renamed = await rig.send("jira", "jr", body, jira_headers(body, ident="attacker-chosen"))
    headers = jira_headers(body)
    del headers["X-Atlassian-Webhook-Identifier"]
    bare = await rig.send("jira", "jr", body, headers)
    assert (202, 200, 200) == (first[0], renamed[0], bare[0])
    assert ["duplicate", "duplicate"] == [json.loads(a[1])["outcome"] for a in (renamed, bare)]
    assert 1 == len(rig.starter.calls)
    await rig.settle(lambda: "replay" in rig.audit.reasons())


async def test_bitbucket_body_without_request_uuid_runs_once(rig: harness.Rig) -> None:
    """A signed Bitbucket body sent three times without X-Request-UUID starts one run; another body
    (a new event) without the header still runs."""
    body = bb_pr()
    statuses = []
    for _ in range(3):
        headers = bb_headers(body)
        del headers["X-Request-UUID"]
        statuses.append((await rig.send("bitbucket", "bb", body, headers))[0])
    other = bb_pr(actor={**BB_ACTOR, "nickname": "grace"})
    headers = bb_headers(other)
    del headers["X-Request-UUID"]
    statuses.append((await rig.send("bitbucket", "bb", other, headers))[0])
    assert [202, 200, 200, 202] == statuses
    assert ["ada", "grace"] == [m.user.name for _, m in rig.starter.calls]


# --- the own-comment guard: by comment id, marker or text just posted; never by author ------------


async def test_jira_events_of_the_token_owner_are_still_answered(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    """The API token is a person's (the fake says its comments are by `bot-account`): after one answer,
    a new issue and a new comment by that person start runs; the webhook about the posted comment (its
    id) does not, nor does one that arrives before its id is known (the text just posted)."""
    body = jira_comment()
    await rig.send("jira", "jr", body, jira_headers(body))
    [(_, message)] = rig.starter.calls
    await rig.replier.reply(message.reply_target(), "triaged: High")
    owner = {"accountId": "bot-account", "displayName": "Ops Lead"}
    issue = json.loads(jira_issue_created())
    issue["user"] = owner
    new_issue = json.dumps(issue).encode()
    new_comment = jira_comment("10500", author=owner, text="/triage again")
    echo_by_id = jira_comment("10000", author=owner, text="triaged: High")
    echo_by_text = jira_comment("10999", author=owner, text="triaged:\n High")
    outcomes = []
    for payload in (new_issue, new_comment, echo_by_id, echo_by_text):
        answer = await rig.send("jira", "jr", payload, jira_headers(payload))
        outcomes.append((answer[0], json.loads(answer[1])["outcome"]))
    assert [(202, "started"), (202, "started"), (200, "ignored"), (200, "ignored")] == outcomes
    assert ["comment_created", "issue_created", "comment_created"] == [
        m.event_type for _, m in rig.starter.calls
    ]


async def test_gitlab_notes_of_the_token_owner_are_answered_and_marked_notes_are_not(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    """A personal access token: a note by its account (4242) that aofd did not post starts a run; a note
    carrying the hidden marker does not, whatever its id; an MR opened by that account starts one."""
    await rig.send("gitlab", "gl", gitlab_note(), gitlab_headers("Note Hook"))
    [(_, message)] = rig.starter.calls
    await rig.replier.reply(message.reply_target(), "LGTM")
    owner = {"id": 4242, "name": "Ops Lead", "username": "ops-lead"}
    person = gitlab_note(20001, user=owner, text="/review again")
    marked = gitlab_note(20002, user=owner, text="LGTM\n\n<!-- aofd -->")
    mr = json.loads(gitlab_mr())
    mr["user"] = owner
    statuses = [
        (await rig.send("gitlab", "gl", person, gitlab_headers("Note Hook")))[0],
        (await rig.send("gitlab", "gl", marked, gitlab_headers("Note Hook")))[0],
        (await rig.send("gitlab", "gl", json.dumps(mr).encode(), gitlab_headers()))[0],
    ]
    assert [202, 200, 202] == statuses
    assert ["note.create", "note.create", "merge_request.open"] == [
        m.event_type for _, m in rig.starter.calls
    ]


async def test_bitbucket_comments_of_the_app_account_are_answered_unless_aofd_posted_them(
    rig: harness.Rig, api: trackers.FakeTrackers
) -> None:
    comment = {"id": 17, "content": {"raw": "/review"}, "user": BB_ACTOR}
    body = bb_pr(comment)
    await rig.send("bitbucket", "bb", body, bb_headers(body, "pullrequest:comment_created"))
    [(_, message)] = rig.starter.calls
    await rig.replier.reply(message.reply_target(), "looks fine")
    bot = {"uuid": "{bot-uuid}", "nickname": "aofd-bot", "display_name": "aofd"}
    person = bb_pr({"id": 30001, "content": {"raw": "/review once more"}, "user": bot}, actor=bot)
    early = bb_pr({"id": 30002, "content": {"raw": "looks fine"}, "user": bot}, actor=bot)
    statuses = [
        (await rig.send("bitbucket", "bb", b, bb_headers(b, "pullrequest:comment_created")))[0]
        for b in (person, early)
    ]
    assert [202, 200] == statuses
    assert 2 == len(rig.starter.calls)


# --- reply URLs: ids are checked against their shapes --------------------------------------------


@pytest.mark.parametrize(
    ("platform", "channel", "thread"),
    [
        ("jira", "PROJ", ".."),
        ("jira", "PROJ", "PROJ-7/../../x"),
        ("jira", "PROJ", "proj-7"),
        ("gitlab", "..", "merge_requests/1"),
        ("gitlab", "15", "merge_requests/.."),
        ("gitlab", "15", "issues/1a"),
        ("gitlab", "15", "commits/../../x"),
        ("bitbucket", "../backend", "pullrequests/3"),
        ("bitbucket", "acme/..", "pullrequests/3"),
        ("bitbucket", "acme/backend", "pullrequests/.."),
        ("bitbucket", "acme/backend", "commit/zz"),
        ("opsgenie", "Prod", ".."),
        ("opsgenie", "Prod", "."),
        ("opsgenie", "Prod", "a/b"),
    ],
)
async def test_reply_to_an_id_of_the_wrong_shape_sends_nothing(
    api: trackers.FakeTrackers, platform: str, channel: str, thread: str
) -> None:
    """`.`/`..` (which a URL would resolve elsewhere) and other misshapen ids are refused before any
    request is sent, with a ReplyError naming the id."""
    replier: tracker_replies._TrackerReplier
    if platform == "jira":
        replier = tracker_replies.JiraReplier(api_url=f"{api.url}/jira", email="e@example.com", token="t")
    elif platform == "gitlab":
        replier = tracker_replies.GitLabReplier(api_url=f"{api.url}/api/v4", token="t")
    elif platform == "bitbucket":
        replier = tracker_replies.BitbucketReplier(
            api_url=f"{api.url}/2.0", username="u", app_password="p", token=""
        )
    else:
        replier = tracker_replies.OpsgenieReplier(api_url=api.url, api_key="k")
    try:
        with pytest.raises(replies.ReplyError, match="refused to post"):
            await replier.reply(ports.ReplyTarget(platform, "t", channel, thread), "hi")
    finally:
        await replier.aclose()
    assert [] == api.requests


async def test_jira_cloud_id_of_the_wrong_shape_stalls_the_trigger(api: trackers.FakeTrackers) -> None:
    bad = resources.trigger(
        "jr-bad", "Jira", webhook_secret=JIRA_SECRET, cloud_id="../../evil", user_email="b@x", api_token="t"
    )
    async with harness.Rig(platforms=platforms_for(api)) as rig:
        bound = resources.binding("triage", bad, context_name="prod")
        outcome = await rig.apply([bound])
        assert rig.switchboard.current.listener("jr-bad") is None
        assert "cloud_id is not a Jira Cloud id" in outcome.stalled[bound.key]
        assert "evil" not in outcome.stalled[bound.key]


# --- Opsgenie's synthetic key ---------------------------------------------------------------------


async def test_opsgenie_key_ignores_the_case_of_the_action_and_needs_no_timestamp(rig: harness.Rig) -> None:
    """`Create` and `create` of one alert update are one event; without updatedAt/createdAt, a second
    Acknowledge (another body) is a new event and an identical body a duplicate."""
    lower = json.loads(og_alert())
    lower["action"] = "create"
    first = await rig.send("opsgenie", "og", og_alert(), og_headers())
    same = await rig.send("opsgenie", "og", json.dumps(lower).encode(), og_headers())
    acks = []
    for note in ("first", "second", "second"):
        ack = json.loads(og_alert("Acknowledge"))
        for field in ("updatedAt", "createdAt"):
            del ack["alert"][field]
        ack["alert"]["note"] = note
        acks.append((await rig.send("opsgenie", "og", json.dumps(ack).encode(), og_headers()))[0])
    assert (202, 200, [202, 202, 200]) == (first[0], same[0], acks)
    assert ["alert.created", "alert.acknowledged", "alert.acknowledged"] == [
        m.event_type for _, m in rig.starter.calls
    ]
