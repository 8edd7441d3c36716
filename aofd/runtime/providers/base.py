"""The one small interface every model provider implements, and the retry loop around it.

This module owns the provider-neutral value types (`ModelRequest`, `ModelResponse`,
`ToolCall`, `Usage`, ...), the error a provider raises (`ModelError`, already classified
as retryable or not) and `complete_with_retry`, the only place that retries: exponential
backoff with jitter, honouring `retry-after`, never past the run's deadline. Parsing `model:`
strings is pure and lives in `aofd.specs.models`.

It must not import any provider SDK: `anthropic` is imported only in `anthropic.py`,
`openai` only in `openai.py`, `google.genai` only in `google.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

from aofd import errors

Role = Literal["user", "assistant"]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolSchema:
    """A tool offered to the model: a name, a description and a JSON Schema of its input."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool invocation the model asked for."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolResult:
    """The answer to one `ToolCall`, fed back on the next turn."""

    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One conversation turn: user text, or an assistant turn (text and tool calls), or tool results."""

    role: Role
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything one model call needs; `model` is the provider's own model name (no prefix)."""

    model: str
    messages: tuple[Message, ...]
    system: str = ""
    tools: tuple[ToolSchema, ...] = ()
    max_tokens: int = 4096
    temperature: float | None = None
    timeout: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ModelResponse:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    stop_reason: str = ""


class ModelProvider(Protocol):
    """A model API: one request in, one response out; errors are `ModelError`."""

    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse: ...

    async def aclose(self) -> None: ...


class ModelError(errors.AofdError):
    """A model call failed. `retryable` says whether trying again may help (429, 529, 5xx, timeouts)."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after` in seconds (the HTTP-date form is ignored: backoff applies instead)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


# --- model strings -------------------------------------------------------------------------

# --- retries -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for retryable model errors: base * factor**n, capped, with full jitter."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_delay, self.base_delay * self.factor**attempt)
        jittered = backoff / 2 + rng.random() * backoff / 2
        if retry_after is not None:
            return max(retry_after, jittered)
        return jittered


async def complete_with_retry(
    provider: ModelProvider,
    request: ModelRequest,
    *,
    policy: RetryPolicy,
    deadline: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> ModelResponse:
    """Call `provider.complete`, retrying retryable errors with backoff until `deadline` (clock time).

    Raises the last `ModelError`, annotated with the number of attempts, when retries are
    exhausted, when the error is not retryable, or when the next attempt could not start
    before the deadline.
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    attempt = 0
    while True:
        timeout = request.timeout
        if deadline is not None:
            remaining = deadline - clock()
            if remaining <= 0:
                raise ModelError(
                    f"model call to {provider.name} not started: the run's deadline has passed",
                    provider=provider.name,
                    retryable=False,
                )
            timeout = remaining if timeout is None else min(timeout, remaining)
        try:
            return await provider.complete(dataclasses.replace(request, timeout=timeout))
        except ModelError as exc:
            attempts = attempt + 1
            if not exc.retryable or attempt >= policy.max_retries:
                raise _annotated(exc, attempts) from exc
            delay = policy.delay(attempt, exc.retry_after, rng)
            if deadline is not None and clock() + delay >= deadline:
                raise _annotated(exc, attempts, note="no time left before the run's deadline") from exc
            await sleep(delay)
            attempt += 1


def _annotated(exc: ModelError, attempts: int, note: str = "") -> ModelError:
    suffix = f" (after {attempts} attempt{'s' if attempts != 1 else ''}"
    suffix += f"; {note})" if note else ")"
    return ModelError(
        f"{exc}{suffix}",
        provider=exc.provider,
        retryable=exc.retryable,
        status=exc.status,
        retry_after=exc.retry_after,
    )
