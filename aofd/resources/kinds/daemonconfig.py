"""`kind: DaemonConfig`: upstream `aofctl serve`'s configuration (`ServeConfig`, AOF-UPSTREAM.md 5.2).

This module owns a model of that document so that upstream-valid files in a resource repo
load without errors. aofd does not use it (aofd has its own daemon config, `aofd.settings`);
validation returns no resource for it, only the warning in `IGNORED_MESSAGE`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aofd.resources.kinds import base

IGNORED_MESSAGE = "DaemonConfig is upstream aofctl serve's config; aofd uses its own daemon config"


class Server(base.Model):
    port: base.Port = 8080
    host: str = "0.0.0.0"  # upstream's default; aofd never binds it
    cors: base.Bool = True
    timeout_secs: base.PositiveInt = 30


class Platform(base.Model):
    """One `platforms.<name>` block: `X` beats `X_env` (the name of an env var holding X)."""

    enabled: base.Bool = True
    bot_token: str | None = None
    bot_token_env: str | None = None
    signing_secret: str | None = None
    signing_secret_env: str | None = None
    app_id: str | None = None
    bot_user_id: str | None = None
    approval_allowed_users: tuple[str, ...] = ()
    application_id: base.ScalarStr | None = None
    public_key: str | None = None
    webhook_secret: str | None = None
    webhook_secret_env: str | None = None
    access_token: str | None = None
    access_token_env: str | None = None
    verify_token: str | None = None
    phone_number_id: base.ScalarStr | None = None
    app_secret: str | None = None
    token: str | None = None
    token_env: str | None = None
    bot_name: str | None = None
    allowed_repos: tuple[str, ...] = ()
    allowed_orgs: tuple[str, ...] = ()
    base_url: str | None = None
    cloud_id: str | None = None
    cloud_id_env: str | None = None
    user_email: str | None = None
    user_email_env: str | None = None
    api_token: str | None = None
    api_token_env: str | None = None
    allowed_projects: tuple[str, ...] = ()
    allowed_events: tuple[str, ...] = ()


class Platforms(base.Model):
    slack: Platform | None = None
    discord: Platform | None = None
    telegram: Platform | None = None
    whatsapp: Platform | None = None
    github: Platform | None = None
    jira: Platform | None = None


class Directory(base.Model):
    directory: str | None = None
    watch: base.Bool = False
    enabled: base.Bool = True


class Runtime(base.Model):
    max_concurrent_tasks: base.PositiveInt = 10
    task_timeout_secs: base.PositiveInt = 300
    max_tasks_per_user: base.PositiveInt = 3
    default_agent: str | None = None


class DaemonConfigSpec(base.Model):
    server: Server = Field(default_factory=Server)
    platforms: Platforms = Field(default_factory=Platforms)
    agents: Directory | None = None
    flows: Directory | None = None
    triggers: Directory | None = None
    runtime: Runtime = Field(default_factory=Runtime)


class DaemonConfigMetadata(base.Model):
    """Upstream's metadata here is optional and its name need not be a DNS-1123 label."""

    name: str | None = None
    namespace: str | None = None
    labels: base.StrMap = Field(default_factory=dict)
    annotations: base.StrMap = Field(default_factory=dict)


class DaemonConfig(base.Model):
    """`kind: DaemonConfig` (not a resource aofd runs)."""

    api_version: str = base.API_VERSION
    kind: Literal["DaemonConfig"] = "DaemonConfig"
    metadata: DaemonConfigMetadata = Field(default_factory=DaemonConfigMetadata)
    spec: DaemonConfigSpec = Field(default_factory=DaemonConfigSpec)
