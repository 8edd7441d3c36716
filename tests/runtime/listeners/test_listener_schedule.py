"""Schedule triggers on APScheduler: one run per tick, across a hot swap that edits the schedule."""

from __future__ import annotations

import datetime
import itertools

from aofd.runtime.listeners import schedule
from aofd.testing import resources
from tests.runtime.fakes import harness


def _ticks(rig: harness.Rig) -> list[datetime.datetime]:
    return [datetime.datetime.fromisoformat(m.delivery_id) for _, m in rig.starter.calls]


async def test_schedule_fires_once_per_tick_across_an_edit() -> None:
    """Every-second ticks before and after a swap that edits the trigger are consecutive, none twice, none
    skipped.
    """
    async with harness.Rig(with_scheduler=True) as rig:
        first = resources.trigger("tick", "Schedule", cron="* * * * * *", timezone="UTC")
        await rig.apply([resources.binding("nightly", first, context_name="ops")])
        before = rig.switchboard.current.listeners["tick"]
        await rig.settle(lambda: len(rig.starter.calls) >= 2, timeout=3.0)
        edited = resources.trigger("tick", "Schedule", cron="*/1 * * * * *", timezone="Europe/Berlin")
        await rig.apply([resources.binding("nightly", edited, context_name="ops")])
        after = rig.switchboard.current.listeners["tick"]
        swapped_at = len(rig.starter.calls)
        await rig.settle(lambda: len(rig.starter.calls) >= swapped_at + 2 and not before.running, timeout=3.0)
        job_ids = [job.id for job in rig.hub.scheduler.get_jobs()] if rig.hub else []
    ticks = _ticks(rig)
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
    assert before is not after
    assert not before.running
    assert ({1.0}, ["aofd-schedule:tick"]) == (steps, job_ids)
    assert {"nightly"} == set(rig.starter.bindings)


async def test_schedule_edit_to_a_slower_cron_moves_the_job() -> None:
    """Changing every second to every other second reuses the job id and fires only on even seconds
    afterwards.
    """
    async with harness.Rig(with_scheduler=True) as rig:
        await rig.apply([resources.binding("b", resources.trigger("t", "Schedule", cron="* * * * * *"))])
        await rig.settle(lambda: len(rig.starter.calls) >= 1, timeout=3.0)
        await rig.apply([resources.binding("b", resources.trigger("t", "Schedule", cron="*/2 * * * * *"))])
        swapped_at = len(rig.starter.calls)
        await rig.settle(lambda: len(rig.starter.calls) >= swapped_at + 1, timeout=3.5)
    later = _ticks(rig)[swapped_at:]
    assert later
    assert all(t.second % 2 == 0 for t in later)
    assert len(set(_ticks(rig))) == len(rig.starter.calls)


async def test_duplicate_tick_is_deduped() -> None:
    """The same scheduled fire time delivered twice (old and new owner during a swap) starts one run."""
    async with harness.Rig(with_scheduler=True) as rig:
        await rig.apply([resources.binding("b", resources.trigger("t", "Schedule", cron="0 3 * * *"))])
        listener = rig.switchboard.current.listeners["t"]
        assert isinstance(listener, schedule.ScheduleListener)
        when = datetime.datetime(2030, 1, 1, 3, 0, tzinfo=datetime.UTC)
        await listener.on_tick(when)
        await listener.on_tick(when)
    assert ["b"] == rig.starter.bindings
