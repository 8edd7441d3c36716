"""Microsoft Teams (Bot Framework) through the real listener and trigger server over loopback: tokens
signed here with PyJWT (RS256) by keys a local OpenID metadata / key set serves; replies checked at a
local token endpoint and connector."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aofd.resources import documents, validation
from aofd.runtime import approvals, dedupe, ports, verify
from aofd.runtime.listeners import teams
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import chat_apis, harness

APP_ID = "c9e8c047-2a74-40a2-b28a-b162d5f5327c"
APP_PASSWORD = "teams-client-secret"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer() -> chat_apis.SigningKey:
    return chat_apis.SigningKey("key-1")


@pytest.fixture
async def bot_framework(signer: chat_apis.SigningKey) -> AsyncIterator[chat_apis.FakeBotFramework]:
    others = chat_apis.SigningKey("key-webchat", endorsements=("webchat",))
    fake = chat_apis.FakeBotFramework([signer, others], app_id=APP_ID, app_password=APP_PASSWORD)
    async with fake:
        yield fake


def _trigger(name: str = "teams", **config: Any) -> Any:
    settings = {"app_id": APP_ID, "app_password": APP_PASSWORD, "allowed_tenants": [TENANT], **config}
    return resources.trigger(name, "Teams", **settings)


@pytest.fixture
async def rig(bot_framework: chat_apis.FakeBotFramework, clock: Clock) -> AsyncIterator[harness.Rig]:
    spec = PlatformsSpec(
        teams_openid_metadata_url=bot_framework.metadata_url, teams_token_url=bot_framework.token_url
    )
    async with harness.Rig(platforms=spec, clock=clock) as r:
        await r.apply(
            [resources.binding("ops", _trigger(), context_name="prod", filters={"patterns": ["^/status"]})]
        )
        yield r


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def _send(rig: harness.Rig, body: dict[str, Any], token: str) -> int:
    return (await rig.send("teams", "teams", json.dumps(body).encode(), _headers(token)))[0]


async def test_a_verified_message_runs_and_is_answered_through_the_connector(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework
) -> None:
    """A message with a valid token starts the binding (the bot's mention removed); the answer is posted
    as a reply to the activity at the service URL with a client-credentials token, fetched once."""
    service = bot_framework.service_url
    token = signer.token(audience=APP_ID, service_url=service)
    assert 202 == await _send(rig, chat_apis.activity(service), token)
    [(binding, message)] = rig.starter.calls
    assert ("ops", "/status api", "message", "7faf80bc-5e81-4fd1-8a9c-7f3a0e5d6a5e", "incidents") == (
        binding,
        message.text,
        message.event_type,
        message.user.id,
        message.channel_name,
    )
    await rig.replier.reply(message.reply_target(), "all pods are running")
    await rig.replier.reply(message.reply_target(), "and healthy")
    [first, second] = bot_framework.calls("activity")
    assert (
        "19:253b1f341670408fb6fe4d8a5aa3d7c4@thread.skype;messageid=1481567603816",
        "1481567603816",
        "Bearer connector-token-1",
        "all pods are running",
        "plain",
    ) == (first["_conversation"], first["_reply_to"], first["_auth"], first["text"], first["textFormat"])
    assert "Bearer connector-token-1" == second["_auth"]
    [grant] = bot_framework.calls("token")
    assert ("client_credentials", APP_ID, "https://api.botframework.com/.default") == (
        grant["grant_type"],
        grant["client_id"],
        grant["scope"],
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_audience", verify.SIGNATURE_INVALID),
        ("wrong_issuer", verify.SIGNATURE_INVALID),
        ("expired", verify.STALE_TIMESTAMP),
        ("not_yet_valid", verify.STALE_TIMESTAMP),
        ("unknown_kid", verify.SIGNATURE_INVALID),
        ("bad_signature", verify.SIGNATURE_INVALID),
        ("unendorsed_channel", verify.SIGNATURE_INVALID),
        ("service_url_mismatch", verify.SIGNATURE_INVALID),
        ("no_token", verify.MALFORMED),
        ("hs256", verify.SIGNATURE_INVALID),
    ],
)
async def test_tokens_that_do_not_hold_are_refused_with_401_and_audited(
    rig: harness.Rig,
    signer: chat_apis.SigningKey,
    bot_framework: chat_apis.FakeBotFramework,
    case: str,
    reason: str,
) -> None:
    """Each way a Bot Framework token can be wrong: 401, nothing runs, the rejection is audited."""
    service = bot_framework.service_url
    body = chat_apis.activity(service)
    claims: dict[str, Any] = {"audience": APP_ID, "service_url": service}
    if case == "wrong_audience":
        claims["audience"] = "another-bot"
    elif case == "wrong_issuer":
        claims["issuer"] = "https://sts.windows.net/evil/"
    elif case == "expired":
        claims.update(now=time.time() - 7200, lifetime=3600)
    elif case == "not_yet_valid":
        claims.update(now=time.time() + 3600)
    elif case == "unknown_kid":
        claims["kid"] = "key-unknown"
    elif case == "service_url_mismatch":
        claims["service_url"] = "https://smba.trafficmanager.net/emea/"
    token = signer.token(**claims)
    if case == "unendorsed_channel":  # a key endorsed only for webchat
        token = bot_framework.keys[1].token(**claims)
    elif case == "bad_signature":
        token = chat_apis.SigningKey("key-1").token(
            audience=APP_ID, service_url=service
        )  # same kid, other key
    elif case == "hs256":
        import jwt

        token = jwt.encode(
            {"aud": APP_ID, "iss": chat_apis.BOT_FRAMEWORK_ISSUER}, "k" * 32, headers={"kid": "key-1"}
        )
    headers = _headers(token) if case != "no_token" else {"Content-Type": "application/json"}
    status, _ = await rig.send("teams", "teams", json.dumps(body).encode(), headers)
    await rig.settle(lambda: bool(rig.audit.records))
    assert (401, [reason], []) == (status, rig.audit.reasons(), rig.starter.calls)


async def test_a_key_signed_for_another_channel_is_not_endorsed(
    rig: harness.Rig, bot_framework: chat_apis.FakeBotFramework
) -> None:
    """A token signed by a key endorsed only for `webchat` cannot carry an `msteams` activity."""
    webchat = bot_framework.keys[1]
    token = webchat.token(audience=APP_ID, service_url=bot_framework.service_url)
    assert 401 == await _send(rig, chat_apis.activity(bot_framework.service_url), token)
    assert [] == rig.starter.calls


async def test_unknown_keys_refresh_the_key_set_at_most_once_a_minute(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework, clock: Clock
) -> None:
    """A rotated key is found by refetching the metadata; a flood of unknown kids does not refetch it
    more than once a minute."""
    service = bot_framework.service_url
    assert 202 == await _send(
        rig, chat_apis.activity(service), signer.token(audience=APP_ID, service_url=service)
    )
    assert 1 == bot_framework.metadata_fetches
    rotated = chat_apis.SigningKey("key-2")
    bot_framework.keys.append(rotated)
    clock.now += 61
    fresh = chat_apis.activity(service, activity_id="2")
    assert 202 == await _send(rig, fresh, rotated.token(audience=APP_ID, service_url=service, now=clock.now))
    for n in range(5):
        bogus = signer.token(audience=APP_ID, service_url=service, kid=f"bogus-{n}", now=clock.now)
        assert 401 == await _send(rig, chat_apis.activity(service, activity_id=f"b{n}"), bogus)
    assert 2 == bot_framework.metadata_fetches


async def test_other_tenants_are_refused_and_duplicates_run_once(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework
) -> None:
    """An activity from another tenant is 403 and audited; a redelivered activity runs once."""
    service = bot_framework.service_url
    token = signer.token(audience=APP_ID, service_url=service)
    other = chat_apis.activity(service, tenant="00000000-0000-0000-0000-000000000000", activity_id="9")
    assert 403 == await _send(rig, other, token)
    assert 202 == await _send(rig, chat_apis.activity(service), token)
    assert 200 == await _send(rig, chat_apis.activity(service), token)
    await rig.settle(lambda: len(rig.audit.records) == 2)
    assert (["ops"], ["replay", "unknown_source"]) == (rig.starter.bindings, sorted(rig.audit.reasons()))


async def test_approval_cards_and_clicks(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework
) -> None:
    """The prompt is an Adaptive Card with Approve/Deny; a click (a message with `value`) reaches the
    decider once; the prompt is replaced (PUT) when the request ends."""
    service = bot_framework.service_url
    token = signer.token(audience=APP_ID, service_url=service)
    await _send(rig, chat_apis.activity(service), token)
    [(_, message)] = rig.starter.calls
    target = message.reply_target()
    prompt = await rig.replier.ask_approval(
        target, request_id="req-7", summary="scale api", argv=("kubectl", "scale")
    )
    [card] = bot_framework.calls("activity")
    actions = card["attachments"][0]["content"]["actions"]
    assert [
        {"aofd_action": "aofd_approve", "request_id": "req-7"},
        {"aofd_action": "aofd_deny", "request_id": "req-7"},
    ] == [a["data"] for a in actions]
    rig.approvals.answer = approvals.Click(approvals.Decision.PENDING_MORE, "One more approval is needed.")
    click = chat_apis.activity(
        service, activity_id="click-1", value={"aofd_action": "aofd_approve", "request_id": "req-7"}
    )
    assert 200 == await _send(rig, click, token)
    assert 200 == await _send(rig, click, token)
    await rig.settle(lambda: len(bot_framework.calls("activity")) == 2)
    assert [("req-7", "7faf80bc-5e81-4fd1-8a9c-7f3a0e5d6a5e", True)] == [
        d[:3] for d in rig.approvals.decisions
    ]
    await rig.replier.update_approval(target, prompt=prompt, text="Approved")
    put = bot_framework.calls("activity")[-1]
    assert ("PUT", prompt, "Approved") == (put["_method"], put["_reply_to"], put["text"])
    assert 1 == len(rig.starter.calls)


async def test_the_service_url_is_known_across_a_swap(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework
) -> None:
    """After the trigger changes (a new listener, make before break), answers to a conversation the old
    listener saw still find its service URL; a conversation never seen is not posted to."""
    service = bot_framework.service_url
    await _send(rig, chat_apis.activity(service), signer.token(audience=APP_ID, service_url=service))
    [(_, message)] = rig.starter.calls
    old = rig.switchboard.current.listeners["teams"]
    await rig.apply([resources.binding("ops", _trigger(bot_name="Ops2"), context_name="prod")])
    assert rig.switchboard.current.listeners["teams"] is not old
    await rig.replier.reply(message.reply_target(), "still here")
    assert ["still here"] == [a["text"] for a in bot_framework.calls("activity")]
    stranger = ports.ReplyTarget("teams", "teams", "19:never-seen@thread.skype", "1")
    with pytest.raises(Exception, match="no verified activity"):
        await rig.replier.reply(stranger, "hello")


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"app_id": None}, "config.app_id is missing"),
        ({"app_password": None}, "config.app_password is missing"),
    ],
)
async def test_a_trigger_without_credentials_does_not_start(config: dict[str, Any], needle: str) -> None:
    """Without app_id or app_password the listener refuses to start and its bindings stall saying why."""
    async with harness.Rig() as rig:
        outcome = await rig.apply([resources.binding("b", _trigger("broken", **config), context_name="prod")])
        assert "broken" not in rig.switchboard.current.listeners
        assert any(needle in message for message in outcome.stalled.values()), outcome.stalled


async def test_an_unreachable_key_set_is_503_not_a_rejection(clock: Clock) -> None:
    """When the OpenID metadata cannot be fetched the sender is asked to retry; nothing is audited."""
    async with chat_apis.FakeBotFramework([], app_id=APP_ID, app_password=APP_PASSWORD) as down:
        url = down.url
    spec = PlatformsSpec(teams_openid_metadata_url=f"{url}/v1/.well-known/openidconfiguration")
    async with harness.Rig(platforms=spec, clock=clock) as rig:
        await rig.apply([resources.binding("ops", _trigger(), context_name="prod")])
        token = chat_apis.SigningKey("k").token(
            audience=APP_ID, service_url="https://smba.trafficmanager.net/amer/"
        )
        status, _ = await rig.send("teams", "teams", b"{}", _headers(token))
        await rig.settle()
        assert (503, []) == (status, rig.audit.records)


@pytest.mark.parametrize(
    ("type_", "config", "needle"),
    [
        ("Teams", "app_id: x", "a Teams trigger needs config.app_id and config.app_password"),
        ("Discord", "bot_token: x", "a Discord trigger needs config.public_key and config.application_id"),
    ],
)
def test_validate_warns_about_missing_credentials(type_: str, config: str, needle: str) -> None:
    """`aofctl validate` says at load what the listener would refuse to start without."""
    head = "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: t}\n"
    text = f"{head}spec:\n  type: {type_}\n  config: {{{config}}}\n"
    [document] = documents.parse("t.yaml", text.encode()).documents
    found = [(i.severity, i.message) for i in validation.validate_document(document).issues]
    assert [("warning", needle)] == [(s, m.partition(":")[0]) for s, m in found]


@pytest.fixture
async def many_channels_rig(clock: Clock) -> AsyncIterator[tuple[harness.Rig, chat_apis.SigningKey, str]]:
    """A rig whose one Bot Framework key is endorsed for several channels, as the real keys are."""
    key = chat_apis.SigningKey("key-all", endorsements=("msteams", "webchat", "directline"))
    fake = chat_apis.FakeBotFramework([key], app_id=APP_ID, app_password=APP_PASSWORD)
    async with fake:
        spec = PlatformsSpec(teams_openid_metadata_url=fake.metadata_url, teams_token_url=fake.token_url)
        async with harness.Rig(platforms=spec, clock=clock) as r:
            await r.apply(
                [
                    resources.binding(
                        "ops", _trigger(), context_name="prod", filters={"patterns": ["^/status"]}
                    )
                ]
            )
            yield r, key, fake.service_url


@pytest.mark.parametrize("channel", ["directline", "webchat"])
async def test_only_teams_activities_are_taken_with_a_key_endorsed_for_other_channels_too(
    many_channels_rig: tuple[harness.Rig, chat_apis.SigningKey, str], channel: str
) -> None:
    """On Direct Line or Web Chat the client writes `from`, `channelData` and `value`: such an
    activity, though signed by a key also endorsed for that channel, is refused (401, audited), so
    it can neither pass as an allowed tenant nor approve as someone else."""
    rig, key, service = many_channels_rig
    token = key.token(audience=APP_ID, service_url=service)
    spoof = chat_apis.activity(
        service,
        channel_id=channel,
        activity_id="dl-1",
        value={"aofd_action": "aofd_approve", "request_id": "req-7"},
    )
    del spoof["conversation"]["tenantId"]
    assert 401 == await _send(rig, spoof, token)
    message = chat_apis.activity(service, channel_id=channel, activity_id="dl-2")
    assert 401 == await _send(rig, message, token)
    await rig.settle(lambda: bool(rig.audit.records))  # audited once: rejections are rate-limited per reason
    assert ([verify.UNKNOWN_SOURCE], [], []) == (
        rig.audit.reasons(),
        rig.approvals.decisions,
        rig.starter.calls,
    )
    assert 202 == await _send(rig, chat_apis.activity(service), token)  # the same key on msteams


@pytest.mark.parametrize(
    ("conversation_tenant", "channel_tenant", "status"),
    [
        (None, TENANT, 403),  # channelData alone is not enough
        (TENANT, None, 403),
        (TENANT, "00000000-0000-0000-0000-000000000000", 403),
        (TENANT.upper(), TENANT, 202),  # GUIDs compare case-insensitively
    ],
)
async def test_the_tenant_is_what_teams_sets_in_both_places(
    many_channels_rig: tuple[harness.Rig, chat_apis.SigningKey, str],
    conversation_tenant: str | None,
    channel_tenant: str | None,
    status: int,
) -> None:
    rig, key, service = many_channels_rig
    body = chat_apis.activity(service)
    if conversation_tenant is None:
        del body["conversation"]["tenantId"]
    else:
        body["conversation"]["tenantId"] = conversation_tenant
    if channel_tenant is None:
        del body["channelData"]["tenant"]
    else:
        body["channelData"]["tenant"]["id"] = channel_tenant
    assert status == await _send(rig, body, key.token(audience=APP_ID, service_url=service))
    assert (status == 202) == bool(rig.starter.calls)


async def test_allowed_tenants_compare_case_insensitively(
    bot_framework: chat_apis.FakeBotFramework, signer: chat_apis.SigningKey, clock: Clock
) -> None:
    spec = PlatformsSpec(
        teams_openid_metadata_url=bot_framework.metadata_url, teams_token_url=bot_framework.token_url
    )
    async with harness.Rig(platforms=spec, clock=clock) as rig:
        await rig.apply(
            [resources.binding("ops", _trigger(allowed_tenants=[TENANT.upper()]), context_name="prod")]
        )
        token = signer.token(audience=APP_ID, service_url=bot_framework.service_url)
        assert 202 == await _send(rig, chat_apis.activity(bot_framework.service_url), token)


@pytest.mark.parametrize("offset", [-400.0, 400.0])
async def test_an_activity_sent_outside_the_window_is_refused(
    rig: harness.Rig,
    signer: chat_apis.SigningKey,
    bot_framework: chat_apis.FakeBotFramework,
    clock: Clock,
    offset: float,
) -> None:
    service = bot_framework.service_url
    body = chat_apis.activity(service, timestamp=clock.now + offset)
    assert 401 == await _send(rig, body, signer.token(audience=APP_ID, service_url=service))
    await rig.settle(lambda: bool(rig.audit.records))
    assert ([verify.STALE_TIMESTAMP], []) == (rig.audit.reasons(), rig.starter.calls)


async def test_a_captured_activity_cannot_be_replayed_after_the_dedupe_entry_expires(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework, clock: Clock
) -> None:
    """The token stays valid until `exp` + 5 minutes and is not bound to the body; the activity's
    `timestamp` is, so a replay an hour later (its de-dup entry gone, its token still good) is
    refused."""
    service = bot_framework.service_url
    token = signer.token(audience=APP_ID, service_url=service, now=clock.now)
    body = chat_apis.activity(service, timestamp=clock.now)
    assert 202 == await _send(rig, body, token)
    clock.now += 3650  # the token (exp = now + 3600, 300 s leeway) still verifies
    assert 401 == await _send(rig, body, token)
    await rig.settle(lambda: bool(rig.audit.records))
    assert ([verify.STALE_TIMESTAMP], 1) == (rig.audit.reasons(), len(rig.starter.calls))


def test_the_dedupe_cache_outlives_the_activity_window() -> None:
    """A duplicate inside the timestamp window is caught by the de-dup cache, one outside by the window."""
    assert dedupe.DEFAULT_TTL >= 2 * teams.ACTIVITY_WINDOW


async def test_a_key_set_outage_is_503_for_every_request_until_it_is_back(
    rig: harness.Rig, bot_framework: chat_apis.FakeBotFramework, clock: Clock
) -> None:
    """While no keys are held each request is 503 (never an audited 401); a failed fetch does not
    hold back the next one for a minute, so the first request after the outage gets through."""
    service = bot_framework.service_url
    rotated = chat_apis.SigningKey("key-2")
    bot_framework.keys = [rotated]
    listener = rig.switchboard.current.listeners["teams"]
    assert isinstance(listener, teams.TeamsListener)
    listener.keys._keys.clear()  # as if the daemon had just started during the outage
    bot_framework.metadata_down = True
    token = rotated.token(audience=APP_ID, service_url=service, now=clock.now)
    for n in range(2):
        clock.now += 5
        assert 503 == await _send(rig, chat_apis.activity(service, activity_id=f"o{n}"), token)
    bot_framework.metadata_down = False
    clock.now += 5
    assert 202 == await _send(rig, chat_apis.activity(service, activity_id="back"), token)
    await rig.settle()
    assert ([], 1) == (rig.audit.records, len(rig.starter.calls))


async def test_the_approval_card_shows_agent_text_without_markdown(
    rig: harness.Rig, signer: chat_apis.SigningKey, bot_framework: chat_apis.FakeBotFramework
) -> None:
    """An agent-written `[safe](https://evil)` is shown as typed (a TextRun), not as a disguised link."""
    service = bot_framework.service_url
    await _send(rig, chat_apis.activity(service), signer.token(audience=APP_ID, service_url=service))
    [(_, message)] = rig.starter.calls
    await rig.replier.ask_approval(
        message.reply_target(),
        request_id="r",
        summary="[safe](https://evil) **now**",
        argv=("kubectl", "get"),
    )
    [card] = bot_framework.calls("activity")
    body = card["attachments"][0]["content"]["body"]
    assert [] == [b for b in body if b["type"] == "TextBlock"]
    runs = [run for block in body for run in block["inlines"]]
    assert {"TextRun"} == {run["type"] for run in runs}
    assert "[safe](https://evil) **now**" == runs[0]["text"]
    assert '["kubectl", "get"]' in runs[1]["text"]
