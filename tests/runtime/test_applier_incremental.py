"""Apply costs what the plan changes: a one-binding change re-checks that binding only, a host fact
that changes (a kubeconfig, a provider's key) re-checks the bindings it concerns, the result
always equals a from-scratch apply, and the routing table switch stays one swap while apply gives
the event loop turns."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any

from aofd.plan import diff
from aofd.plan.desired import ResolvedBinding
from aofd.resources import ids
from aofd.resources.kinds.base import LoadedResource
from aofd.runtime import applier, limits, routing
from aofd.runtime.providers import registry
from aofd.settings import ModelsSpec
from aofd.specs import models as model_refs
from aofd.testing import recorders
from aofd.testing import resources as res
from tests.runtime.fakes import harness

JSON = {"Content-Type": "application/json"}
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n"


class CountingProviders(registry.Providers):
    """The real provider registry, counting the per-model (`split`) and per-provider
    (`readiness`) look-ups the applier makes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.split_calls: list[str] = []
        self.readiness_calls: list[str] = []

    def split(self, ref: model_refs.ModelRef) -> tuple[str | None, str | None]:
        self.split_calls.append(ref.model)
        return super().split(ref)

    def readiness(self, provider: str) -> str | None:
        self.readiness_calls.append(provider)
        return super().readiness(provider)

    def reset(self) -> None:
        self.split_calls.clear()
        self.readiness_calls.clear()


def bound(
    name: str,
    *,
    model: str,
    ctx: LoadedResource,
    trigger: LoadedResource,
    enabled: bool = True,
) -> ResolvedBinding:
    """A binding of a one-agent flow running `model`; its effective digest covers all it uses,
    as the desired state's does."""
    agent = res.agent(f"{name}-agent", model=model, instructions="You help.")
    flow = res.flow(f"{name}-flow", nodes=[{"id": "a", "type": "Agent", "config": {"agent": agent.name}}])
    base = res.binding(name, trigger, context_name=ctx.name, enabled=enabled)
    parts = [name, model, str(enabled), *(str(r.model.model_dump()) for r in (ctx, trigger))]
    digest = "sha256:" + hashlib.sha256("|".join(parts).encode()).hexdigest()
    return dataclasses.replace(
        base,
        flow=flow,
        context=ctx,
        agents={agent.name: agent},
        digest=ids.Digest(digest),
    )


async def test_a_one_binding_change_rechecks_only_that_binding() -> None:
    providers = CountingProviders(models=ModelsSpec(), environ={"ANTHROPIC_API_KEY": "k"})
    ctx, hook = res.context("prod"), res.trigger("hook", "HTTP")
    many = [bound(f"b{i}", model=f"anthropic:model-{i}", ctx=ctx, trigger=hook) for i in range(20)]
    async with harness.Rig(providers=providers) as rig:
        outcome = await rig.apply(many)
        assert outcome.reasons == {}
        assert sorted(providers.split_calls) == sorted(f"model-{i}" for i in range(20))
        assert providers.readiness_calls == ["anthropic"]

        providers.reset()
        changed = [*many]
        changed[3] = bound("b3", model="anthropic:model-3b", ctx=ctx, trigger=hook)
        outcome = await rig.apply(changed)
        assert outcome.reasons == {}
        assert providers.split_calls == ["model-3b"], "only the changed binding is checked"
        assert providers.readiness_calls == ["anthropic"], "once per provider, not per binding"

        providers.reset()
        await rig.apply(changed)  # the same files: nothing to check again
        assert providers.split_calls == []


async def test_a_provider_that_becomes_ready_rechecks_its_bindings_only(tmp_path: Path) -> None:
    key = tmp_path / "anthropic-key"
    providers = CountingProviders(models=ModelsSpec(anthropic_api_key_file=key), environ={})
    ctx, hook = res.context("prod"), res.trigger("hook", "HTTP")
    claude = [bound(f"a{i}", model=f"anthropic:m{i}", ctx=ctx, trigger=hook) for i in range(3)]
    gpt = [bound(f"o{i}", model=f"openai:g{i}", ctx=ctx, trigger=hook) for i in range(3)]
    async with harness.Rig(providers=providers) as rig:
        outcome = await rig.apply([*claude, *gpt])
        assert set(outcome.reasons.values()) == {"ProviderNotReady"}
        assert len(outcome.reasons) == 6

        providers.reset()
        key.write_text("sk-test\n")
        outcome = await rig.apply([*claude, *gpt])
        assert {k.name for k in outcome.reasons} == {"o0", "o1", "o2"}, "anthropic's bindings are Ready now"
        assert sorted(providers.split_calls) == ["m0", "m1", "m2"]
        assert (await rig.send("http", "hook", b"{}", JSON))[0] == 202


async def test_a_context_whose_kubeconfig_appears_rechecks_its_bindings_only(tmp_path: Path) -> None:
    providers = CountingProviders(models=ModelsSpec(), environ={"ANTHROPIC_API_KEY": "k"})
    kubeconfig = tmp_path / "kubeconfig"
    broken, fine = res.context("prod", kubeconfig=str(kubeconfig)), res.context("dev")
    hook = res.trigger("hook", "HTTP")
    prod = [bound(f"p{i}", model=f"anthropic:p{i}", ctx=broken, trigger=hook) for i in range(3)]
    dev = [bound(f"d{i}", model=f"anthropic:d{i}", ctx=fine, trigger=hook) for i in range(3)]
    async with harness.Rig(providers=providers) as rig:
        outcome = await rig.apply([*prod, *dev])
        assert outcome.reasons[broken.key] == "KubeconfigUnusable"
        assert {k.name for k, r in outcome.reasons.items() if r == "ContextNotReady"} == {"p0", "p1", "p2"}

        providers.reset()
        kubeconfig.write_text(KUBECONFIG)
        outcome = await rig.apply([*prod, *dev])
        assert outcome.reasons == {}
        assert sorted(providers.split_calls) == ["p0", "p1", "p2"]

        providers.reset()
        kubeconfig.unlink()
        outcome = await rig.apply([*prod, *dev])
        assert {k.name for k, r in outcome.reasons.items() if r == "ContextNotReady"} == {"p0", "p1", "p2"}


def _snapshot(table: routing.RoutingTable) -> tuple[Any, ...]:
    return (
        table.revision,
        dict(table.listeners),
        dict(table.routes),
        dict(table.stalled),
        dict(table.paths),
        table.bindings,
    )


def _routed(table: routing.RoutingTable, trigger: str) -> tuple[str, ...]:
    routes = table.routes.get(trigger)
    return tuple(r.name for r in routes.routes) if routes is not None else ()


async def test_the_table_switch_stays_one_swap_while_apply_gives_the_loop_turns() -> None:
    """Apply yields at every item here (slice 0); an event routed meanwhile sees the old table,
    untouched, or the new one, never a mix."""
    ctx = res.context("prod")
    hooks = [res.trigger(f"hook-{i}", "HTTP") for i in range(10)]
    filler = res.trigger("filler", "HTTP")
    before = [bound(f"old-{i}", model="anthropic:m", ctx=ctx, trigger=h) for i, h in enumerate(hooks)]
    before += [bound(f"f{i}", model="anthropic:m", ctx=ctx, trigger=filler) for i in range(150)]
    resized = [res.trigger(f"hook-{i}", "HTTP", max_body_bytes=4096) for i in range(10)]
    after = [bound(f"new-{i}", model="anthropic:m", ctx=ctx, trigger=h) for i, h in enumerate(resized)]
    after += [bound(f"f{i}", model="anthropic:m2", ctx=ctx, trigger=filler) for i in range(150)]
    providers = registry.Providers(models=ModelsSpec(), environ={"ANTHROPIC_API_KEY": "k"})
    async with harness.Rig(providers=providers, slice_seconds=0.0) as rig:
        await rig.apply(before)
        old = rig.switchboard.current
        frozen = _snapshot(old)
        seen: list[str] = []
        statuses: list[int] = []
        applying = True

        async def watch() -> None:
            while applying:
                table = rig.switchboard.current
                if table is old:
                    assert _snapshot(table) == frozen, "the published table was changed in place"
                    assert _routed(table, "hook-3") == ("old-3",)
                else:
                    assert _routed(table, "hook-3") == ("new-3",)
                    assert "old-3" not in table.bindings
                seen.append(table.revision)
                await asyncio.sleep(0)

        async def send() -> None:
            while applying:
                statuses.append((await rig.send("http", "hook-3", b"{}", JSON))[0])

        watcher, sender = asyncio.create_task(watch()), asyncio.create_task(send())
        try:
            outcome = await rig.apply(after)
            await rig.settle(until=lambda: seen[-1] != old.revision)
        finally:
            applying = False
            await asyncio.gather(watcher, sender)
        assert outcome.reasons == {}
        assert seen.count(old.revision) > 20, "apply gave the loop turns before the swap"
        assert seen[-1] == rig.switchboard.current.revision != old.revision
        assert statuses, "events were sent while apply ran"
        assert set(statuses) == {202}
        assert set(rig.starter.bindings) <= {"old-3", "new-3"}
        assert _routed(rig.switchboard.current, "hook-3") == ("new-3",)


# -- incremental == from scratch -------------------------------------------------------------------


@dataclasses.dataclass
class World:
    """A small repo and host that random edits change: bindings (model, Context, Trigger, enabled),
    Triggers (enabled, body limit, own path), kubeconfig files, a provider key file."""

    tmp: Path
    rng: random.Random
    bindings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    triggers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    MODELS = ("anthropic:a", "anthropic:b", "openai:g", "google:gemini", "ollama:llama3", "groq:mix")
    CONTEXTS = ("c0", "c1", "c2")

    def __post_init__(self) -> None:
        for name in ("t0", "t1", "t2", "t3"):
            self.triggers[name] = {"enabled": True, "max_body_bytes": 1024, "path": f"/in/{name}"}
        for i in range(12):
            self.bindings[f"b{i}"] = self._random_binding()

    def _random_binding(self) -> dict[str, Any]:
        return {
            "model": self.rng.choice(self.MODELS),
            "ctx": self.rng.choice(self.CONTEXTS),
            "trigger": self.rng.choice(sorted(self.triggers)),
            "enabled": self.rng.random() > 0.15,
        }

    def kubeconfig(self, ctx: str) -> Path:
        return self.tmp / f"kube-{ctx}"

    @property
    def key(self) -> Path:
        return self.tmp / "anthropic-key"

    def edit(self) -> None:
        rng = self.rng
        what = rng.randrange(8)
        if what == 0:
            name = f"b{rng.randrange(16)}"
            if name in self.bindings and rng.random() < 0.5:
                del self.bindings[name]
            else:
                self.bindings[name] = self._random_binding()
        elif what in (1, 2) and self.bindings:
            one = self.bindings[rng.choice(sorted(self.bindings))]
            field = rng.choice(["model", "ctx", "trigger", "enabled"])
            one[field] = self._random_binding()[field]
        elif what == 3:
            trigger = self.triggers[rng.choice(sorted(self.triggers))]
            trigger["enabled"] = not trigger["enabled"]
        elif what == 4:
            trigger = self.triggers[rng.choice(sorted(self.triggers))]
            trigger["max_body_bytes"] = rng.choice([1024, 2048, 4096])
            trigger["path"] = rng.choice([None, trigger["path"], f"/in/{rng.randrange(1000)}"])
        elif what in (5, 6):
            path = self.kubeconfig(rng.choice(["c1", "c2"]))
            if path.exists():
                path.unlink()
            else:
                path.write_text(KUBECONFIG)
        elif self.key.exists():
            self.key.unlink()
        else:
            self.key.write_text("sk\n")

    def resolved(self) -> list[ResolvedBinding]:
        contexts = {
            c: res.context(c) if c == "c0" else res.context(c, kubeconfig=str(self.kubeconfig(c)))
            for c in self.CONTEXTS
        }
        triggers = {
            name: res.trigger(
                name,
                "HTTP",
                enabled=t["enabled"],
                max_body_bytes=t["max_body_bytes"],
                **({"path": t["path"]} if t["path"] else {}),
            )
            for name, t in self.triggers.items()
        }
        return [
            bound(
                name,
                model=b["model"],
                ctx=contexts[b["ctx"]],
                trigger=triggers[b["trigger"]],
                enabled=b["enabled"],
            )
            for name, b in sorted(self.bindings.items())
        ]


def _table_view(table: routing.RoutingTable) -> tuple[Any, ...]:
    return (
        {name: x.config_digest for name, x in table.listeners.items()},
        dict(table.routes),
        dict(table.stalled),
        {path: x.trigger_name for path, x in table.paths.items()},
    )


async def test_applying_random_edits_one_by_one_equals_applying_each_revision_from_scratch(
    tmp_path: Path,
) -> None:
    for seed in range(3):
        world = World(tmp_path / str(seed), random.Random(seed))
        world.tmp.mkdir()
        models = ModelsSpec(anthropic_api_key_file=world.key)
        providers = registry.Providers(models=models, environ={})
        async with harness.Rig(providers=providers, slice_seconds=0.0) as rig:
            for step in range(25):
                for _ in range(world.rng.randint(1, 3)):
                    world.edit()
                resolved = world.resolved()
                outcome = await rig.apply(resolved)

                fresh = routing.Switchboard()
                policies: dict[str, Any] = {}
                scratch = applier.Applier(
                    switchboard=fresh,
                    build=rig.factory,
                    providers=registry.Providers(models=models, environ={}),
                    audit_logs=recorders.RecordingAudit(),
                    policies=policies,
                    limits=limits.RateLimits(),
                    starter=recorders.NoopStarter(),
                )
                compiled = res.compiled(resolved, revision=f"scratch-{step}")
                expected = await scratch.apply(diff.compute(compiled, diff.Inventory.empty()))
                try:
                    where = f"seed {seed}, step {step}"
                    assert dict(outcome.stalled) == dict(expected.stalled), where
                    assert dict(outcome.reasons) == dict(expected.reasons), where
                    assert dict(outcome.listeners) == dict(expected.listeners), where
                    assert _table_view(rig.switchboard.current) == _table_view(fresh.current), where
                    assert set(rig.policies) == set(policies), where
                finally:
                    await scratch.aclose()
