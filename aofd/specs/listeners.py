"""Listener specs: what the runtime needs to serve one Trigger, compiled once per revision; pure.

This module owns `ListenerSpec` (the trigger's name and platform, its configuration after
`${VAR}` substitution, whether it is served over HTTP and at which extra `config.path`, its
parsed `Schedule`, and the config digest the plan compares) and `compile_trigger`, which
reports everything the files alone decide about serving a Trigger:

- a type aofd serves no listener for is a warning, and the bindings that use it take no events
  (`ListenerUnsupported`); a Manual trigger has no transport: its bindings are started by hand
  (`aofctl run binding`, the admin API);
- a Schedule's `cron` and `timezone` must parse (`aofd.specs.cron`), each error at its field;
- Telegram long polling needs a `bot_token`.

Facts of the host (a Socket Mode connection, a port) are found when the listener starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from aofd.resources.kinds import trigger as trigger_kind
from aofd.specs import cron
from aofd.specs.problems import Problem

PLATFORMS: frozenset[str] = frozenset(
    {"slack", "telegram", "whatsapp", "pagerduty", "github", "http", "schedule"}
    | {"jira", "gitlab", "bitbucket", "opsgenie", "manual"}
    | {"discord", "teams"}
)
"""Trigger types (lower-cased) aofd serves a listener for."""

WEBHOOK_PLATFORMS: frozenset[str] = PLATFORMS - {"schedule", "manual"}
"""Platforms whose events arrive as requests at `/hooks/<platform>/<trigger>`."""


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One Trigger as its listener serves it."""

    trigger: str
    platform: str
    config: trigger_kind.TriggerConfig
    digest: str
    schedule: cron.Schedule | None = None

    @property
    def webhook(self) -> bool:
        return self.platform in WEBHOOK_PLATFORMS

    @property
    def pulls(self) -> bool:
        """Does the listener fetch events itself (a schedule, Telegram long polling, Slack Socket
        Mode)? Such a listener runs only while a binding uses its Trigger: without one it would
        consume updates nobody handles. A webhook listener is served for every valid Trigger."""
        if self.platform == "schedule":
            return True
        if self.platform == "telegram":
            return polls(self.config)
        return self.platform == "slack" and bool(self.config.app_token)

    @property
    def path(self) -> str | None:
        """The trigger's own `config.path` (upstream's), served besides `/hooks/<platform>/<name>`."""
        path = self.config.path
        return path if self.webhook and path and not path.startswith("/hooks/") else None


def platform_of(model: trigger_kind.Trigger) -> str:
    return str(model.spec.type.value).lower()


def config_digest(model: trigger_kind.Trigger, resource_digest: str = "") -> str:
    """`sha256:` of the Trigger's name, its spec with the secret fields masked, and its resource
    digest, which the planner keys when the Trigger holds a secret: a rotated secret changes it,
    and no secret can be tested against it."""
    spec = model.spec.model_dump(mode="json")
    config = spec.get("config")
    if isinstance(config, dict):
        for field in trigger_kind.SECRET_FIELDS:
            if config.get(field):
                config[field] = "***"
    data = {"name": model.metadata.name, "spec": spec, "resource": resource_digest}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def compile_trigger(
    model: trigger_kind.Trigger, resource_digest: str = ""
) -> tuple[ListenerSpec | None, list[Problem]]:
    """The listener spec of an enabled Trigger (its digest covering `resource_digest`), or None
    and why it cannot be served."""
    platform = platform_of(model)
    name = model.metadata.name
    config = model.spec.config
    if platform not in PLATFORMS:
        return None, [
            Problem(
                ("spec", "type"),
                f"type {model.spec.type.value} has no listener in aofd (served: "
                f"{', '.join(sorted(PLATFORMS))}); its bindings take no events",
                "warning",
                "listener-unsupported",
            )
        ]
    problems: list[Problem] = []
    schedule: cron.Schedule | None = None
    if platform == "schedule":
        if not config.cron:
            problems.append(Problem(("spec", "config"), "a Schedule trigger needs config.cron"))
        else:
            schedule, found = cron.parse(config.cron, config.timezone)
            problems.extend(found)
    elif platform == "telegram" and polls(config) and not config.bot_token:
        problems.append(Problem(("spec", "config", "bot_token"), "Telegram long polling needs a bot_token"))
    if problems:
        return None, problems
    return ListenerSpec(name, platform, config, config_digest(model, resource_digest), schedule), []


def polls(config: trigger_kind.TriggerConfig) -> bool:
    """Telegram: long polling when `mode: polling`, or when no mode and no secret token are given."""
    mode = config.mode
    secret = config.secret_token or config.webhook_secret
    return mode is trigger_kind.ListenMode.POLLING or (mode is None and not secret)
