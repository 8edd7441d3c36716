"""The resolved registry, maintained incrementally from file deltas; pure.

This module owns the cross-resource half of the desired state: source kind policy,
duplicates, `${VAR}` substitution results, reference resolution (edges, missing and
wrong-kind references, cycles), and the `ResolvedBinding`s with their effective digests.

A `Registry` lives in the caller's `ParseCache` between builds. `apply()` takes the files
that went away and the files that arrived and updates only what they can affect:

- the resources of those files (re-substituted),
- the resources referring to a name that appeared or disappeared (`dependents`, `dangling`),
- the bindings that reach any of those (`users`: key -> bindings whose closure contains it).

So a one-file push costs that file's parse plus work proportional to what depends on it,
not to the size of the repo. The result equals a full rebuild (a property the tests check);
whenever that could be in doubt (a duplicate key appears, the variables, views or options
change) the caller starts from an empty registry instead.

Invariants, after every `apply()`: `entries`, `resources`, `digests`, `origins`, `names`
describe exactly the accepted resources of the current files; `edges[k]`/`ref_issues[k]`
are those of `k`'s references against the current registry; `dependents[t]` holds every
`k` with `t in edges[k]`; `dangling[(ns, name)]` holds every `k` with an unresolved
reference to that name; `users[k]` holds every resolved binding whose `uses` contains `k`.

No I/O, no clock, no logging.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import hmac
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from aofd import errors
from aofd.plan import extract, substitute
from aofd.resources import ids
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import trigger as trigger_kind

LoadedResource = kinds_base.LoadedResource
Kind = ids.Kind
Key = ids.ResourceKey
FileId = tuple[str, str]
"""`(source name, repo path)`."""


class Restart(Exception):
    """The delta cannot be applied incrementally with the same result as a full build."""


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedBinding:
    """A FlowBinding with everything it resolves to, and the digest of all of it.

    `agents` and `fleets` hold every Agent and AgentFleet reachable from the binding (through
    its flow, the flow's fleets, the trigger's commands, or named directly), by name;
    `uses` is every resource it reaches. `digest` changes when the binding or anything it
    reaches changes, and only then.
    """

    name: str
    key: Key
    binding: LoadedResource
    flow: LoadedResource | None
    agent: LoadedResource | None
    fleet: LoadedResource | None
    context: LoadedResource | None
    trigger: LoadedResource | None
    agents: Mapping[str, LoadedResource]
    fleets: Mapping[str, LoadedResource]
    digest: ids.Digest
    enabled: bool = True
    uses: frozenset[Key] = frozenset()

    @property
    def context_name(self) -> str | None:
        return self.context.name if self.context is not None else None


def binding_id(key: Key) -> str:
    """How bindings are keyed: the name, or `namespace/name` outside `default`."""
    return key.name if key.namespace == ids.DEFAULT_NAMESPACE else f"{key.namespace}/{key.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """What the registry needs of a source: its name and the kinds it may define."""

    name: str
    kinds: frozenset[Kind]


class Registry:
    """The mutable, incrementally maintained registry (see the module docstring's invariants)."""

    def __init__(
        self, *, sources: Sequence[Source], policy: substitute.Policy, digest_key: bytes | None = None
    ) -> None:
        self.sources = tuple(sources)
        self._source_of: dict[str, Source] = {}
        for source in reversed(self.sources):  # the first of a name wins, as a search in order would
            self._source_of[source.name] = source
        self.policy = policy
        self.digest_key = digest_key
        self.incremental = False
        """False while the first (full) delta is applied: duplicates are then reported, not restarted."""
        self.has_duplicates = False
        self.file_keys: dict[FileId, tuple[Key, ...]] = {}
        self.file_issues: dict[FileId, tuple[errors.Issue, ...]] = {}
        self.entries: dict[Key, extract.Entry] = {}
        self.origins: dict[Key, str] = {}
        self.names: dict[tuple[str, str], list[Kind]] = {}
        self.resources: dict[Key, LoadedResource] = {}
        self.digests: dict[Key, ids.Digest] = {}
        self.subst_issues: dict[Key, tuple[errors.Issue, ...]] = {}
        self.read: dict[Key, tuple[str, ...]] = {}
        self.edges: dict[Key, tuple[Key, ...]] = {}
        self.ref_issues: dict[Key, tuple[errors.Issue, ...]] = {}
        self.dependents: dict[Key, set[Key]] = {}
        self.dangling: dict[tuple[str, str], set[Key]] = {}
        self.upward: dict[Key, tuple[Key, ...]] = {}
        self.bindings: dict[str, ResolvedBinding] = {}
        self.binding_issues: dict[Key, tuple[errors.Issue, ...]] = {}
        self.unresolved: set[Key] = set()
        self.users: dict[Key, set[Key]] = {}
        self.trigger_paths: dict[str, set[Key]] = {}
        """`config.path` -> the enabled Triggers serving it (two or more is an error)."""
        self.touched: set[Key] = set()
        """The keys whose entry in any of the maps above may have changed in the last `apply()`."""

    # -- the delta -----------------------------------------------------------------------------

    def apply(
        self,
        *,
        removed: Iterable[FileId],
        added: Iterable[tuple[FileId, extract.ParsedFile]],
    ) -> frozenset[Key]:
        """Take files away and add parsed files; returns every key whose compared digest may differ.

        Raises:
            Restart: a duplicate key appeared; only a full build orders duplicates correctly.
        """
        dirty: set[Key] = set()
        gone: set[Key] = set()
        self.touched = set()
        for file_id in removed:
            self.file_issues.pop(file_id, None)
            for key in self.file_keys.pop(file_id, ()):
                self._remove(key)
                dirty.add(key)
                gone.add(key)
        appeared: set[Key] = set()
        for file_id, parsed in added:
            self._add_file(file_id, parsed, dirty, appeared)
        changed_existence = (gone - appeared) | (appeared - gone)

        # References to re-resolve: the dirty keys themselves, whatever referred to a key that
        # appeared or disappeared, and (when names changed) every still-dangling reference,
        # whose message (wrong kind, did-you-mean) depends on the names around.
        rescan = {k for k in dirty if k in self.entries}
        dependents, dangling = self.dependents, self.dangling
        for key in changed_existence:
            referrers = dependents.get(key)
            if referrers:
                rescan |= referrers
            waiting = dangling.get((key.namespace, key.name))
            if waiting:
                rescan |= waiting
        if changed_existence:
            rescan |= {k for k, issues in self.ref_issues.items() if issues}
        for key in rescan:
            if key in self.entries:
                self._resolve(key)

        # Bindings to recompute: those touched, those reaching anything touched, and those
        # that did not resolve last time (a fix elsewhere may resolve them now).
        touched = dirty | rescan
        again: set[Key] = {k for k in touched if k.kind is Kind.BINDING}
        users = self.users
        for key in touched:
            using = users.get(key)
            if using:
                again |= using
        again |= self.unresolved
        for key in again:
            self._forget_binding(key)
        for key in again:
            if key in self.entries:
                self._bind(key)
        self.incremental = True
        self.touched |= dirty | rescan | again
        return frozenset(dirty | again)

    def _add_file(
        self, file_id: FileId, parsed: extract.ParsedFile, dirty: set[Key], appeared: set[Key]
    ) -> None:
        source = self._source_of[file_id[0]]
        issues = list(parsed.issues)
        keys: list[Key] = []
        for entry in parsed.entries:
            resource = entry.resource
            key = resource.key
            if key.kind not in source.kinds:
                issues.append(_kind_not_allowed(resource, source, self.sources))
                continue
            if key in self.entries:
                if self.incremental:
                    raise Restart
                self.has_duplicates = True
                first = self.entries[key].resource
                issues.append(duplicate_issue(resource, first, source.name, self.origins[key]))
                continue
            self.entries[key] = entry
            self.origins[key] = source.name
            self.names.setdefault((key.namespace, key.name), []).append(key.kind)
            self._substitute(key, entry)
            keys.append(key)
            dirty.add(key)
            appeared.add(key)
        self.file_keys[file_id] = tuple(keys)
        if issues:
            self.file_issues[file_id] = tuple(issues)

    def _remove(self, key: Key) -> None:
        self._unresolve(key)  # first: it reads the entry's references
        self.entries.pop(key, None)
        self.origins.pop(key, None)
        kinds = self.names.get((key.namespace, key.name))
        if kinds is not None:
            kinds.remove(key.kind)
            if not kinds:
                del self.names[(key.namespace, key.name)]
        self._serve_path(key, None)
        self.resources.pop(key, None)
        self.digests.pop(key, None)
        self.subst_issues.pop(key, None)
        self.read.pop(key, None)

    def _serve_path(self, key: Key, resource: LoadedResource | None) -> None:
        """Keep `trigger_paths` right for `key`, whose resource is now `resource` (None: gone)."""
        if key.kind is not Kind.TRIGGER:
            return
        old = self.resources.get(key)
        for res, add in ((old, False), (resource, True)):
            path = _served_path(res) if res is not None else None
            if path is None:
                continue
            served = self.trigger_paths.setdefault(path, set())
            if add:
                served.add(key)
            else:
                served.discard(key)
                if not served:
                    del self.trigger_paths[path]

    # -- substitution --------------------------------------------------------------------------

    def _substitute(self, key: Key, entry: extract.Entry) -> None:
        if not entry.secrets:
            self._serve_path(key, entry.resource)
            self.resources[key] = entry.resource
            self.digests[key] = self._digest(entry, entry.resource.model)
            return
        policy = self.policy
        resource = entry.resource
        issues: list[errors.Issue] = []
        model: BaseModel = resource.model
        changed = False
        names: list[str] = []
        for field in entry.secrets:
            expansion = substitute.expand(field.text, policy=policy)
            names.extend(expansion.names)
            for problem in expansion.problems:
                issue = errors.Issue(
                    resource.path,
                    field.line,
                    field.col,
                    problem.severity,
                    f"{key}: {field.field}: {problem.message}",
                    problem.code,
                )
                if issue not in issues:  # one text in two model fields (a fallback) is reported once
                    issues.append(issue)
            if policy.undefined != "ignore" and extract.presence_only(field, expansion.value):
                issues.append(
                    errors.Issue(
                        resource.path,
                        field.line,
                        field.col,
                        policy.undefined,
                        f"{key}: {field.field}: expands to an empty value or '*', which would only "
                        "require the header to be present: set the variable, or write '' or '*' "
                        "literally to mean that",
                        "subst-presence-only",
                    )
                )
            if expansion.value != field.text:
                model = extract.replace(model, field.attr, expansion.value)
                changed = True
        if changed:
            assert isinstance(model, kinds_base.ResourceModel)
            resource = dataclasses.replace(resource, model=model)
        self.digests[key] = self._digest(entry, model)
        self._serve_path(key, resource)
        self.resources[key] = resource
        self.read[key] = tuple(names)
        if issues:
            self.subst_issues[key] = tuple(issues)

    def _digest(self, entry: extract.Entry, model: BaseModel) -> ids.Digest:
        """A resource holding a secret-bearing value: HMAC of its substituted form under the
        install's key (a rotated secret changes it; a guess cannot be tested against it).
        Without a key: `entry.digest`, which covers the resource with its secrets masked."""
        if not entry.has_secrets or self.digest_key is None:
            return entry.digest
        return keyed_digest(model, self.digest_key)

    # -- references ----------------------------------------------------------------------------

    def _unresolve(self, key: Key) -> None:
        for target in self.edges.pop(key, ()):
            referrers = self.dependents.get(target)
            if referrers is not None:
                referrers.discard(key)
                if not referrers:
                    del self.dependents[target]
        entry = self.entries.get(key)
        refs = entry.references if entry is not None and self.dangling else ()
        for name in {(key.namespace, ref.name) for ref in refs}:
            waiting = self.dangling.get(name)
            if waiting is not None:
                waiting.discard(key)
                if not waiting:
                    del self.dangling[name]
        self.ref_issues.pop(key, None)
        self.upward.pop(key, None)

    def _resolve(self, key: Key) -> None:
        self._unresolve(key)
        entry = self.entries[key]
        targets: list[Key] = []
        issues: list[errors.Issue] = []
        entries = self.entries
        for ref in entry.references:
            target = None
            for kind in ref.kinds:
                found = entries.get(Key(kind, key.namespace, ref.name))
                if found is not None:
                    # The registry's own key object: later lookups then match by identity.
                    target = found.resource.key
                    break
            if target is None:
                issues.append(self._dangling_issue(entry.resource, ref))
                self.dangling.setdefault((key.namespace, ref.name), set()).add(key)
            elif target not in targets:
                targets.append(target)
        self.edges[key] = tuple(targets)
        dependents = self.dependents
        for target in targets:
            referrers = dependents.get(target)
            if referrers is None:
                dependents[target] = {key}
            else:
                referrers.add(key)
        up = tuple(t for t in targets if t.kind.layer >= key.kind.layer)
        if up:
            self.upward[key] = up
        if issues:
            self.ref_issues[key] = tuple(issues)

    def _dangling_issue(self, resource: LoadedResource, ref: extract.Reference) -> errors.Issue:
        key = resource.key
        expected = ref.kinds[0]
        defined = [k for k in self.names.get((key.namespace, ref.name), ()) if k not in ref.kinds]
        prefix = f"{key}: {ref.field}"
        if defined:
            actual = sorted(defined)[0]
            message = (
                f"{prefix} names {ref.name!r}, which is {extract.article(actual)} {actual.value}, "
                f"not {extract.article(expected)} {' or '.join(k.value for k in ref.kinds)}"
            )
            hint = extract.wrong_kind_hint(ref, actual)
            code = "ref-wrong-kind"
        else:
            message = f"{prefix} refers to {expected.value} {ref.name!r}, which does not exist"
            candidates = sorted(
                {
                    name
                    for (ns, name), kinds in self.names.items()
                    if ns == key.namespace and expected in kinds
                }
            )
            close = difflib.get_close_matches(ref.name, candidates, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            code = "ref-missing"
        if expected is Kind.CONTEXT and key.kind is Kind.BINDING:
            hint += " (the binding will not run: a binding never runs without its Context)"
        return errors.Issue(resource.path, ref.line, ref.col, "error", message + hint + ref.hint, code)

    # -- bindings ------------------------------------------------------------------------------

    def _forget_binding(self, key: Key) -> None:
        old = self.bindings.pop(binding_id(key), None)
        if old is not None:
            self.touched |= old.uses
            for used in old.uses | {key}:
                users = self.users.get(used)
                if users is not None:
                    users.discard(key)
                    if not users:
                        del self.users[used]
        self.binding_issues.pop(key, None)
        self.unresolved.discard(key)

    def _bind(self, key: Key) -> None:
        resource = self.resources[key]
        spec = extract.spec_of(resource)
        if getattr(spec, "context", None) is None:
            line, col = resource.position(("spec",))
            self.binding_issues[key] = (
                errors.Issue(
                    resource.path,
                    line,
                    col,
                    "error",
                    f"{key}: must name a Context (spec.context.name); a binding never runs without "
                    "one, since its Context holds the approval rules, limits and audit settings",
                    "binding-no-context",
                ),
            )
            self.unresolved.add(key)
            return
        reach = closure(key, self.edges)
        if key in self.ref_issues or not self.ref_issues.keys().isdisjoint(reach):
            self.unresolved.add(key)  # reported at the dangling reference
            return
        resources, digests = self.resources, self.digests
        direct = {k.kind: k for k in self.edges.get(key, ())}
        components = sorted([(_KIND_VALUE[k.kind], k.namespace, k.name, digests[k]) for k in (*reach, key)])
        ordered = sorted(reach, key=_key_order)  # as `sorted(reach)`, comparing at C speed
        binding = ResolvedBinding(
            name=key.name,
            key=key,
            binding=resource,
            flow=_pick(resources, direct, Kind.FLOW, spec, "flow"),
            agent=_pick(resources, direct, Kind.AGENT, spec, "agent"),
            fleet=_pick(resources, direct, Kind.FLEET, spec, "fleet"),
            context=_pick(resources, direct, Kind.CONTEXT, spec, "context"),
            trigger=_pick(resources, direct, Kind.TRIGGER, spec, "trigger"),
            agents=MappingProxyType({k.name: resources[k] for k in ordered if k.kind is Kind.AGENT}),
            fleets=MappingProxyType({k.name: resources[k] for k in ordered if k.kind is Kind.FLEET}),
            digest=_effective_digest(components),
            enabled=bool(getattr(spec, "enabled", True)),
            uses=reach,
        )
        self.bindings[binding_id(key)] = binding
        self.touched |= reach
        users = self.users
        for used in (*reach, key):
            using = users.get(used)
            if using is None:
                users[used] = {key}
            else:
                using.add(key)

    # -- results -------------------------------------------------------------------------------

    def issues(self, extra: Iterable[errors.Issue]) -> tuple[errors.Issue, ...]:
        """Every issue of the current state, sorted by place; `extra` are the snapshots' own."""
        collected: list[errors.Issue] = list(extra)
        for group in (self.file_issues, self.subst_issues, self.ref_issues, self.binding_issues):
            for issues in group.values():
                collected.extend(issues)
        collected.extend(self._cycle_issues())
        collected.extend(self._trigger_path_issues())
        return tuple(sorted(set(collected), key=_issue_order))

    def read_variables(self) -> tuple[str, ...]:
        """Every variable name the current resources' secret fields refer to."""
        return tuple(sorted({n for names in self.read.values() for n in names}))

    def _trigger_path_issues(self) -> Iterator[errors.Issue]:
        """Two enabled Triggers serving the same `config.path`: an error at the second, naming the first.

        Reads `trigger_paths`, so it costs the shared paths, not the resources."""
        served: list[tuple[str, LoadedResource]] = [
            (path, self.resources[key])
            for path, keys in self.trigger_paths.items()
            if len(keys) > 1
            for key in keys
        ]
        first: dict[str, LoadedResource] = {}
        for path, resource in sorted(served, key=lambda item: _issue_order_of(item[1])):
            other = first.setdefault(path, resource)
            if other is not resource:
                yield errors.Issue(
                    resource.path,
                    resource.line,
                    resource.col,
                    "error",
                    f"config.path {path!r} is already served by {other.key} at "
                    f"{other.path}:{other.line}:{other.col}",
                    "duplicate",
                )

    def _cycle_issues(self) -> Iterator[errors.Issue]:
        if not self.upward:
            return
        for cycle in find_cycles(self.upward):
            first, second = cycle[0], cycle[1]
            entry = self.entries[first]
            line, col = entry.resource.line, entry.resource.col
            for ref in entry.references:
                if ref.name == second.name and second.kind in ref.kinds:
                    line, col = ref.line, ref.col
                    break
            chain = " -> ".join(str(k) for k in cycle)
            yield errors.Issue(
                entry.resource.path, line, col, "error", f"reference cycle: {chain}", "ref-cycle"
            )


def _served_path(resource: LoadedResource) -> str | None:
    """The `config.path` an enabled Trigger serves, or None."""
    model = resource.model
    if isinstance(model, trigger_kind.Trigger) and model.spec.enabled and model.spec.config.path:
        return model.spec.config.path
    return None


def _pick(
    resources: Mapping[Key, LoadedResource],
    direct: Mapping[Kind, Key],
    kind: Kind,
    spec: Any,
    attr: str,
) -> LoadedResource | None:
    if getattr(spec, attr, None) is None:
        return None
    key = direct.get(kind)
    return resources[key] if key is not None else None


_KIND_VALUE: Mapping[Kind, str] = MappingProxyType({kind: kind.value for kind in Kind})

_key_order = operator.attrgetter("kind", "namespace", "name")
"""A key's sort key: the order of `ResourceKey` itself."""


def closure(key: Key, edges: Mapping[Key, Sequence[Key]]) -> frozenset[Key]:
    """Everything reachable from `key` through `edges` (not `key` itself); cycle-safe."""
    seen: set[Key] = set()
    stack = list(edges.get(key, ()))
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(edges.get(node, ()))
    seen.discard(key)
    return frozenset(seen)


def keyed_digest(model: BaseModel, key: bytes) -> ids.Digest:
    """`hmac-sha256:<hex>` of the canonical form under `key` (the install's digest key)."""
    text = kinds_base.canonical_json(model)
    return ids.Digest("hmac-sha256:" + hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest())


def _effective_digest(components: Iterable[tuple[str, str, str, str]]) -> ids.Digest:
    h = hashlib.sha256()
    for kind, namespace, name, digest in components:
        h.update(f"{kind}/{namespace}/{name}={digest}\n".encode())
    return ids.Digest("sha256:" + h.hexdigest())


effective_digest = _effective_digest
"""A binding's effective digest from its `(kind, namespace, name, digest)` components."""


def find_cycles(edges: Mapping[Key, Sequence[Key]]) -> list[tuple[Key, ...]]:
    """Every cycle one DFS finds, each as `(a, b, ..., a)`; edges down a layer are skipped.

    A reference to a lower layer can never close a cycle, so only references to the same or a
    higher layer are followed: normally none, which makes this free.
    """
    upward = {
        src: [t for t in targets if t.kind.layer >= src.kind.layer]
        for src, targets in edges.items()
        if any(t.kind.layer >= src.kind.layer for t in targets)
    }
    cycles: list[tuple[Key, ...]] = []
    state: dict[Key, int] = {}  # 1 = on the stack, 2 = done
    for root in sorted(upward):
        if root in state:
            continue
        stack: list[tuple[Key, Iterator[Key]]] = [(root, iter(upward.get(root, ())))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            advanced = False
            for target in it:
                mark = state.get(target)
                if mark == 1:
                    cycles.append((*path[path.index(target) :], target))
                elif mark is None:
                    state[target] = 1
                    stack.append((target, iter(upward.get(target, ()))))
                    path.append(target)
                    advanced = True
                    break
            if not advanced:
                state[node] = 2
                stack.pop()
                path.pop()
    return cycles


# --- messages -------------------------------------------------------------------------------


def _kind_not_allowed(resource: LoadedResource, source: Source, sources: Sequence[Source]) -> errors.Issue:
    allowed = ", ".join(sorted(k.value for k in source.kinds)) or "nothing"
    homes = [s.name for s in sources if resource.kind in s.kinds]
    where = f"; {resource.kind.value} resources come from source {_names(homes)}" if homes else ""
    return errors.Issue(
        resource.path,
        resource.line,
        resource.col,
        "error",
        f"{resource.key} is defined in source {source.name!r} ({resource.path}), which may define only "
        f"{allowed}{where}",
        "kind-not-allowed",
    )


def _names(names: Sequence[str]) -> str:
    return " or ".join(repr(n) for n in names)


def duplicate_issue(
    resource: LoadedResource, first: LoadedResource, source: str, first_source: str
) -> errors.Issue:
    """The error for a key defined a second time, at its name, naming where the first one's name is."""
    line, col = _name_position(resource)
    first_line, first_col = _name_position(first)
    where = (
        f"{first.path}:{first_line}:{first_col}"
        if source == first_source
        else f"{first.path}:{first_line}:{first_col} (source {first_source!r})"
    )
    return errors.Issue(
        resource.path,
        line,
        col,
        "error",
        f"{resource.key} is defined twice: here (source {source!r}) and at {where}",
        "duplicate",
    )


def _name_position(resource: LoadedResource) -> tuple[int, int]:
    """Where `metadata.name` is written: under `metadata`, or the top-level `name:` of the flat form."""
    return resource.position(extract._written(resource.doc.data, ("metadata", "name")))


def _issue_order_of(resource: LoadedResource) -> tuple[str, int, int]:
    return (resource.path, resource.line, resource.col)


def _issue_order(issue: errors.Issue) -> tuple[str, int, int, str]:
    return (issue.path, issue.line, issue.col, issue.message)
