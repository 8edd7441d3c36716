"""Prometheus metrics for `/metrics`: one registry per daemon, no process-global state.

Reconcile passes are observed as they happen; everything else (listeners, events, runs,
tokens, approvals, rate-limit refusals, audit latency, HTTP connections) is read from the components at
scrape time through `Samples`, so the runtime and audit packages need not know Prometheus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from aofd.audit import journal


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramSample:
    buckets: Sequence[tuple[float, int]]  # cumulative (le, count), +Inf last
    total: float
    count: int


@dataclasses.dataclass(slots=True)
class Samples:
    """A point-in-time reading of the components, taken at scrape time."""

    applied_revision: str = ""
    ready: bool = False
    sources: Mapping[str, Mapping[str, str | float]] = dataclasses.field(default_factory=dict)
    listeners: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (platform, state)
    events_received: Mapping[str, int] = dataclasses.field(default_factory=dict)  # platform
    events_rejected: Mapping[tuple[str, str], int] = dataclasses.field(
        default_factory=dict
    )  # (platform, reason)
    events_not_run: Mapping[tuple[str, str], int] = dataclasses.field(
        default_factory=dict
    )  # (platform, stall reason)
    runs: Mapping[str, int] = dataclasses.field(default_factory=dict)  # outcome
    http_connections: Mapping[str, int] = dataclasses.field(default_factory=dict)  # listener
    http_closed: Mapping[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (listener, reason)
    http_accept_errors: Mapping[tuple[str, str], int] = dataclasses.field(
        default_factory=dict
    )  # (listener, error)
    runs_active: int = 0
    model_tokens: Mapping[str, int] = dataclasses.field(default_factory=dict)  # input / output
    approvals_pending: int = 0
    ratelimit_refusals: Mapping[str, int] = dataclasses.field(default_factory=dict)  # context
    audit_records: int = 0
    audit_failures: int = 0
    audit_durable_latency: HistogramSample | None = None
    audit_grouped_latency: HistogramSample | None = None
    cluster: ClusterSample | None = None  # None on a single host (no `cluster:`)
    cluster_claims: Mapping[str, int] = dataclasses.field(default_factory=dict)  # result
    cluster_claim_latency: HistogramSample | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSample:
    """This replica's view of the set (`cluster:`): etcd reachable, leadership, session lease."""

    etcd_up: bool
    is_leader: bool
    leader_changes: int
    lease_valid_seconds: float
    approvals_unrecorded: int = 0


class _Pull(Collector):
    def __init__(self, read: Callable[[], Samples]) -> None:
        self._read = read

    def collect(
        self,
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily | InfoMetricFamily]:
        s = self._read()
        info = InfoMetricFamily("aofd_applied_revision", "The revision aofd serves", labels=["revision"])
        info.add_metric([s.applied_revision or ""], {"revision": s.applied_revision or ""})
        yield info
        ready = GaugeMetricFamily("aofd_ready", "1 once a revision is applied and listeners are up")
        ready.add_metric([], 1.0 if s.ready else 0.0)
        yield ready
        src_info = GaugeMetricFamily(
            "aofd_source_revision_info", "Last applied revision per source", labels=["source", "revision"]
        )
        src_fail = GaugeMetricFamily(
            "aofd_source_consecutive_failures", "Failed fetches in a row per source", labels=["source"]
        )
        for name, data in sorted(s.sources.items()):
            src_info.add_metric([name, str(data.get("revision", ""))], 1.0)
            src_fail.add_metric([name], float(data.get("failures", 0) or 0))
        yield src_info
        yield src_fail
        labelled: tuple[
            tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, list[str], Mapping[Any, int]], ...
        ] = (
            (
                GaugeMetricFamily,
                "aofd_listeners",
                "Trigger listeners by platform and state",
                ["platform", "state"],
                s.listeners,
            ),
            (
                CounterMetricFamily,
                "aofd_events_received",
                "Events received per platform",
                ["platform"],
                s.events_received,
            ),
            (
                CounterMetricFamily,
                "aofd_events_rejected",
                "Events rejected per platform and reason",
                ["platform", "reason"],
                s.events_rejected,
            ),
            (
                CounterMetricFamily,
                "aofd_events_not_run",
                "Events answered but not run: their binding is Stalled (per platform and reason)",
                ["platform", "reason"],
                s.events_not_run,
            ),
            (
                GaugeMetricFamily,
                "aofd_http_connections",
                "Open connections per HTTP listener (webhook, admin)",
                ["listener"],
                s.http_connections,
            ),
            (
                CounterMetricFamily,
                "aofd_http_connections_closed",
                "Connections closed by a listener's limits (timeouts, the connection cap)",
                ["listener", "reason"],
                s.http_closed,
            ),
            (
                CounterMetricFamily,
                "aofd_http_accept_errors",
                "Failed accepts for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)",
                ["listener", "error"],
                s.http_accept_errors,
            ),
            (CounterMetricFamily, "aofd_runs", "Flow runs by outcome", ["outcome"], s.runs),
            (CounterMetricFamily, "aofd_model_tokens", "Model tokens used", ["direction"], s.model_tokens),
            (
                CounterMetricFamily,
                "aofd_ratelimit_refusals",
                "Requests refused by a Context's limits",
                ["context"],
                s.ratelimit_refusals,
            ),
        )
        for family_type, name, doc, labels, values in labelled:
            family = family_type(name, doc, labels=labels)
            for key, n in sorted(values.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], float(n))
            yield family
        single: tuple[tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, float], ...] = (
            (GaugeMetricFamily, "aofd_runs_active", "Flow runs in flight", s.runs_active),
            (
                GaugeMetricFamily,
                "aofd_approvals_pending",
                "Approval requests waiting for a decision",
                s.approvals_pending,
            ),
            (CounterMetricFamily, "aofd_audit_records", "Audit records written", s.audit_records),
            (
                CounterMetricFamily,
                "aofd_audit_failures",
                "Audit writes that failed (fail closed)",
                s.audit_failures,
            ),
        )
        for family_type, name, doc, value in single:
            family = family_type(name, doc)
            family.add_metric([], float(value))
            yield family
        yield from _cluster_families(s)
        for name, doc, sample in (
            ("aofd_audit_durable_write_seconds", "Audit write latency", s.audit_durable_latency),
            ("aofd_audit_grouped_write_seconds", "Audit write latency", s.audit_grouped_latency),
            (
                "aofd_cluster_claim_seconds",
                "Time to claim a delivery in etcd (one transaction)",
                s.cluster_claim_latency,
            ),
        ):
            if sample is None:
                continue
            hist = HistogramMetricFamily(name, doc)
            hist.add_metric(
                [],
                buckets=[("+Inf" if b == float("inf") else repr(b), float(c)) for b, c in sample.buckets],
                sum_value=sample.total,
            )
            yield hist


def _cluster_families(s: Samples) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The replica set's metrics; none on a single host."""
    c = s.cluster
    if c is None:
        return
    for family_type, name, doc, value in (
        (
            GaugeMetricFamily,
            "aofd_cluster_etcd_up",
            "1 while etcd answers and the session is valid",
            c.etcd_up,
        ),
        (GaugeMetricFamily, "aofd_cluster_leader", "1 while this replica is the leader", c.is_leader),
        (
            CounterMetricFamily,
            "aofd_cluster_leader_changes",
            "Times this replica gained or lost leadership",
            c.leader_changes,
        ),
        (
            GaugeMetricFamily,
            "aofd_cluster_lease_valid_seconds",
            "Seconds the session lease is still known to be valid",
            c.lease_valid_seconds,
        ),
        (
            CounterMetricFamily,
            "aofd_cluster_approvals_unrecorded",
            "Approval requests denied because etcd could not record them",
            c.approvals_unrecorded,
        ),
    ):
        family = family_type(name, doc)
        family.add_metric([], float(value))
        yield family
    claims = CounterMetricFamily(
        "aofd_cluster_claims", "Delivery claims in etcd by result", labels=["result"]
    )
    for result, n in sorted(s.cluster_claims.items()):
        claims.add_metric([result], float(n))
    yield claims


class Metrics:
    """The daemon's registry: pass observations plus the pull collector."""

    def __init__(self, read: Callable[[], Samples]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.passes = Counter(
            "aofd_reconcile_passes", "Reconcile passes by outcome", ["outcome"], registry=self.registry
        )
        self.pass_seconds = Histogram(
            "aofd_reconcile_duration_seconds",
            "Duration of reconcile passes",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.errors = Counter(
            "aofd_reconcile_errors", "Errors found in rejected revisions", registry=self.registry
        )
        self.registry.register(_Pull(read))

    def observe_pass(self, outcome: str, duration_s: float, errors: int) -> None:
        self.passes.labels(outcome).inc()
        self.pass_seconds.observe(duration_s)
        if errors:
            self.errors.inc(errors)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Counters:
    """Monotonic counters the runtime reports through callbacks (events, refusals, runs)."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.tokens: dict[str, int] = {"input": 0, "output": 0}
        self.refusals: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.rejected: dict[tuple[str, str], int] = {}
        self.not_run: dict[tuple[str, str], int] = {}
        self.claims: dict[str, int] = {}  # result of each etcd claim (replicas only)
        self.claim_latency = journal.Histogram()

    def claim_observed(self, result: str, seconds: float) -> None:
        """One delivery claim in etcd (`aofd.runtime.claims.Claims`): its result and duration."""
        self.claims[result] = self.claims.get(result, 0) + 1
        self.claim_latency.observe(seconds)

    def event_received(self, platform: str) -> None:
        self.received[platform] = self.received.get(platform, 0) + 1

    def event_rejected(self, platform: str, reason: str) -> None:
        self.rejected[(platform, reason)] = self.rejected.get((platform, reason), 0) + 1

    def event_not_run(self, platform: str, reason: str) -> None:
        self.not_run[(platform, reason)] = self.not_run.get((platform, reason), 0) + 1

    def refused(self, context: str) -> None:
        self.refusals[context] = self.refusals.get(context, 0) + 1

    def run_finished(self, status: str, input_tokens: int, output_tokens: int) -> None:
        self.runs[status] = self.runs.get(status, 0) + 1
        self.tokens["input"] += input_tokens
        self.tokens["output"] += output_tokens
