"""Review fixes: argv secrets kept out of derived fields, output bodies dropped first, removed segments."""

from __future__ import annotations

import json
from pathlib import Path

from aofd.audit import journal, records, segment, verify


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


async def _log(audit_dir: Path, count: int) -> Path:
    opts = segment.JournalOptions(max_segment_bytes=3000, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts) as audit:
        for i in range(count):
            await audit.write("prod", records.build("trigger.received", context="prod", event_id=f"E{i}"))
    return audit_dir / "prod"


async def test_verify_reports_removed_newest_segment(audit_dir: Path) -> None:
    """Deleting the newest segment leaves a log ending in audit.file.rotated: reported, not OK."""
    directory = await _log(audit_dir, 30)
    segs = segment.list_segments(directory)
    assert verify.verify(directory).ok
    segs[-1].unlink()
    report = verify.verify(directory)
    assert not report.ok
    first = report.first_problem
    assert first is not None
    assert (first.file, "next segment is missing" in first.reason) == (f"prod/{segs[-2].name}", True)


async def test_verify_reports_an_emptied_older_segment(audit_dir: Path) -> None:
    """An older segment truncated to zero bytes is a problem, not a note (only the newest may be empty)."""
    directory = await _log(audit_dir, 30)
    segs = segment.list_segments(directory)
    segs[0].write_bytes(b"")
    report = verify.verify(directory)
    assert not report.ok
    first = report.first_problem
    assert first is not None
    assert (first.file, first.line) == (f"prod/{segs[0].name}", 0)


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
