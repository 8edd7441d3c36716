"""The trigger server: per-request lookup in the current table, 404s, extra routes, replies escaping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from aofd.runtime import httpserver, ports, replies, routing, server
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.runtime.fakes import harness, platforms


async def test_unknown_trigger_wrong_platform_and_disabled_are_404() -> None:
    """Unknown triggers, a platform that is not the trigger's type, and disabled triggers answer a generic
    404.
    """
    async with harness.Rig() as rig:
        hook = resources.trigger("hook", "HTTP")
        off = resources.trigger("off", "HTTP", enabled=False)
        await rig.apply([resources.binding("b", hook), resources.binding("c", off)])
        answers = [
            await rig.send("http", "nope", b"{}"),
            await rig.send("slack", "hook", b"{}"),
            await rig.send("http", "off", b"{}"),
            await rig.send("schedule", "hook", b"{}"),
        ]
    assert [(404, "not found")] * 4 == answers
    assert [] == rig.starter.calls


async def test_requests_see_the_table_published_by_the_latest_swap() -> None:
    """After a swap that removes a trigger its hook is 404, and a new trigger's hook works at once."""
    async with harness.Rig() as rig:
        await rig.apply([resources.binding("b", resources.trigger("old", "HTTP"))])
        before = (await rig.send("http", "old", b"x"))[0]
        await rig.apply([resources.binding("b", resources.trigger("new", "HTTP"))])
        after = [(await rig.send("http", "old", b"x"))[0], (await rig.send("http", "new", b"x"))[0]]
    assert (202, [404, 202]) == (before, after)


async def test_daemon_hooks_are_mounted_beside_the_trigger_hooks() -> None:
    """The daemon mounts `/hooks/git/<source>`: its handler gets the name, other methods get 405."""
    seen: list[str] = []

    async def git_hook(request: web.BaseRequest, name: str) -> web.Response:
        seen.append(name)
        return web.Response(status=202)

    srv = server.TriggerServer(switchboard=routing.Switchboard(), listen="127.0.0.1:0")
    srv.add_hook("git", git_hook)
    await srv.start()
    try:
        with pytest.raises(RuntimeError):
            srv.add_hook("other", git_hook)
        async with aiohttp.ClientSession() as session:
            statuses = []
            for method, path in [
                ("POST", "/hooks/git/main"),
                ("GET", "/hooks/git/main"),
                ("POST", "/hooks/git/"),
                ("POST", "/hooks/git/main/extra"),
                ("POST", "/elsewhere"),
                ("POST", "/"),
            ]:
                async with session.request(method, srv.url + path) as resp:
                    statuses.append((resp.status, await resp.text()))
    finally:
        await srv.stop()
    assert ["main"] == seen
    assert [
        (202, ""),
        (405, "method not allowed"),
        (404, "not found"),
        (404, "not found"),
        (404, "not found"),
        (404, "not found"),
    ] == statuses
    with pytest.raises(ValueError):
        httpserver.parse_address("localhost")
    with pytest.raises(ValueError):
        srv.add_hook("a/b", git_hook)


async def test_a_trigger_is_also_served_at_its_own_path_which_moves_with_a_swap() -> None:
    """Upstream's `config.path` serves the same listener as `/hooks/http/<name>`; a swap that edits
    the path answers at the new one at once and 404 at the old one.
    """
    async with harness.Rig() as rig:
        assert rig.session is not None

        async def post(path: str) -> int:
            assert rig.session is not None
            async with rig.session.post(rig.server.url + path, data=b"deploy api") as resp:
                return resp.status

        await rig.apply([resources.binding("b", resources.trigger("hook", "HTTP", path="/incoming/deploys"))])
        first = [await post("/incoming/deploys"), await post("/hooks/http/hook"), await post("/incoming")]
        await rig.apply([resources.binding("b", resources.trigger("hook", "HTTP", path="/incoming/v2"))])
        second = [await post("/incoming/deploys"), await post("/incoming/v2")]
    assert ([202, 202, 404], [404, 202]) == (first, second)
    assert 3 == len(rig.starter.calls)


@pytest.fixture
async def slack_api() -> AsyncIterator[platforms.FakeSlack]:
    async with platforms.FakeSlack() as fake:
        yield fake


async def test_slack_replies_are_escaped_and_threaded(slack_api: platforms.FakeSlack) -> None:
    """`<!channel>` and `<https://evil|https://good>` reach chat.postMessage escaped, in the thread."""
    replier = replies.SlackReplier(api_url=slack_api.api_url, token="xoxb-1")
    target = ports.ReplyTarget("slack", "slack-bot", "C1", "1700000000.000100")
    await replier.reply(target, "<!channel> see <https://evil|https://good> & more")
    post = slack_api.calls("chat.postMessage")[0]
    assert "&lt;!channel&gt; see &lt;https://evil|https://good&gt; &amp; more" == post["text"]
    assert ("C1", "1700000000.000100", "Bearer xoxb-1") == (post["channel"], post["thread_ts"], post["_auth"])


async def test_slack_approval_prompt_has_buttons_and_ascii_argv(slack_api: platforms.FakeSlack) -> None:
    """The prompt carries Approve/Deny buttons with the request id, and the argv as escaped ASCII JSON."""
    replier = replies.SlackReplier(api_url=slack_api.api_url, token="xoxb-1")
    argv = ("kubectl", "delete", "pod", "web-\u202e1", "<!here>")
    await replier.ask_approval(
        ports.ReplyTarget("slack", "slack-bot", "C1", "1.2"),
        request_id="req-9",
        summary="Delete a pod?",
        argv=argv,
    )
    post = slack_api.calls("chat.postMessage")[0]
    blocks = post["blocks"] if isinstance(post["blocks"], list) else json.loads(post["blocks"])
    buttons = [(e["action_id"], e["value"]) for e in blocks[2]["elements"]]
    section = blocks[1]["text"]["text"]  # the argv's own section, after the summary's
    assert [("aofd_approve", "req-9"), ("aofd_deny", "req-9")] == buttons
    assert '["kubectl", "delete", "pod", "web-\\u202e1", "\\u003c!here\\u003e"]' in section
    assert section.isascii()


async def test_multireplier_uses_the_current_listener_of_the_trigger(slack_api: platforms.FakeSlack) -> None:
    """Replies go through the trigger's current listener (its token); platforms without chat only log."""
    async with harness.Rig(platforms=PlatformsSpec(slack_api_url=slack_api.api_url)) as rig:
        trig = resources.trigger("slack-bot", "Slack", signing_secret="s", bot_token="xoxb-current")
        await rig.apply([resources.binding("b", trig)])
        await rig.replier.reply(ports.ReplyTarget("slack", "slack-bot", "C1"), "done")
        await rig.replier.reply(ports.ReplyTarget("slack", "gone-bot", "C1"), "lost")
        await rig.replier.reply(ports.ReplyTarget("schedule", "nightly"), "stored on the run")
    assert [("C1", "done", "Bearer xoxb-current")] == [
        (p["channel"], p["text"], p["_auth"]) for p in slack_api.calls("chat.postMessage")
    ]
