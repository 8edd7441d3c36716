"""The Manual trigger (`type: Manual`, upstream's type for runs started by hand).

It has no transport: its listener only marks the trigger as served, so the bindings that use it
are routed and can be stalled like any other. A run is started by an operator through the admin
API (`POST /api/v1/runs`, `aofctl run binding NAME -i TEXT`), which builds the event with
`event` and hands it to the dispatcher for that one binding: the same guard, audit and limits
as every run. Its answers are stored on the run (there is no chat to post in).
"""

from __future__ import annotations

import time
import uuid

from aofd.runtime import ports
from aofd.runtime.listeners import base

EVENT_TYPE = "manual"


class ManualListener(base.Listener):
    """`type: Manual` triggers: no webhook, nothing polled."""

    platform = "manual"


def event(trigger: str, text: str, user: ports.UserRef) -> ports.EventMessage:
    """The event of one run started by hand: `user` is the operator, the delivery id is new."""
    return ports.EventMessage(
        platform="manual",
        trigger=trigger,
        text=text,
        user=user,
        channel_id="",
        channel_name="",
        event_type=EVENT_TYPE,
        delivery_id=f"manual:{uuid.uuid4().hex}",
        received_at=time.time(),
    )
