"""Recording stand-ins for the runtime's ports: a starter, an audit sink, an approval decider, a replier.

Each keeps what it was given, in order, for a test to assert on; none does I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from aofd.audit import records
from aofd.daemon import auditsink
from aofd.runtime import ports
from aofd.specs import bindings


class RecordingStarter:
    """A FlowStarter that records (binding id, message) and returns sequential run ids."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ports.EventMessage]] = []
        self._ids = itertools.count(1)

    def start(self, binding: bindings.BindingSpec, message: ports.EventMessage) -> str:
        self.calls.append((binding.id, message))
        return f"run-{next(self._ids)}"

    async def finish(self, bindings: set[str], grace: float) -> None:
        """Runs of deleted bindings: this starter runs nothing, so nothing is left to finish."""

    @property
    def bindings(self) -> list[str]:
        return [name for name, _ in self.calls]


class NoopStarter:
    """A FlowStarter that does nothing (for the benchmark)."""

    def start(self, binding: bindings.BindingSpec, message: ports.EventMessage) -> str:
        return "run"

    async def finish(self, bindings: set[str], grace: float) -> None:
        """Nothing runs, so nothing is left to finish."""


class RecordingAudit:
    """An AuditSink (and audit-log opener) that keeps each event, and the record the daemon would write
    for it (`auditsink.render`), per context."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ports.AuditEvent]] = []
        self.records: list[tuple[str, Mapping[str, Any]]] = []
        self.opened: list[str] = []
        self._redactor = records.ArgvRedactor(key=b"test-audit-key")

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        self.events.append((context, event))
        self.records.append((context, auditsink.render(event, context=context, redactor=self._redactor)))

    async def open_context(self, context: str, *, log_path: str | None = None) -> str | None:
        if context not in self.opened:
            self.opened.append(context)
        return None

    def reasons(self) -> list[str]:
        return [r["event"]["reason"] for _, r in self.records]

    def actions(self) -> list[str]:
        return [r["event"]["action"] for _, r in self.records]

    def find(self, action: str) -> list[Mapping[str, Any]]:
        return [r for _, r in self.records if r["event"]["action"] == action]


class RecordingApprovals:
    """An ApprovalDecider that records decisions."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, bool, str]] = []
        self.answer: object = None
        """What `decide` returns (an `aofd.runtime.approvals.Click`: what the clicker is told)."""

    def decide(self, request_id: str, user: ports.UserRef, approve: bool, action_id: str) -> object:
        self.decisions.append((request_id, user.id, approve, action_id))
        return self.answer


class RecordingReplier:
    """A Replier that keeps (target, text) pairs."""

    def __init__(self) -> None:
        self.sent: list[tuple[ports.ReplyTarget, str]] = []

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        self.sent.append((target, text))

    def texts(self) -> list[str]:
        return [t for _target, t in self.sent]
