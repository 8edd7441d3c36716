"""The cold load's fast paths keep the behaviour of the paths they replace.

Keys hash once and survive pickling in another process's hash seed; plain scalars that start
like a null or a bool but are neither stay strings; a sub-model left out shares one frozen
default instance that the canonical form still leaves out."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from aofd.resources import documents, ids
from aofd.resources.kinds import base, binding


def test_a_key_hashes_as_its_parts_and_compares_as_before() -> None:
    key = ids.ResourceKey(ids.Kind.AGENT, "default", "a1")
    same = ids.ResourceKey.of(ids.Kind.AGENT, "a1")
    assert key == same
    assert key is not same
    assert hash(key) == hash(same) == hash((ids.Kind.AGENT, "default", "a1"))
    assert {key: 1}[same] == 1
    assert sorted([ids.ResourceKey.of(ids.Kind.BINDING, "b"), key]) == [
        key,
        ids.ResourceKey.of(ids.Kind.BINDING, "b"),
    ]
    assert repr(key) == "ResourceKey(kind=<Kind.AGENT: 'Agent'>, namespace='default', name='a1')"


def test_a_pickled_key_is_rehashed_in_a_process_with_another_hash_seed() -> None:
    key = ids.ResourceKey.of(ids.Kind.FLOW, "flow-1", "team-a")
    code = (
        "import pickle, sys; from aofd.resources import ids; "
        "k = pickle.loads(sys.stdin.buffer.read()); "
        "same = ids.ResourceKey.of(k.kind, k.name, k.namespace); "
        "print(hash(k) == hash((k.kind, k.namespace, k.name)), k in {same})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(key),
        capture_output=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert out.stdout.decode().split() == ["True", "True"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flow-1", "flow-1"),
        ("team-3", "team-3"),
        ("nan", "nan"),
        ("Null0", "Null0"),
        ("~x", "~x"),
        ("f1", "f1"),
        ("True1", "True1"),
        ("~", None),
        ("null", None),
        ("TRUE", True),
        ("false", False),
        ("0x1f", 31),
        ("-.inf", float("-inf")),
        ("1e3", 1000.0),
    ],
)
def test_plain_scalars_that_start_like_a_null_or_bool(text: str, expected: object) -> None:
    parsed = documents.parse("x.yaml", f"v: {text}\n".encode())
    assert parsed.ok
    data = parsed.documents[0].data
    assert isinstance(data, dict)
    assert data["v"] == expected
    assert type(data["v"]) is type(expected)


def test_a_left_out_sub_model_is_one_shared_default_and_stays_out_of_the_canonical_form() -> None:
    first = binding.FlowBindingSpec.model_validate({"flow": "f"})
    second = binding.FlowBindingSpec.model_validate({"flow": "g", "trigger": "t"})
    assert first.match is second.match
    assert second.trigger is not None
    assert second.trigger.config is binding.TriggerRef(name="x").config
    written = binding.FlowBindingSpec.model_validate({"flow": "f", "match": {}})
    assert written.match == first.match
    assert written.match is not first.match
    for spec in (first, written):
        assert "match" not in base.canonical(spec)
    with pytest.raises(pydantic.ValidationError):
        first.match.priority = 3  # frozen: one instance can be shared
