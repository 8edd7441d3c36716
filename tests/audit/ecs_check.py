"""Check audit records against ECS's own field reference (`tests/data/ecs/ecs_flat.yml`).

`problems(record)` lists, for one parsed record, every field whose name is not an ECS field (and
not under `aofd.*`), whose value does not have the type ECS gives the field, that ECS wants as an
array and is not one, or (for `event.kind`, `event.category`, `event.type`, `event.outcome`) whose
value is not one ECS allows, and `event.type` values that none of the record's categories expects.
Below an ECS field of type `object` or `nested`, the fields ECS defines there are checked like any
other (also in each object of a list of them), and a name ECS does not define there is a problem;
only objects ECS leaves free-form (`labels`, `*.labels`, ...) take anything.
`type_conflicts(records)` finds `aofd.*` fields that hold values of different JSON types in
different records, integers and floats apart (an index maps `1` as long, `1.5` as float), also
inside lists of objects (a SIEM's index mapping would reject one of them).
`BASE_FIELDS` are the fields every line carries. The reference is ECS's release `reference_version()`
(tests/data/ecs/PROVENANCE), the one the records declare in `ecs.version`.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ECS_FLAT = Path(__file__).resolve().parent.parent / "data" / "ecs" / "ecs_flat.yml"
PROVENANCE = ECS_FLAT.with_name("PROVENANCE")
OWN = "aofd"
"""The one top-level object that is aofd's own (not ECS)."""

_TEXT = frozenset({"keyword", "constant_keyword", "wildcard", "match_only_text", "text"})
_INTEGER = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_NUMBER = frozenset({"float", "double", "scaled_float", "half_float"})
_OBJECT = frozenset({"object", "flattened", "nested"})


BASE_FIELDS = (
    "@timestamp",
    "ecs.version",
    "event.kind",
    "event.category",
    "event.type",
    "event.action",
    "event.outcome",
    "event.id",
    "event.dataset",
    "event.provider",
    "event.created",
    "service.name",
    "service.version",
    "host.hostname",
    "log.level",
    "aofd.schema",
    "aofd.context",
    "aofd.status",
    "aofd.audit.seq",
    "aofd.audit.prev",
    "aofd.audit.file_id",
)
"""On every line the journal wrote (docs/siem.md)."""


def missing_base_fields(record: Mapping[str, Any]) -> list[str]:
    """The `BASE_FIELDS` a written line lacks."""
    present = {name for name, value in leaves(record) if value is not None}
    return [name for name in BASE_FIELDS if name not in present]


def reference_version() -> str:
    """The ECS release of the vendored reference, as PROVENANCE names it (`tag v8.11.0`)."""
    match = re.search(r"\btag v(\d+\.\d+\.\d+)\b", PROVENANCE.read_text(encoding="utf-8"))
    assert match is not None, f"{PROVENANCE} names no tag"
    return match.group(1)


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


@functools.cache
def _defines_children(name: str) -> bool:
    """Whether ECS defines fields below `name` (an object that is not free-form)."""
    prefix = name + "."
    return any(f.startswith(prefix) for f in fields())


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
    for name, value in leaves(record):
        if name == OWN or name.startswith(OWN + "."):
            continue
        _field_problems(name, value, found)
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


def _field_problems(name: str, value: Any, found: list[str]) -> None:
    ecs = fields()
    spec = ecs.get(name)
    if spec is None:
        parent = _object_parent(name)
        if parent is not None:
            if _defines_children(parent):
                found.append(f"{name}: not an ECS field (ECS defines the fields of {parent})")
            return
        below = [f for f in ecs if f.startswith(name + ".")]
        what = f"an ECS object (ECS has {below[0]}, ...), not a value" if below else "not an ECS field"
        found.append(f"{name}: {what}; aofd's own fields belong under aofd.*")
        return
    ecs_type = str(spec["type"])
    if ecs_type in _OBJECT and isinstance(value, list):
        for item in value:  # a list of objects: each object's fields are ECS fields below `name`
            if not isinstance(item, Mapping):
                found.append(f"{name}: {item!r} is not of ECS type {ecs_type}")
                continue
            for inner, inner_value in leaves(item, name):
                if inner != name:
                    _field_problems(inner, inner_value, found)
        return
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


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        kinds = {_json_kind(v) for v in value}
        return (
            kinds.pop() if len(kinds) == 1 else "empty list" if not kinds else f"mixed list {sorted(kinds)}"
        )
    return "object"


def _kinds(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(dotted path, JSON kind) of every value below `path`, looking inside lists of objects."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _kinds(inner, f"{path}.{key}")
    elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        for item in value:
            if isinstance(item, Mapping):
                yield from _kinds(item, path)
            elif item is not None:
                yield path, _json_kind(item)  # a value among objects: "both a value and an object"
    elif value is not None and value != []:
        yield path, _json_kind(value)


def type_conflicts(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """`aofd.*` paths that are an object in one record and a value in another, or hold values of
    different JSON types (integers and floats apart; null and empty lists agree with anything),
    looking inside lists of objects."""
    kinds: dict[str, set[str]] = {}
    for record in records:
        for name, kind in _kinds(record.get(OWN, {}), OWN):
            kinds.setdefault(name, set()).add(kind)
    conflicts = [f"{name}: {sorted(seen)}" for name, seen in kinds.items() if len(seen) > 1]
    parents = {name.rsplit(".", 1)[0] for name in kinds if "." in name}
    conflicts += [f"{name}: both a value and an object" for name in kinds if name in parents]
    return sorted(conflicts)
