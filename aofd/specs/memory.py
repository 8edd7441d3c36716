"""An agent's conversation memory settings, compiled from its `memory` field (pure).

This module owns `MemoryPolicy`, the runtime's view of upstream's `memory` field (AOF-UPSTREAM.md
section 1.2): `in_memory`, `file:<name>`, or `{type, config: {path, max_messages}}`, plus aofd's
`none` (off) and the `config` keys `max_age_seconds` and `max_tokens`. With no `memory` field an
agent remembers, in the daemon's state dir (`store="state"`), so a conversation survives a
restart. `max_context_messages` (the agent's field, upstream default 10) is how many earlier
turns the model is shown; `max_messages` how many are kept.

A `file:` store names a file *inside* the daemon's per-Context memory directory, never a path of
its own: an absolute path or `..` is a problem, so one Context's memory can never be pointed at
another's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from aofd.resources.kinds import agent as agent_kind
from aofd.specs.problems import Problem

Store = Literal["none", "in_memory", "state", "file"]
Loc = tuple[str | int, ...]

DEFAULT_MAX_MESSAGES = 20
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600.0
DEFAULT_MAX_TOKENS = 2000
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_STORES = {
    "none": "none",
    "off": "none",
    "disabled": "none",
    "in_memory": "in_memory",
    "inmemory": "in_memory",
    "memory": "in_memory",
    "file": "file",
    "state": "state",
}


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """Where an agent's conversations live and how much of them it keeps and sees."""

    store: Store = "state"
    file_name: str | None = None
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_context_messages: int = 10
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def enabled(self) -> bool:
        return self.store != "none"


DEFAULT = MemoryPolicy()


def memory_policy(
    spec: agent_kind.MemorySpec | None, max_context_messages: int, loc: Loc
) -> tuple[MemoryPolicy, list[Problem]]:
    """The agent's `MemoryPolicy` (the default when `spec` is None) and what is wrong with it."""
    if spec is None:
        return dataclasses.replace(DEFAULT, max_context_messages=max_context_messages), []
    problems: list[Problem] = []
    at: Loc = (*loc, "memory")
    store = _STORES.get(spec.type.strip().lower().replace("-", "_"))
    if store is None:
        problems.append(
            Problem(
                (*at, "type"),
                f"memory type {spec.type!r} is not one aofd keeps (in_memory, file:<name>, state, none)",
            )
        )
        return DEFAULT, problems
    config = spec.config or agent_kind.MemoryConfig()
    file_name: str | None = None
    if store == "file":
        path = (config.path or "").strip()
        name = path[2:] if path.startswith("./") else path
        if not name:
            store = "state"
        elif not _FILE_NAME.match(name) or name in (".", ".."):
            problems.append(
                Problem(
                    (*at, "config", "path"),
                    f"memory file {path!r} must be a plain file name: aofd keeps memory in its state "
                    "directory, one directory per Context (no paths, no '..')",
                )
            )
        else:
            file_name = name
    policy = MemoryPolicy(
        store=store,  # type: ignore[arg-type]
        file_name=file_name,
        max_messages=config.max_messages or DEFAULT_MAX_MESSAGES,
        max_context_messages=max_context_messages,
        max_age_seconds=float(config.max_age_seconds or DEFAULT_MAX_AGE_SECONDS),
        max_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
    )
    return policy, problems
