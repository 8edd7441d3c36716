"""Helpers for planner tests: write real YAML trees into tmp dirs and read them as snapshots."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from aofd.plan import desired
from aofd.resources import ids, snapshot
from aofd.source import directory

WriteTree = Callable[..., snapshot.Snapshot]


def doc(kind: str, name: str, spec: str = "", *, namespace: str = "") -> str:
    """A resource document with `spec` given as indented YAML text."""
    meta = f"metadata:\n  name: {name}\n" + (f"  namespace: {namespace}\n" if namespace else "")
    body = "spec:\n" + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n" if spec else ""
    return f"apiVersion: aof.dev/v1\nkind: {kind}\n{meta}{body}"


def context(name: str, spec: str = "namespace: default") -> str:
    return doc("Context", name, spec)


def agent(name: str, instructions: str = "You help.") -> str:
    return doc("Agent", name, f"model: anthropic:claude-sonnet-4\ninstructions: {instructions!r}")


def flow(name: str, *agents: str) -> str:
    listed = "\n".join(f"  - name: {a}" for a in agents)
    return doc("AgentFlow", name, f"agents:\n{listed}")


def trigger(name: str) -> str:
    return doc("Trigger", name, f"type: HTTP\nconfig:\n  path: /hooks/http/{name}\n  webhook_secret: s3cret")


def binding(name: str, flow_name: str, context_name: str, trigger_name: str = "hook") -> str:
    return doc(
        "FlowBinding",
        name,
        f"flow: {{name: {flow_name}}}\ncontext: {{name: {context_name}}}\ntrigger: {{name: {trigger_name}}}",
    )


@pytest.fixture
def write_tree(tmp_path: Path) -> WriteTree:
    """Write `{relative path: text}` under tmp_path/<name> and read it back as a Snapshot."""

    def write(files: Mapping[str, str], *, name: str = "main") -> snapshot.Snapshot:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        for old in sorted(root.rglob("*.yaml"), reverse=True):
            if str(old.relative_to(root)) not in files:
                old.unlink()
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return directory.read_tree(root, source_name=name, display_root=name)

    return write


def view(snap: snapshot.Snapshot, kinds: frozenset[ids.Kind] = desired.ALL_KINDS) -> desired.SourceView:
    return desired.SourceView(name=snap.source, kinds=kinds, snapshot=snap)


def messages(state: desired.DesiredState, code: str | None = None) -> list[str]:
    return [i.format() for i in state.issues if code is None or i.code == code]
