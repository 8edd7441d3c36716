"""The seams of the runtime: small Protocols and value types shared by listeners, the
router, the flow engine and the command guard.

The runtime never imports the audit package (DESIGN.md section 3 keeps source, runtime
and audit independent); it writes audit records through `AuditSink`, which the daemon
wires to `aofd.audit`. Likewise replies go out through `Replier`, implemented per platform.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol


class UserRef(NamedTuple):
    """Who sent an event: the immutable platform id (never the display name) and a name."""

    id: str
    name: str = ""
    domain: str = ""  # "slack:T0001", "telegram", "whatsapp:<waba>", "pagerduty", "github", "cli"


@dataclasses.dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an answer goes: a platform, the trigger that received the event, a channel and thread."""

    platform: str
    trigger: str
    channel_id: str = ""
    thread: str = ""
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)


_NO_PAYLOAD: Mapping[str, Any] = types.MappingProxyType({})


class EventMessage(NamedTuple):
    """One event, normalized across platforms (the router's and the flow engine's input).

    A named tuple, like `UserRef`: immutable, and the cheapest record CPython builds (a frozen
    dataclass costs five times as much per event, and one of these is built for every request).
    """

    platform: str  # slack, telegram, whatsapp, pagerduty, github, http, schedule, cli
    trigger: str  # the Trigger resource's name
    text: str
    user: UserRef
    channel_id: str = ""
    channel_name: str = ""
    thread: str = ""
    event_type: str = "message"
    delivery_id: str = ""
    raw: Mapping[str, Any] = _NO_PAYLOAD
    received_at: float = 0.0  # time.time() at arrival

    def reply_target(self) -> ReplyTarget:
        return ReplyTarget(self.platform, self.trigger, self.channel_id, self.thread)


class AuditSink(Protocol):
    """Append one audit record to a Context's log.

    `durable=True` returns only once the record is on disk (fsync); it raises
    `aofd.errors.AuditUnavailable` if that cannot be done, and the caller must not go on
    with the action the record authorises.
    """

    async def write(self, context: str, record: Mapping[str, Any], *, durable: bool = False) -> None: ...


class Replier(Protocol):
    """Post text back to where an event came from (escaping is the replier's job)."""

    async def reply(self, target: ReplyTarget, text: str) -> None: ...
