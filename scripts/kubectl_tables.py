#!/usr/bin/env python3
"""Generate aofd/specs/kubectl_flags.json and aofd/specs/k8s_resources.json (run by hand).

The command guard must know what kubectl itself knows: which (sub)commands exist, which flags
each one has, which of them take the next token as their value, and which resource names
denote which API resource. Typing these lists by hand gets them wrong, so this script takes
them from their sources:

- flags and commands from a real kubectl binary: `kubectl help` and `kubectl <path> --help`
  ("Available Commands:" walked recursively, "Options:" for the local flags), `kubectl options`
  for the global flags. Whether a flag takes a value written `--flag X` is decided by running
  `kubectl --kubeconfig=<missing file> <path> --flag` with the flag last and no value: pflag
  answers "flag needs an argument" exactly for the flags that consume the next token. Bool
  flags and flags with a no-option default (`--dry-run`, `--cascade`, `--validate`, ...) do
  not, and take a value only as `--flag=X`. Every kubectl run has a scratch HOME, an empty
  PATH (no plugins), a kubeconfig path that does not exist, a scratch working directory and
  a timeout, so nothing can reach a cluster.
- resources from the Kubernetes API discovery documents checked into the kubernetes
  repository (`api/discovery/aggregated_v2.json` for the groups under /apis,
  `api/discovery/api__v1.json` for the core group), read from a directory given on the
  command line. The upstream files are not kept in this repository; the output records where
  they came from.

Usage:
    python scripts/kubectl_tables.py --kubectl .venv/bin/kubectl \\
        --discovery DIR --discovery-source "kubernetes/kubernetes@<commit>" [--jobs 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPECS = Path(__file__).resolve().parent.parent / "aofd" / "specs"
TIMEOUT_S = 20.0
MISSING_KUBECONFIG = "/dev/null/kubeconfig"
"""A kubeconfig path that cannot exist, nor be created by `kubectl config set-...`."""

_FLAG_LINE = re.compile(r"^\s{2,}(?:-(?P<short>\w), )?--(?P<long>[\w-]+)=(?P<default>.*):\s*$")
_COMMAND_LINE = re.compile(r"^  (?P<name>[a-z][\w-]*)\s{2,}\S")
_NEEDS_ARGUMENT = "flag needs an argument"
_UNKNOWN = "--no-such-flag-for-kubectl-tables"


class Kubectl:
    """Runs one kubectl binary in a sandbox: scratch HOME and cwd, no PATH, no kubeconfig."""

    def __init__(self, binary: str, scratch: Path) -> None:
        self.binary = shutil.which(binary) or binary
        self.binary = str(Path(self.binary).resolve())
        self.scratch = scratch
        (scratch / "home").mkdir(exist_ok=True)
        (scratch / "cwd").mkdir(exist_ok=True)
        (scratch / "path").mkdir(exist_ok=True)
        self.env = {
            "HOME": str(scratch / "home"),
            "PATH": str(scratch / "path"),
            "KUBECONFIG": MISSING_KUBECONFIG,
            "KUBECACHEDIR": str(scratch / "cache"),
            "LANG": "C",
        }
        self.calls = 0

    def run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        return subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.scratch / "cwd",
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def help(self, path: list[str]) -> str:
        done = self.run([*path, "--help"])
        if done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(path)} --help failed: {done.stderr.strip()}")
        return done.stdout

    def version(self) -> str:
        done = self.run(["version", "--client", "-o", "json"])
        return str(json.loads(done.stdout)["clientVersion"]["gitVersion"])

    def needs_argument(self, path: list[str], long: str) -> bool:
        """True when `kubectl <path> --long` (flag last, no value) is refused for want of a value."""
        try:
            done = self.run([f"--kubeconfig={MISSING_KUBECONFIG}", *path, f"--{long}"])
        except subprocess.TimeoutExpired:
            return False  # it ran: the flag took no value
        if _NEEDS_ARGUMENT in done.stderr and f"--{long}" in done.stderr:
            return True
        # Not refused for want of a value; confirm that the next token is left alone: a flag
        # that takes no value lets pflag see (and refuse) the unknown flag after it. This also
        # settles flags that kubectl reads before pflag does (`--kuberc`).
        done = self.run([f"--kubeconfig={MISSING_KUBECONFIG}", *path, f"--{long}", _UNKNOWN])
        return f"unknown flag: {_UNKNOWN}" not in done.stderr


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    try:
        start = lines.index(title) + 1
    except ValueError:
        return []
    out: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" ") and not line.startswith("\t"):
            break
        out.append(line)
    return out


def parse_flags(lines: list[str]) -> dict[str, dict[str, Any]]:
    """`-c, --container='':` lines -> {"--container": {"short": "c", "default": "''"}}."""
    flags: dict[str, dict[str, Any]] = {}
    for line in lines:
        match = _FLAG_LINE.match(line)
        if match:
            flags["--" + match["long"]] = {"short": match["short"], "default": match["default"]}
    return flags


def parse_commands(text: str, *, root: bool) -> list[str]:
    """Sub-command names from a help text: "Available Commands:" (root: every category)."""
    if not root:
        lines = _section(text, "Available Commands:")
    else:
        lines = []
        in_list = False
        for line in text.splitlines():
            if line.startswith("Usage:"):
                break
            if line.endswith(":") and not line.startswith(" "):
                in_list = True
                continue
            if in_list:
                lines.append(line)
    return sorted({m["name"] for line in lines if (m := _COMMAND_LINE.match(line))})


def parse_aliases(text: str) -> list[str]:
    """cobra's "Aliases:" line (`deployment, deploy`) without the command's own name."""
    lines = text.splitlines()
    if "Aliases:" not in lines:
        return []
    names = [name.strip() for name in lines[lines.index("Aliases:") + 1].split(",")]
    return sorted(name for name in names[1:] if name)


def walk(
    kubectl: Kubectl,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, list[str]], dict[str, list[str]]]:
    """Every command path with its local flags, the sub-commands of each parent, the aliases."""
    commands: dict[str, dict[str, dict[str, Any]]] = {}
    subcommands: dict[str, list[str]] = {}
    aliases: dict[str, list[str]] = {}
    root = parse_commands(kubectl.help([]), root=True)
    # `options` and `help` are real commands that the root help does not list.
    subcommands[""] = sorted({*root, "options", "help"})
    todo = [[name] for name in subcommands[""]]
    while todo:
        path = todo.pop()
        text = kubectl.help(path)
        commands[" ".join(path)] = parse_flags(_section(text, "Options:"))
        if found := parse_aliases(text):
            aliases[" ".join(path)] = found
        children = parse_commands(text, root=False)
        if children:
            subcommands[" ".join(path)] = children
            todo.extend([*path, child] for child in children)
    return commands, subcommands, aliases


def decide_values(
    kubectl: Kubectl,
    global_flags: dict[str, dict[str, Any]],
    commands: dict[str, dict[str, dict[str, Any]]],
    jobs: int,
) -> None:
    """Set "value" on every flag by asking kubectl (see the module docstring)."""
    probes: list[tuple[list[str], str, dict[str, Any]]] = []
    for long, spec in global_flags.items():
        probes.append((["version", "--client"], long[2:], spec))
    for path, flags in commands.items():
        for long, spec in flags.items():
            probes.append((path.split(" "), long[2:], spec))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        results = pool.map(lambda probe: kubectl.needs_argument(probe[0], probe[1]), probes)
        for (_path, _long, spec), needs in zip(probes, results, strict=True):
            spec["value"] = needs


def finish_flags(flags: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for long in sorted(flags):
        spec = flags[long]
        is_bool = spec["default"] in ("true", "false")
        if is_bool and spec["value"]:
            raise SystemExit(f"{long}: a bool flag that needs an argument? kubectl changed; check by hand")
        out[long] = {"short": spec["short"], "value": spec["value"], "bool": is_bool}
        if spec.get("hidden"):
            out[long]["hidden"] = True
    return out


_GLOBAL_TITLE = "The following options can be passed to any command:"


def hidden_flags(
    kubectl: Kubectl,
    older: list[str],
    global_flags: dict[str, dict[str, Any]],
    commands: dict[str, dict[str, dict[str, Any]]],
    jobs: int,
) -> int:
    """Add the hidden flags (deprecated ones, mostly) that `--help` no longer lists but kubectl
    still accepts: every flag an older kubectl's help listed for the same command is tried on
    this one, and kept unless pflag answers "unknown flag". Returns how many were found."""
    candidates: list[tuple[list[str], str, dict[str, Any], dict[str, dict[str, Any]]]] = []
    for binary in older:
        old = Kubectl(binary, kubectl.scratch)
        old_global = parse_flags(_section(old.run(["options"]).stdout, _GLOBAL_TITLE))
        for long, spec in old_global.items():
            if long not in global_flags:
                candidates.append((["version", "--client"], long, spec, global_flags))
        for path, flags in commands.items():
            done = old.run([*path.split(" "), "--help"])
            if done.returncode != 0:
                continue
            for long, spec in parse_flags(_section(done.stdout, "Options:")).items():
                if long not in flags and long not in global_flags:
                    candidates.append((path.split(" "), long, spec, flags))

    def known(candidate: tuple[list[str], str, dict[str, Any], dict[str, dict[str, Any]]]) -> bool:
        path, long, _, _ = candidate
        done = kubectl.run([f"--kubeconfig={MISSING_KUBECONFIG}", *path, f"{long}=", _UNKNOWN])
        return f"unknown flag: {long}" not in done.stderr and "unknown shorthand" not in done.stderr

    found = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for candidate, is_known in zip(candidates, pool.map(known, candidates), strict=True):
            _, long, spec, into = candidate
            if is_known and long not in into:
                into[long] = {**spec, "hidden": True}
                found += 1
    return found


def flag_tables(binary: str, jobs: int, older: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubectl-tables-") as scratch:
        kubectl = Kubectl(binary, Path(scratch))
        version = kubectl.version()
        global_flags = parse_flags(_section(kubectl.run(["options"]).stdout, _GLOBAL_TITLE))
        commands, subcommands, aliases = walk(kubectl)
        n_hidden = hidden_flags(kubectl, older, global_flags, commands, jobs)
        decide_values(kubectl, global_flags, commands, jobs)
    table: dict[str, Any] = {
        "kubectl": version,
        "global": finish_flags(global_flags),
        "commands": {path: finish_flags(commands[path]) for path in sorted(commands)},
        "subcommands": {path: subcommands[path] for path in sorted(subcommands)},
        "aliases": {path: aliases[path] for path in sorted(aliases)},
    }
    n_flags = sum(len(flags) for flags in commands.values()) + len(global_flags)
    finished = [*table["commands"].values(), table["global"]]
    n_value = sum(spec["value"] for flags in finished for spec in flags.values())
    print(
        f"kubectl {version}: {len(commands)} commands, {n_flags} flags ({n_value} take the next token), "
        f"{n_hidden} of them hidden, {kubectl.calls} kubectl runs in {time.monotonic() - started:.1f}s"
    )
    return table


def _resource(
    group: str, versions: list[str], raw: dict[str, Any], subresources: list[str]
) -> dict[str, Any]:
    return {
        "name": raw["name"],
        "singularName": raw["singularName"],
        "shortNames": raw.get("shortNames", []),  # discovery order: kubectl tries them in it
        "kind": raw["kind"],
        "group": group,
        "version": versions[0],
        "versions": versions,
        "namespaced": raw["namespaced"],
        "verbs": sorted(raw["verbs"]),
        "subresources": sorted(subresources),
        "categories": sorted(raw.get("categories", [])),
    }


def resource_table(discovery: Path, source: str) -> dict[str, Any]:
    """The preferred version of every built-in group, core first, as kubectl discovers it."""
    resources: list[dict[str, Any]] = []
    core = json.loads((discovery / "api__v1.json").read_text())
    core_subs: dict[str, list[str]] = {}
    for raw in core["resources"]:
        if "/" in raw["name"]:
            parent, sub = raw["name"].split("/", 1)
            core_subs.setdefault(parent, []).append(sub)
    resources.extend(
        _resource("", ["v1"], raw, core_subs.get(raw["name"], []))
        for raw in core["resources"]
        if "/" not in raw["name"]
    )
    aggregated = json.loads((discovery / "aggregated_v2.json").read_text())
    groups: dict[str, str] = {"": "v1"}
    for item in aggregated["items"]:
        group = item["metadata"]["name"]
        # Aggregated discovery lists a group's versions by preference; a resource that only a
        # later version serves (a beta or alpha kind) is taken from the first version that has it.
        groups[group] = item["versions"][0]["version"]
        seen: set[str] = set()
        for version in item["versions"]:
            for raw in version["resources"]:
                if raw["resource"] in seen:
                    continue
                seen.add(raw["resource"])
                served = [
                    v["version"]
                    for v in item["versions"]
                    if any(r["resource"] == raw["resource"] for r in v["resources"])
                ]
                entry = {
                    "name": raw["resource"],
                    "singularName": raw["singularResource"],
                    "shortNames": raw.get("shortNames", []),
                    "kind": raw["responseKind"]["kind"],
                    "namespaced": raw["scope"] == "Namespaced",
                    "verbs": raw["verbs"],
                    "categories": raw.get("categories", []),
                }
                subresources = [sub["subresource"] for sub in raw.get("subresources", [])]
                resources.append(_resource(group, served, entry, subresources))
    print(f"discovery ({source}): {len(groups)} groups, {len(resources)} resources")
    return {"source": source, "groups": groups, "resources": resources}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"), help="the kubectl binary")
    parser.add_argument("--discovery", type=Path, help="directory with aggregated_v2.json and api__v1.json")
    parser.add_argument("--discovery-source", default="", help='e.g. "kubernetes/kubernetes@<commit>"')
    parser.add_argument("--jobs", type=int, default=4, help="kubectl runs at once")
    parser.add_argument(
        "--hidden-from",
        action="append",
        default=[],
        metavar="OLDER_KUBECTL",
        help="an older kubectl whose listed flags are tried on this one, to find hidden (deprecated) flags",
    )
    parser.add_argument("--out", type=Path, default=SPECS)
    args = parser.parse_args(argv)
    flags = flag_tables(args.kubectl, args.jobs, args.hidden_from)
    (args.out / "kubectl_flags.json").write_text(json.dumps(flags, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.out / 'kubectl_flags.json'}")
    if args.discovery:
        if not args.discovery_source:
            parser.error("--discovery needs --discovery-source (where the documents came from)")
        resources = resource_table(args.discovery, args.discovery_source)
        (args.out / "k8s_resources.json").write_text(json.dumps(resources, indent=1) + "\n")
        print(f"wrote {args.out / 'k8s_resources.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
