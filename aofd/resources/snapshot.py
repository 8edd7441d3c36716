"""Immutable, revision-stamped snapshots of a source's files.

A source (git repo, watched directory) produces a `Snapshot`: the revision and, for every
YAML file under the source's path, its bytes and a blob id. The blob id is the git blob
hash (`sha1("blob <len>\\0" + bytes)`), computed the same way for directories, so the
parse cache can reuse a file's parsed form whenever the id did not change, whichever kind
of source it came from.

Also home of `Limits`: the caps on hostile input shared by every reader of repo content.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from aofd.errors import Issue
from aofd.resources.ids import Revision

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Caps on repository content (RELIABILITY.md section 4). Exceeding one is an issue, never a crash."""

    max_file_bytes: int = 1 * MiB
    max_scalar_bytes: int = 1 * MiB
    max_depth: int = 64
    max_files: int = 10_000
    max_tree_bytes: int = 64 * MiB
    max_nodes_per_file: int = 100_000


DEFAULT_LIMITS = Limits()


def blob_id(content: bytes) -> str:
    """The git blob id of `content` (what `git hash-object` prints)."""
    header = b"blob %d\0" % len(content)
    return hashlib.sha1(header + content, usedforsecurity=False).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a snapshot: repo-relative POSIX path, content and blob id."""

    path: str
    content: bytes
    blob: str

    @classmethod
    def of(cls, path: str, content: bytes) -> SourceFile:
        return cls(path, content, blob_id(content))


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What one source says at one revision.

    `files` holds only candidate resource files (`*.yaml`, `*.yml`, not hidden).
    `issues` are problems the source found while reading (a symlink, a file over the cap);
    the planner reports them like any other error in the revision.
    `display_root` is how paths are shown to users (a directory path, or `git:<name>`).
    `provenance` is set by a git source that verifies signatures: who signed the revision, with
    which key (`signer`, `fingerprint`, ...); the `config.applied` audit record carries it.
    """

    source: str
    revision: Revision
    files: Mapping[str, SourceFile]
    issues: tuple[Issue, ...] = ()
    display_root: str = ""
    provenance: Mapping[str, str] | None = None

    @classmethod
    def build(
        cls,
        *,
        source: str,
        files: Mapping[str, SourceFile],
        revision: Revision | None = None,
        issues: tuple[Issue, ...] = (),
        display_root: str = "",
    ) -> Snapshot:
        frozen = MappingProxyType(dict(sorted(files.items())))
        return cls(
            source=source,
            revision=revision if revision is not None else tree_digest(frozen),
            files=frozen,
            issues=issues,
            display_root=display_root,
        )

    def display_path(self, path: str) -> str:
        if not self.display_root:
            return path
        return f"{self.display_root.rstrip('/')}/{path}"


def tree_digest(files: Mapping[str, SourceFile]) -> Revision:
    """Content digest of a set of files: the revision of a directory source."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
        h.update(files[path].blob.encode())
        h.update(b"\n")
    return Revision("sha256:" + h.hexdigest()[:16])


def merged_files(
    previous: Mapping[str, SourceFile], changed: Mapping[str, SourceFile], removed: Iterable[str]
) -> Mapping[str, SourceFile]:
    """`previous` (sorted by path) with `changed` put in and `removed` taken out, still sorted.

    What an incremental read hands over: unchanged entries are the previous `SourceFile`
    objects; when nothing changes, `previous` itself is returned (the planner then sees the
    very same mapping object).
    """
    gone = [path for path in removed if path in previous and path not in changed]
    fresh = {path: f for path, f in changed.items() if previous.get(path) is not f}
    if not gone and not fresh:
        return previous
    files = dict(previous)
    for path in gone:
        del files[path]
    if all(path in files for path in fresh):
        files.update(fresh)  # replacing values keeps the order
        return MappingProxyType(files)
    files.update(fresh)
    return MappingProxyType(dict(sorted(files.items())))
