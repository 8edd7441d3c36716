"""`PMap`: an update shares what it did not change and leaves the map it came from as it was."""

from __future__ import annotations

import random

from aofd.plan import persistent


def test_updates_match_a_dict_and_leave_the_old_map_alone() -> None:
    rng = random.Random(7)
    model: dict[int, str] = {i: f"v{i}" for i in range(2_000)}
    current = persistent.PMap(model)
    for _ in range(200):
        before, before_items = current, dict(current.items())
        changes: dict[int, str | object] = {}
        for _ in range(rng.randrange(0, 6)):
            key = rng.randrange(2_500)
            changes[key] = persistent.REMOVE if rng.random() < 0.4 else f"w{rng.random()}"
        current = current.updated(changes)  # type: ignore[arg-type]
        for key, value in changes.items():
            if value is persistent.REMOVE:
                model.pop(key, None)
            else:
                model[key] = value  # type: ignore[assignment]
        assert model == dict(current.items())
        assert len(model) == len(current)
        assert current == model
        assert before_items == dict(before.items()), "the map an update came from is unchanged"
    assert 2_600 not in current
    assert current.get(2_600) is None
    assert "x" not in current


def test_an_update_copies_only_the_buckets_it_touches() -> None:
    base = persistent.PMap({i: i for i in range(100_000)})
    new = base.updated({5: -5})
    shared = sum(a is b for a, b in zip(base._buckets, new._buckets, strict=True))
    assert persistent.BUCKETS - 1 == shared
    assert (5, -5) == (base[5], new[5])
    assert base.updated({}) is base
