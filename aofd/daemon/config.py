"""Load the daemon configuration: `aofd serve --config FILE` or the zero-config `aofd serve PATH`.

The YAML goes through the same hostile-input-safe reader as resources
(`aofd.resources.documents`), so every error points at `FILE:LINE:COL`. The shapes and
defaults live in `aofd.settings`; this module only reads, validates and applies command-line
overrides. Paths in the file are resolved against the file's directory.

The platform API base URLs (`platforms.slack_api_url`, `slack_response_url_base`,
`telegram_api_url`, `whatsapp_api_url`) may also come from the daemon's environment
(`settings.PLATFORM_URL_ENV`: `AOFD_SLACK_API_URL`, ...): a value written in the file wins, the
environment fills what the file leaves out, and both go through the same validation (an error
about an environment value names the variable, with the path `<environment>`).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from aofd import errors, settings
from aofd.resources import documents, snapshot

STATE_SUBDIR = ".aofd"


@dataclasses.dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line flags that win over the config file (DESIGN.md section 4)."""

    listen: str | None = None
    admin: str | None = None
    state_dir: Path | None = None
    audit_dir: Path | None = None
    admin_token_file: Path | None = None


def is_local_address(address: str) -> bool:
    """True for a unix socket (`unix:PATH`) or a loopback TCP address (`HOST:PORT`, `[v6]:PORT`,
    an empty host): only this host can connect there. The admin API's token rule and `aofctl`'s
    clear-text warning both ask this."""
    if address.startswith("unix:"):
        return True
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return False
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ZERO_CONFIG_TOOLS = ("kubectl", "helm", "curl")
"""Tools `aofd serve PATH` pins (`executables.paths`) from its own PATH (then the directory of its
own interpreter, a venv's `bin/`) at start-up; a config file names them instead."""
ZERO_CONFIG_MCP_SERVERS = ("mcp-server-time",)
"""MCP servers `aofd serve PATH` pins (`executables.mcp_servers`) the same way: the example repo's
MCP agent uses `mcp-server-time`."""


def pinned_tools(
    names: tuple[str, ...] = ZERO_CONFIG_TOOLS, *, search_path: str | None = None
) -> dict[str, Path]:
    """Resolve bare tool names once, to real absolute paths; what is not installed is left out.

    Without `search_path`: the daemon's PATH, then the directory of its interpreter (an unactivated
    venv's `bin/`, where `pip install mcp-server-time` puts the server).
    """
    if search_path is None:
        search_path = os.pathsep.join(
            part for part in (os.environ.get("PATH", os.defpath), os.path.dirname(sys.executable)) if part
        )
    found: dict[str, Path] = {}
    for name in names:
        where = shutil.which(name, path=search_path)
        if where:
            found[name] = Path(os.path.realpath(where))
    return found


ENVIRONMENT = "<environment>"
"""The path of an issue about a setting taken from the environment."""


def _platforms_from_env(environ: Mapping[str, str], written: Mapping[str, Any]) -> dict[str, str]:
    """The platform base URLs the environment sets (non-empty) and the file leaves out."""
    return {
        field: environ[var]
        for field, var in settings.PLATFORM_URL_ENV.items()
        if field not in written and environ.get(var)
    }


def _env_issue(err: Mapping[str, Any], from_env: Mapping[str, str]) -> errors.Issue | None:
    """An issue naming the environment variable, when `err` is about a value taken from one."""
    loc = tuple(err.get("loc", ()))
    if len(loc) != 2 or loc[0] != "platforms" or loc[1] not in from_env:
        return None
    var = settings.PLATFORM_URL_ENV[str(loc[1])]
    message = f"{var} (for platforms.{loc[1]}): {err.get('msg', 'invalid value')}"
    return errors.Issue(ENVIRONMENT, 0, 0, "error", message, "config")


def zero_config(
    path: Path,
    overrides: Overrides = Overrides(),
    *,
    settle: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> settings.DaemonConfig:
    """`aofd serve PATH`: one watched directory source for every kind, state under PATH/.aofd,
    kubectl/helm/curl (and the MCP server mcp-server-time) pinned from the daemon's PATH as it is at
    start-up. `settle`
    (`--settle`) is how long a change must be quiet before it applies (default 1 s). Platform
    base URLs come from `environ` (default `os.environ`), else the defaults.

    Raises:
        errors.ConfigError: an environment variable holds a base URL that is not allowed.
    """
    root = path.resolve()
    base = root / STATE_SUBDIR
    quiet = settings.DEFAULT_DIRECTORY_SETTLE if settle is None else settle
    from_env = _platforms_from_env(os.environ if environ is None else environ, {})
    try:
        platforms = settings.PlatformsSpec.model_validate(from_env)
    except pydantic.ValidationError as exc:
        found = [_env_issue({**e, "loc": ("platforms", *e["loc"])}, from_env) for e in exc.errors()]
        issues = tuple(i for i in found if i is not None)
        raise errors.ConfigError("invalid platform base URL in the environment", issues) from None
    config = settings.DaemonConfig(
        platforms=platforms,
        executables=settings.ExecutablesSpec(
            paths=pinned_tools(), mcp_servers=pinned_tools(ZERO_CONFIG_MCP_SERVERS)
        ),
        sources=(
            settings.SourceSpec(
                name="local",
                directory=settings.DirectorySourceSpec(path=root, watch=True, settle=quiet),
            ),
        ),
        state_dir=base / "state",
        audit_dir=base / "audit",
    )
    return apply_overrides(config, overrides)


def load(
    path: Path, overrides: Overrides = Overrides(), *, environ: Mapping[str, str] | None = None
) -> settings.DaemonConfig:
    """Read and validate a daemon config file; raise `ConfigError` with issues at file:line:col.

    Platform base URLs the file leaves out are taken from `environ` (default `os.environ`).
    """
    display = str(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"{display}: cannot read the daemon config: {exc.strerror}") from exc
    parsed = documents.parse(display, content)
    problems = [i for i in parsed.issues if i.is_error]
    if problems:
        raise errors.ConfigError(f"{display}: invalid YAML", tuple(problems))
    if len(parsed.documents) != 1 or not isinstance(parsed.documents[0].data, dict):
        issue = errors.Issue(display, 1, 1, "error", "the daemon config must be one YAML mapping", "config")
        raise errors.ConfigError(f"{display}: invalid daemon config", (issue,))
    doc = parsed.documents[0]
    raw: dict[str, Any] = copy.deepcopy(doc.data)  # type: ignore[arg-type]  # checked: a mapping
    data = _resolve_paths(raw, base=path.resolve().parent)
    written = data.get("platforms")
    written = {} if written is None else written  # `platforms:` with nothing under it
    from_env: dict[str, str] = {}
    if isinstance(written, dict):
        from_env = _platforms_from_env(os.environ if environ is None else environ, written)
        if from_env:
            data["platforms"] = {**written, **from_env}
    try:
        config = settings.DaemonConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = tuple(_env_issue(err, from_env) or _issue(doc, err) for err in exc.errors(include_url=False))
        raise errors.ConfigError(f"{display}: invalid daemon config", issues) from None
    return apply_overrides(config, overrides)


def apply_overrides(config: settings.DaemonConfig, overrides: Overrides) -> settings.DaemonConfig:
    update: dict[str, Any] = {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
    token_file = update.pop("admin_token_file", None)
    if token_file is not None:
        update["admin_api"] = config.admin_api.model_copy(update={"token_file": token_file})
    if not update:
        return config
    return config.model_copy(update=update)


def repo_limits(config: settings.DaemonConfig) -> snapshot.Limits:
    """The caps on each source's tree and files (`repo_limits` in the config) as the readers take them."""
    r = config.repo_limits
    return snapshot.Limits(
        max_file_bytes=r.max_file_bytes,
        max_scalar_bytes=r.max_scalar_bytes,
        max_depth=r.max_depth,
        max_files=r.max_files,
        max_tree_bytes=r.max_tree_bytes,
        max_nodes_per_file=r.max_nodes_per_file,
    )


def _issue(doc: documents.Document, err: Mapping[str, Any]) -> errors.Issue:
    loc = tuple(err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        line, col = doc.key_position(loc)
    else:
        line, col = doc.position(loc)
    where = ".".join(str(p) for p in loc) or "(top level)"
    message = str(err.get("msg", "invalid value"))
    unknown = err.get("type") == "extra_forbidden"
    message = f"unknown setting {where!r}" if unknown else f"{where}: {message}"
    return errors.Issue(doc.path, line, col, "error", message, "config")


def _resolve_paths(data: dict[str, Any], *, base: Path) -> dict[str, Any]:
    """Make relative paths in the config relative to the config file, not the CWD."""

    def fix(value: object) -> object:
        if isinstance(value, str) and value and not value.startswith(("/", "unix:")):
            return str(base / value)
        return value

    for key in ("state_dir", "audit_dir"):
        if key in data:
            data[key] = fix(data[key])
    admin_api = data.get("admin_api")
    if isinstance(admin_api, dict) and "token_file" in admin_api:
        admin_api["token_file"] = fix(admin_api["token_file"])
    if isinstance(admin_api, dict) and isinstance(admin_api.get("tokens"), list):
        for entry in admin_api["tokens"]:
            if isinstance(entry, dict) and "token_file" in entry:
                entry["token_file"] = fix(entry["token_file"])
    cluster = data.get("cluster")
    etcd = cluster.get("etcd") if isinstance(cluster, dict) else None
    if isinstance(etcd, dict):
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            if key in etcd:
                etcd[key] = fix(etcd[key])
    sources = data.get("sources")
    if isinstance(sources, list):
        for src in sources:
            if isinstance(src, dict) and isinstance(src.get("directory"), dict):
                d = src["directory"]
                if "path" in d:
                    d["path"] = fix(d["path"])
            if isinstance(src, dict) and "webhook_secret_file" in src:
                src["webhook_secret_file"] = fix(src["webhook_secret_file"])
            git_ = src.get("git") if isinstance(src, dict) else None
            verify = git_.get("verify") if isinstance(git_, dict) else None
            if isinstance(verify, dict):
                for key in ("ssh_allowed_signers_file", "openpgp_keys_file"):
                    if key in verify:
                        verify[key] = fix(verify[key])
    return data
