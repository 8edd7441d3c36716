"""The composition graph of a desired state, as mermaid or Graphviz dot text; pure.

This module owns the picture of the seed's layer diagram for a real repo: one node per
resource, grouped by layer (Bindings at the top, Contexts at the bottom), and one edge per
by-name reference (binding -> flow, context, trigger; flow -> agents and fleets; fleet ->
agents; trigger commands -> agents, fleets, flows). Disabled bindings are drawn dashed.
Node ids are generated (`n0`, `n1`, ...), so no resource name can break the syntax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from aofd.plan import desired
from aofd.resources import ids

Format = Literal["mermaid", "dot"]

LAYER_TITLES: Mapping[int, str] = {
    5: "Layer 5: Bindings",
    4: "Layer 4: Triggers",
    3: "Layer 3: Flows",
    2: "Layer 2: Fleets",
    1: "Layer 1: Agents",
    0: "Layer 0: Contexts",
}

EDGE_LABELS: Mapping[ids.Kind, str] = {
    ids.Kind.CONTEXT: "context",
    ids.Kind.AGENT: "agent",
    ids.Kind.FLEET: "fleet",
    ids.Kind.FLOW: "flow",
    ids.Kind.WORKFLOW: "workflow",
    ids.Kind.TRIGGER: "trigger",
    ids.Kind.BINDING: "binding",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Graph:
    """Nodes by layer (each `(id, key)`), edges `(from id, to id, label)`, disabled node ids."""

    layers: tuple[tuple[int, tuple[tuple[str, ids.ResourceKey], ...]], ...]
    edges: tuple[tuple[str, str, str], ...]
    disabled: frozenset[str]


def of(state: desired.DesiredState) -> Graph:
    """The graph of `state`'s resources and resolved references."""
    keys = sorted(state.resources, key=lambda k: (-k.kind.layer, k.kind.value, k.namespace, k.name))
    node_ids = {key: f"n{i}" for i, key in enumerate(keys)}
    by_layer: dict[int, list[tuple[str, ids.ResourceKey]]] = {}
    for key in keys:
        by_layer.setdefault(key.kind.layer, []).append((node_ids[key], key))
    edges = [
        (node_ids[key], node_ids[target], EDGE_LABELS[target.kind])
        for key in keys
        for target in state.edges.get(key, ())
        if target in node_ids
    ]
    disabled = frozenset(node_ids[b.key] for b in state.bindings.values() if not b.enabled)
    layers = tuple((layer, tuple(nodes)) for layer, nodes in sorted(by_layer.items(), reverse=True))
    return Graph(layers, tuple(edges), disabled)


def render(state: desired.DesiredState, fmt: Format) -> str:
    """`state`'s composition graph as mermaid (`flowchart TD`) or dot (`digraph`) text."""
    graph = of(state)
    return mermaid(graph) if fmt == "mermaid" else dot(graph)


def _label(key: ids.ResourceKey) -> str:
    name = key.name if key.namespace == ids.DEFAULT_NAMESPACE else f"{key.namespace}/{key.name}"
    return f"{key.kind.value}: {name}"


def mermaid(graph: Graph) -> str:
    lines = ["flowchart TD"]
    for layer, nodes in graph.layers:
        lines.append(f'  subgraph L{layer}["{LAYER_TITLES.get(layer, f"Layer {layer}")}"]')
        lines.extend(f'    {node_id}["{_label(key)}"]' for node_id, key in nodes)
        lines.append("  end")
    lines.extend(f"  {a} -->|{label}| {b}" for a, b, label in graph.edges)
    if graph.disabled:
        lines.append("  classDef disabled stroke-dasharray: 5 5,opacity:0.6")
        lines.append(f"  class {','.join(sorted(graph.disabled))} disabled")
    return "\n".join(lines) + "\n"


def dot(graph: Graph) -> str:
    lines = ["digraph aof {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for layer, nodes in graph.layers:
        lines.append(f"  subgraph cluster_layer{layer} {{")
        lines.append(f'    label="{LAYER_TITLES.get(layer, f"Layer {layer}")}";')
        for node_id, key in nodes:
            style = ", style=dashed" if node_id in graph.disabled else ""
            lines.append(f'    {node_id} [label="{_label(key)}"{style}];')
        lines.append("  }")
    lines.extend(f'  {a} -> {b} [label="{label}"];' for a, b, label in graph.edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
