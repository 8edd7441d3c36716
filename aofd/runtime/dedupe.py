"""The idempotency cache: have we already accepted this delivery?

Owns a bounded, time-limited set of `(platform, trigger, delivery id)` keys (a delivery id, or
`body:<digest>` of a webhook's raw body, `aofd.runtime.listeners.base.body_key`: a webhook
delivery with an id takes two entries). The daemon
creates one and hands it to every listener it builds, so the cache outlives hot swaps:
a Slack retry that reaches the replacement listener is still recognised.

The TTL must be at least the replay window (300 s) and the platforms' retry horizons
(RELIABILITY.md section 2), hence one hour by default. When full, the oldest keys go first;
an evicted key can only matter if a platform retries an hour later.

It must not do I/O or block; the clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

DedupeKey = tuple[str, str, str]
"""(platform, trigger name, delivery id)."""

DEFAULT_TTL = 3600.0
DEFAULT_MAX_ENTRIES = 100_000


class DedupeCache:
    """Remembers delivery keys for `ttl` seconds, at most `max_entries` of them."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        # Invariant: insertion order is expiry order (every entry gets now + the same ttl).
        self._expires: collections.OrderedDict[DedupeKey, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._expires)

    def _expire(self, now: float) -> None:
        while self._expires:
            key, expires = next(iter(self._expires.items()))
            if expires > now:
                break
            del self._expires[key]

    def first_time(self, platform: str, trigger: str, delivery_id: str) -> bool:
        """Record the key and return True, or return False when it was seen within the TTL.

        An empty delivery id cannot be de-duplicated and always counts as new.
        """
        if not delivery_id:
            return True
        now = self._clock()
        expires = self._expires
        # `_expire(now)`, with the common case (the oldest entry is still live) kept inline.
        if expires and next(iter(expires.values())) <= now:
            self._expire(now)
        key = (platform, trigger, delivery_id)
        if key in expires:
            return False
        expires[key] = now + self._ttl
        while len(expires) > self._max:
            expires.popitem(last=False)
        return True

    def seen(self, platform: str, trigger: str, delivery_id: str) -> bool:
        """True when the key is present (without recording it)."""
        now = self._clock()
        self._expire(now)
        return (platform, trigger, delivery_id) in self._expires

    def forget(self, platform: str, trigger: str, delivery_id: str) -> None:
        """Drop a key, so that a delivery whose handling failed before acceptance can be retried."""
        self._expires.pop((platform, trigger, delivery_id), None)
