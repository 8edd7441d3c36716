"""`aofd`: the daemon's command line.

    aofd serve PATH              watch a local directory of resources (state under PATH/.aofd)
    aofd serve --config FILE     the full daemon config (sources, listen, state/audit dirs, ...)

Flags override the config: `--listen`, `--admin`, `--admin-token-file`, `--state-dir`, `--audit-dir`.
`--settle` (with PATH only) sets how long a change must be quiet before it applies.
Exit codes: 0 clean stop, 1 start-up failure (bad config, state dir locked), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from aofd import __version__, errors, settings
from aofd.audit import logging as audit_logging
from aofd.daemon import config as config_mod
from aofd.daemon import main as daemon_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aofd", description="GitOps daemon for AOF resources.")
    parser.add_argument("--version", action="version", version=f"aofd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("path", nargs="?", type=Path, help="a directory of resources to watch (zero-config)")
    serve.add_argument("--config", type=Path, help="daemon config file (YAML)")
    serve.add_argument("--listen", help="trigger listener HOST:PORT (default 127.0.0.1:8080)")
    serve.add_argument("--admin", help="admin API HOST:PORT or unix:PATH (default 127.0.0.1:8081)")
    serve.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the admin API bearer token (default: admin_api.token_file, "
        "else the systemd credential admin-token)",
    )
    serve.add_argument("--state-dir", type=Path)
    serve.add_argument("--audit-dir", type=Path)
    serve.add_argument("--log-format", choices=("auto", "json", "console"), default=None)
    serve.add_argument(
        "--settle",
        type=_duration,
        metavar="DURATION",
        help="with PATH: how long a change must be quiet before it applies (default 1s; "
        "in a config file: sources[].directory.settle)",
    )
    serve.set_defaults(func=cmd_serve)
    return parser


def _duration(text: str) -> float:
    try:
        seconds = settings.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= seconds <= 300:
        raise argparse.ArgumentTypeError(f"must be between 0 and 300 seconds, got {text!r}")
    return seconds


def cmd_serve(args: argparse.Namespace) -> int:
    if (args.path is None) == (args.config is None):
        print("aofd serve: give either PATH or --config FILE", file=sys.stderr)
        return 2
    if args.settle is not None and args.config is not None:
        print(
            "aofd serve: --settle goes with PATH; in a config file set sources[].directory.settle",
            file=sys.stderr,
        )
        return 2
    overrides = config_mod.Overrides(
        listen=args.listen,
        admin=args.admin,
        state_dir=args.state_dir,
        audit_dir=args.audit_dir,
        admin_token_file=args.admin_token_file,
    )
    try:
        if args.config is not None:
            cfg = config_mod.load(args.config, overrides)
        else:
            if not args.path.is_dir():
                print(f"aofd serve: {args.path}: not a directory", file=sys.stderr)
                return 2
            cfg = config_mod.zero_config(args.path, overrides, settle=args.settle)
    except errors.ConfigError as exc:
        print(f"aofd: {exc}", file=sys.stderr)
        for issue in exc.issues:
            print(issue.format(), file=sys.stderr)
        return 1
    if args.log_format:
        cfg = cfg.model_copy(update={"log_format": args.log_format})
    audit_logging.configure(fmt=cfg.log_format)
    return daemon_main.serve(cfg, config_path=args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
