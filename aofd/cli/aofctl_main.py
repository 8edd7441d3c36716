"""`aofctl`: the kubectl-style client. Each subcommand lives in its own `*_cmd` module that
exposes `register(subparsers)`; this module only assembles them.

Exit codes: 0 success, 1 the command ran and found a problem (invalid input, a failed
run), 2 usage error (argparse's own convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from aofd import __version__
from aofd.cli import (
    admin_cmds,
    approvals_cmd,
    audit_cmd,
    can_i_cmd,
    graph_cmd,
    memory_cmd,
    run_cmd,
    schema_cmd,
    validate_cmd,
)

COMMAND_MODULES: tuple[ModuleType, ...] = (
    validate_cmd,
    schema_cmd,
    graph_cmd,
    admin_cmds,
    approvals_cmd,
    run_cmd,
    audit_cmd,
    can_i_cmd,
    memory_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aofctl", description="Client for aofd and AOF resource repos.")
    parser.add_argument("--version", action="version", version=f"aofctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if words[:1] == ["can-i"] and "--" in words:  # the command under test follows `--`, flags and all
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    if command:
        args.argv = command
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
