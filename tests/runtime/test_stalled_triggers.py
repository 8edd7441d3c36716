"""A Trigger whose bindings are all Stalled keeps its listener: handshakes and pings are answered,
signatures are checked and rejections audited, and an event is answered 503 with `Retry-After`,
counted, and audited in the binding's Context as not run, with the stall reason."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import records
from aofd.resources.kinds.base import LoadedResource
from aofd.runtime.providers import registry
from aofd.settings import ModelsSpec, PlatformsSpec
from aofd.testing import resources as res
from tests.runtime.fakes import harness, platforms, signing

SLACK_SECRET = "slack-signing-secret"
GH_SECRET = "gh-webhook-secret"
PD_SECRET = "pd-webhook-secret"
WA_SECRET = "wa-app-secret"
WA_VERIFY = "wa-verify-token"


def _triggers() -> dict[str, LoadedResource]:
    return {
        "slack": res.trigger("sl", "Slack", signing_secret=SLACK_SECRET, bot_token="xoxb-test"),
        "whatsapp": res.trigger(
            "wa",
            "WhatsApp",
            access_token="EAA-token",
            app_secret=WA_SECRET,
            verify_token=WA_VERIFY,
            phone_number_id="1055",
        ),
        "github": res.trigger("gh", "GitHub", webhook_secret=GH_SECRET),
        "pagerduty": res.trigger("pd", "PagerDuty", webhook_secret=PD_SECRET),
    }


@pytest.fixture
async def slack_api() -> AsyncIterator[platforms.FakeSlack]:
    async with platforms.FakeSlack(channels={"C1": "ops"}) as fake:
        yield fake


@pytest.fixture
async def rig(slack_api: platforms.FakeSlack, tmp_path: Path) -> AsyncIterator[harness.Rig]:
    """Each trigger's only binding runs in Context `prod`, whose kubeconfig does not exist here."""
    prod = res.context("prod", kubeconfig=str(tmp_path / "missing-kubeconfig"))
    bound = [
        dataclasses.replace(res.binding(f"b-{trigger.name}", trigger, context_name="prod"), context=prod)
        for trigger in _triggers().values()
    ]
    async with harness.Rig(platforms=PlatformsSpec(slack_api_url=slack_api.api_url)) as r:
        outcome = await r.apply(bound)
        assert {b.key: "ContextNotReady" for b in bound}.items() <= outcome.reasons.items()
        assert set(outcome.listeners) == {"sl", "wa", "gh", "pd"}
        yield r


def _gh_headers(body: bytes, event: str, *, secret: str = GH_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signing.sha256_hub(secret, body),
    }


def _pr() -> bytes:
    return json.dumps(
        {
            "action": "opened",
            "pull_request": {"number": 7, "title": "Fix the thing", "body": "details"},
            "repository": {"full_name": "acme/api"},
            "sender": {"login": "octocat", "id": 1},
        }
    ).encode()


def _records(rig: harness.Rig, action: str) -> list[tuple[str, Any]]:
    return [(ctx, rec) for ctx, rec in rig.audit.records if rec["event"]["action"] == action]


async def test_slack_url_verification_is_answered(rig: harness.Rig) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "3eZbrw1aB", "token": "x"}).encode()
    headers = {
        "Content-Type": "application/json",
        **signing.slack_headers(SLACK_SECRET, body, int(time.time())),
    }
    status, text = await rig.send("slack", "sl", body, headers)
    assert (200, {"challenge": "3eZbrw1aB"}) == (status, json.loads(text))


async def test_whatsapp_handshake_is_answered(rig: harness.Rig) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": WA_VERIFY, "hub.challenge": "1158201444"}
    assert (200, "1158201444") == await rig.send("whatsapp", "wa", method="GET", params=params)


async def test_github_and_pagerduty_pings_are_answered(rig: harness.Rig) -> None:
    ping = b'{"zen":"Keep it logically awesome.","hook_id":1}'
    status, text = await rig.send("github", "gh", ping, _gh_headers(ping, "ping"))
    assert (200, "pong") == (status, json.loads(text)["outcome"])
    pd_ping = json.dumps({"event": {"id": "01PING", "event_type": "pagey.ping", "data": {}}}).encode()
    headers = {"X-PagerDuty-Signature": signing.pagerduty([PD_SECRET], pd_ping)}
    status, text = await rig.send("pagerduty", "pd", pd_ping, headers)
    assert (200, "ignored") == (status, json.loads(text)["outcome"])
    assert [] == rig.starter.calls


async def test_a_signed_event_is_503_with_a_reason_and_audited_as_not_run(rig: harness.Rig) -> None:
    body = _pr()
    status, text = await rig.send("github", "gh", body, _gh_headers(body, "pull_request"))
    assert status == 503
    assert text.strip() == "not ready: binding b-gh cannot run now (ContextNotReady); retry later"
    assert "kubeconfig" not in text, "the details are the operator's (status, audit log)"
    await rig.settle(lambda: bool(_records(rig, "trigger.received")))
    ((context, record),) = _records(rig, "trigger.received")
    assert context == "prod"
    assert record["event"]["outcome"] == "failure"
    assert record["event"]["reason"] == "ContextNotReady"
    assert record["aofd"]["trigger"] == {
        "platform": "github",
        "name": "gh",
        "binding": "b-gh",
        "event_type": "pull_request.opened",
        "delivery_id": record["aofd"]["trigger"]["delivery_id"],
    }
    assert record["aofd"]["run"] == {"started": False}
    assert record["message"].startswith("event not run: binding b-gh cannot run now: Context prod is stalled")
    assert record["user"]["id"] == "1"
    assert records.ACTIONS["trigger.received"] == (
        tuple(record["event"]["category"]),
        tuple(record["event"]["type"]),
    )
    assert [] == rig.starter.calls


@pytest.mark.parametrize("platform", ["github", "pagerduty", "slack", "whatsapp"])
async def test_a_bad_signature_is_refused_and_audited(rig: harness.Rig, platform: str) -> None:
    body = _pr() if platform != "pagerduty" else b'{"event":{"id":"01X","event_type":"incident.triggered"}}'
    name = {"github": "gh", "pagerduty": "pd", "slack": "sl", "whatsapp": "wa"}[platform]
    headers = {
        "github": _gh_headers(body, "pull_request", secret="wrong"),
        "pagerduty": {"X-PagerDuty-Signature": signing.pagerduty(["wrong"], body)},
        "slack": {
            "Content-Type": "application/json",
            **signing.slack_headers("wrong", body, int(time.time())),
        },
        "whatsapp": {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signing.sha256_hub("wrong", body),
        },
    }[platform]
    status, _ = await rig.send(platform, name, body, headers)
    assert status in (401, 403)
    await rig.settle(lambda: bool(_records(rig, "trigger.rejected")))
    assert [("prod", "signature_invalid", status)] == [
        (ctx, rec["event"]["reason"], rec["http"]["response"]["status_code"])
        for ctx, rec in _records(rig, "trigger.rejected")
    ]


async def test_not_run_events_are_counted_and_a_burst_is_audited_in_two_records() -> None:
    """An unconfigured provider (ProviderNotReady): each event is counted; the first of a second is
    audited at once, the rest in one summary when the second ends (none is left unrecorded)."""
    hook = res.trigger("hook", "HTTP")
    agent = res.agent("a", model="anthropic:claude-sonnet-4", instructions="You help.")
    flow = res.flow("f", nodes=[{"id": "a", "type": "Agent", "config": {"agent": "a"}}])
    bound = res.bind("b", ctx=res.context("prod"), flow_res=flow, agents=[agent], trigger_res=hook)
    second_ends = asyncio.Event()

    async def sleep(_: float) -> None:
        await second_ends.wait()

    providers = registry.Providers(models=ModelsSpec(), environ={})
    async with harness.Rig(providers=providers, sleep=sleep) as rig:
        await rig.apply([bound])
        for _ in range(3):
            status, text = await rig.send("http", "hook", b"{}", {"Content-Type": "application/json"})
            assert (503, "not ready: binding b cannot run now (ProviderNotReady); retry later") == (
                status,
                text.strip(),
            )
        await rig.settle(lambda: len(_records(rig, "trigger.received")) == 1)
        second_ends.set()
        await rig.settle(lambda: len(_records(rig, "trigger.received")) == 2)
        assert [("http", "ProviderNotReady")] * 3 == rig.not_run
        got = [
            (ctx, rec["event"]["reason"], rec["aofd"]["suppressed"])
            for ctx, rec in _records(rig, "trigger.received")
        ]
        assert [("prod", "ProviderNotReady", 0), ("prod", "ProviderNotReady", 2)] == got
        assert _records(rig, "trigger.received")[1][1]["message"].startswith("2 more events not run")
        assert "ANTHROPIC_API_KEY" in _records(rig, "trigger.received")[0][1]["message"]


async def test_the_audit_log_of_a_context_with_an_unusable_kubeconfig_is_opened(tmp_path: Path) -> None:
    """Its bindings' rejections and not-run events go to the Context's own audit log (its `log_path`),
    so the applier opens it even though the Context cannot run commands here."""
    hook = res.trigger("hook", "HTTP")
    prod = res.context("prod", kubeconfig=str(tmp_path / "missing"))
    bound = dataclasses.replace(res.binding("b", hook, context_name="prod"), context=prod)
    async with harness.Rig() as rig:
        outcome = await rig.apply([bound])
        assert outcome.reasons[prod.key] == "KubeconfigUnusable"
        assert "prod" in rig.audit.opened
        assert "prod" not in rig.policies


async def test_a_trigger_with_no_binding_answers_its_handshake(slack_api: platforms.FakeSlack) -> None:
    """Setting up a Slack app before any binding exists: url_verification is answered, a signed
    event finds no flow, a bad signature is still refused."""
    lone = res.trigger("lone", "Slack", signing_secret=SLACK_SECRET, bot_token="xoxb-test")
    async with harness.Rig(platforms=PlatformsSpec(slack_api_url=slack_api.api_url)) as rig:
        outcome = await rig.apply([], triggers=[lone])
        assert set(outcome.listeners) == {"lone"}
        body = json.dumps({"type": "url_verification", "challenge": "c-1", "token": "x"}).encode()
        headers = {
            "Content-Type": "application/json",
            **signing.slack_headers(SLACK_SECRET, body, int(time.time())),
        }
        status, text = await rig.send("slack", "lone", body, headers)
        assert (200, {"challenge": "c-1"}) == (status, json.loads(text))
        forged = {
            "Content-Type": "application/json",
            **signing.slack_headers("wrong", body, int(time.time())),
        }
        status, _ = await rig.send("slack", "lone", body, forged)
        assert status == 401
        assert [] == rig.starter.calls
