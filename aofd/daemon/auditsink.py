"""The runtime's `AuditSink` port over the audit journal: completes the ECS envelope, redacts argv.

The runtime and the reconciler hand over records without the envelope every line shares
(`ecs.version`, `event.kind/dataset/provider`, `service`, `host`, `status`); this adapter adds
it and replaces secret values in `process.args` (`records.ArgvRedactor`) before the journal
chains and writes the line. It is the only place that joins the runtime's port to
`aofd.audit`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from aofd import __version__
from aofd.audit import journal, records


class AuditAdapter:
    """`ports.AuditSink` over the journal (the daemon's and `aofctl run`'s)."""

    def __init__(self, journal_: journal.AuditLog, *, redactor: records.ArgvRedactor) -> None:
        self._journal = journal_
        self._redactor = redactor
        self._host = socket.gethostname()

    async def write(self, context: str, record: Mapping[str, Any], *, durable: bool = False) -> None:
        out = dict(record)
        out.setdefault("ecs", {"version": records.ECS_VERSION})
        event = dict(out.get("event") or {})
        event.setdefault("kind", "event")
        event.setdefault("dataset", "aofd.audit")
        event.setdefault("provider", "aofd")
        out["event"] = event
        out.setdefault("service", {"name": "aofd", "version": __version__})
        out.setdefault("host", {"hostname": self._host})
        process = out.get("process")
        if isinstance(process, Mapping) and isinstance(process.get("args"), list | tuple):
            proc = dict(process)
            proc["args"] = list(self._redactor.redact([str(a) for a in proc["args"]]))
            proc["args_count"] = len(proc["args"])
            out["process"] = proc
            out.setdefault("command", " ".join(proc["args"]))
        out.setdefault("status", event.get("outcome", "unknown"))
        await self._journal.write(context, out, durable=durable)
