"""One JSON Schema (draft 2020-12) for every resource kind, for editors (`aofctl schema`).

This module owns turning the pydantic models into a schema a YAML language server can use:
a `oneOf` over the kinds, each selected by its required `kind` constant, with every
property under **both** spellings (snake_case and camelCase) and each synonym, every enum
with its other casings (`Slack`, `slack`, `SLACK`), and the by-name reference forms
(`flow: my-flow` as well as `flow: {name: my-flow}`). The models stay the authority: the
schema helps editors, validation decides.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator
from typing import Any

import pydantic
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema

from aofd.resources import kinds
from aofd.resources.kinds import base, daemonconfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://aof.dev/schemas/aofd-resources.json"

# Models that also accept a bare string (the name), see their `mode="before"` validators.
_STRING_FORMS: dict[str, str] = {
    "Ref": "the name of the resource",
    "TriggerRef": "the name of the Trigger",
    "AgentRef": "the name of the Agent",
    "FlowContext": "the name of the Context",
    "MemorySpec": "in_memory, or file:PATH",
}


def json_schema() -> dict[str, Any]:
    """The schema of every document `validate_document` accepts (a new dict on every call)."""
    models: list[type[pydantic.BaseModel]] = [*kinds.MODELS.values(), daemonconfig.DaemonConfig]
    refs, generated = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs: dict[str, Any] = copy.deepcopy(generated.get("$defs", {}))
    classes = {cls.__name__: cls for cls in _all_models(models)}
    for name, definition in defs.items():
        _add_spellings(definition, classes.get(name))
    for definition in _walk(defs):
        _widen_enum(definition)
    for name, description in _STRING_FORMS.items():
        if name in defs:
            defs[name] = {"anyOf": [{"type": "string", "description": description}, defs[name]]}
    one_of = []
    for model in models:
        ref = refs[(model, "validation")]["$ref"]
        name = ref.rsplit("/", 1)[-1]
        definition = defs[name]
        definition["required"] = sorted({*definition.get("required", []), "kind"})
        one_of.append({"$ref": ref})
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "aofd resources (apiVersion aof.dev/v1)",
        "oneOf": one_of,
        "$defs": defs,
    }


def _all_models(roots: list[type[pydantic.BaseModel]]) -> Iterator[type[pydantic.BaseModel]]:
    """Every model class reachable from `roots` through field annotations."""
    seen: set[type[pydantic.BaseModel]] = set()
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        for field in cls.model_fields.values():
            stack.extend(_models_in(field.annotation))


def _models_in(annotation: object) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    found: list[type[pydantic.BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _add_spellings(definition: dict[str, Any], cls: type[pydantic.BaseModel] | None) -> None:
    """Add the camelCase twin of every property, and every synonym, to an object schema."""
    properties: dict[str, Any] | None = definition.get("properties")
    if not properties:
        return
    for key in list(properties):
        camel = to_camel(key)
        if camel != key and camel not in properties:
            properties[camel] = properties[key]
    synonyms: dict[str, str] = dict(getattr(cls, "SYNONYMS", {}) or {}) if cls is not None else {}
    if cls is not None and issubclass(cls, base.Model):
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, pydantic.AliasChoices):
                for choice in alias.choices:
                    if (
                        isinstance(choice, str)
                        and choice not in properties
                        and name.rstrip("_") in properties
                    ):
                        properties[choice] = properties[name.rstrip("_")]
    for synonym, target in synonyms.items():
        if target in properties:
            properties.setdefault(synonym, properties[target])
            properties.setdefault(to_camel(synonym), properties[target])


def _widen_enum(schema: dict[str, Any]) -> None:
    """An enum also lists the other casings and separators validation accepts."""
    values = schema.get("enum")
    if not values or not all(isinstance(v, str) for v in values):
        return
    widened: list[str] = []
    for value in values:
        for variant in (
            value,
            value.lower(),
            value.upper(),
            value.replace("-", "_"),
            value.replace("_", "-"),
        ):
            if variant not in widened:
                widened.append(variant)
    schema["enum"] = widened


def _walk(node: object) -> Iterator[dict[str, Any]]:
    """Every dict in a JSON document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
