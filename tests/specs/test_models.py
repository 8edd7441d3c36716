"""`model:` strings: the provider comes from the prefix or `provider:`; what can never run is told offline."""

from __future__ import annotations

import pytest

from aofd.specs import models


def test_model_strings_parse() -> None:
    """Bare names default to anthropic; prefixes and `provider:` choose the provider."""
    assert models.parse_model("claude-sonnet-4") == models.ModelRef("anthropic", "claude-sonnet-4")
    assert models.parse_model("google:gemini-2.5-flash") == models.ModelRef("google", "gemini-2.5-flash")
    assert models.parse_model("llama3:8b", "ollama") == models.ModelRef("ollama", "llama3:8b")
    assert models.parse_model("gpt:4o") == models.ModelRef("openai", "4o")


@pytest.mark.parametrize(
    ("written", "provider", "problem"),
    [
        ("bedrock:titan", None, "provider bedrock (model 'bedrock:titan') is not supported"),
        ("anthropic:", None, "model 'anthropic:' names no model after the provider prefix"),
        ("claude-sonnet-4", None, None),
        ("llama3:8b", "ollama", None),
    ],
)
def test_static_problems_are_what_no_host_can_fix(
    written: str, provider: str | None, problem: str | None
) -> None:
    """An unknown provider or an empty model is the file's problem; everything else is the host's to say."""
    found = models.static_problem(models.parse_model(written, provider), written)
    assert (problem is None) == (found is None)
    if problem is not None:
        assert found is not None
        assert found.startswith(problem)
