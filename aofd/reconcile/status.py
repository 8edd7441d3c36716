"""Status of what the daemon runs: per-resource conditions and per-source records.

Conditions follow kstatus (Flux, Argo CD): each resource is `Ready`, `Stalled` or
`Reconciling`, with a machine-readable reason, a human message and the revision it was
last observed at. A rejected revision does not change what runs; it shows up as the
`NewRevisionRejected` reason on the resources whose files carry the errors, and in the
daemon-level status with every error at file:line.

After an apply nearly every resource is `Ready` at the revision, so the conditions are an
`AppliedConditions`: that default, plus the conditions that differ from it (stalled, marked by a
rejected revision, or kept from an earlier pass). Making them, and marking a rejection, costs
those exceptions, not the resources.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Collection, Iterable, Iterator, Mapping

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
    loop_lag_s: float = 0.0
    """The longest the event loop was kept from running while this pass ran (`aofd.reconcile.lag`)."""

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
            "loop_lag_ms": round(self.loop_lag_s * 1000, 3),
            "errors": [i.format() for i in self.issues if i.is_error],
            "warnings": [i.format() for i in self.issues if not i.is_error],
            "at": self.at,
        }


class AppliedConditions(Mapping[ids.ResourceKey, Condition]):
    """The conditions of an applied revision: each of `keys` `Ready` since `at`, but `overrides`.

    `overrides` may hold keys outside `keys` (a rejected revision's new resources); immutable.
    """

    __slots__ = ("_extra", "_keys", "_ready", "at", "overrides", "revision")

    def __init__(
        self,
        keys: Collection[ids.ResourceKey],
        *,
        revision: str,
        at: float,
        overrides: Mapping[ids.ResourceKey, Condition],
    ) -> None:
        self._keys = keys
        self.revision = revision
        self.at = at
        self.overrides = overrides
        self._ready = Condition(Phase.READY, "Applied", applied_message(revision), revision, at)
        self._extra = sum(1 for k in overrides if k not in keys)

    def __getitem__(self, key: ids.ResourceKey) -> Condition:
        found = self.overrides.get(key)
        if found is not None:
            return found
        if key in self._keys:
            return self._ready
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self.overrides or key in self._keys

    def __iter__(self) -> Iterator[ids.ResourceKey]:
        yield from self._keys
        yield from (k for k in self.overrides if k not in self._keys)

    def __len__(self) -> int:
        return len(self._keys) + self._extra

    def same_keys(self, keys: Collection[ids.ResourceKey]) -> bool:
        return keys is self._keys or (len(keys) == len(self._keys) and keys == self._keys)

    def with_overrides(self, changes: Mapping[ids.ResourceKey, Condition]) -> AppliedConditions:
        """The same conditions with `changes` replacing some (costs the exceptions, not the keys)."""
        return AppliedConditions(
            self._keys, revision=self.revision, at=self.at, overrides={**self.overrides, **changes}
        )


def applied_message(revision: str) -> str:
    return f"applied at revision {revision}"


def conditions_after_apply(
    *,
    keys: Collection[ids.ResourceKey],
    revision: str,
    stalled: Mapping[ids.ResourceKey, str],
    previous: Mapping[ids.ResourceKey, Condition],
    reasons: Mapping[ids.ResourceKey, str] | None = None,
    now: float | None = None,
) -> AppliedConditions:
    """Conditions for every resource of a freshly applied revision.

    A condition whose phase, reason and message are those it had in `previous` keeps its `since`.
    Costs the stalled keys and `previous`'s exceptions (all of `previous` when it is a plain map).
    """
    at = time.time() if now is None else now
    ready = Condition(Phase.READY, "Applied", applied_message(revision), revision, at)
    overrides: dict[ids.ResourceKey, Condition] = {}
    default_at = at
    if isinstance(previous, AppliedConditions) and (
        previous.revision != revision or previous.same_keys(keys)
    ):
        if previous.revision == revision:
            default_at = previous.at  # Ready then, Ready now: since stays
        candidates: Iterable[tuple[ids.ResourceKey, Condition]] = previous.overrides.items()
    else:
        candidates = previous.items()
    for key, old in candidates:
        if key in stalled or key not in keys:
            continue
        if (old.phase, old.reason, old.message) == (ready.phase, ready.reason, ready.message):
            if old.since != default_at:
                overrides[key] = dataclasses.replace(ready, since=old.since)
        elif default_at != at:
            overrides[key] = ready  # was not Ready at this revision: Ready since now
    for key, message in stalled.items():
        if key not in keys:
            continue
        reason = (reasons or {}).get(key, "NotRunnable")
        cond = Condition(Phase.STALLED, reason, message, revision, at)
        was = previous.get(key)
        if was is not None and (was.phase, was.reason, was.message) == (
            cond.phase,
            cond.reason,
            cond.message,
        ):
            cond = dataclasses.replace(cond, since=was.since)
        overrides[key] = cond
    return AppliedConditions(keys, revision=revision, at=default_at, overrides=overrides)


def carry_marks(
    current: Mapping[ids.ResourceKey, Condition],
    applied: Mapping[ids.ResourceKey, Condition],
    refreshed: AppliedConditions,
) -> Mapping[ids.ResourceKey, Condition]:
    """`refreshed`, keeping the conditions of `current` that differ from `applied` (a rejected
    revision's marks). Costs the exceptions when `current` was made from `applied`."""
    if current is applied:
        return refreshed
    if isinstance(current, AppliedConditions) and isinstance(applied, AppliedConditions):
        if current.same_keys(applied._keys) and current.at == applied.at:
            candidates: Iterable[ids.ResourceKey] = current.overrides
        else:
            candidates = current
    else:
        candidates = current
    marks = {k: current[k] for k in candidates if current.get(k) != applied.get(k)}
    return refreshed.with_overrides(marks) if marks else refreshed


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
) -> Mapping[ids.ResourceKey, Condition]:
    """Flag resources whose files carry errors in a rejected revision; what runs is unchanged."""
    at = time.time() if now is None else now
    by_key: dict[ids.ResourceKey, list[str]] = {}
    for issue in issues:
        if not issue.is_error:
            continue
        for key in key_of_path.get(issue.path, ()):
            by_key.setdefault(key, []).append(issue.format())
    marked: dict[ids.ResourceKey, Condition] = {}
    for key, lines in by_key.items():
        old = current.get(key)
        observed = old.observed_revision if old else ""
        phase = old.phase if old else Phase.STALLED
        message = f"revision {revision} rejected (still running {observed or 'nothing'}): " + "; ".join(lines)
        marked[key] = Condition(phase, "NewRevisionRejected", message, observed, at)
    if isinstance(current, AppliedConditions):
        return current.with_overrides(marked)
    return {**current, **marked}
