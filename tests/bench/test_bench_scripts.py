"""The benchmark scripts under bench/ still run at a tiny size, and their own arithmetic is right.

The figures themselves are the scripts' business (bench/RESULTS.md); here: the generator's
agent picker agrees with a brute-force count, the growth exponent and the `/healthz` gap
arithmetic are right, and `--quick` runs of `load.py` and `reconcile.py` (the daemon end to end,
watched directory and git push hook) finish and write their JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import load  # noqa: E402
import reconcile  # noqa: E402


def _brute_force_uses(repo: Path) -> Counter[str]:
    """Bindings per agent through flows, plus fleets: the quadratic way, file by file."""
    uses: Counter[str] = Counter()
    bindings = [p.read_text() for p in repo.glob("bindings/**/*.yaml")]
    for agent in repo.glob("agents/*.yaml"):
        name = agent.stem
        for flow in repo.glob("flows/*.yaml"):
            if re.search(rf"\b{name}\b", flow.read_text()):
                uses[name] += sum(1 for b in bindings if f"    name: {flow.stem}\n" in b)
        for fleet in repo.glob("fleets/*.yaml"):
            if re.search(rf"\b{name}\b", fleet.read_text()):
                uses[name] += 1
    return uses


def test_most_used_agent_matches_a_brute_force_count(tmp_path: Path) -> None:
    load.generate(tmp_path, 300)
    path, uses = reconcile.most_used_agent(tmp_path)
    expected = _brute_force_uses(tmp_path)
    assert path.exists()
    assert uses == max(expected.values())
    assert expected[path.stem] == uses


def test_tiny_trees_have_a_context_per_environment() -> None:
    assert load.counts(100)["contexts"] == len(load.ENVIRONMENTS)
    assert sum(load.counts(10_000).values()) == 10_000


def test_growth_exponent_is_the_log_log_slope() -> None:
    def size(n: int, seconds: float, rss_mb: float) -> dict[str, float]:
        return {
            "resources": n,
            "cold_load_seconds": seconds,
            "peak_rss_mb": 40 + rss_mb,
            "rss_after_imports_mb": 40,
        }

    slopes = load.growth([size(1_000, 1.0, 10), size(10_000, 10.0, 1_000)])
    assert slopes[0]["cold_load_seconds"] == pytest.approx(1.0)  # 10x the resources, 10x the time
    assert slopes[0]["peak_rss_above_imports"] == pytest.approx(2.0)  # 10x the resources, 100x the memory


def test_healthz_gaps_count_the_stall_that_straddles_the_window() -> None:
    answers = [0.000, 0.005, 0.010, 0.510, 0.515, 0.520]
    gaps = reconcile.gaps(answers, 0.2, 1.0)  # the 500 ms stall began before the window and ended inside it
    assert gaps["answers"] == 3
    assert gaps["max_ms"] == pytest.approx(500.0)
    assert gaps["p50_ms"] == pytest.approx(5.0)


def _run(script: str, out: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_load_quick_runs(tmp_path: Path) -> None:
    result = _run("load.py", tmp_path / "load.json")
    sizes = result["sizes"]
    assert [s["resources"] for s in sizes] == [300, 600]
    assert all(s["complete"] and s["child_peak_rss_mb"] > 0 for s in sizes)
    assert all(s["stages"]["build"]["errors"] == 0 for s in sizes)
    assert len(result["growth"]) == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reconcile_quick_runs_the_daemon_end_to_end(tmp_path: Path) -> None:
    result = _run("reconcile.py", tmp_path / "reconcile.json")
    (size,) = result["sizes"]
    assert size["planner"]["one_file"]["n"] == 2
    for mode, key in (("directory", "edit_to_applied_ms"), ("git", "hook_to_applied_ms")):
        daemon = size[mode]
        assert "error" not in daemon, daemon
        assert daemon["outcomes"] == {"applied": 3}  # every edit, the warm-up one included, applied
        assert daemon[key]["n"] == 2
        assert daemon["bindings_ready"] == {"Ready": size["counts"]["bindings"]}
        assert daemon["healthz_gap_during_edits"]["answers"] > 0
    watched = size["directory"]
    assert watched["watch_notified_ms"]["n"] == 2  # the watch probe saw both measured edits
    assert watched["edit_to_applied_beyond_watch_ms"]["p50"] > 0
