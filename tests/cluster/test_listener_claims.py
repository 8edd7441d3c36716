"""Webhook listeners claim each delivery through `Claims`: with `cluster:` a delivery taken by one
replica is a duplicate on every other (one run across the set), a delivery that cannot be
recorded (etcd unreachable) is refused with 503 + `Retry-After` and counted, never run, and a
delivery that could not run now (`retry_later`) is forgotten in etcd so the sender's retry runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from aofd import errors, settings
from aofd.runtime import cluster, ports
from aofd.runtime.claims import Claims
from aofd.runtime.dedupe import DedupeCache
from aofd.runtime.listeners import base, http
from aofd.specs import listeners as listener_specs
from aofd.testing import recorders, resources
from tests.cluster.conftest import spec, start
from tests.cluster.etcdkit import EtcdCluster, requires_etcd
from tests.runtime.fakes import harness, signing

HTTP_SECRET = "hook-secret"
GH_SECRET = "gh-secret"


class FlakyCoordinator(cluster.Coordinator):
    """A coordinator whose etcd is up or down at the test's word (no connection is made): an
    up claim is put-if-absent in a dict, a down one raises as the real adapter does."""

    def __init__(self) -> None:
        super().__init__(spec(("http://127.0.0.1:1",)))
        self.down = False
        self.held: set[str] = set()
        self.unclaimed: list[str] = []

    async def claim(self, keys: Sequence[str], *, fenced: bool = False) -> cluster.ClaimResult:
        if self.down:
            raise errors.CoordinatorUnavailable("etcd: claim failed (timed out)")
        if any(k in self.held for k in keys):
            return cluster.ClaimResult.DUPLICATE
        self.held.update(keys)
        return cluster.ClaimResult.CLAIMED

    async def unclaim(self, keys: Sequence[str]) -> None:
        self.unclaimed.extend(keys)
        self.held.difference_update(keys)


def _triggers() -> tuple[object, ...]:
    hook = resources.trigger("hook", "HTTP", webhook_secret=HTTP_SECRET)
    gh = resources.trigger("gh", "GitHub", webhook_secret=GH_SECRET)
    return hook, gh


async def _apply(rig: harness.Rig) -> None:
    hook, gh = _triggers()
    await rig.apply(
        [
            resources.binding("hooks", hook, context_name="ops"),  # type: ignore[arg-type]
            resources.binding("reviews", gh, context_name="ci"),  # type: ignore[arg-type]
        ]
    )


def _hook_headers(body: bytes, delivery: str) -> dict[str, str]:
    stamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "X-Aofd-Timestamp": str(stamp),
        "X-Aofd-Signature": signing.aofd(HTTP_SECRET, body, stamp),
        "X-Aofd-Delivery": delivery,
    }


def _gh_headers(body: bytes, delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signing.sha256_hub(GH_SECRET, body),
    }


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[harness.Rig, FlakyCoordinator]]:
    coordinator = FlakyCoordinator()
    async with harness.Rig(coordinator=coordinator) as rig:
        await _apply(rig)
        yield rig, coordinator


async def test_webhooks_answer_503_while_etcd_cannot_record_the_claim(
    flaky: tuple[harness.Rig, FlakyCoordinator],
) -> None:
    rig, coordinator = flaky
    body = b'{"text":"restart api"}'
    gh_body = b'{"action":"opened","issue":{"title":"x"}}'
    coordinator.down = True
    refused = await rig.send("http", "hook", body, _hook_headers(body, "d-1"))
    refused_gh = await rig.send("github", "gh", gh_body, _gh_headers(gh_body, "g-1"))
    assert [503, 503] == [refused[0], refused_gh[0]]
    assert "retry later" in refused[1]
    assert "etcd" not in refused[1]  # says nothing about the set's internals
    assert [] == rig.starter.calls
    assert [("http", "coordinator_unavailable"), ("github", "coordinator_unavailable")] == rig.not_run
    await rig.settle(lambda: rig.audit.reasons().count("coordinator_unavailable") == 2)
    # etcd is back: the sender's retry of the very same requests runs (nothing stayed claimed).
    coordinator.down = False
    taken = await rig.send("http", "hook", body, _hook_headers(body, "d-1"))
    taken_gh = await rig.send("github", "gh", gh_body, _gh_headers(gh_body, "g-1"))
    assert [202, 202] == [taken[0], taken_gh[0]]
    assert ["hooks", "reviews"] == [name for name, _ in rig.starter.calls]


async def test_the_retry_after_header_is_set(flaky: tuple[harness.Rig, FlakyCoordinator]) -> None:
    rig, coordinator = flaky
    coordinator.down = True
    body = b"{}"
    assert rig.session is not None
    async with rig.session.post(rig.url("http", "hook"), data=body, headers=_hook_headers(body, "d")) as resp:
        assert 503 == resp.status
        assert "5" == resp.headers["Retry-After"]


async def test_one_etcd_claim_holds_the_delivery_id_and_its_signature(
    flaky: tuple[harness.Rig, FlakyCoordinator],
) -> None:
    """Another replica answers a retry of the delivery id, or the signed request under a new id,
    as a duplicate: both keys are in the claim (one transaction)."""
    rig, coordinator = flaky
    body = b'{"text":"x"}'
    headers = _hook_headers(body, "d-7")
    assert 202 == (await rig.send("http", "hook", body, headers))[0]
    assert 2 == len(coordinator.held)
    rig.dedupe.forget("http", "hook", "d-7")  # as another replica would see it: not in its cache
    rig.dedupe.forget("http", "hook", "sig:" + headers["X-Aofd-Signature"])
    assert 200 == (await rig.send("http", "hook", body, {**headers, "X-Aofd-Delivery": "d-8"}))[0]
    assert 1 == len(rig.starter.calls)


@dataclasses.dataclass
class Request:
    """A whole request in memory (`ports.HttpRequest`)."""

    method: str
    path: str
    headers: Mapping[str, str]
    raw: bytes
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)
    remote: str = "127.0.0.1"

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def content_length(self) -> int | None:
        return len(self.raw)

    def buffered(self, limit: int) -> bytes | None:
        return self.raw

    async def body(self, limit: int) -> bytes:
        return self.raw


class StalledDispatcher:
    """Every event's binding cannot run now (`retry_later`)."""

    def __init__(self) -> None:
        self.messages: list[ports.EventMessage] = []

    def dispatch(self, message: ports.EventMessage, *, reply_on_no_match: bool = False) -> ports.RouteOutcome:
        self.messages.append(message)
        return ports.RouteOutcome("stalled", binding="hooks", reason="ContextNotReady")

    def contexts_for(self, trigger: str) -> tuple[str, ...]:
        return ()


async def test_a_stalled_delivery_is_unclaimed_in_etcd_so_the_retry_runs() -> None:
    coordinator = FlakyCoordinator()
    dispatcher = StalledDispatcher()
    deps = base.Deps(
        platforms=settings.PlatformsSpec(),
        dispatcher=dispatcher,
        dedupe=DedupeCache(),
        audit=recorders.RecordingAudit(),
        approvals=None,
        claims=Claims(DedupeCache(), coordinator),
        coordinator=coordinator,
    )
    hook, _ = _triggers()
    compiled = resources.compiled([resources.binding("hooks", hook, context_name="ops")])  # type: ignore[arg-type]
    listener_spec = next(s for s in compiled.listeners.values() if s.platform == "http")
    assert isinstance(listener_spec, listener_specs.ListenerSpec)
    listener = http.HttpListener(spec=listener_spec, deps=deps)
    body = b'{"text":"x"}'
    headers = _hook_headers(body, "d-9")
    request = Request("POST", "/hooks/http/hook", headers, body)
    first = await listener.handle(request)
    again = await listener.handle(request)
    assert [503, 503] == [first.status, again.status]
    assert 2 == len(dispatcher.messages)  # the retry was dispatched again, not dropped as a replay
    assert 4 == len(coordinator.unclaimed)  # the delivery id and the signature, twice
    assert not coordinator.held


@requires_etcd
@pytest.mark.slow
async def test_the_same_delivery_at_two_replicas_runs_once(
    etcd1: EtcdCluster, coordinators: list[cluster.Coordinator]
) -> None:
    s = spec(etcd1.endpoints)
    a_coordinator = await start(coordinators, s)
    b_coordinator = await start(coordinators, s.model_copy(update={"member": "b"}))
    async with harness.Rig(coordinator=a_coordinator) as a, harness.Rig(coordinator=b_coordinator) as b:
        await _apply(a)
        await _apply(b)
        body = json.dumps({"text": "restart", "n": str(uuid.uuid4())}).encode()
        headers = _hook_headers(body, "delivery-1")
        gh_body = b'{"action":"opened","issue":{"title":"y"}}'
        gh_headers = _gh_headers(gh_body, str(uuid.uuid4()))
        answers = [
            (await a.send("http", "hook", body, headers))[0],
            (await b.send("http", "hook", body, headers))[0],
            (await b.send("github", "gh", gh_body, gh_headers))[0],
            (await a.send("github", "gh", gh_body, gh_headers))[0],
        ]
        assert [202, 200, 202, 200] == answers
        assert ["hooks"] == [name for name, _ in a.starter.calls]
        assert ["reviews"] == [name for name, _ in b.starter.calls]
        await b.settle(lambda: "replay" in b.audit.reasons())  # the duplicate is audited
