"""/metrics counts the events answered but not run because their binding is Stalled."""

from __future__ import annotations

from aofd.daemon import metrics


def test_not_run_events_are_exported_per_platform_and_reason() -> None:
    counters = metrics.Counters()
    for platform, reason in [("github", "ContextNotReady")] * 2 + [("slack", "ProviderNotReady")]:
        counters.event_not_run(platform, reason)
    registry = metrics.Metrics(lambda: metrics.Samples(events_not_run=dict(counters.not_run)))
    text = registry.render()[0].decode()
    assert 'aofd_events_not_run_total{platform="github",reason="ContextNotReady"} 2.0' in text
    assert 'aofd_events_not_run_total{platform="slack",reason="ProviderNotReady"} 1.0' in text
