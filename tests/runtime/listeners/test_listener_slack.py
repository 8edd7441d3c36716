"""Slack over HTTP and Socket Mode through the real listener and server, with a local fake Slack Web API."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aofd.runtime import approvals, ports
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import harness, platforms, signing

SECRET = "slack-signing-secret"
CHANNELS = {"C_US": "prod-us-east", "C_EU": "prod-eu-west", "C_X": "random"}


def _trigger(**extra: Any) -> Any:
    return resources.trigger("slack-bot", "Slack", signing_secret=SECRET, bot_token="xoxb-test", **extra)


def _seed_bindings(trigger: Any) -> list[Any]:
    return [
        resources.binding(
            "slack-us-bot", trigger, context_name="prod-us-east", filters={"channels": ["prod-us-east"]}
        ),
        resources.binding(
            "slack-eu-bot", trigger, context_name="prod-eu-west", filters={"channels": ["prod-eu-west"]}
        ),
    ]


def _event(event_id: str, channel: str, text: str = "kubectl get pods", **event: Any) -> bytes:
    body = {
        "type": "event_callback",
        "team_id": "T1",
        "api_app_id": "A1",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": {
            "type": "message",
            "user": "U1",
            "text": text,
            "channel": channel,
            "ts": f"{event_id}.1",
            **event,
        },
    }
    return json.dumps(body).encode()


def _signed(
    body: bytes, *, ts: int | str | None = None, secret: str = SECRET, **extra: str
) -> dict[str, str]:
    headers = signing.slack_headers(secret, body, ts if ts is not None else int(time.time()))
    return {"Content-Type": "application/json", **headers, **extra}


@pytest.fixture
async def slack_api() -> AsyncIterator[platforms.FakeSlack]:
    async with platforms.FakeSlack(channels=CHANNELS) as fake:
        yield fake


@pytest.fixture
async def rig(slack_api: platforms.FakeSlack) -> AsyncIterator[harness.Rig]:
    async with harness.Rig(platforms=PlatformsSpec(slack_api_url=slack_api.api_url)) as r:
        await r.apply(_seed_bindings(_trigger(max_body_bytes=4096)))
        yield r


async def test_seed_example_1_over_http(rig: harness.Rig) -> None:
    """Events from #prod-us-east and #prod-eu-west start the US and EU bindings with their contexts."""
    for event_id, channel in (("Ev1", "C_US"), ("Ev2", "C_EU")):
        body = _event(event_id, channel)
        assert 200 == (await rig.send("slack", "slack-bot", body, _signed(body)))[0]
    await rig.settle(lambda: len(rig.starter.calls) == 2)
    started = sorted((name, msg.channel_name) for name, msg in rig.starter.calls)
    assert [("slack-eu-bot", "prod-eu-west"), ("slack-us-bot", "prod-us-east")] == started


async def test_url_verification_is_answered(rig: harness.Rig) -> None:
    """A signed url_verification gets its challenge back."""
    body = json.dumps({"type": "url_verification", "challenge": "3eZbrw1aB", "token": "x"}).encode()
    status, text = await rig.send("slack", "slack-bot", body, _signed(body))
    assert (200, {"challenge": "3eZbrw1aB"}) == (status, json.loads(text))


async def test_retries_and_replays_run_the_flow_once(rig: harness.Rig) -> None:
    """X-Slack-Retry-Num retries and a re-signed replay of the same event_id are acked and not run again."""
    body = _event("EvRetry", "C_US")
    first = await rig.send("slack", "slack-bot", body, _signed(body))
    retry = await rig.send(
        "slack",
        "slack-bot",
        body,
        _signed(body, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}),
    )
    replay = await rig.send("slack", "slack-bot", body, _signed(body, ts=int(time.time()) - 200))
    await rig.settle(lambda: len(rig.starter.calls) >= 1)
    await rig.settle()
    assert [200, 200, 200] == [first[0], retry[0], replay[0]]
    assert ["slack-us-bot"] == rig.starter.bindings
    assert {"replay"} == set(rig.audit.reasons())


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("wrong_secret", 401, "signature_invalid"),
        ("stale", 401, "stale_timestamp"),
        ("non_numeric", 401, "malformed"),
        ("missing_headers", 401, "malformed"),
        ("reserialized", 401, "signature_invalid"),
        ("oversized", 413, "body_too_large"),
    ],
)
async def test_bad_requests_are_rejected_and_audited(
    rig: harness.Rig, case: str, status: int, reason: str
) -> None:
    """Each kind of bad request gets its status with a generic body, is audited in the bindings' contexts,
    runs nothing.
    """
    body = _event("EvBad", "C_US")
    headers = _signed(body)
    if case == "wrong_secret":
        headers = _signed(body, secret="not-the-secret")
    elif case == "stale":
        headers = _signed(body, ts=int(time.time()) - 301)
    elif case == "non_numeric":
        headers = {**_signed(body), "X-Slack-Request-Timestamp": "soon"}
    elif case == "missing_headers":
        headers = {"Content-Type": "application/json"}
    elif case == "reserialized":
        body = json.dumps(json.loads(body), indent=2).encode()
    elif case == "oversized":
        body = _event("EvBad", "C_US", text="x" * 5000)
        headers = _signed(body)
    got, text = await rig.send("slack", "slack-bot", body, headers)
    await rig.settle(lambda: len(rig.audit.records) == 2)
    assert (status, []) == (got, rig.starter.calls)
    assert text in ("unauthorized", "payload too large")
    assert [("prod-eu-west", reason), ("prod-us-east", reason)] == sorted(
        (ctx, rec["event"]["reason"]) for ctx, rec in rig.audit.records
    )


async def test_no_match_replies_politely_in_thread(rig: harness.Rig, slack_api: platforms.FakeSlack) -> None:
    """A message in a channel no binding names gets the no-match reply in its thread via chat.postMessage."""
    body = _event("EvNone", "C_X")
    assert 200 == (await rig.send("slack", "slack-bot", body, _signed(body)))[0]
    await rig.settle(lambda: bool(slack_api.calls("chat.postMessage")))
    post = slack_api.calls("chat.postMessage")[0]
    assert ("C_X", "EvNone.1", "No flow is bound to this channel.") == (
        post["channel"],
        post["thread_ts"],
        post["text"],
    )
    assert "Bearer xoxb-test" == post["_auth"]
    assert [] == rig.starter.calls


async def test_bot_messages_and_edits_are_ignored(rig: harness.Rig) -> None:
    """Messages from bots (our own replies included) and message_changed events never start flows."""
    bot = _event("EvBot", "C_US", bot_id="B1")
    edit = _event("EvEdit", "C_US", subtype="message_changed")
    for body in (bot, edit):
        assert 200 == (await rig.send("slack", "slack-bot", body, _signed(body)))[0]
    await rig.settle()
    assert [] == rig.starter.calls


async def test_slash_commands_answer_in_the_response(rig: harness.Rig) -> None:
    """A slash command in a bound channel starts its flow; elsewhere the response says no flow is bound."""

    def form(channel_id: str, channel_name: str, trigger_id: str) -> bytes:
        return urllib.parse.urlencode(
            {
                "command": "/k8s",
                "text": "get pods",
                "user_id": "U1",
                "user_name": "alice",
                "channel_id": channel_id,
                "channel_name": channel_name,
                "team_id": "T1",
                "trigger_id": trigger_id,
            }
        ).encode()

    answers = []
    for body in (
        form("C_EU", "prod-eu-west", "tr1"),
        form("C_X", "random", "tr2"),
        form("C_EU", "prod-eu-west", "tr1"),
    ):
        headers = {**_signed(body), "Content-Type": "application/x-www-form-urlencoded"}
        status, text = await rig.send("slack", "slack-bot", body, headers)
        answers.append((status, json.loads(text)["text"]))
    assert [(200, "Working on it."), (200, ports.NO_MATCH_TEXT), (200, "Already received.")] == answers
    assert [("slack-eu-bot", "/k8s get pods", "slash_command")] == [
        (name, m.text, m.event_type) for name, m in rig.starter.calls
    ]


async def test_approval_buttons_reach_the_decider_once(rig: harness.Rig) -> None:
    """A block_actions click on aofd_approve passes the request id and the clicker's user id, once."""
    payload = {
        "type": "block_actions",
        "trigger_id": "tr-click",
        "user": {"id": "U_LEAD", "username": "lead", "team_id": "T1"},
        "actions": [{"action_id": "aofd_approve", "value": "req-42", "action_ts": "1700000000.1"}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    headers = {**_signed(body), "Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(2):
        assert 200 == (await rig.send("slack", "slack-bot", body, headers))[0]
    await rig.settle(lambda: bool(rig.approvals.decisions))
    await rig.settle()
    assert [("req-42", "U_LEAD", True, "tr-click:1700000000.1")] == rig.approvals.decisions


async def test_a_refused_click_is_answered_privately_in_its_thread(
    rig: harness.Rig, slack_api: platforms.FakeSlack
) -> None:
    """A click that changes nothing gets chat.postEphemeral to the clicker, in the prompt's thread."""
    rig.approvals.answer = approvals.Click(approvals.Decision.SELF_NOT_ALLOWED, "someone else must approve")
    payload = {
        "type": "block_actions",
        "trigger_id": "tr-self",
        "user": {"id": "U_ASKER", "username": "asker", "team_id": "T1"},
        "channel": {"id": "C_EU"},
        "message": {"ts": "1700000000.000101", "thread_ts": "1700000000.000001"},
        "actions": [{"action_id": "aofd_approve", "value": "req-9", "action_ts": "1700000000.2"}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    headers = {**_signed(body), "Content-Type": "application/x-www-form-urlencoded"}
    assert 200 == (await rig.send("slack", "slack-bot", body, headers))[0]
    await rig.settle(lambda: bool(slack_api.calls("chat.postEphemeral")))
    (answer,) = slack_api.calls("chat.postEphemeral")
    assert (answer["channel"], answer["user"], answer["thread_ts"]) == (
        "C_EU",
        "U_ASKER",
        "1700000000.000001",
    )
    assert answer["text"] == "someone else must approve"
    # A click that decided the request is not answered privately: the prompt itself changes.
    rig.approvals.answer = approvals.Click(approvals.Decision.GRANTED)
    payload = {**payload, "trigger_id": "tr-lead", "user": {"id": "U_LEAD", "team_id": "T1"}}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    assert (
        200
        == (
            await rig.send(
                "slack",
                "slack-bot",
                body,
                {**_signed(body), "Content-Type": "application/x-www-form-urlencoded"},
            )
        )[0]
    )
    await rig.settle(lambda: len(rig.approvals.decisions) == 2)
    await rig.settle()
    assert len(slack_api.calls("chat.postEphemeral")) == 1


async def test_socket_mode_events_are_acked_then_routed_once(slack_api: platforms.FakeSlack) -> None:
    """With an app_token, events arrive over the Socket Mode websocket, are acked by envelope id, and a
    redelivery runs once.
    """
    envelope = {
        "envelope_id": "env-1",
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "payload": json.loads(_event("EvSock", "C_EU")),
    }
    slack_api.envelopes = [envelope, {**envelope, "envelope_id": "env-2", "retry_attempt": 1}]
    async with harness.Rig(platforms=PlatformsSpec(slack_api_url=slack_api.api_url)) as rig:
        trigger = resources.trigger("slack-bot", "Slack", app_token="xapp-1", bot_token="xoxb-test")
        await rig.apply(_seed_bindings(trigger))
        await rig.settle(lambda: slack_api.acked.is_set() and bool(rig.starter.calls))
        await rig.settle()
        listener = rig.switchboard.current.listeners["slack-bot"]
        await listener.stop(drain=1.0)
        await rig.settle()
    assert ["env-1", "env-2"] == [a["envelope_id"] for a in slack_api.acks]
    assert [("slack-eu-bot", "prod-eu-west")] == [(n, m.channel_name) for n, m in rig.starter.calls]
