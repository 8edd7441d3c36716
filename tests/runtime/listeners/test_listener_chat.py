"""Telegram and WhatsApp through the real listener and server, replies checked at local Bot API and Graph API
fakes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import pytest

from aofd.runtime import approvals, ports
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import harness, platforms, signing

TG_TOKEN = "123456:ABC-DEF"
TG_SECRET = "tg_secret-Token"
WA_SECRET = "wa-app-secret"
WA_VERIFY = "wa-verify-token"


@pytest.fixture
async def telegram_api() -> AsyncIterator[platforms.FakeTelegram]:
    async with platforms.FakeTelegram(token=TG_TOKEN) as fake:
        yield fake


@pytest.fixture
async def graph_api() -> AsyncIterator[platforms.FakeGraph]:
    async with platforms.FakeGraph() as fake:
        yield fake


@pytest.fixture
async def rig(
    telegram_api: platforms.FakeTelegram, graph_api: platforms.FakeGraph
) -> AsyncIterator[harness.Rig]:
    spec = PlatformsSpec(telegram_api_url=telegram_api.url, whatsapp_api_url=graph_api.url)
    tg = resources.trigger("tg", "Telegram", bot_token=TG_TOKEN, secret_token=TG_SECRET)
    wa = resources.trigger(
        "wa",
        "WhatsApp",
        access_token="EAA-token",
        app_secret=WA_SECRET,
        verify_token=WA_VERIFY,
        phone_number_id="1055",
    )
    async with harness.Rig(platforms=spec) as r:
        await r.apply(
            [
                resources.binding("oncall", tg, context_name="prod", filters={"channels": ["-1001"]}),
                resources.binding("wa-oncall", wa, context_name="prod", filters={"patterns": ["^status"]}),
            ]
        )
        yield r


def _update(update_id: int, chat_id: int = -1001, text: str = "status api") -> bytes:
    return json.dumps(
        {
            "update_id": update_id,
            "message": {
                "message_id": 55,
                "from": {"id": 42, "is_bot": False, "username": "alice"},
                "chat": {"id": chat_id, "type": "supergroup", "title": "SRE"},
                "date": 1700000000,
                "text": text,
            },
        }
    ).encode()


async def test_telegram_secret_token_and_update_dedupe(rig: harness.Rig) -> None:
    """The right secret token routes the update once; a duplicate update_id is ignored; wrong or missing
    tokens are 403.
    """
    ok = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"}
    results = [
        (await rig.send("telegram", "tg", _update(1), ok))[0],
        (await rig.send("telegram", "tg", _update(1), ok))[0],
        (await rig.send("telegram", "tg", _update(2), {**ok, "X-Telegram-Bot-Api-Secret-Token": "wrong"}))[0],
        (await rig.send("telegram", "tg", _update(3), {"Content-Type": "application/json"}))[0],
    ]
    assert [200, 200, 403, 403] == results
    assert [("oncall", "-1001", "SRE", "42", "55")] == [
        (n, m.channel_id, m.channel_name, m.user.id, m.thread) for n, m in rig.starter.calls
    ]


async def test_telegram_no_match_replies_with_send_message(
    rig: harness.Rig, telegram_api: platforms.FakeTelegram
) -> None:
    """A chat no binding names gets the polite reply through sendMessage, as a reply to the message."""
    ok = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"}
    assert 200 == (await rig.send("telegram", "tg", _update(10, chat_id=777), ok))[0]
    await rig.settle(lambda: bool(telegram_api.calls("sendMessage")))
    sent = telegram_api.calls("sendMessage")[0]
    assert (777, "No flow is bound to this channel.", 55) == (
        int(sent["chat_id"]),
        sent["text"],
        sent["reply_parameters"]["message_id"],
    )


async def test_telegram_long_polling(telegram_api: platforms.FakeTelegram) -> None:
    """Without a secret token the listener long-polls getUpdates, advances the offset and routes each update
    once.
    """
    telegram_api.updates = [json.loads(_update(500)), json.loads(_update(501, text="status db"))]
    async with harness.Rig(platforms=PlatformsSpec(telegram_api_url=telegram_api.url)) as rig:
        polling = resources.trigger("tg-poll", "Telegram", bot_token=TG_TOKEN, mode="polling")
        transition = rig.switchboard
        await rig.apply([resources.binding("poll", polling, context_name="prod")])
        listener = transition.current.listeners["tg-poll"]
        listener.poll_timeout = 0  # type: ignore[attr-defined]
        await rig.settle(lambda: len(rig.starter.calls) == 2 and "502" in telegram_api.offsets)
        webhook = await rig.send("telegram", "tg-poll", _update(9), {"Content-Type": "application/json"})
    assert ["status api", "status db"] == [m.text for _, m in rig.starter.calls]
    assert 403 == webhook[0]


async def test_telegram_polling_goes_on_from_the_replaced_listeners_offset(
    telegram_api: platforms.FakeTelegram,
) -> None:
    """A hot swap that edits a polling trigger: the new poller starts at the offset the old one reached,
    the two pollers' brief overlap (409 Conflict) is retried, and the update runs once.
    """
    telegram_api.updates = [json.loads(_update(500))]
    async with harness.Rig(platforms=PlatformsSpec(telegram_api_url=telegram_api.url)) as rig:
        old = resources.trigger("tg-poll", "Telegram", bot_token=TG_TOKEN, mode="polling")
        await rig.apply([resources.binding("poll", old, context_name="prod")])
        first = rig.switchboard.current.listeners["tg-poll"]
        first.poll_timeout = 0  # type: ignore[attr-defined]
        await rig.settle(lambda: "501" in telegram_api.offsets)
        seen = len(telegram_api.offsets)
        first.poll_timeout = 1  # type: ignore[attr-defined] # its getUpdates now waits when the new one comes
        await asyncio.sleep(0.05)
        edited = resources.trigger("tg-poll", "Telegram", bot_token=TG_TOKEN, mode="polling", users=["7"])
        await rig.apply([resources.binding("poll", edited, context_name="prod")])
        second = rig.switchboard.current.listeners["tg-poll"]
        second.conflict_delay = 0.05  # type: ignore[attr-defined]
        await rig.settle(lambda: telegram_api.conflicts >= 1 and telegram_api.offsets[seen:].count("501") > 1)
    assert second is not first
    assert "0" not in telegram_api.offsets[seen:]
    assert telegram_api.conflicts >= 1
    assert ["status api"] == [m.text for _, m in rig.starter.calls]


def _wa_message(message_id: str, text: str = "status api") -> bytes:
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "WABA1",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"display_phone_number": "15550001", "phone_number_id": "1055"},
                                "contacts": [{"profile": {"name": "Bob"}, "wa_id": "4477001"}],
                                "messages": [
                                    {
                                        "from": "4477001",
                                        "id": message_id,
                                        "timestamp": "1700000000",
                                        "type": "text",
                                        "text": {"body": text},
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()


async def test_whatsapp_handshake(rig: harness.Rig) -> None:
    """The GET handshake echoes hub.challenge for the right verify token and is 403 otherwise."""
    good = {"hub.mode": "subscribe", "hub.verify_token": WA_VERIFY, "hub.challenge": "1158201444"}
    bad = {**good, "hub.verify_token": "guess"}
    assert (200, "1158201444") == await rig.send("whatsapp", "wa", method="GET", params=good)
    assert 403 == (await rig.send("whatsapp", "wa", method="GET", params=bad))[0]


async def test_whatsapp_signed_messages_deduped_on_message_id(rig: harness.Rig) -> None:
    """A message signed with the app secret routes once per wamid; a wrong app secret is 401."""
    body = _wa_message("wamid.A1")
    good = {"Content-Type": "application/json", "X-Hub-Signature-256": signing.sha256_hub(WA_SECRET, body)}
    bad = {"Content-Type": "application/json", "X-Hub-Signature-256": signing.sha256_hub("other", body)}
    results = [(await rig.send("whatsapp", "wa", body, h))[0] for h in (good, good, bad)]
    assert [200, 200, 401] == results
    assert [("wa-oncall", "4477001", "Bob", "status api")] == [
        (n, m.user.id, m.user.name, m.text) for n, m in rig.starter.calls
    ]


async def test_whatsapp_ten_megabytes_is_413_before_hmac(
    rig: harness.Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10 MB body is refused with 413 (declared or chunked) without computing any HMAC."""
    from aofd.runtime import verify

    computed: list[int] = []
    monkeypatch.setattr(
        verify, "hmac_sha256_hex", lambda secret, message: computed.append(len(message)) or ""
    )

    async def chunks() -> AsyncIterable[bytes]:
        for _ in range(10):
            yield b"x" * (1024 * 1024)

    declared = await rig.send(
        "whatsapp", "wa", b"x" * (10 * 1024 * 1024), {"X-Hub-Signature-256": "sha256=00"}
    )
    chunked = await rig.send("whatsapp", "wa", chunks(), {"X-Hub-Signature-256": "sha256=00"})
    assert (413, 413, []) == (declared[0], chunked[0], computed)


async def test_replies_reach_graph_and_bot_api(
    rig: harness.Rig, graph_api: platforms.FakeGraph, telegram_api: platforms.FakeTelegram
) -> None:
    """The MultiReplier posts to the Graph messages endpoint and to sendMessage with each trigger's token."""
    await rig.replier.reply(ports.ReplyTarget("whatsapp", "wa", "4477001", "wamid.A1"), "pods are fine")
    await rig.replier.reply(ports.ReplyTarget("telegram", "tg", "-1001", "55"), "pods are fine")
    await rig.replier.reply(ports.ReplyTarget("github", "gh", "acme/api"), "no chat here")
    wa = graph_api.calls("messages")[0]
    tg = telegram_api.calls("sendMessage")[0]
    expected_wa: dict[str, Any] = {
        "_phone": "1055",
        "_auth": "Bearer EAA-token",
        "to": "4477001",
        "text": {"preview_url": False, "body": "pods are fine"},
        "context": {"message_id": "wamid.A1"},
    }
    assert expected_wa == {k: wa[k] for k in expected_wa}
    assert ("-1001", "pods are fine") == (tg["chat_id"], tg["text"])


async def test_telegram_approval_buttons_reach_the_decider_once(rig: harness.Rig) -> None:
    """An inline-keyboard callback `aofd_deny:<id>` records a denial by the Telegram user id, once."""
    update = {
        "update_id": 77,
        "callback_query": {"id": "cq-1", "from": {"id": 42, "username": "alice"}, "data": "aofd_deny:req-7"},
    }
    ok = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"}
    for _ in range(2):
        assert 200 == (await rig.send("telegram", "tg", json.dumps(update).encode(), ok))[0]
    assert [("req-7", "42", False, "telegram:cq-1")] == rig.approvals.decisions


async def test_telegram_clicks_are_answered_and_refusals_alerted(
    rig: harness.Rig, telegram_api: platforms.FakeTelegram
) -> None:
    """Every click ends its spinner (answerCallbackQuery); one that changes nothing says why, as an alert."""
    ok = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"}
    rig.approvals.answer = approvals.Click(approvals.Decision.NOT_ALLOWED, "not one of the approvers")
    update = {
        "update_id": 78,
        "callback_query": {
            "id": "cq-2",
            "from": {"id": 43, "username": "mallory"},
            "data": "aofd_approve:req-8",
        },
    }
    assert 200 == (await rig.send("telegram", "tg", json.dumps(update).encode(), ok))[0]
    rig.approvals.answer = approvals.Click(approvals.Decision.GRANTED)
    update = {**update, "update_id": 79, "callback_query": {**update["callback_query"], "id": "cq-3"}}
    assert 200 == (await rig.send("telegram", "tg", json.dumps(update).encode(), ok))[0]
    await rig.settle(lambda: len(telegram_api.calls("answerCallbackQuery")) == 2)
    refused, counted = telegram_api.calls("answerCallbackQuery")
    assert (refused["callback_query_id"], refused["text"], refused["show_alert"]) == (
        "cq-2",
        "not one of the approvers",
        True,
    )
    assert (counted["callback_query_id"], counted["text"], counted["show_alert"]) == ("cq-3", "", False)
