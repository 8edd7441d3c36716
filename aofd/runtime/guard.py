"""The Context guard: every command an agent runs goes through `CommandGuard.run` (effects).

This module owns the order of a command's life and its audit trail (RELIABILITY.md sections
1.5 and 3.2; DESIGN.md section 2, "guard (context: policy, approval, limits) -> tools -> audit"):

1. `command.requested` is audited (every attempt, even one that does not parse);
2. the argv is tokenized and the policy evaluated (`aofd.specs.policy`); a refusal is
   audited as `command.denied` and returned as a `Denial` whose reason is safe to show;
3. when the Context's approval rules ask for it, an `ApprovalRequest` is opened and handed to
   the `aofd.runtime.approvaldesk.ApprovalDesk`, which audits it from `approval.requested` to
   its one closing record, posts the prompt and settles it, and pauses the run's deadline
   while a person decides; anything but a grant ends here as `command.denied` (also when the
   run ends while the request is open);
4. **the policy is checked again** against the Context as it is *now*
   (`policy_provider(name)`): a hot swap that tightened it between request and approval wins,
   and a grant is void if the command it covered would now run differently, or if its
   approvers no longer satisfy the current `approval` rules (removed from `allowed_users`);
5. the kubeconfig is checked (exec credential plugins and auth providers must be allow-listed);
6. `command.started` is written **durable**; if that fails (`AuditUnavailable`) the command
   does not run and the answer is "audit unavailable";
7. the command runs (`aofd.runtime.commands`) and `command.finished` records the exit code,
   duration, timeout, and the output digest and size; the output body only when the Context's
   `audit.log_responses` (or upstream's `include_payload`) is set.

`call_tool` takes an agent's call of an MCP tool (a `ToolRequest`) through the same stages:
`command.requested`; the server must be ready and list the tool (its annotations are read from
the pool's listing, never from the caller); `policy.evaluate_tool` (`security.allowed_tools`,
`blocked_tools`, the read-only default); approval through the same desk, the request bound to
the exact arguments (their sha256) and the prompt showing server, tool and the arguments with
secret-named values masked; the recheck against the policy and the listing as they are now;
`command.started` durable (fail closed); the call (`aofd.runtime.mcpservers.McpPool.call`, its
timeout the smallest of the server's or tool's `timeout_secs`, the Context's
`max_execution_time_seconds` and the time left in the run); `command.finished` with the result's
digest and size. Its records carry no `process`: `aofd.tool` is `mcp` and `aofd.mcp` names the
server, tool, transport, masked arguments and their digest, and the tool's annotations.

`admit` applies the Context's rate limits to a whole request (an agent run), auditing
`ratelimit.exceeded` once per window. Records are ECS-shaped mappings handed to the
`AuditSink` port; the audit package adds timestamps, sequence numbers and the hash chain.
This module never imports `aofd.audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aofd import errors
from aofd.runtime import approvaldesk, approvals, commands, limits, mcpservers, ports
from aofd.specs import policy

ApprovalRequester = Callable[[approvals.ApprovalRequest], Awaitable[str | None]]
"""Posts the approval prompt (argv rendered with `ApprovalRequest.rendered_argv()`) to its origin;
used when no `approvaldesk.ApprovalDesk` is given (prompts are then never settled)."""

PolicyProvider = Callable[[str], policy.GuardPolicy | None]
"""The policy of a Context *now*, by name (None when no such Context is loaded)."""

AUDIT_UNAVAILABLE = "audit unavailable: the command was not run"
MAX_AUDITED_OUTPUT = 8 * 1024
MAX_SHOWN_ARGUMENTS = 4 * 1024
"""Characters of an MCP call's masked arguments (JSON) shown whole to approvers; past it the audit
log keeps the first `MAX_SHOWN_ARGUMENTS` with a `… (cut: N more characters)` marker and a call
that needs approval is refused (`TOO_BIG_TO_SHOW`)."""
MAX_SHOWN_DEPTH = 8
"""Nesting levels of an MCP call's arguments shown; deeper arguments are refused approval."""
MAX_SHOWN_NAME = 128
"""Characters of a server's or tool's name shown in prompts and audit records (MCP's recommended
tool-name length)."""
NO_MCP = "no MCP servers in this daemon"
MAY_HAVE_RUN = frozenset({"timeout", "closed"})
"""`McpCallFailed.kind`s after which the call may have been carried out (audited `unknown`)."""
TOO_BIG_TO_SHOW = "arguments too large or too deeply nested to show an approver"

SECRET_WORDS = frozenset(
    {
        "token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "pwd", "passphrase",
        "apikey", "auth", "authorization", "credential", "credentials", "cookie", "cookies", "bearer",
    }
)  # fmt: skip
"""Words of a key whose value is masked where tool arguments are shown (any case, whole words of
`snake_case`, `kebab-case`, `camelCase` keys: `DB_PASSWORD`, `authToken`; not `author`)."""
SECRET_PAIRS = frozenset({"apikey", "privatekey", "accesskey", "sessionkey", "secretkey", "clientsecret"})
"""Two adjacent words that name a secret together (`api_key`, `privateKey`)."""
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_./-]")


def is_secret_key(key: str) -> bool:
    """Whether an argument's key names a secret: one of `SECRET_WORDS` as a whole word, or two
    adjacent words of `SECRET_PAIRS`."""
    words = [w.lower() for w in _WORDS.findall(key)]
    if any(w in SECRET_WORDS for w in words):
        return True
    return any(a + b in SECRET_PAIRS for a, b in itertools.pairwise(words))


def safe_name(name: str) -> str:
    """A server's or tool's name as people and the audit log see it: MCP's recommended characters
    (`A-Z a-z 0-9 _ . - /`) as they are, anything else (controls, bidi and format characters,
    markup) as a visible `\\uXXXX` escape, at most `MAX_SHOWN_NAME` characters (then `...`): ASCII."""
    if not _UNSAFE_NAME.search(name) and len(name) <= MAX_SHOWN_NAME:
        return name
    shown = _UNSAFE_NAME.sub(lambda m: f"\\u{ord(m.group()):04x}", name)
    return shown if len(shown) <= MAX_SHOWN_NAME else shown[: MAX_SHOWN_NAME - 3] + "..."


def _identity(text: str) -> str:
    return text


class _TooDeep(ValueError):
    pass


def mask_secrets(
    value: Any,
    key: str = "",
    depth: int = 0,
    *,
    redact: Callable[[str], str] = _identity,
    strict: bool = False,
) -> Any:
    """`value` with the values under secret-named keys (`is_secret_key`) replaced, at any depth, and
    every string run through `redact` (the audit log's secret patterns, injected); keys are kept
    whole. Past `MAX_SHOWN_DEPTH` levels a container becomes `"[too deep]"`, or, when `strict`,
    `ValueError` is raised (what an approver is shown must be all of it)."""
    if key and is_secret_key(key):
        return "[REDACTED]"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_SHOWN_DEPTH:
        if strict:
            raise _TooDeep
        return "[too deep]"
    if isinstance(value, Mapping):
        return {
            str(k): mask_secrets(v, str(k), depth + 1, redact=redact, strict=strict) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(v, "", depth + 1, redact=redact, strict=strict) for v in value]
    return value


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """sha256 (hex) of an MCP call's full arguments as canonical JSON: what an approval is bound to."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def render_arguments(
    arguments: Mapping[str, Any], redact: Callable[[str], str] = _identity
) -> tuple[str, bool]:
    """An MCP call's arguments as approvers and the audit log see them, and whether that is all of
    them: compact JSON, ASCII only, secrets masked (`mask_secrets`). Not whole (False) when nested
    deeper than `MAX_SHOWN_DEPTH` (shown as `"[too deep]"`) or longer than `MAX_SHOWN_ARGUMENTS`
    (cut there, with a `… (cut: N more characters)` marker)."""
    try:
        masked = mask_secrets(arguments, redact=redact, strict=True)
    except _TooDeep:
        return f'"[too deep: nested more than {MAX_SHOWN_DEPTH} levels]"', False
    text = json.dumps(masked, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    if len(text) > MAX_SHOWN_ARGUMENTS:
        rest = len(text) - MAX_SHOWN_ARGUMENTS
        return text[:MAX_SHOWN_ARGUMENTS] + f"… (cut: {rest} more characters)", False
    return text, True


def shown_arguments(arguments: Mapping[str, Any], redact: Callable[[str], str] = _identity) -> str:
    """`render_arguments(arguments, redact)`'s text."""
    return render_arguments(arguments, redact)[0]


@dataclasses.dataclass(frozen=True, slots=True)
class CommandRequest:
    """One tool call of an agent: the argv (a list, or a string split once), who and where."""

    context_name: str
    argv: tuple[str, ...] | str
    run_id: str
    agent: str
    user: ports.UserRef
    origin: ports.ReplyTarget | None = None
    tool: str = "kubectl"
    literal: bool = False
    """The argv was built by aofd from structured fields (the `http` tool's curl argv): its
    tokens are data, so shell-operator characters in them (`&` in a query, `;` in a header) are
    not refused; control characters still are."""
    invalid: tuple[str, str] | None = None
    """(reason, rule) when the tool call could not be turned into an argv at all (`argv` then holds
    the model's input as given): audited as `command.requested` + `command.denied`, never run."""


@dataclasses.dataclass(frozen=True, slots=True)
class ToolRequest:
    """One call of an MCP tool by an agent: the server (by pool key and name), the server's own
    name for the tool, the arguments as the model gave them, who and where."""

    context_name: str
    key: mcpservers.ServerKey
    server: str
    tool: str
    arguments: Mapping[str, Any]
    run_id: str
    agent: str
    user: ports.UserRef
    origin: ports.ReplyTarget | None = None
    transport: str = "stdio"
    timeout: float = 30.0
    """The server's `timeout_secs` (or the tool's own): the longest the call may take."""
    time_left: Callable[[], float | None] | None = None
    """Seconds left in the run (None: no deadline), asked when the call is about to be made."""
    hints: policy.ToolHints | None = None
    """The tool's annotations; set by the guard from the pool's listing (never the caller's)."""
    shown: str = ""
    """`render_arguments(arguments)`'s text, set by the guard (computed once per call)."""
    shown_whole: bool = True
    """Whether `shown` is all of the arguments (set by the guard); if not, no approval is asked."""
    digest: str = ""
    """`arguments_digest(arguments)`, set by the guard (computed once per call)."""

    @property
    def subject(self) -> str:
        """`<server>/<tool>` for people: names escaped and capped (`safe_name`)."""
        return f"{safe_name(self.server)}/{safe_name(self.tool)}"


class McpServers(Protocol):
    """What the guard needs of the daemon's MCP servers (`aofd.runtime.mcpservers.McpPool`)."""

    def status(self, key: mcpservers.ServerKey) -> tuple[mcpservers.ServerState, str | None]: ...

    def tool(self, key: mcpservers.ServerKey, name: str) -> mcpservers.McpTool | None: ...

    async def call(
        self,
        key: mcpservers.ServerKey,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> mcpservers.McpResult: ...


def _mcp_fields(req: ToolRequest) -> dict[str, Any]:
    """`aofd.mcp` of a record: absent annotations are left out (never null)."""
    out: dict[str, Any] = {
        "server": safe_name(req.server),
        "tool": safe_name(req.tool),
        "transport": req.transport,
        "arguments": req.shown or shown_arguments(req.arguments),
        "arguments_sha256": req.digest or arguments_digest(req.arguments),
    }
    if req.hints is not None and req.hints.read_only is not None:
        out["read_only"] = req.hints.read_only
    if req.hints is not None and req.hints.destructive is not None:
        out["destructive"] = req.hints.destructive
    return out


def tool_argv(req: ToolRequest) -> tuple[str, str, str, str]:
    """The "argv" an MCP call's approval is bound to and approvers read: `mcp`, `<server>/<tool>`,
    the masked arguments, and the sha256 of the full arguments (so a grant covers exactly them)."""
    shown = req.shown or shown_arguments(req.arguments)
    return ("mcp", req.subject, shown, "sha256:" + (req.digest or arguments_digest(req.arguments)))


def mask_kubeconfig(problem: str, kubeconfig: str | None) -> str:
    """`problem` with the Context's kubeconfig value replaced by `spec.kubeconfig`: the value may
    have come from a `${VAR}` holding any secret, and a denial reaches the model, the chat and the
    audit log (`aofctl get` names the variable; see `aofd.runtime.applier.kubeconfig_message`)."""
    if not kubeconfig:
        return problem
    for part in sorted({kubeconfig, *kubeconfig.split(os.pathsep)} - {""}, key=len, reverse=True):
        problem = problem.replace(part, "spec.kubeconfig")
    return problem


@dataclasses.dataclass(frozen=True, slots=True)
class Denial:
    """A command that did not run, with a reason that is safe to show the user and the model.

    `stage` is where it stopped: `context`, `syntax`, `policy`, `approval`, `recheck`,
    `kubeconfig`, `audit`, `limits` or `start` (for an MCP call also: its server is not ready,
    or does not list the tool).
    """

    reason: str
    rule: str | None
    stage: str
    command_id: str = ""


def _user(user: ports.UserRef) -> dict[str, str]:
    out = {"id": user.id}
    if user.name:
        out["name"] = user.name
    if user.domain:
        out["domain"] = user.domain
    return out


def _approvers_still_count(
    approvers: Sequence[ports.UserRef], requester: ports.UserRef, rules: policy.ApprovalPolicy | None
) -> bool:
    """Do the approvals collected under the old rules satisfy the Context's approval rules *now*
    (approvers still listed, self-approval still allowed, enough of them)?"""
    rules = rules or policy.ApprovalPolicy()
    valid = [
        u
        for u in approvers
        if approvals.is_allowed_approver(u, rules.allowed_users)
        and (rules.allow_self_approval or not approvals.same_user(u, requester))
    ]
    return len(valid) >= rules.min_approvers


class CommandGuard:
    """Runs agents' commands under their Context's guardrails; one per daemon.

    Collaborators (keyword-only): `runner` executes vetted argv, `limits` and `approvals` are
    the daemon-wide registries (state keyed by Context name survives hot swaps), `audit` is the
    per-Context audit port, `desk` runs approval requests (or, without one, `approval_requester`
    posts prompts that are never settled), `policy_provider` returns the current policy of a
    Context by name, `mcp` is the daemon's MCP server pool (`call_tool`) and `redact` scrubs secrets
    out of every string of an MCP call's arguments as approvers and the audit log see them.
    """

    def __init__(
        self,
        *,
        runner: commands.CommandRunner,
        limits: limits.RateLimits,
        approvals: approvals.ApprovalStore,
        audit: ports.AuditSink,
        approval_requester: ApprovalRequester | None = None,
        policy_provider: PolicyProvider,
        on_refused: Callable[[str], None] | None = None,
        desk: approvaldesk.ApprovalDesk | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        mcp: McpServers | None = None,
        redact: Callable[[str], str] = _identity,
    ) -> None:
        self._mcp = mcp  # None: every MCP call is refused (NO_MCP)
        self._redact = redact  # secrets out of MCP arguments as shown (the audit log's patterns)
        self._on_refused = on_refused  # (context) for every rate-limit refusal; metrics
        self._runner = runner
        self._limits = limits
        self._approvals = approvals
        self._audit = audit
        if desk is None:
            if approval_requester is None:
                raise TypeError("CommandGuard needs a desk or an approval_requester")
            desk = approvaldesk.ApprovalDesk(
                store=approvals, audit=audit, prompter=approvaldesk.AskOnly(approval_requester)
            )
        self.desk = desk
        self._sleep = sleep
        # Invariant: (context, limit) -> the task that writes the summary of the refusals left out
        # in that pair's open quiet window; removed when it has written it.
        self._summaries: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._policy = policy_provider

    # ------------------------------------------------------------------ records

    def _event(
        self,
        action: str,
        req: CommandRequest | ToolRequest,
        cid: str,
        *,
        outcome: ports.AuditOutcome = "success",
        reason: str | None = None,
        pol: policy.GuardPolicy | None = None,
        verdict: policy.Verdict | policy.ToolVerdict | None = None,
        details: Mapping[str, Any] | None = None,
        related: Sequence[str] = (),
        result: commands.CommandResult | None = None,
        approver: ports.UserRef | None = None,
        duration_ns: int | None = None,
    ) -> ports.AuditEvent:
        """The audit event of one stage of a command: its argv as run (with the pinned executable)
        once the policy parsed it, else as requested; the decision; the Kubernetes target. An MCP
        call's has no process: `aofd.tool` is `mcp` and `aofd.mcp` says what was called."""
        if isinstance(req, ToolRequest):
            mcp_fields: dict[str, Any] = {"tool": "mcp", "mcp": _mcp_fields(req)}
            if verdict is not None:
                mcp_fields["decision"] = {
                    "result": "allow" if verdict.allowed else "deny",
                    "rule": verdict.rule,
                }
            if details:
                mcp_fields.update(details)
            return ports.AuditEvent(
                action,
                outcome=outcome,
                reason=reason,
                event_id=cid,
                duration_ns=duration_ns,
                user=req.user,
                related=tuple(related),
                run_id=req.run_id,
                agent=req.agent,
                details=mcp_fields,
                approver=approver,
            )
        fields: dict[str, Any] = {"tool": req.tool}
        target: ports.AuditTarget | None = None
        if isinstance(verdict, policy.Verdict):
            run_argv = verdict.exec_argv or verdict.argv
            args = (str(verdict.executable) if verdict.executable else run_argv[0], *run_argv[1:])
            fields["decision"] = {"result": "allow" if verdict.allowed else "deny", "rule": verdict.rule}
            cmd = verdict.command
            if cmd is not None and cmd.tool in policy.NAMESPACED_TOOLS:
                target = ports.AuditTarget(
                    namespace="*" if cmd.all_namespaces else cmd.namespace,
                    cluster=pol.cluster if pol is not None else None,
                    resource_type=cmd.resource,
                )
            process = ports.AuditProcess(
                args=args,
                exit_code=result.exit_code if result is not None else None,
                working_directory=result.cwd if result is not None else None,
            )
        elif isinstance(req.argv, str):
            process = ports.AuditProcess(command_line=req.argv)
        else:
            process = ports.AuditProcess(args=tuple(str(a) for a in req.argv))
        if details:
            fields.update(details)
        return ports.AuditEvent(
            action,
            outcome=outcome,
            reason=reason,
            event_id=cid,
            duration_ns=int(result.duration_s * 1e9) if result is not None else None,
            user=req.user,
            related=tuple(related),
            run_id=req.run_id,
            agent=req.agent,
            process=process if process.args or process.command_line else None,
            target=target,
            details=fields,
            approver=approver,
        )

    async def _write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
        await self._audit.write(context, event, durable=durable)

    async def _deny(
        self,
        req: CommandRequest | ToolRequest,
        cid: str,
        reason: str,
        rule: str | None,
        stage: str,
        *,
        pol: policy.GuardPolicy | None = None,
        verdict: policy.Verdict | policy.ToolVerdict | None = None,
    ) -> Denial:
        record = self._event(
            "command.denied",
            req,
            cid,
            outcome="failure",
            reason=reason,
            pol=pol,
            verdict=verdict,
            details={"decision": {"result": "deny", "rule": rule, "stage": stage}},
        )
        await self._write_quietly(req.context_name, record)  # refused either way
        return Denial(reason, rule, stage, cid)

    # ------------------------------------------------------------------ the command path

    async def run(self, request: CommandRequest) -> commands.CommandResult | Denial:
        """Check, (maybe) get approval for, audit and run one command. Never raises for bad input."""
        cid = uuid.uuid4().hex
        pol = self._policy(request.context_name)
        if pol is None:
            return Denial(f"no Context named {request.context_name!r} is loaded", "context", "context", cid)
        try:
            await self._write(request.context_name, self._event("command.requested", request, cid))
        except errors.AuditUnavailable:
            return Denial(AUDIT_UNAVAILABLE, "audit", "audit", cid)
        if request.invalid is not None:
            reason, rule = request.invalid
            return await self._deny(request, cid, reason, rule, "syntax", pol=pol)
        try:
            argv = policy.tokenize(request.argv, operators=not request.literal)
        except errors.PolicyDenied as exc:
            return await self._deny(request, cid, exc.reason, exc.rule, "syntax", pol=pol)
        verdict = policy.evaluate(
            argv, policy=pol, executables=self._runner.executables.paths, operators=not request.literal
        )
        if not verdict.allowed:
            return await self._deny(
                request, cid, verdict.reason, verdict.rule, "policy", pol=pol, verdict=verdict
            )

        problem = await asyncio.to_thread(
            commands.check_kubeconfig, pol.kubeconfig, self._runner.executables.allowed_credential_plugins
        )
        if problem is not None:  # checked again at execution; no approver should see a doomed command
            problem = mask_kubeconfig(problem, pol.kubeconfig)
            return await self._deny(
                request, cid, problem, "kubeconfig", "kubeconfig", pol=pol, verdict=verdict
            )

        got = await self._approve_and_reload(request, cid, pol, verdict)
        if isinstance(got, Denial):
            return got
        approvers, now = got
        # Re-check against the policy as it is now: a reload may have tightened it meanwhile.
        again = policy.evaluate(
            argv, policy=now, executables=self._runner.executables.paths, operators=not request.literal
        )
        if not again.allowed:
            reason = f"the Context's policy changed: {again.reason}" if approvers else again.reason
            return await self._deny(request, cid, reason, again.rule, "recheck", pol=now, verdict=again)
        if again.needs_approval and not approvers:
            reason = "the Context now requires approval for this command; ask again"
            return await self._deny(request, cid, reason, "approval", "recheck", pol=now, verdict=again)
        if approvers and again.exec_argv != verdict.exec_argv:
            reason = "the Context changed how this command would run; the approval no longer applies"
            return await self._deny(request, cid, reason, "approval", "recheck", pol=now, verdict=again)
        if again.needs_approval and not _approvers_still_count(approvers, request.user, now.approval):
            reason = "the Context's approvers changed; the approval no longer applies, ask again"
            return await self._deny(request, cid, reason, "approval", "recheck", pol=now, verdict=again)

        problem = await asyncio.to_thread(
            commands.check_kubeconfig, now.kubeconfig, self._runner.executables.allowed_credential_plugins
        )
        if problem is not None:
            problem = mask_kubeconfig(problem, now.kubeconfig)
            return await self._deny(request, cid, problem, "kubeconfig", "kubeconfig", pol=now, verdict=again)

        return await self._execute(request, cid, now, again, approvers)

    async def _execute(
        self,
        req: CommandRequest,
        cid: str,
        pol: policy.GuardPolicy,
        verdict: policy.Verdict,
        approvers: tuple[ports.UserRef, ...],
    ) -> commands.CommandResult | Denial:
        approval_info: dict[str, Any] = {"required": verdict.needs_approval}
        if approvers:
            approval_info["approvers"] = [_user(u) for u in approvers]
        started = self._event(
            "command.started",
            req,
            cid,
            reason=verdict.reason,
            pol=pol,
            verdict=verdict,
            details={"approval": approval_info},
            related=[u.id for u in approvers],
            approver=approvers[-1] if approvers else None,
        )
        try:
            await self._write(req.context_name, started, durable=True)
        except errors.AuditUnavailable:
            return Denial(AUDIT_UNAVAILABLE, "audit", "audit", cid)

        time_limit = self._runner.executables.command_timeout
        if pol.limits.max_execution_time_seconds is not None:
            time_limit = min(time_limit, float(pol.limits.max_execution_time_seconds))
        assert verdict.executable is not None  # allowed verdicts always carry it
        try:
            result = await self._runner.run(
                verdict.exec_argv,
                executable=verdict.executable,
                pol=pol,
                run_id=req.run_id,
                time_limit=time_limit,
                command_id=cid,
            )
        except (errors.PolicyDenied, commands.StartFailed) as exc:
            reason = exc.reason if isinstance(exc, errors.PolicyDenied) else str(exc)
            record = self._event(
                "command.finished",
                req,
                cid,
                outcome="failure",
                reason="start_failed",
                pol=pol,
                verdict=verdict,
                details={"error": reason},
                approver=approvers[-1] if approvers else None,
            )
            await self._write_quietly(req.context_name, record)
            return Denial(reason, "start", "start", cid)

        failed = result.timed_out or result.exit_code != 0
        why: str | None = (
            "timeout" if result.timed_out else (f"exit code {result.exit_code}" if failed else None)
        )
        output: dict[str, Any] = {
            "sha256": result.output_sha256,
            "bytes": result.output_bytes,
            "stderr_bytes": result.stderr_bytes,
        }
        if pol.log_responses:
            output["stdout"] = result.stdout[:MAX_AUDITED_OUTPUT]
            output["stderr"] = result.stderr[:MAX_AUDITED_OUTPUT]
        finished = self._event(
            "command.finished",
            req,
            cid,
            outcome="failure" if failed else "success",
            reason=why,
            pol=pol,
            verdict=verdict,
            details={"output": output, "truncated": result.truncated, "timed_out": result.timed_out},
            result=result,
            approver=approvers[-1] if approvers else None,
        )
        # The command already ran: if this write fails, the durable command.started record stands.
        await self._write_quietly(req.context_name, finished)
        return result

    # ------------------------------------------------------------------ the MCP tool path

    async def call_tool(self, request: ToolRequest) -> mcpservers.McpResult | Denial:
        """Check, (maybe) get approval for, audit and make one MCP tool call, step for step like
        `run`. A refusal is a `Denial`; a call that was made but got no result raises
        `mcpservers.McpCallFailed` (after its `command.finished` record)."""
        cid = uuid.uuid4().hex
        pol = self._policy(request.context_name)
        if pol is None:
            return Denial(f"no Context named {request.context_name!r} is loaded", "context", "context", cid)
        shown, whole = render_arguments(request.arguments, self._redact)
        request = dataclasses.replace(  # annotations come from the listing only
            request,
            hints=None,
            shown=shown,
            shown_whole=whole,
            digest=arguments_digest(request.arguments),
        )
        requested = self._event("command.requested", request, cid)
        listed = self._listed(request)
        if not isinstance(listed, str):
            verdict = policy.evaluate_tool(request.server, request.tool, listed.hints, pol)
            if verdict.allowed and not verdict.needs_approval:
                # Nothing waits between this decision and the call: `command.requested` goes to the
                # journal together with the durable `command.started` (one round trip, same order).
                request = dataclasses.replace(request, hints=listed.hints)
                return await self._call(request, cid, pol, verdict, (), requested=requested)
        try:
            await self._write(request.context_name, requested)
        except errors.AuditUnavailable:
            return Denial(AUDIT_UNAVAILABLE, "audit", "audit", cid)
        if isinstance(listed, str):
            return await self._deny(request, cid, listed, "mcp", "start", pol=pol)
        request = dataclasses.replace(request, hints=listed.hints)
        if not verdict.allowed:
            return await self._deny(
                request, cid, verdict.reason, verdict.rule, "policy", pol=pol, verdict=verdict
            )

        got = await self._approve_and_reload(request, cid, pol, verdict)
        if isinstance(got, Denial):
            return got
        approvers, now = got
        # Re-check against the policy and the server's listing as they are now.
        listed_now = self._listed(request)
        if isinstance(listed_now, str):
            return await self._deny(request, cid, listed_now, "mcp", "recheck", pol=now)
        again = policy.evaluate_tool(request.server, request.tool, listed_now.hints, now)
        if listed_now.hints != listed.hints:
            request = dataclasses.replace(request, hints=listed_now.hints)
        if not again.allowed:
            reason = f"the Context's policy changed: {again.reason}" if approvers else again.reason
            return await self._deny(request, cid, reason, again.rule, "recheck", pol=now, verdict=again)
        if again.needs_approval and not approvers:
            reason = "the Context now requires approval for this tool; ask again"
            return await self._deny(request, cid, reason, "approval", "recheck", pol=now, verdict=again)
        if approvers and listed_now.hints != listed.hints:
            reason = "the server changed the tool's annotations; the approval no longer applies, ask again"
            return await self._deny(request, cid, reason, "approval", "recheck", pol=now, verdict=again)
        if again.needs_approval and not _approvers_still_count(approvers, request.user, now.approval):
            reason = "the Context's approvers changed; the approval no longer applies, ask again"
            return await self._deny(request, cid, reason, "approval", "recheck", pol=now, verdict=again)
        return await self._call(request, cid, now, again, approvers)

    def _listed(self, request: ToolRequest) -> mcpservers.McpTool | str:
        """The tool as its server lists it now, or why it cannot be called."""
        if self._mcp is None:
            return NO_MCP
        if request.key[0] != request.context_name:  # a server is never shared across Contexts
            return f"MCP server {safe_name(request.server)} does not belong to this Context"
        state, why = self._mcp.status(request.key)
        if state != "ready":
            detail = f": {why}" if why else ""
            return f"MCP server {safe_name(request.server)} is not ready ({state}{detail})"
        tool = self._mcp.tool(request.key, request.tool)
        if tool is None:
            return f"MCP server {safe_name(request.server)} has no tool {safe_name(request.tool)!r}"
        return tool

    async def _call(
        self,
        req: ToolRequest,
        cid: str,
        pol: policy.GuardPolicy,
        verdict: policy.ToolVerdict,
        approvers: tuple[ports.UserRef, ...],
        *,
        requested: ports.AuditEvent | None = None,
    ) -> mcpservers.McpResult | Denial:
        """Make the call: `command.started` durable first (with `requested`, when given, written
        just before it in the same round trip), then the call, then `command.finished`."""
        assert self._mcp is not None
        approver = approvers[-1] if approvers else None
        timeout = req.timeout
        if pol.limits.max_execution_time_seconds is not None:
            timeout = min(timeout, float(pol.limits.max_execution_time_seconds))
        left = req.time_left() if req.time_left is not None else None
        if left is not None:
            if left <= 0:
                if requested is not None:
                    try:
                        await self._write(req.context_name, requested)
                    except errors.AuditUnavailable:
                        return Denial(AUDIT_UNAVAILABLE, "audit", "audit", cid)
                reason = "the run has no time left for this call"
                return await self._deny(req, cid, reason, "timeout", "limits", pol=pol, verdict=verdict)
            timeout = min(timeout, left)
        approval_info: dict[str, Any] = {"required": verdict.needs_approval}
        if approvers:
            approval_info["approvers"] = [_user(u) for u in approvers]
        started = self._event(
            "command.started",
            req,
            cid,
            reason=verdict.reason,
            pol=pol,
            verdict=verdict,
            details={"approval": approval_info},
            related=[u.id for u in approvers],
            approver=approver,
        )
        try:
            # In order: a `command.started` is never written for a call whose `command.requested`
            # failed (the durable write flushes both).
            if requested is not None:
                await self._write(req.context_name, requested)
            await self._write(req.context_name, started, durable=True)
        except errors.AuditUnavailable:
            return Denial(AUDIT_UNAVAILABLE, "audit", "audit", cid)

        began = time.monotonic()

        def finished(
            outcome: ports.AuditOutcome, why: str | None, extra: Mapping[str, Any]
        ) -> ports.AuditEvent:
            return self._event(
                "command.finished",
                req,
                cid,
                outcome=outcome,
                reason=why,
                pol=pol,
                verdict=verdict,
                details=extra,
                approver=approver,
                duration_ns=int((time.monotonic() - began) * 1e9),
            )

        try:
            result = await self._mcp.call(req.key, req.tool, req.arguments, timeout=timeout)
        except mcpservers.McpCallFailed as exc:
            extra = {"error": str(exc), "timed_out": exc.kind == "timeout"}
            # Timed out or cut off mid-call: the request was sent and is not undone, so the server
            # may have acted (ECS `event.outcome: unknown`).
            outcome: ports.AuditOutcome = "unknown" if exc.kind in MAY_HAVE_RUN else "failure"
            await self._write_quietly(req.context_name, finished(outcome, exc.kind, extra))
            raise
        except asyncio.CancelledError:
            extra = {"error": "the run ended during the call", "timed_out": False}
            await self._write_quietly(req.context_name, finished("unknown", "cancelled", extra))
            raise
        output: dict[str, Any] = {"sha256": result.sha256, "bytes": result.size}
        if pol.log_responses:
            output["text"] = result.text[:MAX_AUDITED_OUTPUT]
        record = finished(
            "failure" if result.is_error else "success",
            "tool error" if result.is_error else None,
            {"output": output, "timed_out": False},
        )
        # The call was made: if this write fails, the durable command.started record stands.
        await self._write_quietly(req.context_name, record)
        return result

    # ------------------------------------------------------------------ approvals

    async def _approve_and_reload(
        self,
        req: CommandRequest | ToolRequest,
        cid: str,
        pol: policy.GuardPolicy,
        verdict: policy.Verdict | policy.ToolVerdict,
    ) -> tuple[tuple[ports.UserRef, ...], policy.GuardPolicy] | Denial:
        """The approvers (none when the verdict needs no approval) and the Context's policy as it
        is now, for the caller's recheck; a Denial when approval was not given or the Context
        was removed meanwhile (stage `recheck`)."""
        approvers: tuple[ports.UserRef, ...] = ()
        if verdict.needs_approval:
            got = await self._approve(req, cid, pol, verdict)
            if isinstance(got, Denial):
                return got
            approvers = got
        now = self._policy(req.context_name)
        if now is None:
            reason = "the Context was removed"
            return await self._deny(req, cid, reason, "context", "recheck", verdict=verdict)
        return approvers, now

    async def _approve(
        self,
        req: CommandRequest | ToolRequest,
        cid: str,
        pol: policy.GuardPolicy,
        verdict: policy.Verdict | policy.ToolVerdict,
    ) -> tuple[ports.UserRef, ...] | Denial:
        rules = pol.approval or policy.ApprovalPolicy()
        subject = ""
        if isinstance(req, ToolRequest):
            if not req.shown_whole:  # an approver must see all of what would run
                reason = f"{TOO_BIG_TO_SHOW}; the call was not made (pass fewer or smaller arguments)"
                return await self._deny(req, cid, reason, "approval", "approval", pol=pol, verdict=verdict)
            argv: tuple[str, ...] = tool_argv(req)
            subject = f"the MCP tool {req.subject}"  # its arguments: the prompt's argv block
        else:
            assert isinstance(verdict, policy.Verdict)
            argv = verdict.exec_argv
        budget = approvals.prompt_budget(req.origin.platform if req.origin is not None else "")
        rendered = len(approvals.render_argv(argv))
        if rendered > budget:  # the prompt would cut it: nobody is asked to approve what they cannot read
            where = req.origin.platform if req.origin is not None else "a prompt"
            what = "arguments too large" if isinstance(req, ToolRequest) else "the command is too long"
            reason = (
                f"{what} to show an approver in {where} ({rendered} characters, at most {budget}); "
                "not run (pass fewer or smaller arguments)"
            )
            return await self._deny(req, cid, reason, "approval", "approval", pol=pol, verdict=verdict)
        pending = self._approvals.request(
            context=req.context_name,
            argv=argv,
            run_id=req.run_id,
            requester=req.user,
            allowed_users=rules.allowed_users,
            min_approvers=rules.min_approvers,
            allow_self_approval=rules.allow_self_approval,
            timeout_seconds=rules.timeout_seconds,
            agent=req.agent,
            rule=verdict.approval_rule,
            origin=req.origin,
            subject=subject,
        )
        base = {"id": pending.id, "required": True, "rule": verdict.approval_rule}

        def record(
            action: str,
            *,
            outcome: ports.AuditOutcome = "success",
            reason: str | None = None,
            info: Mapping[str, Any] | None = None,
            related: tuple[str, ...] = (),
        ) -> ports.AuditEvent:
            return self._event(
                action,
                req,
                cid,
                outcome=outcome,
                reason=reason,
                pol=pol,
                verdict=verdict,
                details={"approval": {**base, **(info or {})}},
                related=related,
            )

        try:
            outcome = await self.desk.obtain(pending, record)
        except errors.AuditUnavailable:
            return Denial(AUDIT_UNAVAILABLE, "audit", "audit", cid)
        except asyncio.CancelledError:
            # The run ended while the request was open: the desk closed the approval; the command too.
            reason = "the run ended while the command waited for approval; the command was not run"
            await self._deny(req, cid, reason, "approval", "approval", pol=pol, verdict=verdict)
            raise
        if outcome.state is approvals.State.GRANTED:
            return outcome.approvers
        if outcome.state is approvals.State.DENIED and outcome.denier is None and outcome.reason != "denied":
            reason = f"approval denied ({outcome.reason}); the command was not run"
        elif outcome.state is approvals.State.DENIED:
            who = f" by {outcome.denier.id}" if outcome.denier else ""
            reason = f"approval denied{who}"
        elif outcome.state is approvals.State.EXPIRED:
            reason = f"approval expired ({outcome.reason}); the command was not run"
        else:
            reason = f"approval cancelled ({outcome.reason}); the command was not run"
        return await self._deny(req, cid, reason, "approval", "approval", pol=pol, verdict=verdict)

    async def _write_quietly(self, context: str, record: ports.AuditEvent) -> None:
        """Write a record whose loss must not change the outcome (the gate is command.started)."""
        with contextlib.suppress(errors.AuditUnavailable):
            await self._write(context, record)

    async def decide(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals.Decision:
        """Apply an approver's click (from a chat platform or `aofctl approve`); audited and logged by
        the desk (`aofd.runtime.approvaldesk.ApprovalDesk.decide`)."""
        return await self.desk.decide(request_id, user=user, approve=approve, action_id=action_id)

    # ------------------------------------------------------------------ limits

    def charge_tokens(self, context_name: str, tokens: int) -> None:
        """Count model tokens (input + output) of a run against the Context's daily budget."""
        self._limits.charge_tokens(context_name, tokens)

    async def admit(
        self, context_name: str, *, user: ports.UserRef, run_id: str, agent: str = ""
    ) -> limits.Lease | Denial:
        """Admit one request (an agent run) under the Context's rate limits, or refuse it.

        The first refusal of a quiet window is audited as `ratelimit.exceeded`; the ones left out
        get one summary record when the window ends (or at `aclose`), with their number
        (`aofd.ratelimit.suppressed`, `summary: true`); see `aofd.runtime.limits`.
        """
        pol = self._policy(context_name)
        if pol is None:
            return Denial(f"no Context named {context_name!r} is loaded", "context", "context")
        got = await self._limits.acquire(context_name, pol.limits, run_id)
        if isinstance(got, limits.Lease):
            return got
        if self._on_refused is not None:
            self._on_refused(context_name)
        if got.first_left_out:
            key = (context_name, got.limit)
            self._summaries[key] = asyncio.get_running_loop().create_task(
                self._summary_later(key, got.quiet_for), name=f"ratelimit-summary:{context_name}"
            )
        if got.audit:
            record = ports.AuditEvent(
                "ratelimit.exceeded",
                outcome="failure",
                reason=got.limit,
                user=user,
                run_id=run_id,
                agent=agent or None,
                details={
                    "ratelimit": {
                        "limit": got.limit,
                        "retry_after": got.retry_after,
                        "message": got.reason,
                        "suppressed": got.suppressed,
                    }
                },
            )
            await self._write_quietly(context_name, record)
        return Denial(got.reason, got.limit, "limits")

    async def _summary_later(self, key: tuple[str, str], delay: float) -> None:
        try:
            await self._sleep(delay)
        finally:
            self._summaries.pop(key, None)
        await self._write_summary(*key)

    async def _write_summary(self, context: str, limit: str) -> None:
        """One `ratelimit.exceeded` record for the refusals of `context` and `limit` left out."""
        count = self._limits.take_suppressed(context, limit)
        if not count:
            return
        record = ports.AuditEvent(
            "ratelimit.exceeded",
            outcome="failure",
            reason=limit,
            message=f"{count} more requests refused by {limit} (not audited one by one)",
            details={"ratelimit": {"limit": limit, "suppressed": count, "summary": True}},
        )
        await self._write_quietly(context, record)

    async def aclose(self) -> None:
        """Write the summaries of rate-limit refusals still waiting for their quiet window to end."""
        pending, self._summaries = self._summaries, {}
        for task in pending.values():
            task.cancel()
        await asyncio.gather(*pending.values(), return_exceptions=True)
        for context, limit in pending:
            await self._write_summary(context, limit)


class Decider:
    """`listeners.base.ApprovalDecider` over the guard: clicks from chat platforms reach `decide`,
    and the listener learns what to tell the clicker privately (`approvals.Click`)."""

    def __init__(self, guard: CommandGuard) -> None:
        self._guard = guard

    async def decide(
        self, request_id: str, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals.Click:
        decision = await self._guard.decide(request_id, user=user, approve=approve, action_id=action_id)
        missing = self._guard.desk.store.missing(request_id)
        return approvals.Click(decision, approvals.click_text(decision, missing=missing))
