"""Conditions after apply, rejection and listener retries cost their exceptions, yet equal what
computing every resource's condition gives (checked against that computation, step by step)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping

import pytest

from aofd import errors
from aofd.reconcile import status
from aofd.resources import ids

Key = ids.ResourceKey
Condition = status.Condition


def every_after_apply(
    keys: Iterable[Key],
    revision: str,
    stalled: Mapping[Key, str],
    previous: Mapping[Key, Condition],
    now: float,
) -> dict[Key, Condition]:
    """Each resource's condition, computed one by one (the definition)."""
    out = {}
    for key in keys:
        if key in stalled:
            cond = Condition(status.Phase.STALLED, "NotRunnable", stalled[key], revision, now)
        else:
            cond = Condition(status.Phase.READY, "Applied", f"applied at revision {revision}", revision, now)
        old = previous.get(key)
        if old is not None and (old.phase, old.reason, old.message) == (
            cond.phase,
            cond.reason,
            cond.message,
        ):
            cond = dataclasses.replace(cond, since=old.since)
        out[key] = cond
    return out


def every_marked(
    current: Mapping[Key, Condition], revision: str, marked: Iterable[Key], now: float
) -> dict[Key, Condition]:
    out = dict(current)
    for key in marked:
        old = out.get(key)
        observed = old.observed_revision if old else ""
        phase = old.phase if old else status.Phase.STALLED
        message = (
            f"revision {revision} rejected (still running {observed or 'nothing'}): f.yaml:1:1: error: bad"
        )
        out[key] = Condition(phase, "NewRevisionRejected", message, observed, now)
    return out


KEYS = [Key(ids.Kind.AGENT, "default", f"a{i}") for i in range(12)]


@pytest.mark.parametrize("seed", range(12))
def test_conditions_equal_every_resource_computed(seed: int) -> None:
    rng = random.Random(seed)
    fast: Mapping[Key, Condition] = {}
    slow: dict[Key, Condition] = {}
    fast_applied: Mapping[Key, Condition] = {}
    slow_applied: dict[Key, Condition] = {}
    keys = frozenset(KEYS[:8])
    revision = "r0"
    for step in range(40):
        now = float(step)
        op = rng.choice(["apply", "apply", "retry", "reject", "revert"])
        if op == "apply" or (op == "retry" and not slow_applied):
            keys = frozenset(rng.sample(KEYS, rng.randrange(1, len(KEYS))))
            revision = rng.choice(["r1", "r2", "r3"])
        if op in ("apply", "retry"):
            stalled = {k: rng.choice(["cannot start", "no key"]) for k in keys if rng.random() < 0.3}
            refreshed = status.conditions_after_apply(
                keys=keys, revision=revision, stalled=stalled, previous=fast_applied, now=now
            )
            want = every_after_apply(keys, revision, stalled, slow_applied, now)
            if op == "apply":
                fast = fast_applied = refreshed
                slow = slow_applied = want
            else:  # the running revision again: keep a rejected revision's marks
                fast = status.carry_marks(fast, fast_applied, refreshed)
                slow = {**slow, **{k: c for k, c in want.items() if slow.get(k) == slow_applied.get(k)}}
                fast_applied, slow_applied = refreshed, want
        elif op == "reject":
            marked = rng.sample(KEYS, rng.randrange(0, 4))
            issue = errors.Issue("f.yaml", 1, 1, "error", "bad", "x")
            fast = status.mark_rejected(
                fast, revision="bad", issues=[issue], key_of_path={"f.yaml": marked}, now=now
            )
            slow = every_marked(slow, "bad", marked, now)
        else:
            fast, slow = fast_applied, dict(slow_applied)
        assert slow == dict(fast.items()), (step, op)
        assert len(slow) == len(fast)
        assert all(fast[k] == c and k in fast for k, c in slow.items())


def test_after_apply_costs_the_exceptions_not_the_resources() -> None:
    """100,000 Ready resources and one stalled: one condition is made, the rest are the default."""
    keys = frozenset(Key(ids.Kind.AGENT, "default", f"a{i}") for i in range(100_000))
    stalled_key = next(iter(keys))
    made = status.conditions_after_apply(
        keys=keys, revision="r1", stalled={stalled_key: "no key"}, previous={}, now=1.0
    )
    assert isinstance(made, status.AppliedConditions)
    assert [stalled_key] == list(made.overrides)
    assert status.Phase.STALLED is made[stalled_key].phase
    again = status.conditions_after_apply(
        keys=keys, revision="r2", stalled={stalled_key: "no key"}, previous=made, now=2.0
    )
    assert 1.0 == again[stalled_key].since  # stalled for the same reason since the first pass
    assert ("r2", 2.0) == (again[Key(ids.Kind.AGENT, "default", "a7")].observed_revision, again.at)
    assert 100_000 == len(again)
