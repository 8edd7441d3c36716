"""/metrics of a replica (`cluster:`): etcd up, leadership, the session lease, and each delivery
claim's result and latency; a single host exports none of them."""

from __future__ import annotations

from aofd.daemon import metrics


def _render(samples: metrics.Samples) -> str:
    return metrics.Metrics(lambda: samples).render()[0].decode()


def test_a_replica_exports_its_view_of_the_set_and_its_claims() -> None:
    counters = metrics.Counters()
    for result, seconds in [
        ("claimed", 0.0007),
        ("claimed", 0.003),
        ("duplicate", 0.0009),
        ("unavailable", 1.0),
    ]:
        counters.claim_observed(result, seconds)
    text = _render(
        metrics.Samples(
            cluster=metrics.ClusterSample(
                etcd_up=True,
                is_leader=False,
                leader_changes=3,
                lease_valid_seconds=2.5,
                approvals_unrecorded=1,
            ),
            cluster_claims=dict(counters.claims),
            cluster_claim_latency=metrics.HistogramSample(
                counters.claim_latency.cumulative(), counters.claim_latency.sum, counters.claim_latency.count
            ),
        )
    )
    assert "aofd_cluster_etcd_up 1.0" in text
    assert "aofd_cluster_leader 0.0" in text
    assert "aofd_cluster_leader_changes_total 3.0" in text
    assert "aofd_cluster_lease_valid_seconds 2.5" in text
    assert "aofd_cluster_approvals_unrecorded_total 1.0" in text
    assert 'aofd_cluster_claims_total{result="claimed"} 2.0' in text
    assert 'aofd_cluster_claims_total{result="unavailable"} 1.0' in text
    assert 'aofd_cluster_claim_seconds_bucket{le="0.001"} 2.0' in text
    assert 'aofd_cluster_claim_seconds_bucket{le="0.005"} 3.0' in text
    assert "aofd_cluster_claim_seconds_count 4.0" in text


def test_a_single_host_exports_no_cluster_metrics() -> None:
    assert "aofd_cluster" not in _render(metrics.Samples())
