"""`aofctl run agent|flow NAME --context CTX -i TEXT [PATH]`: one run, in this process, same engine;
`aofctl run binding NAME -i TEXT`: one run of a Manual trigger's binding, in the daemon.

This module owns the direct-execution path of the seed's CLI: load the resources under PATH
(the daemon's directory walker and planner), resolve the agent or flow and the Context by
name, and run it with the daemon's engine, command guard and audit log (`--audit-dir`,
default `./.aofd/audit`). Executables and model settings come from `--config` (a daemon
config file) and the environment (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`, ...), never
from a resource. Commands that need an approval are refused here (nobody can click in a
terminal); the answer says so.

Output: the answer as text (Response-node messages first), or the run record as JSON
(`-o json`). Exit 0 completed, 1 the run did not complete or the resources are invalid,
2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aofd import settings
from aofd.audit import journal, records
from aofd.cli import admin_cmds, validate_cmd
from aofd.cli import client as client_mod
from aofd.daemon import auditsink
from aofd.daemon import config as daemon_config
from aofd.plan import compiler
from aofd.runtime import approvals, commands, engine, guard, limits, ports, runs
from aofd.runtime.providers import registry
from aofd.specs import flows, policy

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run an agent or a flow once, here, under a Context; or start a Manual binding in the daemon",
    )
    parser.add_argument(
        "kind", choices=("agent", "flow", "binding"), help="what to run (binding: in the daemon)"
    )
    parser.add_argument("name", help="the Agent, AgentFlow or FlowBinding name")
    parser.add_argument(
        "path", nargs="?", default=".", metavar="PATH", help="the resource repo dir (default .)"
    )
    parser.add_argument("--context", "-C", help="the Context to run under (agent and flow)")
    parser.add_argument("-i", "--input", required=True, help="the request text")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--audit-dir", type=Path, default=Path(".aofd/audit"), help="audit log dir")
    parser.add_argument("--state-dir", type=Path, default=Path(".aofd"), help="cache and work dirs")
    parser.add_argument("--config", type=Path, help="a daemon config (executables, models)")
    admin_cmds.add_admin_flags(parser)
    parser.set_defaults(func=run)


class _Collect:
    """A Replier that keeps every message of the run (printed at the end)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        self.messages.append(text)


def run(args: argparse.Namespace) -> int:
    if args.kind == "binding":
        return run_binding(args)
    if not args.context:
        print("aofctl run: error: --context is required to run an agent or a flow", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = daemon_config.load(args.config) if args.config else settings.DaemonConfig()
    except Exception as exc:
        print(f"aofctl run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _views, compiled = validate_cmd.compile_paths([args.path], cfg=cfg, undefined="error")
    except validate_cmd.UsageError as exc:
        print(f"aofctl run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not compiled.ok:
        for issue in compiled.errors:
            print(issue.format(), file=sys.stderr)
        return EXIT_FAILED
    try:
        plan, ctx = build_plan(compiled, kind=args.kind, name=args.name, context=args.context)
    except LookupError as exc:
        print(f"aofctl run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    record, messages = asyncio.run(execute(plan, ctx, text=args.input, cfg=cfg, args=args))
    if args.output == "json":
        out = record.as_dict() | {"messages": messages}
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    else:
        for text in messages:
            sys.stdout.write(text.rstrip("\n") + "\n")
    return EXIT_OK if record.status is runs.RunStatus.COMPLETED else EXIT_FAILED


def run_binding(args: argparse.Namespace) -> int:
    """`aofctl run binding NAME -i TEXT`: the daemon starts one run of a binding of a Manual trigger
    (`POST /api/v1/runs`, as the named admin token's operator); prints the run id. An empty input is
    refused here; `--context` and PATH, which only `run agent|flow` use, are ignored with a note
    (the daemon runs the binding under its own Context, from what it has applied)."""
    if not args.input.strip():
        print("aofctl run: error: -i/--input is empty: give the request text", file=sys.stderr)
        return EXIT_USAGE
    ignored = [flag for flag, given in (("--context", args.context), ("PATH", args.path != ".")) if given]
    if ignored:
        print(
            f"aofctl run: note: {' and '.join(ignored)} ignored: the daemon runs binding {args.name} "
            "under the binding's own Context, from the resources it has applied",
            file=sys.stderr,
        )
    try:
        status, data = admin_cmds.admin_client(args).request(
            "POST", "/api/v1/runs", {"binding": args.name, "input": args.input}
        )
    except client_mod.AdminError as exc:
        print(f"aofctl run: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    body: dict[str, Any] = data if isinstance(data, dict) else {"error": str(data).strip()}
    if args.output == "json":
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    elif status < 300:
        sys.stdout.write(
            f"started run {body.get('run_id', '')} of binding {body.get('binding', args.name)} "
            f"in Context {body.get('context', '')} as {body.get('user', '')}\n"
        )
    else:
        print(f"aofctl run: error: {body.get('error') or f'HTTP {status}'} (HTTP {status})", file=sys.stderr)
    if status < 300:
        return EXIT_OK
    return EXIT_USAGE if status == 400 else EXIT_FAILED


def build_plan(
    compiled: compiler.Compiled, *, kind: str, name: str, context: str
) -> tuple[flows.RunPlan, compiler.ContextSpec]:
    """The plan for `aofctl run`: every Agent and AgentFleet of the repo is available by name."""
    ctx = compiled.contexts.get(context)
    if ctx is None:
        raise LookupError(f"no Context named {context!r} under this path")
    agent_specs = {key.name: spec for key, spec in compiled.agents.items()}
    fleet_specs = {key.name: spec for key, spec in compiled.fleets.items()}
    if kind == "agent":
        agent = compiled.agent(name)
        if agent is None:
            raise LookupError(f"no Agent named {name!r} under this path")
        plan = flows.agent_plan(agent, ctx.view)
        return flows.RunPlan(plan.binding, plan.flow, agent_specs, fleet_specs, ctx.view), ctx
    flow = compiled.flow(name)
    if flow is None:
        raise LookupError(f"no AgentFlow named {name!r} under this path")
    return flows.RunPlan(f"run-flow-{name}", flow, agent_specs, fleet_specs, ctx.view), ctx


async def execute(
    plan: flows.RunPlan,
    ctx: compiler.ContextSpec,
    *,
    text: str,
    cfg: settings.DaemonConfig,
    args: argparse.Namespace,
) -> tuple[runs.RunRecord, list[str]]:
    """Run `plan` once with the real guard and audit log; returns the record and the messages."""
    collect = _Collect()
    store = approvals.ApprovalStore()
    policies: Mapping[str, policy.GuardPolicy] = {ctx.name: ctx.policy}

    async def no_approvals(request: approvals.ApprovalRequest) -> None:
        store.cancel(request.id, "aofctl run cannot collect approvals")
        collect.messages.append(f"approval needed for {request.rendered_argv()}: not available in aofctl run")

    async with journal.AuditLog(audit_dir=args.audit_dir) as journal_:
        # The daemon's adapter: the same ECS envelope and argv secret redaction as `aofd serve`.
        audit = auditsink.AuditAdapter(journal_, redactor=records.ArgvRedactor(key=None))
        runner = commands.CommandRunner(
            executables=cfg.executables, cache_dir=args.state_dir / "cache", work_dir=args.state_dir / "work"
        )
        command_guard = guard.CommandGuard(
            runner=runner,
            limits=limits.RateLimits(),
            approvals=store,
            audit=audit,
            approval_requester=no_approvals,
            policy_provider=policies.get,
        )
        providers = registry.Providers(models=cfg.models, environ=dict(os.environ))
        eng = engine.Engine(
            providers=providers,
            commands=command_guard,
            replier=collect,
            history=runs.RunHistory(capacity=1),
            audit=audit,
            admission=command_guard,
        )
        user = ports.UserRef(getpass.getuser(), domain="cli")
        message = ports.EventMessage(platform="cli", trigger="cli", text=text, user=user, channel_id="cli")
        try:
            record = await eng.run(plan, message)
        finally:
            await eng.aclose()
    return record, collect.messages
