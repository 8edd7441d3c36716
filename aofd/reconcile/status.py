"""Status of what the daemon runs: per-resource conditions and per-source records.

Conditions follow kstatus (Flux, Argo CD): each resource is `Ready`, `Stalled` or
`Reconciling`, with a machine-readable reason, a human message and the revision it was
last observed at. A rejected revision does not change what runs; it shows up as the
`NewRevisionRejected` reason on the resources whose files carry the errors, and in the
daemon-level status with every error at file:line.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterable, Mapping

from aofd import errors
from aofd.resources import ids


class Phase(enum.StrEnum):
    READY = "Ready"
    STALLED = "Stalled"
    RECONCILING = "Reconciling"


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    phase: Phase
    reason: str
    message: str
    observed_revision: str
    since: float

    def as_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "reason": self.reason,
            "message": self.message,
            "observedRevision": self.observed_revision,
            "since": self.since,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class PassSummary:
    """The canonical record of one reconcile pass (also its one log line)."""

    revision: str
    outcome: str  # applied | unchanged | rejected | failed | waiting
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    duration_s: float = 0.0
    issues: tuple[errors.Issue, ...] = ()
    at: float = 0.0
    phases: tuple[tuple[str, float], ...] = ()  # (build|compile|plan|apply|persist|audit, seconds)

    def as_dict(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "outcome": self.outcome,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "duration_ms": round(self.duration_s * 1000, 3),
            "phases_ms": {name: round(seconds * 1000, 3) for name, seconds in self.phases},
            "errors": [i.format() for i in self.issues if i.is_error],
            "warnings": [i.format() for i in self.issues if not i.is_error],
            "at": self.at,
        }


def conditions_after_apply(
    *,
    keys: Iterable[ids.ResourceKey],
    revision: str,
    stalled: Mapping[ids.ResourceKey, str],
    previous: Mapping[ids.ResourceKey, Condition],
    reasons: Mapping[ids.ResourceKey, str] | None = None,
    now: float | None = None,
) -> dict[ids.ResourceKey, Condition]:
    """Conditions for every resource of a freshly applied revision."""
    at = time.time() if now is None else now
    out: dict[ids.ResourceKey, Condition] = {}
    for key in keys:
        if key in stalled:
            reason = (reasons or {}).get(key, "NotRunnable")
            cond = Condition(Phase.STALLED, reason, stalled[key], revision, at)
        else:
            cond = Condition(Phase.READY, "Applied", f"applied at revision {revision}", revision, at)
        old = previous.get(key)
        if old is not None and (old.phase, old.reason, old.message) == (
            cond.phase,
            cond.reason,
            cond.message,
        ):
            cond = dataclasses.replace(cond, since=old.since)
        out[key] = cond
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class ReadyCount:
    """How many of a resource's bindings are Ready (`aofctl get triggers`: `READY 2/3`)."""

    ready: int = 0
    total: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"ready": self.ready, "total": self.total}

    def text(self) -> str:
        return f"{self.ready}/{self.total}"


def ready_counts(
    members: Iterable[tuple[ids.ResourceKey, ids.ResourceKey]],
    conditions: Mapping[ids.ResourceKey, Condition],
) -> dict[ids.ResourceKey, ReadyCount]:
    """`(group, binding)` pairs (a Trigger and each binding naming it) -> each group's `ReadyCount`.

    A binding is Ready when its condition's phase is `Ready`; one with no condition yet is not.
    """
    counts: dict[ids.ResourceKey, list[int]] = {}
    for group, binding in members:
        count = counts.setdefault(group, [0, 0])
        cond = conditions.get(binding)
        count[0] += cond is not None and cond.phase is Phase.READY
        count[1] += 1
    return {group: ReadyCount(ready, total) for group, (ready, total) in counts.items()}


def mark_rejected(
    current: Mapping[ids.ResourceKey, Condition],
    *,
    revision: str,
    issues: Iterable[errors.Issue],
    key_of_path: Mapping[str, Iterable[ids.ResourceKey]],
    now: float | None = None,
) -> dict[ids.ResourceKey, Condition]:
    """Flag resources whose files carry errors in a rejected revision; what runs is unchanged."""
    at = time.time() if now is None else now
    by_key: dict[ids.ResourceKey, list[str]] = {}
    for issue in issues:
        if not issue.is_error:
            continue
        for key in key_of_path.get(issue.path, ()):
            by_key.setdefault(key, []).append(issue.format())
    out = dict(current)
    for key, lines in by_key.items():
        old = out.get(key)
        observed = old.observed_revision if old else ""
        phase = old.phase if old else Phase.STALLED
        message = f"revision {revision} rejected (still running {observed or 'nothing'}): " + "; ".join(lines)
        out[key] = Condition(phase, "NewRevisionRejected", message, observed, at)
    return out
