"""kubectl's own command and flag definitions and the Kubernetes built-in resources, as data.

This module owns reading the two tables that `scripts/kubectl_tables.py` generates from their
sources (pure: the only I/O is `importlib.resources` reading package data once):

- `kubectl_flags.json`, taken from a real kubectl binary: every command path (`get`,
  `rollout restart`, `create secret generic`), its local flags with their shorthand, and
  whether `--flag X` (no `=`) consumes X. Bool flags and flags with a no-option default
  (`--dry-run`, `--cascade`, `--validate`) do not: they take a value only as `--flag=X`.
- `k8s_resources.json`, taken from the Kubernetes API discovery documents: each built-in
  resource with its singular, short names, kind, group, preferred version, scope and
  subresources.

`resolve_resource` names a resource the way kubectl's builder and REST mapper do
(`ResourceOrKindArgs`, `k8s.io/apimachinery/pkg/api/meta.DefaultRESTMapper`,
`k8s.io/client-go/restmapper` short-name expansion); see its docstring for the rules.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

_FLAGS_FILE = "kubectl_flags.json"
_RESOURCES_FILE = "k8s_resources.json"


@dataclasses.dataclass(frozen=True, slots=True)
class FlagSpec:
    """One kubectl flag: `long` with its dashes (`--output`), `short` without (`o`) or None.

    `takes_value` is True when `--flag X` consumes X; `is_bool` when the flag is a bool
    (so `--flag=false` turns it off). A flag that is neither is a no-option-default flag:
    `--dry-run` alone means `--dry-run=client`-like default, a value needs `=`.
    """

    long: str
    short: str | None
    takes_value: bool
    is_bool: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceType:
    """A built-in API resource as discovery serves it.

    `name` is the plural (`deployments`), `group` is "" for the core group, `version` the
    preferred version that serves it, `versions` every served version (preferred first).
    `subresources` are names such as `log`, `exec`, `scale`, `status`.
    """

    name: str
    singular: str
    short_names: tuple[str, ...]
    kind: str
    group: str
    version: str
    namespaced: bool
    subresources: tuple[str, ...]
    versions: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()


def _load(name: str) -> Any:
    return json.loads(importlib.resources.files("aofd.specs").joinpath(name).read_text(encoding="utf-8"))


def _flag_map(raw: Mapping[str, Any]) -> Mapping[str, FlagSpec]:
    return MappingProxyType(
        {
            long: FlagSpec(long, spec["short"], bool(spec["value"]), bool(spec.get("bool", False)))
            for long, spec in raw.items()
        }
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _FlagTables:
    kubectl: str
    global_flags: Mapping[str, FlagSpec]
    commands: Mapping[str, Mapping[str, FlagSpec]]
    subcommands: Mapping[str, frozenset[str]]
    aliases: Mapping[str, frozenset[str]]


@functools.cache
def _flag_tables() -> _FlagTables:
    raw = _load(_FLAGS_FILE)
    return _FlagTables(
        kubectl=str(raw["kubectl"]),
        global_flags=_flag_map(raw["global"]),
        commands=MappingProxyType({path: _flag_map(flags) for path, flags in raw["commands"].items()}),
        subcommands=MappingProxyType({path: frozenset(names) for path, names in raw["subcommands"].items()}),
        aliases=MappingProxyType({path: frozenset(names) for path, names in raw.get("aliases", {}).items()}),
    )


def kubectl_version() -> str:
    """The kubectl release the flag table was taken from, e.g. `v1.37.1`."""
    return _flag_tables().kubectl


def global_flags() -> Mapping[str, FlagSpec]:
    """kubectl's global flags (`kubectl options`), by long name with dashes."""
    return _flag_tables().global_flags


def command_flags(path: str) -> Mapping[str, FlagSpec] | None:
    """The local flags of a command path (`"get"`, `"rollout restart"`); None if no such command.

    Global flags are not repeated here: see `global_flags`.
    """
    return _flag_tables().commands.get(path)


def subcommands(path: str) -> frozenset[str]:
    """The sub-commands of a command path (`"rollout"` -> restart, status, ...); `""` gives the verbs."""
    return _flag_tables().subcommands.get(path, frozenset())


def aliases(path: str) -> frozenset[str]:
    """Other names of a command path's last word (`create deployment`: `deploy`; `top node`: `no`)."""
    return _flag_tables().aliases.get(path, frozenset())


def shorthand(path: str, short: str) -> FlagSpec | None:
    """The flag a one-letter shorthand means for a command (`logs -f` is `--follow`), else None.

    A command's own flags win over the global ones, as in cobra.
    """
    for flags in (command_flags(path) or {}, global_flags()):
        for spec in flags.values():
            if spec.short == short:
                return spec
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _ResourceTables:
    source: str
    resources: tuple[ResourceType, ...]


@functools.cache
def _resource_tables() -> _ResourceTables:
    raw = _load(_RESOURCES_FILE)
    resources = tuple(
        ResourceType(
            name=entry["name"],
            singular=entry["singularName"],
            short_names=tuple(entry["shortNames"]),
            kind=entry["kind"],
            group=entry["group"],
            version=entry["version"],
            namespaced=bool(entry["namespaced"]),
            subresources=tuple(entry["subresources"]),
            versions=tuple(entry.get("versions", (entry["version"],))),
            verbs=tuple(entry.get("verbs", ())),
            categories=tuple(entry.get("categories", ())),
        )
        for entry in raw["resources"]
    )
    return _ResourceTables(source=str(raw["source"]), resources=resources)


def resources_source() -> str:
    """Where the resource table came from (repository, files and commits)."""
    return _resource_tables().source


def all_resources() -> tuple[ResourceType, ...]:
    """Every built-in resource, in discovery priority order: core first, then the groups in order."""
    return _resource_tables().resources


def _by_resource(name: str, group: str | None, version: str | None) -> ResourceType | None:
    """A resource whose plural, singular or short name is `name` (REST mapper + short-name expander).

    `group` None means any group; otherwise an exact group match wins, and failing one, a group
    that starts with it (`storageclasses.storage`). A short name is matched as written
    (discovery is case-sensitive there), a plural or singular case-insensitively.
    """
    candidates = [
        r
        for r in all_resources()
        if (version is None or version in r.versions) and (group is None or r.group == group)
    ]
    # 1. an exact plural or singular name is never expanded as a short name.
    for r in candidates:
        if name in (r.name, r.singular):
            return r
    # 2. short names, exact case, in discovery order (the first of an ambiguous one wins).
    for r in candidates:
        if name in r.short_names:
            return r
    if group is not None and version is None:
        # 3. the short-name expander's group prefix: `deploy.app` -> deployments.apps.
        for r in all_resources():
            if r.group.startswith(group) and name in r.short_names:
                return r
    lowered = name.lower()
    # 4. the REST mapper lower-cases the resource and matches plural or singular ...
    for r in candidates:
        if lowered in (r.name, r.singular):
            return r
    if group is not None and version is None:
        # 5. ... and, given a group with no exact match, matches on a group prefix.
        for r in all_resources():
            if r.group.startswith(group) and lowered in (r.name, r.singular):
                return r
    return None


def _by_kind(kind: str, group: str, version: str | None) -> ResourceType | None:
    for r in all_resources():
        if r.kind == kind and r.group == group and (version is None or version in r.versions):
            return r
    return None


def resolve_resource(token: str) -> ResourceType | None:
    """The resource a kubectl resource argument names, or None when kubectl would not know it.

    `token` is one type as written before a `/` or between commas: `pods`, `pod`, `po`, `PODS`,
    `Pod`, `deployments.apps`, `deploy.apps`, `deployment.v1.apps`, `pods.v1.`, `Deployment.apps`,
    `Deployment.v1.apps`. The rules are those of kubectl's `Builder.mappingFor`:

    1. `res.version.group` (three dot-separated parts) names a resource served at that version
       in that exact group (an empty group, as in `pods.v1.`, means any group);
    2. else `res.group`: everything after the first dot is the group, matched by name as in
       `_by_resource`; no group (`pods`, `pods.`) means any group, in discovery priority order;
    3. else the token is a Kind, exact case: `Kind.version.group`, then `Kind.group` (no group is
       the core group: `Deployment` alone resolves by step 2, as the singular `deployment`).
    """
    if not token:
        return None
    parts = token.split(".", 2)
    if len(parts) == 3:  # an empty version or group means any (`pods..`, `deployments..apps`)
        found = _by_resource(parts[0], parts[2] or None, parts[1] or None)
        if found is not None:
            return found
    head, _, rest = token.partition(".")
    found = _by_resource(head, rest or None, None)
    if found is not None:
        return found
    if len(parts) == 3:
        found = _by_kind(parts[0], parts[2], parts[1] or None)
        if found is not None:
            return found
    return _by_kind(head, rest, None)
