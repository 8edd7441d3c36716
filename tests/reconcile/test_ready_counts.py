"""`aofctl get triggers`' READY column: how many of a Trigger's bindings are Ready, of all that name it."""

from __future__ import annotations

from aofd.reconcile import status
from aofd.resources import ids


def _cond(phase: status.Phase, reason: str) -> status.Condition:
    return status.Condition(phase, reason, "", "r1", 0.0)


def test_stalled_disabled_and_unknown_bindings_are_not_ready() -> None:
    hook, other = ids.ResourceKey.of(ids.Kind.TRIGGER, "hook"), ids.ResourceKey.of(ids.Kind.TRIGGER, "other")
    ready, stalled, disabled, unseen = (ids.ResourceKey.of(ids.Kind.BINDING, n) for n in "abcd")
    conditions = {
        ready: _cond(status.Phase.READY, "Applied"),
        stalled: _cond(status.Phase.STALLED, "ContextNotReady"),
        disabled: _cond(status.Phase.STALLED, "Disabled"),
    }
    counts = status.ready_counts(
        [(hook, ready), (hook, stalled), (hook, disabled), (other, unseen), (other, stalled)], conditions
    )
    assert {hook: "1/3", other: "0/2"} == {k: v.text() for k, v in counts.items()}
    assert {"ready": 1, "total": 3} == counts[hook].as_dict()
