"""Reopening a Context's audit log after an unclean shutdown closes what was left open: runs
get `agent.run.finished` (status `interrupted`), commands `command.abandoned`, with `killed`
and the pid when the daemon killed what was left of them; never twice, chain intact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from aofd.audit import journal, records, segment, verify


def read(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for seg in sorted(directory.glob("audit-*.jsonl"))
        for line in seg.read_text().splitlines()
    ]


def of(lines: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [rec for rec in lines if rec["event"]["action"] == action]


async def test_a_run_without_its_closing_record_is_closed_as_interrupted(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        for action, run_id in (
            ("agent.run.started", "RUN-OPEN"),
            ("agent.run.started", "RUN-DONE"),
            ("agent.run.finished", "RUN-DONE"),
        ):
            record = records.build(
                action,
                context="prod",
                agent="echo-flow",
                run_id=run_id,
                user=records.Actor("U1"),
                extra={"binding": "b1", "flow": "echo-flow"},
            )
            await audit.write("prod", record)
    for _ in range(2):  # a second restart must not close it again
        async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
            await audit.open(["prod"])
    lines = read(audit_dir / "prod")
    closing = [rec for rec in of(lines, "agent.run.finished") if rec["aofd"]["agent"]["run_id"] == "RUN-OPEN"]
    assert len(closing) == 1
    [rec] = closing
    assert rec["aofd"]["run"]["status"] == "interrupted"
    assert rec["event"]["outcome"] == "unknown"
    assert "unclean shutdown" in rec["event"]["reason"]
    assert (rec["aofd"]["binding"], rec["aofd"]["flow"], rec["user"]["id"]) == ("b1", "echo-flow", "U1")
    assert len(of(lines, "agent.run.finished")) == 2
    assert verify.verify(audit_dir / "prod").ok


async def test_a_killed_survivor_is_named_in_command_abandoned(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        started = records.build(
            "command.started",
            context="prod",
            event_id="CMD-1",
            process=records.Process(("/usr/bin/kubectl", "get", "pods")),
        )
        await audit.write("prod", started, durable=True)
        await audit.write("prod", records.build("command.started", context="prod", event_id="CMD-2"))
    survivors = {
        "prod": {
            "CMD-1": {"killed": True, "pid": 4242, "processes": 2, "kill_reason": "still running at restart"},
            "CMD-OLD": {
                "killed": True,
                "pid": 4343,
                "processes": 1,
                "kill_reason": "still running at restart",
            },
        },
        "other": {"CMD-X": {"killed": True, "pid": 1, "processes": 1, "kill_reason": "x"}},
    }
    async with journal.AuditLog(audit_dir=audit_dir, options=options, survivors=survivors) as audit:
        await audit.open(["prod"])
    abandoned = {rec["event"]["id"]: rec for rec in of(read(audit_dir / "prod"), "command.abandoned")}
    assert sorted(abandoned) == ["CMD-1", "CMD-2", "CMD-OLD"]
    one = abandoned["CMD-1"]["aofd"]["abandoned"]
    assert (one["killed"], one["pid"], one["processes"]) == (True, 4242, 2)
    assert "killed at restart" in abandoned["CMD-1"]["event"]["reason"]
    assert abandoned["CMD-1"]["process"]["args"] == ["/usr/bin/kubectl", "get", "pods"]
    assert abandoned["CMD-2"]["aofd"]["abandoned"]["killed"] is False
    assert abandoned["CMD-OLD"]["aofd"]["abandoned"]["pid"] == 4343  # its start was before the scanned tail
    assert not (audit_dir / "other").exists()
    assert verify.verify(audit_dir / "prod").ok


def test_unfinished_runs_pairs_by_run_id() -> None:
    def rec(action: str, run_id: str) -> dict[str, Any]:
        return records.build(action, context="prod", run_id=run_id)

    lines = [
        rec("agent.run.started", "A"),
        rec("agent.run.started", "B"),
        rec("agent.run.finished", "A"),
        rec("agent.run.finished", "C"),
        records.build("agent.run.started", context="prod"),  # no run id: cannot be paired, ignored
    ]
    assert [records.run_id_of(r) for r in records.unfinished_runs(lines)] == ["B"]


def run_record(action: str, run_id: str) -> dict[str, Any]:
    return records.build(
        action,
        context="prod",
        agent="echo-flow",
        run_id=run_id,
        user=records.Actor("U1"),
        extra={"binding": "b1", "flow": "echo-flow"},
    )


async def test_a_run_started_before_a_rotation_is_closed_as_interrupted(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """Its start lies segments behind the scanned tail: the open-runs ledger still closes it."""
    small = dataclasses.replace(options, max_segment_bytes=4096, tail_scan_bytes=2048)
    async with journal.AuditLog(audit_dir=audit_dir, options=small) as audit:
        await audit.write("prod", run_record("agent.run.started", "RUN-LONG"))
        await audit.write("prod", run_record("agent.run.started", "RUN-SHORT"))
        await audit.write("prod", run_record("agent.run.finished", "RUN-SHORT"))
        for n in range(60):  # many rotations later ...
            await audit.write("prod", records.build("trigger.received", context="prod", event_id=f"E{n}"))
    assert len(list((audit_dir / "prod").glob("audit-*.jsonl"))) > 3
    for _ in range(2):  # a second restart must not close it again
        async with journal.AuditLog(audit_dir=audit_dir, options=small) as audit:
            await audit.open(["prod"])
    lines = read(audit_dir / "prod")
    closing = [r for r in of(lines, "agent.run.finished") if r["aofd"]["agent"]["run_id"] == "RUN-LONG"]
    assert len(closing) == 1
    [rec] = closing
    assert rec["aofd"]["run"]["status"] == "interrupted"
    assert rec["aofd"]["run"]["started_seq"] == 2
    assert (rec["aofd"]["binding"], rec["aofd"]["flow"], rec["user"]["id"]) == ("b1", "echo-flow", "U1")
    assert len(of(lines, "agent.run.finished")) == 2
    assert list((audit_dir / "prod" / segment.OPEN_RUNS_DIR).iterdir()) == []
    assert verify.verify(audit_dir / "prod").ok


async def test_the_open_runs_ledger_holds_a_run_only_while_it_runs(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", run_record("agent.run.started", "RUN-1"))
        ledger = audit_dir / "prod" / segment.OPEN_RUNS_DIR
        assert [p.name for p in ledger.iterdir()] == ["RUN-1.json"]
        await audit.write("prod", run_record("agent.run.finished", "RUN-1"))
        assert list(ledger.iterdir()) == []


async def test_survivors_are_closed_once_with_their_run(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """A killed command whose start and run start are not in the scanned tail: `command.abandoned`
    and the run's `interrupted` are written once, also when the same survivors come again (the
    daemon died before it could forget them)."""
    survivors = {
        "prod": {
            "CMD-9": {
                "killed": True,
                "pid": 4242,
                "processes": 1,
                "kill_reason": "still running at restart",
                "run_id": "RUN-9",
            }
        }
    }
    for _ in range(2):
        async with journal.AuditLog(audit_dir=audit_dir, options=options, survivors=survivors) as audit:
            await audit.open(["prod"])
    lines = read(audit_dir / "prod")
    [abandoned] = of(lines, "command.abandoned")
    assert (abandoned["event"]["id"], abandoned["aofd"]["abandoned"]["killed"]) == ("CMD-9", True)
    [finished] = of(lines, "agent.run.finished")
    assert finished["aofd"]["agent"]["run_id"] == "RUN-9"
    assert finished["aofd"]["run"]["status"] == "interrupted"
    assert verify.verify(audit_dir / "prod").ok


async def test_close_leftovers_writes_where_the_log_was_and_closes_it(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """A Context no revision names (yet): its log, at the recorded place, gets the closing records
    at once; the log is closed again so a revision can open it where it says."""
    where = audit_dir / "teams" / "old"
    fields = {"killed": True, "pid": 7, "processes": 1, "kill_reason": "still running at restart"}
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.close_leftovers("old", {"CMD-1": fields}, log_path=str(where))
        assert audit.opened_contexts() == ()
    [abandoned] = of(read(where), "command.abandoned")
    assert abandoned["aofd"]["abandoned"]["killed"] is True
    assert not (audit_dir / "old").exists()


async def test_a_torn_open_runs_entry_still_closes_its_run(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(["prod"])
    (audit_dir / "prod" / segment.OPEN_RUNS_DIR).mkdir()
    (audit_dir / "prod" / segment.OPEN_RUNS_DIR / "RUN-T.tmp").write_text('{"seq": 3, "sta')
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(["prod"])
    [finished] = of(read(audit_dir / "prod"), "agent.run.finished")
    assert (finished["aofd"]["agent"]["run_id"], finished["aofd"]["run"]["status"]) == (
        "RUN-T",
        "interrupted",
    )
    assert list((audit_dir / "prod" / segment.OPEN_RUNS_DIR).iterdir()) == []


async def test_an_approval_left_open_is_cancelled_once(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """A request pending when aofd died can never be decided (pending requests live in memory): the
    next open closes it with approval.cancelled; a partial vote does not close it, a final record does."""

    def approval(action: str, rid: str, **info: Any) -> dict[str, Any]:
        return records.build(
            action,
            context="prod",
            agent="k8s-ops",
            run_id="RUN-1",
            user=records.Actor("U1"),
            event_id=f"cmd-{rid}",
            extra={"approval": {"id": rid, **info}},
        )

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        for record in (
            approval("approval.requested", "OPEN"),
            approval("approval.granted", "OPEN", final=False),  # one vote of two
            approval("approval.requested", "DONE"),
            approval("approval.denied", "DONE", final=True),
        ):
            await audit.write("prod", record)
    for _ in range(2):
        async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
            await audit.open(["prod"])
    lines = read(audit_dir / "prod")
    (closing,) = of(lines, "approval.cancelled")
    assert closing["aofd"]["approval"]["id"] == "OPEN"
    assert closing["aofd"]["approval"]["final"] is True
    assert (closing["event"]["id"], closing["user"]["id"]) == ("cmd-OPEN", "U1")
    assert "unclean shutdown" in closing["event"]["reason"]
    assert verify.verify(audit_dir / "prod").ok
