"""The conversation id each listener gives its events (conversation memory's key), through the real
listeners: HTTP over the loopback trigger server, the chat platforms' own normalizers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from aofd.runtime.listeners import slack, telegram, whatsapp
from aofd.testing import resources
from tests.runtime.fakes import harness, signing

SECRET = "hook-secret"


@pytest.fixture
async def rig() -> AsyncIterator[harness.Rig]:
    signed = resources.trigger("hook", "HTTP", webhook_secret=SECRET)
    unsigned = resources.trigger("open-hook", "HTTP")
    async with harness.Rig() as r:
        await r.apply(
            [
                resources.binding("hooks", signed, context_name="ops"),
                resources.binding("open", unsigned, context_name="ops"),
            ]
        )
        yield r


async def test_http_thread_from_the_signed_body_wins_over_the_header(rig: harness.Rig) -> None:
    body = json.dumps({"text": "deploy api", "thread": "t-body"}).encode()
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Aofd-Timestamp": str(ts),
        "X-Aofd-Signature": signing.aofd(SECRET, body, ts),
        "X-Aofd-Delivery": "d-1",
        "X-Aofd-Thread": "t-header",
    }
    assert (await rig.send("http", "hook", body, headers))[0] == 202
    ((_name, message),) = rig.starter.calls
    assert (message.thread, message.conversation) == ("t-body", "/t-body")  # no user: the anonymous one


async def test_http_thread_header_names_the_conversation_of_a_body_without_one(rig: harness.Rig) -> None:
    headers = {"Content-Type": "text/plain", "X-Aofd-Thread": "incident-42"}
    assert (await rig.send("http", "open-hook", b"what now?", headers))[0] == 202
    assert (await rig.send("http", "open-hook", b"no thread", {"Content-Type": "text/plain"}))[0] == 202
    (_n1, first), (_n2, second) = rig.starter.calls
    assert first.thread == "incident-42"
    assert first.conversation == ""  # an unsigned trigger: anyone could write into it, never remembered
    assert second.conversation == ""  # no thread: never remembered


def signed(body: dict[str, object], delivery: str, **extra: str) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Aofd-Timestamp": str(ts),
        "X-Aofd-Signature": signing.aofd(SECRET, raw, ts),
        "X-Aofd-Delivery": delivery,
        **extra,
    }
    return raw, headers


async def test_http_conversation_is_the_senders_own_thread(rig: harness.Rig) -> None:
    """The same `thread` from two users is two conversations: one caller cannot add turns to another's."""
    for n, user in enumerate(["alice", "mallory", "a/b"]):
        raw, headers = signed({"text": "hi", "thread": "incident-42", "user": user}, f"d-{n}")
        assert (await rig.send("http", "hook", raw, headers))[0] == 202
    conversations = [m.conversation for _n, m in rig.starter.calls]
    assert conversations == ["alice/incident-42", "mallory/incident-42", "a%2Fb/incident-42"]


@pytest.mark.parametrize(
    ("body_thread", "header", "expected"),
    [
        ("  incident-42 ", "", "incident-42"),  # stripped, like the header and the admin API
        ("x" * 500_000, "", ""),  # too long: ignored, not stored in every record
        ("bad\nid", "", ""),  # control characters: ignored
        ("", "h" * 201, ""),
        ("", " from-header ", "from-header"),
    ],
)
async def test_http_thread_ids_are_stripped_and_bounded(
    rig: harness.Rig, body_thread: str, header: str, expected: str
) -> None:
    extra = {"X-Aofd-Thread": header} if header else {}
    raw, headers = signed({"text": "hi", "thread": body_thread, "user": "alice"}, "d-x", **extra)
    assert (await rig.send("http", "hook", raw, headers))[0] == 202
    ((_name, message),) = rig.starter.calls
    assert message.thread == expected
    assert message.conversation == (f"alice/{expected}" if expected else "")


def test_slack_thread_is_channel_and_thread_ts() -> None:
    top = slack.normalize_event("s", {}, {"type": "message", "channel": "C1", "ts": "1.1", "text": "hi"})
    inner = slack.normalize_event(
        "s", {}, {"type": "message", "channel": "C1", "ts": "1.2", "thread_ts": "1.1", "text": "and?"}
    )
    other_channel = slack.normalize_event(
        "s", {}, {"type": "message", "channel": "C2", "ts": "1.3", "thread_ts": "1.1", "text": "and?"}
    )
    assert top.conversation == inner.conversation == "C1/1.1"
    assert other_channel.conversation == "C2/1.1"
    command = slack.normalize_command("s", {"command": "/ops", "text": "hi", "channel_id": "C1"})
    assert command.conversation == ""


def test_telegram_conversation_is_the_message_replied_to_else_its_own() -> None:
    chat = {"id": -5, "type": "group"}
    sender = {"id": 1, "is_bot": False}
    own = telegram.normalize(
        "t", {"update_id": 1, "message": {"message_id": 7, "chat": chat, "from": sender}}
    )
    reply = telegram.normalize(
        "t",
        {
            "update_id": 2,
            "message": {"message_id": 9, "chat": chat, "from": sender, "reply_to_message": {"message_id": 8}},
        },
    )
    assert own is not None
    assert reply is not None
    assert (own.conversation, reply.conversation) == ("-5/7", "-5/8")


def test_whatsapp_conversation_is_the_sender() -> None:
    payload = {
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "value": {
                            "metadata": {"phone_number_id": "P1"},
                            "messages": [
                                {
                                    "from": "15551234567",
                                    "id": "wamid.1",
                                    "type": "text",
                                    "text": {"body": "hi"},
                                }
                            ],
                        }
                    }
                ],
            }
        ]
    }
    (message,) = whatsapp.normalize("w", payload)
    assert message.conversation == "15551234567"
