"""Builders for resources as the planner hands them on, without YAML: `FakeDocument` and `loaded`.

A test that needs a `LoadedResource` (a validated model plus the document it came from) builds
the model with `model_validate` and wraps it with `loaded(kind, model)`; no file is parsed, and
every position points at line 1, column 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from aofd.resources import ids
from aofd.resources.kinds import base as kinds_base

PATH = "test.yaml"
"""The path every built resource claims to come from."""


@dataclasses.dataclass(frozen=True)
class FakeDocument:
    """A `DocumentLike` with no positions: every location is reported at (1, 1)."""

    path: str = PATH
    index: int = 0
    line: int = 1
    col: int = 1
    data: object = None
    positions: Mapping[tuple[str | int, ...], tuple[int, int]] = dataclasses.field(default_factory=dict)

    def position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        return (1, 1)

    def key_position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        return (1, 1)


def loaded(kind: ids.Kind, model: kinds_base.ResourceModel) -> kinds_base.LoadedResource:
    """`model` as a `LoadedResource` of `kind`, named by its metadata, from a `FakeDocument`."""
    key = ids.ResourceKey.of(kind, model.metadata.name)
    return kinds_base.LoadedResource(key=key, model=model, doc=FakeDocument(), path=PATH, line=1, col=1)
