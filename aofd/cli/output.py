"""Human output for aofctl: aligned tables, ages, and a small YAML emitter for JSON data.

The YAML emitter covers what the admin API returns (dicts, lists, strings, numbers, bools,
null); strings that could be misread are emitted as JSON strings, which are valid YAML.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
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
