"""Check audit records against ECS's own field reference (`tests/data/ecs/ecs_flat.yml`).

`problems(record)` lists, for one parsed record, every field whose name is not an ECS field (and
not under `aofd.*`), whose value does not have the type ECS gives the field, that ECS wants as an
array and is not one, or (for `event.kind`, `event.category`, `event.type`, `event.outcome`) whose
value is not one ECS allows, and `event.type` values that none of the record's categories expects.
`type_conflicts(records)` finds `aofd.*` fields that hold values of different JSON types in
different records (a SIEM's index mapping would reject one of them).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ECS_FLAT = Path(__file__).resolve().parent.parent / "data" / "ecs" / "ecs_flat.yml"
OWN = "aofd"
"""The one top-level object that is aofd's own (not ECS)."""

_TEXT = frozenset({"keyword", "constant_keyword", "wildcard", "match_only_text", "text"})
_INTEGER = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_NUMBER = frozenset({"float", "double", "scaled_float", "half_float"})
_OBJECT = frozenset({"object", "flattened", "nested"})


@functools.cache
def fields() -> Mapping[str, Mapping[str, Any]]:
    """ECS's flat field reference: `flat_name` -> its definition."""
    with ECS_FLAT.open(encoding="utf-8") as handle:
        loaded: Mapping[str, Mapping[str, Any]] = YAML(typ="safe", pure=False).load(handle)
    return loaded


@functools.cache
def allowed(field: str) -> frozenset[str]:
    """The allowed values of an `event.*` field."""
    return frozenset(str(a["name"]) for a in fields()[field]["allowed_values"])


@functools.cache
def expected_types(category: str) -> frozenset[str]:
    """The `event.type` values ECS expects with one `event.category`."""
    for entry in fields()["event.category"]["allowed_values"]:
        if entry["name"] == category:
            return frozenset(str(t) for t in entry.get("expected_event_types") or ())
    return frozenset()


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf; lists are leaves (ECS arrays), so are empty objects."""
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            yield from leaves(inner, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def _object_parent(name: str) -> str | None:
    """The nearest ECS field above `name` whose type is an object (free-form below it), if any."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:end])
        if fields().get(parent, {}).get("type") in _OBJECT:
            return parent
    return None


def _type_ok(ecs_type: str, value: Any) -> bool:
    if value is None:
        return True
    if ecs_type in _TEXT:
        return isinstance(value, str)
    if ecs_type in _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if ecs_type in _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if ecs_type == "boolean":
        return isinstance(value, bool)
    if ecs_type == "date":
        if not isinstance(value, str):
            return False
        try:
            datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    if ecs_type == "ip":
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            return False
        return True
    if ecs_type in _OBJECT:
        return isinstance(value, Mapping | list)
    return True  # geo_point and friends: aofd writes none


def problems(record: Mapping[str, Any]) -> list[str]:
    """What is not ECS in one parsed record (empty when it conforms)."""
    found: list[str] = []
    ecs = fields()
    for name, value in leaves(record):
        if name == OWN or name.startswith(OWN + "."):
            continue
        spec = ecs.get(name)
        if spec is None:
            if _object_parent(name) is not None:
                continue
            below = [f for f in ecs if f.startswith(name + ".")]
            what = f"an ECS object (ECS has {below[0]}, ...), not a value" if below else "not an ECS field"
            found.append(f"{name}: {what}; aofd's own fields belong under aofd.*")
            continue
        ecs_type = str(spec["type"])
        items = value if isinstance(value, list) and ecs_type not in _OBJECT else [value]
        if "array" in (spec.get("normalize") or ()) and not isinstance(value, list):
            found.append(f"{name}: ECS wants an array, got {value!r}")
        for item in items:
            if not _type_ok(ecs_type, item):
                found.append(f"{name}: {item!r} is not of ECS type {ecs_type}")
        if "allowed_values" in spec:
            bad = [item for item in items if str(item) not in allowed(name)]
            if bad:
                found.append(f"{name}: {bad} not among ECS's allowed values {sorted(allowed(name))}")
    event = record.get("event")
    if isinstance(event, Mapping):
        categories = event.get("category") or []
        types = event.get("type") or []
        expected = (
            frozenset().union(*(expected_types(str(c)) for c in categories)) if categories else frozenset()
        )
        unexpected = [t for t in types if t not in expected]
        if unexpected:
            found.append(f"event.type: {unexpected} not expected with event.category {categories} by ECS")
    return found


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        kinds = {_json_kind(v) for v in value}
        return (
            kinds.pop() if len(kinds) == 1 else "empty list" if not kinds else f"mixed list {sorted(kinds)}"
        )
    return "object"


def type_conflicts(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """`aofd.*` paths that are an object in one record and a value in another, or hold values of
    different JSON types (null and empty lists agree with anything)."""
    kinds: dict[str, set[str]] = {}
    for record in records:
        for name, value in leaves(record.get(OWN, {}), OWN):
            if value is None or value == []:
                continue
            kinds.setdefault(name, set()).add(_json_kind(value))
    conflicts = [f"{name}: {sorted(seen)}" for name, seen in kinds.items() if len(seen) > 1]
    parents = {name.rsplit(".", 1)[0] for name in kinds if "." in name}
    conflicts += [f"{name}: both a value and an object" for name in kinds if name in parents]
    return sorted(conflicts)
