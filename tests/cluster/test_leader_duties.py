"""Singleton duties across two replicas against a real etcd: each replica is the real listener
stack (`harness.Rig`: switchboard, applier, dispatcher, trigger server) with its own coordinator,
sharing one cluster name. Schedules fire once per slot on the leader only, also across a
failover and from a leader whose lease renewals stopped; Telegram is polled by the leader only
and the next leader goes on from the stored offset; a Slack retry delivered to the other
replica runs once; Socket Mode is connected on the leader only, and an envelope a replica may
not take is left unacknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from aofd.runtime import cluster
from aofd.runtime.listeners import schedule, slack, telegram
from aofd.settings import PlatformsSpec
from aofd.testing import resources
from tests.cluster.conftest import eventually, spec, start
from tests.cluster.etcdkit import EtcdCluster, requires_etcd
from tests.runtime.fakes import harness, platforms, signing

pytestmark = [requires_etcd, pytest.mark.slow]

SECRET = "slack-signing-secret"
TG_TOKEN = "123456:test-token"


async def _pair(
    etcd: EtcdCluster, made: list[cluster.Coordinator]
) -> tuple[cluster.Coordinator, cluster.Coordinator]:
    """Two members of one set; `a` leads."""
    s = spec(etcd.endpoints)
    a = await start(made, s)
    await eventually(lambda: a.is_leader, 5)
    b = await start(made, s.model_copy(update={"member": "b"}))
    return a, b


@contextlib.asynccontextmanager
async def _rigs(*coordinators: cluster.Coordinator, **kwargs: Any) -> AsyncIterator[list[harness.Rig]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(harness.Rig(coordinator=c, **kwargs)) for c in coordinators]


def _stamps(*rigs: harness.Rig) -> list[str]:
    return [m.delivery_id for r in rigs for _, m in r.starter.calls]


# --- schedules ---------------------------------------------------------------------------------


async def test_a_schedule_fires_once_per_slot_on_the_leader_and_goes_on_after_a_failover(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a, b = await _pair(etcd1, coordinators)
    async with _rigs(a, b, with_scheduler=True) as (ra, rb):
        tick = resources.trigger("tick", "Schedule", cron="* * * * * *", timezone="UTC")
        for rig in (ra, rb):
            await rig.apply([resources.binding("every-second", tick, context_name="ops")])
        await ra.settle(lambda: len(ra.starter.calls) >= 3, timeout=6)
        assert [] == rb.starter.calls  # b's scheduler ticks too, but b does not lead
        stamp = ra.starter.calls[0][1].delivery_id
        assert await a.get(schedule.claim_key("tick", stamp)) is not None
        # The leader's session ends in etcd (as when it dies): b fires within TTL + 2 s.
        await a._leases().revoke(a._lease)
        took = await eventually(lambda: bool(rb.starter.calls), a.spec.lease_ttl + 2)
        assert took < a.spec.lease_ttl + 2
        await rb.settle(lambda: len(rb.starter.calls) >= 2, timeout=3)
        a_count = len(ra.starter.calls)
        await rb.settle(lambda: len(rb.starter.calls) >= 4, timeout=4)
        assert a_count == len(ra.starter.calls)  # a, fenced by etcd, has stepped down
        stamps = _stamps(ra, rb)
    assert len(stamps) == len(set(stamps))
    assert max(_stamps(ra)) < min(_stamps(rb))
    assert not a.is_leader


async def test_a_leader_whose_renewals_stop_fires_nothing_and_the_other_takes_over(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    """As a leader paused past its lease (SIGSTOP, a long GC): its own clock fences it before
    etcd expires the lease, the other replica fires after the expiry, and when the stale leader
    tries anyway (its local clock wrong) etcd's fence refuses it."""
    a, b = await _pair(etcd1, coordinators)
    async with _rigs(a, b, with_scheduler=True) as (ra, rb):
        tick = resources.trigger("tick", "Schedule", cron="* * * * * *", timezone="UTC")
        for rig in (ra, rb):
            await rig.apply([resources.binding("every-second", tick, context_name="ops")])
        await ra.settle(lambda: len(ra.starter.calls) >= 2, timeout=5)
        old_token = a.leader_rev
        resume = asyncio.Event()

        async def stuck(lease: int) -> int:  # no renewal answers until the test resumes it
            await resume.wait()
            return 0

        a._keep_alive = stuck  # type: ignore[method-assign]
        paused = time.monotonic()
        await eventually(lambda: not a.fence(), a.spec.lease_ttl)
        fenced_count = len(ra.starter.calls)
        await eventually(lambda: bool(rb.starter.calls), a.spec.lease_ttl + 3)
        # The lease ran out at most TTL after the last renewal, itself at most TTL/3 before the pause.
        assert time.monotonic() - paused < a.spec.lease_ttl + 2 + a.spec.lease_ttl / 3
        await rb.settle(lambda: len(rb.starter.calls) >= 2, timeout=3)
        assert fenced_count == len(ra.starter.calls)
        # The stale leader believes it still leads: the fenced claim in etcd refuses its tick.
        listener = ra.switchboard.current.listeners["tick"]
        assert isinstance(listener, schedule.ScheduleListener)
        a._leader_rev = old_token
        a.fence = lambda: True  # type: ignore[method-assign]
        slot = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=30)
        await listener.on_tick(slot)
        assert fenced_count == len(ra.starter.calls)
        assert await b.get(schedule.claim_key("tick", slot.isoformat())) is None
        resume.set()
        stamps = _stamps(ra, rb)
    assert len(stamps) == len(set(stamps))
    assert max(_stamps(ra)) < min(_stamps(rb))


def test_the_latest_fire_time_within_the_grace() -> None:
    every_10s = CronTrigger(second="*/10", timezone=datetime.UTC)
    now = datetime.datetime(2030, 1, 1, 3, 0, 25, tzinfo=datetime.UTC)
    assert datetime.datetime(2030, 1, 1, 3, 0, 20, tzinfo=datetime.UTC) == schedule.latest_fire_time(
        every_10s, now, 30
    )
    assert schedule.latest_fire_time(every_10s, now, 4) is None
    at_20 = now.replace(second=20)
    assert at_20 == schedule.latest_fire_time(every_10s, at_20, 1)


# --- Telegram long polling ---------------------------------------------------------------------


def _update(update_id: int, text: str = "status api") -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": 42, "is_bot": False, "username": "alice"},
            "chat": {"id": -1001, "type": "supergroup", "title": "SRE"},
            "date": 1700000000,
            "text": text,
        },
    }


async def test_only_the_leader_polls_telegram_and_the_next_one_goes_on_from_the_stored_offset(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a, b = await _pair(etcd1, coordinators)
    async with platforms.FakeTelegram(token=TG_TOKEN) as fake:
        fake.updates = [_update(500), _update(501)]
        async with _rigs(a, b, platforms=PlatformsSpec(telegram_api_url=fake.url)) as (ra, rb):
            polling = resources.trigger("tg", "Telegram", bot_token=TG_TOKEN, mode="polling")
            for rig in (ra, rb):
                await rig.apply([resources.binding("poll", polling, context_name="prod")])
            la, lb = (r.switchboard.current.listeners["tg"] for r in (ra, rb))
            assert isinstance(la, telegram.TelegramListener)
            assert isinstance(lb, telegram.TelegramListener)
            for listener in (la, lb):
                listener.poll_timeout = 0
            await ra.settle(lambda: len(ra.starter.calls) == 2 and "502" in fake.offsets, timeout=5)
            stored = await b.get(la.offset_key)
            assert stored is not None
            assert b"502" == stored.value
            assert (la._tasks.get("poll") is not None, lb._tasks.get("poll")) == (True, None)
            before = len(fake.offsets)
            await a._leases().revoke(a._lease)
            await eventually(lambda: b.is_leader, a.spec.lease_ttl + 2)
            await eventually(lambda: lb._tasks.get("poll") is not None, 2)
            fake.updates.append(_update(502, "status db"))
            await rb.settle(lambda: bool(rb.starter.calls), timeout=5)
            await eventually(lambda: la._tasks.get("poll") is None, a.spec.lease_ttl + 2)
            await rb.settle()
    assert ["500", "501"] == [m.delivery_id for _, m in ra.starter.calls]
    assert ["502"] == [m.delivery_id for _, m in rb.starter.calls]
    after = fake.offsets[before:]
    assert after
    assert all(int(o) >= 502 for o in after), after  # b read the offset: nothing served again


# --- Slack -------------------------------------------------------------------------------------


def _event(event_id: str, ts: str, kind: str = "message") -> bytes:
    return json.dumps(
        {
            "type": "event_callback",
            "team_id": "T1",
            "event_id": event_id,
            "event": {"type": kind, "user": "U1", "text": "kubectl get pods", "channel": "C_EU", "ts": ts},
        }
    ).encode()


def _signed(body: bytes, content_type: str = "application/json", **extra: str) -> dict[str, str]:
    return {"Content-Type": content_type, **signing.slack_headers(SECRET, body, int(time.time())), **extra}


async def test_a_slack_retry_or_twin_delivered_to_the_other_replica_runs_once(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a, b = await _pair(etcd1, coordinators)
    async with platforms.FakeSlack(channels={"C_EU": "prod-eu-west"}) as api:
        spec_ = PlatformsSpec(slack_api_url=api.api_url)
        async with _rigs(a, b, platforms=spec_) as (ra, rb):
            bot = resources.trigger("bot", "Slack", signing_secret=SECRET, bot_token="xoxb-test")
            for rig in (ra, rb):
                await rig.apply([resources.binding("eu", bot, context_name="prod-eu-west")])
            # An event on a, its retry on b (the follower: webhooks are no singleton duty).
            event = _event("Ev1", "1700000001.1")
            assert 200 == (await ra.send("slack", "bot", event, _signed(event)))[0]
            retry = _signed(event, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
            assert 200 == (await rb.send("slack", "bot", event, retry))[0]
            # A mention delivered as `app_mention` to b and as `message` to a: one run.
            mention = _event("Ev2", "1700000002.1", kind="app_mention")
            message = _event("Ev3", "1700000002.1")
            assert 200 == (await rb.send("slack", "bot", mention, _signed(mention)))[0]
            assert 200 == (await ra.send("slack", "bot", message, _signed(message)))[0]
            # A slash command and an approval click, each sent to both.
            form = urllib.parse.urlencode(
                {"command": "/k8s", "text": "get pods", "user_id": "U1", "channel_id": "C_EU",
                 "channel_name": "prod-eu-west", "team_id": "T1", "trigger_id": "tr-1"}
            ).encode()  # fmt: skip
            click = {
                "type": "block_actions",
                "trigger_id": "tr-click",
                "user": {"id": "U_LEAD", "team_id": "T1"},
                "actions": [{"action_id": "aofd_approve", "value": "req-1", "action_ts": "1700000003.1"}],
            }
            clicked = urllib.parse.urlencode({"payload": json.dumps(click)}).encode()
            answers = []
            for rig in (ra, rb):
                status, text = await rig.send(
                    "slack", "bot", form, _signed(form, "application/x-www-form-urlencoded")
                )
                answers.append((status, json.loads(text)["text"]))
                headers = _signed(clicked, "application/x-www-form-urlencoded")
                assert 200 == (await rig.send("slack", "bot", clicked, headers))[0]
            await ra.settle(lambda: len(_stamps(ra, rb)) >= 3, timeout=3)
            await ra.settle()
            await rb.settle()
    assert [(200, "Working on it."), (200, "Already received.")] == answers
    assert ["Ev1", "tr-1", "Ev2"] == sorted(_stamps(ra, rb), key=["Ev1", "tr-1", "Ev2"].index)
    assert [
        ("req-1", "U_LEAD", True, "tr-click:1700000003.1")
    ] == ra.approvals.decisions + rb.approvals.decisions


def _socket_envelope(envelope_id: str, event_id: str) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "payload": json.loads(_event(event_id, "1700000009.1")),
    }


async def test_socket_mode_is_connected_on_the_leader_only_and_moves_on_failover(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    a, b = await _pair(etcd1, coordinators)
    async with platforms.FakeSlack(channels={"C_EU": "prod-eu-west"}) as api:
        api.envelopes = [_socket_envelope("env-1", "EvSock")]
        async with _rigs(a, b, platforms=PlatformsSpec(slack_api_url=api.api_url)) as (ra, rb):
            bot = resources.trigger("bot", "Slack", app_token="xapp-1", bot_token="xoxb-test")
            for rig in (ra, rb):
                await rig.apply([resources.binding("eu", bot, context_name="prod-eu-west")])
            la, lb = (r.switchboard.current.listeners["bot"] for r in (ra, rb))
            assert isinstance(la, slack.SlackListener)
            assert isinstance(lb, slack.SlackListener)
            await ra.settle(lambda: bool(api.acks) and bool(ra.starter.calls), timeout=5)
            assert (1, True, None) == (
                len(api.calls("apps.connections.open")),
                la.socket is not None,
                lb.socket,
            )
            # The leader goes: b connects, gets the same envelope again, acks it and drops it.
            await a._leases().revoke(a._lease)
            await eventually(lambda: lb.socket is not None and len(api.acks) == 2, a.spec.lease_ttl + 3)
            await eventually(lambda: la.socket is None, a.spec.lease_ttl + 2)
            await rb.settle()
    assert 2 == len(api.calls("apps.connections.open"))
    assert ["env-1", "env-1"] == [ack["envelope_id"] for ack in api.acks]
    assert ["EvSock"] == _stamps(ra, rb)


class _SocketClient:
    """Records the acknowledgements a listener sends (what slack_sdk's client would send)."""

    def __init__(self) -> None:
        self.acks: list[SocketModeResponse] = []

    async def send_socket_mode_response(self, response: SocketModeResponse) -> None:
        self.acks.append(response)


async def test_an_envelope_the_replica_may_not_take_is_left_unacknowledged(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    """Slack delivers an unacknowledged envelope again: a follower (its fenced claim refused)
    and a replica cut off from etcd do not ack; the leader acks a duplicate and drops it."""
    a, b = await _pair(etcd1, coordinators)
    async with (
        platforms.FakeSlack(channels={"C_EU": "prod-eu-west"}) as api,
        _rigs(a, b, platforms=PlatformsSpec(slack_api_url=api.api_url)) as (ra, rb),
    ):
        bot = resources.trigger("bot", "Slack", signing_secret=SECRET, bot_token="xoxb-test")
        for rig in (ra, rb):
            await rig.apply([resources.binding("eu", bot, context_name="prod-eu-west")])
        la, lb = (r.switchboard.current.listeners["bot"] for r in (ra, rb))
        assert isinstance(la, slack.SlackListener)
        assert isinstance(lb, slack.SlackListener)
        envelope = _socket_envelope("env-7", "EvFenced")
        request = SocketModeRequest(type="events_api", envelope_id="env-7", payload=envelope["payload"])
        follower = _SocketClient()
        await lb._on_socket_request(follower, request)  # type: ignore[arg-type]
        assert [] == follower.acks
        leader = _SocketClient()
        await la._on_socket_request(leader, request)  # type: ignore[arg-type]
        await la._on_socket_request(leader, request)  # type: ignore[arg-type]
        assert ["env-7", "env-7"] == [r.envelope_id for r in leader.acks]
        command = SocketModeRequest(
            type="slash_commands",
            envelope_id="env-8",
            payload={"command": "/k8s", "text": "x", "channel_id": "C_EU", "trigger_id": "tr-8"},
        )
        await lb._on_socket_request(follower, command)  # type: ignore[arg-type]
        assert [] == follower.acks

        async def unreachable(what: str, make: object) -> object:
            from aofd import errors

            raise errors.CoordinatorUnavailable(f"etcd: {what} failed (timed out)")

        a._call = unreachable  # type: ignore[method-assign,assignment]
        cut_off = _SocketClient()
        await la._on_socket_request(cut_off, command)  # type: ignore[arg-type]
        assert [] == cut_off.acks
        await ra.settle(lambda: bool(ra.starter.calls))
    assert ["EvFenced"] == _stamps(ra, rb)


async def test_a_short_etcd_stall_loses_no_tick_while_the_leader_keeps_leading(
    coordinators: list[cluster.Coordinator],
) -> None:
    """etcd stops answering for 2.5 s (SIGSTOP) while the leader's lease is still good (TTL
    10 s): the ticks whose claims timed out (1 s) are claimed again when etcd is back, once."""
    with EtcdCluster.start(1) as etcd:
        a = await start(coordinators, spec(etcd.endpoints).model_copy(update={"lease_ttl": 10.0}))
        await eventually(lambda: a.is_leader, 5)
        async with _rigs(a, with_scheduler=True) as (ra,):
            tick = resources.trigger("tick", "Schedule", cron="* * * * * *", timezone="UTC")
            await ra.apply([resources.binding("every-second", tick, context_name="ops")])
            await ra.settle(lambda: len(ra.starter.calls) >= 2, timeout=5)
            etcd.members[0].pause()
            try:
                await asyncio.sleep(2.5)  # a claim of at least one slot times out
            finally:
                etcd.members[0].resume()
            before = len(ra.starter.calls)
            await ra.settle(lambda: len(ra.starter.calls) >= before + 3, timeout=8)
            stamps = sorted(datetime.datetime.fromisoformat(s) for s in _stamps(ra))
        assert a.is_leader
        assert 1 == a.state().leader_changes  # it never stopped leading
        assert len(stamps) == len(set(stamps))
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(stamps)]
        assert all(gap == 1.0 for gap in gaps), gaps


async def test_losing_leadership_lets_the_telegram_update_in_hand_finish(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    """The update being handled (already claimed, the offset moved past it) is not cancelled
    when leadership goes: the loop ends at its next fence check instead."""
    a, b = await _pair(etcd1, coordinators)
    async with platforms.FakeTelegram(token=TG_TOKEN) as fake:
        fake.updates = [_update(700)]
        async with _rigs(a, platforms=PlatformsSpec(telegram_api_url=fake.url)) as (ra,):
            polling = resources.trigger("tg", "Telegram", bot_token=TG_TOKEN, mode="polling")
            await ra.apply([resources.binding("poll", polling, context_name="prod")])
            la = ra.switchboard.current.listeners["tg"]
            assert isinstance(la, telegram.TelegramListener)
            la.poll_timeout = 0
            started, gate = asyncio.Event(), asyncio.Event()
            handled: list[str] = []
            real_handle = la._handle

            async def slow_handle(update: dict[str, Any]) -> None:
                started.set()
                await gate.wait()  # deciding a click, say
                await real_handle(update)
                handled.append(str(update["update_id"]))

            la._handle = slow_handle  # type: ignore[method-assign]
            await asyncio.wait_for(started.wait(), 5)
            await a._leases().revoke(a._lease)
            await eventually(lambda: b.is_leader and not a.is_leader, a.spec.lease_ttl + 2)
            poll = la._tasks.get("poll")
            assert poll is not None
            assert not poll.cancelling()
            gate.set()
            await eventually(lambda: la._tasks.get("poll") is None, 3)
            await ra.settle()
    assert ["700"] == handled
    assert ["700"] == [m.delivery_id for _, m in ra.starter.calls]
