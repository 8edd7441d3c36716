"""Cold-load benchmark: a generated repo of 1k, 10k and 100k resources read, parsed, validated, resolved.

Usage:
    .venv/bin/python bench/load.py [--sizes 1000,10000,100000] [--resources N] [--quick]
        [--keep DIR] [--out bench/load.json]

For each size the generator writes (into a temporary directory, or `--keep DIR`) a repo in the
seed layout, one resource per file, in these proportions (shown for 10,000 resources):

    contexts/             100 Contexts       (1%; at least one per environment)
    agents/             2,400 Agents         (24%)
    fleets/               600 AgentFleets    (6%; 3-5 agents each, by name)
    flows/              1,200 AgentFlows     (12%; short form, 1-3 agents by name)
    triggers/             700 Triggers       (7%; Slack, HTTP, PagerDuty, Schedule)
    bindings/{prod,staging,dev}/
                        5,000 FlowBindings   (50%; flow + context + trigger, every reference resolves)

Then a *fresh subprocess* (so the generator's memory does not count) imports aofd, and times:

    read       the directory reader `aofd.source.directory.read_tree` (else a plain walk)
    build      `aofd.plan.desired.build([SourceView])`, if it exists: parse, validate,
               substitute and resolve references, end to end from the snapshot
    (peak RSS is taken here: read + build is the cold load a daemon start pays)
    parse      breakdown: `aofd.resources.documents.parse` alone for every file
    validate   breakdown: `aofd.resources.validation.validate_document(doc)` per document

The collector is handled as the measured daemon handles it at start: where `aofd.daemon.heap`
has `LoadPause`, paused over read + build and the loaded heap frozen after it (an aofd without
it ran its cold load with the collector on, and so is measured); the report says which.

Cold load = read + build; without a planner it falls back to read + parse + validate and says
"partial". Stages whose module does not exist yet are reported as "n/a". Per size it reports the
child's peak RSS (as the child saw it after the cold load, and as the kernel accounted the whole
child, `wait4`), bytes per resource (peak RSS / resources, and above the RSS after the imports),
and between sizes the growth exponent (log-log slope: 1.0 is linear). Targets at 10k: cold load
<= 5 s, peak RSS <= 250 MB; issue 14 asks <= 15 s and <= 8 KB per resource at 100k. Results go
to stdout as a table and to `bench/load.json`; `--quick` is a smoke run (300 and 600 resources).
`PYTHONPATH=<other checkout>` measures that checkout's aofd with this generator.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_SECONDS = 5.0
TARGET_RSS_MB = 250.0

SHARES = {  # fraction of the resources per kind; bindings take the rest
    "contexts": 0.01,
    "agents": 0.24,
    "fleets": 0.06,
    "flows": 0.12,
    "triggers": 0.07,
}
ENVIRONMENTS = ("prod", "staging", "dev")
TOOLS = ("kubectl", "shell", "helm", "prometheus", "loki", "git", "terraform", "aws")
TRIGGER_TYPES = ("Slack", "HTTP", "PagerDuty", "Schedule")


# --- generator --------------------------------------------------------------------------------------


def _context(name: str, env: str, i: int) -> str:
    return f"""\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: {name}
  labels:
    env: {env}
spec:
  kubeconfig: ${{KUBECONFIG_{env.upper()}}}
  namespace: ns-{i}
  cluster: {env}-cluster-{i % 7}
  env:
    ENVIRONMENT: {env}
    LOG_LEVEL: info
    REQUIRE_APPROVAL: "{"true" if env == "prod" else "false"}"
  approval:
    required: {"true" if env == "prod" else "false"}
    allowed_users:
      - U015SRE_LEAD
      - U016PLATFORM_ADMIN
    require_for:
      - kubectl delete
      - kubectl scale --replicas=0
  limits:
    max_requests_per_hour: {100 + i}
    max_tokens_per_request: 4096
  audit:
    enabled: true
"""


def _agent(name: str, rng: random.Random) -> str:
    tools = "\n".join(f"    - {t}" for t in rng.sample(TOOLS, rng.randint(1, 4)))
    return f"""\
apiVersion: aof.dev/v1
kind: Agent
metadata:
  name: {name}
  labels:
    team: team-{rng.randint(1, 40)}
spec:
  model: anthropic:claude-sonnet-4
  instructions: |
    You are {name}, a Kubernetes operations assistant.
    Use kubectl to inspect and manage cluster resources.
    Never delete anything without an approval.
  tools:
{tools}
  max_iterations: {rng.randint(5, 20)}
  temperature: 0.{rng.randint(0, 9)}
"""


def _fleet(name: str, agents: list[str]) -> str:
    members = "\n".join(f"    - name: {a}\n      role: worker" for a in agents)
    return f"""\
apiVersion: aof.dev/v1
kind: AgentFleet
metadata:
  name: {name}
spec:
  agents:
{members}
  coordination:
    mode: peer
"""


def _flow(name: str, agents: list[str]) -> str:
    members = "\n".join(f"    - name: {a}" for a in agents)
    return f"""\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata:
  name: {name}
spec:
  description: Slack to {agents[0]} and back
  agents:
{members}
"""


def _trigger(name: str, kind: str, i: int) -> str:
    config = {
        "Slack": "    bot_token: ${SLACK_BOT_TOKEN}\n    signing_secret: ${SLACK_SIGNING_SECRET}\n",
        "HTTP": f"    path: /hooks/http/{name}\n",
        "PagerDuty": "    webhook_secret: ${PAGERDUTY_WEBHOOK_SECRET}\n",
        "Schedule": f'    cron: "*/{5 + i % 50} * * * *"\n',
    }[kind]
    return f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: {name}
spec:
  type: {kind}
  config:
{config}"""


def _binding(name: str, flow: str, context: str, trigger: str, channel: int) -> str:
    return f"""\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata:
  name: {name}
spec:
  flow:
    name: {flow}
  context:
    name: {context}
  trigger:
    name: {trigger}
    config:
      channels:
        - C{channel:08d}
"""


def counts(total: int) -> dict[str, int]:
    """How many resources of each directory a repo of `total` resources gets."""
    out = {kind: max(1, round(total * share)) for kind, share in SHARES.items()}
    out["contexts"] = max(len(ENVIRONMENTS), out["contexts"])  # every environment has one
    out["bindings"] = total - sum(out.values())
    return out


def generate(root: Path, total: int, seed: int = 42) -> dict[str, int]:
    """Write the repo under `root`; deterministic for a given `seed`. Returns the counts."""
    rng = random.Random(seed)
    n = counts(total)
    for d in ("contexts", "agents", "fleets", "flows", "triggers", *(f"bindings/{e}" for e in ENVIRONMENTS)):
        (root / d).mkdir(parents=True, exist_ok=True)

    contexts: dict[str, list[str]] = {env: [] for env in ENVIRONMENTS}
    for i in range(n["contexts"]):
        env = ENVIRONMENTS[i % 3]
        name = f"{env}-context-{i}"
        contexts[env].append(name)
        (root / "contexts" / f"{name}.yaml").write_text(_context(name, env, i))
    agents = [f"agent-{i}" for i in range(n["agents"])]
    for name in agents:
        (root / "agents" / f"{name}.yaml").write_text(_agent(name, rng))
    for i in range(n["fleets"]):
        (root / "fleets" / f"fleet-{i}.yaml").write_text(
            _fleet(f"fleet-{i}", rng.sample(agents, rng.randint(3, 5)))
        )
    flows = [f"flow-{i}" for i in range(n["flows"])]
    for name in flows:
        (root / "flows" / f"{name}.yaml").write_text(_flow(name, rng.sample(agents, rng.randint(1, 3))))
    triggers = [f"trigger-{i}" for i in range(n["triggers"])]
    for i, name in enumerate(triggers):
        (root / "triggers" / f"{name}.yaml").write_text(_trigger(name, TRIGGER_TYPES[i % 4], i))
    for i in range(n["bindings"]):
        env = ENVIRONMENTS[i % 3]
        name = f"binding-{env}-{i}"
        text = _binding(name, rng.choice(flows), rng.choice(contexts[env]), rng.choice(triggers), i)
        (root / "bindings" / env / f"{name}.yaml").write_text(text)
    return n


# --- measurement (runs in a fresh subprocess) ----------------------------------------------------------


def _optional(module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _walk(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith((".yaml", ".yml")) and not f.startswith("."):
                p = Path(dirpath) / f
                files[p.relative_to(root).as_posix()] = p.read_bytes()
    return files


def measure(root: Path) -> dict[str, Any]:
    """Time each stage on the repo at `root`; called in a fresh interpreter.

    The end-to-end path (read, then `desired.build`) runs first, so the peak RSS recorded
    after it is what a daemon's cold start costs. The parse and validate breakdown runs after
    that, on its own, and does not raise the recorded peak.
    """
    t0 = time.perf_counter()
    from aofd.resources import documents, ids, snapshot

    read_tree = _optional("aofd.source.directory", "read_tree")
    validate_document = _optional("aofd.resources.validation", "validate_document")
    build = _optional("aofd.plan.desired", "build")
    source_view = _optional("aofd.plan.desired", "SourceView")
    imports_s = time.perf_counter() - t0
    rss_after_imports = _rss_mb()
    stages: dict[str, Any] = {"imports": {"seconds": imports_s}}
    limits = snapshot.Limits(max_files=10_000_000, max_tree_bytes=1 << 40)
    # As the daemon: the collector paused through the cold load where that aofd does so.
    pause_type = _optional("aofd.daemon.heap", "LoadPause")
    collector = "paused over the load, as the daemon does" if pause_type is not None else "on"
    if pause_type is not None:
        gc.disable()

    t = time.perf_counter()
    if read_tree is not None:
        snap = read_tree(root, limits=limits, display_root="repo")
        reader = "aofd.source.directory.read_tree"
    else:
        files = _walk(root)
        snap = snapshot.Snapshot.build(
            source="bench", files={p: snapshot.SourceFile.of(p, c) for p, c in files.items()}
        )
        reader = "os.walk (aofd.source.directory not available)"
    stages["read"] = {"seconds": time.perf_counter() - t, "files": len(snap.files), "how": reader}

    if build is not None and source_view is not None:
        variables = {
            **{f"KUBECONFIG_{env.upper()}": f"/etc/kube/{env}.yaml" for env in ENVIRONMENTS},
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_SIGNING_SECRET": "bench-signing-secret",
            "PAGERDUTY_WEBHOOK_SECRET": "bench-pd-secret",
        }
        view = source_view(name="bench", kinds=frozenset(ids.Kind), snapshot=snap)
        t = time.perf_counter()
        desired = build([view], variables=variables)
        found = [i for i in getattr(desired, "issues", ()) if getattr(i, "is_error", False)]
        stages["build"] = {
            "seconds": time.perf_counter() - t,
            "errors": len(found),
            "first_errors": [i.format() for i in found[:3]],
            "how": "aofd.plan.desired.build: parse + validate + substitute + resolve",
        }
    else:
        stages["build"] = {"seconds": None, "how": "aofd.plan.desired not available"}
    peak_rss = _rss_mb()
    if pause_type is not None:
        gc.freeze()  # what the daemon does at the first pass's end
        gc.enable()
    if build is not None and source_view is not None:
        del desired

    # Breakdown, not part of the cold load: the parse and validate stages on their own.
    t = time.perf_counter()
    docs: list[Any] = []
    parse_issues = 0
    for path, f in snap.files.items():
        result = documents.parse(path, f.content)
        docs.extend(result.documents)
        parse_issues += len(result.issues)
    parse_s = time.perf_counter() - t
    stages["parse"] = {
        "seconds": parse_s,
        "documents": len(docs),
        "issues": parse_issues,
        "us_per_document": parse_s / max(1, len(docs)) * 1e6,
    }
    if validate_document is not None:
        t = time.perf_counter()
        problems: list[str] = []
        for doc in docs:
            outcome = validate_document(doc)
            problems.extend(i.format() for i in outcome.issues if i.is_error)
        stages["validate"] = {
            "seconds": time.perf_counter() - t,
            "errors": len(problems),
            "first_errors": problems[:3],
        }
    else:
        stages["validate"] = {"seconds": None, "how": "aofd.resources.validation not available"}

    if stages["build"]["seconds"] is not None:
        cold = stages["read"]["seconds"] + stages["build"]["seconds"]
        complete = True
    else:  # no planner yet: read + parse + validate is all there is to time
        cold = sum(stages[s]["seconds"] or 0.0 for s in ("read", "parse", "validate"))
        complete = False
    return {
        "stages": stages,
        "cold_load_seconds": cold,
        "complete": complete,
        "rss_after_imports_mb": rss_after_imports,
        "collector": collector,
        "peak_rss_mb": peak_rss if complete else _rss_mb(),
    }


# --- driver ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.3f} {unit}" if unit == "s" else f"{value:.1f} {unit}"


def run_size(resources: int, keep: Path | None) -> dict[str, Any]:
    """Generate `resources` into a temporary directory, measure them in a fresh child process.

    The child's peak RSS is also read by the parent from the kernel (`wait4`'s `ru_maxrss` of that
    child alone), so it covers the whole child, the parse and validate breakdown included.
    """
    with tempfile.TemporaryDirectory(prefix="aofd-bench-") as tmp:
        root = keep if keep is not None else Path(tmp) / "repo"
        t = time.perf_counter()
        n = generate(root, resources)
        generate_s = time.perf_counter() - t
        repo_bytes = sum(p.stat().st_size for p in root.rglob("*.yaml"))
        checkout = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH") or checkout  # PYTHONPATH=<other checkout> measures that one
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--measure", str(root)],
                stdout=out,
                stderr=err,
                cwd=tmp,
                env={**os.environ, "PYTHONPATH": path},
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{resources} resources: the measuring process failed:\n{stderr}")
    result: dict[str, Any] = json.loads(stdout)
    peak = result["peak_rss_mb"]
    result.update(
        resources=resources,
        counts=n,
        repo_bytes=repo_bytes,
        generate_seconds=generate_s,
        child_peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        bytes_per_resource=peak * 2**20 / resources,
        bytes_per_resource_above_imports=(peak - result["rss_after_imports_mb"]) * 2**20 / resources,
    )
    return result


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log-log slopes between consecutive sizes: 1.0 is linear, 2.0 quadratic."""
    out = []
    for a, b in itertools.pairwise(results):
        scale = math.log(b["resources"] / a["resources"])

        def slope(x: float, y: float, scale: float = scale) -> float | None:
            return math.log(y / x) / scale if x > 0 and y > 0 else None

        out.append(
            {
                "from": a["resources"],
                "to": b["resources"],
                "cold_load_seconds": slope(a["cold_load_seconds"], b["cold_load_seconds"]),
                "peak_rss_above_imports": slope(
                    a["peak_rss_mb"] - a["rss_after_imports_mb"], b["peak_rss_mb"] - b["rss_after_imports_mb"]
                ),
            }
        )
    return out


def report(result: dict[str, Any]) -> None:
    n = result["counts"]
    print(f"repo: {result['resources']} resources, {result['repo_bytes'] / 1e6:.1f} MB, {counts_line(n)}")
    print(f"{'stage':<10} {'time':>10}  notes")
    for name in ("imports", "read", "build", "parse", "validate"):
        s = result["stages"][name]
        notes = {k: v for k, v in s.items() if k != "seconds"}
        if "us_per_document" in notes:
            notes["us_per_document"] = round(notes["us_per_document"], 1)
        print(f"{name:<10} {_fmt(s['seconds'], 's'):>10}  {notes or ''}")
    verdict_t = "ok" if result["cold_load_seconds"] <= TARGET_SECONDS else "OVER"
    verdict_m = "ok" if result["peak_rss_mb"] <= TARGET_RSS_MB else "OVER"
    partial = " (read + build)" if result["complete"] else " (partial: no planner, read + parse + validate)"
    cold = _fmt(result["cold_load_seconds"], "s")
    print(
        f"cold load  {cold:>10}  target {TARGET_SECONDS} s at 10k: {verdict_t}{partial};"
        f" collector {result.get('collector', 'on')}"
    )
    print(
        f"peak RSS   {_fmt(result['peak_rss_mb'], 'MB'):>10}  target {TARGET_RSS_MB} MB at 10k: {verdict_m}"
    )
    print(
        f"RSS after imports {result['rss_after_imports_mb']:.1f} MB; whole child's peak"
        f" {result['child_peak_rss_mb']:.1f} MB; {result['bytes_per_resource'] / 1024:.1f} KB per resource"
        f" ({result['bytes_per_resource_above_imports'] / 1024:.1f} KB above the imports)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated resource counts")
    parser.add_argument("--resources", type=int, help="one size (the same as --sizes N)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 and 600 resources")
    parser.add_argument("--keep", type=Path, help="generate into this directory and keep it (one size)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("load.json"))
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the subprocess entry point
    args = parser.parse_args(argv)

    if args.measure is not None:
        json.dump(measure(args.measure), sys.stdout)
        return 0
    if args.quick:
        sizes = [300, 600]
    elif args.resources is not None:
        sizes = [args.resources]
    else:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.keep is not None and len(sizes) != 1:
        parser.error("--keep takes one size")
    results = []
    for size in sizes:
        results.append(run_size(size, args.keep))
        report(results[-1])
        print()
    slopes = growth(results)
    for g in slopes:
        t, m = g["cold_load_seconds"], g["peak_rss_above_imports"]
        print(
            f"growth {g['from']} -> {g['to']}: cold load x^{t:.2f}, peak RSS above imports x^"
            + (f"{m:.2f}" if m is not None else "n/a")
            + " (1.00 = linear)"
        )
    doc = {
        "python": sys.version.split()[0],
        "targets": {"cold_load_seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_RSS_MB},
        "sizes": results,
        "growth": slopes,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results in {args.out}")
    return 0


def counts_line(n: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in n.items())


if __name__ == "__main__":
    raise SystemExit(main())
