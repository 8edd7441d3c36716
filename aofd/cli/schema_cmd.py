"""`aofctl schema`: print the JSON Schema of the resource kinds (for editors' YAML language servers)."""

from __future__ import annotations

import argparse
import json
import sys

from aofd.resources import schema


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the resource kinds",
        description="Print a JSON Schema of every kind, usable by yaml-language-server and editors.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    del args
    sys.stdout.write(json.dumps(schema.json_schema(), indent=2, sort_keys=False) + "\n")
    return 0
