"""The applier: what the host cannot run is Stalled with a reason and answered 503 (not lost as a 404),
a listener that cannot start stalls only its Trigger, and the next apply starts it."""

from __future__ import annotations

from pathlib import Path

from aofd.resources.kinds.base import LoadedResource
from aofd.runtime.providers import registry
from aofd.settings import ModelsSpec
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
