"""Schedule triggers (`type: Schedule`, `cron` + `timezone`) on one APScheduler 3.x scheduler.

Owns

- `ScheduleHub`: the daemon's single `AsyncIOScheduler` and the map job id -> the listener that
  owns the job now. Ticks are observed through `EVENT_JOB_SUBMITTED`, which carries the exact
  *scheduled* fire times; the job function itself does nothing. Each tick is handed to the
  owning listener, which de-duplicates it on `(schedule, trigger, fire time)` in the shared cache.
- `ScheduleListener`: a job id per trigger (`aofd-schedule:<trigger>`). A hot swap that edits a
  schedule reuses the job id: the new listener takes ownership and changes the job's trigger in
  place, keeping a tick that is already due (so nothing is skipped), and the old listener's
  `stop` leaves a job it no longer owns alone (so nothing fires twice).
The cron expression and time zone were parsed by the compile stage (`aofd.specs.cron`); the
listener hands the spec's `CronTrigger` to the scheduler. apscheduler's scheduler is imported
here only. It must not run flows itself: ticks go to the dispatch port.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from aofd.runtime import ports
from aofd.runtime.listeners import base

log = structlog.get_logger()

JOB_PREFIX = "aofd-schedule:"


async def _tick() -> None:
    """The job body: nothing. The submission event (with the scheduled time) does the work."""


class ScheduleHub:
    """The daemon's one scheduler, shared by every Schedule listener of every routing table."""

    def __init__(self, *, misfire_grace_time: float = 30.0) -> None:
        self.scheduler = AsyncIOScheduler(
            timezone=datetime.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_time},
        )
        # Invariant: a job id is in `_owners` exactly while its job exists in the scheduler.
        self._owners: dict[str, ScheduleListener] = {}
        self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        if not self.scheduler.running:
            self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self._owners.clear()

    def owner(self, job_id: str) -> ScheduleListener | None:
        return self._owners.get(job_id)

    def claim(self, job_id: str, listener: ScheduleListener, trigger: CronTrigger) -> None:
        """Make `listener` own `job_id` with `trigger`, moving an existing job without losing a due tick."""
        job = self.scheduler.get_job(job_id)
        if job is None:
            self.scheduler.add_job(_tick, trigger, id=job_id, name=job_id, replace_existing=True)
        else:
            now = datetime.datetime.now(datetime.UTC)
            previous = job.next_run_time
            start_from = min(now, previous) if previous is not None else now
            next_run = trigger.get_next_fire_time(None, start_from)
            self.scheduler.modify_job(job_id, trigger=trigger, next_run_time=next_run)
        self._owners[job_id] = listener

    def release(self, job_id: str, listener: ScheduleListener) -> None:
        """Remove the job if `listener` still owns it (a successor's job is left alone)."""
        if self._owners.get(job_id) is not listener:
            return
        del self._owners[job_id]
        if self.scheduler.get_job(job_id) is not None:
            self.scheduler.remove_job(job_id)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        owner = self._owners.get(event.job_id)
        if owner is None:
            return
        for when in event.scheduled_run_times:
            owner.on_tick(when)


class ScheduleListener(base.Listener):
    """`type: Schedule` triggers."""

    platform = "schedule"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hub = self.deps.scheduler
        if not isinstance(hub, ScheduleHub):
            raise base.ListenerError(f"Trigger {self.trigger_name}: no scheduler is configured")
        self.hub = hub
        schedule = self.spec.schedule
        if schedule is None:
            raise base.ListenerError(f"Trigger {self.trigger_name}: the spec has no schedule")
        self.cron = schedule.trigger
        self.job_id = JOB_PREFIX + self.trigger_name

    async def start(self) -> None:
        self.hub.start()
        self.hub.claim(self.job_id, self, self.cron)
        await super().start()

    def reinstate(self) -> None:
        if self.running:
            self.hub.claim(self.job_id, self, self.cron)

    async def stop(self, *, drain: float) -> None:
        self.hub.release(self.job_id, self)
        await super().stop(drain=drain)

    def on_tick(self, scheduled: datetime.datetime) -> None:
        """One scheduled fire time: dedupe on it, then dispatch."""
        stamp = scheduled.astimezone(datetime.UTC).isoformat()
        message = ports.EventMessage(
            platform=self.platform,
            trigger=self.trigger_name,
            text="",
            user=ports.UserRef("scheduler", "scheduler", "schedule"),
            event_type="schedule",
            delivery_id=stamp,
            raw={
                "scheduled_time": stamp,
                "cron": self.config.cron or "",
                "timezone": self.spec.schedule.timezone if self.spec.schedule is not None else "UTC",
            },
            received_at=time.time(),
        )
        self.accept(message)
