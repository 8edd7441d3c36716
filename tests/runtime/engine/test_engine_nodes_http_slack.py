"""HTTP nodes against a real loopback server (requests, responses, errors, `HttpPolicy`) and Slack/Response
nodes posting to a named channel or back to the origin thread."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from aofd.plan import compiler
from aofd.runtime import engine, ports, runs
from aofd.specs import http_policy
from aofd.testing import resources as res
from tests.runtime.engine.conftest import EngineFactory, RecordingReplier, message

ORIGIN = ports.ReplyTarget("slack", "slack-bot", "C-ORIGIN", "1700000000.0001")
LOOPBACK = http_policy.HttpPolicy(allow_loopback=True, timeout=2.0)
COMPILE_LOOPBACK = compiler.Options(http=LOOPBACK)
"""Flows here name the loopback server: compiled with a policy that lets them, so the engine's own
policy (the runtime check of every rendered URL) decides."""
BIG_ITEMS = [{"n": i, "pad": "x" * 200} for i in range(1500)]  # ~330 KB of JSON


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclasses.dataclass
class Upstream:
    """The loopback server's address, the requests it saw and a switch releasing slow handlers."""

    base: str
    port: int
    seen: list[Seen]
    release: asyncio.Event


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """An aiohttp server on 127.0.0.1 (random port) recording every request."""
    seen: list[Seen] = []
    release = asyncio.Event()

    async def record(request: web.Request) -> None:
        raw = await request.read()
        body: Any = json.loads(raw) if raw and request.content_type == "application/json" else raw.decode()
        seen.append(Seen(request.method, request.path, dict(request.query), dict(request.headers), body))

    async def items(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response(
            {"id": 42, "owner": {"name": "alice"}, "summary": "3 pods ready"}, status=201
        )

    async def status(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"error": "nope"}, status=int(request.match_info["code"]))

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/items")

    async def plain(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text=request.query.get("text", "all good"))

    async def big(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        data = json.dumps({"items": BIG_ITEMS}).encode()
        for start in range(0, len(data), 16 * 1024):
            await response.write(data[start : start + 16 * 1024])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/items", items)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/plain", plain)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Upstream(f"http://127.0.0.1:{port}", port, seen, release)
    finally:
        release.set()
        await runner.cleanup()


def flow_of(*nodes: dict[str, Any]) -> Any:
    """An AgentFlow resource running `nodes` in order."""
    ids = [n["id"] for n in nodes]
    connections = [{"from": "start", "to": ids[0]}] + [
        {"from": a, "to": b} for a, b in itertools.pairwise(ids)
    ]
    return res.flow("nodes", nodes=list(nodes), connections=connections)


async def run_flow(eng: engine.Engine, flow: Any, text: str = "v2.1 rollout") -> runs.RunRecord:
    plan = res.run_plan(res.bind("b", ctx=res.context("prod"), flow_res=flow), options=COMPILE_LOOPBACK)
    return await eng.run(plan, message(text))


def http(node_id: str, url: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "HTTP", "config": {"url": url, **config}}


def say(
    node_id: str, text: str | None = None, *, kind: str = "Response", channel: str | None = None
) -> dict[str, Any]:
    config = {k: v for k, v in {"message": text, "channel": channel}.items() if v is not None}
    return {"id": node_id, "type": kind, "config": config}


# --- HTTP nodes ------------------------------------------------------------------------------------


async def test_http_node_sends_the_rendered_method_headers_and_json_body(
    make_engine: EngineFactory, upstream: Upstream
) -> None:
    """Method, URL, headers and a JSON body rendered from `${event.*}`/`${trigger.*}` reach the server."""
    eng = make_engine(http_policy=LOOPBACK)
    node = http(
        "create",
        upstream.base + "/items?by=${trigger.user.id}",
        method="post",
        headers={"X-Request": "${event.text}", "Authorization": "Bearer static-token"},
        body={
            "text": "deploy ${event.text}",
            "user": "${trigger.user.id}",
            "count": 3,
            "tags": ["${context.name}"],
        },
    )
    record = await run_flow(eng, flow_of(node))
    assert runs.RunStatus.COMPLETED == record.status, record.error
    [seen] = upstream.seen
    assert ("POST", "/items", {"by": "U1"}) == (seen.method, seen.path, seen.query)
    assert ("v2.1 rollout", "Bearer static-token") == (
        seen.headers["X-Request"],
        seen.headers["Authorization"],
    )
    assert {"text": "deploy v2.1 rollout", "user": "U1", "count": 3, "tags": ["prod"]} == seen.body


async def test_http_response_feeds_the_next_nodes_output_and_nested_fields(
    make_engine: EngineFactory, replier: RecordingReplier, upstream: Upstream
) -> None:
    """`${node.output}` is `{status, body}`, JSON bodies are parsed so nested paths resolve, and a whole-value
    template in the next HTTP body keeps its JSON type."""
    eng = make_engine(http_policy=LOOPBACK)
    flow = flow_of(
        http("fetch", upstream.base + "/items"),
        http("forward", upstream.base + "/items", method="PUT", body={"item": "${fetch.output.body}"}),
        say(
            "answer", "#${fetch.output.body.id} by ${fetch.output.body.owner.name}: HTTP ${fetch.status_code}"
        ),
    )
    record = await run_flow(eng, flow)
    assert runs.RunStatus.COMPLETED == record.status, record.error
    fetched = {"id": 42, "owner": {"name": "alice"}, "summary": "3 pods ready"}
    assert {"status": 201, "body": fetched} == record.nodes["fetch"].output
    assert ["GET", "PUT"] == [s.method for s in upstream.seen]
    assert {"item": fetched} == upstream.seen[1].body
    assert [(ORIGIN, "#42 by alice: HTTP 201")] == replier.sent


async def test_http_text_response_is_the_default_message_of_a_following_response_node(
    make_engine: EngineFactory, replier: RecordingReplier, upstream: Upstream
) -> None:
    """A non-JSON body stays text, and a Response node without a message posts the last answer."""
    eng = make_engine(http_policy=LOOPBACK)
    record = await run_flow(
        eng, flow_of(http("check", upstream.base + "/plain?text=${event.text}"), say("done"))
    )
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert {"status": 200, "body": "v2.1 rollout"} == record.nodes["check"].output
    assert [(ORIGIN, '{"status":200,"body":"v2.1 rollout"}')] == replier.sent


async def test_http_error_status_fails_the_run_and_tells_the_origin(
    make_engine: EngineFactory, replier: RecordingReplier, upstream: Upstream
) -> None:
    """An HTTP status >= 400 fails the node and the run: the next node never runs, the origin is told."""
    eng = make_engine(http_policy=LOOPBACK)
    url = upstream.base + "/status/503"
    record = await run_flow(eng, flow_of(http("fetch", url), say("after", "never")))
    assert runs.RunStatus.FAILED == record.status
    assert f"node fetch: GET {url} answered HTTP 503" == record.error
    assert (runs.NodeStatus.FAILED, runs.NodeStatus.PENDING) == (
        record.nodes["fetch"].status,
        record.nodes["after"].status,
    )
    assert [(ports.private(ORIGIN), engine.failure_text(record))] == replier.sent


async def test_http_error_status_is_an_output_when_fail_on_error_is_false(
    make_engine: EngineFactory, replier: RecordingReplier, upstream: Upstream
) -> None:
    """With `fail_on_error: false` (engine-level config) a 404 is the node's output and the flow goes on."""
    eng = make_engine(http_policy=LOOPBACK)
    spec = {
        "nodes": [
            http("fetch", upstream.base + "/status/404", failOnError=False),
            say("answer", "got ${fetch.status_code}: ${fetch.output.body.error}"),
        ]
    }
    binding = res.bind("b", ctx=res.context("prod"), flow_res=res.flow("f", **spec))
    plan = res.run_plan(binding, options=COMPILE_LOOPBACK)
    record = await eng.run(plan, message("x"))
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert {"status": 404, "body": {"error": "nope"}} == record.nodes["fetch"].output
    assert [(ORIGIN, "got 404: nope")] == replier.sent


async def test_http_node_does_not_follow_redirects(make_engine: EngineFactory, upstream: Upstream) -> None:
    """A 3xx is returned as the node's output; the Location is never requested."""
    eng = make_engine(http_policy=LOOPBACK)
    record = await run_flow(eng, flow_of(http("go", upstream.base + "/redirect")))
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert 302 == record.nodes["go"].output["status"]
    assert ["/redirect"] == [s.path for s in upstream.seen]


async def test_http_node_reads_a_large_streamed_body_whole(
    make_engine: EngineFactory, upstream: Upstream
) -> None:
    """A JSON body arriving in many chunks (under `max_body_bytes`) is read completely and parsed."""
    eng = make_engine(http_policy=LOOPBACK)
    record = await run_flow(eng, flow_of(http("big", upstream.base + "/big")))
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert {"items": BIG_ITEMS} == record.nodes["big"].output["body"]


async def test_http_node_truncates_the_body_at_max_body_bytes(
    make_engine: EngineFactory, upstream: Upstream
) -> None:
    """Only `max_body_bytes` of the response body are read."""
    eng = make_engine(http_policy=dataclasses.replace(LOOPBACK, max_body_bytes=1000))
    record = await run_flow(eng, flow_of(http("cut", upstream.base + "/plain?text=" + "y" * 5000)))
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert "y" * 1000 == record.nodes["cut"].output["body"]


async def test_http_node_times_out_after_the_policy_timeout(
    make_engine: EngineFactory, upstream: Upstream
) -> None:
    """A server slower than `HttpPolicy.timeout` fails the node with a clear error instead of hanging."""
    eng = make_engine(http_policy=dataclasses.replace(LOOPBACK, timeout=0.2))
    url = upstream.base + "/slow"
    record = await run_flow(eng, flow_of(http("slow", url)))
    assert runs.RunStatus.FAILED == record.status
    assert record.error is not None
    assert f"node slow: GET {url} failed:" == record.error[: len(f"node slow: GET {url} failed:")]


# --- HttpPolicy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme ftp is not allowed (http and https only)"),
        ("file:///etc/passwd", "scheme file is not allowed (http and https only)"),
        ("example.com/x", "scheme (none) is not allowed (http and https only)"),
        ("http://user:pw@example.com/", "credentials in the URL are not allowed"),
        ("http:///path", "the URL names no host"),
        (
            "http://169.254.169.254/latest/meta-data",
            "address 169.254.169.254 is link-local (cloud metadata) and not allowed",
        ),
        ("http://[fe80::1]/", "address fe80::1 is link-local (cloud metadata) and not allowed"),
        ("http://[fd00:ec2::254]/", "address fd00:ec2::254 is link-local (cloud metadata) and not allowed"),
        (
            "http://[::ffff:169.254.169.254]/",
            "address ::ffff:169.254.169.254 is link-local (cloud metadata) and not allowed",
        ),
        ("http://127.0.0.1:8080/", "loopback address 127.0.0.1 is not allowed"),
        ("http://[::1]/", "loopback address ::1 is not allowed"),
        ("http://[::ffff:127.0.0.1]/", "loopback address ::ffff:127.0.0.1 is not allowed"),
        ("http://0.0.0.0/", "loopback address 0.0.0.0 is not allowed"),
        ("http://[::]/", "loopback address :: is not allowed"),
        ("http://LocalHost./", "localhost is not allowed"),
        ("http://api.localhost/", "localhost is not allowed"),
    ],
)
def test_default_policy_refuses(url: str, reason: str) -> None:
    """The default `HttpPolicy` refuses non-HTTP schemes, URL credentials, and metadata or loopback addresses
    written as IP literals (IPv4-mapped and unspecified ones too) or as localhost names."""
    assert reason == http_policy.HttpPolicy().check(url)


def test_allow_loopback_still_refuses_metadata_and_allowed_hosts_match_on_label_boundaries() -> None:
    """`allow_loopback` never opens link-local, and `allowed_hosts` matches a host or its subdomains only."""
    loopback = http_policy.HttpPolicy(allow_loopback=True)
    assert [None, None, None] == [
        loopback.check(u) for u in ("http://127.0.0.1/", "http://[::1]/", "http://localhost/")
    ]
    assert "address 169.254.169.254 is link-local (cloud metadata) and not allowed" == loopback.check(
        "http://169.254.169.254/"
    )
    hosts = http_policy.HttpPolicy(allowed_hosts=frozenset({"example.com"}))
    assert [None, None, "host evilexample.com is not in the allowed hosts"] == [
        hosts.check(u)
        for u in ("https://example.com/a", "https://API.example.com/a", "https://evilexample.com/")
    ]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "0.0.0.0", "127.1", "2130706433"]
)
async def test_http_node_under_the_default_policy_never_reaches_loopback(
    make_engine: EngineFactory, replier: RecordingReplier, upstream: Upstream, host: str
) -> None:
    """With the default policy, a loopback server is never reached, whatever spelling of its address is used
    (the policy refuses the IP literals and names, aiohttp refuses non-canonical IPv4 forms)."""
    eng = make_engine()
    record = await run_flow(eng, flow_of(http("leak", f"http://{host}:{upstream.port}/items")))
    assert (runs.RunStatus.FAILED, runs.NodeStatus.FAILED) == (record.status, record.nodes["leak"].status)
    assert [] == upstream.seen
    assert [(ports.private(ORIGIN), engine.failure_text(record))] == replier.sent


async def test_http_node_refuses_hosts_outside_allowed_hosts(
    make_engine: EngineFactory, upstream: Upstream
) -> None:
    """`allowed_hosts` applies on top of `allow_loopback`: an unlisted host is refused without a request."""
    eng = make_engine(http_policy=dataclasses.replace(LOOPBACK, allowed_hosts=frozenset({"example.com"})))
    record = await run_flow(eng, flow_of(http("fetch", upstream.base + "/items")))
    assert runs.RunStatus.FAILED == record.status
    assert "node fetch: host 127.0.0.1 is not in the allowed hosts" == record.error
    assert [] == upstream.seen


# --- Slack / Response nodes -------------------------------------------------------------------


async def test_slack_node_with_a_channel_posts_to_that_channel_not_the_origin(
    make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """`config.channel` (rendered) gets a new top-level post; nothing else goes to the origin."""
    eng = make_engine()
    flow = flow_of(
        say(
            "notify",
            "Deploy ${event.text} by ${trigger.user.id}",
            kind="Slack",
            channel="#alerts-${context.name}",
        )
    )
    record = await run_flow(eng, flow)
    assert runs.RunStatus.COMPLETED == record.status, record.error
    named = ports.ReplyTarget("slack", "slack-bot", channel_id="#alerts-prod")
    assert [(named, "Deploy v2.1 rollout by U1")] == replier.sent
    assert {"sent": True, "channel": "#alerts-prod", "text": "Deploy v2.1 rollout by U1"} == record.nodes[
        "notify"
    ].output


async def test_named_channel_post_then_response_answers_the_origin_thread(
    make_engine: EngineFactory, replier: RecordingReplier, upstream: Upstream
) -> None:
    """A Slack node to a named channel does not count as the answer: a later Response node without a channel
    posts into the origin thread, once, and the HTTP answer is not posted again."""
    eng = make_engine(http_policy=LOOPBACK)
    flow = flow_of(
        http("fetch", upstream.base + "/items"),
        say("page", "[${context.name}] ${fetch.output.body.summary}", kind="Slack", channel="C-OPS"),
        say("answer", "Posted to ops: ${page.output.text}"),
    )
    record = await run_flow(eng, flow)
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert [
        (ports.ReplyTarget("slack", "slack-bot", "C-OPS"), "[prod] 3 pods ready"),
        (ORIGIN, "Posted to ops: [prod] 3 pods ready"),
    ] == replier.sent


async def test_slack_node_naming_the_origin_channel_replies_in_the_origin_thread(
    make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """A channel equal to the origin's channel id is the origin: the post goes into its thread."""
    eng = make_engine()
    record = await run_flow(
        eng, flow_of(say("reply", "ack ${event.text}", kind="Slack", channel="${event.channel_id}"))
    )
    assert runs.RunStatus.COMPLETED == record.status, record.error
    assert [(ORIGIN, "ack v2.1 rollout")] == replier.sent
