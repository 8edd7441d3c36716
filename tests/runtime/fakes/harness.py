"""A test rig: switchboard, dispatcher, listener factory, the real applier and the real trigger server on a
random loopback port.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import aiohttp

from aofd.plan import desired, diff
from aofd.resources.kinds import base as kinds_base
from aofd.runtime import (
    applier,
    claims,
    cluster,
    dedupe,
    dispatch,
    limits,
    mcpservers,
    replies,
    routing,
    server,
)
from aofd.runtime.listeners import factory, schedule
from aofd.runtime.listeners.base import Listener
from aofd.runtime.providers import registry
from aofd.settings import ModelsSpec, PlatformsSpec
from aofd.specs import policy
from aofd.specs.listeners import ListenerSpec
from aofd.testing import recorders
from aofd.testing import resources as res


class Rig:
    """Everything between a platform's request and `FlowStarter.start`, wired as the daemon would."""

    def __init__(
        self,
        *,
        platforms: PlatformsSpec | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        with_scheduler: bool = False,
        providers: registry.Providers | None = None,
        fail_to_start: Collection[str] = (),
        slice_seconds: float = applier.SLICE_SECONDS,
        mcp: mcpservers.McpPool | None = None,
        coordinator: cluster.Coordinator | None = None,
    ) -> None:
        """`fail_to_start` names triggers whose listeners cannot be made (until the set is emptied);
        `slice_seconds` is how long a step of apply holds the loop (0: it gives a turn at every item)."""
        self.platforms = platforms or PlatformsSpec()
        self.clock = clock
        self.switchboard = routing.Switchboard()
        self.starter = recorders.RecordingStarter()
        self.audit = recorders.RecordingAudit()
        self.approvals = recorders.RecordingApprovals()
        self.dedupe = dedupe.DedupeCache()
        self.replier = replies.MultiReplier(lookup=self.switchboard.replier)
        self.not_run: list[tuple[str, str]] = []  # (platform, stall reason) of events answered, not run
        self.dispatcher = dispatch.Dispatcher(
            switchboard=self.switchboard,
            starter=self.starter,
            replier=self.replier,
            audit=self.audit,
            on_not_run=lambda platform, reason: self.not_run.append((platform, reason)),
            sleep=sleep,
        )
        self.hub = schedule.ScheduleHub() if with_scheduler else None
        self.factory = factory.ListenerFactory(
            platforms=self.platforms,
            dispatcher=self.dispatcher,
            dedupe=self.dedupe,
            audit=self.audit,
            approvals=self.approvals,
            scheduler=self.hub,
            clock=self.clock,
            claims=claims.Claims(self.dedupe, coordinator),  # `coordinator`: a replica's claims in etcd
            coordinator=coordinator,
            on_not_run=lambda platform, reason: self.not_run.append((platform, reason)),
        )
        self.policies: dict[str, policy.GuardPolicy] = {}
        self.applier = applier.Applier(
            switchboard=self.switchboard,
            build=self._build,
            providers=providers or registry.Providers(models=ModelsSpec(), environ={}),
            audit_logs=self.audit,
            policies=self.policies,
            limits=limits.RateLimits(),
            starter=self.starter,
            drain_grace=1.0,
            slice_seconds=slice_seconds,
            mcp=mcp,
        )
        self.inventory = diff.Inventory.empty()
        self.server = server.TriggerServer(switchboard=self.switchboard, listen="127.0.0.1:0")
        self.session: aiohttp.ClientSession | None = None
        self._revision = 0
        self.fail_to_start = set(fail_to_start)

    def _build(self, spec: ListenerSpec) -> Listener:
        if spec.trigger in self.fail_to_start:
            raise OSError(f"cannot start {spec.trigger}")
        return self.factory(spec)

    async def __aenter__(self) -> Rig:
        await self.server.start()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.applier.aclose()
        await self.dispatcher.aclose()
        if self.hub is not None:
            self.hub.shutdown()
        assert self.session is not None
        await self.session.close()
        await self.server.stop()
        await asyncio.sleep(0)

    async def apply(
        self,
        bindings: Iterable[desired.ResolvedBinding],
        *,
        triggers: Iterable[kinds_base.LoadedResource] = (),
    ) -> applier.ApplyOutcome:
        """Compile, plan and apply (make before break), as the reconciler does."""
        self._revision += 1
        compiled = res.compiled(list(bindings), resources=list(triggers), revision=f"rev-{self._revision}")
        plan = diff.compute(compiled, self.inventory)
        outcome = await self.applier.apply(plan)
        self.inventory = diff.Inventory.of(compiled.desired, listeners=outcome.listeners)
        return outcome

    def url(self, platform: str, trigger: str) -> str:
        return f"{self.server.url}/hooks/{platform}/{trigger}"

    async def send(
        self,
        platform: str,
        trigger: str,
        body: bytes | Any = b"",
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "POST",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """One request to the trigger server; returns (status, body text)."""
        assert self.session is not None
        data = io.BytesIO(body) if isinstance(body, bytes) and len(body) > 512 * 1024 else body
        async with self.session.request(
            method, self.url(platform, trigger), data=data, headers=dict(headers or {}), params=params
        ) as resp:
            return resp.status, await resp.text()

    async def settle(self, until: Callable[[], bool] | None = None, timeout: float = 2.0) -> None:
        """Let background tasks run: until `until()` holds (or fail after `timeout`), else for 50 ms."""
        if until is None:
            for _ in range(5):
                await asyncio.sleep(0.01)
            return
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.01)

    def json_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {"Content-Type": "application/json", **(extra or {})}
