"""Desired state: every source's snapshot -> one resolved, validated registry; pure.

This module owns `build()`, the step DESIGN.md section 2 calls "desired state":

1. parse and validate each file (memoized in a `ParseCache` by `(path, blob)`, so a one-file
   push costs one file's parse),
2. source kind policy (a source may define only the kinds its config lists: a Context from
   the main repo is an error, not a silent override),
3. duplicates (the same `(kind, namespace, name)` twice, in one source or across two),
4. `${VAR}` substitution in secret-bearing fields only (`aofd.plan.substitute`),
5. references resolved into one registry: Fleet -> Agent, Flow -> Agent/Fleet/Context,
   Trigger commands -> Agent/Fleet/Flow, Binding -> Flow/Context/Trigger/Agent/Fleet;
   missing reference, wrong kind and reference cycle are errors at the referring field with
   a did-you-mean,
6. per-resource digests (an HMAC under the install's key for a resource holding a secret), and
   per binding a `ResolvedBinding` whose effective digest covers everything it resolves to (so
   changing an agent changes exactly the bindings using it).

Problems are data (`errors.Issue` with file:line:col), never exceptions. A binding whose
Context is missing (or that names none) is an error: a binding never runs "without
restrictions".

Pure: no I/O, no clock, no logging; the only state is the caller-owned `ParseCache` memo.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from aofd import errors, settings
from aofd.plan import extract, persistent, registry, substitute
from aofd.resources import ids, snapshot
from aofd.resources.kinds import base as kinds_base

LoadedResource = kinds_base.LoadedResource
Kind = ids.Kind
_Issue = errors.Issue  # `DesiredState.errors` shadows the module name inside the class
Loc = tuple[str | int, ...]

ALL_KINDS: frozenset[Kind] = frozenset(Kind)


# --- inputs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SourceView:
    """One source as the planner sees it: its name, the kinds it may define, its snapshot."""

    name: str
    kinds: frozenset[Kind]
    snapshot: snapshot.Snapshot


# --- what a file yields (cached) ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CacheStats:
    """File parses served from the memo (or skipped as unchanged), parses done, files held."""

    hits: int
    misses: int
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    """What changed since the previous build of the same cache, for `diff.compute`'s fast path.

    `keys` may differ from the state whose maps are `base_digests`/`base_bindings`; every other
    key's digest (and binding digest) is the same. Valid only against that exact base.
    """

    base_digests: Mapping[ids.ResourceKey, ids.Digest]
    base_bindings: Mapping[str, ResolvedBinding]
    keys: frozenset[ids.ResourceKey]


class ParseCache:
    """Memo of parsed + validated files by `(path, blob, strict)`, and the last build's registry.

    With the registry of the previous build, a new build applies only the files that changed
    (`aofd.plan.registry`), and a no-op revision costs a comparison of blob ids. Owned by one
    caller (the reconcile loop); not thread-safe.

    Invariant: after each `build()`, the file memo holds only the files of that build.
    """

    def __init__(self, *, limits: snapshot.Limits = snapshot.DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._files: dict[tuple[str, str, bool], extract.ParsedFile] = {}
        self._hits = 0
        self._misses = 0
        self._registry: registry.Registry | None = None
        self._signature: object = None
        self._files_of: dict[str, _Listed] = {}
        self._snapshot_issues: tuple[errors.Issue, ...] = ()
        self._read: tuple[str, ...] = ()
        self._values: tuple[str | None, ...] = ()
        self._last: DesiredState | None = None

    @property
    def stats(self) -> CacheStats:
        """Hits and misses since creation, and how many files are held."""
        return CacheStats(self._hits, self._misses, len(self._files))

    def parsed(self, path: str, blob: str, content: bytes, *, strict: bool) -> extract.ParsedFile:
        """The parsed file, from the memo when `(path, blob, strict)` was seen before."""
        key = (path, blob, strict)
        found = self._files.get(key)
        if found is not None:
            self._hits += 1
            return found
        self._misses += 1
        result = extract.parse_file(path, content, strict=strict, limits=self.limits)
        self._files[key] = result
        return result

    def _forget(self) -> None:
        self._registry = None
        self._last = None


ResolvedBinding = registry.ResolvedBinding
binding_id = registry.binding_id
find_cycles = registry.find_cycles
Entry = extract.Entry
ParsedFile = extract.ParsedFile
parse_file = extract.parse_file


# --- outputs --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DesiredState:
    """What the sources say should run at one composite revision (models after substitution)."""

    revision: str
    sources: Mapping[str, ids.Revision]
    resources: Mapping[ids.ResourceKey, LoadedResource]
    digests: Mapping[ids.ResourceKey, ids.Digest]
    bindings: Mapping[str, ResolvedBinding]
    issues: tuple[errors.Issue, ...]
    origins: Mapping[ids.ResourceKey, str] = dataclasses.field(default_factory=dict)
    edges: Mapping[ids.ResourceKey, tuple[ids.ResourceKey, ...]] = dataclasses.field(default_factory=dict)
    delta: Delta | None = dataclasses.field(default=None, compare=False, repr=False)
    users: Mapping[ids.ResourceKey, frozenset[ids.ResourceKey]] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )
    """Key -> the keys of the resolved bindings that reach it (themselves included); `build()`
    keeps it, a state made another way may leave it None (then `users_of` scans the bindings)."""

    @property
    def ok(self) -> bool:
        """True when no issue is an error (warnings allowed)."""
        return not any(i.is_error for i in self.issues)

    @property
    def errors(self) -> tuple[_Issue, ...]:
        return tuple(i for i in self.issues if i.is_error)

    @property
    def warnings(self) -> tuple[_Issue, ...]:
        return tuple(i for i in self.issues if not i.is_error)

    def of_kind(self, kind: Kind) -> tuple[LoadedResource, ...]:
        """The resources of one kind, in name order."""
        return tuple(sorted((r for k, r in self.resources.items() if k.kind is kind), key=lambda r: r.key))

    def get(self, kind: Kind, name: str, namespace: str = ids.DEFAULT_NAMESPACE) -> LoadedResource | None:
        return self.resources.get(ids.ResourceKey(kind, namespace, name))

    def binding_for(self, key: ids.ResourceKey) -> ResolvedBinding | None:
        return self.bindings.get(binding_id(key))

    def users_of(self, key: ids.ResourceKey) -> tuple[ResolvedBinding, ...]:
        """The bindings that reach `key` (themselves included), in key order."""
        if self.users is None:
            return tuple(
                sorted((b for b in self.bindings.values() if key == b.key or key in b.uses), key=_by_key)
            )
        return tuple(self.bindings[binding_id(k)] for k in sorted(self.users.get(key, ())))

    @classmethod
    def empty(cls) -> DesiredState:
        return cls(revision="", sources={}, resources={}, digests={}, bindings={}, issues=())


def _by_key(binding: ResolvedBinding) -> ids.ResourceKey:
    return binding.key


def composite_revision(sources: Mapping[str, ids.Revision]) -> str:
    """`main@3f2a9c1+secrets@9b71e02`: each source's revision, shortened, in source order."""
    return "+".join(f"{name}@{short_revision(rev)}" for name, rev in sources.items())


def short_revision(revision: str) -> str:
    """A git commit id to 7 characters, a `sha256:` content digest to 12 hex digits."""
    if revision.startswith("sha256:"):
        return revision[7:19]
    if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", revision):
        return revision[:7]
    return revision


# --- build ----------------------------------------------------------------------------------


def build(
    views: Sequence[SourceView],
    *,
    variables: Mapping[str, str],
    allow: Sequence[str] = settings.DEFAULT_SUBSTITUTION_ALLOW,
    undefined: substitute.Undefined = "error",
    strict: bool = False,
    cache: ParseCache | None = None,
    digest_key: bytes | None = None,
) -> DesiredState:
    """Build the desired state of all sources' snapshots.

    Args:
        views: the sources in config order (their names and allowed kinds) with their snapshots.
        variables: values for `${VAR}` in secret-bearing fields; only names the allow-list
            permits are ever read from it.
        allow: glob patterns of substitutable variable names.
        undefined: severity of an undefined variable ("error" for the daemon, "warning" for validate).
            "ignore" (the admin dry run) reports nothing and looks nothing up.
        strict: unknown keys are errors everywhere (not only in Contexts).
        cache: memo shared between builds; pass the same one every time for incremental builds.
        digest_key: the install's digest key: the digest of a resource holding a secret-bearing
            value is an HMAC under it; without one, that digest covers the resource with every
            secret-bearing value masked (`extract.public_model`), never the value itself.

    Returns:
        The desired state; `ok` is False when any issue is an error.
    """
    cache = cache if cache is not None else ParseCache()
    sources = MappingProxyType({v.name: v.snapshot.revision for v in views})
    revision = composite_revision(sources)
    policy = substitute.Policy(variables=variables, allow=tuple(allow), undefined=undefined)
    signature = (
        tuple((v.name, v.kinds, v.snapshot.display_root) for v in views),
        policy.allow,
        undefined,
        strict,
        digest_key,
    )
    snapshot_issues = tuple(i for v in views for i in v.snapshot.issues)
    reg = cache._registry
    reusable = (
        reg is not None
        and not reg.has_duplicates
        and cache._signature == signature
        and cache._values == _values(cache._read, policy)
    )
    last = cache._last
    changes = _file_changes(cache._files_of, views) if reusable and last is not None else None
    if (
        changes is not None
        and last is not None
        and not changes.files
        and snapshot_issues == cache._snapshot_issues
    ):
        # A no-op revision: same files, same variables; only the revision stamps change.
        cache._hits += changes.same
        cache._files_of = changes.listed
        state = dataclasses.replace(
            last,
            revision=revision,
            sources=sources,
            delta=Delta(last.digests, last.bindings, frozenset()),
        )
        cache._last = state
        return state

    delta_keys: frozenset[ids.ResourceKey] | None = None
    if changes is not None and reg is not None:
        cache._hits += changes.same
        try:
            delta_keys = _apply_changes(reg, views, changes, cache, strict)
        except registry.Restart:
            delta_keys = None
    if delta_keys is None:
        reg = _full(views, policy, cache, strict, digest_key)
    assert reg is not None
    cache._registry = reg
    cache._signature = signature
    cache._files_of = (
        changes.listed if changes is not None else {v.name: _Listed.of(v.snapshot.files) for v in views}
    )
    cache._snapshot_issues = snapshot_issues
    cache._read = reg.read_variables()
    cache._values = _values(cache._read, policy)
    base = last if delta_keys is not None and last is not None else None
    resources, digests, bindings, origins, edges, users = _maps(reg, base)
    state = DesiredState(
        revision=revision,
        sources=sources,
        resources=resources,
        digests=digests,
        bindings=bindings,
        issues=reg.issues(snapshot_issues),
        origins=origins,
        edges=edges,
        delta=(
            Delta(last.digests, last.bindings, delta_keys)
            if delta_keys is not None and last is not None
            else None
        ),
        users=users,
    )
    cache._last = state
    return state


_Maps = tuple[
    "persistent.PMap[ids.ResourceKey, LoadedResource]",
    "persistent.PMap[ids.ResourceKey, ids.Digest]",
    "persistent.PMap[str, ResolvedBinding]",
    "persistent.PMap[ids.ResourceKey, str]",
    "persistent.PMap[ids.ResourceKey, tuple[ids.ResourceKey, ...]]",
    "persistent.PMap[ids.ResourceKey, frozenset[ids.ResourceKey]]",
]


def _maps(reg: registry.Registry, base: DesiredState | None) -> _Maps:
    """The state's maps: from `base`'s, updated at the keys the last `apply()` touched (sharing
    every untouched bucket), or (no usable base) from the whole registry."""
    users = reg.users
    PMap = persistent.PMap
    if (
        base is not None
        and isinstance(base.resources, PMap)
        and isinstance(base.digests, PMap)
        and isinstance(base.bindings, PMap)
        and isinstance(base.origins, PMap)
        and isinstance(base.edges, PMap)
        and isinstance(base.users, PMap)
    ):
        touched = reg.touched
        changes = persistent.changes_of
        bound = {binding_id(k) for k in touched if k.kind is Kind.BINDING}
        return (
            base.resources.updated(changes(touched, reg.resources)),
            base.digests.updated(changes(touched, reg.digests)),
            base.bindings.updated(changes(bound, reg.bindings)),
            base.origins.updated(changes(touched, reg.origins)),
            base.edges.updated(changes(touched, reg.edges)),
            base.users.updated(
                {k: frozenset(users[k]) if k in users else persistent.REMOVE for k in touched}
            ),
        )
    return (
        persistent.PMap(reg.resources),
        persistent.PMap(reg.digests),
        persistent.PMap(reg.bindings),
        persistent.PMap(reg.origins),
        persistent.PMap(reg.edges),
        persistent.PMap((k, frozenset(v)) for k, v in users.items()),
    )


def _full(
    views: Sequence[SourceView],
    policy: substitute.Policy,
    cache: ParseCache,
    strict: bool,
    digest_key: bytes | None,
) -> registry.Registry:
    """A registry built from nothing: every file of every view, in order."""
    reg = registry.Registry(
        sources=[registry.Source(v.name, v.kinds) for v in views], policy=policy, digest_key=digest_key
    )
    added: list[tuple[registry.FileId, extract.ParsedFile]] = []
    live: set[tuple[str, str, bool]] = set()
    for view in views:
        snap = view.snapshot
        for path, file in snap.files.items():
            shown = snap.display_path(path)
            live.add((shown, file.blob, strict))
            added.append(((view.name, path), cache.parsed(shown, file.blob, file.content, strict=strict)))
    reg.apply(removed=(), added=added)
    if len(cache._files) != len(live):
        cache._files = {k: v for k, v in cache._files.items() if k in live}
    return reg


@dataclasses.dataclass(frozen=True, slots=True)
class _FileChanges:
    """The files whose blob differs from the last build's: `(view, path, old blob, new file)`;
    how many did not change; each view's files as listed for the next comparison."""

    files: tuple[tuple[str, str, str | None, snapshot.SourceFile | None], ...]
    same: int
    listed: dict[str, _Listed]


@dataclasses.dataclass(frozen=True, slots=True)
class _Listed:
    """A view's files, with its paths and file objects listed once (compared at C speed)."""

    files: Mapping[str, snapshot.SourceFile]
    paths: list[str]
    objects: list[snapshot.SourceFile]

    @classmethod
    def of(cls, files: Mapping[str, snapshot.SourceFile]) -> _Listed:
        return cls(files, list(files), list(files.values()))


def _file_changes(last: Mapping[str, _Listed], views: Sequence[SourceView]) -> _FileChanges:
    """What changed per view since the last build (see `changed_files`). The same files object
    costs nothing; the same files in new objects, a comparison of two lists of pointers."""
    found: list[tuple[str, str, str | None, snapshot.SourceFile | None]] = []
    same = 0
    listed: dict[str, _Listed] = {}
    for view in views:
        name = view.name
        new = view.snapshot.files
        before = last.get(name)
        if before is not None and before.files is new:
            listed[name] = before
            same += len(new)
            continue
        now = listed[name] = _Listed.of(new)
        if before is not None and now.paths == before.paths and now.objects == before.objects:
            same += len(new)
            continue
        old = before.files if before is not None else {}
        changed, removed = changed_files(old, new)
        found.extend((name, path, old[path].blob if path in old else None, new[path]) for path in changed)
        found.extend((name, path, old[path].blob, None) for path in removed)
        same += len(new) - len(changed)
    return _FileChanges(tuple(found), same, listed)


def changed_files(
    old: Mapping[str, snapshot.SourceFile], new: Mapping[str, snapshot.SourceFile]
) -> tuple[list[str], list[str]]:
    """The paths of `new` whose blob differs from (or is missing in) `old`, and the paths gone.

    Sources hand over the same `SourceFile` object for a file they did not re-read, so when the
    paths are those of last time (in the same order) only the entries whose object changed are
    compared, found at C speed; otherwise every path is compared by blob.
    """
    if new is old:
        return [], []
    candidates: Iterable[str]
    removed: list[str] = []
    if len(new) == len(old) and list(new) == list(old):
        if list(new.values()) == list(old.values()):  # the same objects: a pointer comparison each
            return [], []
        candidates = itertools.compress(new, map(operator.is_not, new.values(), old.values()))
    else:
        candidates = new
        removed = sorted(old.keys() - new.keys())
    changed = []
    for path in candidates:
        before = old.get(path)
        if before is None or before.blob != new[path].blob:
            changed.append(path)
    return changed, removed


def _apply_changes(
    reg: registry.Registry,
    views: Sequence[SourceView],
    changes: _FileChanges,
    cache: ParseCache,
    strict: bool,
) -> frozenset[ids.ResourceKey]:
    """Apply the files that changed since the last build; returns the keys that may differ."""
    snaps = {v.name: v.snapshot for v in views}
    removed: list[registry.FileId] = []
    added: list[tuple[registry.FileId, extract.ParsedFile]] = []
    for name, path, old_blob, file in changes.files:
        snap = snaps[name]
        if old_blob is not None:
            removed.append((name, path))
            cache._files.pop((snap.display_path(path), old_blob, strict), None)
        if file is not None:
            added.append(
                ((name, path), cache.parsed(snap.display_path(path), file.blob, file.content, strict=strict))
            )
    return reg.apply(removed=removed, added=added)


def _values(names: Sequence[str], policy: substitute.Policy) -> tuple[str | None, ...]:
    """The values (or absence) of the variables a build read: reusing it needs them unchanged."""
    return tuple(policy.variables.get(n) if policy.allows(n) else None for n in names)
