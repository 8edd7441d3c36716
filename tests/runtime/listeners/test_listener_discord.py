"""Discord interactions through the real listener and trigger server over loopback, signed with an
Ed25519 key made here (cryptography), follow-ups checked at a local server speaking Discord's API."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aofd.runtime import approvals, ports, verify
from aofd.runtime.listeners import discord
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import chat_apis, harness

APP_ID = "4400000000000000001"
GUILD = "2200000000000000001"
ROLE = "3300000000000000001"
BOT_TOKEN = "discord-bot-token"


@pytest.fixture
async def discord_api() -> AsyncIterator[chat_apis.FakeDiscord]:
    async with chat_apis.FakeDiscord() as fake:
        yield fake


@pytest.fixture
def key() -> chat_apis.DiscordKey:
    return chat_apis.DiscordKey()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _trigger(key: chat_apis.DiscordKey, name: str = "dc", **config: Any) -> Any:
    settings = {
        "bot_token": BOT_TOKEN,
        "application_id": APP_ID,
        "public_key": key.public_hex,
        "guild_ids": [GUILD],
        "allowed_roles": [ROLE],
        **config,
    }
    return resources.trigger(name, "Discord", **settings)


@pytest.fixture
async def rig(
    discord_api: chat_apis.FakeDiscord, key: chat_apis.DiscordKey, clock: Clock
) -> AsyncIterator[harness.Rig]:
    async with harness.Rig(platforms=PlatformsSpec(discord_api_url=discord_api.api_url), clock=clock) as r:
        dc = _trigger(key)
        await r.apply(
            [
                resources.binding("ops", dc, context_name="prod", filters={"patterns": ["^/status"]}),
                resources.binding(
                    "buttons", dc, context_name="prod", filters={"events": ["message_component"]}
                ),
            ]
        )
        yield r


async def _send(
    rig: harness.Rig, key: chat_apis.DiscordKey, payload: dict[str, Any], **kw: Any
) -> tuple[int, Any]:
    body = json.dumps(payload).encode()
    status, text = await rig.send("discord", "dc", body, key.headers(body, **kw))
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


async def test_ping_is_answered_with_pong(rig: harness.Rig, key: chat_apis.DiscordKey) -> None:
    """Discord's endpoint check: a signed PING gets PONG and starts nothing."""
    assert (200, {"type": 1}) == await _send(rig, key, chat_apis.interaction(1))
    assert [] == rig.starter.calls


async def test_slash_command_is_deferred_then_answered_by_follow_up(
    rig: harness.Rig, key: chat_apis.DiscordKey, discord_api: chat_apis.FakeDiscord
) -> None:
    """A slash command gets a deferred response at once, runs its binding with `/name options` as
    text, and the answer goes to the interaction's webhook with no mentions allowed."""
    options = [{"name": "service", "type": 3, "value": "api"}]
    status, answer = await _send(rig, key, chat_apis.interaction(2, options=options))
    assert (200, {"type": 5}) == (status, answer)
    [(binding, message)] = rig.starter.calls
    assert (
        "ops",
        "/status api",
        "slash_command",
        "5500000000000000001",
        "alice",
        "6600000000000000001",
        "ops",
    ) == (
        binding,
        message.text,
        message.event_type,
        message.user.id,
        message.user.name,
        message.channel_id,
        message.channel_name,
    )
    assert "token" not in message.raw
    await rig.replier.reply(message.reply_target(), "@everyone pods are [fine](https://evil.example)")
    [sent] = discord_api.calls("followup")
    assert (APP_ID, "aW50ZXJhY3Rpb24tdG9rZW4", "true", {"parse": []}) == (
        sent["_app"],
        sent["_token"],
        sent["_wait"],
        sent["allowed_mentions"],
    )
    assert "[fine](https" not in sent["content"]
    assert "\\@everyone" in sent["content"]
    assert "flags" not in sent


async def test_private_answers_are_ephemeral_and_an_expired_token_falls_back_to_the_bot(
    rig: harness.Rig, key: chat_apis.DiscordKey, discord_api: chat_apis.FakeDiscord, clock: Clock
) -> None:
    """A failure is posted ephemeral (flags 64); after the token's 15 minutes the bot posts in the channel."""
    await _send(rig, key, chat_apis.interaction(2))
    [(_, message)] = rig.starter.calls
    await rig.replier.reply(ports.private(message.reply_target()), "run failed")
    clock.now += 16 * 60
    await rig.replier.reply(message.reply_target(), "late answer")
    [private] = discord_api.calls("followup")
    [late] = discord_api.calls("channel_message")
    assert 64 == private["flags"]
    assert ("6600000000000000001", f"Bot {BOT_TOKEN}", "late answer") == (
        late["_channel"],
        late["_auth"],
        late["content"],
    )


@pytest.mark.parametrize("case", ["tampered_body", "tampered_timestamp", "other_key", "stale", "unsigned"])
async def test_bad_signatures_are_refused_with_401_and_audited(
    rig: harness.Rig, key: chat_apis.DiscordKey, case: str
) -> None:
    """A changed body or timestamp, another key's signature, a signature older than five minutes or
    none at all: 401 before the body is parsed, nothing runs, the rejection is audited."""
    body = json.dumps(chat_apis.interaction(2)).encode()
    headers = key.headers(body)
    expected = verify.SIGNATURE_INVALID
    if case == "tampered_body":
        body = body.replace(b"status", b"delete")
    elif case == "tampered_timestamp":
        headers["X-Signature-Timestamp"] = str(int(headers["X-Signature-Timestamp"]) + 1)
    elif case == "other_key":
        headers = chat_apis.DiscordKey().headers(body)
    elif case == "stale":
        headers = key.headers(body, ts=int(time.time()) - 301)
        expected = verify.STALE_TIMESTAMP
    else:
        del headers["X-Signature-Ed25519"]
        expected = verify.MALFORMED
    status, _ = await rig.send("discord", "dc", body, headers)
    await rig.settle(lambda: bool(rig.audit.records))
    assert (401, [expected], []) == (status, rig.audit.reasons(), rig.starter.calls)
    [(_, record)] = rig.audit.records
    assert {"platform": "discord", "name": "dc"} == record["aofd"]["trigger"]


async def test_a_replayed_interaction_runs_once(rig: harness.Rig, key: chat_apis.DiscordKey) -> None:
    """The same interaction id delivered twice starts one run; the second is told so privately."""
    first = await _send(rig, key, chat_apis.interaction(2))
    again = await _send(rig, key, chat_apis.interaction(2))
    assert {"type": 5} == first[1]
    assert (4, "Already received.", 64) == (
        again[1]["type"],
        again[1]["data"]["content"],
        again[1]["data"]["flags"],
    )
    assert ["ops"] == rig.starter.bindings


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"guild_id": "9999999999999999999"}, "guild"),
        ({"guild_id": None}, "guild"),
        ({"roles": ["123"]}, "allowed_roles"),
    ],
)
async def test_guild_ids_and_allowed_roles_refuse_other_senders(
    rig: harness.Rig, key: chat_apis.DiscordKey, changes: dict[str, Any], why: str
) -> None:
    """Another guild, a direct message (guild_ids set) or a member without an allowed role: nothing runs,
    the user is told privately, the refusal is audited as unknown_source."""
    status, answer = await _send(rig, key, chat_apis.interaction(2, **changes))
    await rig.settle(lambda: bool(rig.audit.records))
    assert (200, 4, 64) == (status, answer["type"], answer["data"]["flags"])
    assert ([], ["unknown_source"]) == (rig.starter.calls, rig.audit.reasons())
    [(_, record)] = rig.audit.records
    assert why in record["message"]


async def test_a_component_click_routes_as_message_component(
    rig: harness.Rig, key: chat_apis.DiscordKey, discord_api: chat_apis.FakeDiscord
) -> None:
    """A button that is not an approval button starts the binding that takes `message_component`; its
    answer is a follow-up of the click's own interaction."""
    click = chat_apis.interaction(
        3, interaction_id="1100000000000000002", custom_id="restart:api", token="Y2xpY2s"
    )
    assert (200, {"type": 5}) == await _send(rig, key, click)
    [(binding, message)] = rig.starter.calls
    assert ("buttons", "restart:api", "message_component") == (binding, message.text, message.event_type)
    await rig.replier.reply(message.reply_target(), "restarted")
    assert ["Y2xpY2s"] == [c["_token"] for c in discord_api.calls("followup")]


async def test_approval_buttons_post_and_clicks_reach_the_decider_once(
    rig: harness.Rig, key: chat_apis.DiscordKey, discord_api: chat_apis.FakeDiscord
) -> None:
    """The prompt carries Approve/Deny buttons; a click is decided once (a replay is not), answered with
    a deferred update, and a refused click is told privately; the prompt is then edited without buttons."""
    await _send(rig, key, chat_apis.interaction(2))
    [(_, message)] = rig.starter.calls
    target = message.reply_target()
    prompt = await rig.replier.ask_approval(
        target, request_id="req-9", summary="kubectl delete", argv=("kubectl",)
    )
    [posted] = discord_api.calls("followup")
    buttons = posted["components"][0]["components"]
    assert ["aofd_approve:req-9", "aofd_deny:req-9"] == [b["custom_id"] for b in buttons]
    rig.approvals.answer = approvals.Click(
        approvals.Decision.SELF_NOT_ALLOWED, "You cannot approve your own request."
    )
    click = chat_apis.interaction(
        3, interaction_id="1100000000000000003", custom_id="aofd_approve:req-9", token="dG9r"
    )
    assert (200, {"type": 6}) == await _send(rig, key, click)
    assert (200, {"type": 6}) == await _send(rig, key, click)
    await rig.settle(lambda: len(discord_api.calls("followup")) == 2)
    assert [("req-9", "5500000000000000001", True, "1100000000000000003")] == rig.approvals.decisions
    told = discord_api.calls("followup")[1]
    assert ("dG9r", 64) == (told["_token"], told["flags"])
    await rig.replier.update_approval(target, prompt=prompt, text="Approved by alice")
    [edit] = discord_api.calls("edit")
    assert ([], prompt.rpartition("/")[2]) == (edit["components"], edit["_id"])
    assert [] == [n for n, _ in rig.starter.calls if n == "buttons"]


async def test_filters_change_across_a_swap_without_a_gap(
    rig: harness.Rig, key: chat_apis.DiscordKey
) -> None:
    """A changed trigger gets a new listener (make before break): the next interaction is verified
    and filtered by the new one."""
    old = rig.switchboard.current.listeners["dc"]
    changed = _trigger(key, allowed_roles=["777"])
    await rig.apply([resources.binding("ops", changed, context_name="prod")])
    new = rig.switchboard.current.listeners["dc"]
    status, answer = await _send(rig, key, chat_apis.interaction(2))
    assert (new is not old, old.running, new.running) == (True, False, True)
    assert (200, 4, []) == (status, answer["type"], rig.starter.calls)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"public_key": None}, "config.public_key is missing"),
        ({"public_key": "not-hex"}, "config.public_key is not 64 hex characters"),
        ({"application_id": None}, "config.application_id must be"),
    ],
)
async def test_a_trigger_without_its_key_or_id_does_not_start(
    key: chat_apis.DiscordKey, config: dict[str, Any], needle: str
) -> None:
    """Without a valid public_key or application_id the listener refuses to start: its bindings stall
    with a reason naming the field."""
    trig = _trigger(key, name="broken", **config)
    async with harness.Rig() as rig:
        outcome = await rig.apply([resources.binding("b", trig, context_name="prod")])
        assert "broken" not in rig.switchboard.current.listeners
        assert any(needle in message for message in outcome.stalled.values()), outcome.stalled
        assert {"ListenerFailed"} == set(outcome.reasons.values())


def test_the_documented_signature_scheme_with_an_independent_key() -> None:
    """`verify.discord` accepts what cryptography signs over `timestamp + body` and nothing else."""
    private = Ed25519PrivateKey.generate()
    public = verify.ed25519_public_key(
        private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    )
    body, ts = b'{"type":1}', "1700000000"
    sig = private.sign(ts.encode() + body).hex()
    verify.discord(key=public, body=body, timestamp=ts, signature=sig, now=1700000000.0)
    with pytest.raises(verify.Rejected) as wrong:
        verify.discord(key=public, body=body + b" ", timestamp=ts, signature=sig, now=1700000000.0)
    with pytest.raises(verify.Rejected) as odd:
        verify.discord(key=public, body=body, timestamp=ts, signature="zz" * 64, now=1700000000.0)
    assert (401, "signature_invalid", 401, "malformed") == (
        wrong.value.status,
        wrong.value.reason,
        odd.value.status,
        odd.value.reason,
    )


def test_option_words_follow_subcommands() -> None:
    """`/deploy app api --` with a subcommand group and subcommand reads as the words a user typed."""
    payload = chat_apis.interaction(
        2,
        name="deploy",
        options=[{"name": "app", "type": 1, "options": [{"name": "service", "type": 3, "value": "api"}]}],
    )
    message = discord.normalize("dc", payload, response_url="http://x/webhooks/1/t")
    assert ("/deploy app api", "http://x/webhooks/1/t") == (message.text, message.raw[ports.RESPONSE_URL])
