"""Secrets never reach operational logs: the redaction rules and the structlog configuration."""

from __future__ import annotations

import io
import json
import logging as std_logging

import pytest
import structlog

from aofd.audit import logging as audit_logging
from aofd.audit import redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("clone https://user:hunter2@git.example.com/ops.git failed", "hunter2"),
        ("clone https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/x failed", "ghp_abcdefghij"),
        ("GET /hook?channel=x&token=abc123def&x=1", "abc123def"),
        ("GET /cb?api_key=K3Y&secret=S3C&password=P4SS", "K3Y"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGci"),
        ("header Authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("slack said no for xoxb-1234-5678-abcdefABCDEF", "xoxb-1234"),
        ("socket mode xapp-1-A0123-456-abcdef", "xapp-1"),
        ("anthropic key sk-ant-api03-AbCdEf_123-xyz", "sk-ant-api03"),
        ("kubectl --token s3cr3tvalue get pods", "s3cr3tvalue"),
        ("password=hunter2 user=bob", "hunter2"),
        ("AWS AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
        ("refused: curl -u ops:hunter2 https://x", "hunter2"),
        ("refused: curl -uops:hunter2 https://x", "hunter2"),
        ("refused: curl --user=ops:hunter2 https://x", "hunter2"),
        ("refused: curl --proxy-user ops:hunter2 https://x", "hunter2"),
        ("bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0 failed", "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
        ("graph call with EAAGm0PX4ZCpsBAKZBZCdTyzEXAMPLEt0k3nZZZ failed", "EAAGm0PX4ZCpsBA"),
    ],
)
def test_redact_text_removes_secrets(text: str, secret: str) -> None:
    """Each kind of secret is removed from free text."""
    out = redact.redact_text(text)
    assert secret not in out
    assert redact.REDACTED in out


def test_redact_text_keeps_ordinary_text() -> None:
    """Text without secrets is unchanged (hosts, paths, ordinary query params stay readable)."""
    text = "fetch https://git.example.com/ops.git?ref=main failed: timeout after 60s"
    assert redact.redact_text(text) == text
    command = "sort -u names.txt; kubectl -n prod get pods -l app=web"
    assert redact.redact_text(command) == command


def test_processor_redacts_nested_values_and_secret_keys() -> None:
    """The structlog processor walks dicts, lists and tuples and blanks secret-named keys."""
    event = {
        "event": "request to https://a:b@h/x",
        "headers": {"Authorization": "Bearer abcdefghijkl", "Accept": "json"},
        "slack_bot_token": "xoxb-1-2-3",
        "items": [{"password": "p"}, ("sk-ant-zzz-111",)],
        "count": 3,
    }
    out = redact.processor(None, "info", event)
    assert out["event"] == "request to https://[REDACTED]@h/x"
    assert out["headers"] == {"Authorization": "[REDACTED]", "Accept": "json"}
    assert out["slack_bot_token"] == "[REDACTED]"
    assert out["items"] == [{"password": "[REDACTED]"}, ("[REDACTED]",)]
    assert out["count"] == 3


def test_configure_renders_json_lines_with_redaction_and_traceback() -> None:
    """configure() writes JSON lines to the stream, secrets (also in tracebacks) removed."""
    stream = io.StringIO()
    try:
        audit_logging.configure(level="info", fmt="json", stream=stream)
        log = structlog.get_logger()
        log.debug("hidden")
        log.info("fetch failed", url="https://u:p4ss@git.example.com/r.git")
        try:
            raise RuntimeError("token=xoxb-99-99-secret rejected")
        except RuntimeError:
            log.exception("boom")
        std_logging.getLogger("slack_bolt").warning("bad token xoxb-77-77-leak")
    finally:
        structlog.reset_defaults()
        std_logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["fetch failed", "boom", "bad token [REDACTED]"]
    assert lines[0]["url"] == "https://[REDACTED]@git.example.com/r.git"
    assert lines[0]["level"] == "info"
    assert "timestamp" in lines[0]
    assert "xoxb-99" not in lines[1]["exception"]
    assert "RuntimeError" in lines[1]["exception"]
    assert "p4ss" not in stream.getvalue()
