"""aofd.resources.documents: the compact position table agrees with ruamel's own node marks, and is small.

A daemon keeps every parsed document for as long as it is current, so what a document costs
beyond its data is paid 100,000 times at scale. These tests check the positions of random
documents against an independent oracle (ruamel's composer, which records a start mark per
node) and bound the bytes a document retains per node.
"""

# The house style is `expected == actual` (STYLE.md habit 9); ruff's SIM300 calls that a Yoda condition.

from __future__ import annotations

import io
import json
import random
import tracemalloc

import pytest
from ruamel.yaml import YAML
from ruamel.yaml import nodes as yaml_nodes

from aofd.resources import documents

Loc = tuple[str | int, ...]
KEYS = ("apiVersion", "kind", "name", "spec", "agents", "é-key", "x", "with space", "1", "true")


def _random_value(rng: random.Random, depth: int) -> object:
    roll = rng.random()
    if depth < 4 and roll < 0.3:
        return {
            rng.choice(KEYS) + str(i % 3 or ""): _random_value(rng, depth + 1)
            for i in range(rng.randint(0, 4))
        }
    if depth < 4 and roll < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice(["plain", "two words", "line one\nline two\n", "", "ü", 7, -3, 1.5, True, None, "010"])


def _random_yaml(rng: random.Random) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = rng.choice([False, None, True])
    sequence, offset = rng.choice([(2, 0), (4, 2), (4, 0)])
    yaml.indent(mapping=rng.choice([2, 4]), sequence=sequence, offset=offset)
    out = io.StringIO()
    docs = [_random_value(rng, 0) for _ in range(rng.randint(1, 2))]
    yaml.dump_all([{"root": d} if rng.random() < 0.8 else [d] for d in docs], out)
    return out.getvalue()


def _oracle(
    node: yaml_nodes.Node, loc: Loc, values: dict[Loc, tuple[int, int]], keys: dict[Loc, tuple[int, int]]
) -> None:
    values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml_nodes.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, key_node.value)
            keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _oracle(value_node, child, values, keys)
    elif isinstance(node, yaml_nodes.SequenceNode):
        for index, item in enumerate(node.value):
            _oracle(item, (*loc, index), values, keys)


@pytest.mark.parametrize("seed", range(60))
def test_positions_of_random_documents_match_the_composers_marks(seed: int) -> None:
    """Every node's and every key's position, and lookups of missing paths, agree with the oracle."""
    rng = random.Random(seed)
    text = _random_yaml(rng)
    parsed = documents.parse("random.yaml", text.encode())
    assert () == parsed.issues, text
    composed = [n for n in YAML(typ="safe", pure=True).compose_all(text) if n is not None]
    assert len(composed) == len(parsed.documents)
    for node, doc in zip(composed, parsed.documents, strict=True):
        values: dict[Loc, tuple[int, int]] = {}
        keys: dict[Loc, tuple[int, int]] = {}
        _oracle(node, (), values, keys)
        assert (values, keys) == (dict(doc.positions), dict(doc.key_positions)), text
        assert (len(values), len(keys)) == (len(doc.positions), len(doc.key_positions))
        for loc, where in values.items():
            assert where == doc.position(loc)
            assert keys.get(loc, where) == doc.key_position(loc)
            # A path below an existing node that does not exist falls back to that node.
            assert where == doc.position((*loc, "no such key", 0))
            assert (*loc, "no such key") not in doc.positions


def test_duplicate_key_message_names_the_first_line_inside_nested_mappings() -> None:
    """The duplicate-key message still finds the first occurrence after nested siblings."""
    content = b"a:\n  b: [1, {c: 2}]\n  d: {e: 3}\n  b: 4\n"
    (issue,) = documents.parse("dup.yaml", content).issues
    assert "duplicate key 'b': first at line 2, again at line 4" == issue.message


def test_a_document_retains_little_beyond_its_data() -> None:
    """Positions cost at most 32 bytes per node (a tuple-keyed dict of tuples cost about 200)."""
    items = "\n".join(f"  key{i}:\n    name: value-{i}\n    list: [a{i}, b{i}]" for i in range(300))
    content = f"spec:\n{items}\n".encode()
    nodes = 1 + 1 + 300 * 5

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = documents.parse("big.yaml", content)
        parsed_bytes = tracemalloc.get_traced_memory()[0] - before
        (doc,) = result.documents
        before = tracemalloc.get_traced_memory()[0]
        data_only = json.loads(json.dumps(doc.data))
        data_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert data_only == doc.data
    assert (parsed_bytes - data_bytes) / nodes <= 32


def test_lines_past_65535_keep_their_positions() -> None:
    """A table whose lines do not fit 16 bits is kept in 32 bits, positions exact."""
    content = b"#\n" * 70_000 + b"a:\n  b: [1, 2]\n"
    (doc,) = documents.parse("long.yaml", content).documents
    assert [(70_001, 1), (70_002, 6), (70_002, 10)] == [
        doc.key_position(("a",)),
        doc.position(("a", "b")),
        doc.position(("a", "b", 1)),
    ]
