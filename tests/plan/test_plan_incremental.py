"""Incremental builds (a warm ParseCache) give exactly what a full build gives, edit after edit."""

from __future__ import annotations

import random

import pytest

from aofd.plan import compiler, desired, diff
from aofd.resources import snapshot
from tests.plan.conftest import agent, binding, context, doc, flow, trigger, view


def snap_of(files: dict[str, str]) -> snapshot.Snapshot:
    return snapshot.Snapshot.build(
        source="main",
        files={p: snapshot.SourceFile.of(p, t.encode()) for p, t in files.items()},
        display_root="main",
    )


def context_in(name: str, namespace: str) -> str:
    return doc("Context", name, "namespace: default", namespace=namespace)


def tree() -> dict[str, str]:
    files = {
        "contexts/prod.yaml": context("prod"),
        "contexts/dev.yaml": context("dev", 'kubeconfig: "${KUBECONFIG_DEV}"'),
        "triggers/hook.yaml": trigger("hook"),
    }
    for i in range(6):
        files[f"agents/a{i}.yaml"] = agent(f"a{i}")
    for i in range(4):
        files[f"flows/f{i}.yaml"] = flow(f"f{i}", f"a{i}", f"a{i + 1}")
    files["fleets/team.yaml"] = doc("AgentFleet", "team", "agents:\n  - name: a0\n  - name: a5")
    for i in range(8):
        files[f"bindings/b{i}.yaml"] = binding(f"b{i}", f"f{i % 4}", "prod" if i % 2 else "dev")
    return files


EDITS = [
    lambda f, r: f.__setitem__(
        f"agents/a{r.randrange(7)}.yaml", agent(f"a{r.randrange(7)}", f"v{r.random()}")
    ),
    lambda f, r: f.pop(f"agents/a{r.randrange(7)}.yaml", None),
    lambda f, r: f.pop(f"flows/f{r.randrange(5)}.yaml", None),
    lambda f, r: f.__setitem__(
        f"flows/f{r.randrange(5)}.yaml", flow(f"f{r.randrange(5)}", f"a{r.randrange(7)}")
    ),
    lambda f, r: f.__setitem__(
        f"bindings/b{r.randrange(10)}.yaml", binding(f"b{r.randrange(10)}", "f1", "prod")
    ),
    lambda f, r: f.pop(f"bindings/b{r.randrange(10)}.yaml", None),
    lambda f, r: f.__setitem__("contexts/dev.yaml", context("dev", f"namespace: n{r.randrange(3)}")),
    lambda f, r: f.pop("contexts/prod.yaml", None),
    lambda f, r: f.__setitem__("contexts/prod.yaml", context("prod")),
    lambda f, r: f.__setitem__(f"agents/dup{r.randrange(2)}.yaml", agent("a1")),
    lambda f, r: f.pop(f"agents/dup{r.randrange(2)}.yaml", None),
    lambda f, r: f.__setitem__(
        "fleets/team.yaml", doc("AgentFleet", "team", f"agents:\n  - name: a{r.randrange(8)}")
    ),
    # a Trigger that cannot be served for a revision (its cron is wrong), then can again
    lambda f, r: f.__setitem__(
        "triggers/hook.yaml",
        doc(
            "Trigger", "hook", f"type: Schedule\nconfig: {{cron: '{r.choice(['0 3 * * *', '61 25 * * *'])}'}}"
        ),
    ),
    lambda f, r: f.__setitem__("triggers/hook.yaml", trigger("hook")),
    # a second Context named prod, in another namespace; then gone again
    lambda f, r: f.__setitem__("contexts/prod-b.yaml", context_in("prod", "b")),
    lambda f, r: f.pop("contexts/prod-b.yaml", None),
    # a fleet naming an Agent that does not exist, then deleted
    lambda f, r: f.__setitem__("fleets/ghosts.yaml", doc("AgentFleet", "ghosts", "agents:\n  - name: ghost")),
    lambda f, r: f.pop("fleets/ghosts.yaml", None),
]


def _specs(compiled: compiler.Compiled) -> tuple[object, ...]:
    """Everything a compiled revision hands the runtime, in comparable form."""
    return (
        dict(compiled.contexts),
        dict(compiled.agents),
        dict(compiled.fleets),
        dict(compiled.flows),
        dict(compiled.bindings),
        dict(compiled.listeners),
        dict(compiled.routes),
        dict(compiled.users),
        dict(compiled.triggers),
        dict(compiled.agent_fleets),
        dict(compiled.context_keys),
        compiled.problem_issues,
    )


@pytest.mark.parametrize("seed", range(16))
def test_incremental_equals_full(seed: int) -> None:
    """After each random edit, the incremental state, compiled specs and plan equal a from-scratch build's."""
    rng = random.Random(seed)
    files = tree()
    cache = desired.ParseCache()
    compile_cache = compiler.Cache()
    variables = {"KUBECONFIG_DEV": "/k/dev"}
    state = desired.build([view(snap_of(files))], variables=variables, cache=cache)
    compiler.build(state, cache=compile_cache)
    inventory = diff.Inventory.of(state)
    mismatches = []
    for step in range(25):
        rng.choice(EDITS)(files, rng)
        snap = snap_of(files)
        incremental = desired.build([view(snap)], variables=variables, cache=cache)
        full = desired.build([view(snap)], variables=variables)
        compiled_inc = compiler.build(incremental, cache=compile_cache)
        compiled_full = compiler.build(full)
        plan_inc = diff.compute(compiled_inc, inventory)
        plan_full = diff.compute(compiled_full, inventory)
        got = (
            dict(incremental.digests),
            {k: b.digest for k, b in incremental.bindings.items()},
            compiled_inc.issues,
            plan_inc.changes,
            sorted(plan_inc.unchanged),
            _specs(compiled_inc),
        )
        want = (
            dict(full.digests),
            {k: b.digest for k, b in full.bindings.items()},
            compiled_full.issues,
            plan_full.changes,
            sorted(plan_full.unchanged),
            _specs(compiled_full),
        )
        if got != want:
            mismatches.append(step)
        if incremental.ok:
            inventory = diff.Inventory.of(incremental)
    assert [] == mismatches


def test_one_file_edit_takes_the_delta_path() -> None:
    """A content edit is applied incrementally: the state records exactly the keys it touched."""
    files = tree()
    cache = desired.ParseCache()
    desired.build([view(snap_of(files))], variables={"KUBECONFIG_DEV": "/k"}, cache=cache)
    files["agents/a3.yaml"] = agent("a3", "new")
    state = desired.build([view(snap_of(files))], variables={"KUBECONFIG_DEV": "/k"}, cache=cache)
    touched = sorted(str(k) for k in state.delta.keys) if state.delta else None
    assert [
        "Agent/a3",
        "FlowBinding/b2",
        "FlowBinding/b3",
        "FlowBinding/b6",
        "FlowBinding/b7",
    ] == touched
