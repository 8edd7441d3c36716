"""What each AgentFlow node type does when its turn comes (effects through the engine's services).

This module owns `RunState` (the mutable state of one run, owned by the run's task) and the
handler of every node type: Agent, Fleet, Script, Conditional, Transform, Wait, Parallel,
Join, Approval, HTTP, Slack/Discord/Response, End. A handler gets the engine's `Services`
(agent and fleet runners, the toolbox, the approval gate, the HTTP client, replies), the run's
state and the node's compiled spec (`aofd.specs.flows.NodeSpec`, with its typed config), and
returns the node's output; it raises `NodeFailed` to fail the run or `Stopped` to stop it.

Security rules kept here: templates never read the host environment; Script nodes go to the
guard as argv lists (a command string is split once, then each token is rendered, so a
template value can never add arguments); HTTP nodes follow the engine's `HttpPolicy`.

Scheduling (which node runs when) and the run's life are `aofd.runtime.engine`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aofd import errors
from aofd.resources.kinds import flow as flow_kind
from aofd.runtime import (
    agents,
    approvals,
    deadlines,
    fleets,
    guard,
    httpclient,
    ports,
    runs,
    templates,
    tools,
)
from aofd.specs import flows, http_policy, policy

RESERVED_SCOPE = frozenset({"event", "trigger", "context", "run", "approval"})
ANSWER_TYPES = frozenset({"agent", "fleet"})
"""Node types whose output is the run's answer (else the last script/transform/http/conditional)."""


class NodeFailed(errors.RunFailed):
    """A node could not complete; the run fails with this message."""


class Stopped(errors.RunStopped):
    """An Approval node was denied or expired: the run stops."""


_AgentRunner = agents.AgentRunner
_FleetRunner = fleets.FleetRunner
_ApprovalGate = fleets.ApprovalGate
_HttpPolicy = http_policy.HttpPolicy
_HttpClient = httpclient.HttpClient


class Services(Protocol):
    """What node handlers use of the engine (`aofd.runtime.engine.Engine`)."""

    agents: _AgentRunner
    fleets: _FleetRunner
    toolbox: tools.Toolbox
    approvals: _ApprovalGate | None
    http_policy: _HttpPolicy
    http: _HttpClient

    async def reply(self, target: ports.ReplyTarget, text: str) -> None: ...


@dataclasses.dataclass(slots=True)
class RunState:
    """The mutable state of one run; owned by the run's task only."""

    plan: flows.RunPlan
    message: ports.EventMessage
    record: runs.RunRecord
    scope: agents.RunScope
    vars: dict[str, Any]
    timeout: asyncio.Timeout | None = None
    tg: asyncio.TaskGroup | None = None
    edge_state: dict[int, bool] = dataclasses.field(default_factory=dict)
    started: set[str] = dataclasses.field(default_factory=set)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    answer_node: str | None = None
    answered_origin: bool = False

    def set(self, node: flows.NodeSpec, output: Any, **extra: Any) -> Any:
        """Record `output` as `${<node id>.output}` (and `extra` beside it); returns `output`."""
        if node.id not in RESERVED_SCOPE:
            self.vars[node.id] = {"output": output, "status": "completed", **extra}
        return output

    def input_for(self, node: flows.NodeSpec) -> str:
        """What an Agent or Fleet node is asked: its `input`, else the request and the answers before it."""
        given = node.config.input
        if given:
            return templates.render(given, self.vars)
        flow = self.plan.flow
        sources = [
            flow.edges[i].source
            for i in sorted(self.edge_state)
            if self.edge_state[i] and flow.edges[i].target == node.id
        ]
        answers = [
            (s, self.outputs[s])
            for s in sources
            if s in self.outputs and flow.node(s).type in ("agent", "fleet", "script", "http")
        ]
        request = self.message.text
        if not answers:
            return request
        previous = "\n\n".join(f"Answer of the previous step ({s}):\n{as_text(o)}" for s, o in answers)
        return f"Request:\n{request}\n\n{previous}"


Handler = Callable[[Services, RunState, flows.NodeSpec, runs.NodeRecord], Awaitable[Any]]


# --- agents and fleets -----------------------------------------------------------------------


async def agent_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    name = node.config.agent_name
    if node.agent is not None:
        spec = node.agent
    elif name and name in run.plan.agents:
        spec = run.plan.agents[name]
    elif name and name in run.plan.fleets:
        return await _fleet(svc, run, node, name)
    else:
        raise NodeFailed(f"node {node.id}: agent {name!r} is not resolved by this binding")
    result = await svc.agents.run(spec, run.input_for(node), run.scope)
    usage = {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens}
    return run.set(node, result.text, agent=spec.name, usage=usage, stop_reason=result.stop_reason)


async def fleet_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    config = node.config
    name = config.fleet or (config.agent_ref.name if config.agent_ref is not None else "")
    return await _fleet(svc, run, node, name or "")


async def _fleet(svc: Services, run: RunState, node: flows.NodeSpec, name: str) -> Any:
    fleet = run.plan.fleets.get(name)
    if fleet is None:
        raise NodeFailed(f"node {node.id}: fleet {name!r} is not resolved by this binding")
    result = await svc.fleets.run(fleet, run.input_for(node), run.scope)
    return run.set(node, result.text, fleet=fleet.name, mode=result.mode, detail=dict(result.detail))


# --- scripts, conditions, transforms ---------------------------------------------------------


async def script_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    sc = node.config.script_config or flow_kind.ScriptConfig()
    argv = script_argv(sc, run.vars)
    if not argv:
        raise NodeFailed(f"node {node.id}: scriptConfig needs command or tool")
    ctx = run.scope.call_context(agent="")
    timeout = float(sc.timeout_seconds)
    try:
        async with deadlines.deadline(asyncio.get_running_loop().time() + timeout):
            result = await svc.toolbox.run(argv, ctx, tool="script")
    except TimeoutError as exc:
        raise NodeFailed(f"node {node.id}: the command did not finish within {timeout:g} s") from exc
    except errors.PolicyDenied as exc:
        raise NodeFailed(f"node {node.id}: refused by the Context's policy: {exc.reason}") from exc
    if isinstance(result, guard.Denial):
        raise NodeFailed(f"node {node.id}: not run ({result.stage}): {result.reason}")
    code = tools.exit_code(result)
    stdout = tools.stdout_of(result)
    stderr = tools.text_of(getattr(result, "stderr", None))
    if code != 0 and sc.fail_on_error:
        raise NodeFailed(
            f"node {node.id}: {policy.render_argv(argv)} exited with {code}: {stderr.strip()[:500]}"
        )
    mode = sc.parse.value if sc.parse is not None else "text"
    output = parse_output(stdout, mode, sc.pattern)
    return run.set(node, output, exit_code=code, stdout=stdout, stderr=stderr)


async def conditional_node(
    svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord
) -> Any:
    config = node.config
    value: Any = None
    if config.condition is not None:
        value = templates.evaluate(config.condition, run.vars)
    else:
        for branch in config.conditions:
            if templates.evaluate(branch.expression, run.vars):
                value = branch.name
                break
    return run.set(node, {"result": value}, result=value)


_EXPORT = re.compile(r"^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


async def transform_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    config = node.config
    script = config.script or ""
    exports: dict[str, str] = {}
    for line in script.splitlines():
        match = _EXPORT.match(line)
        if match:
            value = templates.render(match.group(2).strip(), run.vars)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            exports[match.group(1)] = value
    for key, value in exports.items():
        if key not in RESERVED_SCOPE and key not in run.vars:
            run.vars[key] = value
    if not exports:
        template = config.message or config.input or script
        return run.set(node, templates.render(template, run.vars))
    return run.set(node, exports, **exports)


async def wait_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    await asyncio.sleep(node.wait_seconds)
    return run.set(node, {"waited_seconds": node.wait_seconds})


async def parallel_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    branches = [e.target for e in run.plan.flow.edges if e.source == node.id]
    return run.set(node, {"branches": branches})


async def join_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    flow = run.plan.flow
    sources = [
        flow.edges[i].source for i in run.edge_state if run.edge_state[i] and flow.edges[i].target == node.id
    ]
    return run.set(node, {s: run.outputs.get(s) for s in sources})


async def end_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    return run.set(node, None)


# --- people and the outside world ------------------------------------------------------------


async def approval_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    if svc.approvals is None:
        raise NodeFailed(f"node {node.id}: approvals are not available in this daemon")
    config = node.config
    ctx = run.plan.context
    timeout = float(config.timeout_seconds or ctx.approval_timeout)
    text = templates.render(config.message or f"Approve continuing flow {run.plan.flow.name}?", run.vars)
    approvers = ctx.approvers
    if config.approvers:
        # The Context is the boundary: a flow may narrow its approvers, never widen them.
        approvers = approvals.narrow_approvers(config.approvers, ctx.approvers)
        if not approvers:
            raise NodeFailed(
                f"node {node.id}: none of its approvers ({', '.join(config.approvers)}) is an approver "
                f"of context {ctx.name}"
            )
    request = fleets.ApprovalRequest(
        run_id=run.record.run_id,
        context_name=ctx.name,
        title=f"Flow {run.plan.flow.name}: approval {node.id}",
        text=text,
        user=run.message.user,
        origin=run.message.reply_target(),
        timeout=timeout,
        approvers=approvers,
        node=node.id,
        min_approvers=ctx.min_approvers,
        allow_self_approval=ctx.allow_self_approval,
    )
    record.status = runs.NodeStatus.WAITING
    run.record.status = runs.RunStatus.WAITING
    try:
        decision = await svc.approvals.request(request)  # the run's deadline is paused meanwhile
    finally:
        if run.record.status is runs.RunStatus.WAITING:
            run.record.status = runs.RunStatus.RUNNING
    output = {"status": decision.status, "by": decision.by, "reason": decision.reason}
    run.vars["approval"] = {"status": decision.status, "approved_by": decision.by, "reason": decision.reason}
    run.set(node, output, **output)
    record.output = output
    if decision.status != "approved":
        who = f" by {decision.by}" if decision.by else ""
        raise Stopped(f"approval {node.id} was {decision.status}{who}")
    return output


async def http_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    config = node.config
    url = templates.render(config.url or "", run.vars)
    problem = svc.http_policy.check(url)
    if problem:
        raise NodeFailed(f"node {node.id}: {problem}")
    method = (config.method or "GET").upper()
    headers = {k: templates.render(v, run.vars) for k, v in config.headers.items()}
    body = templates.render_value(config.body, run.vars)
    json_body = body if isinstance(body, Mapping | list) else None
    data = str(body) if body is not None and json_body is None else None
    try:
        answer = await svc.http.request(
            method,
            url,
            headers=headers,
            json_body=json_body,
            data=data,
            max_body=svc.http_policy.max_body_bytes,
        )
    except httpclient.HttpError as exc:
        raise NodeFailed(f"node {node.id}: {method} {_where(url)} failed: {exc}") from exc
    text = answer.body.decode("utf-8", "replace")
    parsed: Any = text
    if "json" in answer.content_type:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
    if answer.status >= 400 and config.fail_on_error is not False:
        raise NodeFailed(f"node {node.id}: {method} {_where(url)} answered HTTP {answer.status}")
    return run.set(node, {"status": answer.status, "body": parsed}, status_code=answer.status)


def _where(url: str) -> str:
    """The scheme, host and path of `url` for a message: never its query or credentials (a token
    rendered into a URL template stays out of run records and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<url>"
    host = parts.netloc.rpartition("@")[2]  # the host and port, without user:password@
    return f"{parts.scheme}://{host}{parts.path}" if host else "<url>"


async def message_node(svc: Services, run: RunState, node: flows.NodeSpec, record: runs.NodeRecord) -> Any:
    config = node.config
    default = "${" + run.answer_node + ".output}" if run.answer_node else "${event.text}"
    text = templates.render(config.message or default, run.vars)
    channel = templates.render(config.channel or "", run.vars).strip()
    origin = run.message.reply_target()
    if channel and channel not in (origin.channel_id, run.message.channel_name):
        target = ports.ReplyTarget(origin.platform, origin.trigger, channel_id=channel)
    else:
        target = origin
        run.answered_origin = True
    await svc.reply(target, text)
    return run.set(node, {"sent": True, "channel": target.channel_id, "text": text})


HANDLERS: Mapping[str, Handler] = {
    "agent": agent_node,
    "fleet": fleet_node,
    "script": script_node,
    "conditional": conditional_node,
    "transform": transform_node,
    "wait": wait_node,
    "parallel": parallel_node,
    "join": join_node,
    "approval": approval_node,
    "http": http_node,
    "slack": message_node,
    "discord": message_node,
    "response": message_node,
    "end": end_node,
}
"""Node type (lower-case) -> its handler; the compile stage accepts no other type."""


# --- helpers ---------------------------------------------------------------------------------


def script_argv(sc: flow_kind.ScriptConfig, scope: Mapping[str, Any]) -> tuple[str, ...]:
    """A Script node's argv: split first (`policy.tokenize`), render each token after, so a template
    value is always exactly one argument."""
    if sc.command:
        return tuple(templates.render(t, scope) for t in policy.tokenize(sc.command))
    if not sc.tool:
        return ()
    argv = [sc.tool]
    if sc.action and sc.action != "run":
        argv.append(sc.action)
    for key, value in sc.args.items():
        if key in ("resource", "name", "target", "args"):
            argv.extend([str(v) for v in value] if isinstance(value, list) else [str(value)])
        elif value is True:
            argv.append(f"--{key}")
        elif value not in (None, False):
            argv.append(f"--{key}={value}")
    return tuple(templates.render(t, scope) for t in argv)


def parse_output(stdout: str, mode: str, pattern: str | None) -> Any:
    if mode == "json":
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            return stdout
    if mode == "lines":
        return [line for line in stdout.splitlines() if line.strip()]
    if mode == "regex" and pattern:
        match = re.search(pattern, stdout)
        if match is None:
            return None
        return match.groupdict() or list(match.groups())
    return stdout


def as_text(value: Any) -> str:
    """A node's output as text (an answer's `output`/`text`/`message`/`response` field, else JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("output", "text", "message", "response"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return templates.to_text(value)
