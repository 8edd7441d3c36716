"""Secrets never reach an audit line: free-text fields and argv, written through the real journal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import journal, records, segment
from aofd.daemon import auditsink
from aofd.runtime import ports

SECRET = "s3cr3tVALUE9"


def _lines(audit_dir: Path, context: str) -> list[dict[str, Any]]:
    text = b"".join(p.read_bytes() for p in segment.list_segments(audit_dir / context)).decode()
    return [json.loads(line) for line in text.splitlines()]


def _leaks(record: Any, path: str = "") -> list[str]:
    """The dotted paths of the leaves of `record` that contain `SECRET`."""
    if isinstance(record, dict):
        return [leak for k, v in record.items() for leak in _leaks(v, f"{path}.{k}" if path else k)]
    if isinstance(record, list):
        return [leak for v in record for leak in _leaks(v, path)]
    return [path] if SECRET in str(record) else []


async def test_free_text_fields_are_redacted_through_the_writer(audit_dir: Path) -> None:
    """Errors, messages, output excerpts, rate-limit messages and any string under `aofd.*` lose
    their secrets; structural fields (ids, names, the context) are written as given.
    """
    events = [
        ports.AuditEvent(
            "agent.run.finished",
            outcome="failure",
            details={
                "run": {
                    "status": "failed",
                    "error": f"POST https://api.x/v1?api_key={SECRET} failed: Authorization: Bearer {SECRET}",
                }
            },
        ),
        ports.AuditEvent(
            "agent.run.finished",
            outcome="failure",
            details={"run": {"status": "failed", "error": f"provider said: invalid x-api-key {SECRET}"}},
        ),
        ports.AuditEvent("trigger.rejected", message=f"token={SECRET}", reason=f"password={SECRET}"),
        ports.AuditEvent(
            "command.finished",
            details={"output": records.body(f"apiVersion: v1\ndata:\n  password: {SECRET}\n")},
        ),
        ports.AuditEvent(
            "ratelimit.exceeded",
            details={"ratelimit": {"message": f"slow down, Bearer {SECRET}"}},
        ),
        ports.AuditEvent(
            "config.rejected", outcome="failure", details={"errors": [f"client_secret: {SECRET}"]}
        ),
        ports.AuditEvent("config.rejected", outcome="failure", details={"auth": {"password": SECRET}}),
    ]
    async with journal.AuditLog(audit_dir=audit_dir) as log:
        sink = auditsink.AuditAdapter(log, redactor=records.ArgvRedactor(key=b"k"))
        for event in events:
            await sink.write("prod", event)
    lines = _lines(audit_dir, "prod")
    leaks = {rec["event"]["action"] + ":" + p for rec in lines for p in _leaks(rec)}
    assert leaks == set()
    finished = [rec for rec in lines if rec["event"]["action"] == "agent.run.finished"]
    assert "https://api.x/v1?api_key=[REDACTED]" in finished[0]["aofd"]["run"]["error"]
    assert finished[0]["aofd"]["run"]["status"] == "failed"
    rejected = next(rec for rec in lines if rec["event"]["action"] == "trigger.rejected")
    assert rejected["message"] == "token=[REDACTED]"
    for rec in lines:
        assert rec["aofd"]["context"] == "prod"
        assert len(rec["event"]["id"]) == 26


@pytest.mark.parametrize(
    "argv",
    [
        ("sh", "-c", f"export API_TOKEN={SECRET}; kubectl get pods"),
        ("bash", "-c", f"FOO=1 DB_PASSWORD={SECRET} ./migrate"),
        ("kubectl", "--kubeconfig=/x", f"--client-key-data={SECRET}"),
        ("kubectl", f"--client-certificate-data={SECRET}"),
        ("kubectl", "--client-key-data", SECRET),
        ("docker", "login", "-u", "bob", "-p", SECRET),
        ("docker", "login", "--password", SECRET),
        ("/usr/bin/docker", "login", f"-p{SECRET}"),
        ("vault", "login", SECRET),
        ("vault", "login", "-method=userpass", "username=bob", f"password={SECRET}"),
        ("aws", "configure", "set", "aws_secret_access_key", SECRET),
        ("aws", "configure", "set", "aws_session_token", SECRET),
        ("openssl", "enc", "-pass", f"pass:{SECRET}"),
        ("openssl", "pkcs12", "-export", "-passout", f"pass:{SECRET}"),
        ("helm", "registry", "login", "r.example.com", "-u", "bob", "-p", SECRET),
        ("npm", "config", "set", "_authToken", SECRET),
    ],
)
async def test_secret_argv_shapes_are_redacted_through_the_writer(
    audit_dir: Path, argv: tuple[str, ...]
) -> None:
    async with journal.AuditLog(audit_dir=audit_dir) as log:
        sink = auditsink.AuditAdapter(log, redactor=records.ArgvRedactor(key=b"k"))
        await sink.write("prod", ports.AuditEvent("command.started", process=ports.AuditProcess(args=argv)))
    (rec,) = [r for r in _lines(audit_dir, "prod") if r["event"]["action"] == "command.started"]
    assert _leaks(rec) == []
    assert rec["process"]["args_count"] == len(argv)
    assert rec["process"]["args"][0] == argv[0]


def test_harmless_argv_is_kept() -> None:
    """The rules do not hide ordinary arguments of the same tools."""
    redactor = records.ArgvRedactor(key=b"k")
    for argv in (
        ("docker", "run", "-p", "8080:80", "nginx"),
        ("vault", "status"),
        ("vault", "kv", "get", "secret/app"),
        ("aws", "configure", "set", "region", "eu-west-1"),
        ("openssl", "x509", "-in", "cert.pem", "-noout"),
        ("openssl", "pkcs12", "-passout", "env:PW", "-passin", "file:/run/pw"),
        ("aws", "configure", "get", "aws_secret_access_key"),
        ("sh", "-c", "export PATH=/usr/bin; kubectl get pods"),
        ("kubectl", "get", "secret", "api-token", "-o", "name"),
    ):
        assert redactor.redact(argv) == argv, argv
