"""`Problem`: what a compiler in `aofd.specs` found wrong with one resource, by model path.

Compilers here know models, not files: they say *where in the model* (`loc`, attribute names
as in the pydantic models, e.g. `("spec", "security", "allowed_commands", 2)`) and *what*. The
compile stage (`aofd.plan.compiler`) turns each into an `aofd.errors.Issue` at the file, line and
column where that value is written.
"""

from __future__ import annotations

import dataclasses

from aofd import errors


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One problem at `loc` (a model path); an error unless `severity` says warning."""

    loc: tuple[str | int, ...]
    message: str
    severity: errors.Severity = "error"
    code: str = "invalid"


def shown(text: str, limit: int = 80) -> str:
    """`text` quoted for a message, cut to `limit` characters (a hostile value stays readable)."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
