"""Resource listings of the admin API: the same JSON as before, built item by item with the event
loop let in between, so listing 10,000 resources does not stall webhooks and health checks."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from aofd.daemon import admin
from aofd.resources import ids
from tests.daemon.test_admin_auth import FakeView, call, serving

ITEM_COST_S = 0.002


class SlowListing(FakeView):
    """A view whose every listed item costs `ITEM_COST_S` of CPU to produce, as at 10k resources."""

    def resources(self, kind: ids.Kind | None, name: str | None) -> Iterator[dict[str, Any]]:
        for i in range(30):
            if name is not None and name != f"a{i}":
                continue
            busy_until = time.perf_counter() + ITEM_COST_S
            while time.perf_counter() < busy_until:
                pass
            yield {"kind": "Agent", "name": f"a{i}", "status": {"phase": "Ready"}}


async def test_a_long_listing_lets_the_loop_in_and_keeps_its_json() -> None:
    api = admin.AdminApi(SlowListing())
    wakes: list[float] = []

    async def ticker() -> None:
        while True:
            wakes.append(time.perf_counter())
            await asyncio.sleep(0)

    async with serving(api) as bound:
        ticking = asyncio.create_task(ticker())
        try:
            status, text, headers = await call(bound, "GET", "/api/v1/resources/Agent")
        finally:
            ticking.cancel()
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(text) == {
        "items": [{"kind": "Agent", "name": f"a{i}", "status": {"phase": "Ready"}} for i in range(30)]
    }
    assert text.startswith('{\n  "items": [\n    {\n      "kind": "Agent",')  # `_json`'s layout
    longest = max(b - a for a, b in itertools.pairwise(wakes))
    assert longest < 0.6 * 30 * ITEM_COST_S  # 60 ms of listing, never held in one piece


async def test_a_named_listing_and_an_empty_one() -> None:
    async with serving(admin.AdminApi(SlowListing())) as bound:
        status, text, _ = await call(bound, "GET", "/api/v1/resources/Agent/a7")
        assert status == 200
        assert [i["name"] for i in json.loads(text)["items"]] == ["a7"]
        status, text, _ = await call(bound, "GET", "/api/v1/resources/Agent/nope")
        assert status == 404
        assert "Agent/nope not found" in text
    async with serving(admin.AdminApi(FakeView())) as bound:
        status, text, _ = await call(bound, "GET", "/api/v1/resources")
        assert (status, text) == (200, '{\n  "items": []\n}\n')


class LargeStatus(FakeView):
    """Status and inventory as large as a 100k-resource daemon's (megabytes of JSON)."""

    def status(self) -> dict[str, Any]:
        return {
            "listeners": {f"trigger-{i}": {"platform": "slack", "digest": "d" * 16} for i in range(40_000)}
        }

    def inventory(self) -> dict[str, Any]:
        return {f"Agent/a{i}": "sha256:" + "0" * 16 for i in range(100_000)}


async def test_large_status_and_inventory_are_encoded_off_the_loop() -> None:
    async with serving(admin.AdminApi(LargeStatus())) as bound:
        for path, size in (("/api/v1/status", 40_000), ("/api/v1/inventory", 100_000)):
            wakes: list[float] = []

            async def ticker(wakes: list[float] = wakes) -> None:
                while True:
                    wakes.append(time.perf_counter())
                    await asyncio.sleep(0)

            ticking = asyncio.create_task(ticker())
            try:
                started = time.perf_counter()
                status, text, _ = await call(bound, "GET", path)
                took = time.perf_counter() - started
            finally:
                ticking.cancel()
            assert status == 200
            data = json.loads(text)
            assert len(data.get("listeners", data)) == size
            longest = max(b - a for a, b in itertools.pairwise(wakes))
            assert longest < max(0.05, took / 3), (path, longest, took)  # never held in one piece
