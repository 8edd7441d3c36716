"""A scripted `ModelProvider` for fleet and flow tests: answers depend on the prompt; no network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aofd.runtime.providers import base

Answer = Callable[[base.ModelRequest], str | base.ModelResponse]


class ScriptedProvider:
    """Answers `complete` with `answer(request)`; records requests; optional per-model delays."""

    name = "anthropic"

    def __init__(self, answer: Answer, *, delays: dict[str, float] | None = None) -> None:
        self.answer = answer
        self.delays = delays or {}
        self.requests: list[base.ModelRequest] = []
        self.active = 0
        self.max_active = 0

    async def complete(self, request: base.ModelRequest) -> base.ModelResponse:
        self.requests.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            delay = self.delays.get(request.model, 0.0)
            if delay:
                await asyncio.sleep(delay)
            got = self.answer(request)
        finally:
            self.active -= 1
        if isinstance(got, base.ModelResponse):
            return got
        return base.ModelResponse(text=got, usage=base.Usage(3, 2))

    async def aclose(self) -> None:
        return None


def by_model(answers: dict[str, str]) -> Answer:
    """Answer by the request's model name (each test agent gets its own model name)."""

    def answer(request: base.ModelRequest) -> str:
        return answers[request.model]

    return answer
