"""A real `aofd serve` following a git source that verifies commit signatures: an unsigned commit
and one by a signer who is not listed never run (status and the audit log say why, with the key),
and a commit signed by a listed signer applies with its signer and key in `config.applied`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, TRIGGER, binding
from tests.source import gitkit, signkit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(signkit.have_tools() is not None, reason=f"{signkit.have_tools()}"),
]

ALICE = "alice@example.com"
BOB = "bob@example.com"


def audit_records(audit_dir: Path, action: str) -> list[dict[str, Any]]:
    found = []
    for segment in sorted((audit_dir / "prod").glob("audit-*.jsonl")):
        for line in segment.read_text().splitlines():
            record = json.loads(line)
            if record.get("event", {}).get("action") == action:
                found.append(record)
    return found


@pytest.fixture
def signed_setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = {name: signkit.ssh_key(tmp_path / "keys", name) for name in ("alice", "bob")}
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        f'{ALICE} namespaces="git" {signkit.public(keys["alice"])}\n{BOB} {signkit.public(keys["bob"])}\n'
    )
    remote = gitkit.Remote.create(tmp_path)
    signkit.sign_with_ssh(remote, keys["alice"])
    for path, text in {
        "agents/echo.yaml": AGENT,
        "flows/echo.yaml": FLOW,
        "triggers/hook.yaml": TRIGGER,
        "bindings/b1.yaml": binding("b1"),
    }.items():
        remote.write(path, text)
    first = remote.commit("initial, signed by alice")
    secrets = tmp_path / "secrets"
    (secrets / "contexts").mkdir(parents=True)
    (secrets / "contexts" / "prod.yaml").write_text(CONTEXT)
    with fakes.anthropic_server() as model:
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [
                        {
                            "name": "main",
                            "git": {
                                "url": remote.url,
                                "ref": {"branch": "main"},
                                "interval": "1h",
                                "verify": {
                                    "mode": "head",
                                    "ssh_allowed_signers_file": str(allowed),
                                    "signers": [ALICE],
                                },
                            },
                            "kinds": ["Agent", "AgentFleet", "AgentFlow", "Trigger", "FlowBinding"],
                        },
                        {"name": "secrets", "directory": {"path": str(secrets)}, "kinds": ["Context"]},
                    ],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(tmp_path / "audit"),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "drain_grace_seconds": 5,
                }
            )
        )
        yield {"remote": remote, "keys": keys, "config": config, "tmp": tmp_path, "first": first}


def aofctl_status(daemon: harness.DaemonProcess) -> str:
    admin = daemon.endpoints["admin"]
    done = subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", "status", "--admin", admin],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def main_source(daemon: harness.DaemonProcess) -> dict[str, Any]:
    return next(s for s in daemon.get("/api/v1/status")[1]["sources"] if s["name"] == "main")


def test_only_commits_by_listed_signers_run(signed_setup: dict[str, Any]) -> None:
    remote: gitkit.Remote = signed_setup["remote"]
    keys = signed_setup["keys"]
    audit_dir = signed_setup["tmp"] / "audit"
    with harness.run_daemon(
        "--config",
        str(signed_setup["config"]),
        cwd=signed_setup["tmp"],
        state_dir=signed_setup["tmp"] / "state",
        env={"ANTHROPIC_API_KEY": "test-key"},
    ) as daemon:
        daemon.wait_ready()
        src = main_source(daemon)
        assert signed_setup["first"] == src["lastApplied"]
        assert (ALICE, signkit.fingerprint(keys["alice"])) == (
            src["signature"]["signer"],
            src["signature"]["fingerprint"],
        )

        # An unsigned commit never runs; status and the audit log say why.
        signkit.unsign(remote)
        remote.write("bindings/b2.yaml", binding("b2"))
        unsigned = remote.commit("unsigned")
        assert 202 == daemon.post("/api/v1/reconcile?source=main")[0]
        src = daemon.wait_for(
            lambda: (s := main_source(daemon))["rejectedCommit"] and s, what="the unsigned commit rejected"
        )
        assert {"commit": unsigned, "reason": "the commit is not signed", "object": "commit"} == src[
            "rejectedCommit"
        ]
        assert f"commit {unsigned} rejected: the commit is not signed" in src["lastError"]
        assert signed_setup["first"] == src["lastApplied"]
        assert 404 == daemon.get("/api/v1/resources/FlowBinding/b2")[0]
        rejected = daemon.wait_for(lambda: audit_records(audit_dir, "config.rejected"), what="audit record")
        assert unsigned == rejected[-1]["aofd"]["signature"]["commit"]

        # Signed, but by bob, who is trusted by allowed_signers and not a listed signer.
        signkit.sign_with_ssh(remote, keys["bob"])
        by_bob = remote.commit("signed by bob")
        assert 202 == daemon.post("/api/v1/reconcile?source=main")[0]
        src = daemon.wait_for(
            lambda: (
                (s := main_source(daemon))["rejectedCommit"] and s["rejectedCommit"]["commit"] == by_bob and s
            ),
            what="bob's commit rejected",
        )
        assert signkit.fingerprint(keys["bob"]) == src["rejectedCommit"]["fingerprint"]
        assert f"signed by {BOB}, which is not in signers" == src["rejectedCommit"]["reason"]
        record = daemon.wait_for(
            lambda: [
                r for r in audit_records(audit_dir, "config.rejected") if r["aofd"]["revision"] == by_bob
            ],
            what="bob's rejection audited",
        )[0]
        assert "failure" == record["event"]["outcome"]
        assert signkit.fingerprint(keys["bob"]) == record["aofd"]["signature"]["fingerprint"]
        assert 404 == daemon.get("/api/v1/resources/FlowBinding/b2")[0]
        shown = aofctl_status(daemon)
        assert (
            f"  rejected commit {by_bob}: signed by {BOB}, which is not in signers "
            f"(key {signkit.fingerprint(keys['bob'])})"
        ) in shown.splitlines()

        # Signed by alice: applies, and config.applied names her and her key.
        signkit.sign_with_ssh(remote, keys["alice"])
        good = remote.commit("signed by alice")
        assert 202 == daemon.post("/api/v1/reconcile?source=main")[0]
        daemon.wait_for(lambda: main_source(daemon)["lastApplied"] == good, what="alice's commit applied")
        assert 200 == daemon.get("/api/v1/resources/FlowBinding/b2")[0]
        src = main_source(daemon)
        assert src["rejectedCommit"] is None
        applied = daemon.wait_for(
            lambda: [
                r
                for r in audit_records(audit_dir, "config.applied")
                if any(s["commit"] == good for s in r["aofd"].get("signatures", []))
            ],
            what="config.applied with the signer",
        )[0]
        signed = applied["aofd"]["signatures"][0]
        assert ("main", ALICE, signkit.fingerprint(keys["alice"]), "ssh") == (
            signed["source"],
            signed["signer"],
            signed["fingerprint"],
            signed["format"],
        )
        shown = aofctl_status(daemon)
        assert (
            f"  signed by {ALICE} (key {signkit.fingerprint(keys['alice'])}, ssh commit {good[:12]})"
        ) in shown.splitlines()
        assert "rejected commit" not in shown
        assert 0 == daemon.stop()


def test_rollback_to_an_older_signed_commit_is_refused_also_after_a_restart(
    signed_setup: dict[str, Any],
) -> None:
    """A force-push back to an older commit signed by alice never runs; after a restart the
    applied revision comes from the state dir, and status says it is not re-verified yet."""
    remote: gitkit.Remote = signed_setup["remote"]
    tmp = signed_setup["tmp"]
    audit_dir = tmp / "audit"
    first = signed_setup["first"]

    def serve() -> Any:
        return harness.run_daemon(
            "--config",
            str(signed_setup["config"]),
            cwd=tmp,
            state_dir=tmp / "state",
            env={"ANTHROPIC_API_KEY": "test-key"},
        )

    with serve() as daemon:
        daemon.wait_ready()
        remote.write("bindings/b2.yaml", binding("b2"))
        second = remote.commit("second, signed by alice")
        assert 202 == daemon.post("/api/v1/reconcile?source=main")[0]
        daemon.wait_for(lambda: main_source(daemon)["lastApplied"] == second, what="second applied")
        remote.git("reset", "-q", "--hard", first)
        remote.push(force=True)
        assert 202 == daemon.post("/api/v1/reconcile?source=main")[0]
        src = daemon.wait_for(
            lambda: (s := main_source(daemon))["rejectedCommit"] and s, what="the rollback refused"
        )
        assert (first, f"not a fast-forward of {second}") == (
            src["rejectedCommit"]["commit"],
            src["rejectedCommit"]["reason"],
        )
        assert second == src["lastApplied"]
        assert 200 == daemon.get("/api/v1/resources/FlowBinding/b2")[0]
        record = daemon.wait_for(
            lambda: [
                r for r in audit_records(audit_dir, "config.rejected") if r["aofd"]["revision"] == first
            ],
            what="the rollback audited",
        )[0]
        assert f"not a fast-forward of {second}" == record["aofd"]["signature"]["reason"]
        assert 0 == daemon.stop()

    hidden = remote.bare.with_name("away.git")
    remote.bare.rename(hidden)  # unreachable: the restored revision is not fetched again
    with serve() as daemon:
        daemon.wait_ready()
        src = main_source(daemon)
        assert second == src["lastApplied"]
        assert {"commit": second, "verified": "not re-verified since restart"} == src["signature"]
        assert (
            "  signature: not re-verified since restart (commit " + second[:12] + ")"
            in aofctl_status(daemon).splitlines()
        )
        hidden.rename(remote.bare)  # back, still at the older commit: refused against the state dir's
        assert 202 == daemon.post("/api/v1/reconcile?source=main")[0]
        src = daemon.wait_for(
            lambda: (s := main_source(daemon))["rejectedCommit"] and s, what="the rollback refused again"
        )
        assert f"not a fast-forward of {second}" == src["rejectedCommit"]["reason"]
        assert 200 == daemon.get("/api/v1/resources/FlowBinding/b2")[0]
        assert 0 == daemon.stop()
