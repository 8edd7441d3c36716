"""The life of one approval request: the audit log, the prompt where it was asked, the clicks (effects).

Command approvals (`aofd.runtime.guard`) and Approval nodes (`aofd.runtime.engine.StoreApprovals`)
both go through `ApprovalDesk`, which owns these promises:

- **every request is closed in the audit log, once, whatever ends it**: `approval.requested`
  is followed by exactly one of `approval.granted`, `approval.denied`, `approval.expired` (no
  decision within `timeout_seconds`) or `approval.cancelled` (the prompt could not be posted,
  the run ended first: a failed branch, a shutdown);
- **the run's deadlines are paused while a person decides** (`aofd.runtime.deadlines`); the
  wait is bounded by the approval's own `timeout_seconds`;
- **the decision is shown where it was asked**: the `Prompter` posts the prompt and returns a
  reference to it, and at the end replaces it (buttons gone, the decision and who made it
  shown, where the platform can edit a message) and tells the thread the outcome, so nobody
  relies on the model to repeat it;
- **every click is audited and logged**: the ones that decide nothing final (a non-approver,
  the requester approving their own request, a vote on a request already decided or no longer
  open, a second vote) as `approval.refused`, a vote that still needs more approvers as
  `approval.granted` with `final: false`; the final decision is audited when the request
  closes. A redelivered click (same `action_id`) changes nothing and is not audited again;
- **in a replica set a request that cannot be recorded is denied**: the store
  (`approvals.SharedApprovals`) publishes it in etcd before anyone is asked, and when it cannot,
  the request closes as `approval.denied` with the reason `approval could not be recorded`.

The store (`aofd.runtime.approvals`) keeps the state; this module never imports the audit
package: records go through the `AuditSink` port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from aofd import errors
from aofd.runtime import approvals, deadlines, ports

log = structlog.get_logger()

SETTLE_TIMEOUT = 10.0
"""Seconds updating a prompt and telling the thread may take (a platform that hangs must not hold a run)."""


class Prompter(Protocol):
    """Asks for approvals where the run's event came from, and shows how they ended."""

    async def ask(self, request: approvals.ApprovalRequest) -> str:
        """Post the prompt; return a reference to the message ('' when none can be edited later).
        Raising means nobody was asked: the request is cancelled."""

    async def settle(
        self, request: approvals.ApprovalRequest, outcome: approvals.Outcome, *, prompt: str, text: str
    ) -> None:
        """Replace the prompt `prompt` (buttons gone, `text` shown) and tell the thread `text`."""


class AskOnly:
    """A `Prompter` from a bare ask function (tests, `aofctl run`): nothing is settled."""

    def __init__(self, ask: Callable[[approvals.ApprovalRequest], Awaitable[str | None]]) -> None:
        self._ask = ask

    async def ask(self, request: approvals.ApprovalRequest) -> str:
        return await self._ask(request) or ""

    async def settle(
        self, request: approvals.ApprovalRequest, outcome: approvals.Outcome, *, prompt: str, text: str
    ) -> None:
        return None


class RecordMaker(Protocol):
    """Builds the audit event of one stage of a request (the guard adds the command's fields)."""

    def __call__(
        self,
        action: str,
        *,
        outcome: ports.AuditOutcome = "success",
        reason: str | None = None,
        info: Mapping[str, Any] | None = None,
        related: tuple[str, ...] = (),
    ) -> ports.AuditEvent: ...


def _user(user: ports.UserRef) -> dict[str, str]:
    out = {"id": user.id}
    if user.name:
        out["name"] = user.name
    if user.domain:
        out["domain"] = user.domain
    return out


def _who(users: tuple[ports.UserRef, ...]) -> str:
    return ", ".join(f"{u.name} ({u.id})" if u.name and u.name != u.id else u.id for u in users) or "-"


def outcome_text(outcome: approvals.Outcome) -> str:
    """How a request ended, for the people in the thread (the prompt shows it too)."""
    req = outcome.request
    subject = req.subject or f"the command {req.rendered_argv()}"
    if outcome.state is approvals.State.GRANTED:
        return f"Approved by {_who(outcome.approvers)}: {subject} goes ahead."
    if outcome.state is approvals.State.DENIED:
        if outcome.denier is None:  # nobody denied it: it could not be asked (not recorded)
            return f"Not asked ({outcome.reason or 'denied'}): {subject} will not run."
        return f"Denied by {_who((outcome.denier,))}: {subject} will not run."
    if outcome.state is approvals.State.EXPIRED:
        return f"No decision within {req.timeout_seconds:g} s: {subject} will not run."
    return f"Approval withdrawn ({outcome.reason or 'cancelled'}): {subject} will not run."


def default_record(request: approvals.ApprovalRequest) -> RecordMaker:
    """Audit events of a request that is not a command's (an Approval node's)."""

    def make(
        action: str,
        *,
        outcome: ports.AuditOutcome = "success",
        reason: str | None = None,
        info: Mapping[str, Any] | None = None,
        related: tuple[str, ...] = (),
    ) -> ports.AuditEvent:
        return ports.AuditEvent(
            action,
            outcome=outcome,
            reason=reason,
            user=request.requester,
            related=related,
            run_id=request.run_id,
            agent=request.agent or None,
            process=ports.AuditProcess(args=request.argv),
            details={"approval": {"id": request.id, "required": True, "rule": request.rule, **(info or {})}},
        )

    return make


class ApprovalDesk:
    """Opens, waits for, decides and closes approval requests; one per daemon (see the module doc)."""

    def __init__(
        self,
        *,
        store: approvals.ApprovalStore,
        audit: ports.AuditSink,
        prompter: Prompter,
        settle_timeout: float = SETTLE_TIMEOUT,
    ) -> None:
        self.store = store
        self._audit = audit
        self._prompter = prompter
        self._settle_timeout = settle_timeout
        # Invariant: request id -> the record maker of a request `obtain` is waiting for; removed
        # when it returns (click records of an MCP call are shaped like its other records).
        self._makers: dict[str, RecordMaker] = {}

    async def obtain(
        self, pending: approvals.ApprovalRequest, record: RecordMaker | None = None
    ) -> approvals.Outcome:
        """Ask for `pending` (opened in the store), wait for its end, close it; the outcome.

        Raises `errors.AuditUnavailable` when `approval.requested` cannot be written (the request
        is cancelled; nobody was asked), and `CancelledError` after closing the request when the
        run ends while it waits.
        """
        make = record or default_record(pending)
        rid = pending.id
        self._makers[rid] = make
        try:
            return await self._obtain(pending, make)
        finally:
            self._makers.pop(rid, None)

    async def _obtain(self, pending: approvals.ApprovalRequest, make: RecordMaker) -> approvals.Outcome:
        rid = pending.id
        try:
            await self._audit.write(
                pending.context,
                make(
                    "approval.requested",
                    info={
                        "timeout_seconds": pending.timeout_seconds,
                        "allowed_users": list(pending.allowed_users),
                        "min_approvers": pending.min_approvers,
                    },
                ),
            )
        except errors.AuditUnavailable:
            self.store.cancel(rid, "audit unavailable")
            raise
        except asyncio.CancelledError:  # the record may be written already: close it too
            await self._close(self._end(pending, "the run ended before a decision"), make, "")
            raise
        try:  # a replica set records it in etcd; when it cannot, the request is denied (now final)
            await self.store.publish(rid)
        except asyncio.CancelledError:
            await self._close(self._end(pending, "the run ended before a decision"), make, "")
            raise
        prompt = ""
        now = self._now(pending)
        if now.state.final:  # cancelled as it was made (aofd is stopping): nobody is asked
            return await self._close(now, make, prompt)
        with deadlines.paused():
            try:
                prompt = await self._prompter.ask(pending)
            except asyncio.CancelledError:
                await self._close(self._end(pending, "the run ended before a decision"), make, prompt)
                raise
            except Exception as exc:  # the platform did not take the prompt: nobody can be asked there
                log.warning(
                    "approval.prompt_failed",
                    request_id=rid,
                    context=pending.context,
                    error=type(exc).__name__,
                )
                ended = self._end(pending, f"the prompt could not be posted ({type(exc).__name__})")
                return await self._close(ended, make, prompt)
            try:
                outcome = await self.store.wait(rid)
            except asyncio.CancelledError:
                await self._close(self._end(pending, "the run ended before a decision"), make, prompt)
                raise
            # Closed while still paused: the audit write and the settle must not eat the run's time.
            return await self._close(outcome, make, prompt)

    def _end(self, pending: approvals.ApprovalRequest, reason: str) -> approvals.Outcome:
        """Cancel `pending` for `reason`, or its outcome if something else ended it first (a click,
        the timeout, a shutdown): whatever ended it, `obtain` alone writes its closing record."""
        return self.store.cancel(pending.id, reason) or self._now(pending)

    def _now(self, pending: approvals.ApprovalRequest) -> approvals.Outcome:
        got = self.store.outcome(pending.id)
        return (
            got if got is not None else approvals.Outcome(pending, approvals.State.CANCELLED, reason="gone")
        )

    async def _close(self, outcome: approvals.Outcome, make: RecordMaker, prompt: str) -> approvals.Outcome:
        """The closing record, the prompt settled, the thread told; raises nothing but a cancellation.
        Called once per request, by `obtain` (the request's only waiter)."""
        req = outcome.request
        state = outcome.state
        if state is approvals.State.GRANTED:
            ids = tuple(u.id for u in outcome.approvers)
            event = make(
                "approval.granted",
                info={"final": True, "approvers": [_user(u) for u in outcome.approvers]},
                related=ids,
            )
        elif state is approvals.State.DENIED:
            denier = outcome.denier
            event = make(
                "approval.denied",
                outcome="failure",
                reason=outcome.reason or "denied",
                info={"final": True, "denier": _user(denier) if denier else None},
                related=(denier.id,) if denier else (),
            )
        else:
            event = make(
                f"approval.{state.value}",
                outcome="failure",
                reason=outcome.reason or state.value,
                info={"final": True},
            )
        with contextlib.suppress(errors.AuditUnavailable):
            await self._audit.write(req.context, event)
        text = outcome_text(outcome)
        log.info(
            "approval.closed",
            request_id=req.id,
            context=req.context,
            run_id=req.run_id,
            state=state.value,
            reason=outcome.reason,
            approvers=[u.id for u in outcome.approvers],
            denier=outcome.denier.id if outcome.denier else None,
        )
        try:
            async with asyncio.timeout(self._settle_timeout):
                await self._prompter.settle(req, outcome, prompt=prompt, text=text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the platform failed; the decision stands and is audited
            log.warning(
                "approval.settle_failed", request_id=req.id, context=req.context, error=type(exc).__name__
            )
        return outcome

    async def decide(
        self, request_id: str, *, user: ports.UserRef, approve: bool, action_id: str
    ) -> approvals.Decision:
        """Apply a click (a chat button, `aofctl approve`), log it and audit it unless it is the
        final decision (audited when the request closes) or a redelivery of the same click."""
        decision = await self.store.click(request_id, user, approve=approve, action_id=action_id)
        pending = self.store.get(request_id)
        refused = decision in approvals.REFUSED
        log.info(
            "approval.clicked",
            request_id=request_id,
            context=pending.context if pending is not None else None,
            user=user.id,
            approve=approve,
            decision=decision.value,
            result="refused" if refused else "counted",
        )
        if pending is None or decision in (
            approvals.Decision.GRANTED,
            approvals.Decision.DENIED,
            approvals.Decision.REDELIVERED,
        ):
            return decision
        counted = decision is approvals.Decision.PENDING_MORE
        # `user` is the requester, as on every approval record; the clicker is the `voter`, and the
        # `approver` (the seed's approved_by) only when the vote counted.
        info: dict[str, Any] = {
            "id": request_id,
            "final": False,
            "approve": approve,
            "decision": decision.value,
            "voter": _user(user),
            "action_id": action_id,
        }
        if counted:
            info["approver"] = _user(user)
            info["missing"] = self.store.missing(request_id)
        make = self._makers.get(request_id)
        if make is not None:  # the requester's record shape: an MCP call's has `aofd.mcp`, no process
            event = make(
                "approval.granted" if counted else "approval.refused",
                outcome="success" if counted else "failure",
                reason=decision.value,
                info=info,
                related=(pending.requester.id, user.id),
            )
        else:
            event = ports.AuditEvent(
                "approval.granted" if counted else "approval.refused",
                outcome="success" if counted else "failure",
                reason=decision.value,
                user=pending.requester,
                related=(pending.requester.id, user.id),
                run_id=pending.run_id,
                agent=pending.agent or None,
                process=ports.AuditProcess(args=tuple(pending.argv)),
                details={"approval": info},
            )
        with contextlib.suppress(errors.AuditUnavailable):
            await self._audit.write(pending.context, event)
        return decision


class PromptReplier(Protocol):
    """What `ChatPrompter` needs of the replier (`aofd.runtime.replies.MultiReplier`)."""

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str: ...

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None: ...

    async def reply(self, target: ports.ReplyTarget, text: str) -> str | None: ...


class ChatPrompter:
    """The daemon's `Prompter`: prompts go to the chat the run's event came from, through the
    trigger's current listener; the outcome replaces the prompt and is told in the thread.
    A request with no chat to ask in (HTTP, schedule) is decided with `aofctl approve`."""

    def __init__(self, replier: PromptReplier) -> None:
        self._replier = replier

    async def ask(self, request: approvals.ApprovalRequest) -> str:
        if request.origin is None:
            log.info(
                "approval.not_posted", request_id=request.id, context=request.context, reason="no origin"
            )
            return ""
        what = f" for {request.subject}" if request.subject else ""
        summary = (
            f"Approval needed in context {request.context} (agent {request.agent or '-'}){what}; "
            f"expires in {request.timeout_seconds:g} s; request {request.id[:12]}"
        )
        return await self._replier.ask_approval(
            request.origin, request_id=request.id, summary=summary, argv=request.argv
        )

    async def settle(
        self, request: approvals.ApprovalRequest, outcome: approvals.Outcome, *, prompt: str, text: str
    ) -> None:
        if request.origin is None:
            return
        if prompt:
            try:
                await self._replier.update_approval(request.origin, prompt=prompt, text=text)
            except Exception as exc:  # the thread is still told below
                log.warning("approval.prompt_not_updated", request_id=request.id, error=type(exc).__name__)
        await self._replier.reply(request.origin, text)
