"""`aofctl validate PATH... [-o text|json] [--strict] [--env-strict] [--config FILE]`: offline validation.

Each PATH is a directory (read with the same safe walker as a directory source) or one
file. Everything the daemon checks before it applies a revision is checked, by the same two
pure stages the daemon runs: the desired state (YAML safety, schemas, source-independent
references, duplicates, `${VAR}` substitution) and the compile stage (`aofd.plan.compiler`:
command patterns, cron and time zones, flows that cannot be built, models no provider serves,
approval settings that cannot all hold (warnings), ...). What validate accepts, the daemon
applies whole; what is left are facts of the host (a kubeconfig file, a provider key), which
the daemon reports per resource. Paths in messages are shown as the user typed them. Exit 0
when valid (warnings allowed), 1 when any error, 2 for usage errors.

Variables for substitution come from this process's environment, filtered by the allow-list
(this is the CLI edge; the planner itself never reads the environment). An undefined variable
is a warning here (the daemon's environment differs from yours), and an error with
`--env-strict`. `--config` reads a daemon config for its substitution allow-list and pinned
executables (which first words of a command pattern name a tool).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from aofd import errors, settings
from aofd.cli import render
from aofd.daemon import config as daemon_config
from aofd.plan import compiler, desired, substitute
from aofd.resources import ids, snapshot
from aofd.source import directory

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A PATH that cannot be read at all (exit 2)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate resource files offline (exit 0 valid, 1 invalid, 2 usage)",
        description="Validate AOF resource YAML: schema, references, duplicates and ${VAR} substitution.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a directory of resources or one file")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--strict", action="store_true", help="unknown keys are errors in every kind")
    parser.add_argument(
        "--env-strict",
        action="store_true",
        help="an undefined ${VAR} in a secret-bearing field is an error (as in the daemon)",
    )
    parser.add_argument(
        "--config", type=Path, help="a daemon config: its substitution allow-list and pinned executables"
    )
    parser.set_defaults(func=run)


def environment_variables(
    environ: Mapping[str, str] | None = None, allow: Sequence[str] = settings.DEFAULT_SUBSTITUTION_ALLOW
) -> dict[str, str]:
    """The variables of `environ` (default `os.environ`) that the allow-list permits."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if substitute.allowed(k, allow)}


def load_views(paths: Sequence[str]) -> list[desired.SourceView]:
    """One all-kinds `SourceView` per PATH; raises `UsageError` for a PATH that does not exist."""
    views: list[desired.SourceView] = []
    for index, text in enumerate(paths):
        path = Path(text)
        name = f"path{index}" if len(paths) > 1 else "path"
        if path.is_dir():
            try:
                snap = directory.read_tree(path, source_name=name, display_root=text)
            except errors.SourceError as exc:
                raise UsageError(f"{text}: {exc}") from exc
        elif path.is_file():
            snap = _single_file(path, text, name)
        elif path.exists():
            raise UsageError(f"{text}: not a regular file or directory")
        else:
            raise UsageError(f"{text}: no such file or directory")
        views.append(desired.SourceView(name=name, kinds=desired.ALL_KINDS, snapshot=snap))
    return views


def _single_file(path: Path, shown: str, source: str) -> snapshot.Snapshot:
    limit = snapshot.DEFAULT_LIMITS.max_file_bytes
    try:
        with path.open("rb") as handle:
            content = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{shown}: {exc.strerror or exc}") from exc
    parent, _, base = shown.rpartition("/")
    return snapshot.Snapshot.build(
        source=source, files={base: snapshot.SourceFile.of(base, content)}, display_root=parent
    )


def daemon_settings(path: Path | None) -> settings.DaemonConfig:
    """The daemon config at `path` (the defaults when None). Raises `UsageError` when it is invalid."""
    if path is None:
        return settings.DaemonConfig()
    try:
        return daemon_config.load(path)
    except errors.ConfigError as exc:
        lines = "; ".join(i.format() for i in exc.issues) or str(exc)
        raise UsageError(f"{path}: {lines}") from exc


def compile_paths(
    paths: Sequence[str],
    *,
    cfg: settings.DaemonConfig,
    strict: bool = False,
    undefined: Literal["error", "warning"] = "warning",
) -> tuple[list[desired.SourceView], compiler.Compiled]:
    """The views of `paths` and their compiled revision, as the daemon would compile it.

    Raises:
        UsageError: a PATH that cannot be read.
    """
    views = load_views(paths)
    allow = cfg.substitution.allow
    state = desired.build(
        views, variables=environment_variables(allow=allow), allow=allow, undefined=undefined, strict=strict
    )
    return views, compiler.build(state, options=compiler.Options.of(cfg))


def run(args: argparse.Namespace) -> int:
    try:
        cfg = daemon_settings(args.config)
        views, compiled = compile_paths(
            args.paths, cfg=cfg, strict=args.strict, undefined="error" if args.env_strict else "warning"
        )
    except UsageError as exc:
        print(f"aofctl validate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    files = sum(len(v.snapshot.files) for v in views)
    report: dict[str, Any] = {
        "issues": compiled.issues,
        "resources": len(compiled.desired.resources),
        "files": files,
    }
    if args.output == "json":
        sys.stdout.write(render.validate_json(revision=compiled.revision, **report))
    else:
        sys.stdout.write(render.validate_text(**report))
    return EXIT_OK if compiled.ok else EXIT_INVALID


def kinds_summary(state: desired.DesiredState) -> dict[str, int]:
    """How many resources of each kind (for scripts and tests)."""
    counts = {k.value: 0 for k in ids.Kind}
    for key in state.resources:
        counts[key.kind.value] += 1
    return counts
