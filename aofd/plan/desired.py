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
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from aofd import errors, settings
from aofd.plan import extract, registry, substitute
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
        self._blobs: dict[str, dict[str, str]] = {}
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
        """The bindings that reach `key` (themselves included)."""
        return tuple(b for b in self.bindings.values() if key == b.key or key in b.uses)

    @classmethod
    def empty(cls) -> DesiredState:
        return cls(revision="", sources={}, resources={}, digests={}, bindings={}, issues=())


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
    blobs = {v.name: {p: f.blob for p, f in v.snapshot.files.items()} for v in views}
    snapshot_issues = tuple(i for v in views for i in v.snapshot.issues)
    reg = cache._registry
    reusable = (
        reg is not None
        and not reg.has_duplicates
        and cache._signature == signature
        and cache._values == _values(cache._read, policy)
    )
    last = cache._last
    if reusable and last is not None and blobs == cache._blobs and snapshot_issues == cache._snapshot_issues:
        # A no-op revision: same files, same variables; only the revision stamps change.
        cache._hits += sum(len(b) for b in blobs.values())
        state = dataclasses.replace(
            last,
            revision=revision,
            sources=sources,
            delta=Delta(last.digests, last.bindings, frozenset()),
        )
        cache._last = state
        return state

    delta_keys: frozenset[ids.ResourceKey] | None = None
    if reusable and reg is not None and last is not None:
        try:
            delta_keys = _apply_changes(reg, views, blobs, cache, strict)
        except registry.Restart:
            delta_keys = None
    if delta_keys is None:
        reg = _full(views, policy, cache, strict, digest_key)
    assert reg is not None
    cache._registry = reg
    cache._signature = signature
    cache._blobs = blobs
    cache._snapshot_issues = snapshot_issues
    cache._read = reg.read_variables()
    cache._values = _values(cache._read, policy)
    state = DesiredState(
        revision=revision,
        sources=sources,
        resources=MappingProxyType(dict(reg.resources)),
        digests=MappingProxyType(dict(reg.digests)),
        bindings=MappingProxyType(dict(reg.bindings)),
        issues=reg.issues(snapshot_issues),
        origins=MappingProxyType(dict(reg.origins)),
        edges=MappingProxyType(dict(reg.edges)),
        delta=(
            Delta(last.digests, last.bindings, delta_keys)
            if delta_keys is not None and last is not None
            else None
        ),
    )
    cache._last = state
    return state


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


def _apply_changes(
    reg: registry.Registry,
    views: Sequence[SourceView],
    blobs: Mapping[str, Mapping[str, str]],
    cache: ParseCache,
    strict: bool,
) -> frozenset[ids.ResourceKey]:
    """Apply the files that changed since the last build; returns the keys that may differ."""
    removed: list[registry.FileId] = []
    added: list[tuple[registry.FileId, extract.ParsedFile]] = []
    for view in views:
        old = cache._blobs.get(view.name, {})
        new = blobs[view.name]
        if old == new:
            cache._hits += len(new)
            continue
        snap = view.snapshot
        for path, blob in old.items():
            if new.get(path) != blob:
                removed.append((view.name, path))
                cache._files.pop((snap.display_path(path), blob, strict), None)
        for path, blob in new.items():
            if old.get(path) == blob:
                cache._hits += 1
                continue
            file = snap.files[path]
            added.append(
                ((view.name, path), cache.parsed(snap.display_path(path), blob, file.content, strict=strict))
            )
    return reg.apply(removed=removed, added=added)


def _values(names: Sequence[str], policy: substitute.Policy) -> tuple[str | None, ...]:
    """The values (or absence) of the variables a build read: reusing it needs them unchanged."""
    return tuple(policy.variables.get(n) if policy.allows(n) else None for n in names)
