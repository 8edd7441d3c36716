"""Push-webhook verification for `POST /hooks/git/<source>` (DESIGN.md section 4). Pure.

Owns the signature check only. A verified hook only wakes its source: the payload's claims
(branch, commit) are ignored and the source always re-reads the remote (GITOPS-ANCHORS.md
sections 0.5 and 5.6). Accepted schemes, tried in this order:

- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
- GitLab: `X-Gitlab-Token: <secret>` (a shared token, compared in constant time).
- generic: `X-Aofd-Timestamp: <unix seconds>` and
  `X-Aofd-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, accepted within
  300 s of `now` in either direction (replay window).

Every comparison is `hmac.compare_digest`. The HTTP layer reads the secret file, passes the
raw body bytes and the headers, and maps the verdict to a status code (ok -> 202,
missing -> 401, bad_signature -> 401, stale -> 401); it never says which part was wrong
beyond the verdict.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping

GITHUB_HEADER = "X-Hub-Signature-256"
GITLAB_HEADER = "X-Gitlab-Token"
SIGNATURE_HEADER = "X-Aofd-Signature"
TIMESTAMP_HEADER = "X-Aofd-Timestamp"
WINDOW_SECONDS = 300.0


class Verdict(enum.Enum):
    """The outcome of verifying one hook request."""

    OK = "ok"
    BAD_SIGNATURE = "bad_signature"
    MISSING = "missing"
    STALE = "stale"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup over a plain mapping."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def github_signature(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def generic_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Aofd-Signature` value for `body` sent at `timestamp`."""
    return "v1=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(*, secret: bytes, headers: Mapping[str, str], body: bytes, now: float) -> Verdict:
    """Verify a push hook against `secret`; `now` is unix time (injected, for tests)."""
    if not secret:
        return Verdict.MISSING  # a source without a secret accepts no hooks
    github = _header(headers, GITHUB_HEADER)
    if github is not None:
        expected = github_signature(secret, body)
        return Verdict.OK if _equal(github.strip(), expected) else Verdict.BAD_SIGNATURE
    gitlab = _header(headers, GITLAB_HEADER)
    if gitlab is not None:
        token = secret.decode("utf-8", "surrogateescape")
        return Verdict.OK if _equal(gitlab.strip(), token) else Verdict.BAD_SIGNATURE
    signature = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if signature is None or timestamp is None:
        return Verdict.MISSING
    timestamp = timestamp.strip()
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return Verdict.BAD_SIGNATURE
    if abs(now - int(timestamp)) > WINDOW_SECONDS:
        return Verdict.STALE
    expected = generic_signature(secret, timestamp, body)
    return Verdict.OK if _equal(signature.strip(), expected) else Verdict.BAD_SIGNATURE


def _equal(given: str, expected: str) -> bool:
    """Constant-time string compare that tolerates non-ASCII input (compared as UTF-8 bytes)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )
