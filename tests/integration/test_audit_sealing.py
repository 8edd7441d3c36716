"""End to end: `aofctl audit setup-keys`, a real `aofd serve` sealing its audit logs, and
`aofctl audit verify --verification-key` before and after someone rewrites a log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aofd.audit import segment
from tests.integration import harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, TRIGGER, binding

pytestmark = pytest.mark.slow


aofctl = harness.aofctl


def test_serve_seals_and_verify_catches_a_rewritten_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    state_dir = repo / ".aofd" / "state"
    audit_dir = repo / ".aofd" / "audit"
    made = aofctl("audit", "setup-keys", "--state-dir", str(state_dir))
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("aofd-seal-v2:")

    with harness.serve_directory(repo, tmp_path) as (daemon, admin):
        daemon.wait_for(
            lambda: '"ready": true' in aofctl("status", "-o", "json", "--admin", admin).stdout, what="ready"
        )
        status = aofctl("status", "--admin", admin).stdout
        assert "Audit sealing:     on" in status
        assert daemon.stop() == 0
    assert "audit sealing is off" not in daemon.log_text()

    context_dir = audit_dir / "prod"
    segs = segment.list_segments(context_dir)
    assert segs
    last = json.loads(segs[-1].read_bytes().splitlines()[-1])
    assert last["event"]["action"] == "audit.sealed"
    assert last["aofd"]["seal"]["reason"] == "stop"

    ok = aofctl("audit", "verify", str(audit_dir), "--verification-key", key)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "seals verified" in ok.stdout
    assert "prod: sealed up to seq" in ok.stdout

    # Rewrite a record and recompute the chain: the chain alone passes, the seals do not.
    assert len(segs) == 1
    seg = segs[0]
    recs = [json.loads(raw) for raw in seg.read_bytes().splitlines()]
    victim = next(i for i, rec in enumerate(recs) if rec["event"]["action"] != "audit.file.opened")
    recs[victim]["event"]["outcome"] = "unknown"
    prev = segment.GENESIS
    out = []
    for rec in recs:
        rec["aofd"]["audit"]["prev"] = prev
        raw = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        prev = segment.line_hash(raw)
        out.append(raw)
    seg.write_bytes(b"".join(out))
    fooled = aofctl("audit", "verify", str(audit_dir))
    assert fooled.returncode == 0, fooled.stdout

    bad = aofctl("audit", "verify", str(audit_dir), "--verification-key", key)
    assert bad.returncode == 1, bad.stdout
    assert f"first bad line prod/{seg.name}:" in bad.stdout
    assert "chain recomputed" in bad.stdout
