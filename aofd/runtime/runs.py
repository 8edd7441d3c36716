"""Run records and the bounded history of recent runs (`aofctl describe run`, the admin API).

This module owns `RunRecord` (a run's id, binding, Context, per-node status, output and
timing, the answer, the error, token usage, commands run and refused, approvals waited for)
and `RunHistory`, which keeps the runs in flight plus the most recent finished ones up to
`DaemonConfig.run_history`, evicting the oldest finished first. Records are mutated only by
the engine task that owns the run; readers get JSON-able dict copies (`as_dict`), and the
canonical log line of a finished run is `RunRecord.log_fields()`.

It must not do I/O: history is in memory and lost on restart (runs are audited per
Context by the audit log, which is the durable record).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import time
from collections.abc import Mapping
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_OUTPUT_CHARS = 8000
"""A node's output is kept up to this many characters in the history (the run is not)."""
MAX_LOGGED_ERROR_CHARS = 200
"""A run's error is cut to this many characters in its log line (the record keeps it whole)."""


def new_run_id(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, Crockford base32; sorts by start time."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class NodeStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # paused at an Approval node
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"  # an approval was denied or expired
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.RUNNING, RunStatus.WAITING)


@dataclasses.dataclass(slots=True)
class NodeRecord:
    id: str
    type: str
    status: NodeStatus = NodeStatus.PENDING
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        duration = None
        if self.started_at is not None and self.ended_at is not None:
            duration = round((self.ended_at - self.started_at) * 1000, 3)
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status.value,
            "output": _jsonable(self.output),
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": duration,
        }


@dataclasses.dataclass(slots=True)
class RunRecord:
    run_id: str
    binding: str
    flow: str
    context: str
    platform: str
    trigger: str
    user: str
    digest: str = ""
    status: RunStatus = RunStatus.RUNNING
    started_at: float = dataclasses.field(default_factory=time.time)
    ended_at: float | None = None
    timeout_seconds: float | None = None
    nodes: dict[str, NodeRecord] = dataclasses.field(default_factory=dict)
    answer: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    commands_run: int = 0
    commands_denied: int = 0
    approvals: int = 0
    approval_wait_s: float = 0.0

    def node(self, node_id: str, node_type: str) -> NodeRecord:
        record = self.nodes.get(node_id)
        if record is None:
            record = self.nodes[node_id] = NodeRecord(node_id, node_type)
        return record

    def finish(self, status: RunStatus, *, error: str | None = None, now: float | None = None) -> None:
        self.status = status
        self.error = error
        self.ended_at = time.time() if now is None else now

    def note_command(self, *, ran: bool) -> None:
        """Count one command the guard decided: run (whatever its exit code) or refused."""
        if ran:
            self.commands_run += 1
        else:
            self.commands_denied += 1

    def note_approval(self, waited_s: float) -> None:
        """Count one approval this run waited for (a command's or an Approval node's), and how long."""
        self.approvals += 1
        self.approval_wait_s += max(0.0, waited_s)

    def log_fields(self, *, now: float | None = None) -> dict[str, Any]:
        """The canonical log line of this run: who, what, how it ended, what it cost.

        A run not finished (cancelled before it could record it) ends `now` as `cancelled`.
        Node counts are by status (only the statuses some node has); the error is cut to
        `MAX_LOGGED_ERROR_CHARS`. Values are plain JSON scalars and one small mapping.
        """
        status = self.status if self.status.finished else RunStatus.CANCELLED
        ended = self.ended_at if self.ended_at is not None else (time.time() if now is None else now)
        nodes: dict[str, int] = {}
        for node in self.nodes.values():
            nodes[node.status.value] = nodes.get(node.status.value, 0) + 1
        error = self.error
        if error is not None and len(error) > MAX_LOGGED_ERROR_CHARS:
            error = error[: MAX_LOGGED_ERROR_CHARS - 1] + "…"
        return {
            "run_id": self.run_id,
            "binding": self.binding,
            "flow": self.flow,
            "context": self.context,
            "trigger": self.trigger,
            "platform": self.platform,
            "user": self.user,
            "status": status.value,
            "duration_ms": round(max(0.0, ended - self.started_at) * 1000, 1),
            "nodes": dict(sorted(nodes.items())),
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
            "commands_run": self.commands_run,
            "commands_denied": self.commands_denied,
            "approvals": self.approvals,
            "approval_wait_s": round(self.approval_wait_s, 3),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "error": error,
        }

    def as_dict(self) -> dict[str, Any]:
        duration = round((self.ended_at - self.started_at) * 1000, 3) if self.ended_at is not None else None
        return {
            "run_id": self.run_id,
            "binding": self.binding,
            "flow": self.flow,
            "context": self.context,
            "platform": self.platform,
            "trigger": self.trigger,
            "user": self.user,
            "digest": self.digest,
            "status": self.status.value,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": duration,
            "timeout_seconds": self.timeout_seconds,
            "answer": self.answer,
            "error": self.error,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
            "nodes": [n.as_dict() for n in self.nodes.values()],
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_OUTPUT_CHARS else value[:MAX_OUTPUT_CHARS] + "…"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


class RunHistory:
    """Runs in flight and the most recent `capacity` finished runs, by id (insertion = start order)."""

    def __init__(self, *, capacity: int = 200) -> None:
        self._capacity = max(1, capacity)
        # Invariant: insertion order is start order; finished runs beyond capacity are evicted oldest first.
        self._runs: collections.OrderedDict[str, RunRecord] = collections.OrderedDict()

    def add(self, record: RunRecord) -> None:
        self._runs[record.run_id] = record
        self.prune()

    def prune(self) -> None:
        """Evict the oldest finished runs while more than `capacity` finished runs are kept."""
        finished = [rid for rid, r in self._runs.items() if r.status.finished]
        for rid in finished[: max(0, len(finished) - self._capacity)]:
            del self._runs[rid]

    def record(self, run_id: str) -> RunRecord | None:
        """The live record (the engine's; read-only for everyone else)."""
        return self._runs.get(run_id)

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run as a JSON-able dict, or None if unknown or evicted."""
        record = self._runs.get(run_id)
        return record.as_dict() if record is not None else None

    def recent(self, binding: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs first (optionally of one binding), at most `limit`, as JSON-able dicts."""
        out: list[dict[str, Any]] = []
        for record in reversed(self._runs.values()):
            if binding is not None and record.binding != binding:
                continue
            out.append(record.as_dict())
            if len(out) >= limit:
                break
        return out

    def active(self) -> list[RunRecord]:
        return [r for r in self._runs.values() if not r.status.finished]

    def __len__(self) -> int:
        return len(self._runs)
