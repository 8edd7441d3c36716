"""One JSON Schema (draft 2020-12) for every resource kind, for editors (`aofctl schema`).

This module owns turning the pydantic models into a schema that means what the loader
(`validation.validate_document`) means, document for document:

- a `oneOf` over the kinds, each selected by its required `kind` constant; Agent and Workflow
  also take upstream's flat form (`name:` and the spec's keys at the top, no `metadata`/`spec`);
- every key the loader takes is a property: both spellings (snake_case and camelCase), the
  field's own name (`from_`), other aliases (`mcp-server`) and each synonym (`cluster_name`);
  a required field is satisfied by any of its keys;
- enums of `CIEnum` match case- and separator-insensitively (a pattern: `slack`, `in-memory`
  for `inmemory`) and list the usual casings for completion; `Literal` values stay exact;
- the shapes the models' `mode="before"` validators take: by-name references (`flow: my-flow`
  as well as `flow: {name: my-flow}`, `{agentRef: {...}}`), `next: step`, `memory: in_memory`,
  and numbers or booleans as map values (`PORT: 5432`);
- apiVersion (required: `aof.dev/v1` or a legacy version) and DNS-1123 names, as the loader
  checks them, and the "one of" requirements (fleet members, flow nodes or agents, binding target).

Unknown keys: with `strict=False` (the loader's default) they are allowed outside a Context,
where the loader drops them with a warning, and refused anywhere under a Context, where the
loader refuses them; with `strict=True` they are refused everywhere, as in
`validate_document(doc, strict=True)`. Where unknown keys are refused, so are two keys of one
field (`working_dir` and `workingDir`), which the loader also treats as an unknown key.

What the loader checks that this schema does not express (it needs Python, not JSON Schema):

- references and cross-field rules: connection ends and the workflow entrypoint name a node or
  step; node ids, fleet member names and step names are unique; `coordination.manager` is a
  member; a hierarchical fleet has a manager; each node type has its config (an Agent node an
  agent, a Script node a command, ...); Slack, Telegram and Discord triggers have
  `config.bot_token` and Schedule triggers `config.cron`; a trigger's `config.path` is a URL
  path and under `/hooks/` only its own; `approval.min_approvers` is at most the number of
  `allowed_users`; a synonym and its field, both written, have the same value;
- number kinds JSON does not have: an integer field refuses `3.0` (JSON has one number type);
- with `strict=False`, a key written in two spellings outside a Context: the loader reads the
  first and drops the second unchecked; the schema checks both values.

The YAML reader's refusals (duplicate keys, anchors, tags, size caps) happen before either.
"""

from __future__ import annotations

import copy
import itertools
import re
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pydantic
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from aofd.resources import ids, kinds, validation
from aofd.resources.kinds import agent, base, binding, daemonconfig, fleet, flow, workflow

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://aof.dev/schemas/aofd-resources.json"

_REF = "#/$defs/"

# Models that also accept a bare string (their `mode="before"` model validators).
_STRING_FORMS: Mapping[str, str] = {
    "Ref": "the name of the resource",
    "TriggerRef": "the name of the Trigger",
    "AgentRef": "the name of the Agent",
    "FlowContext": "the name of the Context",
    "MemorySpec": "in_memory, or file:PATH",
}

# Fields whose `mode="before"` field validator also accepts a bare string, by validator.
_FIELD_STRING_FORMS: Mapping[str, str] = {
    "WorkflowStep._next_list": "the name of the next step",
    "WorkflowStep._on_error_list": "one step to run on error",
}

# `mode="before"` validators that rename or fill keys but accept no other shape.
_SHAPE_KEEPING_VALIDATORS = frozenset({"WithSynonyms._rename_synonyms", "ContextSpec._connection_fallbacks"})

_SCALAR_TO_STR = tuple(
    m.func for m in typing.get_args(base.ScalarStr) if isinstance(m, pydantic.BeforeValidator)
)
_TOOL_FORM = next(
    m.discriminator for m in typing.get_args(agent.ToolSpec) if isinstance(m, pydantic.Discriminator)
)

# How `agent._tool_form` picks a tool form: `type` without `name` is a type-based tool.
_TOOL_FORM_CONDITIONS: Mapping[str, dict[str, Any]] = {
    "typed": {"required": ["type"], "not": {"required": ["name"]}},
    "qualified": {"not": {"required": ["type"], "not": {"required": ["name"]}}},
}

# The keys `base.AgentRef` unwraps when they are the only key (`{agentRef: {name, kind}}`).
_AGENT_REF_WRAPPERS = ("agentRef", "agent_ref")

_DNS1123_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""`ids.name_problem`'s rule for names and namespaces."""

_FLAT_FORM_MODELS: tuple[type[base.ResourceModel], ...] = (agent.Agent, workflow.Workflow)

_SEPARATORS = "[-_ ]*"
"""What `CIEnum` ignores between characters."""


def json_schema(*, strict: bool = False) -> dict[str, Any]:
    """The schema of the documents `validate_document(doc, strict=strict)` accepts (a new dict each call).

    Args:
        strict: refuse unknown keys in every kind (without it, only anywhere under a Context).
    """
    models: list[type[pydantic.BaseModel]] = [*kinds.MODELS.values(), daemonconfig.DaemonConfig]
    refs, generated = models_json_schema(
        [(m, "validation") for m in models], ref_template=_REF + "{model}", schema_generator=_Generator
    )
    defs: dict[str, Any] = copy.deepcopy(generated.get("$defs", {}))
    classes = {cls.__name__: cls for cls in _all_models(models)}
    roots = [refs[(m, "validation")]["$ref"].removeprefix(_REF) for m in models]
    exclusive = {name: _add_keys(defs[name], cls) for name, cls in classes.items()}
    _add_envelope(defs, roots)
    _add_rules(defs)
    closed = _closed_definitions(defs, roots, exclusive, strict=strict)
    for name, definition in defs.items():
        if definition.get("additionalProperties") is not False:
            continue
        if name in closed:
            _forbid_two_keys(definition, exclusive.get(name, ()))
        else:
            del definition["additionalProperties"]
    _add_flat_forms(defs)
    _add_string_forms(defs)
    for root in roots:
        defs[root]["required"] = sorted({*defs[root].get("required", []), "kind"})
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "aofd resources (apiVersion aof.dev/v1)" + (", strict" if strict else ""),
        "oneOf": [{"$ref": _REF + root} for root in roots],
        "$defs": defs,
    }


class _Generator(GenerateJsonSchema):
    """pydantic's schema generator, taught the inputs aofd's types take beyond their JSON Schema."""

    def enum_schema(self, schema: core_schema.EnumSchema) -> JsonSchemaValue:
        result = super().enum_schema(schema)
        if issubclass(schema["cls"], base.CIEnum):
            values = [str(member.value) for member in schema["members"]]
            del result["enum"]
            result["type"] = "string"
            result["anyOf"] = [{"enum": _casings(values)}, {"pattern": _folding_pattern(values)}]
        return result

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        inner = super().function_before_schema(schema)
        function = schema["function"]["function"]
        if any(function is f for f in _SCALAR_TO_STR):
            return {**inner, "type": ["string", "number", "boolean"]}
        description = _FIELD_STRING_FORMS.get(getattr(function, "__qualname__", ""))
        if description is not None:
            return {"anyOf": [{"type": "string", "description": description}, inner]}
        return inner

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        if schema["discriminator"] is not _TOOL_FORM:
            return super().tagged_union_schema(schema)
        branches: list[JsonSchemaValue] = []
        for tag, choice in schema["choices"].items():
            generated = self.generate_inner(choice)
            condition = _TOOL_FORM_CONDITIONS.get(str(tag))
            branches.append({"allOf": [condition, generated]} if condition else generated)
        return {"anyOf": branches}


def _casings(values: Iterable[str]) -> list[str]:
    """Each value, lowercase, uppercase, and with `-` and `_` swapped: what editors offer."""
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
    return widened


def _folding_pattern(values: Iterable[str]) -> str:
    """A pattern for every string that `CIEnum` folds to one of `values` (case, `-`, `_`, spaces)."""
    alternatives = []
    for value in values:
        folded = value.replace("-", "").replace("_", "").replace(" ", "").lower()
        chars = (f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in folded)
        alternatives.append(_SEPARATORS.join(chars))
    return f"^{_SEPARATORS}(?:{'|'.join(alternatives)}){_SEPARATORS}$"


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


# --- keys: spellings, aliases, synonyms ---------------------------------------------------------


def _field_keys(cls: type[pydantic.BaseModel], name: str, field: FieldInfo) -> list[str]:
    """Every key pydantic takes for a field, the one its JSON Schema names first."""
    alias = field.validation_alias
    if isinstance(alias, pydantic.AliasChoices):
        keys = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        keys = [alias]
    else:
        keys = [field.alias or name]
    if cls.model_config.get("populate_by_name") or cls.model_config.get("validate_by_name"):
        keys.append(name)
    return list(dict.fromkeys(keys))


def _add_keys(definition: dict[str, Any], cls: type[pydantic.BaseModel]) -> list[tuple[str, ...]]:
    """List every key of every field (and synonym) as a property; return the keys of each field.

    A required field is satisfied by any of its keys.
    """
    properties: dict[str, Any] | None = definition.get("properties")
    if not properties:
        return []
    synonyms: Mapping[str, str] = getattr(cls, "SYNONYMS", {}) or {}
    required: list[str] = list(definition.get("required", []))
    alternatives: list[dict[str, Any]] = []
    groups: list[tuple[str, ...]] = []
    listed: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        keys = _field_keys(cls, name, field)
        primary = properties.get(keys[0])
        if primary is None:
            continue
        extra = [
            s for synonym, target in synonyms.items() if target == name for s in (synonym, to_camel(synonym))
        ]
        for key in dict.fromkeys([*keys, *extra]):
            listed[key] = primary if key == keys[0] else copy.deepcopy(primary)
        if len(keys) > 1:
            groups.append(tuple(keys))
            if keys[0] in required:
                required.remove(keys[0])
                alternatives.append({"anyOf": [{"required": [key]} for key in keys]})
    definition["properties"] = {**listed, **{k: v for k, v in properties.items() if k not in listed}}
    if "required" in definition:
        definition["required"] = required
    if alternatives:
        definition.setdefault("allOf", []).extend(alternatives)
    return groups


def _forbid_two_keys(definition: dict[str, Any], groups: Iterable[tuple[str, ...]]) -> None:
    """Refuse two keys of one field: pydantic reads one and the other is an unknown key."""
    rules = [{"not": {"required": [a, b]}} for group in groups for a, b in itertools.combinations(group, 2)]
    if rules:
        definition.setdefault("allOf", []).extend(rules)


# --- the envelope and the rules the loader adds to the models -----------------------------------


def _add_envelope(defs: dict[str, Any], roots: list[str]) -> None:
    """apiVersion as `validation` checks it, and DNS-1123 names."""
    defs["ApiVersion"] = {
        "title": "ApiVersion",
        "description": f"write {validation.PREFERRED_API_VERSION}; legacy versions load with a warning",
        "anyOf": [
            {"enum": [validation.PREFERRED_API_VERSION, *validation.LEGACY_API_VERSIONS]},
            {
                "type": "string",
                "pattern": "^(?:" + "|".join(map(re.escape, validation.LEGACY_API_GROUPS)) + ")",
            },
        ],
    }
    version = _REF + "ApiVersion"
    for root in roots:
        definition = defs[root]
        definition["properties"]["apiVersion"] = {"$ref": version}
        definition.setdefault("allOf", []).append(
            {
                "anyOf": [
                    {"required": ["apiVersion"]},
                    {"required": ["api_version"], "properties": {"api_version": {"$ref": version}}},
                ]
            }
        )
    label = {"pattern": _DNS1123_LABEL, "maxLength": ids.MAX_NAME_LENGTH}
    metadata = defs[base.Metadata.__name__]["properties"]
    metadata["name"].update(label)
    metadata["namespace"].update(label)


def _add_rules(defs: dict[str, Any]) -> None:
    """The loader's rules that are about one mapping: a fleet has members, a flow nodes or agents, ..."""
    defs[fleet.FleetSpec.__name__]["properties"]["agents"]["minItems"] = 1
    defs[flow.FlowSpec.__name__].setdefault("allOf", []).append(
        {"anyOf": [{"required": [key], "properties": {key: {"minItems": 1}}} for key in ("nodes", "agents")]}
    )
    defs[binding.FlowBindingSpec.__name__].setdefault("allOf", []).append(
        {
            "anyOf": [
                {"required": [key], "properties": {key: {"not": {"type": "null"}}}}
                for key in ("flow", "agent", "fleet")
            ]
        }
    )


def _closed_definitions(
    defs: dict[str, Any], roots: list[str], exclusive: dict[str, list[tuple[str, ...]]], *, strict: bool
) -> set[str]:
    """The definitions that refuse unknown keys: all of them, or (not strict) those under a Context.

    A model used both under a Context and elsewhere (`Metadata`) gets a closed copy for the Context.
    """
    models = set(exclusive)
    if strict:
        return models
    context = ids.Kind.CONTEXT.value
    inside = _reachable(defs, [context]) & models
    shared = inside & _reachable(defs, [r for r in roots if r != context])
    renames = {name: f"{name}InContext" for name in sorted(shared)}
    for name, renamed in renames.items():
        defs[renamed] = copy.deepcopy(defs[name])
        exclusive[renamed] = exclusive[name]
    closed = (inside - shared) | set(renames.values())
    for name in closed:
        for node in _schemas(defs[name]):
            target = node.get("$ref")
            if isinstance(target, str) and target.removeprefix(_REF) in renames:
                node["$ref"] = _REF + renames[target.removeprefix(_REF)]
    return closed


def _add_flat_forms(defs: dict[str, Any]) -> None:
    """Agent and Workflow: the K8s form, or upstream's flat form (`validation.is_flat_form`)."""
    for model in _FLAT_FORM_MODELS:
        name = model.__name__
        definition = defs[name]
        spec = defs[definition["properties"]["spec"]["$ref"].removeprefix(_REF)]
        closed = definition.pop("additionalProperties", None) is False
        flat = copy.deepcopy(spec)
        flat["title"] = f"{name} (flat form)"
        flat["description"] = f"upstream's flat {name}: name and the spec's keys at the top"
        name_schema = copy.deepcopy(defs[base.Metadata.__name__]["properties"]["name"])
        flat["properties"] = {"name": name_schema, **flat.get("properties", {})}
        flat["required"] = ["name", *flat.get("required", [])]
        k8s: dict[str, Any] = {"required": [k for k in definition.get("required", []) if k != "kind"]}
        if closed:
            envelope = [k for k in definition["properties"] if k not in ("metadata", "spec")]
            flat["properties"].update(dict.fromkeys(envelope, True))
            k8s["properties"] = dict.fromkeys(definition["properties"], True)
            k8s["additionalProperties"] = False
        defs[f"{name}FlatForm"] = flat
        definition["required"] = ["kind"]
        definition["if"] = {
            "required": ["name"],
            "not": {"anyOf": [{"required": ["spec"]}, {"required": ["metadata"]}]},
        }
        definition["then"] = {"$ref": f"{_REF}{name}FlatForm"}
        definition["else"] = k8s


def _add_string_forms(defs: dict[str, Any]) -> None:
    """`flow: my-flow` as well as `flow: {name: my-flow}`, and `{agentRef: {name, kind}}`."""
    for name, description in _STRING_FORMS.items():
        mapping = defs[name]
        forms: list[dict[str, Any]] = [{"type": "string", "description": description}]
        if name == base.AgentRef.__name__:
            inner = {**copy.deepcopy(mapping), "additionalProperties": False}
            wrapped = {"anyOf": [{"type": "string"}, inner]}
            forms.append(
                {
                    "type": "object",
                    "description": "{agentRef: <name or {name, kind}>}",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "propertyNames": {"enum": list(_AGENT_REF_WRAPPERS)},
                    "properties": {key: copy.deepcopy(wrapped) for key in _AGENT_REF_WRAPPERS},
                }
            )
        defs[name] = {"anyOf": [*forms, mapping]}


# --- walking a schema -------------------------------------------------------------------------

_SUBSCHEMA = (
    "additionalProperties",
    "items",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def _schemas(schema: object) -> Iterator[dict[str, Any]]:
    """`schema` and each of its subschemas, depth first.

    Only keywords whose values are schemas are followed: never into `enum`, `const`, `default`
    or `examples`, and a property *named* `enum` is a property, not the keyword.
    """
    if not isinstance(schema, dict):
        return
    yield schema
    for keyword in _SUBSCHEMA:
        yield from _schemas(schema.get(keyword))
    for keyword in _SUBSCHEMA_MAPS:
        mapping = schema.get(keyword)
        if isinstance(mapping, dict):
            for sub in mapping.values():
                yield from _schemas(sub)
    for keyword in _SUBSCHEMA_LISTS:
        items = schema.get(keyword)
        if isinstance(items, list):
            for sub in items:
                yield from _schemas(sub)


def _reachable(defs: Mapping[str, Any], roots: Iterable[str]) -> set[str]:
    """The definitions reachable from `roots` through `$ref`, roots included."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        for node in _schemas(defs[name]):
            target = node.get("$ref")
            if isinstance(target, str) and target.startswith(_REF):
                stack.append(target.removeprefix(_REF))
    return seen
