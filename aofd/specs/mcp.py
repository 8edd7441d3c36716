"""Compiled MCP servers of an agent, and the names their tools get before the model (pure).

This module owns the runtime's frozen view of an agent's MCP servers, merged from upstream's
three forms (AOF-UPSTREAM.md section 1.2):

- `mcp_servers[]` (`McpServerConfig`: `name`, `transport`, `command`, `args`, `env`,
  `endpoint`, `tools`, `init_options`, `timeout_secs`, `auto_reconnect`), taken as written;
- a type-based tool `{type: MCP, config: {name, command, args, env, timeout_seconds}}`, a stdio
  server (a list `command` is argv[0] and its first arguments; the name defaults to `mcp`);
- a qualified tool `{name, source: mcp, server, timeout_secs}`, which narrows `server`'s tool
  filter to the tools named this way and may give one tool its own timeout.

`McpServerSpec.digest` identifies a server's configuration: the runtime keys running servers by
Context and digest, so the same config under two Contexts is two servers and a changed config is
a new server (make-before-break). `model_tool_name` gives the name a tool is offered to the model
under: `<server>__<tool>`, within the model APIs' limit of 64 characters of `[A-Za-z0-9_-]`.

Problems are reported at the agent's location; a command that is a path, a wrapper or an
interpreter (`npx`, `uvx`, `node`, `python`) is a warning here (upstream's examples use `npx`)
and keeps the server from starting at apply, where the daemon's pinned executables are known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from aofd.resources.kinds import agent as agent_kind
from aofd.specs import http_policy, policy
from aofd.specs.problems import Problem

Transport = Literal["stdio", "http", "sse"]
Loc = tuple[str | int, ...]

MAX_TOOL_NAME = 64
"""The longest tool name the model APIs accept (Anthropic, OpenAI and Gemini: 64)."""
SEPARATOR = "__"
SERVER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?$")
"""A server name: letters, digits and single dashes inside, at most 32 characters (never `__`)."""
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 6
MAX_TIMEOUT_SECS = 300.0
"""The longest `timeout_secs` a server may have (a start, a listing, a call)."""
GUARD_TOOLS: frozenset[str] = frozenset({"kubectl", "helm", "curl", "git", "oc", "kustomize", "jq"})
"""Command-guard tools that are never started as MCP servers (the daemon also refuses every name in
its `executables.paths`)."""
_STATIC_ENDPOINTS = http_policy.HttpPolicy(allow_loopback=True)
"""What every endpoint must pass whatever the daemon allows: http(s), no credentials, no
link-local or metadata address (the daemon's own policy decides loopback and hosts at start)."""


@dataclasses.dataclass(frozen=True, slots=True)
class McpServerSpec:
    """One MCP server an agent uses, as the runtime starts it.

    `command` is a bare name resolved through the daemon's pinned executables at start (never a
    path); `tools` is the filter (empty: every tool the server lists); `tool_timeouts` gives some
    tools a timeout of their own (seconds).
    """

    name: str
    transport: Transport = "stdio"
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    endpoint: str | None = None
    tools: frozenset[str] = frozenset()
    tool_timeouts: tuple[tuple[str, float], ...] = ()
    timeout_secs: float = 30.0
    auto_reconnect: bool = True
    digest: str = dataclasses.field(init=False, compare=False, repr=False)
    """sha256 over the canonical JSON of every other field: equal configs, equal digests."""

    def __post_init__(self) -> None:
        body = {
            "name": self.name,
            "transport": self.transport,
            "command": self.command,
            "args": list(self.args),
            "env": [list(pair) for pair in self.env],
            "endpoint": self.endpoint,
            "tools": sorted(self.tools),
            "tool_timeouts": [list(pair) for pair in self.tool_timeouts],
            "timeout_secs": self.timeout_secs,
            "auto_reconnect": self.auto_reconnect,
        }
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        object.__setattr__(self, "digest", hashlib.sha256(text.encode()).hexdigest())

    def offers(self, tool: str) -> bool:
        """Whether the filter lets `tool` (the server's own name for it) through."""
        return not self.tools or tool in self.tools

    def timeout_for(self, tool: str) -> float:
        """The tool's own timeout if a qualified tool gave one, else the server's."""
        return dict(self.tool_timeouts).get(tool, self.timeout_secs)

    def describe(self) -> str:
        """What the server runs or where it is, for messages (never its env values)."""
        if self.transport == "stdio":
            return " ".join([self.command or "?", *self.args])
        return f"{self.transport} {self.endpoint}"


def servers_of(
    tools: Sequence[agent_kind.ToolSpec], servers: Sequence[agent_kind.McpServer], loc: Loc
) -> tuple[tuple[McpServerSpec, ...], list[Problem]]:
    """The agent's MCP servers from its three forms, and the problems that keep any from running."""
    problems: list[Problem] = []
    found: dict[str, McpServerSpec] = {}
    where: dict[str, Loc] = {}

    def add(spec: McpServerSpec, at: Loc) -> None:
        if spec.name in found:
            problems.append(Problem(at, f"MCP server {spec.name!r} is defined twice"))
            return
        problems.extend(_server_problems(spec, at))
        found[spec.name] = spec
        where[spec.name] = at

    for index, server in enumerate(servers):
        at: Loc = (*loc, "mcp_servers", index)
        if server.init_options is not None:
            problems.append(
                Problem(
                    (*at, "init_options"),
                    f"MCP server {server.name!r}: init_options is not sent (MCP's initialize has no "
                    "place for it)",
                    "warning",
                    "mcp-init-options",
                )
            )
        add(
            McpServerSpec(
                name=server.name,
                transport=server.transport.value,
                command=server.command,
                args=server.args,
                env=tuple(sorted(server.env.items())),
                endpoint=server.endpoint,
                tools=frozenset(server.tools),
                timeout_secs=float(server.timeout_secs),
                auto_reconnect=server.auto_reconnect,
            ),
            at,
        )
    narrowed: dict[str, set[str]] = {}
    timeouts: dict[str, dict[str, float]] = {}
    for index, tool in enumerate(tools):
        at = (*loc, "tools", index)
        if isinstance(tool, agent_kind.TypedTool) and tool.type is agent_kind.ToolType.MCP:
            config = tool.config
            command: Sequence[str] = (
                [config.command] if isinstance(config.command, str) else list(config.command or ())
            )
            add(
                McpServerSpec(
                    name=config.name or "mcp",
                    command=command[0] if command else None,
                    args=(*command[1:], *config.args),
                    env=tuple(sorted(config.env.items())),
                    timeout_secs=float(config.timeout_seconds or 30),
                ),
                at,
            )
        elif isinstance(tool, agent_kind.QualifiedTool) and tool.source is agent_kind.ToolSource.MCP:
            if not tool.enabled:
                continue
            if not tool.server:
                problems.append(
                    Problem(
                        (*at, "server"),
                        f"MCP tool {tool.name!r} names no server; it is not offered to the model",
                        "warning",
                        "mcp-unknown-server",
                    )
                )
                continue
            narrowed.setdefault(tool.server, set()).add(tool.name)
            if tool.timeout_secs is not None:
                timeouts.setdefault(tool.server, {})[tool.name] = float(tool.timeout_secs)
    for server_name, names in narrowed.items():
        spec = found.get(server_name)
        if spec is None:
            problems.append(
                Problem(
                    (*loc, "tools"),
                    f"MCP tools {', '.join(sorted(names))} name server {server_name!r}, which the "
                    "agent does not define in mcp_servers; they are not offered to the model",
                    "warning",
                    "mcp-unknown-server",
                )
            )
            continue
        found[server_name] = dataclasses.replace(
            spec,
            tools=spec.tools | frozenset(names) if spec.tools else frozenset(names),
            tool_timeouts=tuple(sorted(timeouts.get(server_name, {}).items())),
        )
    return tuple(found.values()), problems


def _server_problems(spec: McpServerSpec, at: Loc) -> list[Problem]:
    problems: list[Problem] = []
    label = f"MCP server {spec.name!r}"
    if not SERVER_NAME.match(spec.name):
        problems.append(
            Problem(
                (*at, "name"),
                f"{label}: a server name is 1-32 letters, digits and single dashes "
                "(it is the first part of the tool names the model sees)",
            )
        )
    if spec.transport == "stdio":
        if not spec.command:
            problems.append(Problem((*at, "command"), f"{label}: a stdio server needs a command"))
        elif spec.command in GUARD_TOOLS:
            problems.append(
                Problem(
                    (*at, "command"),
                    f"{label}: command {spec.command!r} is a command-guard tool, never an MCP server "
                    "(its commands run through the guard: allowed_commands, approval, audit)",
                )
            )
        elif "/" in spec.command or "\\" in spec.command or policy.is_wrapper(spec.command):
            what = "a path" if "/" in spec.command or "\\" in spec.command else "a wrapper or interpreter"
            problems.append(
                Problem(
                    (*at, "command"),
                    f"{label}: command {spec.command!r} is {what}"
                    "; aofd starts only bare names pinned in the daemon's executables.mcp_servers, so "
                    "this server will not start (install the server and pin its executable)",
                    "warning",
                    "mcp-unpinned-command",
                )
            )
        for index, token in enumerate(spec.args):
            bad = policy.bad_character(token)
            if bad is not None:
                problems.append(Problem((*at, "args", index), f"{label}: argument {index} {bad}"))
    elif not spec.endpoint:
        problems.append(Problem((*at, "endpoint"), f"{label}: a {spec.transport} server needs an endpoint"))
    elif not spec.endpoint.startswith(("http://", "https://")):
        problems.append(Problem((*at, "endpoint"), f"{label}: endpoint must be an http:// or https:// URL"))
    else:
        refused = _STATIC_ENDPOINTS.check(spec.endpoint)
        if refused is not None:
            problems.append(Problem((*at, "endpoint"), f"{label}: endpoint refused: {refused}"))
    if spec.timeout_secs > MAX_TIMEOUT_SECS:
        problems.append(
            Problem(
                (*at, "timeout_secs"),
                f"{label}: timeout_secs {spec.timeout_secs:g} is over the maximum of {MAX_TIMEOUT_SECS:g}",
            )
        )
    for name, message in policy.server_env_problems(dict(spec.env)):
        problems.append(Problem((*at, "env", name), f"{label}: {message}"))
    return problems


def model_tool_name(server: str, tool: str) -> str:
    """`<server>__<tool>` as the model sees it: `[A-Za-z0-9_-]`, at most 64 characters.

    Other characters become `_`; a name that had to change, or is too long, ends in `_` and six
    hex digits of sha256 over the exact `server/tool`, so two tools never share a name.
    """
    raw = f"{server}{SEPARATOR}{tool}"
    clean = _NOT_NAME_CHAR.sub("_", raw)
    if clean == raw and len(raw) <= MAX_TOOL_NAME:
        return raw
    suffix = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:_HASH_CHARS]
    return f"{clean[: MAX_TOOL_NAME - _HASH_CHARS - 1]}_{suffix}"


def assign_names(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Model tool name -> (server, tool) for the tools offered together; first one wins a clash."""
    named: dict[str, tuple[str, str]] = {}
    for server, tool in pairs:
        named.setdefault(model_tool_name(server, tool), (server, tool))
    return named


def all_servers(specs: Iterable[Sequence[McpServerSpec]]) -> tuple[McpServerSpec, ...]:
    """Every distinct server config (by digest) among several agents', in first-seen order."""
    seen: dict[str, McpServerSpec] = {}
    for group in specs:
        for spec in group:
            seen.setdefault(spec.digest, spec)
    return tuple(seen.values())


def by_digest(specs: Iterable[McpServerSpec]) -> Mapping[str, McpServerSpec]:
    return {spec.digest: spec for spec in specs}
