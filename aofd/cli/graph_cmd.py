"""`aofctl graph PATH --format mermaid|dot`: the composition graph of a resource tree.

Prints the graph on stdout (bindings -> flow -> agents/fleets, context, trigger, grouped by
layer); problems found while building it go to stderr as `FILE:LINE:COL` lines, and the
exit code is 1 when there were errors (the graph then shows what did resolve).
"""

from __future__ import annotations

import argparse
import sys

from aofd import settings
from aofd.cli import validate_cmd
from aofd.plan import desired, graph
from aofd.plan import render as plan_render


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "graph",
        help="print the composition graph of a resource tree (mermaid or dot)",
        description="Draw bindings -> flows -> agents/fleets, contexts and triggers, by layer.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a directory of resources or one file")
    parser.add_argument("--format", "-f", choices=("mermaid", "dot"), default="mermaid", help="output syntax")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        views = validate_cmd.load_views(args.paths)
    except validate_cmd.UsageError as exc:
        print(f"aofctl graph: error: {exc}", file=sys.stderr)
        return validate_cmd.EXIT_USAGE
    state = desired.build(
        views,
        variables=validate_cmd.environment_variables(),
        allow=settings.DEFAULT_SUBSTITUTION_ALLOW,
        undefined="warning",
    )
    sys.stdout.write(graph.render(state, args.format))
    errs = state.errors
    if errs:
        sys.stderr.write(plan_render.issues_text(errs))
        return validate_cmd.EXIT_INVALID
    return validate_cmd.EXIT_OK
