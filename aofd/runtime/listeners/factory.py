"""Building the listener for a Trigger resource: the one place that knows every platform module.

Owns `build_listener()` (a Trigger resource and the daemon's collaborators -> a Listener, not
started) and `ListenerFactory`, the same with the collaborators bound, which is the `build`
callable `aofd.runtime.routing.prepare()` takes.

It must not start anything or do I/O.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from aofd.resources.kinds import base as kinds_base
from aofd.runtime import dedupe, ports, router
from aofd.runtime.listeners import base, github, http, pagerduty, schedule, slack, telegram, whatsapp
from aofd.settings import PlatformsSpec

LISTENERS: dict[str, type[base.Listener]] = {
    "slack": slack.SlackListener,
    "telegram": telegram.TelegramListener,
    "whatsapp": whatsapp.WhatsAppListener,
    "pagerduty": pagerduty.PagerDutyListener,
    "github": github.GitHubListener,
    "http": http.HttpListener,
    "schedule": schedule.ScheduleListener,
}
"""Platform (the Trigger's `spec.type`, lower-cased) -> listener class."""

WEBHOOK_PLATFORMS = frozenset({"slack", "telegram", "whatsapp", "pagerduty", "github", "http"})


def build_listener(
    trigger_resource: kinds_base.LoadedResource,
    *,
    platforms: PlatformsSpec,
    dispatcher: router.Dispatcher,
    dedupe: dedupe.DedupeCache,
    audit: ports.AuditSink | None,
    approvals: base.ApprovalDecider | None,
    scheduler: schedule.ScheduleHub | None = None,
    clock: Callable[[], float] = time.time,
    on_rejected: Callable[[str, str], None] | None = None,
) -> base.Listener:
    """The (not yet started) listener for one Trigger.

    Raises:
        base.ListenerError: the trigger's type has no listener (Discord, Jira, Manual), or its
            settings cannot work (a Schedule without cron, Telegram polling without a bot token).
    """
    model = base.trigger_model(trigger_resource)
    platform = base.platform_of(model)
    cls = LISTENERS.get(platform)
    if cls is None:
        raise base.ListenerError(
            f"Trigger {model.metadata.name}: type {model.spec.type.value} has no listener in aofd "
            f"(supported: {', '.join(sorted(LISTENERS))})"
        )
    deps = base.Deps(
        platforms=platforms,
        dispatcher=dispatcher,
        dedupe=dedupe,
        audit=audit,
        approvals=approvals,
        scheduler=scheduler,
        clock=clock,
        on_rejected=on_rejected,
    )
    return cls(resource=trigger_resource, deps=deps)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ListenerFactory:
    """`build_listener` with the daemon's collaborators bound (pass it to `routing.prepare`)."""

    platforms: PlatformsSpec
    dispatcher: router.Dispatcher
    dedupe: dedupe.DedupeCache
    audit: ports.AuditSink | None = None
    approvals: base.ApprovalDecider | None = None
    scheduler: schedule.ScheduleHub | None = None
    clock: Callable[[], float] = time.time
    on_rejected: Callable[[str, str], None] | None = None

    def __call__(self, trigger_resource: kinds_base.LoadedResource) -> base.Listener:
        return build_listener(
            trigger_resource,
            platforms=self.platforms,
            dispatcher=self.dispatcher,
            dedupe=self.dedupe,
            audit=self.audit,
            approvals=self.approvals,
            scheduler=self.scheduler,
            clock=self.clock,
            on_rejected=self.on_rejected,
        )
