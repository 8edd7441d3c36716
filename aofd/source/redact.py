"""Redaction: credentials never appear in logs, errors or status (GITOPS-ANCHORS.md section 5.7).

Owns the two scrubbing steps every message about a source goes through: URL userinfo is
replaced (`https://user:tok@host` -> `https://***@host`), and any known secret value (a
token or password read from a file) is replaced by `***` wherever it appears, including
inside libgit2's messages. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# scheme://userinfo@ ; userinfo is anything up to the first '@' that has no '/', whitespace or quote.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
# A secret shorter than this is not masked inside arbitrary text (it would shred every message).
_MIN_SECRET = 4


def url(value: str) -> str:
    """`https://user:tok@host/x` -> `https://***@host/x`; URLs without userinfo are unchanged."""
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", value)


def text(message: str, *, secrets: Iterable[str] = ()) -> str:
    """Scrub URL userinfo and every known secret value (longest first) from `message`."""
    out = url(message)
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out
