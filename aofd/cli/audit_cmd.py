"""`aofctl audit ...`: verify and read the per-context audit logs on this host.

- `aofctl audit verify PATH [--verification-key KEY]... [--expect CONTEXT=SEQ[:HEAD]]...`
  checks the hash chain, seq continuity and segment links of a segment, a context directory
  or the whole audit dir; with verification keys also the seals (docs/audit-sealing.md), and
  with `--expect` that each log still reaches what the SIEM holds. Exit 0 intact, 1 tampered
  or damaged (the first bad line is printed as `FILE:LINE: seq N: why`), 2 usage (no such
  path, a malformed key), 3 epochs or records that were never sealed (a crash, or a possible
  truncation: not intact). Meant for a cron job or systemd timer that alerts on any exit but 0.
- `aofctl audit setup-keys [--state-dir DIR] [--interval 60s] [--force]` starts a sealing
  key chain in the daemon's state dir and prints its (public) verification key; refused while
  an aofd runs with that state dir.
- `aofctl audit tail CONTEXT [--audit-dir DIR] [-n N] [-f]` prints the last lines of a
  context's log and, with `-f`, follows it across rotations.

Offline: reads files only, never talks to the daemon.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from aofd import errors, settings
from aofd.audit import seal, segment, tail, verify
from aofd.reconcile import state

_EXPECT_RE = re.compile(r"^([^=\s]+)=(\d{1,18})(?::(sha256:[0-9a-f]{64}))?$")


def register(subparsers: Any) -> None:
    """Add `audit verify`, `audit setup-keys` and `audit tail` to aofctl's subcommands."""
    audit = subparsers.add_parser("audit", help="verify and read audit logs")
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    sub.required = True

    check = sub.add_parser(
        "verify",
        help="check the hash chain (and, with a verification key, the seals) of audit logs",
        description="Check the hash chain of audit logs; with --verification-key also the seals "
        "(docs/audit-sealing.md). Exit 0: intact and, with a key, every record sealed in its epoch; "
        "1: tampered or damaged (the first bad line is named); 2: usage; 3: epochs or records "
        "never sealed (aofd died, or a possible truncation: not intact). Stretches after a stop "
        "seal are listed as downtime: a whole run deleted looks the same, so give --expect with the "
        "newest seq/head your SIEM received. Give the audit dir (not one Context's directory or a "
        "segment) to also sum each epoch's seals across all Contexts against the certificates: that "
        "catches a log rewritten, cut or deleted whole and re-sealed with a stolen key.",
    )
    check.add_argument("path", metavar="PATH", help="a segment, a context directory or the audit dir")
    check.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    check.add_argument(
        "--verification-key",
        action="append",
        default=[],
        metavar="KEY",
        help="check the seals with this verification key (public: printed by setup-keys; once per "
        "key chain; repeatable)",
    )
    check.add_argument(
        "--verification-key-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="read verification keys from FILE, one a line",
    )
    check.add_argument(
        "--certificates",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="the key chain's certificates (STATE_DIR/audit-seal/certs.jsonl, public): needed when "
        "retention removed the oldest seals; repeatable",
    )
    check.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="CONTEXT=SEQ[:HEAD]",
        help="the newest sealed seq (and its aofd.seal.head) the SIEM holds for CONTEXT: fail if the "
        "log no longer reaches it (a log cut back to an older seal); PATH must be a directory; repeatable",
    )
    check.add_argument(
        "--expect-file",
        type=Path,
        metavar="FILE",
        help='the same for many Contexts: JSON {"CONTEXT": {"seq": N, "head": "sha256:..."}, ...}',
    )
    check.set_defaults(func=run_verify)

    keys = sub.add_parser(
        "setup-keys", help="start a key chain that seals the audit logs; print its verification key"
    )
    keys.add_argument(
        "--state-dir",
        type=Path,
        default=settings.DaemonConfig().state_dir,
        help="the daemon's state dir (default: %(default)s); the state goes to STATE_DIR/"
        + seal.STATE_DIR_NAME,
    )
    keys.add_argument(
        "--interval",
        default="60s",
        help="epoch length, one seal each (default: %(default)s); = the daemon's audit.seal_interval",
    )
    keys.add_argument("--force", action="store_true", help="replace existing sealing state (a new key chain)")
    keys.set_defaults(func=run_setup_keys)

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


def _verification_keys(args: argparse.Namespace) -> list[seal.VerificationKey]:
    texts: list[tuple[str, str]] = [
        (f"--verification-key #{i + 1}", k) for i, k in enumerate(args.verification_key)
    ]
    for path in args.verification_key_file:
        lines = path.read_text(encoding="utf-8").splitlines()
        texts.extend((f"{path}:{n}", line) for n, line in enumerate(lines, 1) if line.strip())
    out: list[seal.VerificationKey] = []
    for where, text in texts:
        try:
            out.append(seal.VerificationKey.parse(text))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


def _expectations(args: argparse.Namespace) -> dict[str, verify.Expectation]:
    out: dict[str, verify.Expectation] = {}
    if args.expect_file is not None:
        try:
            data = json.loads(args.expect_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"--expect-file {args.expect_file}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--expect-file {args.expect_file}: want an object of Contexts")
        for context, one in data.items():
            seq = one.get("seq") if isinstance(one, dict) else None
            head = one.get("head") if isinstance(one, dict) else None
            if (
                not isinstance(seq, int)
                or isinstance(seq, bool)
                or seq < 1
                or not isinstance(head, str | None)
            ):
                raise ValueError(
                    f'--expect-file {args.expect_file}: {context!r} wants {{"seq": N, "head": "sha256:..."}}'
                )
            out[str(context)] = verify.Expectation(seq, head)
    for text in args.expect:
        m = _EXPECT_RE.match(text)
        if m is None:
            raise ValueError(f"--expect {text!r}: want CONTEXT=SEQ or CONTEXT=SEQ:sha256:<64 hex>")
        out[m.group(1)] = verify.Expectation(int(m.group(2)), m.group(3))
    return out


def run_verify(args: argparse.Namespace) -> int:
    """Verify PATH; print a summary or the problems."""
    try:
        keys = _verification_keys(args)
        expect = _expectations(args)
        report = verify.verify(
            args.path,
            keys=keys,
            now=time.time() if keys else None,
            expect=expect,
            certificates=args.certificates,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"aofctl audit verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
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
        _print_seals(report)
        return 1
    if report.gaps:
        print(f"NOT SEALED for a while (possible truncation): {report.gaps[0].format()}")
        for gap in report.gaps[1:]:
            print(f"  also: {gap.format()}")
        _print_seals(report)
        return 3
    if not args.quiet:
        seqs = f"seq {report.first_seq}..{report.last_seq}, " if report.first_seq is not None else ""
        head = f", head {report.head}" if report.head else ""
        sealed = ", seals verified" if report.seals else ""
        if report.seals and report.cross_checked is False:
            sealed += f" ({verify.CROSS_SKIPPED})"
        elif report.cross_checked:
            sealed += " and summed across Contexts against the certificates"
        print(
            f"OK: {report.records} records in {len(report.files)} segment(s), "
            f"{seqs}chain intact{sealed}{head}"
        )
        _print_seals(report)
        for note in report.notes:
            if note != verify.CROSS_SKIPPED:
                print(f"  note: {note}")
    return 0


def _print_seals(report: verify.VerifyReport) -> None:
    if (report.problems or report.gaps) and report.cross_checked is False:
        print(f"  note: {verify.CROSS_SKIPPED}")
    for status in report.seals:
        print(f"  {status.format()}")
    for stretch in report.downtime:
        print(f"  downtime: {stretch}")


def run_setup_keys(args: argparse.Namespace) -> int:
    """Create the sealing state under --state-dir and print the verification key once."""
    try:
        interval = settings.parse_duration(args.interval)
    except ValueError as exc:
        print(f"aofctl audit setup-keys: --interval: {exc}", file=sys.stderr)
        return 2
    if interval < 1 or interval != int(interval):
        print(
            "aofctl audit setup-keys: --interval must be a whole number of seconds, at least 1s",
            file=sys.stderr,
        )
        return 2
    lock = state.StateLock(args.state_dir)
    try:  # the daemon holds this lock while it runs: its next key move would undo a new chain
        lock.acquire()
    except errors.Stalled as exc:
        print(f"aofctl audit setup-keys: refused: {exc}; stop it first", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"aofctl audit setup-keys: {exc}", file=sys.stderr)
        return 1
    try:
        vk = seal.setup_keys(args.state_dir, interval=int(interval), force=args.force)
    except (seal.SealStateError, OSError) as exc:
        print(f"aofctl audit setup-keys: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(vk.encode())
    print(
        f"Sealing state written to {seal.state_path(args.state_dir)} (chain {vk.chain}, "
        f"{vk.interval}s epochs). The line above is the verification key: a public key that "
        "checks seals and cannot make them. Keep a copy off this host (where verify runs, in the "
        "SIEM): one on this host could be swapped by whoever takes it. aofd seals with this state "
        f"when its state_dir is {args.state_dir} and audit.seal_interval is {vk.interval}s.",
        file=sys.stderr,
    )
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
