"""Approval prompts on each chat platform, against local fakes of their APIs: the argv (up to the
platform's `approvals.prompt_budget`, which the guard enforces) is always shown whole and last, in
its own block; a summary too long for the message is cut with a visible marker, never silently."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from aofd.runtime import approvals, ports, replies
from tests.runtime.fakes import chat_apis, platforms

LONG_SUMMARY = "Approval needed " + "s" * 5000 + " END-OF-SUMMARY"
CUT = re.compile(r"… \(cut: (\d+) more characters\)$")


def argv_at_budget(platform: str) -> tuple[str, ...]:
    """An MCP-like argv rendered in exactly the platform's budget, what matters last."""
    head = ("mcp", "evil/run")
    base = len(approvals.render_argv((*head, "", "TARGET=ALL-PRODUCTION")))
    pad = approvals.prompt_budget(platform) - base
    argv = (*head, "<&>`" + "x" * (pad - 4 * 6), "TARGET=ALL-PRODUCTION")
    assert len(approvals.render_argv(argv)) == approvals.prompt_budget(platform)
    return argv


def assert_cut(text: str, whole: str) -> None:
    """`text` is the start of `whole` and a marker counting the rest."""
    got = CUT.search(text)
    assert got is not None, text[-80:]
    kept = text[: got.start()]
    assert whole.startswith(kept)
    assert len(kept) + int(got.group(1)) == len(whole)


def test_cut_keeps_short_text_and_marks_a_cut() -> None:
    assert replies.cut("abc", 3) == "abc"
    cut = replies.cut("x" * 100, 40)
    assert len(cut) <= 40
    assert_cut(cut, "x" * 100)


async def test_slack_shows_the_argv_whole_in_its_own_section() -> None:
    argv = argv_at_budget("slack")
    async with platforms.FakeSlack() as slack:
        replier = replies.SlackReplier(api_url=slack.api_url, token="xoxb-1")
        target = ports.ReplyTarget("slack", "slack-bot", "C1", "1700000000.000001")
        try:
            await replier.ask_approval(target, request_id="a" * 64, summary=LONG_SUMMARY, argv=argv)
        finally:
            await replier.aclose()
        (posted,) = slack.calls("chat.postMessage")
    blocks = posted["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    assert [b["type"] for b in blocks] == ["section", "section", "actions"]
    headline, command = blocks[0]["text"]["text"], blocks[1]["text"]["text"]
    assert all(len(b["text"]["text"]) <= replies.SLACK_SECTION_TEXT for b in blocks[:2])
    assert_cut(headline, LONG_SUMMARY)
    assert command == f"```{approvals.render_argv(argv)}```"  # whole, and no escaping changed it


async def test_telegram_shows_the_argv_whole_after_a_cut_summary() -> None:
    argv = argv_at_budget("telegram")
    async with platforms.FakeTelegram(token="123:abc") as tg:
        replier = replies.TelegramReplier(api_url=tg.url, token="123:abc")
        try:
            await replier.ask_approval(
                ports.ReplyTarget("telegram", "tg", "-1001", "5"),
                request_id="b" * 64,
                summary=LONG_SUMMARY,
                argv=argv,
            )
        finally:
            await replier.aclose()
        (sent,) = tg.calls("sendMessage")
    text = sent["text"]
    summary, _, command = text.rpartition("\n")
    assert len(text) <= replies.TELEGRAM_MAX_TEXT
    assert command == approvals.render_argv(argv)
    assert_cut(summary, LONG_SUMMARY)


async def test_discord_shows_the_argv_whole_in_a_code_block() -> None:
    argv = argv_at_budget("discord")
    async with chat_apis.FakeDiscord() as discord:
        replier = replies.DiscordReplier(api_url=discord.api_url, application_id="app", bot_token="bot")
        try:
            await replier.ask_approval(
                ports.ReplyTarget("discord", "dc", "C9"), request_id="c" * 64, summary=LONG_SUMMARY, argv=argv
            )
        finally:
            await replier.aclose()
        (sent,) = discord.calls("channel_message")
    content = sent["content"]
    assert len(content) <= replies.DISCORD_MAX_TEXT
    summary, fence, rest = content.partition("\n```\n")
    assert (fence, rest) == ("\n```\n", approvals.render_argv(argv) + "\n```")
    assert_cut(summary, replies.escape_discord(LONG_SUMMARY))


async def test_whatsapp_shows_the_argv_whole_and_how_to_decide() -> None:
    argv = argv_at_budget("whatsapp")
    async with platforms.FakeGraph() as graph:
        replier = replies.WhatsAppReplier(api_url=graph.url, token="t", phone_number_id="15550001")
        try:
            await replier.ask_approval(
                ports.ReplyTarget("whatsapp", "wa", "15551234"),
                request_id="d" * 64,
                summary=LONG_SUMMARY,
                argv=argv,
            )
        finally:
            await replier.aclose()
        (sent,) = graph.calls("messages")
    body = sent["text"]["body"]
    summary, command, hint = body.split("\n")
    assert len(body) <= replies.WHATSAPP_MAX_TEXT
    assert command == approvals.render_argv(argv)
    assert hint.startswith("An approver decides with: aofctl approve dddd")
    assert_cut(summary, LONG_SUMMARY)


@pytest.mark.parametrize("platform", sorted(approvals.PROMPT_BUDGETS))
def test_every_platform_has_a_budget_below_what_its_message_holds(platform: str) -> None:
    limits: dict[str, Any] = {
        "slack": replies.SLACK_SECTION_TEXT - 6,
        "discord": replies.DISCORD_MAX_TEXT - replies.SUMMARY_ROOM,
        "telegram": replies.TELEGRAM_MAX_TEXT - replies.SUMMARY_ROOM,
        "whatsapp": replies.WHATSAPP_MAX_TEXT - 2 * replies.SUMMARY_ROOM,
        "teams": replies.TEAMS_MAX_TEXT,
    }
    assert approvals.prompt_budget(platform) <= limits[platform]
