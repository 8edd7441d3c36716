"""One parsed YAML document -> a validated resource, or issues at file:line:col.

This module owns the rules that turn a `documents.Document` into a `base.LoadedResource`:

- `kind` is required; unknown kinds are errors with a did-you-mean (`Fleet` -> `AgentFleet`).
- `apiVersion: aof.dev/v1` is preferred; `aof.dev/v1alpha1` and `aof.sh/*` load with a
  warning (upstream never checks the value); anything else is an error.
- `metadata.name` and `metadata.namespace` are DNS-1123 labels.
- Unknown keys: anywhere under a Context they are errors (a typo in a guardrail must not turn
  it off); in other kinds they are warnings and the key is dropped (errors with `strict=True`).
  Every unknown-key issue names the closest known key.
- Every pydantic error becomes an issue at the exact position of the offending value, with a
  message that says what was expected and what was found (`no` is a string in YAML 1.2 and is
  never taken as a boolean).
- Upstream's `validate()` rules (unique node ids, connection ends exist, per-node-type required
  config, fleet manager, unique fleet members, Trigger required fields) as errors, except
  where aofd does not need the field (WhatsApp `bot_token`, PagerDuty `api_key`: warnings).
- Upstream's flat Agent/Workflow form (`name:` and `model:` at the top) is accepted.
- `kind: DaemonConfig` (upstream `aofctl serve`'s config) is validated, then ignored with a warning.

Pure: no I/O, no logging, never raises for any input. Cross-resource references are checked
by the planner, not here.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pydantic
from pydantic_core import ErrorDetails

from aofd import errors
from aofd.resources import ids, kinds
from aofd.resources.kinds import base, binding, context, daemonconfig, fleet, flow, trigger, workflow

Loc = tuple[str | int, ...]

PREFERRED_API_VERSION = base.API_VERSION
LEGACY_API_VERSIONS = ("aof.dev/v1alpha1",)
LEGACY_API_GROUPS = ("aof.sh/",)

DAEMONCONFIG_KIND = "DaemonConfig"

# Kind names users write by mistake, and what they mean (upstream docs use Fleet and Flow).
KIND_ALIASES: Mapping[str, str] = types.MappingProxyType(
    {
        "Fleet": "AgentFleet",
        "Flow": "AgentFlow",
        "Binding": "FlowBinding",
        "AgentWorkflow": "Workflow",
        "ServeConfig": "DaemonConfig",
    }
)

# Where the flat form's top-level keys go (upstream `AgentConfigInput` / `WorkflowConfigInput`).
_FLAT_FORM_KINDS = frozenset({"Agent", "Workflow"})
_ENVELOPE_KEYS = frozenset({"apiVersion", "api_version", "kind"})


@dataclasses.dataclass(frozen=True, slots=True)
class ValidationResult:
    """The resource (None when anything is an error, or for an ignored kind) and every issue found."""

    resource: base.LoadedResource | None
    issues: tuple[errors.Issue, ...]

    @property
    def ok(self) -> bool:
        """True when no issue is an error (warnings allowed)."""
        return not any(issue.is_error for issue in self.issues)


def known_kinds() -> tuple[str, ...]:
    """Every kind name `validate_document` accepts, in layer order, then DaemonConfig."""
    return _KNOWN_KINDS


_KNOWN_KINDS: tuple[str, ...] = (*(kind.value for kind in kinds.MODELS), DAEMONCONFIG_KIND)
_KNOWN_KIND_SET = frozenset(_KNOWN_KINDS)
_KIND_OF: Mapping[str, ids.Kind] = types.MappingProxyType({kind.value: kind for kind in ids.Kind})


def validate_document(doc: base.DocumentLike, *, strict: bool = False) -> ValidationResult:
    """Validate one parsed YAML document into a resource.

    Args:
        doc: the parsed document (`aofd.resources.documents.Document`).
        strict: unknown keys are errors in every kind (they always are in a Context).

    Returns:
        The loaded resource when there is no error (warnings allowed), and all issues in
        document order. Never raises.
    """
    report = _Report(doc)
    data = doc.data
    if data is None:
        return ValidationResult(None, ())
    if not isinstance(data, dict):
        report.error(
            (),
            f"a resource must be a mapping with apiVersion, kind, metadata and spec; got {_describe(data)}",
            "invalid",
        )
        return report.result(None)

    kind_name = _check_kind(data, report)
    if kind_name is None:
        return report.result(None)
    if not _check_api_version(data, report):
        # Reported once here; the models only need a string.
        data = {k: v for k, v in data.items() if k not in ("apiVersion", "api_version")}

    remap: Callable[[Loc], Loc] = _identity
    if kind_name in _FLAT_FORM_KINDS and is_flat_form(data):
        data, remap = _from_flat_form(data)
        report.remap = remap

    if kind_name == DAEMONCONFIG_KIND:
        _validate_model(daemonconfig.DaemonConfig, data, kind_name, report, strict=strict)
        report.warning(("kind",), daemonconfig.IGNORED_MESSAGE, "ignored-kind")
        return report.result(None)

    kind = _KIND_OF[kind_name]
    model = _validate_model(kinds.MODELS[kind], data, kind_name, report, strict=strict)
    if model is None:
        return report.result(None)
    assert isinstance(model, base.ResourceModel)
    _check_names(model, report)
    _CHECKS[kind](model, report)
    if report.has_errors:
        return report.result(None)
    resource = base.LoadedResource(
        key=ids.ResourceKey(kind, model.metadata.namespace, model.metadata.name),
        model=model,
        doc=doc,
        path=doc.path,
        line=doc.line,
        col=doc.col,
    )
    return report.result(resource)


# --- the report: issues with positions ------------------------------------------------------


def _identity(loc: Loc) -> Loc:
    return loc


class _Report:
    """Collects issues for one document; turns locations into positions.

    `data` is what is validated (the flat form is rewritten into the K8s form first) and
    `remap` maps a location in it back to a location in the source document.
    """

    __slots__ = ("doc", "has_errors", "issues", "remap")

    def __init__(self, doc: base.DocumentLike) -> None:
        self.doc = doc
        self.issues: list[errors.Issue] = []
        self.has_errors = False
        self.remap: Callable[[Loc], Loc] = _identity

    def add(
        self, loc: Loc, severity: errors.Severity, message: str, code: str, *, at_key: bool = False
    ) -> None:
        source = self.remap(loc)
        line, col = self.doc.key_position(source) if at_key else self.doc.position(source)
        self.issues.append(errors.Issue(self.doc.path, line, col, severity, message, code))
        if severity == "error":
            self.has_errors = True

    def error(self, loc: Loc, message: str, code: str = "invalid", *, at_key: bool = False) -> None:
        self.add(loc, "error", message, code, at_key=at_key)

    def warning(self, loc: Loc, message: str, code: str = "invalid", *, at_key: bool = False) -> None:
        self.add(loc, "warning", message, code, at_key=at_key)

    def result(self, resource: base.LoadedResource | None) -> ValidationResult:
        if not self.issues:
            return ValidationResult(resource, ())
        return ValidationResult(resource, tuple(sorted(self.issues, key=lambda i: (i.line, i.col))))


# --- envelope: kind, apiVersion, flat form, names ---------------------------------------------


def _check_kind(data: dict[str, object], report: _Report) -> str | None:
    kind = data.get("kind")
    choices = _KNOWN_KINDS
    if kind is None:
        report.error((), f"missing 'kind'; expected one of {_one_of(choices)}", "unknown-kind")
        return None
    if not isinstance(kind, str):
        report.error(
            ("kind",), f"'kind' must be a string such as Agent, got {_describe(kind)}", "unknown-kind"
        )
        return None
    if kind in _KNOWN_KIND_SET:
        return kind
    suggestion = KIND_ALIASES.get(kind) or _closest(kind, choices, fold=True)
    hint = f"; did you mean {suggestion!r}?" if suggestion else f"; expected one of {_one_of(choices)}"
    report.error(("kind",), f"unknown kind {kind!r}{hint}", "unknown-kind")
    return None


def _check_api_version(data: dict[str, object], report: _Report) -> bool:
    """Report a missing, legacy or foreign apiVersion; False when the value is not a string."""
    version = data.get("apiVersion", data.get("api_version"))
    if version is None:
        report.error((), f"missing 'apiVersion'; write apiVersion: {PREFERRED_API_VERSION}", "api-version")
        return True
    if version == PREFERRED_API_VERSION:
        return True
    loc: Loc = ("apiVersion",) if "apiVersion" in data else ("api_version",)
    if isinstance(version, str) and (version in LEGACY_API_VERSIONS or version.startswith(LEGACY_API_GROUPS)):
        report.warning(
            loc,
            f"apiVersion {version!r} is accepted as {PREFERRED_API_VERSION}; write {PREFERRED_API_VERSION}",
            "api-version",
        )
        return True
    report.error(
        loc,
        f"unsupported apiVersion {_describe(version)}; expected {PREFERRED_API_VERSION}",
        "api-version",
    )
    return isinstance(version, str)


def is_flat_form(data: object) -> bool:
    """True for upstream's flat form: `name:` and the spec's keys at the top, no `metadata`/`spec`."""
    return isinstance(data, dict) and "spec" not in data and "metadata" not in data and "name" in data


def _from_flat_form(data: dict[str, object]) -> tuple[dict[str, object], Callable[[Loc], Loc]]:
    """Upstream's flat form (`name`, `model`, ... at the top) as the K8s form, and the location map back."""
    spec = {k: v for k, v in data.items() if k not in _ENVELOPE_KEYS and k != "name"}
    converted: dict[str, object] = {k: v for k, v in data.items() if k in _ENVELOPE_KEYS}
    converted["metadata"] = {"name": data["name"]}
    converted["spec"] = spec

    def remap(loc: Loc) -> Loc:
        if loc[:1] in (("metadata",), ("spec",)):
            return loc[1:]
        return loc

    return converted, remap


def _check_names(model: base.ResourceModel, report: _Report) -> None:
    problem = ids.name_problem(model.metadata.name)
    if problem:
        report.error(("metadata", "name"), f"invalid metadata.name: {problem}", "invalid-name")
    if model.metadata.namespace != ids.DEFAULT_NAMESPACE:
        problem = ids.name_problem(model.metadata.namespace)
        if problem:
            report.error(
                ("metadata", "namespace"),
                f"invalid metadata.namespace: {problem.replace('name', 'namespace', 1)}",
                "invalid-name",
            )


# --- pydantic validation and its errors -------------------------------------------------------

_MAX_PASSES = 3


def _validate_model(
    model_cls: type[pydantic.BaseModel],
    data: dict[str, object],
    kind_name: str,
    report: _Report,
    *,
    strict: bool,
) -> pydantic.BaseModel | None:
    """Validate `data`; unknown keys become warnings and are dropped unless they must be errors."""
    unknown_is_error = strict or kind_name == "Context"
    validate = model_cls.__pydantic_validator__.validate_python  # `model_validate` minus its wrapper
    for _ in range(_MAX_PASSES):
        try:
            return validate(data)  # type: ignore[no-any-return]
        except pydantic.ValidationError as exc:
            details = exc.errors(include_url=False)
        dropped: list[Loc] = []
        fatal = False
        for err in details:
            if err["type"] != "extra_forbidden":
                fatal = True
                continue
            path = _data_path(data, err["loc"])
            droppable = bool(path) and path[-1] == err["loc"][-1]
            message = _unknown_key_message(model_cls, kind_name, err["loc"], report.remap(path))
            if unknown_is_error or not droppable:
                report.error(path, message, "unknown-field", at_key=True)
                fatal = True
            else:
                report.warning(path, message + "; it is ignored", "unknown-field", at_key=True)
                dropped.append(path)
        _report_value_errors(data, kind_name, details, report)
        if fatal:
            return None
        data = _without(data, dropped)
    return None  # pragma: no cover - every pass drops at least one key or returns


def _report_value_errors(
    data: object, kind_name: str, details: Sequence[ErrorDetails], report: _Report
) -> None:
    """One issue per offending value (a union's alternatives are merged into one message)."""
    grouped: dict[Loc, list[ErrorDetails]] = {}
    for err in details:
        if err["type"] == "extra_forbidden":
            continue
        key = _data_path(data, err["loc"]) if err["type"] != "missing" else tuple(err["loc"])
        grouped.setdefault(key, []).append(err)
    for key, errs in grouped.items():
        if errs[0]["type"] == "missing":
            for err in errs:
                path = _data_path(data, err["loc"][:-1])
                field = str(err["loc"][-1])
                where = _display(report.remap(path))
                inside = f"{kind_name} {where}" if where else kind_name
                report.error(path, f"missing required field {field!r} in {inside}", "missing-field")
            continue
        report.error(key, _value_message(kind_name, report.remap(key), errs), "invalid")


def _value_message(kind_name: str, path: Loc, errs: Sequence[ErrorDetails]) -> str:
    where = _display(path) or kind_name
    value = errs[0].get("input")
    if len(errs) > 1:
        expected = sorted({_expected(err) for err in errs})
        return f"invalid value for '{where}': expected {_or(expected)}, got {_describe(value)}"
    err = errs[0]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in ("enum", "literal_error"):
        choices = [
            c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")
        ]
        choices = [c for c in choices if c]
        suggestion = _closest(str(value), choices, fold=True) if isinstance(value, str) else None
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        return f"invalid value {_short(value)} for '{where}'; expected one of {_one_of(choices)}{hint}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"'{where}' {err['msg'].replace('Input should be', 'must be')}, got {_short(value)}"
    if kind in ("value_error", "assertion_error"):
        reason = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"invalid '{where}': {reason}"
    message = f"expected {_expected(err)} for '{where}', got {_describe(value)}"
    if kind.startswith("bool") and isinstance(value, str) and value.lower() in _YAML11_BOOLS:
        message += f" (YAML 1.2: {value!r} is a string; write true or false)"
    elif kind.startswith(("int", "float")) and isinstance(value, str):
        message += " (quoted numbers are strings; remove the quotes)"
    return message


_YAML11_BOOLS = frozenset({"yes", "no", "on", "off", "y", "n", "true", "false"})

_EXPECTED: Mapping[str, str] = types.MappingProxyType(
    {
        "bool_type": "a boolean (true or false)",
        "bool_parsing": "a boolean (true or false)",
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "float_parsing": "a number",
        "string_type": "a string",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "dict_type": "a mapping",
        "list_type": "a list",
        "tuple_type": "a list",
        "enum": "one of the listed values",
        "literal_error": "one of the listed values",
        "none_required": "nothing (null)",
    }
)


def _expected(err: ErrorDetails) -> str:
    return _EXPECTED.get(err["type"], err["msg"].removeprefix("Input should be ").lower())


def _describe(value: object) -> str:
    """`the string 'no'`, `the integer 3`, `a list`: how a YAML value is named in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _or(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _one_of(items: Iterable[str]) -> str:
    return ", ".join(items)


def _display(path: Loc) -> str:
    """`spec.nodes[2].config` from `("spec", "nodes", 2, "config")`."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif not _PLAIN_KEY.fullmatch(seg):
            out += f"[{seg!r}]"
        else:
            out += f".{seg}" if out else seg
    return out


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


# --- locations: pydantic locs -> keys as written -----------------------------------------------


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


@functools.cache
def _synonyms_of() -> Mapping[str, tuple[str, ...]]:
    """Field -> its synonym keys, over every model with `SYNONYMS` (computed once)."""
    out: dict[str, list[str]] = {}
    stack: list[type[base.WithSynonyms]] = [base.WithSynonyms]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        for synonym, target in cls.SYNONYMS.items():
            out.setdefault(target, []).append(synonym)
    return {k: tuple(v) for k, v in out.items()}


def find_key(mapping: Mapping[str, object], seg: str) -> str | None:
    """The key of `mapping` that pydantic's `seg` came from: exact, other spelling, or a synonym."""
    if seg in mapping:
        return seg
    folded = _fold(seg)
    for key in mapping:
        if _fold(key) == folded:
            return key
    for synonym in _synonyms_of().get(seg, ()):
        for key in mapping:
            if _fold(key) == _fold(synonym):
                return key
    return None


def _data_path(data: object, loc: Sequence[str | int]) -> Loc:
    """The part of `loc` that exists in `data` (union tags and normalized shapes are skipped)."""
    path: list[str | int] = []
    current = data
    for seg in loc:
        if isinstance(current, dict):
            if isinstance(seg, str):
                key = find_key(current, seg)
                if key is not None:
                    path.append(key)
                    current = current[key]
            continue
        if isinstance(current, list):
            if isinstance(seg, int) and 0 <= seg < len(current):
                path.append(seg)
                current = current[seg]
            continue
        break
    return tuple(path)


_LEAF = object()


def _without(data: dict[str, object], paths: Sequence[Loc]) -> dict[str, object]:
    """A copy of `data` without the keys at `paths`; only the containers on those paths are copied."""
    if not paths:
        return data
    tree: dict[Any, Any] = {}
    for path in paths:
        node = tree
        for seg in path[:-1]:
            node = node.setdefault(seg, {})
        node[path[-1]] = _LEAF
    result = _prune(data, tree)
    assert isinstance(result, dict)
    return result


def _prune(value: object, tree: dict[Any, Any]) -> object:
    if isinstance(value, dict):
        copy = dict(value)
        for key, sub in tree.items():
            if sub is _LEAF:
                copy.pop(key, None)
            elif key in copy:
                copy[key] = _prune(copy[key], sub)
        return copy
    if isinstance(value, list):
        items = list(value)
        for index, sub in tree.items():
            if isinstance(index, int) and 0 <= index < len(items) and sub is not _LEAF:
                items[index] = _prune(items[index], sub)
        return items
    return value


# --- did-you-mean for unknown keys ------------------------------------------------------------


def _unknown_key_message(model_cls: type[pydantic.BaseModel], kind_name: str, loc: Loc, path: Loc) -> str:
    key = str(loc[-1])
    parent = _display(path[:-1])
    where = f"{kind_name} {parent}" if parent else kind_name
    hint = _UNKNOWN_KEY_HINTS.get(key)
    if hint:
        return f"unknown field {key!r} in {where}; {hint}"
    candidates = [c for c in _keys_at(model_cls, loc[:-1]) if c != key]
    suggestion = _closest(key, candidates, fold=False)
    if suggestion is None:
        return f"unknown field {key!r} in {where}"
    return f"unknown field {key!r} in {where}; did you mean {suggestion!r}?"


# Keys upstream's docs use that upstream's code ignores too; say what to write instead.
_UNKNOWN_KEY_HINTS: Mapping[str, str] = types.MappingProxyType(
    {
        "model_config": "upstream ignores it too; set spec.temperature and spec.max_tokens",
        "parameters": "upstream ignores it too; set spec.temperature and spec.max_tokens",
    }
)


def _keys_at(model_cls: type[pydantic.BaseModel], loc: Loc) -> tuple[str, ...]:
    """The keys the model at `loc` accepts (snake_case first)."""
    current: list[type[pydantic.BaseModel]] = [model_cls]
    for seg in loc:
        if not isinstance(seg, str):
            continue
        following: list[type[pydantic.BaseModel]] = []
        matched = False
        for cls in current:
            annotation = _field_annotations(cls).get(seg)
            if annotation is not None:
                matched = True
                following.extend(_models_in(annotation))
        if matched:
            current = following
    keys: list[str] = []
    for cls in current:
        keys.extend(_canonical_keys(cls))
    return tuple(dict.fromkeys(keys))


@functools.cache
def _canonical_keys(cls: type[pydantic.BaseModel]) -> tuple[str, ...]:
    return tuple(name.rstrip("_") for name in cls.model_fields)


@functools.cache
def _field_annotations(cls: type[pydantic.BaseModel]) -> Mapping[str, object]:
    """Every key the model accepts (names, both spellings, synonyms) -> the field's annotation."""
    out: dict[str, object] = {}
    synonyms = getattr(cls, "SYNONYMS", {})
    for name, field in cls.model_fields.items():
        keys = {name, name.rstrip("_")}
        alias = field.validation_alias
        if isinstance(alias, str):
            keys.add(alias)
        elif isinstance(alias, pydantic.AliasChoices):
            keys.update(choice for choice in alias.choices if isinstance(choice, str))
        keys.update(s for s, target in synonyms.items() if target == name)
        for key in keys:
            out[key] = field.annotation
    return out


def _models_in(annotation: object) -> list[type[pydantic.BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    found: list[type[pydantic.BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _closest(word: str, choices: Iterable[str], *, fold: bool) -> str | None:
    choices = list(choices)
    if fold:
        folded = {_fold(c): c for c in choices}
        if _fold(word) in folded:
            return folded[_fold(word)]
        match = difflib.get_close_matches(_fold(word), list(folded), n=1, cutoff=_KEY_CUTOFF)
        return folded[match[0]] if match else None
    by_fold = {_fold(c): c for c in choices}
    if _fold(word) in by_fold:  # the other spelling of a known key (`maxVotes` for `max_votes`)
        return by_fold[_fold(word)]
    match = difflib.get_close_matches(word, choices, n=1, cutoff=_KEY_CUTOFF)
    return match[0] if match else None


_KEY_CUTOFF = 0.75
"""How close an unknown key must be to a known one to be suggested (difflib ratio)."""


# --- per-kind rules (upstream validate() and aofd's own) -----------------------------------------


def _check_context(model: base.ResourceModel, report: _Report) -> None:
    assert isinstance(model, context.Context)
    approval = model.spec.approval
    if approval and approval.allowed_users and approval.min_approvers > len(approval.allowed_users):
        report.error(
            ("spec", "approval", "min_approvers"),
            f"approval.min_approvers is {approval.min_approvers} but only "
            f"{len(approval.allowed_users)} allowed_users can approve",
        )


def _check_agent(model: base.ResourceModel, report: _Report) -> None:
    del model, report  # the types say everything upstream's validate() does


def _check_fleet(model: base.ResourceModel, report: _Report) -> None:
    assert isinstance(model, fleet.AgentFleet)
    spec = model.spec
    if not spec.agents:
        report.error(("spec", "agents"), "an AgentFleet needs at least one agent in spec.agents")
    seen: dict[str, int] = {}
    for index, member in enumerate(spec.agents):
        if member.name in seen:
            report.error(
                ("spec", "agents", index, "name"),
                f"duplicate fleet agent name {member.name!r} (also spec.agents[{seen[member.name]}])",
            )
        seen.setdefault(member.name, index)
    coordination = spec.coordination
    if coordination.manager is not None and coordination.manager not in seen:
        suggestion = _closest(coordination.manager, seen, fold=True)
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        report.error(
            ("spec", "coordination", "manager"),
            f"coordination.manager {coordination.manager!r} is not an agent of this fleet{hint}",
        )
    if coordination.mode is fleet.CoordinationMode.HIERARCHICAL and spec.manager_name() is None:
        report.error(
            ("spec", "coordination", "mode"),
            "hierarchical mode needs a manager: set coordination.manager or give one agent role: manager",
        )
    if coordination.mode is fleet.CoordinationMode.TIERED:
        tiers = {member.tier or 1 for member in spec.agents}
        if len(tiers) < 2:
            report.warning(
                ("spec", "coordination", "mode"), "tiered mode with a single tier behaves like peer"
            )


def _check_flow(model: base.ResourceModel, report: _Report) -> None:
    assert isinstance(model, flow.AgentFlow)
    spec = model.spec
    if not spec.nodes and not spec.agents:
        report.error(
            ("spec",),
            "an AgentFlow needs spec.nodes (a node graph) or spec.agents (the short form: agents in order)",
            "missing-field",
        )
        return
    ids_seen: dict[str, int] = {}
    for index, node in enumerate(spec.nodes):
        if node.id in ids_seen:
            report.error(
                ("spec", "nodes", index, "id"),
                f"duplicate node id {node.id!r} (also spec.nodes[{ids_seen[node.id]}])",
            )
        ids_seen.setdefault(node.id, index)
        _check_node(index, node, report)
    node_ids = list(ids_seen)
    for index, connection in enumerate(spec.connections):
        for end, name in (("from", connection.from_), ("to", connection.to)):
            if name in ids_seen or (end == "from" and name == flow.START_NODE):
                continue
            loc: Loc = ("spec", "connections", index, end)
            if end == "from" and name == flow.LEGACY_START_NODE:
                report.warning(loc, "'from: trigger' is the old name of 'from: start'; write start")
                continue
            candidates = [*node_ids, flow.START_NODE] if end == "from" else node_ids
            suggestion = _closest(name, candidates, fold=True)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            report.error(loc, f"connection {end} {name!r}: no node has this id{hint}", "reference")


def _check_node(index: int, node: flow.FlowNode, report: _Report) -> None:
    config = node.config
    loc: Loc = ("spec", "nodes", index, "config")
    kind = flow.NodeType
    if node.type is kind.AGENT and not (
        config.agent or config.agent_ref or config.inline or config.agent_config
    ):
        report.error(loc, f"Agent node {node.id!r} needs config.agent (an Agent name) or config.inline")
    elif node.type is kind.SCRIPT and not (
        config.script_config and (config.script_config.command or config.script_config.tool)
    ):
        report.error(loc, f"Script node {node.id!r} needs config.scriptConfig with command or tool")
    elif node.type is kind.FLEET and not (
        config.fleet or (config.agent_ref and config.agent_ref.kind is base.RefKind.FLEET)
    ):
        report.error(loc, f"Fleet node {node.id!r} needs config.fleet (an AgentFleet name)")
    elif node.type is kind.CONDITIONAL and not (config.condition or config.conditions):
        report.error(loc, f"Conditional node {node.id!r} needs config.condition")


_TOKEN_REQUIRED = frozenset(
    {trigger.TriggerType.SLACK, trigger.TriggerType.TELEGRAM, trigger.TriggerType.DISCORD}
)


def _check_trigger(model: base.ResourceModel, report: _Report) -> None:
    assert isinstance(model, trigger.Trigger)
    spec = model.spec
    config = spec.config
    loc: Loc = ("spec", "config")
    kind = trigger.TriggerType
    if spec.type in _TOKEN_REQUIRED and not config.bot_token:
        report.error(loc, f"a {spec.type.value} trigger needs config.bot_token", "missing-field")
    elif spec.type is kind.SCHEDULE and not config.cron:
        report.error(loc, "a Schedule trigger needs config.cron", "missing-field")
    elif spec.type is kind.WHATSAPP and not (config.access_token or config.bot_token):
        report.warning(loc, "a WhatsApp trigger without config.access_token cannot send replies")
    elif spec.type is kind.PAGERDUTY and not (config.api_key or config.routing_key):
        report.warning(
            loc, "a PagerDuty trigger without config.api_key or routing_key cannot update incidents"
        )
    elif spec.type is kind.GITHUB and not config.all_webhook_secrets:
        report.warning(loc, "a GitHub trigger without config.webhook_secret cannot verify deliveries")
    elif spec.type is kind.DISCORD and not (config.public_key and config.application_id):
        report.warning(
            loc,
            "a Discord trigger needs config.public_key and config.application_id: its listener cannot start",
        )
    elif spec.type is kind.TEAMS and not (config.app_id and config.app_password):
        report.warning(
            loc, "a Teams trigger needs config.app_id and config.app_password: its listener cannot start"
        )
    if config.path is not None:
        own = f"/hooks/{spec.type.value.lower()}/{model.metadata.name}"
        _check_trigger_path(config.path, own, spec.type is kind.SCHEDULE, report)
    for name, command in spec.commands.items():
        if not (command.agent or command.fleet or command.flow):
            report.warning(("spec", "commands", name), f"command {name!r} names no agent, fleet or flow")


_URL_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+")
"""Segments of unreserved and sub-delimiter characters; no `%` (requests are matched decoded)."""


def _check_trigger_path(path: str, own: str, schedule: bool, report: _Report) -> None:
    """`config.path`: an extra URL path the trigger server answers for this trigger (upstream's).

    Under `/hooks/` only the trigger's own hook path (`own`, served anyway) is accepted.
    """
    loc: Loc = ("spec", "config", "path")
    if schedule:
        report.warning(loc, "config.path is ignored: a Schedule trigger receives no requests")
        return
    segments = path.split("/")[1:]
    if len(path) > 256 or not _URL_PATH.fullmatch(path) or any(s in (".", "..") for s in segments):
        report.error(
            loc,
            f"config.path must be an absolute URL path such as /webhook/pagerduty, got {path!r}",
        )
    elif segments[0] == "hooks" and path != own:
        report.error(
            loc,
            f"config.path {path!r} is under /hooks/, which the trigger server reserves; "
            f"this trigger is served at {own} anyway",
        )


def _check_binding(model: base.ResourceModel, report: _Report) -> None:
    assert isinstance(model, binding.FlowBinding)
    spec = model.spec
    if spec.target is None:
        report.error(
            ("spec",), "a FlowBinding needs spec.flow (or spec.agent or spec.fleet)", "missing-field"
        )
    if spec.trigger is None:
        report.warning(("spec",), "a FlowBinding without spec.trigger is never started by an event")


def _check_workflow(model: base.ResourceModel, report: _Report) -> None:
    assert isinstance(model, workflow.Workflow)
    spec = model.spec
    names: dict[str, int] = {}
    for index, step in enumerate(spec.steps):
        if step.name in names:
            report.error(("spec", "steps", index, "name"), f"duplicate step name {step.name!r}")
        names.setdefault(step.name, index)
    if spec.entrypoint not in names:
        suggestion = _closest(spec.entrypoint, names, fold=True)
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        report.error(
            ("spec", "entrypoint"), f"entrypoint {spec.entrypoint!r} is not a step name{hint}", "reference"
        )
    for index, step in enumerate(spec.steps):
        for rule in step.next:
            if rule.target not in names:
                report.warning(
                    ("spec", "steps", index, "next"),
                    f"step {step.name!r}: next {rule.target!r} is not a step name",
                )


_CHECKS: Mapping[ids.Kind, Callable[[base.ResourceModel, _Report], None]] = types.MappingProxyType(
    {
        ids.Kind.CONTEXT: _check_context,
        ids.Kind.AGENT: _check_agent,
        ids.Kind.FLEET: _check_fleet,
        ids.Kind.FLOW: _check_flow,
        ids.Kind.TRIGGER: _check_trigger,
        ids.Kind.BINDING: _check_binding,
        ids.Kind.WORKFLOW: _check_workflow,
    }
)
