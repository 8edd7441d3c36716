"""Human output for aofctl: aligned tables, ages, times, and a small YAML emitter for JSON data.

The admin API gives times as epoch seconds (floats, for scripts); people read them here as
ISO 8601 UTC with seconds (`2026-12-06T06:35:09Z`, `timestamp`), with the age beside them
where that helps (`2026-12-06T06:35:09Z (3m ago)`, `moment`), and durations in milliseconds
as `340ms`, `1.2s` or `2m05s` (`duration`).

The YAML emitter covers what the admin API returns (dicts, lists, strings, numbers, bools,
null); strings that could be misread are emitted as JSON strings, which are valid YAML.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./@+-]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "~", ""}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["   ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["   ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines)


def age(since: float | None, *, now: float | None = None) -> str:
    if not since:
        return "-"
    seconds = max(0, int((now or time.time()) - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def timestamp(epoch: float | None) -> str:
    """`epoch` (seconds) as ISO 8601 UTC with seconds, `2026-12-06T06:35:09Z`; `-` when unknown."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool) or epoch <= 0:
        return "-"
    try:
        when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def moment(epoch: float | None, *, now: float | None = None) -> str:
    """`timestamp(epoch)` and how long ago it was (`... (3m ago)`, `... (in 2m)` for a future time)."""
    text = timestamp(epoch)
    if text == "-" or epoch is None:
        return text
    current = time.time() if now is None else now
    if epoch > current + 1:
        return f"{text} (in {age(current, now=epoch)})"
    return f"{text} ({age(epoch, now=current)} ago)"


def duration(ms: float | None) -> str:
    """A duration in milliseconds for people: `340ms`, `1.2s`, `2m05s`, `3h04m`; `-` when unknown."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def runs_table(runs: Sequence[Mapping[str, Any]], *, now: float | None = None) -> str:
    """Run records of the admin API (`RunRecord.as_dict`) as a table: id, status, when it
    started (and how long ago), how long it took, its error (first line, cut to 80 characters)."""
    rows = []
    for run in runs:
        error = str(run.get("error") or "").splitlines()
        first = error[0] if error else ""
        rows.append(
            [
                str(run.get("run_id", "-")),
                str(run.get("status", "-")),
                moment(run.get("started_at"), now=now),
                duration(run.get("duration_ms")),
                first if len(first) <= 80 else first[:79] + "…",
            ]
        )
    return table(["RUN", "STATUS", "STARTED", "DURATION", "ERROR"], rows)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}"
        lines = []
        for key, item in value.items():
            k = _scalar(str(key))
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{k}: {to_yaml(item).strip()}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return pad + "[]"
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = to_yaml(item, indent + 1).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {to_yaml(item).strip()}")
        return "\n".join(lines)
    return pad + _scalar(value)
