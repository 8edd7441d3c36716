"""A revision's warnings are logged once, on the pass that applies it (not on no-op passes)."""

from __future__ import annotations

from pathlib import Path

import structlog

from tests.reconcile.test_loop import files, make, snap

TWO_APPROVERS = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: default
  approval: {required: true, allowed_users: [U1, U2], require_for: [kubectl delete]}
"""


async def test_the_applying_pass_logs_the_revisions_warnings(tmp_path: Path) -> None:
    rec, _, _ = make(tmp_path)
    rec.offer(snap(files()))  # its Context has one approver, who cannot approve their own requests
    with structlog.testing.capture_logs() as logs:
        summary = await rec.reconcile_once()
    assert "applied" == summary.outcome
    (line,) = [e for e in logs if e["event"] == "reconcile pass"]
    assert "warning" == line["log_level"]
    (warning,) = line["warnings"]
    assert warning.startswith("contexts/prod.yaml:6:")
    assert "requests made by one of the approvers cannot be granted" in warning

    with structlog.testing.capture_logs() as logs:
        await rec.reconcile_once()
    (line,) = [e for e in logs if e["event"] == "reconcile pass"]
    assert ("info", None) == (line["log_level"], line["warnings"]), "an unchanged revision says nothing again"


async def test_a_revision_without_warnings_logs_none(tmp_path: Path) -> None:
    rec, _, _ = make(tmp_path)
    rec.offer(snap(files(**{"contexts/prod.yaml": TWO_APPROVERS})))
    with structlog.testing.capture_logs() as logs:
        await rec.reconcile_once()
    (line,) = [e for e in logs if e["event"] == "reconcile pass"]
    assert ("info", None) == (line["log_level"], line["warnings"])
