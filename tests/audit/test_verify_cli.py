"""`aofctl audit verify` / `audit tail`, and the verifier's view of damage other than bit flips."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from pathlib import Path

import pytest

from aofd.audit import journal, records, segment, tail, verify
from aofd.cli import audit_cmd


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aofctl")
    audit_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


async def make_log(audit_dir: Path, count: int, *, max_segment_bytes: int = 8 * 1024) -> Path:
    opts = segment.JournalOptions(max_segment_bytes=max_segment_bytes, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts) as audit:
        for i in range(count):
            await audit.write("prod", records.build("trigger.received", context="prod", event_id=f"E{i}"))
    return audit_dir / "prod"


async def test_verify_exit_codes(audit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 for an intact log, 1 with the first bad line printed when tampered, 2 for a missing path."""
    directory = await make_log(audit_dir, 30)
    capsys.readouterr()
    assert run_cli(["audit", "verify", str(directory)]) == 0
    assert "chain intact" in capsys.readouterr().out
    seg = segment.list_segments(directory)[1]
    lines = seg.read_bytes().splitlines(keepends=True)
    del lines[2]  # a deleted line
    seg.write_bytes(b"".join(lines))
    capsys.readouterr()
    assert run_cli(["audit", "verify", str(audit_dir)]) == 1
    out = capsys.readouterr().out
    assert f"first bad line prod/{seg.name}:3:" in out
    assert "1 record(s) missing" in out
    assert run_cli(["audit", "verify", str(audit_dir / "nope")]) == 2


async def test_verify_names_reordered_and_truncated_segments(audit_dir: Path) -> None:
    """Swapped lines and a removed middle segment are both reported at the right place."""
    directory = await make_log(audit_dir, 40)
    segs = segment.list_segments(directory)
    lines = segs[0].read_bytes().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    segs[0].write_bytes(b"".join(lines))
    segs[2].unlink()
    report = verify.verify(directory)
    assert [(p.file, p.line) for p in report.problems][:2] == [
        (f"prod/{segs[0].name}", 3),
        (f"prod/{segs[0].name}", 4),
    ]
    assert any(
        p.file == f"prod/{segs[3].name}" and p.line == 1 and "missing" in p.reason for p in report.problems
    )


async def test_verify_reports_a_torn_tail_and_a_symlinked_segment(audit_dir: Path, tmp_path: Path) -> None:
    """An unterminated last line and a symlink in place of a segment are problems, never followed."""
    directory = await make_log(audit_dir, 5)
    seg = segment.list_segments(directory)[-1]
    with seg.open("ab") as handle:
        handle.write(b'{"torn":')
    victim = tmp_path / "victim"
    victim.write_text("not audit\n")
    (directory / "audit-20990101T000000Z-999.jsonl").symlink_to(victim)
    reasons = [p.reason for p in verify.verify(directory).problems]
    assert any("unterminated" in r for r in reasons)
    assert any("symlink" in r for r in reasons)


async def test_tail_prints_last_lines(audit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit tail CONTEXT -n 3` prints the last three lines across segments."""
    await make_log(audit_dir, 30)
    capsys.readouterr()
    assert run_cli(["audit", "tail", "prod", "--audit-dir", str(audit_dir), "-n", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert json.loads(out[-1])["event"]["id"] == "E29"
    assert run_cli(["audit", "tail", "../etc", "--audit-dir", str(audit_dir)]) == 2


async def test_follow_crosses_rotations(audit_dir: Path) -> None:
    """follow() yields every line once, in seq order, while the writer rotates."""
    directory = audit_dir / "prod"
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        for line in tail.follow(directory, poll_interval=0.005, stop=stop.is_set):
            seen.append(json.loads(line)["aofd"]["audit"]["seq"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        await make_log(audit_dir, 200, max_segment_bytes=6 * 1024)
        total = verify.verify(directory).records
        for _ in range(400):
            if len(seen) >= total:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)
    assert len(segment.list_segments(directory)) > 3
    assert seen == list(range(1, total + 1))


async def test_verify_reports_removed_newest_segment(audit_dir: Path) -> None:
    """Deleting the newest segment leaves a log ending in audit.file.rotated: reported, not OK."""
    directory = await make_log(audit_dir, 30, max_segment_bytes=3000)
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
    directory = await make_log(audit_dir, 30, max_segment_bytes=3000)
    segs = segment.list_segments(directory)
    segs[0].write_bytes(b"")
    report = verify.verify(directory)
    assert not report.ok
    first = report.first_problem
    assert first is not None
    assert (first.file, first.line) == (f"prod/{segs[0].name}", 0)
