"""Secrets out of logs: a structlog processor and `redact_text` for error messages.

This module owns the rules for what counts as a secret in free text and in event dicts:
values under secret-sounding keys (`authorization`, `token`, `password`, `api_key` ...),
URL userinfo (`https://user:pass@host`), query parameters named like token/key/secret/
password, bearer and basic credentials, Slack (`xoxb-`, `xapp-` ...), Anthropic
(`sk-ant-`), OpenAI, GitHub, GitLab, Telegram bot and Meta (WhatsApp) tokens, AWS access key ids
and secret keys (`aws_secret_access_key = ...`), JWTs, `--token VALUE` style
flags and `-u user:pass` credentials. It is pure (no I/O) and recursive over mappings, lists
and tuples. Like Flux's `sanitized.go`, it prefers to over-redact: a log line is not the place
for a secret.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

REDACTED: Final = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:authorization|proxy[_-]?authorization|token|access[_-]?token|refresh[_-]?token|"
    r"id[_-]?token|bot[_-]?token|app[_-]?token|password|passwd|pwd|secret|client[_-]?secret|"
    r"signing[_-]?secret|api[_-]?key|apikey|private[_-]?key|cookie|set[_-]?cookie|credentials?|"
    r"x[_-]?api[_-]?key|session[_-]?key|webhook[_-]?secret)$",
    re.IGNORECASE,
)

_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # URL userinfo: scheme://user:pass@host, scheme://token@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@:]+(?::[^/\s@]*)?@"), r"\1" + REDACTED + "@"),
    # query parameters whose name says secret
    (
        re.compile(
            r"(?i)([?&;](?:[a-z0-9_\-]*?)(?:token|key|secret|password|passwd|pwd|signature|sig|auth|code)"
            r"[a-z0-9_\-]*=)[^&\s#\"']+"
        ),
        r"\1" + REDACTED,
    ),
    # Authorization header values
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/]{8,}=*"), r"\1 " + REDACTED),
    (re.compile(r"(?i)(authorization\s*[:=]\s*)[^\s,;]+(?:\s+[^\s,;]+)?"), r"\1" + REDACTED),
    # an API key header named and followed by its value (`invalid x-api-key AbC123...`): a value with a digit
    (
        re.compile(r"(?i)(api[_-]?key\s+)(?!\[REDACTED\])(?=[^\s]*\d)[A-Za-z0-9\-._~+/]{8,}=*"),
        r"\1" + REDACTED,
    ),
    # vendor token formats (one alternation: one pass over the text)
    (
        re.compile(
            r"\b(?:xox[abposre]-[A-Za-z0-9\-]+|xapp-[A-Za-z0-9\-]+|sk-ant-[A-Za-z0-9_\-]+"
            r"|sk-(?:proj-)?[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
            r"|glpat-[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}\b|AIza[0-9A-Za-z_\-]{35}"
            r"|\d{6,12}:AA[A-Za-z0-9_\-]{30,}|EAA[A-Za-z0-9]{30,}"
            r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)"
        ),
        REDACTED,
    ),
    # key=value / key: value in free text, and --token VALUE flags
    (
        re.compile(
            r"(?i)\b((?:password|passwd|pwd|secret|client_secret|api[_-]?key|access[_-]?token|token"
            r"|(?:aws_)?secret_access_key)"
            r"[\"']?\s*[=:]\s*)(?!\[REDACTED\])[\"']?[^\s\"',;&]+[\"']?"
        ),
        r"\1" + REDACTED,
    ),
    (
        re.compile(
            r"(?i)(--(?:token|password|passwd|secret|client-secret|api-key|auth-token|bearer-token)[ =])"
            r"(?!\[REDACTED\]|(?:hmac-)?sha256:[0-9a-f]{64}\b)\S+"
        ),
        r"\1" + REDACTED,
    ),
    # curl/wget-style credentials: -u user:pass, --user=user:pass, --proxy-user user:pass
    (
        re.compile(r"(?<!\S)(-[uU]\s*|--(?:proxy-)?user[ =])(?!\[REDACTED\])[^\s:]*:\S+"),
        r"\1" + REDACTED,
    ),
)


_MAYBE_SECRET: Final[tuple[str, ...]] = (
    "://", "?", "&", ";", "bearer", "basic", "token", "authoriz", "api_key", "api-key", "apikey", "xox",
    "xapp", "sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat", "glpat", "akia", "aiza", "eyj",
    "passw", "pwd", "secret", "-u", ":aa", "eaa",
)  # fmt: skip
"""Literals (lower case) of which every pattern of `_PATTERNS` needs one: text with none of them is
returned as it is, after a few substring searches instead of every pattern (the audit log runs this
on every string of every line)."""


def redact_text(text: str) -> str:
    """Remove secrets from free text (an error message, a URL, a command line)."""
    lowered = text.lower()
    if not any(literal in lowered for literal in _MAYBE_SECRET):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)  # keys repeat: every audit line has the same few dozen
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (`Authorization`, `slack_bot_token`, `password` ...)."""
    return bool(_SECRET_KEY.search(key))


def redact_value(value: Any, *, _depth: int = 0) -> Any:
    """Redact recursively: strings through `redact_text`, secret keys' values replaced whole."""
    if _depth > 32:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else redact_value(v, _depth=_depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_value(v, _depth=_depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v, _depth=_depth + 1) for v in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def processor(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every value of the event dict (run it just before rendering)."""
    for key in list(event_dict):
        value = event_dict[key]
        if key in ("exc_info", "stack_info") and not isinstance(value, str):
            continue  # rendered (and then redacted) by format_exc_info / StackInfoRenderer
        if is_secret_key(key) and value not in (None, ""):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict
