"""The exception hierarchy and the `Issue` value type: the bottom layer of aofd.

Errors are sorted by what the loop does next (Flux's Stalling/Waiting/Generic, kopf's
Temporary/Permanent):

- `Temporary` carries `retry_after`: retry later with backoff (a git fetch timed out).
- `Stalled`: nothing will change until a new revision arrives (invalid YAML at this commit).
- `RunFailed`: one flow run cannot go on; the run is recorded as failed, its origin is told,
  and nothing else stops (a node, an agent or a fleet failed).
- anything else deriving from `AofdError` is generic: report it, keep the last good state.

Validation problems are *data*, not exceptions: an `Issue` names a file, a line and a
column, and says what is wrong. Code that checks input returns issues and never raises.

This module imports nothing from aofd.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Severity = Literal["error", "warning"]


class AofdError(Exception):
    """Root of every error aofd raises on purpose."""


class Temporary(AofdError):
    """A recoverable failure: retry after `retry_after` seconds (with backoff)."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stalled(AofdError):
    """Nothing will change until the input changes (a new revision, a new config)."""


class ConfigError(Stalled):
    """The daemon configuration file is invalid; `issues` say where and why."""

    def __init__(self, message: str, issues: tuple[Issue, ...] = ()) -> None:
        super().__init__(message)
        self.issues = issues


class SourceError(Temporary):
    """A source (git remote, watched directory) could not produce a snapshot."""


class RunFailed(AofdError):
    """One flow run cannot go on: it is recorded as failed and its origin is told; the daemon goes on."""


class RunStopped(AofdError):
    """A flow run was stopped on purpose (an Approval node denied or expired): recorded as stopped."""


class NotAccepting(AofdError):
    """The daemon is draining: no new runs start; the event is answered as refused."""


class AuditUnavailable(AofdError):
    """An audit record could not be made durable; the gated action must not run."""


class CoordinatorUnavailable(AofdError):
    """The replicas' coordinator (etcd, `cluster:`) could not answer in time: whatever needed it
    (a delivery claim, a shared approval, a leader's action) must not go ahead. The message says
    what could not be done and never holds credentials."""


class PolicyDenied(AofdError):
    """A Context's guardrails refused an action; `reason` is safe to show the user."""

    def __init__(self, reason: str, *, rule: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Issue:
    """One problem found in user input, pointing at the exact place.

    `line` and `col` are 1-based; 0 means "the whole file" (no position known).
    """

    path: str
    line: int
    col: int
    severity: Severity
    message: str
    code: str = "invalid"

    def format(self) -> str:
        """Render as `FILE:LINE:COL: severity: MESSAGE`, the compiler convention editors parse."""
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "message": self.message,
            "code": self.code,
        }

    @property
    def is_error(self) -> bool:
        return self.severity == "error"
