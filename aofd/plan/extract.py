"""What one resource says on its own: its references, its secret-bearing fields, its own checks; pure.

This module owns the per-resource half of building the desired state, which runs once per
file version (its results are cached with the parsed file by `aofd.plan.desired.ParseCache`):

- `references()`: every by-name reference (Fleet members, Flow agents/fleets/agentRef/context,
  Workflow steps, Trigger commands, Binding flow/context/trigger/agent/fleet), each with the
  position of the field that makes it, as written (snake_case or camelCase keys);
- `secrets()`: the secret-bearing strings where `${VAR}` substitution applies (Context
  kubeconfig and env values, Trigger tokens, secrets and `required_headers` values, and the
  Trigger identifiers of `trigger.SUBSTITUTED_FIELDS`) and nowhere else;
- `own_issues()`: checks of one resource alone (DNS-1123 name, bidi and zero-width characters
  in a Context's command patterns);
- `replace()`: a copy of a frozen model tree with one value replaced (substitution results);
- `secret_values()`, `public_model()`, `masked_spec()`: every secret-bearing value (literal or
  substituted) and the model or spec with each one shown as `***`, for digests without the
  install's key, the admin API and `aofctl describe`.

Pure: no I/O, no logging.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from aofd import errors
from aofd.plan import substitute
from aofd.resources import documents, ids, snapshot, validation
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import trigger as trigger_kind

LoadedResource = kinds_base.LoadedResource
Kind = ids.Kind
Loc = tuple[str | int, ...]

BUILTIN_AGENT = "builtin"
"""Upstream's special Trigger `commands.X.agent` value: the built-in command parser, not a resource."""

_FORMAT_CHARS = re.compile(r"[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
"""Bidi controls and zero-width characters (Trojan Source, CVE-2021-42574); category Cf is checked too."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """One by-name reference from a field of a resource to another resource.

    `kinds` are the kinds the field may name (the first is the one named in messages);
    `written` is where the field is in `doc`, as written. `field` (the field as a user reads
    it: `spec.nodes[2].config.agent`), `line` and `col` are derived from it when a message
    needs them: nearly every reference resolves, and a cold load makes hundreds of thousands.
    """

    name: str
    kinds: tuple[Kind, ...]
    written: Loc
    doc: kinds_base.DocumentLike = dataclasses.field(repr=False, compare=False)
    hint: str = ""

    @property
    def field(self) -> str:
        return _dotted(self.written)

    @property
    def line(self) -> int:
        return self.doc.position(self.written)[0]

    @property
    def col(self) -> int:
        return self.doc.position(self.written)[1]


@dataclasses.dataclass(frozen=True, slots=True)
class SecretField:
    """A secret-bearing string of a resource: where it is in the model and in the file."""

    attr: tuple[str | int, ...]
    field: str
    text: str
    line: int
    col: int


def spec_of(resource: LoadedResource) -> Any:
    return getattr(resource.model, "spec", None)


def _written(doc_data: object, loc: Sequence[str | int]) -> Loc:
    """`loc` (snake_case attribute names) as written in the document (snake_case or camelCase keys).

    In upstream's flat form (`name:`, `steps:` at the top) `spec.X` and `metadata.name` are
    written without their `spec`/`metadata` prefix.
    """
    return _walk(doc_data, loc)[0]


def _walk(doc_data: object, loc: Sequence[str | int]) -> tuple[Loc, object]:
    """`_written(doc_data, loc)` and the document's node there (None when there is none)."""
    if loc and loc[0] in ("spec", "metadata") and validation.is_flat_form(doc_data):
        loc = loc[1:]
    out: list[str | int] = []
    node = doc_data
    for part in loc:
        if type(node) is dict and type(part) is str:
            key = part if part in node else (validation.find_key(node, part) or part)
            out.append(key)
            node = node.get(key)
            continue
        if isinstance(part, int) or not isinstance(node, dict):
            out.append(part)
            node = (
                node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
            )
            continue
        key = validation.find_key(node, part) or part
        out.append(key)
        node = node.get(key)
    return tuple(out), node


def position(resource: LoadedResource, loc: Sequence[str | int]) -> tuple[int, int]:
    """1-based (line, col) where the value at model path `loc` is written (or its nearest ancestor).

    `loc` uses the models' attribute names; the document may spell a key in camelCase or with a
    synonym, and upstream's flat form leaves out `spec`/`metadata`.
    """
    return resource.position(_written(resource.doc.data, loc))


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _ref_at(
    resource: LoadedResource,
    loc: Sequence[str | int],
    name: str,
    kinds: tuple[Kind, ...],
    *,
    hint: str = "",
) -> Reference:
    doc = resource.doc
    return Reference(name, kinds, _written(doc.data, loc), doc, hint)


def _named_ref_at(
    resource: LoadedResource, loc: Sequence[str | int], name: str, kinds: tuple[Kind, ...]
) -> Reference:
    """The reference at `loc`, pointing at its `name:` when it is written as `{name: x}`, else at
    the bare string."""
    doc = resource.doc
    written, node = _walk(doc.data, loc)
    if type(node) is dict and "name" in node:
        written = (*written, "name")
    return Reference(name, kinds, written, doc)


def references(resource: LoadedResource) -> Iterator[Reference]:
    """Every by-name reference of a resource, pointing at the field that makes it."""
    spec = spec_of(resource)
    if spec is None:
        return
    kind = resource.kind
    if kind is Kind.FLEET:
        for i, member in enumerate(getattr(spec, "agents", ())):
            if getattr(member, "is_reference", False):
                yield _ref_at(resource, ("spec", "agents", i, "name"), member.name, (Kind.AGENT,))
    elif kind is Kind.FLOW:
        for i, ref in enumerate(getattr(spec, "agents", ())):
            yield _named_ref_at(resource, ("spec", "agents", i), ref.name, (Kind.AGENT,))
        context = getattr(spec, "context", None)
        if context is not None and getattr(context, "name", None):
            yield _named_ref_at(resource, ("spec", "context"), context.name, (Kind.CONTEXT,))
        for i, node in enumerate(getattr(spec, "nodes", ())):
            config = node.config
            base_loc: Loc = ("spec", "nodes", i, "config")
            if config.agent:
                yield _ref_at(resource, (*base_loc, "agent"), config.agent, (Kind.AGENT,))
            if config.agent_ref is not None:
                yield _agent_ref(resource, (*base_loc, "agent_ref"), config.agent_ref)
            if config.fleet:
                yield _ref_at(resource, (*base_loc, "fleet"), config.fleet, (Kind.FLEET,))
    elif kind is Kind.WORKFLOW:
        if getattr(spec, "fleet", None):
            yield _ref_at(resource, ("spec", "fleet"), spec.fleet, (Kind.FLEET,))
        for i, step in enumerate(getattr(spec, "steps", ())):
            if step.agent is not None:
                yield _agent_ref(resource, ("spec", "steps", i, "agent"), step.agent)
            for j, branch in enumerate(step.branches):
                for k, branch_step in enumerate(branch.steps):
                    if branch_step.agent is not None:
                        where: Loc = ("spec", "steps", i, "branches", j, "steps", k, "agent")
                        yield _agent_ref(resource, where, branch_step.agent)
    elif kind is Kind.TRIGGER:
        for command, target in getattr(spec, "commands", {}).items():
            loc: Loc = ("spec", "commands", command)
            if target.agent and target.agent != BUILTIN_AGENT:
                yield _ref_at(resource, (*loc, "agent"), target.agent, (Kind.AGENT,))
            if target.fleet:
                yield _ref_at(resource, (*loc, "fleet"), target.fleet, (Kind.FLEET,))
            if target.flow:
                yield _ref_at(resource, (*loc, "flow"), target.flow, (Kind.FLOW,))
    elif kind is Kind.BINDING:
        for attr, ref_kind in (
            ("flow", Kind.FLOW),
            ("context", Kind.CONTEXT),
            ("trigger", Kind.TRIGGER),
            ("agent", Kind.AGENT),
            ("fleet", Kind.FLEET),
        ):
            ref = getattr(spec, attr, None)
            if ref is not None:
                yield _named_ref_at(resource, ("spec", attr), ref.name, (ref_kind,))


def _agent_ref(resource: LoadedResource, loc: Loc, ref: Any) -> Reference:
    """An `AgentRef` written as `name`, `{name, kind}` or `{agentRef: {name, kind}}`."""
    written = _written(resource.doc.data, loc)
    node: object = resource.doc.data
    for part in written:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
    if isinstance(node, dict):
        inner = next((k for k in ("agentRef", "agent_ref") if k in node), None)
        written = (*written, inner, "name") if inner else (*written, "name")
    return _ref_at(resource, written, ref.name, (Kind(ref.kind.value),))


def wrong_kind_hint(ref: Reference, actual: Kind) -> str:
    if ref.field.endswith(".agent") and actual is Kind.FLEET:
        return f"; to run a fleet write `fleet: {ref.name}` (or agentRef with kind: AgentFleet)"
    if ref.field.endswith(".fleet") and actual is Kind.AGENT:
        return f"; to run an agent write `agent: {ref.name}`"
    return ""


def article(kind: Kind) -> str:
    return "an" if kind.value[0] in "AEIOU" else "a"


PRESENCE_ONLY = ("", "*")
"""`required_headers` values that only require the header to be present (aofd.runtime.verify)."""


def presence_only(field: SecretField, value: str) -> bool:
    """True when a `required_headers` value written with `${VAR}` expanded to `""` or `*`.

    Written literally, those mean "the header need only be present"; reached through a
    variable set to nothing, they would silently turn a key check into a presence check.
    """
    attr = field.attr
    return (
        len(attr) == 4
        and attr[:3] == ("spec", "config", "required_headers")
        and value != field.text
        and value in PRESENCE_ONLY
    )


def secrets(resource: LoadedResource) -> Iterator[SecretField]:
    """The secret-bearing strings of a Context or Trigger: the only places `${VAR}` is substituted."""
    for attr, at, value in _candidates(resource):
        if not isinstance(value, str):
            continue
        if "$" not in value:
            continue
        written = _written(resource.doc.data, at)
        line, col = resource.position(written)
        yield SecretField(attr, _dotted(written), value, line, col)


def secret_values(resource: LoadedResource) -> tuple[tuple[Loc, str], ...]:
    """Every secret-bearing value a resource holds, substituted or literal, by model path.

    Trigger tokens, secrets and `required_headers` values and Context env values always; a
    Context kubeconfig and a Trigger identifier (`trigger.SUBSTITUTED_FIELDS`: a guild, a tenant,
    an app id) only when written with a `${VAR}` (a literal path or identifier is no secret, and
    `aofctl diff` must see it change).
    Empty values count too: whether a secret is set is itself not shown, and a dry run must
    mask the same fields on both sides whatever the variables hold.
    """
    out: list[tuple[Loc, str]] = []
    for attr, at, value in _candidates(resource):
        if not isinstance(value, str):
            continue
        if attr[-1] == "kubeconfig":
            raw = _raw_text(resource, at)
            if isinstance(raw, str) and "$" not in raw:
                continue
        elif _identifier(resource, attr):
            raw = _raw_text(resource, at)
            if not (isinstance(raw, str) and "$" in raw):  # literal (a string or a YAML number)
                continue
        if all(attr != seen for seen, _ in out):
            out.append((attr, value))
    return tuple(out)


MASK = "***"
"""What a secret-bearing value is shown as (and digested as, without the install's key)."""


def public_model(resource: LoadedResource) -> Any:
    """The resource's model with every secret-bearing value replaced by `MASK`."""
    model: Any = resource.model
    for attr, _ in secret_values(resource):
        model = replace(model, attr, MASK)
    return model


def masked_spec(resource: LoadedResource) -> dict[str, Any]:
    """The canonical `spec` of a resource as the admin API and `aofctl describe` show it."""
    spec = kinds_base.canonical(public_model(resource)).get("spec", {})
    return dict(spec) if isinstance(spec, Mapping) else {}


def secret_origin(resource: LoadedResource, attr: Loc) -> tuple[str, ...] | None:
    """The variables the value at `attr` was written with; None when it was written literally
    (or cannot be told: then treat it as secret)."""
    for cand_attr, at, _ in _candidates(resource):
        if cand_attr == attr:
            raw = _raw_text(resource, at)
            if isinstance(raw, str):
                return substitute.references(raw) if "$" in raw else None
    return ()


def _raw_text(resource: LoadedResource, at: Loc) -> object:
    """The value as written in the document at model path `at` (None when not found)."""
    node: object = resource.doc.data
    for part in _written(node, at):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
    return node


def _candidates(resource: LoadedResource) -> list[tuple[Loc, Loc, object]]:
    """(model attribute path, where the text is written, the value) of each secret-bearing field."""
    spec = spec_of(resource)
    if spec is None:
        return []
    candidates: list[tuple[Loc, Loc, object]] = []
    if resource.kind is Kind.CONTEXT:
        kubeconfig: Loc = ("spec", "kubeconfig")
        connection = getattr(spec, "connection", None)
        if connection is not None:
            at: Loc = ("spec", "connection", "kubeconfig")
            candidates.append((at, at, connection.kubeconfig))
            if not _is_written(resource, kubeconfig):
                # Filled from `connection.kubeconfig` (the fallback): one text, reported once, there.
                kubeconfig = at
        candidates.append((("spec", "kubeconfig"), kubeconfig, spec.kubeconfig))
        candidates.extend((("spec", "env", k), ("spec", "env", k), v) for k, v in spec.env.items())
    elif resource.kind is Kind.TRIGGER:
        config = spec.config
        for name in (*trigger_kind.SECRET_FIELDS, *trigger_kind.SUBSTITUTED_FIELDS):
            value = getattr(config, name, None)
            if isinstance(value, tuple):
                candidates.extend(
                    (("spec", "config", name, i), ("spec", "config", name, i), v) for i, v in enumerate(value)
                )
            elif isinstance(value, Mapping):  # `required_headers`: the values, never the names
                candidates.extend(
                    (("spec", "config", name, k), ("spec", "config", name, k), v) for k, v in value.items()
                )
            else:
                candidates.append((("spec", "config", name), ("spec", "config", name), value))
    return candidates


def _identifier(resource: LoadedResource, attr: Loc) -> bool:
    """True for a Trigger identifier field (`trigger.SUBSTITUTED_FIELDS`), or an item of one."""
    return (
        resource.kind is Kind.TRIGGER
        and len(attr) >= 3
        and attr[:2] == ("spec", "config")
        and attr[2] in trigger_kind.SUBSTITUTED_FIELDS
    )


def _is_written(resource: LoadedResource, loc: Sequence[str | int]) -> bool:
    """True when the document itself has a value at `loc` (not filled in by a model default)."""
    return _written(resource.doc.data, loc) in resource.doc.positions


def replace(obj: Any, attr: Sequence[str | int], value: str) -> Any:
    """A copy of a frozen model tree with the value at `attr` replaced."""
    if not attr:
        return value
    head, rest = attr[0], attr[1:]
    if isinstance(obj, BaseModel):
        assert isinstance(head, str)
        return obj.model_copy(update={head: replace(getattr(obj, head), rest, value)})
    if isinstance(obj, tuple):
        assert isinstance(head, int)
        items = list(obj)
        items[head] = replace(items[head], rest, value)
        return tuple(items)
    if isinstance(obj, Mapping):
        copy = dict(obj)
        copy[head] = replace(copy[head], rest, value)
        return copy
    raise TypeError(f"cannot replace {head!r} in {type(obj).__name__}")


def own_issues(resource: LoadedResource) -> list[errors.Issue]:
    """Checks of one resource alone that validation leaves to the planner: name, Context security."""
    issues = []
    problem = ids.name_problem(resource.key.name)
    if problem is not None:
        written = _written(resource.doc.data, ("metadata", "name"))
        line, col = resource.position(written)
        issues.append(
            errors.Issue(resource.path, line, col, "error", f"{resource.kind.value}: {problem}", "name")
        )
    if resource.kind is Kind.CONTEXT:
        issues.extend(_hidden_characters(resource))
    return issues


def _hidden_characters(resource: LoadedResource) -> Iterator[errors.Issue]:
    """Bidi controls and zero-width characters in a Context's command patterns are errors."""
    spec = spec_of(resource)
    groups: list[tuple[tuple[str, ...], Sequence[str]]] = []
    approval = getattr(spec, "approval", None)
    if approval is not None:
        groups.append((("spec", "approval", "require_for"), approval.require_for))
        groups.append((("spec", "approval", "allowed_users"), approval.allowed_users))
    security = getattr(spec, "security", None)
    if security is not None:
        groups.extend(
            (("spec", "security", attr), getattr(security, attr))
            for attr in (
                "allowed_commands",
                "blocked_commands",
                "allowed_namespaces",
                "allowed_tools",
                "blocked_tools",
            )
        )
    for loc, patterns in groups:
        for i, pattern in enumerate(patterns):
            bad = _first_hidden(pattern)
            if bad is None:
                continue
            written = _written(resource.doc.data, (*loc, i))
            line, col = resource.position(written)
            name = unicodedata.name(bad, "unnamed")
            yield errors.Issue(
                resource.path,
                line,
                col,
                "error",
                f"{resource.key}: {_dotted(written)} contains U+{ord(bad):04X} ({name}), a bidi or "
                "zero-width character that can make a pattern read differently from what it matches",
                "hidden-character",
            )


def _first_hidden(text: str) -> str | None:
    match = _FORMAT_CHARS.search(text)
    if match:
        return match.group()
    for ch in text:
        if ord(ch) > 0x7F and unicodedata.category(ch) in ("Cf", "Cc", "Zl", "Zp"):
            return ch
    return None


# --- one file ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A validated resource of a file with everything build() derives from it alone."""

    resource: LoadedResource
    digest: ids.Digest
    references: tuple[Reference, ...]
    secrets: tuple[SecretField, ...]
    has_secrets: bool = False
    """The resource holds a secret-bearing value: `digest` masks it, the daemon keys it."""


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedFile:
    """The resources of one file, and the issues parsing and validating it found."""

    entries: tuple[Entry, ...]
    issues: tuple[errors.Issue, ...]


def parse_file(
    path: str, content: bytes, *, strict: bool = False, limits: snapshot.Limits = snapshot.DEFAULT_LIMITS
) -> ParsedFile:
    """Parse and validate one file, and derive what build() needs from each resource alone."""
    result = documents.parse(path, content, limits=limits)
    issues: list[errors.Issue] = list(result.issues)
    entries: list[Entry] = []
    for doc in result.documents:
        validated = validation.validate_document(doc, strict=strict)
        issues.extend(validated.issues)
        resource = validated.resource
        if resource is None:
            continue
        own = own_issues(resource)
        issues.extend(own)
        if any(i.is_error for i in own):
            continue
        # Only Contexts and Triggers have secret-bearing fields: the others skip those scans.
        may_hold_secrets = resource.kind is Kind.CONTEXT or resource.kind is Kind.TRIGGER
        has_secrets = may_hold_secrets and bool(secret_values(resource))
        entries.append(
            Entry(
                resource=resource,
                digest=kinds_base.digest(public_model(resource) if has_secrets else resource.model),
                references=tuple(references(resource)),
                secrets=tuple(secrets(resource)) if may_hold_secrets else (),
                has_secrets=has_secrets,
            )
        )
    return ParsedFile(tuple(entries), tuple(issues))
