"""Diff a compiled revision against what runs: `(Compiled, Inventory) -> Plan`; pure.

This module owns:

- `Inventory`: what runs now, as `ResourceKey -> Digest` plus each FlowBinding's effective
  digest (Flux kustomize-controller's inventory), with a flat JSON form for the state dir,
  and the config digest of each listener the runtime reports running (not persisted: after a
  restart nothing runs, so every listener is started again);
- `compute()`: create / update / delete / unchanged per resource, in dependency order
  (`aofd.plan.actions`), each action carrying its compiled spec, and the listener actions (start,
  replace, retire). A FlowBinding is compared by its effective digest, which covers its flow,
  agents, fleets, context and trigger: changing an agent updates exactly the bindings that use
  it, and nothing else. This is the only diff: the applier executes the plan as it is;
- `Plan`: the result, with counts, JSON form and the Contexts each change touches (their
  audit logs record the applied revision).

Human rendering lives in `aofd.plan.render`. No I/O, no clock, no logging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from aofd.plan import actions, compiler, desired, persistent
from aofd.resources import ids

_EFFECTIVE = "effective:"
_REVISION = "@revision"


def key_text(key: ids.ResourceKey) -> str:
    """`Kind/namespace/name`: the inventory's stable spelling of a key."""
    return f"{key.kind.value}/{key.namespace}/{key.name}"


def parse_key(text: str) -> ids.ResourceKey | None:
    """The inverse of `key_text`, or None for anything else."""
    parts = text.split("/")
    if len(parts) != 3:
        return None
    try:
        kind = ids.Kind(parts[0])
    except ValueError:
        return None
    return ids.ResourceKey(kind, parts[1], parts[2])


@dataclasses.dataclass(frozen=True, slots=True)
class Inventory:
    """What runs: each resource's digest, each binding's effective digest, and the revision."""

    digests: Mapping[ids.ResourceKey, ids.Digest]
    effective: Mapping[ids.ResourceKey, ids.Digest] = dataclasses.field(default_factory=dict)
    revision: str = ""
    origin: object = dataclasses.field(default=None, compare=False, repr=False)
    """The `bindings` map of the state this inventory was made from (`of`): `compute`'s fast path."""
    listeners: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Trigger name -> config digest of the listener running for it (what the runtime reported)."""
    serving: object = dataclasses.field(default=None, compare=False, repr=False)
    """The compiled `listeners` map that `listeners` runs exactly (every one started as compiled),
    if the caller knows it: `listener_actions`'s fast path."""

    @classmethod
    def empty(cls) -> Inventory:
        return cls(digests=MappingProxyType({}), effective=MappingProxyType({}))

    @classmethod
    def of(
        cls,
        state: desired.DesiredState,
        *,
        listeners: Mapping[str, str] | None = None,
        serving: Mapping[str, object] | None = None,
    ) -> Inventory:
        """The inventory once `state` is applied, with the listeners the runtime runs for it;
        `serving`: the compiled listeners they are, all of them, when the caller checked that."""
        return cls(
            digests=state.digests,
            effective=Effective(state.bindings),
            revision=state.revision,
            origin=state.bindings,
            listeners=MappingProxyType(dict(listeners or {})),
            serving=serving,
        )

    def __len__(self) -> int:
        return len(self.digests)

    def to_json(self) -> dict[str, str]:
        """A flat `{string: string}` map: keys, effective digests, revision."""
        out = {key_text(k): str(v) for k, v in self.digests.items()}
        out.update({_EFFECTIVE + key_text(k): str(v) for k, v in self.effective.items()})
        if self.revision:
            out[_REVISION] = self.revision
        return out

    def json_changes(self, old: Inventory) -> dict[str, str | None] | None:
        """`to_json()`'s entries that differ from `old.to_json()`'s (None: removed), or None when
        they cannot be found without comparing everything (the maps were not derived from one
        another). Costs what changed when both come from `of()` on successive states."""
        new_bindings, old_bindings = _bindings_of(self.effective), _bindings_of(old.effective)
        if not (
            isinstance(self.digests, persistent.PMap)
            and isinstance(old.digests, persistent.PMap)
            and new_bindings is not None
            and old_bindings is not None
        ):
            return None
        out: dict[str, str | None] = {}
        for key, digest in persistent.diff(self.digests, old.digests):
            out[key_text(key)] = None if isinstance(digest, persistent.Missing) else str(digest)
        for binding_id, binding in persistent.diff(new_bindings, old_bindings):
            before = old_bindings.get(binding_id)
            if before is not None:
                out.setdefault(_EFFECTIVE + key_text(before.key), None)
            if not isinstance(binding, persistent.Missing):
                out[_EFFECTIVE + key_text(binding.key)] = str(binding.digest)
        if self.revision != old.revision:
            out[_REVISION] = self.revision
        return out

    @classmethod
    def from_json(cls, data: Mapping[Any, Any]) -> Inventory:
        """Read `to_json()`'s form back; entries that do not parse are skipped, never fatal."""
        digests: dict[ids.ResourceKey, ids.Digest] = {}
        effective: dict[ids.ResourceKey, ids.Digest] = {}
        revision = ""
        for text, value in data.items():
            if not isinstance(text, str) or not isinstance(value, str):
                continue
            if text == _REVISION:
                revision = value
                continue
            target = digests
            if text.startswith(_EFFECTIVE):
                target, text = effective, text[len(_EFFECTIVE) :]
            key = parse_key(text)
            if key is not None:
                target[key] = ids.Digest(value)
        return cls(MappingProxyType(digests), MappingProxyType(effective), revision)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The changes that make the running inventory match a desired state.

    `changes` are in apply order (`actions.ordered`); `unchanged` holds the other keys (shown
    in key order).
    """

    revision: str
    previous: str
    changes: tuple[actions.Action, ...]
    unchanged: Collection[ids.ResourceKey] = ()
    listeners: tuple[actions.ListenerAction, ...] = ()
    compiled: compiler.Compiled | None = dataclasses.field(default=None, compare=False, repr=False)
    """The compiled revision the actions come from (its routes, contexts and listener specs)."""

    def counts(self) -> dict[str, int]:
        """`{"create": n, "update": n, "delete": n, "unchanged": n}`."""
        counts: dict[str, int] = dict.fromkeys(actions.OPS, 0)
        for action in self.changes:
            counts[action.op] += 1
        counts["unchanged"] = len(self.unchanged)
        return counts

    def is_noop(self) -> bool:
        return not self.changes and not self.listeners

    def of_op(self, op: actions.Op) -> tuple[actions.Action, ...]:
        if op == "unchanged":
            return tuple(actions.Action("unchanged", k) for k in sorted(self.unchanged))
        return tuple(a for a in self.changes if a.op == op)

    @property
    def actions(self) -> tuple[actions.Action, ...]:
        """Every action: the changes in apply order, then the unchanged ones."""
        return self.changes + self.of_op("unchanged")

    def as_dict(self, *, include_unchanged: bool = False) -> dict[str, Any]:
        """The JSON form: revision, previous revision, counts, changes (and unchanged keys)."""
        out: dict[str, Any] = {
            "revision": self.revision,
            "previous": self.previous,
            "summary": self.counts(),
            "changes": [a.as_dict() for a in self.changes],
            "listeners": [a.as_dict() for a in self.listeners],
        }
        if include_unchanged:
            out["unchanged"] = [key_text(k) for k in sorted(self.unchanged)]
        return out

    def touched_contexts(
        self, state: desired.DesiredState, previous: desired.DesiredState | None = None
    ) -> dict[str, list[str]]:
        """Context name -> the changes (`update Agent/k8s-ops`) that affect bindings running in it.

        A change touches a Context when it is that Context, or when a binding in it (now or
        before the change) is the changed resource or uses it.
        """
        touched: dict[str, list[str]] = {}
        states = [state] if previous is None else [state, previous]
        for action in self.changes:
            line = f"{action.op} {action.key}"
            names: set[str] = set()
            if action.key.kind is ids.Kind.CONTEXT:
                names.add(action.key.name)
            for s in states:
                for binding in s.users_of(action.key):
                    if binding.context is not None:
                        names.add(binding.context.name)
            for name in names:
                touched.setdefault(name, []).append(line)
        return touched


class Effective(Mapping[ids.ResourceKey, ids.Digest]):
    """Binding key -> effective digest, read from a state's bindings (no per-pass copy)."""

    __slots__ = ("_bindings",)

    def __init__(self, bindings: Mapping[str, desired.ResolvedBinding]) -> None:
        self._bindings = bindings

    def __getitem__(self, key: ids.ResourceKey) -> ids.Digest:
        if getattr(key, "kind", None) is ids.Kind.BINDING:
            found = self._bindings.get(desired.binding_id(key))
            if found is not None and found.key == key:
                return found.digest
        raise KeyError(key)

    def __iter__(self) -> Iterator[ids.ResourceKey]:
        return (b.key for b in self._bindings.values())

    def __len__(self) -> int:
        return len(self._bindings)


def _bindings_of(
    effective: Mapping[ids.ResourceKey, ids.Digest],
) -> persistent.PMap[str, desired.ResolvedBinding] | None:
    if isinstance(effective, Effective) and isinstance(effective._bindings, persistent.PMap):
        return effective._bindings
    return None


class _Unchanged(Collection[ids.ResourceKey]):
    """The keys of `keys` minus `changed`, without building a 10,000-item tuple per plan."""

    __slots__ = ("_changed", "_keys", "_len")

    def __init__(self, keys: Collection[ids.ResourceKey], changed: frozenset[ids.ResourceKey]) -> None:
        self._keys = keys
        self._changed = changed
        self._len = len(keys) - sum(1 for k in changed if k in keys)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[ids.ResourceKey]:
        changed = self._changed
        return (k for k in self._keys if k not in changed)

    def __contains__(self, key: object) -> bool:
        return key in self._keys and key not in self._changed


def compute(compiled: compiler.Compiled, inventory: Inventory) -> Plan:
    """The plan that turns `inventory` into `compiled` (pure; `compiled` need not be `ok`).

    When `inventory` was made from the state the build started from (`DesiredState.delta`),
    only the keys the build touched are compared: the cost follows the change, not the repo.
    Each change carries its compiled spec; listener actions compare each served Trigger's
    config digest with the listener the runtime reports running.
    """
    plan = _resources(compiled.desired, inventory)
    changes = tuple(dataclasses.replace(a, spec=spec_of(compiled, a.key)) for a in plan.changes)
    return dataclasses.replace(
        plan, changes=changes, listeners=listener_actions(compiled, inventory), compiled=compiled
    )


def spec_of(compiled: compiler.Compiled, key: ids.ResourceKey) -> actions.Spec:
    """The compiled spec of `key` in `compiled` (None when it has none: deleted, a Workflow, ...)."""
    kind = key.kind
    if kind is ids.Kind.CONTEXT:
        context = compiled.contexts.get(key.name)
        return context if context is not None and context.key == key else None
    if kind is ids.Kind.AGENT:
        return compiled.agents.get(key)
    if kind is ids.Kind.FLEET:
        return compiled.fleets.get(key)
    if kind is ids.Kind.FLOW:
        return compiled.flows.get(key)
    if kind is ids.Kind.TRIGGER:
        return compiled.triggers.get(key.name)
    if kind is ids.Kind.BINDING:
        return compiled.bindings.get(desired.binding_id(key))
    return None


def listener_actions(compiled: compiler.Compiled, inventory: Inventory) -> tuple[actions.ListenerAction, ...]:
    """Start the listeners that do not run, replace those whose config changed, retire the rest.

    Nothing to do, at no cost, when the inventory runs exactly these compiled listeners
    (`Inventory.serving`: the compiler hands over the same map while no listener changes)."""
    if inventory.serving is not None and inventory.serving is compiled.listeners:
        return ()
    out: list[actions.ListenerAction] = []
    running = inventory.listeners
    get = running.get
    for name, spec in compiled.listeners.items():
        old = get(name)
        if old != spec.digest:
            op: actions.Op = "create" if old is None else "update"
            out.append(actions.ListenerAction(op, name, spec, old, spec.digest))
    gone = sorted(running.keys() - compiled.listeners.keys())
    out.extend(actions.ListenerAction("delete", name, None, running[name], None) for name in gone)
    return tuple(out)


def _resources(state: desired.DesiredState, inventory: Inventory) -> Plan:
    delta = state.delta
    if (
        delta is not None
        and inventory.digests is delta.base_digests
        and inventory.origin is delta.base_bindings
    ):
        return _compute_delta(state, inventory, delta.keys)
    wanted = _compared_digests(state)
    running = _running_digests(inventory)
    if wanted == running:
        return Plan(state.revision, inventory.revision, (), tuple(wanted))

    changes: list[actions.Action] = []
    unchanged: list[ids.ResourceKey] = []
    changed: set[ids.ResourceKey] = set()
    bindings: list[ids.ResourceKey] = []
    for key, new in wanted.items():
        if key.kind is ids.Kind.BINDING:
            bindings.append(key)
            continue
        old = running.get(key)
        if old == new:
            unchanged.append(key)
            continue
        changed.add(key)
        op: actions.Op = "create" if old is None else "update"
        reason = "" if old is None else "spec changed"
        changes.append(actions.Action(op, key, old, new, reason, state.resources[key].path))
    for key in bindings:
        new = wanted[key]
        old = running.get(key)
        if old == new:
            unchanged.append(key)
            continue
        if old is None:
            changes.append(actions.Action("create", key, None, new, "", state.resources[key].path))
            continue
        changes.append(
            actions.Action(
                "update", key, old, new, _binding_reason(state, inventory, key, changed), _path(state, key)
            )
        )
    for key, old in running.items():
        if key not in wanted:
            changes.append(actions.Action("delete", key, old, None, "no longer in the desired state"))
    return Plan(state.revision, inventory.revision, actions.ordered(changes), tuple(unchanged))


def _compute_delta(
    state: desired.DesiredState, inventory: Inventory, keys: frozenset[ids.ResourceKey]
) -> Plan:
    changes: list[actions.Action] = []
    changed: set[ids.ResourceKey] = set()
    for key in sorted(keys, key=lambda k: k.kind.layer):
        new = _wanted(state, key)
        old = inventory.effective.get(key) or inventory.digests.get(key)
        if old == new:
            continue
        changed.add(key)
        if new is None:
            assert old is not None
            changes.append(actions.Action("delete", key, old, None, "no longer in the desired state"))
        elif old is None:
            changes.append(actions.Action("create", key, None, new, "", _path(state, key)))
        elif key.kind is ids.Kind.BINDING:
            reason = _binding_reason(state, inventory, key, changed)
            changes.append(actions.Action("update", key, old, new, reason, _path(state, key)))
        else:
            changes.append(actions.Action("update", key, old, new, "spec changed", _path(state, key)))
    return Plan(
        state.revision,
        inventory.revision,
        actions.ordered(changes),
        _Unchanged(state.digests.keys(), frozenset(changed)),
    )


def _wanted(state: desired.DesiredState, key: ids.ResourceKey) -> ids.Digest | None:
    if key.kind is ids.Kind.BINDING:
        binding = state.binding_for(key)
        if binding is not None:
            return binding.digest
    return state.digests.get(key)


def _compared_digests(state: desired.DesiredState) -> dict[ids.ResourceKey, ids.Digest]:
    """Each resource's digest; a resolved binding's is its effective digest."""
    wanted = dict(state.digests)
    for binding in state.bindings.values():
        wanted[binding.key] = binding.digest
    return wanted


def _running_digests(inventory: Inventory) -> dict[ids.ResourceKey, ids.Digest]:
    running = dict(inventory.digests)
    running.update(inventory.effective)
    return running


def _path(state: desired.DesiredState, key: ids.ResourceKey) -> str:
    resource = state.resources.get(key)
    return resource.path if resource is not None else ""


def _binding_reason(
    state: desired.DesiredState, inventory: Inventory, key: ids.ResourceKey, changed: set[ids.ResourceKey]
) -> str:
    if inventory.digests.get(key) != state.digests.get(key):
        return "spec changed"
    binding = state.binding_for(key)
    if binding is None:
        return "what it resolves to changed"
    used = sorted(k for k in binding.uses if k in changed)
    if not used:
        return "what it resolves to changed"
    return "uses " + ", ".join(f"{k} (changed)" for k in used)
