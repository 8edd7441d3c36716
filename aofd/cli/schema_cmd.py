"""`aofctl schema [--strict]`: print the JSON Schema of the resource kinds, for editors' YAML servers.

The default schema means what `aofctl validate` means: unknown keys are allowed outside a
Context (the loader drops them with a warning). `--strict` prints the schema of
`aofctl validate --strict`, which refuses unknown keys in every kind.
"""

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
    parser.add_argument(
        "--strict",
        action="store_true",
        help="unknown keys are errors in every kind, as with aofctl validate --strict",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    document = schema.json_schema(strict=args.strict)
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return 0
