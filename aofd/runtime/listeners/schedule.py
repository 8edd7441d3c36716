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
- Replicas (`cluster:`): every replica keeps its scheduler (a new leader has the jobs at once),
  but a tick fires only on the leader: it is claimed in etcd under `sched/<trigger>/<UTC stamp>`
  with a fenced claim (the leader key is compared in the same transaction) and dispatched only
  when that claim is taken, so it fires once across the set, also across a failover and from a
  leader that was paused past its lease. A claim etcd does not answer is tried again while this
  replica still leads and the tick is within the misfire grace (a short etcd stall loses no
  tick). On winning the election each listener catches up: the
  latest fire time within the misfire grace whose claim is absent fires once (coalesced, as
  APScheduler does locally), if it is not older than the job on this replica (a replica that
  just started knows no earlier slots, as a single host would not).
The cron expression and time zone were parsed by the compile stage (`aofd.specs.cron`); the
listener hands the spec's `CronTrigger` to the scheduler. apscheduler's scheduler is imported
here only. It must not run flows itself: ticks go to the dispatch port.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from aofd import errors
from aofd.runtime import ports
from aofd.runtime.cluster import ClaimResult
from aofd.runtime.listeners import base

log = structlog.get_logger()

JOB_PREFIX = "aofd-schedule:"
CLAIM_PREFIX = "sched/"
"""etcd key (under the cluster prefix) of a claimed tick: `sched/<trigger>/<UTC ISO stamp>`."""
CLAIM_RETRY = 0.25
"""Seconds before the first retry of a tick's claim that etcd did not answer (doubling to 2 s)."""


async def _tick() -> None:
    """The job body: nothing. The submission event (with the scheduled time) does the work."""


class ScheduleHub:
    """The daemon's one scheduler, shared by every Schedule listener of every routing table."""

    def __init__(self, *, misfire_grace_time: float = 30.0) -> None:
        self.misfire_grace_time = misfire_grace_time
        self.scheduler = AsyncIOScheduler(
            timezone=datetime.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_time},
        )
        # Invariant: a job id is in `_owners` exactly while its job exists in the scheduler.
        self._owners: dict[str, ScheduleListener] = {}
        # job id -> when its job was added here (a job moved by a hot swap keeps it).
        self._added: dict[str, datetime.datetime] = {}
        self.scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        if not self.scheduler.running:
            self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self._owners.clear()
        self._added.clear()

    def owner(self, job_id: str) -> ScheduleListener | None:
        return self._owners.get(job_id)

    def added_at(self, job_id: str) -> datetime.datetime | None:
        """When the job was first scheduled on this replica (None: no such job)."""
        return self._added.get(job_id)

    def claim(self, job_id: str, listener: ScheduleListener, trigger: CronTrigger) -> None:
        """Make `listener` own `job_id` with `trigger`, moving an existing job without losing a due tick."""
        job = self.scheduler.get_job(job_id)
        if job is None:
            self.scheduler.add_job(_tick, trigger, id=job_id, name=job_id, replace_existing=True)
            self._added[job_id] = datetime.datetime.now(datetime.UTC)
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
        self._added.pop(job_id, None)
        if self.scheduler.get_job(job_id) is not None:
            self.scheduler.remove_job(job_id)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        owner = self._owners.get(event.job_id)
        if owner is None:
            return
        for when in event.scheduled_run_times:
            owner.spawn(owner.on_tick(when), name=f"schedule-tick:{owner.trigger_name}")


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
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        self.hub.start()
        self.hub.claim(self.job_id, self, self.cron)
        coordinator = self.deps.coordinator
        if coordinator is not None and self._unsubscribe is None:
            self._unsubscribe = coordinator.on_leadership(self.on_leadership)
        await super().start()

    def on_leadership(self, leading: bool) -> None:
        """This replica became (True) or stopped being (False) the leader. On gaining it, catch
        up the tick a failover may have missed (in a task: leadership callbacks must not block);
        on losing it nothing is needed (every tick is fenced)."""
        if leading and self.running:
            self.spawn(self.catch_up(), name=f"schedule-catch-up:{self.trigger_name}")

    def reinstate(self) -> None:
        if self.running:
            self.hub.claim(self.job_id, self, self.cron)

    async def stop(self, *, drain: float) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.hub.release(self.job_id, self)
        await super().stop(drain=drain)

    async def on_tick(self, scheduled: datetime.datetime, *, why: str = "tick") -> None:
        """One scheduled fire time: dedupe on it (with `cluster:`, a fenced claim in etcd: only
        the leader fires, once across the set), then dispatch."""
        stamp = scheduled.astimezone(datetime.UTC).isoformat()
        message = self._message(stamp)
        coordinator = self.deps.coordinator
        if coordinator is None:
            await self.accept(message)
            return
        if not coordinator.fence():
            # A follower's scheduler ticks too, and so does a leader that woke past its lease.
            log.debug(
                "schedule.not_fired", trigger=self.trigger_name, scheduled=stamp, reason="not the leader"
            )
            return
        result = await self._claim_tick(scheduled, stamp)
        if result is None:
            return
        if result is ClaimResult.FENCED:
            log.warning(
                "schedule.not_fired", trigger=self.trigger_name, scheduled=stamp, reason="not the leader"
            )
            return
        if result is ClaimResult.DUPLICATE:
            return  # fired already (by this replica's other path or before a failover)
        (log.info if why != "tick" else log.debug)(
            "schedule.fired", trigger=self.trigger_name, scheduled=stamp, why=why
        )
        self.deps.dispatcher.dispatch(message)

    async def _claim_tick(self, scheduled: datetime.datetime, stamp: str) -> ClaimResult | None:
        """The fenced claim of one tick, tried again while etcd does not answer, as long as this
        replica still leads and the tick is within the misfire grace (a claim that timed out but
        committed is released by the coordinator and taken again here: still this tick's only
        fire). None: not claimed (logged)."""
        coordinator = self.deps.coordinator
        assert coordinator is not None
        key = claim_key(self.trigger_name, stamp)
        backoff = CLAIM_RETRY
        while True:
            try:
                return await coordinator.claim([key], fenced=True)
            except errors.CoordinatorUnavailable as exc:
                late = (datetime.datetime.now(datetime.UTC) - scheduled).total_seconds()
                if (
                    not self.running
                    or not coordinator.fence()
                    or late + backoff > self.hub.misfire_grace_time
                ):
                    log.warning(
                        "schedule.not_fired", trigger=self.trigger_name, scheduled=stamp, reason=str(exc)
                    )
                    return None
                log.info("schedule.claim_retry", trigger=self.trigger_name, scheduled=stamp, reason=str(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def catch_up(self) -> None:
        """On winning the election: fire the latest fire time within the misfire grace that no
        replica claimed (one fire for all missed ones), unless it is older than the job here."""
        coordinator = self.deps.coordinator
        added = self.hub.added_at(self.job_id)
        if coordinator is None or added is None or self.hub.owner(self.job_id) is not self:
            return
        now = datetime.datetime.now(datetime.UTC)
        latest = latest_fire_time(self.cron, now, self.hub.misfire_grace_time)
        if latest is None or latest < added:
            return
        stamp = latest.astimezone(datetime.UTC).isoformat()
        try:
            if await coordinator.get(claim_key(self.trigger_name, stamp)) is not None:
                return
        except errors.CoordinatorUnavailable as exc:
            log.warning("schedule.catch_up_failed", trigger=self.trigger_name, reason=str(exc))
            return
        await self.on_tick(latest, why="catch-up")

    def _message(self, stamp: str) -> ports.EventMessage:
        return ports.EventMessage(
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


def claim_key(trigger: str, stamp: str) -> str:
    """The etcd key of one tick of `trigger` (`stamp`: the UTC ISO fire time)."""
    return f"{CLAIM_PREFIX}{trigger}/{stamp}"


def latest_fire_time(cron: CronTrigger, now: datetime.datetime, grace: float) -> datetime.datetime | None:
    """The last fire time of `cron` in `(now - grace, now]`, or None."""
    since = now - datetime.timedelta(seconds=grace)
    latest: datetime.datetime | None = None
    previous: datetime.datetime | None = None
    when: datetime.datetime | None = cron.get_next_fire_time(None, since)
    while when is not None and when <= now:
        if when > since:
            latest = when
        previous = when
        when = cron.get_next_fire_time(previous, previous + datetime.timedelta(microseconds=1))
    return latest
