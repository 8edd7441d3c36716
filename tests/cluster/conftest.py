"""Fixtures of the replica tests: a shared single-member etcd per module, and coordinators
that are always closed (sessions revoked, channels closed) at the end of a test."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from aofd import settings
from aofd.runtime import cluster
from tests.cluster.etcdkit import EtcdCluster

_names = itertools.count()


@pytest.fixture(scope="module")
def etcd1() -> Iterator[EtcdCluster]:
    with EtcdCluster.start(1) as etcd:
        yield etcd


def spec(
    endpoints: tuple[str, ...], *, name: str | None = None, member: str = "a", **etcd: Any
) -> settings.ClusterSpec:
    """A cluster spec for tests: lease TTL 3 s (the minimum), 1 s request timeout."""
    return settings.ClusterSpec(
        name=name or f"t{next(_names)}",
        member=member,
        etcd=settings.EtcdSpec(endpoints=endpoints, **{"request_timeout": 1.0, "dial_timeout": 5.0, **etcd}),
        lease_ttl=3,
    )


@pytest.fixture
async def coordinators() -> AsyncIterator[list[cluster.Coordinator]]:
    """Coordinators a test appends here are closed at its end."""
    made: list[cluster.Coordinator] = []
    yield made
    for c in made:
        await c.aclose()


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, step: float = 0.02
) -> float:
    """Poll `check` until it is true; returns the seconds it took, fails after `timeout`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return loop.time() - started
        if loop.time() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(step)


async def start(made: list[cluster.Coordinator], cluster_spec: settings.ClusterSpec) -> cluster.Coordinator:
    c = cluster.Coordinator(cluster_spec)
    made.append(c)
    assert await c.start()
    return c
