"""Schedules are parsed in the compile stage: a bad cron expression or time zone names its field."""

from __future__ import annotations

import pytest

from aofd.specs import cron


@pytest.mark.parametrize(
    ("expression", "timezone", "fields"),
    [
        ("* * *", None, [cron.CRON_LOC]),
        ("61 * * * *", None, [cron.CRON_LOC]),
        ("* * * * *", "Mars/Olympus_Mons", [cron.TIMEZONE_LOC]),
        ("61 25 * * *", "Mars/Olympus", [cron.TIMEZONE_LOC, cron.CRON_LOC]),
        ("0 3 * * *", "../../etc/passwd", [cron.TIMEZONE_LOC]),
    ],
)
def test_invalid_schedules_name_the_field_at_fault(
    expression: str, timezone: str | None, fields: list[tuple[str, ...]]
) -> None:
    """A bad expression is a problem at `spec.config.cron`, a bad zone at `spec.config.timezone`."""
    schedule, problems = cron.parse(expression, timezone)
    assert schedule is None
    assert fields == [p.loc for p in problems]


@pytest.mark.parametrize(
    ("expression", "timezone", "zone"),
    [
        ("*/5 * * * *", None, "UTC"),
        ("0 9 * * MON-FRI", "Europe/Paris", "Europe/Paris"),
        ("* * * * * *", "UTC", "UTC"),
    ],
)
def test_valid_schedules_carry_their_trigger(expression: str, timezone: str | None, zone: str) -> None:
    """Five fields (minutes) and six (seconds first) parse, in the given zone (UTC by default)."""
    schedule, problems = cron.parse(expression, timezone)
    assert [] == problems
    assert schedule is not None
    assert (expression, zone) == (schedule.expression, schedule.timezone)
    assert zone == str(schedule.trigger.timezone)


@pytest.mark.parametrize("zone", ["Europe", "../etc/passwd", "/etc/localtime", "x" * 5000, "a\x00b"])
def test_a_hostile_time_zone_is_a_problem_never_an_exception(zone: str) -> None:
    schedule, problems = cron.parse("0 3 * * *", zone)
    assert schedule is None
    assert [p.loc for p in problems] == [cron.TIMEZONE_LOC]
    assert len(problems[0].message) < 200
