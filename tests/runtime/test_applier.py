"""The applier: what the host cannot run is Stalled with a reason and answered 503 (not lost as a 404),
a listener that cannot start stalls only its Trigger, and the next apply starts it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aofd.resources.kinds.base import LoadedResource
from aofd.runtime.providers import registry
from aofd.settings import ModelsSpec
from aofd.specs.listeners import ListenerSpec
from aofd.testing import resources as res
from tests.runtime.fakes import harness

JSON = {"Content-Type": "application/json"}


def flow_with_model(name: str, model: str = "anthropic:claude-sonnet-4") -> tuple[LoadedResource, ...]:
    agent = res.agent(f"{name}-agent", model=model, instructions="You help.")
    flow = res.flow(name, nodes=[{"id": "a", "type": "Agent", "config": {"agent": f"{name}-agent"}}])
    return agent, flow


async def test_an_unconfigured_provider_stalls_the_binding_and_its_events_get_503() -> None:
    hook = res.trigger("hook", "HTTP")
    agent, flow = flow_with_model("f")
    bound = res.bind("b", ctx=res.context("prod"), flow_res=flow, agents=[agent], trigger_res=hook)
    async with harness.Rig(providers=registry.Providers(models=ModelsSpec(), environ={})) as rig:
        outcome = await rig.apply([bound])
        assert outcome.reasons[bound.key] == "ProviderNotReady"
        assert "ANTHROPIC_API_KEY" in outcome.stalled[bound.key]
        assert set(outcome.listeners) == {"hook"}
        assert rig.session is not None
        async with rig.session.post(rig.url("http", "hook"), data=b"{}", headers=JSON) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
            assert "not ready" in await resp.text()
        assert rig.starter.bindings == []


async def test_a_context_without_a_usable_kubeconfig_stalls_its_bindings(tmp_path: Path) -> None:
    hook = res.trigger("hook", "HTTP")
    ctx = res.context("prod", kubeconfig=str(tmp_path / "missing"))
    ok_ctx = res.context("dev")
    broken = res.bind("b-prod", ctx=ctx, trigger_res=hook)
    fine = res.bind("b-dev", ctx=ok_ctx, trigger_res=res.trigger("dev-hook", "HTTP"))
    async with harness.Rig() as rig:
        outcome = await rig.apply([broken, fine])
        assert outcome.reasons == {ctx.key: "KubeconfigUnusable", broken.key: "ContextNotReady"}
        assert set(rig.policies) == {"dev"}
        status, _ = await rig.send("http", "hook", b"{}", JSON)
        assert status == 503
        status, _ = await rig.send("http", "dev-hook", b"{}", JSON)
        assert status == 202
        assert rig.starter.bindings == ["b-dev"]


async def test_a_listener_that_cannot_start_stalls_its_trigger_only_and_the_next_apply_starts_it() -> None:
    hook, other = res.trigger("hook", "HTTP"), res.trigger("other", "HTTP")
    first = res.binding("b1", hook, context_name="prod")
    second = res.binding("b2", other, context_name="prod")
    async with harness.Rig(fail_to_start={"hook"}) as rig:
        outcome = await rig.apply([first, second])
        assert outcome.reasons == {hook.key: "ListenerFailed", first.key: "ListenerFailed"}
        assert "cannot start hook" in outcome.stalled[first.key]
        assert set(outcome.listeners) == {"other"}
        assert (await rig.send("http", "hook", b"{}", JSON))[0] == 404
        assert (await rig.send("http", "other", b"{}", JSON))[0] == 202

        rig.fail_to_start.clear()
        outcome = await rig.apply([first, second])  # the same files: the plan creates the missing listener
        assert outcome.reasons == {}
        assert set(outcome.listeners) == {"hook", "other"}
        assert (await rig.send("http", "hook", b"{}", JSON))[0] == 202


async def test_a_503_is_retried_by_the_sender_and_taken_once_the_binding_can_run(tmp_path: Path) -> None:
    """The delivery answered 503 is not remembered as seen: the sender's retry of it is taken once
    the Context is ready (here: its kubeconfig appears and the next apply un-stalls it)."""
    kubeconfig = tmp_path / "kubeconfig"
    hook = res.trigger("hook", "HTTP")
    bound = res.bind("b", ctx=res.context("prod", kubeconfig=str(kubeconfig)), trigger_res=hook)
    delivery = {**JSON, "X-Aofd-Delivery": "d-1"}
    async with harness.Rig() as rig:
        await rig.apply([bound])
        assert (await rig.send("http", "hook", b"{}", delivery))[0] == 503
        status, text = await rig.send("http", "hook", b"{}", delivery)
        assert status == 503, "the retry is not a duplicate"
        assert "kubeconfig" not in text, "why is for the operator (aofctl status), not the sender"
        kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n")
        outcome = await rig.apply([bound])
        assert outcome.reasons == {}
        assert (await rig.send("http", "hook", b"{}", delivery))[0] == 202
        assert (await rig.send("http", "hook", b"{}", delivery))[0] == 200, "now it was seen"
        assert rig.starter.bindings == ["b"]


async def test_a_changed_listener_that_cannot_start_leaves_its_predecessor_serving() -> None:
    """Make before break: the old listener keeps taking events; the Trigger says why; the running
    digest stays the old one, so the next plan (the retry) updates it again."""
    first = res.binding("b1", res.trigger("hook", "HTTP"), context_name="prod")
    changed = res.binding("b1", res.trigger("hook", "HTTP", max_body_bytes=4096), context_name="prod")
    async with harness.Rig() as rig:
        before = await rig.apply([first])
        rig.fail_to_start.add("hook")
        after = await rig.apply([changed])
        assert after.listeners == before.listeners
        trigger_key = changed.trigger.key
        assert after.reasons == {trigger_key: "ListenerFailed"}
        assert "previous one keeps serving" in after.stalled[trigger_key]
        assert (await rig.send("http", "hook", b"{}", JSON))[0] == 202


async def test_a_cancelled_apply_stops_the_listeners_it_started() -> None:
    """Cancelled between two listener starts (the daemon is stopping), apply leaves none running."""
    from aofd.runtime.listeners import base as listener_base

    one, two = res.trigger("one", "HTTP"), res.trigger("two", "HTTP")
    started: list[listener_base.Listener] = []
    blocked = asyncio.Event()
    async with harness.Rig() as rig:
        build = rig.factory

        def slow_second(spec: ListenerSpec) -> listener_base.Listener:
            if spec.trigger == "two":
                blocked.set()
                raise asyncio.CancelledError  # as if the apply task were cancelled right here
            made = build(spec)
            started.append(made)
            return made

        rig.applier._build = slow_second
        with pytest.raises(asyncio.CancelledError):
            await rig.apply([res.binding("b1", one), res.binding("b2", two)])
        assert blocked.is_set()
        assert [x.trigger_name for x in started] == ["one"]
        assert not started[0].running
        assert rig.switchboard.current.listeners == {}


async def test_a_cancelled_apply_gives_a_schedule_back_to_its_predecessor() -> None:
    """The changed schedule's new listener had taken the job over when the apply was cancelled:
    stopping it must not leave the trigger without a job; the old listener owns it again."""
    from aofd.runtime.listeners import base as listener_base

    nightly = res.binding("b1", res.trigger("nightly", "Schedule", cron="0 3 * * *"))
    async with harness.Rig(with_scheduler=True) as rig:
        await rig.apply([nightly])
        old = rig.switchboard.current.listeners["nightly"]
        build = rig.factory

        def cancel_on_second(spec: ListenerSpec) -> listener_base.Listener:
            if spec.trigger == "other":
                raise asyncio.CancelledError
            return build(spec)

        rig.applier._build = cancel_on_second
        changed = res.binding("b1", res.trigger("nightly", "Schedule", cron="0 4 * * *"))
        other = res.binding("b2", res.trigger("other", "HTTP"))
        with pytest.raises(asyncio.CancelledError):
            await rig.apply([changed, other])
        assert rig.hub is not None
        job_id = "aofd-schedule:nightly"
        assert rig.hub.owner(job_id) is old
        assert rig.hub.scheduler.get_job(job_id) is not None
        assert rig.switchboard.current.listeners["nightly"] is old
