"""Slack answers in the right place: slash commands through their `response_url`, mentions stripped.

The real listener, server and slack_sdk, pointed at the local fake Slack (Web API and response URLs).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from aofd.runtime import ports, replies
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import harness, platforms, signing

SECRET = "slack-signing-secret"
CHANNELS = {"C_US": "prod-us-east", "C_EU": "prod-eu-west", "C_X": "random"}
HOOK_PATH = "commands/T1/1234/abcdef"


class Clock:
    """A wall clock that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _trigger(**extra: Any) -> Any:
    return resources.trigger("slack-bot", "Slack", signing_secret=SECRET, bot_token="xoxb-test", **extra)


def _bindings(trigger: Any) -> list[Any]:
    return [
        resources.binding(
            "slack-us-bot", trigger, context_name="prod-us-east", filters={"channels": ["prod-us-east"]}
        ),
        resources.binding(
            "slack-eu-bot", trigger, context_name="prod-eu-west", filters={"channels": ["prod-eu-west"]}
        ),
    ]


def _form_headers(body: bytes, now: float) -> dict[str, str]:
    return {
        **signing.slack_headers(SECRET, body, int(now)),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def _command(response_url: str, *, channel: str = "C_EU", trigger_id: str = "tr1") -> bytes:
    return urllib.parse.urlencode(
        {
            "command": "/k8s",
            "text": "get pods",
            "user_id": "U1",
            "user_name": "alice",
            "channel_id": channel,
            "channel_name": CHANNELS[channel],
            "team_id": "T1",
            "trigger_id": trigger_id,
            "response_url": response_url,
        }
    ).encode()


@pytest.fixture
async def slack_api() -> AsyncIterator[platforms.FakeSlack]:
    # The bot was never invited to #prod-eu-west: chat.postMessage there answers not_in_channel.
    async with platforms.FakeSlack(channels=CHANNELS, not_in_channels={"C_EU"}) as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def rig(slack_api: platforms.FakeSlack, clock: Clock) -> AsyncIterator[harness.Rig]:
    spec = PlatformsSpec(slack_api_url=slack_api.api_url, slack_response_url_base=slack_api.hooks_url)
    async with harness.Rig(platforms=spec, clock=clock) as r:
        await r.apply(_bindings(_trigger()))
        yield r


async def _run_command(rig: harness.Rig, clock: Clock, body: bytes) -> tuple[int, dict[str, Any]]:
    status, text = await rig.send("slack", "slack-bot", body, _form_headers(body, clock.now))
    return status, json.loads(text)


# --- slash commands answer through their response_url ----------------------------------------------------


async def test_slash_command_answers_go_to_the_response_url(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """The ack is the HTTP answer; the run's answer goes to the response URL in the channel (not
    chat.postMessage, which a bot outside the channel cannot use), and a failure only to the asker."""
    url = slack_api.hooks_url + HOOK_PATH
    assert (200, {"response_type": "ephemeral", "text": "Working on it."}) == await _run_command(
        rig, clock, _command(url)
    )
    [(binding, message)] = rig.starter.calls
    assert "slack-eu-bot" == binding
    target = message.reply_target()
    await rig.replier.reply(target, "3 pods <ready> & running")
    await rig.replier.reply(ports.private(target), "The run failed: model timeout")
    posted = slack_api.calls("response_url")
    assert [
        (HOOK_PATH, "application/json", "in_channel", "3 pods &lt;ready&gt; &amp; running"),
        (HOOK_PATH, "application/json", "ephemeral", "The run failed: model timeout"),
    ] == [(p["_path"], p["_content_type"], p["response_type"], p["text"]) for p in posted]
    assert [] == slack_api.calls("chat.postMessage")


async def test_a_response_url_is_used_five_times_then_chat_post_message(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """Slack takes at most five answers per response URL; the sixth goes to chat.postMessage and says so."""
    await _run_command(rig, clock, _command(slack_api.hooks_url + HOOK_PATH, channel="C_US"))
    target = rig.starter.calls[0][1].reply_target()
    with structlog.testing.capture_logs() as logs:
        for n in range(6):
            await rig.replier.reply(target, f"answer {n}")
    assert [f"answer {n}" for n in range(5)] == [p["text"] for p in slack_api.calls("response_url")]
    assert [("C_US", "answer 5")] == [(p["channel"], p["text"]) for p in slack_api.calls("chat.postMessage")]
    assert [("used_up", "slack-bot")] == [
        (e["reason"], e["trigger"]) for e in logs if e["event"] == "slack.response_url_fallback"
    ]


async def test_an_expired_response_url_falls_back_to_chat_post_message(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """A response URL is good for 30 minutes: a run that answers later posts with chat.postMessage."""
    await _run_command(rig, clock, _command(slack_api.hooks_url + HOOK_PATH, channel="C_US"))
    target = rig.starter.calls[0][1].reply_target()
    clock.now += 29 * 60
    await rig.replier.reply(target, "in time")
    clock.now += 2 * 60
    with structlog.testing.capture_logs() as logs:
        await rig.replier.reply(target, "too late for the URL")
    assert ["in time"] == [p["text"] for p in slack_api.calls("response_url")]
    assert ["too late for the URL"] == [p["text"] for p in slack_api.calls("chat.postMessage")]
    assert ["expired"] == [e["reason"] for e in logs if e["event"] == "slack.response_url_fallback"]


async def test_a_refused_response_url_falls_back_and_the_error_is_clear(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """A non-2xx from the response URL falls back to chat.postMessage; when that fails too (the bot is not
    in the channel), the error names both failures and not the URL."""
    url = slack_api.hooks_url + HOOK_PATH
    await _run_command(rig, clock, _command(url))
    target = rig.starter.calls[0][1].reply_target()
    slack_api.response_url_status = 404
    with structlog.testing.capture_logs() as logs, pytest.raises(replies.ReplyError) as caught:
        await rig.replier.reply(target, "pods are fine")
    assert 1 == len(slack_api.calls("response_url"))
    assert ["C_EU"] == [p["channel"] for p in slack_api.calls("chat.postMessage")]
    assert "HTTP 404" in str(caught.value)
    assert "not_in_channel" in str(caught.value)
    fallbacks = [e for e in logs if e["event"] == "slack.response_url_fallback"]
    assert ["http_404"] == [e["reason"] for e in fallbacks]
    assert HOOK_PATH not in str(caught.value) + json.dumps(fallbacks, default=str)


async def test_a_forged_response_url_is_refused_and_audited(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """A slash command whose response_url is not under Slack's hooks base starts nothing, is answered
    with an ephemeral refusal and audited as trigger.rejected; aofd never POSTs to that URL."""
    async with platforms.FakeServer() as elsewhere:
        for n, url in enumerate(
            (
                f"{elsewhere.url}/hooks/{HOOK_PATH}",
                slack_api.hooks_url.replace("/hooks/", "/hooksx/") + HOOK_PATH,
                slack_api.hooks_url.replace("http://", "http://user@") + HOOK_PATH,
            )
        ):
            status, answer = await _run_command(rig, clock, _command(url, trigger_id=f"forged-{n}"))
            assert (200, "ephemeral") == (status, answer["response_type"])
            assert "response_url" in answer["text"]
        await rig.settle(lambda: len(rig.audit.records) >= 2)
        assert [] == elsewhere.requests
    assert [] == rig.starter.calls
    assert {"malformed"} == set(rig.audit.reasons())
    assert all("response_url" in r["message"] for _, r in rig.audit.records)


async def test_the_replier_refuses_a_response_url_outside_the_base(slack_api: platforms.FakeSlack) -> None:
    """Even a target built elsewhere cannot make the replier POST outside the hooks base."""
    async with platforms.FakeServer() as elsewhere:
        replier = replies.SlackReplier(
            api_url=slack_api.api_url, token="xoxb-1", response_url_base=slack_api.hooks_url
        )
        target = ports.ReplyTarget(
            "slack",
            "slack-bot",
            "C_US",
            extra={"response_url": f"{elsewhere.url}/hooks/x", "issued_at": str(time.time())},
        )
        await replier.reply(target, "hello")
        assert [] == elsewhere.requests
    assert ["hello"] == [p["text"] for p in slack_api.calls("chat.postMessage")]


def test_response_url_validation() -> None:
    """Only https URLs under the base (same scheme, host and port, no user info, path below) are taken."""
    base = "https://hooks.slack.com/"
    ok = "https://hooks.slack.com/commands/T1/2/abc"
    bad = [
        "http://hooks.slack.com/commands/T1/2/abc",
        "https://hooks.slack.com.evil.example/commands",
        "https://evil.example/?https://hooks.slack.com/",
        "https://hooks.slack.com@evil.example/commands",
        "https://user@hooks.slack.com/commands",
        "https://hooks.slack.com:8443/commands",
        "https://hooks.slack.com/commands/\nInjected: 1",
        "https://hooks.slack.com/commands/ space",
        "",
    ]
    assert replies.response_url_ok(ok, base)
    assert [] == [url for url in bad if replies.response_url_ok(url, base)]


# --- mentions ----------------------------------------------------------------------------------------------


def _envelope(event_id: str, kind: str, text: str, *, authorizations: bool = True) -> bytes:
    body: dict[str, Any] = {
        "type": "event_callback",
        "team_id": "T1",
        "api_app_id": "A1",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": {
            "type": kind,
            "user": "U1",
            "text": text,
            "channel": "C_US",
            "ts": "1700000000.000200",
            "channel_type": "channel",
        },
    }
    if authorizations:
        body["authorizations"] = [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}]
    return json.dumps(body).encode()


@pytest.mark.parametrize("authorizations", [True, False], ids=["authorizations", "auth.test"])
async def test_message_before_its_app_mention_twin_is_stripped_and_runs_once(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock, authorizations: bool
) -> None:
    """`message` then `app_mention` for the same ts: one run, its text without the bot's mention (the bot
    user id from the envelope's authorizations, else from auth.test)."""
    for event_id, kind in (("EvMsg", "message"), ("EvMention", "app_mention")):
        body = _envelope(event_id, kind, "<@UBOT> get pods -n web", authorizations=authorizations)
        headers = {**signing.slack_headers(SECRET, body, int(clock.now)), "Content-Type": "application/json"}
        assert 200 == (await rig.send("slack", "slack-bot", body, headers))[0]
    await rig.settle(lambda: bool(rig.starter.calls))
    await rig.settle()
    assert [("slack-us-bot", "get pods -n web")] == [(n, m.text) for n, m in rig.starter.calls]
    assert (0 if authorizations else 1) == len(slack_api.calls("auth.test"))


async def test_a_message_mentioning_someone_else_keeps_its_text(rig: harness.Rig, clock: Clock) -> None:
    """Only the bot's own leading mention is removed from a `message` event."""
    body = _envelope("EvOther", "message", "<@U_ALICE> can you look at web?")
    headers = {**signing.slack_headers(SECRET, body, int(clock.now)), "Content-Type": "application/json"}
    assert 200 == (await rig.send("slack", "slack-bot", body, headers))[0]
    await rig.settle(lambda: bool(rig.starter.calls))
    assert ["<@U_ALICE> can you look at web?"] == [m.text for _, m in rig.starter.calls]


async def test_an_app_mention_only_trigger_runs_the_twin_it_takes(
    slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """With `events: [app_mention]`, a `message` twin that arrives first neither claims the pair nor draws
    a no-match reply: the app_mention runs."""
    spec = PlatformsSpec(slack_api_url=slack_api.api_url, slack_response_url_base=slack_api.hooks_url)
    async with harness.Rig(platforms=spec, clock=clock) as rig:
        await rig.apply(_bindings(_trigger(events=["app_mention"])))
        for event_id, kind in (("EvMsg", "message"), ("EvMention", "app_mention")):
            body = _envelope(event_id, kind, "<@UBOT> get pods")
            headers = {
                **signing.slack_headers(SECRET, body, int(clock.now)),
                "Content-Type": "application/json",
            }
            assert 200 == (await rig.send("slack", "slack-bot", body, headers))[0]
        await rig.settle(lambda: bool(rig.starter.calls))
        await rig.settle()
    assert [("slack-us-bot", "app_mention", "get pods")] == [
        (n, m.event_type, m.text) for n, m in rig.starter.calls
    ]
    assert [] == slack_api.calls("chat.postMessage")


def test_a_reply_target_never_shows_its_response_url() -> None:
    """A response URL lets anyone post to the channel: a target's repr (logs, tracebacks) hides it."""
    message = ports.EventMessage(
        "slack",
        "slack-bot",
        "/k8s get pods",
        ports.UserRef("U1"),
        channel_id="C_EU",
        event_type="slash_command",
        raw={"response_url": "https://hooks.slack.com/commands/T1/2/secret-part"},
        received_at=1700000000.5,
    )
    target = message.reply_target()
    assert "https://hooks.slack.com/commands/T1/2/secret-part" == target.extra["response_url"]
    assert "1700000000.5" == target.extra["issued_at"]
    assert "secret-part" not in repr(target) + repr(ports.private(target))


async def test_a_socket_mode_slash_command_answers_through_its_response_url(
    slack_api: platforms.FakeSlack,
) -> None:
    """Over Socket Mode the ack carries the immediate answer and the run's answer goes to the response URL."""
    form = dict(urllib.parse.parse_qsl(_command(slack_api.hooks_url + HOOK_PATH).decode()))
    slack_api.envelopes = [
        {
            "envelope_id": "env-cmd",
            "type": "slash_commands",
            "accepts_response_payload": True,
            "payload": form,
        }
    ]
    spec = PlatformsSpec(slack_api_url=slack_api.api_url, slack_response_url_base=slack_api.hooks_url)
    async with harness.Rig(platforms=spec) as rig:
        trigger = resources.trigger("slack-bot", "Slack", app_token="xapp-1", bot_token="xoxb-test")
        await rig.apply(_bindings(trigger))
        await rig.settle(lambda: slack_api.acked.is_set() and bool(rig.starter.calls))
        await rig.replier.reply(rig.starter.calls[0][1].reply_target(), "pods are fine")
        await rig.switchboard.current.listeners["slack-bot"].stop(drain=1.0)
    assert [("env-cmd", "Working on it.")] == [
        (a["envelope_id"], a["payload"]["text"]) for a in slack_api.acks
    ]
    assert [("in_channel", "pods are fine")] == [
        (p["response_type"], p["text"]) for p in slack_api.calls("response_url")
    ]
    assert [] == slack_api.calls("chat.postMessage")


async def test_a_redirecting_response_url_is_not_followed(
    rig: harness.Rig, slack_api: platforms.FakeSlack, clock: Clock
) -> None:
    """A redirect under the allowed base could lead anywhere: it is an answer that failed, not a hop."""
    url = slack_api.hooks_url + HOOK_PATH
    await _run_command(rig, clock, _command(url))
    target = rig.starter.calls[0][1].reply_target()
    slack_api.response_url_redirect = slack_api.api_url + "chat.postMessage?elsewhere=1"
    slack_api.not_in_channels.discard("C_EU")
    with structlog.testing.capture_logs() as logs:
        await rig.replier.reply(target, "pods are fine")
    assert 1 == len(slack_api.calls("response_url"))
    posted = slack_api.calls("chat.postMessage")
    assert ["pods are fine"] == [p["text"] for p in posted]  # the fallback, not the redirect target
    assert ["http_307"] == [e["reason"] for e in logs if e["event"] == "slack.response_url_fallback"]


def _blocks(call: dict[str, Any]) -> list[dict[str, Any]]:
    """A call's `blocks` (slack_sdk sends them as JSON text in a form body, as a list in a JSON body)."""
    blocks = call["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


async def test_an_approval_prompt_is_replaced_by_its_outcome() -> None:
    """The prompt's channel/ts comes back from chat.postMessage; chat.update replaces it with the outcome,
    escaped, without the buttons."""
    async with platforms.FakeSlack() as slack:
        replier = replies.SlackReplier(api_url=slack.api_url, token="xoxb-1")
        target = ports.ReplyTarget("slack", "slack-bot", "C1", "1700000000.000001")
        try:
            ref = await replier.ask_approval(
                target, request_id="a" * 64, summary="Approval needed", argv=("kubectl", "delete", "pod", "x")
            )
            await replier.update_approval(target, prompt=ref, text="Denied by <@U2> & co: not run.")
        finally:
            await replier.aclose()
        (posted,) = slack.calls("chat.postMessage")
        (update,) = slack.calls("chat.update")
    assert ref == "C1/1700000000.000100"
    assert [b["type"] for b in _blocks(posted)] == ["section", "section", "actions"]
    assert (update["channel"], update["ts"]) == ("C1", "1700000000.000100")
    assert update["text"] == "Denied by &lt;@U2&gt; &amp; co: not run."
    blocks = _blocks(update)
    assert [b["type"] for b in blocks] == ["section"]


async def test_a_telegram_prompt_is_edited_to_its_outcome() -> None:
    async with platforms.FakeTelegram(token="123:abc") as tg:
        replier = replies.TelegramReplier(api_url=tg.url, token="123:abc")
        target = ports.ReplyTarget("telegram", "tg", "-1001", "5")
        try:
            ref = await replier.ask_approval(
                target, request_id="b" * 64, summary="Approval needed", argv=("kubectl",)
            )
            await replier.update_approval(
                target, prompt=ref, text="Approved by lead (42): the command goes ahead."
            )
        finally:
            await replier.aclose()
        (edit,) = tg.calls("editMessageText")
    assert ref == "99"
    assert (edit["chat_id"], edit["message_id"]) == ("-1001", 99)
    assert "reply_markup" not in edit
    assert edit["text"].startswith("Approved by lead (42)")
