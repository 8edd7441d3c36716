"""Every `audit.recovered` record says what kind of damage it reports (`aofd.recovery.kind`)."""

from __future__ import annotations

import json
from pathlib import Path

from aofd.audit import journal, records, segment


def _recovered(audit_dir: Path) -> list[dict[str, object]]:
    lines = b"".join(p.read_bytes() for p in segment.list_segments(audit_dir / "prod")).splitlines()
    parsed = [json.loads(line) for line in lines]
    return [rec["aofd"]["recovery"] for rec in parsed if rec["event"]["action"] == "audit.recovered"]


async def test_a_repaired_torn_tail_is_kind_torn(audit_dir: Path, options: segment.JournalOptions) -> None:
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", records.build("daemon.started", context="prod"), durable=True)
        active = audit.active_segment("prod")
    assert active is not None
    with active.open("ab") as handle:
        handle.write(b'{"@timestamp":"2025-06-01T12:00:03Z","ecs":{"vers')
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(["prod"])
    (recovery,) = _recovered(audit_dir)
    assert recovery["kind"] == "torn"
    assert recovery["file"] == active.name


async def test_a_segment_holding_only_a_torn_line_is_kind_torn(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", records.build("daemon.started", context="prod"), durable=True)
        active = audit.active_segment("prod")
    assert active is not None
    last_seq = json.loads(active.read_bytes().splitlines()[-1])["aofd"]["audit"]["seq"]
    torn = active.parent / segment.segment_name(4_102_444_800.0, last_seq + 1)  # sorts after `active`
    torn.write_bytes(b'{"@timestamp":"2025-06-01T12:00:03Z","ecs":{"vers')
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(["prod"])
    assert not torn.exists()
    (recovery,) = _recovered(audit_dir)
    assert recovery["kind"] == "torn"
    assert recovery["file"] == torn.name
