"""`kind: Trigger` (layer 4): a message source (Slack, Telegram, WhatsApp, HTTP, Schedule, ...).

This module owns the Trigger model: upstream's `Trigger`/`StandaloneTriggerConfig` (AOF-UPSTREAM.md
section 1.5) plus what aofd's listeners need to verify and answer requests (`app_token` for
Slack Socket Mode, `secret_token` for Telegram webhooks, `access_token`/`app_secret` for
WhatsApp, `webhook_secrets` for rotation, `max_body_bytes`, `mode`; upstream's `api_url`,
`username`/`app_password` and `webhook_token` of its GitLab, Bitbucket and Opsgenie platforms,
and `email` beside `user_email` for Jira). Secret-bearing fields
are listed in `SECRET_FIELDS` (always masked), identifiers taken from the environment in
`SUBSTITUTED_FIELDS` (masked only when written with `${VAR}`): the only Trigger fields where
`${VAR}` is substituted.
`spec.default_agent` is accepted as written by every upstream example (upstream itself only
reads `defaultAgent`). Type-specific required fields are checked in validation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aofd.resources.kinds import base


class TriggerType(base.CIEnum):
    """`spec.type`: the platform."""

    SLACK = "Slack"
    TELEGRAM = "Telegram"
    DISCORD = "Discord"
    WHATSAPP = "WhatsApp"
    HTTP = "HTTP"
    SCHEDULE = "Schedule"
    PAGERDUTY = "PagerDuty"
    GITHUB = "GitHub"
    JIRA = "Jira"
    MANUAL = "Manual"
    GITLAB = "GitLab"
    BITBUCKET = "Bitbucket"
    OPSGENIE = "Opsgenie"
    TEAMS = "Teams"


class ListenMode(base.CIEnum):
    """How a listener receives events: pushed to aofd's webhook, or pulled by polling."""

    WEBHOOK = "webhook"
    POLLING = "polling"


SECRET_FIELDS: tuple[str, ...] = (
    "bot_token",
    "signing_secret",
    "app_token",
    "app_secret",
    "secret_token",
    "access_token",
    "verify_token",
    "webhook_secret",
    "webhook_secrets",
    "api_key",
    "routing_key",
    "token",
    "api_token",
    "app_password",
    "webhook_token",
    "required_headers",
)
"""TriggerConfig fields that hold secrets: `${VAR}` is substituted, and the value is always masked.

A field is a string, a list of strings (each one substituted) or a map of strings
(`required_headers`: each value substituted, the header names never)."""

SUBSTITUTED_FIELDS: tuple[str, ...] = (
    # Upstream's Discord and Teams examples take these from the environment
    # (`${DISCORD_PUBLIC_KEY}`, `${TEAMS_APP_ID}`, ...),
    "public_key",
    "application_id",
    "app_id",
    "guild_ids",
    "allowed_roles",
    "allowed_tenants",
    # and its Jira and Bitbucket examples (`${JIRA_CLOUD_ID}`, `${BITBUCKET_USERNAME}`).
    "cloud_id",
    "user_email",
    "email",
    "username",
)
"""TriggerConfig identifiers where `${VAR}` is substituted too, but which are no secrets: a value is
masked only when it is written with a `${VAR}` (like a Context's kubeconfig), so a literal change
to them (a guild, a tenant) shows in `aofctl diff` and `describe`. Lists of strings, or strings."""


class TriggerConfig(base.Model):
    """`spec.config` (upstream `StandaloneTriggerConfig` plus aofd listener settings)."""

    # chat platforms
    bot_token: str | None = None
    signing_secret: str | None = None
    app_token: str | None = None
    app_secret: str | None = None
    app_id: str | None = None
    secret_token: str | None = None
    events: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    chat_ids: tuple[base.Int, ...] = ()
    guild_ids: tuple[base.ScalarStr, ...] = ()
    users: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    bot_name: str | None = None
    application_id: base.ScalarStr | None = None
    public_key: str | None = None
    allowed_roles: tuple[base.ScalarStr, ...] = ()
    allowed_tenants: tuple[str, ...] = ()
    approval_allowed_users: tuple[str, ...] = ()
    approval_channel: str | None = None
    # HTTP
    path: str | None = None
    methods: tuple[str, ...] = ()
    required_headers: base.StrMap = Field(default_factory=dict)
    webhook_secret: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    max_body_bytes: base.PositiveInt | None = None
    mode: ListenMode | None = None
    base_url: str | None = None
    # Schedule
    cron: str | None = None
    timezone: str | None = None
    # PagerDuty
    api_key: str | None = None
    routing_key: str | None = None
    service_ids: tuple[str, ...] = ()
    # GitHub
    github_events: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()
    token: str | None = None
    # Jira
    cloud_id: str | None = None
    user_email: str | None = None
    api_token: str | None = None
    email: str | None = None
    projects: tuple[str, ...] = ()
    jira_events: tuple[str, ...] = ()
    # GitLab, Bitbucket (and Opsgenie's `api_url`): the API address, checked like `base_url`
    api_url: str | None = None
    gitlab_events: tuple[str, ...] = ()
    bitbucket_events: tuple[str, ...] = ()
    username: str | None = None
    app_password: str | None = None
    # Opsgenie
    webhook_token: str | None = None
    allowed_actions: tuple[str, ...] = ()
    # WhatsApp
    access_token: str | None = None
    business_account_id: base.ScalarStr | None = None
    phone_number_id: base.ScalarStr | None = None
    verify_token: str | None = None
    allowed_numbers: tuple[base.ScalarStr, ...] = ()
    api_version: str | None = None
    # common
    port: base.Port | None = None
    host: str | None = None

    @property
    def all_webhook_secrets(self) -> tuple[str, ...]:
        """`webhook_secret` then `webhook_secrets` (rotation: any of them verifies a request)."""
        first = (self.webhook_secret,) if self.webhook_secret else ()
        return first + tuple(s for s in self.webhook_secrets if s and s != self.webhook_secret)


class CommandBinding(base.Model):
    """`spec.commands.<cmd>`: what a slash command or event runs."""

    agent: str | None = None
    fleet: str | None = None
    flow: str | None = None
    description: str = ""


class TriggerSpec(base.Model):
    """`spec` of a Trigger."""

    type: TriggerType
    config: TriggerConfig = Field(default_factory=base.shared_default(TriggerConfig))
    enabled: base.Bool = True
    commands: dict[str, CommandBinding] = Field(default_factory=dict)
    default_agent: str | None = None


class Trigger(base.ResourceModel):
    """`kind: Trigger`."""

    kind: Literal["Trigger"] = "Trigger"
    spec: TriggerSpec
