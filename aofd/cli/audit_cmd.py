"""`aofctl audit ...`: verify and read the per-context audit logs on this host.

- `aofctl audit verify PATH` checks the hash chain, seq continuity and segment links of a
  segment, a context directory or the whole audit dir. Exit 0 intact, 1 tampered or
  damaged (the first bad line is printed as `FILE:LINE: seq N: why`), 2 usage (no such
  path). Meant for a cron job or systemd timer that alerts on exit 1.
- `aofctl audit tail CONTEXT [--audit-dir DIR] [-n N] [-f]` prints the last lines of a
  context's log and, with `-f`, follows it across rotations.

Offline: reads files only, never talks to the daemon.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aofd import errors, settings
from aofd.audit import segment, tail, verify


def register(subparsers: Any) -> None:
    """Add `audit verify` and `audit tail` to aofctl's subcommands."""
    audit = subparsers.add_parser("audit", help="verify and read audit logs")
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    sub.required = True

    check = sub.add_parser("verify", help="check the hash chain of audit logs (exit 1 if tampered)")
    check.add_argument("path", metavar="PATH", help="a segment, a context directory or the audit dir")
    check.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    check.set_defaults(func=run_verify)

    follow = sub.add_parser("tail", help="print (and follow) a context's audit log")
    follow.add_argument("context", metavar="CONTEXT")
    follow.add_argument(
        "--audit-dir",
        type=Path,
        default=settings.DaemonConfig().audit_dir,
        help="the daemon's audit dir (default: %(default)s)",
    )
    follow.add_argument("-n", "--lines", type=int, default=10, help="how many lines to print first")
    follow.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines, across rotations"
    )
    follow.set_defaults(func=run_tail)


def run_verify(args: argparse.Namespace) -> int:
    """Verify PATH; print a summary or the problems."""
    try:
        report = verify.verify(args.path)
    except FileNotFoundError as exc:
        print(f"aofctl audit verify: {exc}", file=sys.stderr)
        return 2
    if not report.files:
        for note in report.notes:
            print(f"aofctl audit verify: {note}", file=sys.stderr)
        return 2
    if report.problems:
        first = report.problems[0]
        print(f"TAMPERED or damaged: first bad line {first.format()}")
        for problem in report.problems[1:]:
            print(f"  also: {problem.format()}")
        return 1
    if not args.quiet:
        seqs = f"seq {report.first_seq}..{report.last_seq}, " if report.first_seq is not None else ""
        head = f", head {report.head}" if report.head else ""
        print(f"OK: {report.records} records in {len(report.files)} segment(s), {seqs}chain intact{head}")
        for note in report.notes:
            print(f"  note: {note}")
    return 0


def run_tail(args: argparse.Namespace) -> int:
    """Print the last lines of a context's log; follow it with -f."""
    try:
        directory = segment.context_dir(args.audit_dir, args.context)
    except errors.AuditUnavailable as exc:
        print(f"aofctl audit tail: {exc}", file=sys.stderr)
        return 2
    if not directory.is_dir():
        print(
            f"aofctl audit tail: no audit log for context {args.context!r} under {args.audit_dir}",
            file=sys.stderr,
        )
        return 2
    out = sys.stdout.buffer
    for line in tail.last_lines(directory, max(0, args.lines)):
        out.write(line)
    out.flush()
    if args.follow:
        for line in tail.follow(directory, start_at_end=True):
            out.write(line)
            out.flush()
    return 0
