"""The AgentFlow engine: one run of a binding's compiled plan, from event to answer.

This module owns a run's life: it takes the `RunPlan` the compile stage built for a binding
(`aofd.specs.flows`; a run keeps the plan it started with across hot swaps), admits the run
under its Context's rate limits, schedules its nodes and reports the outcome:

- scheduling: nodes run as asyncio tasks in one TaskGroup per run; a node runs when every
  incoming connection is decided (the join barrier: a node reachable from two parents runs
  once), Parallel branches really overlap, Join waits for all/any/majority, a failed node fails
  the run and cancels the rest, and the whole run has a deadline (the Context's
  `limits.max_execution_time_seconds`, else `default_timeout`), extended by the time spent
  waiting for a human at an Approval node;
- both flow forms run the same way (the short form is compiled to a chain of Agent nodes);
- posting the answer (or a clear failure, as a `ports.private` answer: only the asker needs it,
  where the platform can do that) back to the origin through `ports.Replier`, the run
  record in `runs.RunHistory`, and the `agent.run.started`/`finished` audit records;
- conversation memory (`aofd.runtime.memory`): a run of one agent whose event continues a
  conversation lends the agent its earlier turns, and a completed run appends its own (after the
  answer was posted, so a Telegram reply to the answer continues the conversation).

What each node type does is `aofd.runtime.nodes`'. It must not run subprocesses or read
`os.environ`; templates never read the host environment and a Context's env values never
reach a prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from aofd import errors
from aofd.runtime import (
    agents,
    approvaldesk,
    approvals,
    deadlines,
    fleets,
    guard,
    httpclient,
    limits,
    mcpservers,
    nodes,
    ports,
    runs,
    templates,
    tools,
)
from aofd.runtime import memory as memory_mod
from aofd.runtime.providers import base as provider_base
from aofd.runtime.providers import registry
from aofd.specs import flows
from aofd.specs import http_policy as http_policy_mod
from aofd.specs import memory as memory_specs

log = structlog.get_logger()

DEFAULT_TIMEOUT = 600.0
"""Seconds a run may take when its Context sets no `limits.max_execution_time_seconds`."""

# --- ports the daemon wires ------------------------------------------------------------------


class Admission(Protocol):
    """Rate limits for a whole run (`guard.CommandGuard.admit`): a lease to release, or a Denial."""

    async def admit(
        self, context_name: str, *, user: ports.UserRef, run_id: str, agent: str = ""
    ) -> limits.Lease | guard.Denial: ...

    def charge_tokens(self, context_name: str, tokens: int) -> None:
        """Count a finished run's model tokens against the Context's `max_tokens_per_day`."""


class StoreApprovals:
    """`fleets.ApprovalGate` over the daemon's `approvaldesk.ApprovalDesk`: Approval nodes and human
    review use the same mechanism as command approvals (same approvers, self-approval rule, expiry,
    audit records from `approval.requested` to the closing one, the prompt settled, the run's
    deadline paused while a person decides).

    The request's text is posted to the origin through the `Replier`, then the desk posts the
    Approve/Deny prompt; the "argv" bound to the approval is `["approve", <flow or fleet>, <node>]`.
    """

    def __init__(
        self, *, desk: approvaldesk.ApprovalDesk, replier: ports.Replier, min_approvers: int = 1
    ) -> None:
        self._desk = desk
        self._replier = replier
        self._min_approvers = min_approvers

    async def request(self, request: fleets.ApprovalRequest) -> fleets.ApprovalDecision:
        pending = self._desk.store.request(
            context=request.context_name,
            argv=("approve", request.title, request.node or "review"),
            run_id=request.run_id,
            requester=request.user,
            allowed_users=request.approvers,
            min_approvers=max(self._min_approvers, request.min_approvers),
            allow_self_approval=request.allow_self_approval,
            timeout_seconds=request.timeout,
            agent="",
            origin=request.origin,
            subject=f"the step ({request.title})",
        )
        try:
            await self._replier.reply(request.origin, f"{request.title}\n\n{request.text}")
        except asyncio.CancelledError:
            self._desk.store.cancel(pending.id, "the run ended before a decision")
            raise
        except Exception as exc:  # the text did not reach the chat: the prompt may still
            log.warning("approval.text_not_posted", request_id=pending.id, error=type(exc).__name__)
        try:
            outcome = await self._desk.obtain(pending)
        except errors.AuditUnavailable as exc:
            return fleets.ApprovalDecision("expired", reason=f"audit unavailable: {exc}")
        if outcome.state is approvals.State.GRANTED:
            by = ", ".join(u.id for u in outcome.approvers)
            return fleets.ApprovalDecision("approved", by=by, reason=outcome.reason)
        if outcome.state is approvals.State.DENIED:
            by = outcome.denier.id if outcome.denier is not None else ""
            return fleets.ApprovalDecision("denied", by=by, reason=outcome.reason)
        if outcome.state is approvals.State.EXPIRED:
            return fleets.ApprovalDecision("expired", reason=outcome.reason or "timeout")
        return fleets.ApprovalDecision("cancelled", reason=outcome.reason or "cancelled")


# --- the engine ------------------------------------------------------------------------------


# --- the engine ------------------------------------------------------------------------------


class Engine:
    """Runs flows. One per daemon; every run gets its own `nodes.RunState` and TaskGroup.

    Collaborators (keyword-only): `providers` (model clients), `commands` (the guard),
    `replier` (answers to the origin), `history` (run records), and optionally `approvals`
    (Approval nodes and human review), `audit` (agent.run.started/finished records; the
    guard audits commands), `http_policy`, `retry`, `default_timeout`, and `mcp` (the daemon's
    MCP servers: agents are offered their tools, and a run holds a lease on those it uses), and
    `memory` (conversations: a run of one agent with memory sees its thread's earlier turns).
    """

    def __init__(
        self,
        *,
        providers: registry.Providers,
        commands: tools.CommandRunner,
        replier: ports.Replier,
        history: runs.RunHistory,
        approvals: fleets.ApprovalGate | None = None,
        audit: ports.AuditSink | None = None,
        admission: Admission | None = None,
        http_policy: http_policy_mod.HttpPolicy | None = None,
        retry: provider_base.RetryPolicy | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        mcp: mcpservers.McpPool | None = None,
        memory: memory_mod.Memory | None = None,
    ) -> None:
        self._mcp = mcp
        self._memory = memory
        self._replier = replier
        self._history = history
        self.approvals = approvals
        self._audit = audit
        self._admission = admission
        self.http_policy = http_policy or http_policy_mod.HttpPolicy()
        self.http = httpclient.HttpClient(timeout=self.http_policy.timeout)
        self._default_timeout = default_timeout
        self.toolbox = tools.Toolbox(runner=commands)
        self.providers = providers
        retry_policy = retry or provider_base.RetryPolicy(max_retries=providers.models.max_retries)
        self.agents = agents.AgentRunner(
            providers=providers, toolbox=self.toolbox, retry=retry_policy, mcp=mcp
        )
        self.fleets = fleets.FleetRunner(agents=self.agents, approvals=approvals)

    @property
    def history(self) -> runs.RunHistory:
        return self._history

    def new_record(
        self, *, binding: str, flow: str, context: str, message: ports.EventMessage, run_id: str | None = None
    ) -> runs.RunRecord:
        """Create and register the record of a run about to start."""
        record = runs.RunRecord(
            run_id=run_id or runs.new_run_id(),
            binding=binding,
            flow=flow,
            context=context,
            platform=message.platform,
            trigger=message.trigger,
            user=message.user.id,
        )
        self._history.add(record)
        return record

    async def run(
        self, plan: flows.RunPlan, message: ports.EventMessage, *, record: runs.RunRecord | None = None
    ) -> runs.RunRecord:
        """Execute `plan` for `message` to the end; the outcome is in the returned record (never raises,
        except `CancelledError`, after recording the cancellation and telling the origin)."""
        if record is None:
            record = self.new_record(
                binding=plan.binding, flow=plan.flow.name, context=plan.context.name, message=message
            )
        record.flow, record.context, record.digest = plan.flow.name, plan.context.name, plan.digest
        timeout = plan.context.max_execution_seconds or self._default_timeout
        record.timeout_seconds = timeout
        loop = asyncio.get_running_loop()
        scope = agents.RunScope(
            run_id=record.run_id,
            context_name=plan.context.name,
            user=message.user,
            origin=message.reply_target(),
            deadline=loop.time() + timeout,
            max_tokens_cap=plan.context.max_tokens_per_request,
            approvers=plan.context.approvers,
            binding=plan.binding,
        )
        run = nodes.RunState(plan, message, record, scope, _initial_vars(plan, message, record.run_id))
        lease: limits.Lease | None = None
        if self._admission is not None:
            admitted = await self._admission.admit(
                plan.context.name, user=message.user, run_id=record.run_id, agent=plan_agent(plan) or ""
            )
            if isinstance(admitted, guard.Denial):
                record.finish(runs.RunStatus.FAILED, error=f"not started: {admitted.reason}")
                await self._report(run)
                self._history.prune()
                return record
            lease = admitted
        await self._audit_write(run, "agent.run.started", "unknown")
        try:
            await self._recall(run)  # inside the try: whatever happens, the lease is released
            async with (
                deadlines.deadline(
                    scope.deadline, on_extend=scope.extend, on_pause=scope.note_approval
                ) as cm,
                self._servers_leased(plan),
            ):
                run.timeout = cm
                await self._drive(run)
        except TimeoutError:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.TIMED_OUT, error=f"the run did not finish within {timeout:g} s")
        except nodes.Stopped as exc:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.STOPPED, error=str(exc))
        except nodes.NodeFailed as exc:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.FAILED, error=str(exc))
        except asyncio.CancelledError:
            self._cancel_pending(run)
            record.finish(runs.RunStatus.CANCELLED, error="cancelled: aofd is shutting down")
            self._tally(run)
            if lease is not None:
                lease.release()
            await self._finish_quietly(run)
            raise
        except Exception as exc:  # a bug: record it, tell the origin, keep the daemon up
            log.exception("run.crashed", run_id=record.run_id)
            self._cancel_pending(run)
            record.finish(runs.RunStatus.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            record.answer = self._answer_text(run)
            record.finish(runs.RunStatus.COMPLETED)
        if lease is not None:
            lease.release()
        self._tally(run)
        answer_id = await self._report(run)
        await self._remember(run, answer_id)
        await self._audit_write(
            run, "agent.run.finished", "success" if record.status is runs.RunStatus.COMPLETED else "failure"
        )
        self._history.prune()
        return record

    def _servers_leased(self, plan: flows.RunPlan) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the plan's MCP servers (in its Context) for the run: a hot swap retires none it uses."""
        servers = flows.mcp_servers(plan)
        if self._mcp is None or not servers:
            return contextlib.nullcontext()
        return self._mcp.lease(mcpservers.key_of(plan.context.name, spec) for spec in servers)

    # --- conversation memory -----------------------------------------------------------------

    def _memory_policy(self, plan: flows.RunPlan) -> tuple[str, memory_specs.MemoryPolicy] | None:
        """The flow's one agent and its memory, when it has memory (a flow of several agents has none)."""
        name = plan_agent(plan)
        agent = plan.agents.get(name) if name is not None else None
        if agent is None or not agent.memory.enabled:
            return None
        return agent.name, agent.memory

    async def _recall(self, run: nodes.RunState) -> None:
        """Lend the run's agent the earlier turns of the conversation its event continues."""
        plan, message, scope = run.plan, run.message, run.scope
        found = self._memory_policy(plan)
        if self._memory is None or found is None or not message.conversation:
            return
        agent, policy = found
        try:
            conversation = message.conversation
            if message.platform in memory_mod.ALIASED_PLATFORMS:  # a reply chain: its root
                conversation = await self._memory.resolve(plan.context.name, plan.binding, conversation)
            key = memory_mod.Key(plan.context.name, plan.binding, conversation)
            turns = await self._memory.recall(key, policy, idle=memory_mod.IDLE_SECONDS.get(message.platform))
        except Exception as exc:  # memory is best effort: the run goes on without it
            log.warning("memory.recall_failed", run_id=run.record.run_id, error=type(exc).__name__)
            return
        scope.conversation = conversation
        scope.memory = memory_mod.Recall(agent, policy, turns)

    async def _remember(self, run: nodes.RunState, answer_id: str | None) -> None:
        """Append the completed run's turn (the person's text, the answer, the tools used)."""
        scope, record, message = run.scope, run.record, run.message
        if self._memory is None or scope.memory is None or record.status is not runs.RunStatus.COMPLETED:
            return
        answer = run.plan.flow.node(run.answer_node) if run.answer_node is not None else None
        if answer is None or answer.type != "agent" or answer.config.agent != scope.memory.agent:
            return  # the answer is not the agent's own (a conditional skipped it): no turn to remember
        aliases = [memory_mod.own_ref(message)]
        if answer_id and message.platform in memory_mod.ALIASED_PLATFORMS:
            aliases.append(f"{message.channel_id}/{answer_id}")
        try:
            await self._memory.remember(
                memory_mod.Key(run.plan.context.name, run.plan.binding, scope.conversation),
                scope.memory.policy,
                user_text=message.text,
                answer_text=record.answer or "",
                tools=scope.tool_log,
                idle=memory_mod.IDLE_SECONDS.get(message.platform),
                aliases=aliases,
            )
        except Exception as exc:  # best effort: a damaged store loses the turn, never the run
            log.warning("memory.remember_failed", run_id=record.run_id, error=type(exc).__name__)

    async def aclose(self) -> None:
        """Close the HTTP client of HTTP nodes and the provider clients."""
        await self.http.aclose()
        await self.providers.aclose()

    # --- scheduling --------------------------------------------------------------------------

    async def _drive(self, run: nodes.RunState) -> None:
        flow = run.plan.flow
        for node in flow.nodes:
            run.record.node(node.id, node.type)
        try:
            async with asyncio.TaskGroup() as tg:
                run.tg = tg
                for node_id in flow.entries:
                    self._launch(run, node_id)
        except* nodes.NodeFailed as group:
            raise group.exceptions[0] from None
        except* nodes.Stopped as group:
            raise group.exceptions[0] from None

    def _launch(self, run: nodes.RunState, node_id: str) -> None:
        if node_id in run.started:
            return
        run.started.add(node_id)
        assert run.tg is not None
        run.tg.create_task(
            self._node_task(run, run.plan.flow.node(node_id)), name=f"{run.record.run_id}:{node_id}"
        )

    async def _node_task(self, run: nodes.RunState, node: flows.NodeSpec) -> None:
        record = run.record.node(node.id, node.type)
        if not self._conditions_pass(run, node):
            record.status = runs.NodeStatus.SKIPPED
            self._advance(run, node, taken=False)
            return
        record.status = runs.NodeStatus.RUNNING
        record.started_at = time.time()
        try:
            output = await self._execute(run, node, record)
        except (nodes.NodeFailed, nodes.Stopped) as exc:
            record.status = (
                runs.NodeStatus.FAILED if isinstance(exc, nodes.NodeFailed) else runs.NodeStatus.COMPLETED
            )
            record.error = str(exc)
            record.ended_at = time.time()
            raise
        except asyncio.CancelledError:
            record.status = runs.NodeStatus.CANCELLED
            record.ended_at = time.time()
            raise
        except errors.AofdError as exc:  # an agent, a fleet or the guard failed the node
            record.status = runs.NodeStatus.FAILED
            record.error = str(exc)
            record.ended_at = time.time()
            raise nodes.NodeFailed(f"node {node.id} failed: {exc}") from exc
        record.status = runs.NodeStatus.COMPLETED
        record.output = output
        record.ended_at = time.time()
        run.outputs[node.id] = output
        if node.type in ("agent", "fleet", "script", "transform", "http", "conditional") and (
            node.type in nodes.ANSWER_TYPES
            or run.answer_node is None
            or run.plan.flow.node(run.answer_node).type not in nodes.ANSWER_TYPES
        ):
            run.answer_node = node.id
        self._advance(run, node, taken=True)

    def _advance(self, run: nodes.RunState, node: flows.NodeSpec, *, taken: bool) -> None:
        """Decide `node`'s outgoing connections, then start every target that became ready."""
        flow = run.plan.flow
        local = _local_scope(run.vars.get(node.id))
        targets: list[str] = []
        for index, edge in enumerate(flow.edges):
            if edge.source != node.id:
                continue
            go = taken and (edge.when is None or templates.evaluate(edge.when, run.vars, local))
            run.edge_state[index] = go
            targets.append(edge.target)
        for target in dict.fromkeys(targets):
            self._maybe_start(run, target)

    def _maybe_start(self, run: nodes.RunState, node_id: str) -> None:
        if node_id in run.started:
            return
        flow = run.plan.flow
        incoming = [i for i, e in enumerate(flow.edges) if e.target == node_id]
        decided = [run.edge_state[i] for i in incoming if i in run.edge_state]
        taken = sum(1 for d in decided if d)
        total = len(incoming)
        all_decided = len(decided) == total
        node = flow.node(node_id)
        strategy = node.config.strategy.value if node.type == "join" else ""
        if strategy == "any":
            ready, skip = taken >= 1, all_decided and taken == 0
        elif strategy == "majority":
            ready, skip = taken * 2 > total, all_decided and taken * 2 <= total
        elif strategy == "all":
            ready, skip = all_decided and taken == total, all_decided and taken < total
        else:
            ready, skip = all_decided and taken >= 1, all_decided and taken == 0
        if ready:
            self._launch(run, node_id)
        elif skip:
            run.started.add(node_id)
            run.record.node(node_id, node.type).status = runs.NodeStatus.SKIPPED
            self._advance(run, node, taken=False)

    def _conditions_pass(self, run: nodes.RunState, node: flows.NodeSpec) -> bool:
        for cond in node.conditions:
            if cond.when:
                if not templates.evaluate(cond.when, run.vars):
                    return False
                continue
            source, value = cond.from_, cond.value
            if not source or value is None:
                continue
            found = run.vars.get(source)
            if not isinstance(found, Mapping):
                continue  # upstream: a condition whose variable is missing passes
            actual = found.get("result", found.get("output"))
            if templates.to_text(actual).strip().lower() != templates.to_text(value).strip().lower():
                return False
        return True

    def _cancel_pending(self, run: nodes.RunState) -> None:
        for record in run.record.nodes.values():
            if record.status in (runs.NodeStatus.RUNNING, runs.NodeStatus.WAITING):
                record.status = runs.NodeStatus.CANCELLED
                record.ended_at = time.time()

    # --- nodes -------------------------------------------------------------------------------

    async def _execute(self, run: nodes.RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
        handler = nodes.HANDLERS.get(node.type)
        if handler is None:
            raise nodes.NodeFailed(f"node {node.id}: node type {node.type!r} is not supported")
        return await handler(self, run, node, record)

    def _answer_text(self, run: nodes.RunState) -> str | None:
        if run.answer_node is None:
            return None
        return nodes.as_text(run.outputs.get(run.answer_node))

    def _tally(self, run: nodes.RunState) -> None:
        record = run.record
        record.input_tokens = run.scope.usage.input_tokens
        record.output_tokens = run.scope.usage.output_tokens
        record.model_calls = run.scope.model_calls
        record.tool_calls = run.scope.tool_calls
        record.commands_run = run.scope.commands_run
        record.commands_denied = run.scope.commands_denied
        record.approvals = run.scope.approvals
        record.approval_wait_s = run.scope.waited
        if self._admission is not None:
            self._admission.charge_tokens(run.plan.context.name, record.input_tokens + record.output_tokens)

    async def _report(self, run: nodes.RunState) -> str | None:
        """Post the answer (or the failure) to the origin; the answer's message id where the platform
        gives one (a reply to it continues the conversation)."""
        record = run.record
        origin = run.message.reply_target()
        if record.status is runs.RunStatus.COMPLETED:
            if run.answered_origin or not record.answer:
                return None
            return await self._post(origin, record.answer)
        await self.reply(ports.private(origin), failure_text(record))
        return None

    async def _finish_quietly(self, run: nodes.RunState) -> None:
        """After cancellation: tell the origin (bounded) and audit, without raising."""
        try:
            async with asyncio.timeout(2.0):
                await self.reply(ports.private(run.message.reply_target()), failure_text(run.record))
                await self._audit_write(run, "agent.run.finished", "failure")
        except (TimeoutError, asyncio.CancelledError):
            pass
        self._history.prune()

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        await self._post(target, text)

    async def _post(self, target: ports.ReplyTarget, text: str) -> str | None:
        try:
            return await self._replier.reply(target, text)
        except Exception:
            log.exception("run.reply_failed", platform=target.platform, channel=target.channel_id)
            return None

    async def _audit_write(self, run: nodes.RunState, action: str, outcome: ports.AuditOutcome) -> None:
        if self._audit is None:
            return
        record = run.record
        details: dict[str, Any] = {"binding": record.binding, "flow": record.flow}
        if action == "agent.run.finished":
            details["run"] = {
                "status": record.status.value,
                "error": record.error,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "model_calls": record.model_calls,
            }
        context = run.plan.context
        event = ports.AuditEvent(
            action,
            outcome=outcome,
            user=run.message.user,
            run_id=record.run_id,
            agent=plan_agent(run.plan),
            target=(
                ports.AuditTarget(namespace=context.namespace, cluster=context.cluster)
                if context.namespace or context.cluster
                else None
            ),
            details=details,
        )
        try:
            await self._audit.write(record.context, event)
        except Exception:
            log.exception("run.audit_failed", run_id=record.run_id, action=action)


def plan_agent(plan: flows.RunPlan) -> str | None:
    """The Agent a run's audit records name (`aofd.agent.name`): the one agent its flow runs, or
    None for a flow of several agents or of none (the flow's name is `aofd.flow`)."""
    names = {node.config.agent for node in plan.flow.nodes if node.type == "agent" and node.config.agent}
    return names.pop() if len(names) == 1 else None


def failure_text(record: runs.RunRecord) -> str:
    """What the origin is told when a run does not complete."""
    status = record.status
    what = {
        runs.RunStatus.FAILED: "failed",
        runs.RunStatus.TIMED_OUT: "timed out",
        runs.RunStatus.STOPPED: "stopped",
        runs.RunStatus.CANCELLED: "was cancelled",
    }.get(status, status.value)
    return f"⚠️ Run {record.run_id} of {record.flow} {what}: {record.error or 'no details'}"


def _initial_vars(plan: flows.RunPlan, message: ports.EventMessage, run_id: str) -> dict[str, Any]:
    """The template scope at the start of a run: event, trigger, context (name/namespace/cluster), run.

    Nothing from the host environment and nothing from the Context's env ever enters it.
    """
    user = {
        "id": message.user.id,
        "name": message.user.name,
        "username": message.user.name,
        "domain": message.user.domain,
    }
    event = {
        "type": message.event_type,
        "text": message.text,
        "user": user,
        "user_id": message.user.id,
        "channel": message.channel_id,
        "channel_id": message.channel_id,
        "channel_name": message.channel_name,
        "thread": message.thread,
        "thread_id": message.thread,
        "ts": message.thread,
        "timestamp": message.received_at,
        "platform": message.platform,
        "trigger": message.trigger,
        "delivery_id": message.delivery_id,
    }
    trigger = {
        "event": event,
        "text": message.text,
        "user": user,
        "platform": message.platform,
        "trigger_name": message.trigger,
        "binding_name": plan.binding,
        "context_name": plan.context.name,
        "flow_name": plan.flow.name,
    }
    context = {
        "name": plan.context.name,
        "namespace": plan.context.namespace,
        "cluster": plan.context.cluster,
    }
    return {"event": event, "trigger": trigger, "context": context, "run": {"id": run_id}}


def _local_scope(entry: Any) -> dict[str, Any]:
    """Bare words in a `when` resolve against the source node: its fields and its output's fields."""
    if not isinstance(entry, Mapping):
        return {}
    local = dict(entry)
    output = entry.get("output")
    if isinstance(output, str) and output.lstrip().startswith("{"):
        try:
            output = json.loads(output)
        except json.JSONDecodeError:
            output = None
    if isinstance(output, Mapping):
        for key, value in output.items():
            local.setdefault(str(key), value)
    return local
