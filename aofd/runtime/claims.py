"""One run per delivery: the local dedupe cache, and across replicas a claim in etcd.

Owns the question "has any replica already taken this delivery?". `Claims` wraps the process's
`DedupeCache` (the first, free filter: a retry that reaches the same replica never costs a
round trip) and, with `cluster:`, the `Coordinator`: every id of a delivery (its delivery id
and its twins: a body digest, a `sig:` key, Slack's `msg:<channel>:<ts>`) is claimed in one
etcd transaction under `claims/<platform>/<trigger>/<sha256(id)[:32]>`, so a retry delivered to
another replica does not run again. Without a coordinator it is exactly the `DedupeCache`:
the ids are checked one after the other and the first one seen before makes it a duplicate.

etcd unavailable -> `errors.CoordinatorUnavailable` (fail closed: the caller refuses the
delivery so the platform retries it); the ids this call recorded locally are forgotten again,
and the coordinator releases the etcd claim in case it committed anyway, so that retry is
taken on whichever replica it reaches. The local cache holds only ids this replica claimed itself, so a
`forget` on the replica that took a delivery frees it on every replica.

A fenced claim (`fenced=True`: singleton duties, Telegram polling, Slack Socket Mode, schedule
ticks) succeeds only while this replica can prove it leads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import structlog

from aofd import errors
from aofd.runtime.cluster import ClaimResult, Coordinator
from aofd.runtime.dedupe import DedupeCache

log = structlog.get_logger("aofd.runtime")

__all__ = ["ClaimResult", "Claims", "claim_key"]


def claim_key(platform: str, trigger: str, delivery_id: str) -> str:
    """The etcd key (under the cluster prefix) of one delivery id: ids are hashed (they can be
    long, hold `/` or be chosen by the sender), platform and trigger names are label-safe."""
    digest = hashlib.sha256(delivery_id.encode()).hexdigest()[:32]
    return f"claims/{platform}/{trigger}/{digest}"


class Claims:
    """`first_time`/`claim`/`forget` over the local cache and, when given, the coordinator.

    `observe(result, seconds)` (optional) is told the outcome and duration of each etcd claim
    (`claimed`, `duplicate`, `fenced`, `unavailable`): the claim latency metric.
    """

    def __init__(
        self,
        local: DedupeCache,
        coordinator: Coordinator | None = None,
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.local = local
        self.coordinator = coordinator
        self._observe = observe

    @staticmethod
    def _ids(ids: str | Sequence[str]) -> tuple[str, ...]:
        return (ids,) if isinstance(ids, str) else tuple(ids)

    async def first_time(
        self, platform: str, trigger: str, ids: str | Sequence[str], *, fenced: bool = False
    ) -> bool:
        """True when no replica has taken any of `ids` before (and now this one has)."""
        return await self.claim(platform, trigger, ids, fenced=fenced) is ClaimResult.CLAIMED

    async def claim(
        self, platform: str, trigger: str, ids: str | Sequence[str], *, fenced: bool = False
    ) -> ClaimResult:
        """Like `first_time`, but says why not: DUPLICATE (seen here or on another replica) or
        FENCED (a fenced claim while this replica cannot prove it leads; nothing recorded)."""
        keys = self._ids(ids)
        recorded: list[str] = []
        for delivery_id in keys:
            if not self.local.first_time(platform, trigger, delivery_id):
                return ClaimResult.DUPLICATE  # the ids before it stay recorded, as DedupeCache does
            if delivery_id:
                recorded.append(delivery_id)
        coordinator = self.coordinator
        if coordinator is None or not recorded:
            return ClaimResult.CLAIMED
        started = time.perf_counter()
        try:
            result = await coordinator.claim(
                [claim_key(platform, trigger, i) for i in recorded], fenced=fenced
            )
        except errors.CoordinatorUnavailable:
            self._drop_local(platform, trigger, recorded)
            self._note("unavailable", started)
            raise
        except BaseException:
            self._drop_local(platform, trigger, recorded)
            raise
        self._note(result.value, started)
        if result is not ClaimResult.CLAIMED:
            # The local cache holds only what this replica took: another replica's claim may be
            # dropped again (`retry_later` there), and a fenced one was never ours to take.
            self._drop_local(platform, trigger, recorded)
        return result

    async def forget(self, platform: str, trigger: str, ids: str | Sequence[str]) -> None:
        """Drop the claims of a delivery that did not run (`retry_later`), so its retry is taken
        on any replica. Never raises: when etcd does not answer, the coordinator keeps releasing
        them in the background (only while they still hold this replica's claim)."""
        keys = [i for i in self._ids(ids) if i]
        self._drop_local(platform, trigger, keys)
        if self.coordinator is None or not keys:
            return
        try:
            await self.coordinator.unclaim([claim_key(platform, trigger, i) for i in keys])
        except errors.CoordinatorUnavailable as exc:
            log.warning("claims.forget_queued", platform=platform, trigger=trigger, error=str(exc))

    def _drop_local(self, platform: str, trigger: str, ids: Sequence[str]) -> None:
        for delivery_id in ids:
            self.local.forget(platform, trigger, delivery_id)

    def _note(self, result: str, started: float) -> None:
        if self._observe is not None:
            self._observe(result, time.perf_counter() - started)
