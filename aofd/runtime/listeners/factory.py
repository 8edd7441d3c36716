"""Building the listener for a Trigger's compiled spec: the one place that knows every platform module.

Owns `LISTENERS` (platform -> listener class; its keys are `aofd.specs.listeners.PLATFORMS`) and
`ListenerFactory`, the daemon's collaborators bound to `build(spec)`: the applier calls it for
each listener a plan starts.

It must not start anything or do I/O.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from aofd.runtime import claims as claims_mod
from aofd.runtime import cluster, dedupe, ports
from aofd.runtime.listeners import (
    base,
    bitbucket,
    discord,
    github,
    gitlab,
    http,
    jira,
    manual,
    opsgenie,
    pagerduty,
    schedule,
    slack,
    teams,
    telegram,
    whatsapp,
)
from aofd.settings import PlatformsSpec
from aofd.specs import listeners as listener_specs

LISTENERS: dict[str, type[base.Listener]] = {
    "slack": slack.SlackListener,
    "telegram": telegram.TelegramListener,
    "whatsapp": whatsapp.WhatsAppListener,
    "pagerduty": pagerduty.PagerDutyListener,
    "github": github.GitHubListener,
    "http": http.HttpListener,
    "schedule": schedule.ScheduleListener,
    "jira": jira.JiraListener,
    "gitlab": gitlab.GitLabListener,
    "bitbucket": bitbucket.BitbucketListener,
    "opsgenie": opsgenie.OpsgenieListener,
    "manual": manual.ManualListener,
    "discord": discord.DiscordListener,
    "teams": teams.TeamsListener,
}
"""Platform (the Trigger's `spec.type`, lower-cased) -> listener class."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ListenerFactory:
    """The daemon's collaborators, bound: `factory(spec)` is a new, not yet started listener."""

    platforms: PlatformsSpec
    dispatcher: ports.Dispatch
    dedupe: dedupe.DedupeCache
    audit: ports.AuditSink | None = None
    approvals: base.ApprovalDecider | None = None
    scheduler: schedule.ScheduleHub | None = None
    clock: Callable[[], float] = time.time
    on_rejected: Callable[[str, str], None] | None = None
    claims: claims_mod.Claims | None = None
    """One run per delivery across the set (None: the local `dedupe` cache only)."""
    coordinator: cluster.Coordinator | None = None
    """The replica set's etcd adapter (`cluster:`), None on a single host."""
    on_not_run: Callable[[str, str], None] | None = None
    """(platform, reason) for a delivery answered but not run (etcd unreachable); metrics."""

    def __call__(self, spec: listener_specs.ListenerSpec) -> base.Listener:
        """The listener serving `spec` (not started).

        Raises:
            base.ListenerError: no listener serves the spec's platform (the compile stage never
                makes such a spec).
        """
        cls = LISTENERS.get(spec.platform)
        if cls is None:
            raise base.ListenerError(f"Trigger {spec.trigger}: no listener serves platform {spec.platform}")
        deps = base.Deps(
            platforms=self.platforms,
            dispatcher=self.dispatcher,
            dedupe=self.dedupe,
            audit=self.audit,
            approvals=self.approvals,
            scheduler=self.scheduler,
            clock=self.clock,
            on_rejected=self.on_rejected,
            claims=self.claims,
            coordinator=self.coordinator,
            on_not_run=self.on_not_run,
        )
        return cls(spec=spec, deps=deps)
