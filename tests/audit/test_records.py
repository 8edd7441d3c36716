"""Audit record shape (RELIABILITY.md §1.5), secret argv values, and the 16 KiB line cap."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import journal, records, segment

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


SEED_FIELDS = {
    "timestamp": ("@timestamp",),
    "context": ("aofd", "context"),
    "agent": ("aofd", "agent", "name"),
    "user": ("user", "id"),
    "command": ("process", "command_line"),
    "approved_by": ("aofd", "approval", "approver", "id"),
    "cluster": ("orchestrator", "cluster", "name"),
    "namespace": ("orchestrator", "namespace"),
    "status": ("aofd", "status"),
}
"""Where each field of the seed's audit line is (docs/siem.md): an ECS field or one under `aofd.*`."""


def at(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        value = value[key]
    return value


def test_seed_audit_line_fields_are_ecs_or_aofd_fields() -> None:
    """Every field of the seed's audit line is in the record, at its ECS or `aofd.*` place, with the
    seed's value; nothing of it is left at the top level (only ECS field sets and `aofd` are)."""
    rec = finished()
    for key, value in SEED_LINE.items():
        if key != "timestamp":
            assert at(rec, SEED_FIELDS[key]) == value, key
    assert rec["@timestamp"] == "2025-06-01T12:00:03.412918Z"
    assert set(SEED_LINE).isdisjoint(set(rec) - {"user"})


@pytest.mark.parametrize("action", ["command.denied", "approval.expired", "trigger.rejected"])
def test_denials_are_event_types_and_never_a_success(action: str) -> None:
    """A denial is event.type 'denied' and outcome failure (even if a writer said success); the
    seed's status (`aofd.status`) says 'denied'."""
    rec = records.build(action, context="c", outcome="success")
    assert "denied" in rec["event"]["type"]
    assert rec["event"]["outcome"] == "failure"
    assert rec["aofd"]["status"] == "denied"


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


def test_secret_shaped_argv_elements_are_hashed_whole() -> None:
    """`password=...`, `TOKEN=...`, bearer headers, URL userinfo and `?token=` are replaced by digests."""
    redactor = records.ArgvRedactor(key=b"k" * 32)
    argv = [
        "helm",
        "--set",
        "password=hunter2",
        "--set",
        "auth.password=s3cr3t",
        "TOKEN=abc123",
        "-H",
        "Authorization: Bearer abcdefghijk",
        "https://u:pw0rd@example.com/x",
        "https://example.com/x?access_token=zzz999",
        "-l",
        "app=web",
    ]
    out = redactor.redact(argv)
    text = json.dumps(out)
    for secret in ("hunter2", "s3cr3t", "abc123", "abcdefghijk", "pw0rd", "zzz999"):
        assert secret not in text
    assert len(argv) == len(out)
    assert out[-2:] == ("-l", "app=web")


async def test_command_line_is_rebuilt_from_redacted_args(audit_dir: Path) -> None:
    """A writer's unredacted `process.command_line` / `command` never reach the line; args win."""
    raw = ["kubectl", "create", "secret", "generic", "x", "--from-literal=password=hunter2"]
    raw += ["--token", "tok123"]
    redacted = list(records.ArgvRedactor(key=b"k").redact(raw))
    record = records.build("command.started", context="prod")
    record["process"] = {"args": redacted, "args_count": len(redacted), "command_line": json.dumps(raw)}
    record["command"] = " ".join(raw)
    denied = records.build("command.denied", context="prod", reason="refused: kubectl get --token tok123")
    denied["process"] = {"command_line": "kubectl get pods --token tok123; password=hunter2"}
    async with journal.AuditLog(audit_dir=audit_dir) as audit:
        await audit.write("prod", record, durable=True)
        await audit.write("prod", denied, durable=True)
    text = b"".join(p.read_bytes() for p in segment.list_segments(audit_dir / "prod")).decode()
    assert "hunter2" not in text
    assert "tok123" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    started = next(rec for rec in lines if rec["event"]["action"] == "command.started")
    assert started["process"]["command_line"] == records.shlex.join(redacted)
    assert started["command"] == records.shlex.join(redacted)


def test_oversized_stdout_and_stderr_are_dropped_before_anything_else() -> None:
    """`aofd.output.stdout/stderr` (what the guard writes with log_responses) are bodies: dropped first."""
    rec = records.build("command.finished", context="c", reason="r" * 600)
    rec["aofd"]["output"] = {"sha256": "ab", "bytes": 9000, "stdout": "o" * 9000, "stderr": "e" * 9000}
    line, truncated = records.encode_line(rec, max_bytes=4096)
    parsed = json.loads(line)
    assert truncated
    assert "stdout" not in parsed["aofd"]["output"]
    assert "stderr" not in parsed["aofd"]["output"]
    assert parsed["aofd"]["output"]["dropped"] is True
    assert parsed["event"]["reason"] == "r" * 600  # metadata kept: bodies went first


def test_tool_specific_secret_flags_are_hashed_only_for_that_tool() -> None:
    """`curl -u user:pass`, `curl --user=…`, `mysql -pSECRET`, `redis-cli -a PASS` hide their values;
    `-u` and `-p` of other tools (`sort -u`, `mkdir -p`) keep theirs.
    """
    redactor = records.ArgvRedactor(key=b"k" * 32)
    curl = redactor.redact(
        ["/usr/bin/curl", "-u", "ops:hunter2", "--user=ops:s3cr3t", "-Uproxy:pw9", "https://x"]
    )
    mysql = redactor.redact(["mysql", "-pTopSecret", "-u", "root", "db"])
    redis = redactor.redact(["redis-cli", "-a", "r3dispw", "ping"])
    plain = redactor.redact(["sort", "-u", "names.txt"]) + redactor.redact(["mkdir", "-p", "/tmp/x"])
    text = json.dumps([curl, mysql, redis])
    for secret in ("hunter2", "s3cr3t", "pw9", "TopSecret", "r3dispw"):
        assert secret not in text
    assert ("-u", redactor.digest("ops:hunter2")) == curl[1:3]
    assert curl[3] == "--user=" + redactor.digest("ops:s3cr3t")
    assert curl[4] == "-U" + redactor.digest("proxy:pw9")
    assert mysql[2:] == ("-u", "root", "db")  # mysql's -u is the user name, not a secret
    assert ("sort", "-u", "names.txt", "mkdir", "-p", "/tmp/x") == plain
