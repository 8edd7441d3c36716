"""Audit record shape (RELIABILITY.md §1.5), secret argv values, and the 16 KiB line cap."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from aofd.audit import records

SEED_LINE = {
    "timestamp": "2024-01-15T10:30:00Z",
    "context": "prod-context",
    "agent": "k8s-ops",
    "user": "U015VBH1GTZ",
    "command": "kubectl delete pod nginx-abc123",
    "approved_by": "U015SRE_LEAD",
    "cluster": "prod-us-east-1",
    "namespace": "default",
    "status": "success",
}


def finished() -> dict[str, Any]:
    return records.build(
        "command.finished",
        context="prod-context",
        event_id="01JX5Q6W3Z8K2S4B7D9F0H1J2K",
        now=1_748_779_203.412918,
        reason="matched allowed_commands rule kubectl-delete",
        duration_ns=1_500_000,
        origin=records.Origin(service_version="0.1.0", hostname="ops-1"),
        user=records.Actor("U015VBH1GTZ", "alice", "slack:T0001"),
        approver=records.Actor("U015SRE_LEAD", "bob", "slack:T0001"),
        agent="k8s-ops",
        run_id="01JX5Q5",
        decision={"result": "allow", "rule": "kubectl-delete"},
        process=records.Process(
            ("kubectl", "delete", "pod", "nginx-abc123"), exit_code=0, working_directory="/w"
        ),
        cluster="prod-us-east-1",
        namespace="default",
        resource_type="pods",
        revision="main@3f2a9c1+secrets@9b71e02",
        output="pod deleted\n",
    )


def test_record_has_the_ecs_shape() -> None:
    """A command record carries the ECS fields and the aofd namespace of §1.5."""
    rec = finished()
    assert rec["@timestamp"] == "2025-06-01T12:00:03.412918Z"
    assert rec["ecs"] == {"version": records.ECS_VERSION}
    event = rec["event"]
    assert isinstance(event, dict)
    assert event["action"] == "command.finished"
    assert event["category"] == ["process"]
    assert event["type"] == ["end"]
    assert event["outcome"] == "success"
    assert event["dataset"] == "aofd.audit"
    assert event["duration"] == 1_500_000
    aofd = rec["aofd"]
    assert isinstance(aofd, dict)
    assert aofd["schema"] == "aofd.audit/v1"
    assert aofd["agent"] == {"name": "k8s-ops", "run_id": "01JX5Q5"}
    assert aofd["approval"]["approver"]["id"] == "U015SRE_LEAD"
    assert aofd["output"]["sha256"] == hashlib.sha256(b"pod deleted\n").hexdigest()
    assert rec["related"] == {"user": ["U015VBH1GTZ", "U015SRE_LEAD"]}
    assert rec["process"]["args_count"] == 4
    assert rec["process"]["exit_code"] == 0
    assert rec["orchestrator"] == {
        "type": "kubernetes",
        "cluster": {"name": "prod-us-east-1"},
        "namespace": "default",
        "resource": {"type": "pods"},
    }
    assert rec["service"] == {"name": "aofd", "version": "0.1.0"}
    assert rec["host"] == {"hostname": "ops-1"}
    assert rec["trace"] == {"id": "01JX5Q5"}


def test_seed_audit_line_is_a_subset() -> None:
    """Every key of the seed's flat audit line is present, with the seed's value (user as user.id)."""
    rec = finished()
    assert set(SEED_LINE) <= set(rec)
    for key, value in SEED_LINE.items():
        if key == "user":
            assert rec["user"]["id"] == value
        elif key != "timestamp":
            assert rec[key] == value, key
    assert rec["timestamp"] == rec["@timestamp"]


@pytest.mark.parametrize(("action", "status"), [("command.denied", "denied"), ("approval.expired", "denied")])
def test_denials_are_event_types_not_outcomes(action: str, status: str) -> None:
    """A denial is event.type 'denied' with an ECS outcome; the seed status says 'denied'."""
    rec = records.build(action, context="c", outcome="success")
    assert "denied" in rec["event"]["type"]
    assert rec["event"]["outcome"] in ("success", "failure", "unknown")
    assert rec["status"] == status


def test_every_action_of_the_vocabulary_builds() -> None:
    """All §1.5 actions (and config.applied) build; unknown actions are refused."""
    for action in records.ACTIONS:
        assert records.build(action, context="c")["event"]["action"] == action
    assert "config.applied" in records.ACTIONS
    with pytest.raises(ValueError, match="unknown audit action"):
        records.build("command.exploded", context="c")


def test_secret_argv_values_are_hmacd_and_args_count_kept() -> None:
    """Values after --token/--password (and KEY=value, vendor tokens) become hmac-sha256:<hex>."""
    key = b"k" * 32
    redactor = records.ArgvRedactor(key=key)
    argv = [
        "/usr/bin/kubectl",
        "--token",
        "s3cr3t",
        "--password=hunter2",
        "get",
        "pods",
        "DB_PASSWORD=pw",
        "xoxb-123-456-abc",
        "--namespace",
        "payments",
    ]
    out = redactor.redact(argv)
    mac = "hmac-sha256:" + hmac.new(key, b"s3cr3t", hashlib.sha256).hexdigest()
    assert len(out) == len(argv)
    assert out[1:3] == ("--token", mac)
    assert out[3] == "--password=hmac-sha256:" + hmac.new(key, b"hunter2", hashlib.sha256).hexdigest()
    assert out[6].startswith("DB_PASSWORD=hmac-sha256:")
    assert out[7].startswith("hmac-sha256:")
    assert out[8:] == ("--namespace", "payments")
    rec = records.build("command.started", context="c", process=records.Process(out))
    assert rec["process"]["args_count"] == len(argv)
    assert "s3cr3t" not in json.dumps(rec)


def test_without_a_key_values_are_hashed_with_a_per_daemon_key() -> None:
    """No configured key: values are keyed-hashed as sha256:<hex>, differently per redactor."""
    a, b = records.ArgvRedactor(), records.ArgvRedactor()
    assert a.digest("x").startswith("sha256:")
    assert a.digest("x") == a.digest("x")
    assert a.digest("x") != b.digest("x")
    assert a.digest("x") != "sha256:" + hashlib.sha256(b"x").hexdigest()


def test_encode_line_never_drops_the_record() -> None:
    """A record of many huge fields still encodes into the cap with its audit fields and digest."""
    rec = records.build("command.finished", context="c", event_id="E1")
    rec["aofd"]["audit"] = {"file_id": "f", "seq": 7, "prev": "sha256:00"}
    rec["aofd"]["junk"] = {f"k{i}": "v" * 400 for i in range(200)}
    line, truncated = records.encode_line(rec, max_bytes=2048)
    assert truncated
    assert len(line) <= 2048
    parsed = json.loads(line)
    assert parsed["aofd"]["audit"]["seq"] == 7
    assert parsed["event"]["id"] == "E1"
    assert parsed["aofd"]["original"]["bytes"] > 2048


def test_new_id_is_a_sortable_ulid() -> None:
    """Event ids are 26-character ULIDs that sort by time."""
    early, late = records.new_id(1_000.0), records.new_id(2_000.0)
    assert len(early) == 26
    assert early < late
