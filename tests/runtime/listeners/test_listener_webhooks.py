"""GitHub, PagerDuty and aofd's HTTP webhook through the real listener and server over loopback."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aofd.testing import resources
from tests.runtime.fakes import harness, signing

GH_SECRET = "It's a Secret to Everybody"
PD_SECRET = "pd-secret"
HTTP_SECRET = "hook-secret"


@pytest.fixture
async def rig() -> AsyncIterator[harness.Rig]:
    gh = resources.trigger("gh", "GitHub", webhook_secret=GH_SECRET, max_body_bytes=8192)
    pd = resources.trigger("pd", "PagerDuty", webhook_secrets=["old-pd", PD_SECRET])
    hook = resources.trigger(
        "hook",
        "HTTP",
        webhook_secret=HTTP_SECRET,
        required_headers={"X-Team": "sre"},
        methods=["POST", "PUT"],
    )
    open_hook = resources.trigger("open-hook", "HTTP")
    async with harness.Rig() as r:
        await r.apply(
            [
                resources.binding(
                    "pr-review", gh, context_name="ci", filters={"events": ["pull_request.opened"]}
                ),
                resources.binding("incidents", pd, context_name="prod"),
                resources.binding("hooks", hook, context_name="ops"),
                resources.binding("open", open_hook, context_name="ops"),
            ]
        )
        yield r


def _pr(action: str = "opened") -> bytes:
    return json.dumps(
        {
            "action": action,
            "number": 7,
            "pull_request": {"number": 7, "title": "Fix the thing", "body": "details"},
            "repository": {"full_name": "acme/api"},
            "sender": {"login": "octocat", "id": 1},
        }
    ).encode()


def _gh_headers(
    body: bytes, *, secret: str = GH_SECRET, delivery: str | None = None, event: str = "pull_request"
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signing.sha256_hub(secret, body),
    }


async def test_github_test_vector_through_the_server(rig: harness.Rig) -> None:
    """GitHub's published vector passes verification end to end (and then fails parsing: 400, not 401)."""
    body = b"Hello, World!"
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "d-vector",
        "X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    }
    assert 400 == (await rig.send("github", "gh", body, headers))[0]
    tampered = await rig.send("github", "gh", b"Hello, World?", headers)
    await rig.settle(lambda: len(rig.audit.records) == 2)
    assert 401 == tampered[0]
    assert ["malformed", "signature_invalid"] == sorted(rig.audit.reasons())


async def test_github_pull_request_opened_runs_once_per_delivery(rig: harness.Rig) -> None:
    """`pull_request.opened` starts the PR binding; the same X-GitHub-Delivery redelivered runs nothing."""
    body = _pr()
    headers = _gh_headers(body, delivery="72d3162e")
    first = await rig.send("github", "gh", body, headers)
    again = await rig.send("github", "gh", body, headers)
    closed = await rig.send("github", "gh", _pr("closed"), _gh_headers(_pr("closed")))
    assert (202, 200, 200) == (first[0], again[0], closed[0])
    assert {"accepted": True, "outcome": "duplicate"} == json.loads(again[1])
    assert [("pr-review", "pull_request.opened", "acme/api", "octocat")] == [
        (n, m.event_type, m.channel_name, m.user.name) for n, m in rig.starter.calls
    ]


async def test_github_signed_body_under_a_new_delivery_id_is_a_duplicate(rig: harness.Rig) -> None:
    """X-GitHub-Delivery is not signed: a captured body sent again under another id runs nothing."""
    body = _pr()
    first = await rig.send("github", "gh", body, _gh_headers(body, delivery="72d3162e"))
    renamed = await rig.send("github", "gh", body, _gh_headers(body, delivery="attacker-chosen"))
    assert (202, 200, "duplicate") == (first[0], renamed[0], json.loads(renamed[1])["outcome"])
    assert 1 == len(rig.starter.calls)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong_secret", 401),
        ("missing_signature", 401),
        ("missing_event", 400),
        ("oversized", 413),
        ("ping", 200),
    ],
)
async def test_github_rejections(rig: harness.Rig, case: str, status: int) -> None:
    """Wrong secret and missing signature are 401, no event header 400, an oversized body 413; ping is
    answered.
    """
    body = _pr()
    headers = _gh_headers(body)
    if case == "wrong_secret":
        headers = _gh_headers(body, secret="nope")
    elif case == "missing_signature":
        del headers["X-Hub-Signature-256"]
    elif case == "missing_event":
        del headers["X-GitHub-Event"]
    elif case == "oversized":
        body = b"{" + b" " * 9000 + b"}"
        headers = _gh_headers(body)
    elif case == "ping":
        body = b'{"zen":"Keep it logically awesome."}'
        headers = _gh_headers(body, event="ping")
    assert status == (await rig.send("github", "gh", body, headers))[0]
    assert [] == rig.starter.calls


def _incident(event_id: str = "01DEN5XZ") -> bytes:
    return json.dumps(
        {
            "event": {
                "id": event_id,
                "event_type": "incident.triggered",
                "resource_type": "incident",
                "occurred_at": "2020-10-02T18:45:22.169Z",
                "agent": {"id": "PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
                "data": {
                    "id": "PGR0VU2",
                    "type": "incident",
                    "title": "A little bump in the road",
                    "service": {"id": "PF9KMXH", "summary": "API Service"},
                },
            }
        }
    ).encode()


async def test_pagerduty_rotation_and_dedupe(rig: harness.Rig) -> None:
    """A header whose second v1= is valid is accepted; the same event.id again runs nothing."""
    body = _incident()
    header = signing.pagerduty(["stale-secret", PD_SECRET], body)
    first = await rig.send("pagerduty", "pd", body, {"X-PagerDuty-Signature": header})
    again = await rig.send("pagerduty", "pd", body, {"X-PagerDuty-Signature": header})
    assert (202, 200) == (first[0], again[0])
    assert [("incidents", "incident.triggered", "API Service", "A little bump in the road")] == [
        (n, m.event_type, m.channel_name, m.text) for n, m in rig.starter.calls
    ]


@pytest.mark.parametrize(
    ("header", "status", "reason"),
    [
        (lambda b: "v0=" + signing.pagerduty([PD_SECRET], b)[3:], 403, "signature_invalid"),
        (lambda b: signing.pagerduty(["wrong"], b), 403, "signature_invalid"),
        (lambda b: "not a signature", 400, "malformed"),
        (lambda b: None, 400, "malformed"),
    ],
)
async def test_pagerduty_rejections(rig: harness.Rig, header: Any, status: int, reason: str) -> None:
    """v0-only and wrong signatures are 403; malformed or missing headers are 400; all audited in the
    context.
    """
    body = _incident("01OTHER")
    value = header(body)
    headers = {"X-PagerDuty-Signature": value} if value is not None else {}
    assert status == (await rig.send("pagerduty", "pd", body, headers))[0]
    await rig.settle(lambda: bool(rig.audit.records))
    assert ([], [("prod", reason)]) == (
        rig.starter.calls,
        [(c, r["event"]["reason"]) for c, r in rig.audit.records],
    )


def _hook_headers(
    body: bytes, *, ts: int | None = None, secret: str = HTTP_SECRET, delivery: str = ""
) -> dict[str, str]:
    stamp = ts if ts is not None else int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Team": "sre",
        "X-Aofd-Timestamp": str(stamp),
        "X-Aofd-Signature": signing.aofd(secret, body, stamp),
    }
    if delivery:
        headers["X-Aofd-Delivery"] = delivery
    return headers


async def test_http_webhook_signed_and_deduped(rig: harness.Rig) -> None:
    """A signed request is accepted with its run id; the same delivery id again, or the same signed request,
    runs nothing.
    """
    body = b'{"text":"restart api","user":{"id":"svc-1","name":"ci"}}'
    headers = _hook_headers(body, delivery="d-1")
    first = await rig.send("http", "hook", body, headers)
    again = await rig.send("http", "hook", body, headers)
    new_id = {**headers, "X-Aofd-Delivery": "d-2"}
    replay_new_id = await rig.send("http", "hook", body, new_id)
    no_id = _hook_headers(body, ts=int(time.time()) - 5)
    replay_a = await rig.send("http", "hook", body, no_id)
    replay_b = await rig.send("http", "hook", body, no_id)
    assert [202, 200, 200, 202, 200] == [first[0], again[0], replay_new_id[0], replay_a[0], replay_b[0]]
    assert {"accepted": True, "outcome": "started", "binding": "hooks", "run_id": "run-1"} == json.loads(
        first[1]
    )
    assert [("hooks", "restart api", "svc-1")] * 2 == [(n, m.text, m.user.id) for n, m in rig.starter.calls]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong_secret", 401),
        ("stale", 401),
        ("non_numeric", 401),
        ("missing_signature", 401),
        ("missing_required_header", 401),
        ("wrong_required_header", 403),
        ("method", 405),
        ("oversized", 413),
    ],
)
async def test_http_webhook_rejections(rig: harness.Rig, case: str, status: int) -> None:
    """Each bad request gets its status and runs nothing."""
    body = b'{"text":"x"}'
    headers = _hook_headers(body)
    method = "POST"
    if case == "wrong_secret":
        headers = _hook_headers(body, secret="other")
    elif case == "stale":
        headers = _hook_headers(body, ts=int(time.time()) - 301)
    elif case == "non_numeric":
        headers["X-Aofd-Timestamp"] = "yesterday"
    elif case == "missing_signature":
        del headers["X-Aofd-Signature"]
    elif case == "missing_required_header":
        del headers["X-Team"]
    elif case == "wrong_required_header":
        headers["X-Team"] = "dev"
    elif case == "method":
        method = "DELETE"
    elif case == "oversized":
        body = b"x" * (1024 * 1024 + 1)
        headers = _hook_headers(body)
    assert status == (await rig.send("http", "hook", body, headers, method=method))[0]
    assert [] == rig.starter.calls


async def test_unsigned_http_webhook_is_accepted(rig: harness.Rig) -> None:
    """Without a configured secret no signature is required (a startup warning says so)."""
    status, text = await rig.send("http", "open-hook", b"plain text body", {"Content-Type": "text/plain"})
    assert (202, "plain text body") == (status, rig.starter.calls[0][1].text)
    assert "started" == json.loads(text)["outcome"]


async def test_http_webhook_normalizes_every_field(rig: harness.Rig) -> None:
    """Each field of the normalized message comes from where the HTTP listener documents it."""
    payload = {"text": "deploy api", "user": {"id": "svc-7", "name": "ci"}, "channel": "ops", "thread": "t-9"}
    body = json.dumps(payload).encode()
    headers = {**_hook_headers(body, delivery="d-fields"), "X-Aofd-Event": "deploy.requested"}
    before = time.time()
    assert 202 == (await rig.send("http", "hook", body, headers))[0]
    ((_name, m),) = rig.starter.calls
    assert ("http", "hook", "deploy api") == (m.platform, m.trigger, m.text)
    assert ("svc-7", "ci", "http") == (m.user.id, m.user.name, m.user.domain)
    assert ("ops", "ops", "t-9") == (m.channel_id, m.channel_name, m.thread)
    assert ("deploy.requested", "d-fields", payload) == (m.event_type, m.delivery_id, dict(m.raw))
    assert before <= m.received_at <= time.time()


async def _raw_exchange(rig: harness.Rig, head: bytes, body: bytes | None) -> tuple[bytes, bytes]:
    """Send `head`, read what the server answers first, then send `body` (if any) and read the rest
    until the server closes the connection (`Connection: close`), so that no server task outlives the test.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.server.port)
    try:
        writer.write(head)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if body is not None:
            writer.write(body)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    return first, rest


def _expect_head(length: int, expect: str = "100-continue") -> bytes:
    return (
        f"POST /hooks/http/open-hook HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {length}\r\nExpect: {expect}\r\nConnection: close\r\n\r\n"
    ).encode()


async def test_expect_100_continue_is_answered_only_within_the_cap(rig: harness.Rig) -> None:
    """`Expect: 100-continue` gets `100 Continue` then the answer; over the cap it gets 413 at once
    (the body is never asked for); an unknown expectation gets 417.
    """
    body = b"deploy api"
    cont, answer = await _raw_exchange(rig, _expect_head(len(body)), body)
    too_big, _ = await _raw_exchange(rig, _expect_head(1024 * 1024 + 1), None)
    odd, _ = await _raw_exchange(rig, _expect_head(len(body), "tea"), None)
    assert cont.startswith(b"HTTP/1.1 100 Continue")
    assert answer.startswith(b"HTTP/1.1 202 ")
    assert too_big.startswith(b"HTTP/1.1 413 ")
    assert odd.startswith(b"HTTP/1.1 417 ")
    assert ["deploy api"] == [m.text for _n, m in rig.starter.calls]


async def test_required_headers_cannot_be_probed_without_the_signing_secret(rig: harness.Rig) -> None:
    """A bad signature gets the same answer whatever the header says: the header check comes after
    the signature, so it tells nothing to whoever lacks the secret."""
    body = b'{"text": "x"}'
    forged = {**_hook_headers(body), "X-Aofd-Signature": "sha256=" + "0" * 64}
    right = (await rig.send("http", "hook", body, forged))[0]
    wrong = (await rig.send("http", "hook", body, {**forged, "X-Team": "dev"}))[0]
    assert right == wrong == 401
    assert [] == rig.starter.calls
