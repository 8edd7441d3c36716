"""Pure helpers of aofd.source: name rules, caps, redaction, backoff."""

from __future__ import annotations

import pytest

from aofd.resources import snapshot
from aofd.source import backoff, redact, rules


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("agent.yaml", True),
        ("agent.yml", True),
        ("agent.json", False),
        (".hidden.yaml", False),
        (".#agent.yaml", False),
        ("agent.yaml~", False),
        (".agent.yaml.swp", False),
        ("4913", False),
        ("#agent.yaml#", False),
    ],
)
def test_candidate_names(name: str, expected: bool) -> None:
    """Only non-hidden, non-temp `*.yaml`/`*.yml` names are resource files."""
    assert expected == rules.is_candidate(name)


def test_budget_refuses_large_file_and_stops_at_count() -> None:
    """A file over the size cap is refused alone; the count cap stops admission once, with one issue."""
    budget = rules.Budget(snapshot.Limits(max_file_bytes=10, max_files=2, max_tree_bytes=100))
    assert budget.admit("big", 11) is not None
    assert budget.admit("a", 5) is None
    assert budget.admit("b", 5) is None
    refused = budget.admit("c", 5)
    assert refused is not None
    assert refused.code == "too-many-files"
    assert budget.admit("d", 5) is None
    assert budget.exhausted


def test_budget_total_bytes() -> None:
    """The total-bytes cap is checked before a file is admitted."""
    budget = rules.Budget(snapshot.Limits(max_file_bytes=60, max_tree_bytes=100))
    assert budget.admit("a", 60) is None
    refused = budget.admit("b", 60)
    assert refused is not None
    assert refused.code == "tree-too-large"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://user:tok@host/x.git", "https://***@host/x.git"),
        ("see ssh://git@host:22/r and http://a@b/c", "see ssh://***@host:22/r and http://***@b/c"),
        ("https://host/x.git", "https://host/x.git"),
    ],
)
def test_redact_url(given: str, expected: str) -> None:
    """URL userinfo is replaced by ***, wherever the URL appears in a message."""
    assert expected == redact.text(given)


def test_redact_known_secrets() -> None:
    """Known secret values are masked anywhere in a message, longest first."""
    assert "auth *** failed for ***" == redact.text(
        "auth s3cr3t failed for s3cr3t-long", secrets=["s3cr3t", "s3cr3t-long"]
    )


def test_backoff_grows_caps_and_jitters() -> None:
    """Delays double from 1 s, never exceed 5 min, and jitter stays within +/-20 %."""
    policy = backoff.Backoff()
    assert [policy.delay(n, rand=lambda: 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert 300.0 == policy.delay(50, rand=lambda: 0.5)
    assert 300.0 == policy.delay(50, rand=lambda: 1.0)
    assert 0.8 == pytest.approx(policy.delay(1, rand=lambda: 0.0))
    assert 1.2 == pytest.approx(policy.delay(1, rand=lambda: 1.0))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/r/a.yaml", True),
        ("/r/sub/a.yaml", True),
        ("/r/.aofd/state.json", False),
        ("/r/.git/index", False),
        ("/r/sub/.a.yaml.swp", False),
        ("/r/a.yaml~", False),
        ("/r/4913", False),
        ("/r/state/x.json", False),
        ("/elsewhere/a.yaml", False),
    ],
)
def test_watch_filter(path: str, expected: bool) -> None:
    """Changes under hidden dirs, editor temps, ignored paths or outside the root never wake a source."""
    from pathlib import Path

    from aofd.source import watch

    assert expected == watch.relevant(Path("/r"), path, ignore=(Path("/r/state"),))
