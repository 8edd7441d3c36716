"""Retry policy for failing sources: exponential, capped, with jitter (1 s ... 5 min).

Owns the delay arithmetic only; the caller counts failures and sleeps. The random source
is injected so tests are deterministic. Pure.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """`delay(n)` for the n-th consecutive failure: `base * factor**(n-1)`, capped, +/- `jitter`."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, failures: int, *, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` (>= 1) consecutive failures; never above `cap`."""
        exponent = min(max(failures, 1) - 1, 64)  # 2**64 s is far past any cap
        raw = min(self.cap, self.base * self.factor**exponent)
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return max(0.0, min(self.cap, raw * spread))


DEFAULT = Backoff()


def jittered(interval: float, *, fraction: float = 0.05, rand: Callable[[], float] = random.random) -> float:
    """`interval` +/- `fraction` (Flux's default interval jitter is 5 %)."""
    return max(0.0, interval * (1.0 + fraction * (2.0 * rand() - 1.0)))
