"""A layered layout of a small directed graph, for the status web page's pictures; pure.

This module owns where each node of a drawn graph goes: its layer (the longest path from a
node nothing points at, so every edge points down, cycles broken at the first edge that
closes one) and its slot within the layer (the order nodes were given, then nudged toward
the mean slot of their parents to shorten edges). The web page turns layers and slots into
pixels; nothing here knows about SVG or HTTP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """Where one node goes: `layer` 0 at the top, `slot` 0 at the left."""

    id: str
    layer: int
    slot: int


def layered(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> tuple[Placed, ...]:
    """Place `nodes` (ids, in the order to keep when nothing else decides) in layers so that
    the edges `(from, to)` between them point downwards. Edges naming unknown nodes and
    self-loops are ignored; an edge that closes a cycle is ignored for layering only."""
    index = {node: i for i, node in enumerate(dict.fromkeys(nodes))}
    order = list(index)
    children: dict[str, list[str]] = {node: [] for node in order}
    for src, dst in edges:
        if src in index and dst in index and src != dst and dst not in children[src]:
            children[src].append(dst)
    # Depth-first from every root (then from anything left: a cycle with no root), keeping the
    # edges that do not close a cycle.
    forward: dict[str, list[str]] = {node: [] for node in order}
    state: dict[str, int] = {}  # 1 on the path, 2 done
    has_parent = {dst for targets in children.values() for dst in targets}
    starts = [n for n in order if n not in has_parent] + order
    for start in starts:
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            if i < len(children[node]):
                stack[-1] = (node, i + 1)
                child = children[node][i]
                if state.get(child) == 1:
                    continue  # closes a cycle
                forward[node].append(child)
                if child not in state:
                    state[child] = 1
                    stack.append((child, 0))
            else:
                state[node] = 2
                stack.pop()
    # Longest path layering over the acyclic `forward` edges (Kahn's order).
    parents: dict[str, list[str]] = {node: [] for node in order}
    for src, targets in forward.items():
        for dst in targets:
            parents[dst].append(src)
    layer = dict.fromkeys(order, 0)
    waiting = {node: len(parents[node]) for node in order}
    ready = [node for node in order if not waiting[node]]
    while ready:
        node = ready.pop(0)
        for child in forward[node]:
            layer[child] = max(layer[child], layer[node] + 1)
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    # Slots: layer by layer, by the mean slot of the parents above, ties in the given order.
    by_layer: dict[int, list[str]] = {}
    for node in order:
        by_layer.setdefault(layer[node], []).append(node)
    slot: dict[str, int] = {}
    for depth in sorted(by_layer):
        members = by_layer[depth]

        def weight(node: str) -> tuple[float, int]:
            above = [slot[p] for p in parents[node] if p in slot]
            return (sum(above) / len(above) if above else float(index[node]), index[node])

        slot.update({node: i for i, node in enumerate(sorted(members, key=weight))})
    return tuple(Placed(node, layer[node], slot[node]) for node in order)
