"""The daemon configuration (`aofd serve --config FILE`): frozen pydantic models.

The contract is DESIGN.md section 4: `sources[]`, listen addresses, `state_dir`,
`audit_dir`, the substitution allow-list; more sections grow here (executables for the
command guard, model providers, platform base URLs). Every model forbids unknown keys:
a typo in the daemon config is an error with file:line, never a silently ignored setting.

Loading the YAML (with positions) happens in `aofd.daemon.config`; this module only
declares shapes and defaults, so every layer can read settings without doing I/O.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The kinds a source may define (kept here as plain strings: settings sits below resources).
ALL_KIND_NAMES: tuple[str, ...] = (
    "Context",
    "Agent",
    "AgentFleet",
    "AgentFlow",
    "Trigger",
    "FlowBinding",
    "Workflow",
)

DEFAULT_SUBSTITUTION_ALLOW: tuple[str, ...] = (
    "KUBECONFIG*",
    "AOF_*",
    "AOFD_*",
    "SLACK_*",
    "TELEGRAM_*",
    "WHATSAPP_*",
    "PAGERDUTY_*",
    "GITHUB_*",
    "WEBHOOK_*",
    "DISCORD_*",
    "TEAMS_*",
    "JIRA_*",
    "GITLAB_*",
    "BITBUCKET_*",
    "OPSGENIE_*",
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: object) -> float:
    """`60s`, `5m`, `1h`, `250ms` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            number = float(m.group(1))
            unit = m.group(2) or "s"
            return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GitRef(_Strict):
    branch: str | None = None
    tag: str | None = None
    commit: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> GitRef:
        given = [k for k in ("branch", "tag", "commit") if getattr(self, k)]
        if len(given) > 1 and set(given) != {"branch", "commit"}:
            raise ValueError(f"ref must name one of branch, tag or commit, not {' and '.join(given)}")
        return self

    def describe(self) -> str:
        if self.commit:
            return f"commit {self.commit}"
        if self.tag:
            return f"tag {self.tag}"
        return f"branch {self.branch or 'main'}"


class GitAuth(_Strict):
    """Credentials are always read from files, re-read on every fetch (rotation works)."""

    token_file: Path | None = None
    username: str | None = None
    username_file: Path | None = None
    password_file: Path | None = None
    ssh_key_file: Path | None = None
    ssh_public_key_file: Path | None = None
    ssh_passphrase_file: Path | None = None
    known_hosts_file: Path | None = None


class GitVerify(_Strict):
    """`sources[].git.verify`: which signatures a fetched revision must carry (docs/operations.md).

    `head`: the commit to apply is signed; `tag`: the tracked annotated tag is signed;
    `tag_and_head`: both. The tag modes need `ref: {tag: ...}` (a branch has no tag to check).
    Keys are read from the files on every fetch that verifies (so SIGHUP re-reads them); a
    missing or unreadable file fails closed. `signers`, when given, are the identities (an
    allowed_signers principal, an OpenPGP user ID's email or the whole user ID) allowed to sign.
    A new revision must descend from the applied one (no force-push back to an older signed
    commit, no tag moved back) unless `allow_rollback` is true.
    """

    mode: Literal["head", "tag", "tag_and_head"] = "head"
    ssh_allowed_signers_file: Path | None = None
    openpgp_keys_file: Path | None = None
    signers: tuple[str, ...] = ()
    allow_rollback: bool = False

    @model_validator(mode="after")
    def _keys(self) -> GitVerify:
        if self.ssh_allowed_signers_file is None and self.openpgp_keys_file is None:
            raise ValueError(
                "verify needs a key file: ssh_allowed_signers_file, openpgp_keys_file or both "
                "(nothing could ever be trusted without one)"
            )
        if any(not s.strip() for s in self.signers):
            raise ValueError(f"signers must be non-empty identities, got {list(self.signers)!r}")
        return self


class GitSourceSpec(_Strict):
    url: str
    ref: GitRef = GitRef(branch="main")
    path: str = "."
    interval: Annotated[float, Field(gt=0)] = 60.0
    timeout: Annotated[float, Field(gt=0)] = 60.0
    auth: GitAuth | None = None
    verify: GitVerify | None = None

    @model_validator(mode="after")
    def _tag_modes(self) -> GitSourceSpec:
        if self.verify is not None and self.verify.mode != "head" and not self.ref.tag:
            raise ValueError(
                f"verify.mode {self.verify.mode} checks the signature of the tracked tag, but ref is "
                f"{self.ref.describe()}: track a tag (ref: {{tag: ...}}) or use mode: head"
            )
        return self

    @field_validator("interval", "timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not re.match(r"^(file|https?|ssh|git)://", value):
            raise ValueError("url must start with file://, https://, http://, ssh:// or git://")
        return value


DEFAULT_DIRECTORY_SETTLE = 1.0
"""Seconds a changed directory tree must stay unchanged before it is applied (docs/operations.md).

Editors save in one write or a rename, but `cp` of a large file, network file systems and
configuration management tools that fall back to in-place writes pause mid-file; pauses of
150 ms were seen. One second is several times that, and still feels immediate when editing.
"""


class DirectorySourceSpec(_Strict):
    path: Path
    watch: bool = True
    settle: Annotated[float, Field(ge=0, le=300)] = DEFAULT_DIRECTORY_SETTLE

    @field_validator("settle", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


class SourceSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    git: GitSourceSpec | None = None
    directory: DirectorySourceSpec | None = None
    kinds: tuple[str, ...] = ALL_KIND_NAMES
    webhook_secret_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        if (self.git is None) == (self.directory is None):
            raise ValueError("a source has exactly one of git: or directory:")
        unknown = [k for k in self.kinds if k not in ALL_KIND_NAMES]
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; kinds are {list(ALL_KIND_NAMES)}")
        return self


class SubstitutionSpec(_Strict):
    allow: tuple[str, ...] = DEFAULT_SUBSTITUTION_ALLOW


class ExecutablesSpec(_Strict):
    """Bare tool names -> pinned absolute paths. Only these can ever be executed."""

    paths: dict[str, Path] = Field(default_factory=dict)
    helpers_dir: Path | None = None
    allowed_credential_plugins: tuple[str, ...] = ()
    command_timeout: float = 60.0
    max_output_bytes: int = 1024 * 1024
    mcp_servers: dict[str, Path] = Field(default_factory=dict)
    """MCP server names -> pinned absolute paths: the only programs an agent's stdio MCP server
    may start (docs/mcp.md "Pinning"); never a command-guard tool."""
    mcp_endpoint_hosts: tuple[str, ...] = ()
    """When non-empty, the only hosts (or their subdomains) an http/sse MCP server may reach."""
    mcp_allow_loopback: bool = False
    """Let http/sse MCP servers reach loopback addresses (a server on this host)."""

    @model_validator(mode="after")
    def _mcp_servers_apart(self) -> ExecutablesSpec:
        for name, path in self.mcp_servers.items():
            if not name or "/" in name or "\\" in name:
                raise ValueError(f"mcp_servers: {name!r} must be a bare command name")
            if not path.is_absolute():
                raise ValueError(f"mcp_servers.{name}: {str(path)!r} is not an absolute path")
            if name in self.paths or name in ("kubectl", "helm"):
                raise ValueError(
                    f"mcp_servers.{name}: a command-guard tool (in executables.paths, or kubectl/helm) "
                    "is never started as an MCP server"
                )
        return self


class ModelsSpec(_Strict):
    """Model provider settings; keys come from files or the environment, never from resources."""

    anthropic_api_key_file: Path | None = None
    anthropic_base_url: str | None = None
    openai_api_key_file: Path | None = None
    openai_base_url: str | None = None
    google_api_key_file: Path | None = None
    request_timeout: float = 120.0
    max_retries: int = 4


PLATFORM_URL_ENV: dict[str, str] = {
    "slack_api_url": "AOFD_SLACK_API_URL",
    "slack_response_url_base": "AOFD_SLACK_RESPONSE_URL_BASE",
    "telegram_api_url": "AOFD_TELEGRAM_API_URL",
    "whatsapp_api_url": "AOFD_WHATSAPP_API_URL",
    "jira_api_url": "AOFD_JIRA_API_URL",
    "gitlab_api_url": "AOFD_GITLAB_API_URL",
    "bitbucket_api_url": "AOFD_BITBUCKET_API_URL",
    "opsgenie_api_url": "AOFD_OPSGENIE_API_URL",
    "discord_api_url": "AOFD_DISCORD_API_URL",
    "teams_openid_metadata_url": "AOFD_TEAMS_OPENID_METADATA_URL",
    "teams_token_url": "AOFD_TEAMS_TOKEN_URL",
}
"""The environment variable that sets each `platforms` base URL the config file leaves out
(read by `aofd.daemon.config`; the file wins over the environment)."""


def _is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(value: str) -> str:
    """`value` if it can be a platform API base URL, else `ValueError` saying why.

    An absolute `https://` URL with a host, no user info, query or fragment; `http://` only to a
    loopback address (a test server, a local proxy): aofd sends bot tokens there. The value is
    never repeated in the error (it could hold credentials).
    """
    try:
        parts = urllib.parse.urlsplit(value.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("must be an absolute https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold user info (user:password@)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query (?) or a fragment (#)")
    if parts.scheme == "http" and not _is_loopback_host(host):
        raise ValueError("must use https:// (http:// is only allowed to a loopback address)")
    return value.strip()


class PlatformsSpec(_Strict):
    """Base URLs of chat platform APIs (tests and proxies point these at other servers).

    Each is an `https://` URL (`http://` only to a loopback address: `check_base_url`), and may
    come from the environment instead of the file (`PLATFORM_URL_ENV`).

    `slack_response_url_base`: a slash command's `response_url` is used only when it is under
    this base (same scheme, host and port, no user info); any other URL is refused, so a forged
    payload cannot make aofd POST elsewhere.
    """

    slack_api_url: str = "https://slack.com/api/"
    slack_response_url_base: str = "https://hooks.slack.com/"
    telegram_api_url: str = "https://api.telegram.org"
    whatsapp_api_url: str = "https://graph.facebook.com/v19.0"
    jira_api_url: str = "https://api.atlassian.com"
    """Jira Cloud by `cloud_id`: `<jira_api_url>/ex/jira/<cloud_id>/rest/api/3/...`."""
    gitlab_api_url: str = "https://gitlab.com/api/v4"
    bitbucket_api_url: str = "https://api.bitbucket.org/2.0"
    opsgenie_api_url: str = "https://api.opsgenie.com"
    discord_api_url: str = "https://discord.com/api/v10"
    """Discord's REST API: interaction follow-ups (`/webhooks/<application_id>/<token>`)."""
    teams_openid_metadata_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    """The Bot Framework's OpenID metadata: its `jwks_uri` holds the keys Teams tokens are signed with."""
    teams_token_url: str = "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"  # noqa: S105
    """Where a Teams trigger's `app_id`/`app_password` get the token its replies are posted with."""
    trigger_base_urls: tuple[str, ...] = ()
    """API addresses a Trigger's own `config.base_url` may name (a proxy, a regional endpoint);
    any other is an error, because the listener sends the Trigger's tokens there."""

    @field_validator("slack_api_url", "slack_response_url_base", "telegram_api_url", "whatsapp_api_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("jira_api_url", "gitlab_api_url", "bitbucket_api_url", "opsgenie_api_url")
    @classmethod
    def _tracker_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("discord_api_url", "teams_openid_metadata_url", "teams_token_url")
    @classmethod
    def _chat_url(cls, value: str) -> str:
        return check_base_url(value)


class AuditSpec(_Strict):
    """The audit journal's tunables (maps onto `aofd.audit.segment.JournalOptions`).

    `hmac_key_file` keys the digests of secret argv values. `seal_interval` is the epoch length
    of the log seals (docs/audit-sealing.md): it must equal the epoch length of the key chain
    `aofctl audit setup-keys` made in the state dir; without that sealing state nothing is sealed.
    """

    hmac_key_file: Path | None = None
    max_segment_bytes: Annotated[int, Field(gt=4096)] = 64 * 1024 * 1024
    max_segment_age: float = 24 * 3600.0
    retention: float | None = None
    group_commit_interval: Annotated[float, Field(gt=0)] = 0.05
    write_timeout: Annotated[float, Field(gt=0)] = 5.0
    seal_interval: float = 60.0

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: object) -> object:
        if isinstance(data, dict) and "checkpoint_every" in data:
            raise ValueError(
                "audit.checkpoint_every was removed (its checkpoints carried no MAC and were never "
                "verified): delete it; to make the log tamper-evident, run `aofctl audit setup-keys "
                "--state-dir STATE_DIR` and set audit.seal_interval (docs/audit-sealing.md)"
            )
        return data

    @field_validator("max_segment_age", "group_commit_interval", "write_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)

    @field_validator("seal_interval", mode="before")
    @classmethod
    def _seal_interval(cls, value: object) -> float:
        seconds = parse_duration(value)
        if seconds < 1 or seconds != int(seconds):
            raise ValueError("seal_interval is a whole number of seconds, at least 1s (such as 60s or 5m)")
        return seconds

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, str) and value.strip().endswith("d"):
            return float(value.strip()[:-1]) * 86400.0
        return parse_duration(value)


ADMIN_TOKEN_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # noqa: S105 - a name pattern, not a secret
"""An operator's name in `admin_api.tokens`: they decide approvals as `admin:<name>`."""


class AdminTokenSpec(_Strict):
    """One operator's own admin token: good for the whole admin API, and the only kind that can
    decide approvals (`aofctl approve`), as `admin:<name>`. Read from `token_file`, else from
    the systemd credential `admin-token-<name>`."""

    name: Annotated[str, Field(pattern=ADMIN_TOKEN_NAME)]
    token_file: Path | None = None


class AdminApiSpec(_Strict):
    """Who may use the admin API (DESIGN.md section 4) and how big a `POST /api/v1/diff` may be.

    `token_file` holds the bearer token every request needs except `/healthz`, `/readyz` (and
    `/metrics` when `metrics_open`); a systemd credential `admin-token` is used when no file is
    named. `tokens` are operators' named tokens (`AdminTokenSpec`), each as good as that one,
    and the only ones that decide approvals. A unix socket is created with `socket_mode` and,
    when given, `socket_group`.
    """

    token_file: Path | None = None
    tokens: tuple[AdminTokenSpec, ...] = ()
    metrics_open: bool = False
    socket_group: str | None = None
    socket_mode: int = 0o660
    max_diff_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> int:
        if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value.strip()):
            value = int(value.strip().replace("o", ""), 8)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
            raise ValueError("socket_mode is an octal file mode written as a string, such as '0660'")
        if value & 0o007:
            raise ValueError("socket_mode must not give other users access (use socket_group)")
        return value

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, value: tuple[AdminTokenSpec, ...]) -> tuple[AdminTokenSpec, ...]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"each operator has one token; repeated names: {dupes}")
        return value


class HttpSpec(_Strict):
    """Limits of the webhook (`listen`) and admin HTTP listeners (docs/operations.md).

    Webhook senders give up early (Slack after 3 s, PagerDuty after a few, GitHub after 10) and
    send headers and body at once, so these only ever cut slow or stalled clients: 10 s from
    accept to the end of the headers, 30 s for the whole body, 75 s idle between requests on a
    kept-alive connection (longer than the usual 60 s of proxies in front), 30 s for an answer
    to drain to a client that stopped reading. `max_connections` (webhook listener) and
    `admin_max_connections` default to a share of the open-file limit.
    """

    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    keepalive_timeout: Annotated[float, Field(gt=0, le=3600)] = 75.0
    write_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32 * 1024
    max_connections: Annotated[int, Field(ge=1)] | None = None
    admin_max_connections: Annotated[int, Field(ge=1)] | None = None

    @field_validator("header_timeout", "body_timeout", "keepalive_timeout", "write_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


_BYTES = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_BYTE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_bytes(value: object) -> int:
    """`64MiB`, `512KiB`, `1GiB`, `100B` or a bare number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _BYTES.match(value)
        if m:
            return int(m.group(1)) * _BYTE_UNITS[m.group(2) or "B"]
    raise ValueError(f"expected a size such as 1MiB, 512KiB or a number of bytes, got {value!r}")


class RepoLimitsSpec(_Strict):
    """Caps on what one source's tree may hold (`aofd.resources.snapshot.Limits`), per source.

    The defaults are the historical caps; raise `max_files` and `max_tree_bytes` for a repo of
    more than 10,000 resource files. Sizes take `KiB`, `MiB` and `GiB` suffixes.
    """

    max_files: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    max_file_bytes: Annotated[int, Field(ge=1, le=1024**3)] = 1024**2
    max_tree_bytes: Annotated[int, Field(ge=1, le=1024**4)] = 64 * 1024**2
    max_scalar_bytes: Annotated[int, Field(ge=1, le=1024**3)] = 1024**2
    max_depth: Annotated[int, Field(ge=2, le=256)] = 64
    max_nodes_per_file: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000

    @field_validator("max_file_bytes", "max_tree_bytes", "max_scalar_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_bytes(value)


def default_member_name() -> str:
    """The host name made label-safe (lowercase, `-` for anything else, at most 63 characters)."""
    raw = os.uname().nodename.split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:63].strip("-")
    return name or "aofd"


class EtcdSpec(_Strict):
    """`cluster.etcd`: where the etcd cluster is and how to authenticate to it.

    `endpoints` are `http://host:port` or `https://host:port` URLs, all of one scheme. With
    `https://` the server is verified against `ca_file` (the system roots when not given);
    `cert_file` + `key_file` are a client certificate (both or neither); `user` +
    `password_file` log in to etcd's own auth (both or neither; the password is read from the
    file at start). `tls_server_name` is the name the server certificates carry, needed with
    TLS and several endpoints (with one, its host name is checked). Host names are resolved to
    IPv4 addresses when aofd starts (the etcd client connects to addresses). `dial_timeout`
    bounds joining at start, `request_timeout` each
    request (a delivery claim, a lease renewal).
    """

    endpoints: Annotated[tuple[str, ...], Field(min_length=1)]
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    tls_server_name: str | None = None
    dial_timeout: float = 5.0
    request_timeout: float = 1.0

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        schemes: set[str] = set()
        for i, url in enumerate(value):
            try:
                parts = urllib.parse.urlsplit(url.strip())
                port = parts.port
            except ValueError:
                raise ValueError(f"endpoint {i + 1} is not a URL such as https://etcd-1:2379") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
                raise ValueError(
                    f"endpoint {i + 1} must be http://HOST:PORT or https://HOST:PORT (such as https://etcd-1:2379)"
                )
            if parts.username is not None or parts.password is not None:
                raise ValueError(f"endpoint {i + 1} must not hold user info: use user and password_file")
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError(f"endpoint {i + 1} must not have a path, a query or a fragment")
            schemes.add(parts.scheme)
        if len(schemes) > 1:
            raise ValueError("endpoints must all be https:// or all be http://, not a mix")
        return tuple(u.strip() for u in value)

    @field_validator("dial_timeout", "request_timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        seconds = parse_duration(value)
        if not 0 < seconds <= 300:
            raise ValueError("must be more than 0s and at most 5m")
        return seconds

    @model_validator(mode="after")
    def _pairs(self) -> EtcdSpec:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if (self.user is None) != (self.password_file is None):
            raise ValueError("user and password_file go together: give both or neither")
        if not self.tls and (self.ca_file or self.cert_file or self.tls_server_name):
            raise ValueError("ca_file, cert_file, key_file and tls_server_name need https:// endpoints")
        if self.tls and len(self.endpoints) > 1 and not self.tls_server_name:
            raise ValueError(
                "several https:// endpoints need tls_server_name: the one name all etcd server "
                "certificates carry (the client checks every member against it)"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.endpoints[0].strip().startswith("https://")

    def host_ports(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each endpoint."""
        out = []
        for url in self.endpoints:
            parts = urllib.parse.urlsplit(url)
            out.append((parts.hostname or "", parts.port or 0))
        return tuple(out)


class ClusterSpec(_Strict):
    """`cluster:` (DESIGN.md section 5): run as one of a set of replicas coordinated by etcd.

    Replicas with the same `name` form one set (their keys live under `/aofd/<name>/`); each
    needs its own `member` name (default: the host name). `lease_ttl` is the session lease:
    a leader that stops renewing it loses the singleton duties after at most this long
    (followers take over then); at least 3s. `misfire_grace` is how late a missed schedule tick
    may still be fired by a new leader (at least a failover: `min_misfire_grace`);
    `etcd.request_timeout` at most a third of `lease_ttl`; `claim_ttl` how long a delivery
    claim is kept (at least the platforms' retry horizon). See docs/operations.md "Replicas".
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    member: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)] = Field(
        default_factory=default_member_name
    )
    etcd: EtcdSpec
    lease_ttl: float = 10.0
    misfire_grace: float = 30.0
    claim_ttl: float = 3600.0

    @field_validator("lease_ttl", mode="before")
    @classmethod
    def _lease_ttl(cls, value: object) -> float:
        seconds = parse_duration(value)
        if seconds < 3 or seconds > 300 or seconds != int(seconds):
            raise ValueError("lease_ttl is a whole number of seconds from 3s to 5m (such as 10s)")
        return seconds

    @field_validator("misfire_grace", mode="before")
    @classmethod
    def _grace(cls, value: object) -> float:
        seconds = parse_duration(value)
        if not 0 <= seconds <= 86400:
            raise ValueError("misfire_grace must be from 0s to 24h")
        return seconds

    @field_validator("claim_ttl", mode="before")
    @classmethod
    def _claim_ttl(cls, value: object) -> float:
        seconds = parse_duration(value)
        if not 600 <= seconds <= 7 * 86400:
            raise ValueError("claim_ttl must be from 10m to 168h (platforms retry for up to an hour)")
        return seconds

    @model_validator(mode="after")
    def _timings(self) -> ClusterSpec:
        ttl, timeout = self.lease_ttl, self.etcd.request_timeout
        if timeout > ttl / 3:
            raise ValueError(
                f"etcd.request_timeout ({timeout:g}s) must be at most a third of lease_ttl ({ttl:g}s): "
                "the lease is renewed every lease_ttl/3, and a renewal that hangs longer outlives it; "
                "lower request_timeout or raise lease_ttl"
            )
        floor = min_misfire_grace(ttl)
        if self.misfire_grace < floor:
            raise ValueError(
                f"misfire_grace ({self.misfire_grace:g}s) must be at least {floor:g}s with lease_ttl "
                f"{ttl:g}s (lease_ttl + max(1s, lease_ttl/5) + 2s): a failover takes up to that "
                "long, and the new leader catches up only ticks within the grace"
            )
        return self


def min_misfire_grace(lease_ttl: float) -> float:
    """The shortest `misfire_grace` that still covers a failover (see `ClusterSpec`)."""
    return lease_ttl + max(1.0, lease_ttl / 5) + 2.0


class DaemonConfig(_Strict):
    sources: tuple[SourceSpec, ...] = ()
    repo_limits: RepoLimitsSpec = RepoLimitsSpec()
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:8081"
    admin_api: AdminApiSpec = AdminApiSpec()
    http: HttpSpec = HttpSpec()
    state_dir: Path = Path("/var/lib/aofd")
    audit_dir: Path = Path("/var/log/aofd")
    audit: AuditSpec = AuditSpec()
    substitution: SubstitutionSpec = SubstitutionSpec()
    executables: ExecutablesSpec = ExecutablesSpec()
    models: ModelsSpec = ModelsSpec()
    platforms: PlatformsSpec = PlatformsSpec()
    drain_grace_seconds: float = 30.0
    run_history: int = 200
    log_format: Literal["auto", "json", "console"] = "auto"
    cluster: ClusterSpec | None = None
    """Replicas coordinated through etcd (docs/operations.md "Replicas"); None: a single host."""

    @model_validator(mode="after")
    def _unique_sources(self) -> DaemonConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return self
