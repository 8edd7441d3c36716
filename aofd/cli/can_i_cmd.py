"""`aofctl can-i PATH --context NAME [--user ID] [--platform P] [--config FILE] -- ARGV...`.

Operators test a policy before they push it: this module compiles PATH with the same pure
stages as the daemon (`validate_cmd.compile_paths` -> `aofd.plan.compiler`), takes the named
Context's compiled `GuardPolicy` and asks `aofd.specs.policy.evaluate`, the very function the
daemon's command guard calls, what it would do with ARGV. It prints one line:

- `allowed` (exit 0),
- `denied: <reason>` (exit 1), also for a command that needs more approvals than there are
  approvers who may give them,
- `needs approval from <who>` (exit 3): the Context's approvers, less the asking `--user`
  unless self-approval is allowed, and only those who can approve on `--platform`;

exit 2 for usage errors (no such PATH or Context, a PATH with any error: the daemon would
refuse that revision whole). ARGV is
the command as an agent would give it: several arguments are taken as the argv, a single one
is split like a command string. What depends on the moment (rate limits, a kubeconfig file
that is missing on this host) is not judged here.

`-- mcp:<server>/<tool>` asks about an MCP tool instead, with `policy.evaluate_tool` (the
function the guard's `call_tool` calls). What a tool's server says of it (its annotations)
is only known at run time: `--hints read-only|write|destructive` says what to assume; without
it the tool is taken as destructive (the strictest case), and a note on stderr says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aofd import errors
from aofd.cli import validate_cmd
from aofd.daemon import config as daemon_config
from aofd.runtime import approvals, ports
from aofd.specs import policy

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2
EXIT_APPROVAL = 3

MCP_PREFIX = "mcp:"
HINTS = {
    "read-only": policy.ToolHints(read_only=True, destructive=False),
    "write": policy.ToolHints(read_only=False, destructive=False),
    "destructive": policy.ToolHints(read_only=False, destructive=True),
}
"""What `--hints` may say of an MCP tool (its server's readOnlyHint and destructiveHint)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "can-i",
        usage=(
            "aofctl can-i PATH --context NAME [--user ID] [--platform P] [--config FILE] "
            "[--hints read-only|write|destructive] -- ARGV... | mcp:SERVER/TOOL"
        ),
        help="would this command run under a Context? (exit 0 allowed, 1 denied, 3 needs approval)",
        description=(
            "Check one command, or one MCP tool (`-- mcp:SERVER/TOOL`), against a Context's "
            "policy, compiled from PATH as the daemon compiles it. Put the command after `--`."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="a directory of resources or one file")
    parser.add_argument("--context", "-C", required=True, help="the Context whose policy decides")
    parser.add_argument("--user", help="the platform user id asking (decides self-approval)")
    parser.add_argument("--platform", help="where the approval would be asked: slack, telegram, ...")
    parser.add_argument("--config", type=Path, help="a daemon config: its pinned executables")
    parser.add_argument(
        "--hints",
        choices=sorted(HINTS),
        help="for mcp:SERVER/TOOL: what its server says of the tool (default: destructive)",
    )
    parser.set_defaults(func=run, argv=[])


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)  # what followed `--` (split off by `aofctl_main.main`)
    if not argv:
        return _usage(
            "give the command after `--`, e.g. aofctl can-i PATH --context prod -- kubectl get pods"
        )
    try:
        cfg = validate_cmd.daemon_settings(args.config)
        _views, compiled = validate_cmd.compile_paths([args.path], cfg=cfg)
    except validate_cmd.UsageError as exc:
        return _usage(str(exc))
    if compiled.errors:  # the daemon would refuse this revision whole: nothing of it would run
        detail = "\n".join(issue.format() for issue in compiled.errors[:20])
        return _usage(f"{args.path} does not compile, so the daemon would not apply it:\n{detail}")
    ctx = compiled.contexts.get(args.context)
    if ctx is None:
        known = ", ".join(sorted(compiled.contexts)) or "none"
        return _usage(f"no Context named {args.context!r} under {args.path} (Contexts: {known})")
    verdict: policy.Verdict | policy.ToolVerdict
    what = "command"
    if len(argv) == 1 and argv[0].startswith(MCP_PREFIX):
        server, slash, tool = argv[0][len(MCP_PREFIX) :].partition("/")
        if not (server and slash and tool):
            return _usage(f"{argv[0]!r}: give an MCP tool as mcp:SERVER/TOOL, e.g. mcp:git/git_status")
        if args.hints is None:
            print(
                "note: assuming the tool is destructive (its server's annotations are known only at "
                "run time); say otherwise with --hints read-only|write",
                file=sys.stderr,
            )
        verdict = policy.evaluate_tool(server, tool, HINTS[args.hints or "destructive"], ctx.policy)
        what = "MCP tool call"
    elif args.hints is not None:
        return _usage("--hints is for an MCP tool (-- mcp:SERVER/TOOL)")
    else:
        executables = dict(cfg.executables.paths) if args.config else _default_executables()
        try:
            tokens = policy.tokenize(argv[0] if len(argv) == 1 else argv)
        except errors.PolicyDenied as exc:
            print(f"denied: {exc.reason}")
            return EXIT_DENIED
        verdict = policy.evaluate(tokens, policy=ctx.policy, executables=executables)
    if not verdict.allowed:
        print(f"denied: {verdict.reason}")
        return EXIT_DENIED
    approval = ctx.policy.approval
    if not verdict.needs_approval or approval is None:
        print("allowed")
        return EXIT_ALLOWED
    who = approvers(approval, user=args.user, platform=args.platform)
    rule = f"every {what}" if verdict.approval_rule == "*" else f"require_for rule {verdict.approval_rule!r}"
    if len(who) < approval.min_approvers:
        can = f"only {len(who)} of approval.allowed_users" if who else "nobody in approval.allowed_users"
        print(f"denied: needs {approval.min_approvers} approval(s) ({rule}), and {can} can give one")
        return EXIT_DENIED
    count = f"{approval.min_approvers} of " if approval.min_approvers > 1 else ""
    print(f"needs approval from {count}{', '.join(who)} ({rule})")
    return EXIT_APPROVAL


def approvers(approval: policy.ApprovalPolicy, *, user: str | None, platform: str | None) -> list[str]:
    """The entries of `allowed_users` who could approve a command `user` asked for on `platform`."""
    domain = (platform or "").lower()
    asker = ports.UserRef(id=user, domain=domain) if user else None
    found = []
    for entry in approval.allowed_users:
        prefix, _, rest = entry.partition(":")
        if platform and rest and prefix.lower() in approvals.PLATFORM_PREFIXES and prefix.lower() != domain:
            continue  # approves on another platform
        candidate = ports.UserRef(id=entry, domain=domain)
        if asker is not None and not approval.allow_self_approval and approvals.same_user(candidate, asker):
            continue
        found.append(entry)
    return found


def _default_executables() -> dict[str, Path]:
    """The tools `aofd serve PATH` pins; one missing here is still judged by policy alone."""
    found = daemon_config.pinned_tools()
    for name in daemon_config.ZERO_CONFIG_TOOLS:
        found.setdefault(name, Path("/usr/bin") / name)
    return found


def _usage(message: str) -> int:
    print(f"aofctl can-i: error: {message}", file=sys.stderr)
    return EXIT_USAGE
