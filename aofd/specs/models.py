"""`model:` strings: which provider serves an agent's model, and what can be known offline; pure.

This module owns `parse_model` (`anthropic:claude-sonnet-4`; a bare name means Anthropic, as
upstream does; `provider:` may name it instead), the provider names aofd has, and
`static_problem`: the part of "can this model run?" that the files alone decide (a provider
aofd does not have, a prefix with no model). Whether a provider's SDK is installed and a key
is configured is a fact of the host, checked at apply (`aofd.runtime.providers.registry`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

PROVIDER_ALIASES: Mapping[str, str] = {
    "anthropic": "anthropic",
    "claude": "anthropic",
    "openai": "openai",
    "gpt": "openai",
    "google": "google",
    "gemini": "google",
    # OpenAI-compatible servers reached through the openai client and `models.openai_base_url`.
    "ollama": "ollama",
    "groq": "groq",
    "vllm": "vllm",
    "litellm": "litellm",
}
OPENAI_COMPATIBLE = frozenset({"openai", "ollama", "groq", "vllm", "litellm"})
PROVIDERS = frozenset(PROVIDER_ALIASES.values())


@dataclasses.dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed `model:` string: the provider (canonical name) and the provider's model name."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def parse_model(model: str, provider: str | None = None) -> ModelRef:
    """`anthropic:claude-x` -> (anthropic, claude-x); a bare name uses `provider`, else anthropic.

    An unknown prefix keeps its name as the provider (so `static_problem` can name it);
    a prefix that is not a provider (`llama3:8b` with `provider: ollama`) stays in the model.
    """
    text = model.strip()
    head, sep, tail = text.partition(":")
    if sep and head.lower() in PROVIDER_ALIASES:
        return ModelRef(PROVIDER_ALIASES[head.lower()], tail)
    if provider:
        name = provider.strip().lower()
        return ModelRef(PROVIDER_ALIASES.get(name, name), text)
    if sep and head and "/" not in head and not any(c.isdigit() for c in tail[:1]):
        # `bedrock:foo`, `azure:foo`: a provider aofd does not have.
        return ModelRef(head.lower(), tail)
    return ModelRef("anthropic", text)


def static_problem(ref: ModelRef, written: str) -> str | None:
    """Why `ref` (parsed from `written`) can never run, whatever the host has; None when it may."""
    if not ref.model:
        return f"model {written!r} names no model after the provider prefix"
    if ref.provider not in PROVIDERS:
        known = ", ".join(sorted(set(PROVIDER_ALIASES)))
        return f"provider {ref.provider} (model {written!r}) is not supported; supported providers: {known}"
    return None
