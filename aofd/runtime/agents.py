"""One agent answering one prompt: the model call and the tool-use loop.

This module owns `RunScope` (what one flow run lends its agents: run id, Context, user,
origin, deadline, the Context's max-tokens cap, the usage tally and the conversation's earlier
turns, `aofd.runtime.memory`, which come before the prompt) and `AgentRunner.run`
for a compiled `aofd.specs.flows.AgentSpec`, the loop: call the model with the instructions
as system prompt and the built-in tools and its MCP servers' tools (as listed when the run's agent
starts); run each requested tool through the guard (`tools.Toolbox`); feed the
results back; stop at a final answer or after `max_iterations` model turns. Model errors
are retried with backoff inside the run's deadline (`base.complete_with_retry`).

It must not read the host environment, put a Context's env values into a prompt, or run
anything itself: every command goes to the guard.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import structlog

from aofd import errors
from aofd.runtime import memory as memory_mod
from aofd.runtime import ports, tools
from aofd.runtime.providers import base, registry
from aofd.specs import flows

log = structlog.get_logger()

DEFAULT_MAX_TOKENS = 4096


@dataclasses.dataclass(slots=True)
class RunScope:
    """What one flow run lends its agents. `usage` and `model_calls` are tallied in place.

    `deadline` is event-loop time (`loop.time()`); None means no deadline.
    """

    run_id: str
    context_name: str
    user: ports.UserRef
    origin: ports.ReplyTarget
    deadline: float | None = None
    max_tokens_cap: int | None = None
    usage: base.Usage = dataclasses.field(default_factory=base.Usage)
    model_calls: int = 0
    tool_calls: int = 0
    approvers: tuple[str, ...] = ()
    waited: float = 0.0
    """Seconds the run spent waiting for people to decide approvals (its deadline paused)."""
    approvals: int = 0
    commands_run: int = 0
    commands_denied: int = 0
    binding: str = ""
    conversation: str = ""
    """The conversation the run continues (`aofd.runtime.memory`), '' none."""
    memory: memory_mod.Recall | None = None
    """The conversation's earlier turns, shown to the agent they belong to; None: no memory."""
    tool_log: list[memory_mod.ToolUse] = dataclasses.field(default_factory=list)
    """The tools the run's agents called and whether each succeeded (a remembered turn's summary)."""

    def note_approval(self) -> None:
        """One approval request began to wait (`aofd.runtime.deadlines` `on_pause`)."""
        self.approvals += 1

    def note_command(self, ran: bool) -> None:
        """One command the guard decided: run (whatever its exit code) or refused."""
        if ran:
            self.commands_run += 1
        else:
            self.commands_denied += 1

    def extend(self, seconds: float) -> None:
        """Move the deadline `seconds` on (a pause while a person decided; `aofd.runtime.deadlines`)."""
        self.waited += seconds
        if self.deadline is not None:
            self.deadline += seconds

    def call_context(self, agent: str) -> tools.CallContext:
        return tools.CallContext(
            run_id=self.run_id,
            context_name=self.context_name,
            agent=agent,
            user=self.user,
            origin=self.origin,
            on_command=self.note_command,
            time_left=self.time_left,
        )

    def time_left(self) -> float | None:
        """Seconds until the deadline (event-loop time), None without one."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()


@dataclasses.dataclass(frozen=True, slots=True)
class AgentResult:
    agent: str
    text: str
    usage: base.Usage
    iterations: int
    tool_calls: int
    stop_reason: str
    unknown_tools: tuple[str, ...] = ()


class AgentFailed(errors.RunFailed):
    """The agent could not produce an answer (model error after retries, unknown provider)."""


class AgentRunner:
    """Runs agents for every flow run of one engine (stateless between calls)."""

    def __init__(
        self,
        *,
        providers: registry.Providers,
        toolbox: tools.Toolbox,
        retry: base.RetryPolicy,
        clock: Callable[[], float] | None = None,
        mcp: tools.McpListing | None = None,
    ) -> None:
        self._mcp = mcp  # the daemon's MCP servers (their current tool listings); None: none
        self._providers = providers
        self._toolbox = toolbox
        self._retry = retry
        self._clock = clock

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def max_tokens(self, agent: flows.AgentSpec, scope: RunScope) -> int:
        """The agent's `max_tokens` (default 4096), capped by `limits.max_tokens_per_request`."""
        wanted = agent.max_tokens or DEFAULT_MAX_TOKENS
        if scope.max_tokens_cap is not None:
            return max(1, min(wanted, scope.max_tokens_cap))
        return wanted

    def history(self, agent: flows.AgentSpec, scope: RunScope) -> list[base.Message]:
        """The conversation's earlier turns as user/assistant messages, within the agent's memory
        budget and the Context's `max_tokens_per_request` (none for another agent of the flow)."""
        recall = scope.memory
        if recall is None or recall.agent != agent.name or not recall.turns:
            return []
        pairs = memory_mod.history_messages(recall.turns, recall.policy, cap_tokens=scope.max_tokens_cap)
        return [base.Message(role, text) for role, text in pairs]

    async def run(self, agent: flows.AgentSpec, prompt: str, scope: RunScope) -> AgentResult:
        """Answer `prompt` as `agent`, using its tools through the guard. Raises `AgentFailed`."""
        ref = agent.model_ref
        problem = self._providers.problem(agent.model, agent.provider)
        if problem:
            raise AgentFailed(f"agent {agent.name}: {problem}")
        try:
            provider = self._providers.get(ref.provider)
        except base.ModelError as exc:
            raise AgentFailed(f"agent {agent.name}: {exc}") from exc
        offered = tools.offered(agent.tools)
        offered += tools.mcp_tools(agent.mcp, scope.context_name, self._mcp)  # `<server>__<tool>`
        unknown = agent.unknown_tools
        by_name = {t.name: t for t in offered}
        for alias in ("bash", "sh"):
            if "shell" in by_name:
                by_name.setdefault(alias, by_name["shell"])
        if "http" in by_name:
            by_name.setdefault("http_request", by_name["http"])
        messages: list[base.Message] = [*self.history(agent, scope), base.Message("user", prompt)]
        usage = base.Usage()
        calls = 0
        text = ""
        stop = ""
        max_tokens = self.max_tokens(agent, scope)
        ctx = scope.call_context(agent.name)
        for iteration in range(1, max(1, agent.max_iterations) + 1):
            request = base.ModelRequest(
                model=ref.model,
                messages=tuple(messages),
                system=agent.instructions,
                tools=tuple(t.schema for t in offered),
                max_tokens=max_tokens,
                temperature=agent.temperature,
            )
            try:
                response = await base.complete_with_retry(
                    provider, request, policy=self._retry, deadline=scope.deadline, clock=self._now
                )
            except base.ModelError as exc:
                raise AgentFailed(f"agent {agent.name} ({ref}): {exc}") from exc
            scope.model_calls += 1
            usage = usage + response.usage
            scope.usage = scope.usage + response.usage
            text = response.text
            stop = response.stop_reason
            if not response.tool_calls:
                return AgentResult(agent.name, text, usage, iteration, calls, stop or "end_turn", unknown)
            messages.append(base.Message("assistant", response.text, tool_calls=response.tool_calls))
            results: list[base.ToolResult] = []
            for call in response.tool_calls:
                calls += 1
                scope.tool_calls += 1
                tool = by_name.get(call.name)
                if tool is None:  # not offered to this agent: refused, and audited like any attempt
                    output = await self._toolbox.refuse_unknown(call.name, call.arguments, ctx)
                else:
                    output = await self._toolbox.call(tool, call.arguments, ctx)
                log.debug(
                    "agent.tool", run_id=scope.run_id, agent=agent.name, tool=call.name, error=output.is_error
                )
                results.append(base.ToolResult(call.id, call.name, output.text, output.is_error))
                # only names the agent was offered: a name the model made up is its text, not a tool
                used = call.name if tool is not None else memory_mod.UNKNOWN_TOOL
                scope.tool_log.append(memory_mod.ToolUse(used, not output.is_error))
            messages.append(base.Message("user", tool_results=tuple(results)))
        note = f"(agent {agent.name} stopped after {agent.max_iterations} model turns without a final answer)"
        return AgentResult(
            agent.name,
            f"{text}\n\n{note}".strip(),
            usage,
            agent.max_iterations,
            calls,
            "max_iterations",
            unknown,
        )
