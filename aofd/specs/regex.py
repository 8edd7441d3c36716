"""Regular expressions written by users (match patterns, Context command patterns): compiled
without ever raising; pure.

`re.compile` raises more than `re.error` on hostile input: `a{4294967296}` raises
`OverflowError`, thousands of nested groups `RecursionError`. A pattern from the repo must
become a reported problem, never an exception in the compile stage.
"""

from __future__ import annotations

import re


def compile_user(text: str) -> tuple[re.Pattern[str] | None, str]:
    """The compiled pattern and "", or None and why it is not a valid regular expression."""
    try:
        return re.compile(text), ""
    except re.error as exc:
        return None, str(exc)
    except OverflowError:
        return None, "a repetition count is too large"
    except RecursionError:
        return None, "it is nested too deeply"
