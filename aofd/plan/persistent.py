"""An immutable mapping whose updates copy only what they change; pure.

This module owns `PMap`, the map type of the desired state's large maps (resources, digests,
bindings, ...). Each revision's `DesiredState` must stay valid while the next one is built (the
applied state is read by the admin API and compared with the next), yet copying 100,000-entry
dicts per revision costs more than the edit. A `PMap` keeps its entries in `BUCKETS` small dicts
chosen by the key's hash; `updated()` copies only the buckets the changed keys fall in, and
shares every other bucket with the map it came from. Reads cost one extra hash and index.

Iteration order is by bucket, then by insertion within a bucket: deterministic for equal
histories, but not insertion order overall (callers that need an order sort).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Generic, TypeVar, cast, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

BUCKETS: Final = 256
_MASK: Final = BUCKETS - 1


class Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Final = Missing()
"""The value that, in `updated()`'s changes, removes a key."""


class PMap(Mapping[K, V], Generic[K, V]):
    """An immutable mapping; `updated(changes)` returns a new one sharing the untouched buckets."""

    __slots__ = ("_buckets", "_len")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        buckets: list[dict[K, V]] = [{} for _ in range(BUCKETS)]
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            buckets[hash(key) & _MASK][key] = value
        self._buckets: tuple[dict[K, V], ...] = tuple(buckets)
        self._len = sum(len(b) for b in buckets)

    @classmethod
    def _of(cls, buckets: tuple[dict[K, V], ...], length: int) -> PMap[K, V]:
        new = cls.__new__(cls)
        new._buckets = buckets
        new._len = length
        return new

    def __getitem__(self, key: K) -> V:
        return self._buckets[hash(key) & _MASK][key]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...
    def get(self, key: K, default: object = None, /) -> object:
        return self._buckets[hash(key) & _MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._buckets[hash(key) & _MASK]
        except TypeError:  # unhashable: never a key
            return False

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        for bucket in self._buckets:
            yield from bucket

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PMap):
            if self._len != other._len:
                return False
            return all(a is b or a == b for a, b in zip(self._buckets, other._buckets, strict=True))
        if isinstance(other, Mapping):
            return len(other) == self._len and all(
                k in self and self[k] == v for k, v in cast("Mapping[K, V]", other).items()
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PMap({dict(self.items())!r})"

    def updated(self, changes: Mapping[K, V | Missing]) -> PMap[K, V]:
        """A new map with `changes` applied (a value of `REMOVE` removes the key); `self` is unchanged.

        Costs the changed keys plus one copy of each bucket they fall in (about len/256 entries).
        """
        if not changes:
            return self
        buckets = list(self._buckets)
        copied: set[int] = set()
        length = self._len
        for key, value in changes.items():
            index = hash(key) & _MASK
            bucket = buckets[index]
            if index not in copied:
                bucket = buckets[index] = dict(bucket)
                copied.add(index)
            if value is REMOVE:
                if key in bucket:
                    del bucket[key]
                    length -= 1
            else:
                if key not in bucket:
                    length += 1
                bucket[key] = cast("V", value)
        return PMap._of(tuple(buckets), length)


def diff(new: PMap[K, V], old: PMap[K, V]) -> Iterator[tuple[K, V | Missing]]:
    """What `old.updated()` needs to become `new`: each key whose value differs (`REMOVE`: gone).

    Costs the buckets the two do not share: little when `new` was updated from `old`.
    """
    for ours, theirs in zip(new._buckets, old._buckets, strict=True):
        if ours is theirs:
            continue
        for key, value in ours.items():
            if key not in theirs:
                yield key, value
            else:
                before = theirs[key]
                if before is not value and before != value:
                    yield key, value
        for key in theirs:
            if key not in ours:
                yield key, REMOVE


def changes_of(keys: Iterable[K], source: Mapping[K, V]) -> dict[K, V | Missing]:
    """`updated()`'s argument that makes a map agree with `source` on `keys`."""
    return {k: source.get(k, REMOVE) for k in keys}


def empty() -> PMap[K, V]:
    """An empty map."""
    return PMap._of(tuple({} for _ in range(BUCKETS)), 0)
