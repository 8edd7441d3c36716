"""The runtime's `AuditSink` port over the audit journal: typed events in, ECS lines out.

Every writer of the daemon (the command guard, the flow engine, listeners, the reconciler, the
daemon itself) hands over a typed `ports.AuditEvent`; `render` turns it into one record with
the one builder of the audit package (`aofd.audit.records.build`: ECS envelope, categorization
by action, the seed's flat fields), replacing secret values in the argv first
(`records.ArgvRedactor`). The journal then chains and writes the line. This is the only place
that joins the runtime's port to `aofd.audit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aofd import __version__
from aofd.audit import journal, records
from aofd.runtime import ports


def _actor(user: ports.UserRef | None) -> records.Actor | None:
    return records.Actor(user.id, user.name, user.domain) if user is not None else None


def render(
    event: ports.AuditEvent,
    *,
    context: str,
    redactor: records.ArgvRedactor,
    origin: records.Origin | None = None,
) -> dict[str, Any]:
    """The audit record of `event` in `context`'s log (argv secrets replaced)."""
    process = None
    command_line = None
    if event.process is not None:
        if event.process.args:
            process = records.Process(
                args=redactor.redact(event.process.args),
                exit_code=event.process.exit_code,
                working_directory=event.process.working_directory,
            )
        else:
            command_line = event.process.command_line
    target = event.target
    return records.build(
        event.action,
        context=context,
        outcome=event.outcome,
        event_id=event.event_id,
        reason=event.reason,
        duration_ns=event.duration_ns,
        origin=origin,
        user=_actor(event.user),
        agent=event.agent,
        run_id=event.run_id,
        trigger=event.trigger,
        process=process,
        command_line=command_line,
        cluster=target.cluster if target is not None else None,
        namespace=target.namespace if target is not None else None,
        resource_type=target.resource_type if target is not None else None,
        related=event.related,
        source_ip=event.source_ip,
        http_status=event.http_status,
        message=event.message,
        extra=event.details,
        approver=_actor(event.approver),
    )


class AuditAdapter:
    """`ports.AuditSink` over the journal (the daemon's and `aofctl run`'s)."""

    def __init__(
        self,
        journal_: journal.AuditLog,
        *,
        redactor: records.ArgvRedactor,
        origin: records.Origin | None = None,
    ) -> None:
        self._journal = journal_
        self._redactor = redactor
        self._origin = origin or records.Origin(service_version=__version__)

    def redact(self, argv: Sequence[str]) -> tuple[str, ...]:
        """argv as the audit log shows it (secret values replaced): for other views of a command."""
        return self._redactor.redact(argv)

    async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        record = render(event, context=context, redactor=self._redactor, origin=self._origin)
        await self._journal.write(context, record, durable=durable)
