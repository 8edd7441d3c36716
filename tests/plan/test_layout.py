"""The layered layout the status page draws flow graphs with: edges point down, cycles and
stray edges do not break it, and the given order decides ties."""

from __future__ import annotations

from aofd.plan import layout


def places(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    return {p.id: (p.layer, p.slot) for p in layout.layered(nodes, edges)}


def test_a_chain_is_one_column() -> None:
    assert places(["a", "b", "c"], [("a", "b"), ("b", "c")]) == {"a": (0, 0), "b": (1, 0), "c": (2, 0)}


def test_a_node_sits_below_its_deepest_parent() -> None:
    got = places(["start", "x", "y", "join"], [("start", "x"), ("x", "y"), ("start", "join"), ("y", "join")])
    assert got["join"][0] == 3
    assert (got["x"][0], got["y"][0]) == (1, 2)


def test_branches_share_a_layer_in_the_given_order() -> None:
    got = places(["s", "left", "right"], [("s", "left"), ("s", "right")])
    assert got == {"s": (0, 0), "left": (1, 0), "right": (1, 1)}


def test_a_cycle_is_broken_and_every_node_placed_once() -> None:
    got = places(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")])
    assert got == {"a": (0, 0), "b": (1, 0), "c": (2, 0)}
    # A cycle with no root at all is still placed.
    assert set(places(["p", "q"], [("p", "q"), ("q", "p")])) == {"p", "q"}


def test_unknown_nodes_self_loops_and_duplicates_are_ignored() -> None:
    got = places(["a", "b", "a"], [("a", "a"), ("a", "ghost"), ("ghost", "b"), ("a", "b"), ("a", "b")])
    assert got == {"a": (0, 0), "b": (1, 0)}


def test_slots_are_unique_within_a_layer() -> None:
    nodes = [f"n{i}" for i in range(8)]
    edges = [("n0", f"n{i}") for i in range(1, 8)]
    got = places(nodes, edges)
    slots = sorted(slot for node, (layer, slot) in got.items() if layer == 1)
    assert slots == list(range(7))
