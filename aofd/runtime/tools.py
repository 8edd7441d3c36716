"""The built-in tools agents may call, each one a request to the Context's command guard.

This module owns the tool catalogue offered to models and the translation of a tool call
into a `CommandRequest(context_name, argv, run_id, agent, user, origin, tool)`:

- `kubectl` (and upstream's unified CLI tools `helm`, `git`, `docker`, `terraform`, `aws`):
  the model gives `{"args": ["get", "pods", "-n", "x"]}`; a `command` string is accepted too
  and split once with shlex (`policy.tokenize`), and that same list is what the guard checks
  and runs. A leading tool name (`kubectl get pods`) is dropped, not doubled.
- `shell` (upstream aliases `bash`, `sh`): a full argv (`{"args": ["df", "-h"]}`); never
  `sh -c`. The guard refuses interpreters and wrappers as argv[0].
- `http` (upstream alias `http_request`): `{"method", "url", "headers", "body"}` becomes a
  `curl` argv (`--proto =http,https`, no redirects, size and time caps) run through the same
  guard, so policy, approvals, rate limits and audit apply to it like to any command.

MCP tools (`aofd.specs.mcp`) are offered under `<server>__<tool>` with the description and input
schema of their server's current listing (`mcp_tools`); a call becomes a `guard.ToolRequest` to
`CommandGuard.call_tool`, and its result (or refusal, or failure) an output the model reads
(`format_mcp_result`).

It must not run a subprocess or touch the environment: the guard (`CommandRunner`) builds
the child's environment from scratch per Context and runs it. Policy refusals come back
to the model as an error tool result it can read; they never crash the run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from aofd import errors
from aofd.runtime import guard, mcpservers, ports
from aofd.runtime.providers import base
from aofd.specs import flows, http_policy, policy
from aofd.specs import mcp as mcp_specs

MAX_TOOL_OUTPUT = 16_000
"""Characters of a command's output returned to the model (the head is kept, the rest noted)."""
MAY_HAVE_RUN_TEXT: Mapping[str, str] = {
    "timeout": "timed out",
    "closed": "lost its server during the call",
}
"""How the model is told of an MCP call that got no answer but may have been carried out."""


CommandRequest = guard.CommandRequest
"""The guard's request type (context_name, argv, run_id, agent, user, origin, tool)."""


class CommandRunner(Protocol):
    """The Context's command guard (`aofd.runtime.guard.CommandGuard`): policy, approval, audit, exec.

    The result is a `commands.CommandResult` (exit_code, stdout, stderr, timed_out) or a
    `guard.Denial` (reason, stage) when the command did not run.
    """

    async def run(self, request: guard.CommandRequest) -> Any: ...


@runtime_checkable
class ToolCaller(Protocol):
    """The guard's MCP path (`aofd.runtime.guard.CommandGuard.call_tool`)."""

    async def call_tool(self, request: guard.ToolRequest) -> mcpservers.McpResult | guard.Denial: ...


class McpListing(Protocol):
    """The tools each running MCP server lists now (`aofd.runtime.mcpservers.McpPool.tools`)."""

    def tools(self, key: mcpservers.ServerKey) -> tuple[mcpservers.McpTool, ...] | None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling a tool: the run, its Context, the agent, the user and the origin."""

    run_id: str
    context_name: str
    agent: str
    user: ports.UserRef
    origin: ports.ReplyTarget
    on_command: Callable[[bool], None] | None = None
    """Told of each command (or MCP call) sent to the guard: True when it ran, False when refused."""
    time_left: Callable[[], float | None] | None = None
    """Seconds left in the run (None: no deadline); bounds an MCP call's timeout."""


@dataclasses.dataclass(frozen=True, slots=True)
class ToolOutput:
    text: str
    is_error: bool = False


_ARGV_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "args": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The arguments as a list, one token per element (no shell quoting).",
        },
        "command": {
            "type": "string",
            "description": "Alternatively the arguments as one string; it is split once, like a shell would, "
            "but no shell runs: pipes, redirects and ';' are refused.",
        },
    },
}

_HTTP_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
        "url": {"type": "string", "description": "An http:// or https:// URL."},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"type": "string"},
    },
    "required": ["url"],
}

CLI_TOOLS: Mapping[str, str] = {
    "kubectl": "Run kubectl against this environment's cluster (kubeconfig and namespace are set for you). "
    'Give the arguments after "kubectl", e.g. {"args": ["get", "pods"]}.',
    "helm": 'Run helm against this environment\'s cluster. Give the arguments after "helm".',
    "git": 'Run git. Give the arguments after "git".',
    "docker": 'Run docker. Give the arguments after "docker".',
    "terraform": 'Run terraform. Give the arguments after "terraform".',
    "aws": 'Run the aws CLI. Give the arguments after "aws".',
}
"""The description each CLI tool of `aofd.specs.flows.CLI_TOOLS` is offered with."""

_SHELL_DESCRIPTION = (
    "Run one program with arguments in this environment (no shell: pipes, redirects, ';' and "
    'interpreters are refused). Give the full argv, e.g. {"args": ["df", "-h"]}.'
)
_HTTP_DESCRIPTION = "Make one HTTP request (http/https only, redirects not followed) and return the response."


@dataclasses.dataclass(frozen=True, slots=True)
class McpRef:
    """Which MCP server and tool a model tool name stands for."""

    key: mcpservers.ServerKey
    server: str
    tool: str
    transport: str = "stdio"
    timeout: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Tool:
    """A tool offered to the model: the schema it is shown and what a call of it does."""

    name: str
    kind: str  # "cli", "shell", "http", "mcp" (or "unknown": a name the model made up, see `refuse_unknown`)
    schema: base.ToolSchema
    mcp: McpRef | None = None
    """For kind "mcp": the server and tool called."""


def builtin(name: str) -> Tool | None:
    """The built-in tool called `name` (upstream names accepted: `bash` is `shell`), or None."""
    key = flows.canonical_tool(name)
    if key is not None and key in CLI_TOOLS:
        return Tool(key, "cli", base.ToolSchema(key, CLI_TOOLS[key], _ARGV_SCHEMA))
    if key == "shell":
        return Tool("shell", "shell", base.ToolSchema("shell", _SHELL_DESCRIPTION, _ARGV_SCHEMA))
    if key == "http":
        return Tool("http", "http", base.ToolSchema("http", _HTTP_DESCRIPTION, _HTTP_SCHEMA))
    return None


def offered(names: Sequence[str]) -> tuple[Tool, ...]:
    """The tools a compiled agent is offered (`AgentSpec.tools`: built-in names, once each)."""
    return tuple(tool for tool in map(builtin, names) if tool is not None)


def mcp_tools(
    servers: Sequence[mcp_specs.McpServerSpec], context: str, listing: McpListing | None
) -> tuple[Tool, ...]:
    """The MCP tools an agent is offered in `context`: each server's tools as it lists them now
    (filter applied), named `<server>__<tool>`. A server that is not ready offers none."""
    if listing is None:
        return ()
    found: list[Tool] = []
    taken: set[str] = set()
    for spec in servers:
        key = mcpservers.key_of(context, spec)
        for listed in listing.tools(key) or ():
            if not spec.offers(listed.name):
                continue
            name = mcp_specs.model_tool_name(spec.name, listed.name)
            if name in taken:
                continue
            taken.add(name)
            description = listed.description or f"{listed.name} (MCP server {spec.name})"
            ref = McpRef(key, spec.name, listed.name, spec.transport, spec.timeout_for(listed.name))
            schema = base.ToolSchema(name, description, listed.input_schema)
            found.append(Tool(name, "mcp", schema, mcp=ref))
    return tuple(found)


def argv_for(tool: Tool, arguments: Mapping[str, Any]) -> tuple[str, ...]:
    """The argv a tool call means. Raises `errors.PolicyDenied` for malformed input."""
    if tool.kind == "http":
        return _http_argv(arguments)
    raw = arguments.get("args")
    if raw is None:
        raw = arguments.get("argv")
    if raw is None and "command" in arguments:
        raw = arguments["command"]
    if raw is None:
        raise errors.PolicyDenied(f'{tool.name}: give the arguments as {{"args": [...]}}', rule="syntax")
    if isinstance(raw, str):
        tokens = policy.tokenize(raw)
    elif isinstance(raw, list | tuple) and all(isinstance(t, str) for t in raw):
        tokens = policy.tokenize(list(raw)) if raw else ()
    else:
        raise errors.PolicyDenied(f"{tool.name}: args must be a list of strings", rule="syntax")
    if tool.kind == "cli":
        if tokens and tokens[0] == tool.name:
            tokens = tokens[1:]
        return (tool.name, *tokens)
    if not tokens:
        raise errors.PolicyDenied("shell: empty command", rule="syntax")
    return tokens


MAX_RAW_INPUT = 4096
"""Characters of a refused tool call's input kept for the audit log (as `process.command_line`)."""


def raw_input(tool: Tool, arguments: Mapping[str, Any]) -> tuple[str, ...] | str:
    """A tool call's input as the audit log shows an attempt that never became an argv: a list of
    strings as it was (with the tool name first for CLI tools), anything else as compact JSON."""
    raw = arguments.get("args", arguments.get("argv", arguments.get("command")))
    if tool.kind != "http" and isinstance(raw, list | tuple) and all(isinstance(t, str) for t in raw):
        tokens = tuple(raw)
        return (tool.name, *tokens) if tool.kind == "cli" and tokens[:1] != (tool.name,) else tokens
    if tool.kind != "http" and isinstance(raw, str):
        return raw[:MAX_RAW_INPUT]
    shown: dict[str, Any] = {k: v for k, v in arguments.items() if k in ("method", "url")}
    if tool.kind == "http":  # header values and bodies may hold credentials: their shape only
        headers = arguments.get("headers")
        if isinstance(headers, Mapping):
            shown["headers"] = sorted(str(k)[:64] for k in headers)
        if arguments.get("body") is not None:
            shown["body"] = f"<{len(str(arguments['body']))} characters>"
    else:
        shown = {str(k)[:64]: _masked(v, str(k)) for k, v in arguments.items()}
    text = json.dumps(shown, ensure_ascii=True, separators=(",", ":"), default=str)
    return text[:MAX_RAW_INPUT]


_masked = guard.mask_secrets
"""`value` with the values under secret-named keys replaced, at any depth (for the audit log)."""


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")


def _http_argv(arguments: Mapping[str, Any]) -> tuple[str, ...]:
    url = str(arguments.get("url", ""))
    if not url.startswith(("http://", "https://")):
        raise errors.PolicyDenied("http: url must start with http:// or https://", rule="http")
    refused = http_policy.HttpPolicy().check(url)
    if refused:
        raise errors.PolicyDenied(f"http: {refused}", rule="http")
    method = str(arguments.get("method", "GET")).upper()
    if method not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}:
        raise errors.PolicyDenied(f"http: method {method} is not allowed", rule="http")
    argv = ["curl", "--silent", "--show-error", "--globoff", "--proto", "=http,https", "--max-time", "30"]
    argv += ["--max-filesize", "1048576", "--include", "--request", method]
    headers = arguments.get("headers") or {}
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if not _HEADER_NAME.match(str(key)):  # `@file` would make curl read a host file
                raise errors.PolicyDenied(f"http: {str(key)[:40]!r} is not a header name", rule="http")
            argv += ["--header", f"{key}: {value}"]
    body = arguments.get("body")
    if body is not None:
        argv += ["--data-raw", body if isinstance(body, str) else json.dumps(body)]
    argv += ["--", url]
    policy.check_tokens(argv, operators=False)  # no shell: `&` in a query, `;` in a header are data
    return tuple(argv)


class Toolbox:
    """Runs tool calls through the guard; one per engine, shared by all runs (no per-run state)."""

    def __init__(self, *, runner: CommandRunner) -> None:
        self._runner = runner

    async def call(self, tool: Tool, arguments: Mapping[str, Any], ctx: CallContext) -> ToolOutput:
        """Run one tool call; refusals and failures become an error `ToolOutput`, never an exception."""
        if tool.mcp is not None:
            return await self.call_mcp(tool.mcp, arguments, ctx)
        try:
            try:
                argv = argv_for(tool, arguments)
            except errors.PolicyDenied as exc:
                # Refused before it became an argv: the guard still audits the attempt, as given.
                invalid = (exc.reason, exc.rule or "syntax")
                request = self._request(raw_input(tool, arguments), ctx, tool=tool.name, invalid=invalid)
                result = await self._send(request, ctx)
            else:
                result = await self.run(argv, ctx, tool=tool.name, literal=tool.kind == "http")
        except errors.PolicyDenied as exc:
            return ToolOutput(f"refused by the environment's policy: {exc.reason}", is_error=True)
        except errors.AuditUnavailable as exc:
            return ToolOutput(f"not run: the audit log is unavailable ({exc})", is_error=True)
        except errors.AofdError as exc:
            return ToolOutput(f"not run: {exc}", is_error=True)
        if isinstance(result, guard.Denial):
            return ToolOutput(f"not run ({result.stage}): {result.reason}", is_error=True)
        return format_result(result)

    async def call_mcp(self, ref: McpRef, arguments: Mapping[str, Any], ctx: CallContext) -> ToolOutput:
        """One MCP tool call through the guard; a refusal or a failed call is an error output."""
        if not isinstance(self._runner, ToolCaller):
            if ctx.on_command is not None:
                ctx.on_command(False)
            return ToolOutput(f"not run: {guard.NO_MCP}", is_error=True)
        request = guard.ToolRequest(
            context_name=ctx.context_name,
            key=ref.key,
            server=ref.server,
            tool=ref.tool,
            arguments=dict(arguments),
            run_id=ctx.run_id,
            agent=ctx.agent,
            user=ctx.user,
            origin=ctx.origin,
            transport=ref.transport,
            timeout=ref.timeout,
            time_left=ctx.time_left,
        )
        try:
            result = await self._runner.call_tool(request)
        except mcpservers.McpCallFailed as exc:
            if ctx.on_command is not None:
                ctx.on_command(True)  # it was called (and audited as such)
            if exc.kind in guard.MAY_HAVE_RUN:  # the request went out and is not undone
                return ToolOutput(
                    f"{ref.server}/{ref.tool} {MAY_HAVE_RUN_TEXT[exc.kind]}: the tool may have run; "
                    f"check before retrying ({exc})",
                    is_error=True,
                )
            return ToolOutput(f"{ref.server}/{ref.tool} failed ({exc.kind}): {exc}", is_error=True)
        except errors.AofdError as exc:
            if ctx.on_command is not None:
                ctx.on_command(False)
            return ToolOutput(f"not run: {exc}", is_error=True)
        ran = not isinstance(result, guard.Denial)
        if ctx.on_command is not None:
            ctx.on_command(ran)
        if isinstance(result, guard.Denial):
            return ToolOutput(f"not run ({result.stage}): {result.reason}", is_error=True)
        return format_mcp_result(result)

    async def refuse_unknown(self, name: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolOutput:
        """A call of a tool the agent was not offered: never run, but audited like any attempt
        (`command.requested` + `command.denied`, stage `syntax`, rule `tool`)."""
        shown = name[:64]
        reason = f"the agent has no tool named {shown!r}"
        unknown = Tool(shown, "unknown", base.ToolSchema(shown, "", {}))
        request = self._request(raw_input(unknown, arguments), ctx, tool=shown, invalid=(reason, "tool"))
        try:
            await self._send(request, ctx)  # the guard refuses (and audits) a request marked invalid
        except errors.AofdError as exc:
            return ToolOutput(f"unknown tool {shown!r}: not run ({exc})", is_error=True)
        return ToolOutput(f"unknown tool {shown!r}: not run", is_error=True)

    async def run(self, argv: Sequence[str], ctx: CallContext, *, tool: str, literal: bool = False) -> Any:
        """Send one argv to the guard (also used by Script nodes); errors propagate.

        `literal`: the argv was built by aofd from structured fields (`CommandRequest.literal`).
        """
        return await self._send(self._request(tuple(argv), ctx, tool=tool, literal=literal), ctx)

    async def _send(self, request: CommandRequest, ctx: CallContext) -> Any:
        try:
            result = await self._runner.run(request)
        except errors.AofdError:
            if ctx.on_command is not None:
                ctx.on_command(False)
            raise
        if ctx.on_command is not None:
            ctx.on_command(not isinstance(result, guard.Denial))
        return result

    @staticmethod
    def _request(
        argv: tuple[str, ...] | str,
        ctx: CallContext,
        *,
        tool: str,
        literal: bool = False,
        invalid: tuple[str, str] | None = None,
    ) -> CommandRequest:
        return CommandRequest(
            context_name=ctx.context_name,
            argv=argv,
            run_id=ctx.run_id,
            agent=ctx.agent,
            user=ctx.user,
            origin=ctx.origin,
            tool=tool,
            literal=literal,
            invalid=invalid,
        )


def exit_code(result: Any) -> int:
    """The exit code of a guard result (-1 when it timed out or has none)."""
    if getattr(result, "timed_out", False):
        return -1
    for name in ("exit_code", "returncode"):
        value = getattr(result, name, None)
        if isinstance(value, int):
            return value
    return -1 if getattr(result, "exit_code", 0) is None else 0


def text_of(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def stdout_of(result: Any) -> str:
    return text_of(getattr(result, "stdout", None) if not isinstance(result, str) else result)


def format_result(result: Any) -> ToolOutput:
    """A guard result as the text a model reads: stdout, stderr and a non-zero exit code."""
    code = exit_code(result)
    out = stdout_of(result)
    err = text_of(getattr(result, "stderr", None))
    parts = [out.rstrip("\n")] if out else []
    if err.strip():
        parts.append(f"[stderr]\n{err.rstrip()}")
    if getattr(result, "timed_out", False):
        parts.append("[timed out: the command was stopped]")
    elif code != 0:
        parts.append(f"[exit code {code}]")
    text = "\n".join(parts) or "(no output)"
    if len(text) > MAX_TOOL_OUTPUT:
        text = text[:MAX_TOOL_OUTPUT] + f"\n[output truncated: {len(text) - MAX_TOOL_OUTPUT} more characters]"
    return ToolOutput(text, is_error=code != 0)


def format_mcp_result(result: mcpservers.McpResult) -> ToolOutput:
    """An MCP tool's result as the model reads it (its `is_error` kept), capped at `MAX_TOOL_OUTPUT`
    (the pool already capped it and said how much it left out)."""
    text = result.text or "(no output)"
    if len(text) > MAX_TOOL_OUTPUT:
        text = text[:MAX_TOOL_OUTPUT] + f"\n[output truncated: {len(text) - MAX_TOOL_OUTPUT} more characters]"
    return ToolOutput(text, is_error=result.is_error)
