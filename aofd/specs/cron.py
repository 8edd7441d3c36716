"""Schedules: a Schedule trigger's `cron` and `timezone`, parsed once in the compile stage; pure.

This module owns reading a five-field crontab (minute resolution) or a six-field one with
seconds first, in an IANA time zone (`UTC` when none is given), into a `Schedule` whose
`trigger` is the APScheduler `CronTrigger` the schedule listener hands to its scheduler. Each
problem names its field, so `aofctl validate` points at the `cron` line or the `timezone` line.

APScheduler's cron parser is pure (no I/O, no clock, no event loop), so the compile stage uses
it here, the only place besides the schedule listener (which owns the scheduler itself) that
imports apscheduler. Time zones come from the system's tz database (`zoneinfo`).
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo

from apscheduler.triggers.cron import CronTrigger

from aofd.specs.problems import Problem, shown

CRON_LOC: tuple[str, ...] = ("spec", "config", "cron")
TIMEZONE_LOC: tuple[str, ...] = ("spec", "config", "timezone")


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule; `trigger` is immutable once built (the listener only reads it)."""

    expression: str
    timezone: str
    trigger: CronTrigger = dataclasses.field(compare=False, repr=False)


def parse(expression: str, timezone: str | None) -> tuple[Schedule | None, list[Problem]]:
    """The schedule, or None and the problems (a bad time zone and a bad expression are both told)."""
    problems: list[Problem] = []
    zone_name = timezone or "UTC"
    tz: datetime.tzinfo
    try:
        tz = zoneinfo.ZoneInfo(zone_name)  # the tzdata package is a dependency: the same on every host
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        problems.append(
            Problem(
                TIMEZONE_LOC, f"unknown time zone {shown(zone_name)}; write an IANA name such as Europe/Paris"
            )
        )
        tz = datetime.UTC
    trigger: CronTrigger | None = None
    fields = expression.split()
    try:
        if len(fields) == 5:
            trigger = CronTrigger.from_crontab(expression, timezone=tz)
        elif len(fields) == 6:
            second, minute, hour, day, month, dow = fields
            trigger = CronTrigger(
                second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=tz
            )
        else:
            problems.append(
                Problem(
                    CRON_LOC,
                    f"cron expression {shown(expression)} must have 5 fields (minute hour day month weekday) "
                    "or 6 (seconds first)",
                )
            )
    except ValueError as exc:
        problems.append(Problem(CRON_LOC, f"invalid cron expression {shown(expression)}: {exc}"))
    if problems or trigger is None:
        return None, problems
    return Schedule(expression, zone_name, trigger), []
