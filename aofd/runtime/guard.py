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

`admit` applies the Context's rate limits to a whole request (an agent run), auditing
`ratelimit.exceeded` once per window. Records are ECS-shaped mappings handed to the
`AuditSink` port; the audit package adds timestamps, sequence numbers and the hash chain.
This module never imports `aofd.audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aofd import errors
from aofd.runtime import approvaldesk, approvals, commands, limits, ports
from aofd.specs import policy

ApprovalRequester = Callable[[approvals.ApprovalRequest], Awaitable[str | None]]
"""Posts the approval prompt (argv rendered with `ApprovalRequest.rendered_argv()`) to its origin;
used when no `approvaldesk.ApprovalDesk` is given (prompts are then never settled)."""

PolicyProvider = Callable[[str], policy.GuardPolicy | None]
"""The policy of a Context *now*, by name (None when no such Context is loaded)."""

AUDIT_UNAVAILABLE = "audit unavailable: the command was not run"
MAX_AUDITED_OUTPUT = 8 * 1024


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
    `kubeconfig`, `audit`, `limits` or `start`.
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
    posts prompts that are never settled), and `policy_provider` returns the current policy of a
    Context by name.
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
    ) -> None:
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
        req: CommandRequest,
        cid: str,
        *,
        outcome: ports.AuditOutcome = "success",
        reason: str | None = None,
        pol: policy.GuardPolicy | None = None,
        verdict: policy.Verdict | None = None,
        details: Mapping[str, Any] | None = None,
        related: Sequence[str] = (),
        result: commands.CommandResult | None = None,
        approver: ports.UserRef | None = None,
    ) -> ports.AuditEvent:
        """The audit event of one stage of a command: its argv as run (with the pinned executable)
        once the policy parsed it, else as requested; the decision; the Kubernetes target."""
        fields: dict[str, Any] = {"tool": req.tool}
        target: ports.AuditTarget | None = None
        if verdict is not None:
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
        req: CommandRequest,
        cid: str,
        reason: str,
        rule: str | None,
        stage: str,
        *,
        pol: policy.GuardPolicy | None = None,
        verdict: policy.Verdict | None = None,
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

        approvers: tuple[ports.UserRef, ...] = ()
        if verdict.needs_approval:
            got = await self._approve(request, cid, pol, verdict)
            if isinstance(got, Denial):
                return got
            approvers = got

        # Re-check against the policy as it is now: a reload may have tightened it meanwhile.
        now = self._policy(request.context_name)
        if now is None:
            return await self._deny(
                request, cid, "the Context was removed", "context", "recheck", verdict=verdict
            )
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

    # ------------------------------------------------------------------ approvals

    async def _approve(
        self, req: CommandRequest, cid: str, pol: policy.GuardPolicy, verdict: policy.Verdict
    ) -> tuple[ports.UserRef, ...] | Denial:
        rules = pol.approval or policy.ApprovalPolicy()
        pending = self._approvals.request(
            context=req.context_name,
            argv=verdict.exec_argv,
            run_id=req.run_id,
            requester=req.user,
            allowed_users=rules.allowed_users,
            min_approvers=rules.min_approvers,
            allow_self_approval=rules.allow_self_approval,
            timeout_seconds=rules.timeout_seconds,
            agent=req.agent,
            rule=verdict.approval_rule,
            origin=req.origin,
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
        if outcome.state is approvals.State.DENIED:
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
        got = self._limits.admit(context_name, pol.limits)
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
