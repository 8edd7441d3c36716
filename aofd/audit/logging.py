"""The one `structlog.configure()` of aofd: operational logs (not the audit trail).

This module owns how the daemon and the CLI log: ISO UTC timestamps, the level, the
redaction processor (`aofd.audit.redact`) run last before rendering, exceptions
formatted to text *before* redaction (so a token in a traceback is removed too), JSON
lines on stdout by default (journald and shippers read them), a readable console format
when stdout is a TTY. Standard-library loggers (slack-bolt, aiohttp, anthropic) are routed
through the same processors so their messages are redacted as well.

Call `configure()` once, from the composition root (`aofd.cli`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

from aofd.audit import redact

Format = Literal["auto", "json", "console"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(*, level: str = "info", fmt: Format = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard `logging` root for the whole process."""
    out = stream if stream is not None else sys.stdout
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}")
    console = fmt == "console" or (fmt == "auto" and _isatty(out))
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]
    structlog.configure(
        processors=[*shared, redact.processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *shared,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact.processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries stay at INFO even when aofd logs at DEBUG (their debug output
    # includes request bodies).
    root.setLevel(max(numeric, logging.INFO))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
