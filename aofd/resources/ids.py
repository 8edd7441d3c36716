"""Identity of resources: kinds, keys, names, revisions and digests.

A resource is identified by `(kind, namespace, name)`; the namespace defaults to
`default`. Names are DNS-1123 labels, which removes homoglyphs, bidi tricks and path
traversal from every identifier at once (a Context name chooses a directory under the
audit dir, so this is a security property, not style).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import NewType

Revision = NewType("Revision", str)
"""A source revision: a git commit id, or a directory content digest (`sha256:...`)."""

Digest = NewType("Digest", str)
"""`sha256:<hex>` of a resource's canonical form."""

DEFAULT_NAMESPACE = "default"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63


class Kind(enum.StrEnum):
    """The resource kinds aofd understands, in layer order (lowest first)."""

    CONTEXT = "Context"
    AGENT = "Agent"
    FLEET = "AgentFleet"
    FLOW = "AgentFlow"
    TRIGGER = "Trigger"
    BINDING = "FlowBinding"
    WORKFLOW = "Workflow"

    @property
    def layer(self) -> int:
        return _LAYERS[self]


_LAYERS: dict[Kind, int] = {
    Kind.CONTEXT: 0,
    Kind.AGENT: 1,
    Kind.FLEET: 2,
    Kind.FLOW: 3,
    Kind.WORKFLOW: 3,
    Kind.TRIGGER: 4,
    Kind.BINDING: 5,
}

# kubectl-style names accepted by `aofctl get/describe`: singular, plural, short.
KIND_NAMES: dict[str, Kind] = {}
for _kind, _names in {
    Kind.CONTEXT: ("context", "contexts", "ctx"),
    Kind.AGENT: ("agent", "agents", "ag"),
    Kind.FLEET: ("agentfleet", "agentfleets", "fleet", "fleets", "fl"),
    Kind.FLOW: ("agentflow", "agentflows", "flow", "flows", "fw"),
    Kind.TRIGGER: ("trigger", "triggers", "tr"),
    Kind.BINDING: ("flowbinding", "flowbindings", "binding", "bindings", "fb"),
    Kind.WORKFLOW: ("workflow", "workflows", "wf"),
}.items():
    for _name in _names:
        KIND_NAMES[_name] = _kind


def parse_kind_name(text: str) -> Kind | None:
    """Map a kubectl-style kind name (`ctx`, `agents`, `AgentFleet`) to a Kind, or None."""
    return KIND_NAMES.get(text.lower())


def name_problem(name: str) -> str | None:
    """Return why `name` is not a DNS-1123 label, or None when it is one."""
    if not name:
        return "name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
    if not _DNS1123_LABEL.match(name):
        return (
            f"name {name!r} is not a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class ResourceKey:
    """`(kind, namespace, name)`: the identity of one resource.

    Its hash is computed once, at construction: keys are hashed dozens of times each while a
    desired state is built (sets and maps of keys everywhere), and the generated `__hash__`
    would build and hash a tuple every time.
    """

    kind: Kind
    namespace: str
    name: str
    _hash: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.kind, self.namespace, self.name)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[ResourceKey], tuple[Kind, str, str]]:
        # Rebuilt from its parts: a string's hash differs between processes.
        return (ResourceKey, (self.kind, self.namespace, self.name))

    def __str__(self) -> str:
        if self.namespace == DEFAULT_NAMESPACE:
            return f"{self.kind.value}/{self.name}"
        return f"{self.kind.value}/{self.namespace}/{self.name}"

    @classmethod
    def of(cls, kind: Kind, name: str, namespace: str | None = None) -> ResourceKey:
        return cls(kind, namespace or DEFAULT_NAMESPACE, name)
