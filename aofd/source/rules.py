"""Naming rules and content caps shared by every reader of source trees (directory and git).

Owns: which names are candidate resource files (`*.yaml`, `*.yml`), which are hidden or
editor temp files, and the running tally of the caps in `aofd.resources.snapshot.Limits`.
Pure: no I/O, no clock, no third-party imports.
"""

from __future__ import annotations

import dataclasses

from aofd.errors import Issue
from aofd.resources import snapshot

YAML_SUFFIXES = (".yaml", ".yml")

# vim probes a directory's writability with a file literally named 4913.
_EDITOR_TEMP_NAMES = frozenset({"4913"})
_EDITOR_TEMP_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig")


def is_hidden(name: str) -> bool:
    """Dot files and dot dirs (`.git`, `.aofd`, `.#x` lock files) are never part of a source."""
    return name.startswith(".")


def is_editor_temp(name: str) -> bool:
    """Editor droppings: `.#x` locks, `x~` backups, `.x.swp` swap files, vim's `4913` probe."""
    return (
        name.startswith(".#")
        or name in _EDITOR_TEMP_NAMES
        or name.endswith(_EDITOR_TEMP_SUFFIXES)
        or (name.startswith("#") and name.endswith("#"))
    )


def is_ignored(name: str) -> bool:
    """Names skipped before anything else is looked at (not even their type)."""
    return is_hidden(name) or is_editor_temp(name)


def is_candidate(name: str) -> bool:
    """A resource file: not ignored and ending in `.yaml` or `.yml`."""
    return not is_ignored(name) and name.endswith(YAML_SUFFIXES)


def error(path: str, message: str, code: str) -> Issue:
    """An issue about a whole file (no line known)."""
    return Issue(path=path, line=0, col=0, severity="error", message=message, code=code)


@dataclasses.dataclass(slots=True)
class Budget:
    """Running tally of one tree read against `Limits`; `admit` says whether a file may be read.

    Invariant: `files` and `total_bytes` count only admitted files; once `exhausted`, nothing
    more is admitted and exactly one issue said why.
    """

    limits: snapshot.Limits
    files: int = 0
    total_bytes: int = 0
    exhausted: bool = False

    def admit(self, display: str, size: int) -> Issue | None:
        """Admit a file of `size` bytes, or return the issue that refuses it."""
        if self.exhausted:
            return None  # already reported once; caller skips silently
        if size > self.limits.max_file_bytes:
            return error(
                display,
                f"file is {size} bytes, over the {self.limits.max_file_bytes}-byte cap; not read"
                f" (raise repo_limits.max_file_bytes in the daemon config)",
                "file-too-large",
            )
        if self.files + 1 > self.limits.max_files:
            self.exhausted = True
            return error(
                display,
                f"more than {self.limits.max_files} resource files; the rest of the tree is not read"
                f" (raise repo_limits.max_files in the daemon config)",
                "too-many-files",
            )
        if self.total_bytes + size > self.limits.max_tree_bytes:
            self.exhausted = True
            return error(
                display,
                f"resource files total over {self.limits.max_tree_bytes} bytes; the rest is not read"
                f" (raise repo_limits.max_tree_bytes in the daemon config)",
                "tree-too-large",
            )
        self.files += 1
        self.total_bytes += size
        return None

    def release(self, size: int) -> None:
        """Give back an admitted file (it is being read again)."""
        self.files -= 1
        self.total_bytes -= size

    def adjust(self, expected: int, actual: int) -> None:
        """Correct the tally when a file's size changed between stat and read."""
        self.total_bytes += actual - expected
