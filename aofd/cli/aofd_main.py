"""`aofd`: the daemon's command line (`aofd serve PATH` / `aofd serve --config FILE`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aofd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aofd", description="GitOps daemon for AOF resources.")
    parser.add_argument("--version", action="version", version=f"aofd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
