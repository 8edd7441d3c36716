"""`aofctl graph PATH --format mermaid|dot`: the composition graph of a resource tree.

Prints the graph on stdout (bindings -> flow -> agents/fleets, context, trigger, grouped by
layer); the errors `aofctl validate` would report (the same desired state and compile stage)
go to stderr as `FILE:LINE:COL` lines, and the exit code is 1 when there were errors (the
graph then shows what did resolve).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aofd.cli import validate_cmd
from aofd.plan import graph
from aofd.plan import render as plan_render


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "graph",
        help="print the composition graph of a resource tree (mermaid or dot)",
        description="Draw bindings -> flows -> agents/fleets, contexts and triggers, by layer.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a directory of resources or one file")
    parser.add_argument("--format", "-f", choices=("mermaid", "dot"), default="mermaid", help="output syntax")
    parser.add_argument(
        "--config", type=Path, help="a daemon config: its substitution allow-list and pinned executables"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = validate_cmd.daemon_settings(args.config)
        _views, compiled = validate_cmd.compile_paths(args.paths, cfg=cfg)
    except validate_cmd.UsageError as exc:
        print(f"aofctl graph: error: {exc}", file=sys.stderr)
        return validate_cmd.EXIT_USAGE
    sys.stdout.write(graph.render(compiled.desired, args.format))
    errs = compiled.errors
    if errs:
        sys.stderr.write(plan_render.issues_text(errs))
        return validate_cmd.EXIT_INVALID
    return validate_cmd.EXIT_OK
