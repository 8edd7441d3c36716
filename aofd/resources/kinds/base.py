"""Shared machinery of the resource models: config, field types, metadata, canonical form.

This module owns:

- `Model`, the base of every resource model and sub-model: frozen, unknown keys forbidden
  (validation decides whether an unknown key is an error or a dropped-with-warning key),
  and **both spellings for every field**: the Python name is snake_case and the YAML key
  may be snake_case or camelCase (`working_dir`/`workingDir`), whatever casing upstream's
  struct happens to use (AOF-UPSTREAM.md section 1.1).
- strict scalar types (`Bool`, `Int`, `Float`, `PositiveInt`, ...): YAML 1.2 is parsed, so
  `no` is a string and must be rejected for a boolean; no string->bool, string->int or
  float->int coercion, but a YAML int is fine for a float field.
- `CIEnum`, the case- and separator-insensitive enum base (`slack` -> `Slack`,
  `round_robin` -> `round-robin`).
- `Ref`, the by-name reference used across kinds (a string or `{name: ...}`).
- `Metadata`, `ResourceModel`, `LoadedResource`, `canonical()` and `digest()`.

It must not do I/O, look at positions, or know about specific kinds.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, ClassVar, Protocol, Self, TypeVar

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    StrictBool,
    StrictInt,
    model_validator,
)
from pydantic.alias_generators import to_camel

from aofd.resources import ids

API_VERSION = "aof.dev/v1"
"""The apiVersion aofd writes and prefers."""


def _aliases(name: str) -> AliasChoices:
    """Both YAML spellings of a snake_case field name: itself and its camelCase form."""
    camel = to_camel(name.rstrip("_"))
    snake = name.rstrip("_")
    if camel == snake:
        return AliasChoices(snake)
    return AliasChoices(snake, camel)


def _serialization_alias(name: str) -> str:
    """The canonical (snake_case) key: the field name without a keyword-avoiding `_` suffix."""
    return name.rstrip("_")


MODEL_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    populate_by_name=True,
    alias_generator=AliasGenerator(
        validation_alias=_aliases,
        serialization_alias=_serialization_alias,
    ),
    hide_input_in_errors=False,
    # Resources are shown to users and hashed; keep enum members (they are str) as-is.
    use_enum_values=False,
    revalidate_instances="never",
)


class _SharedFieldsSet(set[str]):
    """A `model_fields_set` shared by every model instance that was given the same fields.

    pydantic gives each instance its own `set` of the fields it was given (about 270 bytes,
    7 or 8 per resource: a fifth of what a loaded resource costs). Models are frozen, so
    nothing adds to it; copying (`model_copy`, `copy.copy`) yields a plain, private `set`,
    and changing a shared one in place is refused.
    """

    __slots__ = ()

    def __copy__(self) -> set[str]:
        return set(self)

    def _refuse(self) -> None:
        raise TypeError("a model's fields set is shared and read-only; copy it first")

    def add(self, element: str) -> None:
        self._refuse()

    def discard(self, element: object) -> None:
        self._refuse()

    def remove(self, element: str) -> None:
        self._refuse()

    def pop(self) -> str:
        self._refuse()
        raise AssertionError  # unreachable

    def clear(self) -> None:
        self._refuse()

    def update(self, *others: Iterable[str]) -> None:
        self._refuse()

    def difference_update(self, *others: Iterable[Any]) -> None:
        self._refuse()

    def intersection_update(self, *others: Iterable[Any]) -> None:
        self._refuse()

    def symmetric_difference_update(self, other: Iterable[str]) -> None:
        self._refuse()

    def __ior__(self, other: AbstractSet[str]) -> Self:  # type: ignore[override,misc]
        self._refuse()
        return self

    def __iand__(self, other: AbstractSet[object]) -> Self:
        self._refuse()
        return self

    def __isub__(self, other: AbstractSet[object]) -> Self:
        self._refuse()
        return self

    def __ixor__(self, other: AbstractSet[str]) -> Self:  # type: ignore[override,misc]
        self._refuse()
        return self


_FIELDS_SETS: dict[frozenset[str], _SharedFieldsSet] = {}
_MAX_FIELDS_SETS = 4096
"""Distinct fields sets shared at most; beyond (a repo writing every combination) instances keep their own."""


class Model(BaseModel):
    """Base of every resource model: frozen, unknown keys forbidden, snake_case and camelCase keys."""

    model_config = MODEL_CONFIG

    def __eq__(self, other: object) -> bool:
        # Identity first: serializing with `exclude_defaults` compares every left-out sub-model
        # with its (shared) default, which is the same object (`shared_default`).
        return self is other or super().__eq__(other)

    def model_post_init(self, context: Any, /) -> None:
        """Share the instance's fields set with every instance given the same fields (`_SharedFieldsSet`)."""
        given = self.__pydantic_fields_set__
        key = frozenset(given)
        shared = _FIELDS_SETS.get(key)
        if shared is None:
            if len(_FIELDS_SETS) >= _MAX_FIELDS_SETS:
                return
            shared = _FIELDS_SETS.setdefault(key, _SharedFieldsSet(key))
        object.__setattr__(self, "__pydantic_fields_set__", shared)


_M = TypeVar("_M", bound=Model)


class WithSynonyms(Model):
    """A model that accepts older or documented spellings of some keys (`SYNONYMS`).

    `SYNONYMS` maps a synonym key (snake_case; its camelCase form is accepted too) to the
    field it means. The synonym is renamed before validation, so the model and its canonical
    form only know the real field. Writing both with different values is an error.
    """

    SYNONYMS: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _rename_synonyms(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        renamed: dict[str, object] | None = None
        for key in data:
            target = cls.SYNONYMS.get(key) or cls.SYNONYMS.get(_snake(key))
            if target is None:
                continue
            if renamed is None:
                renamed = dict(data)
            value = renamed.pop(key)
            present = [k for k in dict.fromkeys((target, to_camel(target))) if k in renamed]
            if present and renamed[present[0]] != value:
                raise ValueError(
                    f"{key!r} is a synonym of {target!r} and both are set to different values; keep one"
                )
            for k in present:
                renamed.pop(k)
            renamed[target] = value
        return data if renamed is None else renamed


@functools.lru_cache(maxsize=4096)
def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key).lstrip("_")


def shared_default(model: type[_M]) -> Callable[[], _M]:
    """A `default_factory` handing out one shared, default-valued instance of a frozen `model`.

    `Field(default_factory=SomeModel)` builds (and validates) a new instance for every resource
    that leaves the field out, and again every time a resource is serialized with
    `exclude_defaults` (pydantic calls the factory to compare): a third of a FlowBinding's
    validation and digest. Models are frozen, so one instance can serve them all. A factory
    (not `default=SomeModel()`) keeps the published JSON Schema as it was.
    """
    return itertools.repeat(model()).__next__


# --- strict scalar types -------------------------------------------------------------------

Bool = StrictBool
"""`true`/`false` only: the strings `no`, `yes`, `on`, `"true"` are errors, never coerced."""

Int = StrictInt
"""A YAML int only: `"300"` (a string) and `300.0` (a float) are errors."""

Float = Annotated[float, Strict()]
"""A YAML float or int (`1` is fine for a float); strings are errors."""

PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0)]
Temperature = Annotated[float, Strict(), Field(ge=0, le=2)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]


def _scalar_to_str(value: object) -> object:
    """Map values: YAML writes `PORT: 5432` and `DEBUG: true`; the value is the text (`5432`, `true`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


ScalarStr = Annotated[str, BeforeValidator(_scalar_to_str)]
"""A string that also accepts a YAML number or boolean written as a map value (env, labels)."""

StrMap = dict[str, ScalarStr]
"""`{KEY: value}` with string values (numbers and booleans become their text)."""

FreeForm = dict[str, JsonValue]
"""A free-form mapping that aofd passes through (tool config, HTTP bodies, JSON Schema)."""


# --- enums ---------------------------------------------------------------------------------


def _fold(text: str) -> str:
    return text.replace("-", "").replace("_", "").replace(" ", "").lower()


class CIEnum(enum.StrEnum):
    """A string enum that matches case- and separator-insensitively.

    `slack`, `SLACK` and `Slack` are `Slack`; `round_robin` and `RoundRobin` are `round-robin`.
    The member value is the canonical spelling (upstream's).
    """

    @classmethod
    def _missing_(cls, value: object) -> CIEnum | None:
        if not isinstance(value, str):
            return None
        folded = _fold(value)
        for member in cls:
            if _fold(member.value) == folded:
                return member
        return None


# --- references ----------------------------------------------------------------------------


def _name_to_mapping(value: object) -> object:
    """A reference written as a bare string is `{name: <string>}`."""
    if isinstance(value, str):
        return {"name": value}
    return value


class Ref(Model):
    """A reference to another resource by name: `flow: my-flow` or `flow: {name: my-flow}`."""

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        return _name_to_mapping(data)


# --- metadata and the resource envelope ----------------------------------------------------


class Metadata(Model):
    """`metadata`: identity (name, namespace) and free-form labels and annotations."""

    name: str
    namespace: str = ids.DEFAULT_NAMESPACE
    labels: StrMap = Field(default_factory=dict)
    annotations: StrMap = Field(default_factory=dict)


class ResourceModel(Model):
    """The envelope every kind shares: `apiVersion`, `kind`, `metadata` and a `spec` (per kind)."""

    api_version: str = API_VERSION
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


def canonical(model: BaseModel) -> dict[str, Any]:
    """The canonical form of a model: JSON-compatible, snake_case keys, defaults left out.

    Defaults are left out so that a new optional field in a later aofd does not change the
    digest of every existing resource, and so that writing a default explicitly is the same
    resource as leaving it out. Two documents that mean the same thing (camelCase or
    snake_case keys, `slack` or `Slack`, a synonym such as `cluster_name`) have the same
    canonical form. Key order is the model's field order; hash with `sort_keys=True`
    (as `digest` does) because map values (env, labels) keep their YAML order.
    A resource's form is `{kind, metadata, spec}`: `apiVersion` is left out, since every
    accepted apiVersion means the same schema.
    """
    # `model_dump` without its Python wrapper: the same serializer, the same arguments.
    dumped: dict[str, Any] = model.__pydantic_serializer__.to_python(
        model, mode="json", by_alias=True, exclude_defaults=True
    )
    if isinstance(model, ResourceModel):
        dumped.pop("api_version", None)
        return {"kind": getattr(model, "kind", type(model).__name__), **dumped}
    return dumped


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""What `json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)` builds per call."""


def canonical_json(model: BaseModel) -> str:
    """The canonical form as the text digests cover (sorted keys, compact separators)."""
    return _CANONICAL_JSON.encode(canonical(model))


def digest(model: BaseModel) -> ids.Digest:
    """`sha256:<hex>` of the canonical form (sorted keys, compact separators)."""
    return ids.Digest("sha256:" + hashlib.sha256(canonical_json(model).encode("utf-8")).hexdigest())


class DocumentLike(Protocol):
    """What the models need of a parsed YAML document (`aofd.resources.documents.Document`)."""

    @property
    def path(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def line(self) -> int: ...
    @property
    def col(self) -> int: ...
    @property
    def data(self) -> object: ...
    @property
    def positions(self) -> Mapping[tuple[str | int, ...], tuple[int, int]]: ...

    def position(self, loc: Sequence[str | int]) -> tuple[int, int]: ...

    def key_position(self, loc: Sequence[str | int]) -> tuple[int, int]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedResource:
    """A validated resource and where it came from.

    `model` is the kind's model (`context.Context`, `agent.Agent`, ...); `doc` is the parsed
    document (with positions, so later stages can point at `spec.flow.name` and so on);
    `path`, `line` and `col` are where the document starts.
    """

    key: ids.ResourceKey
    model: ResourceModel
    doc: DocumentLike
    path: str
    line: int
    col: int

    @property
    def kind(self) -> ids.Kind:
        return self.key.kind

    @property
    def name(self) -> str:
        return self.key.name

    def position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """1-based (line, col) of the value at `loc` (data keys as written), or its nearest ancestor."""
        return self.doc.position(loc)


class RefKind(CIEnum):
    """What an `agentRef` points at."""

    AGENT = "Agent"
    FLEET = "AgentFleet"


class AgentRef(Model):
    """A reference to an Agent or an AgentFleet (the seed's `agentRef{name, kind}`).

    Accepted as `agent: k8s-ops` (an Agent), `{name, kind}`, or `{agentRef: {name, kind}}`.
    """

    name: str
    kind: RefKind = RefKind.AGENT

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: object) -> object:
        if isinstance(data, dict) and len(data) == 1:
            inner = data.get("agentRef", data.get("agent_ref"))
            if inner is not None:
                return _name_to_mapping(inner)
        return _name_to_mapping(data)
