"""Incremental builds (a warm ParseCache) give exactly what a full build gives, edit after edit."""

from __future__ import annotations

import dataclasses
import random

import pytest

from aofd.plan import compiler, desired, diff
from aofd.resources import snapshot
from tests.plan.conftest import agent, binding, context, doc, flow, trigger, view


def snap_of(files: dict[str, str], reuse: snapshot.Snapshot | None = None) -> snapshot.Snapshot:
    """The snapshot of `files`; with `reuse`, an unchanged file keeps its `SourceFile` object,
    as the directory source hands it over (the planner then compares only the changed objects)."""
    old = reuse.files if reuse is not None else {}
    made = {}
    for path, text in files.items():
        before = old.get(path)
        made[path] = before if before is not None and before.content == text.encode() else None
        made[path] = made[path] or snapshot.SourceFile.of(path, text.encode())
    return snapshot.Snapshot.build(source="main", files=made, display_root="main")


def shared_path_trigger(name: str, enabled: bool) -> str:
    """A Trigger serving `/hooks/http/hook`, the path of Trigger `hook`."""
    spec = (
        f"type: HTTP\nenabled: {str(enabled).lower()}\nconfig:\n  path: /hooks/http/hook\n  webhook_secret: s"
    )
    return doc("Trigger", name, spec)


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
    # a second (enabled or not) Trigger serving the path of `hook`; then gone again
    lambda f, r: f.__setitem__(
        f"triggers/t{r.randrange(2)}.yaml", shared_path_trigger(f"t{r.randrange(2)}", r.random() < 0.7)
    ),
    lambda f, r: f.pop(f"triggers/t{r.randrange(2)}.yaml", None),
]


def _indexes(
    state: desired.DesiredState, plan: diff.Plan, previous: desired.DesiredState
) -> tuple[object, ...]:
    """The state's reverse indexes and what they answer, in comparable form."""
    assert state.users is not None
    scanned = dataclasses.replace(state, users=None)  # `users_of` without the index: every binding
    assert all(state.users_of(k) == scanned.users_of(k) for k in state.resources)
    return (
        dict(state.resources),
        dict(state.origins),
        dict(state.edges),
        dict(state.users),
        {k: [b.key for b in state.users_of(k)] for k in state.resources},
        {k: [b.key for b in scanned.users_of(k)] for k in state.resources},
        plan.touched_contexts(state, previous),
        state.issues,
    )


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
    snap = snap_of(files)
    state = desired.build([view(snap)], variables=variables, cache=cache)
    compiler.build(state, cache=compile_cache)
    inventory = diff.Inventory.of(state)
    previous = state
    mismatches = []
    for step in range(25):
        rng.choice(EDITS)(files, rng)
        snap = snap_of(files, snap if seed % 2 else None)
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
            _indexes(incremental, plan_inc, previous),
        )
        want = (
            dict(full.digests),
            {k: b.digest for k, b in full.bindings.items()},
            compiled_full.issues,
            plan_full.changes,
            sorted(plan_full.unchanged),
            _specs(compiled_full),
            _indexes(full, plan_full, previous),
        )
        if got != want:
            mismatches.append(step)
        if incremental.ok:
            inventory = diff.Inventory.of(incremental)
            previous = incremental
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
