"""The per-context audit journal on real files: happy paths and RELIABILITY.md §6 rows 34-43."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aofd import errors
from aofd.audit import journal, records, segment, verify

REPO = Path(__file__).resolve().parents[2]


def started(context: str = "prod", event_id: str | None = None, **kw: Any) -> dict[str, Any]:
    return records.build(
        "command.started",
        context=context,
        event_id=event_id,
        agent="k8s-ops",
        user=records.Actor("U012AB3CD", "alice", "slack:T0001"),
        process=records.Process(("/usr/local/bin/kubectl", "get", "pods")),
        cluster="prod-eu",
        namespace="payments",
        **kw,
    )


def read_log(directory: Path) -> list[tuple[Path, bytes, dict[str, Any]]]:
    out = []
    for path in segment.list_segments(directory):
        if path.is_symlink():
            continue
        for raw in path.read_bytes().splitlines(keepends=True):
            out.append((path, raw, json.loads(raw)))
    return out


def actions(directory: Path) -> list[str]:
    return [rec["event"]["action"] for _, _, rec in read_log(directory)]


def seqs(directory: Path) -> list[int]:
    return [rec["aofd"]["audit"]["seq"] for _, _, rec in read_log(directory)]


async def test_one_context_happy_path(audit_dir: Path, options: segment.JournalOptions) -> None:
    """Records of one context land in one 0600 segment whose chain verifies."""
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        for i in range(20):
            await audit.write("prod", started(), durable=i % 2 == 0)
        assert audit.opened_contexts() == ("prod",)
        active = audit.active_segment("prod")
    assert active is not None
    assert stat.S_IMODE(active.stat().st_mode) == 0o600
    assert stat.S_IMODE((audit_dir / "prod").stat().st_mode) & 0o027 == 0
    assert segment.segment_first_seq(active.name) == 1
    assert seqs(audit_dir / "prod") == list(range(1, 22))
    assert actions(audit_dir / "prod")[0] == "audit.file.opened"
    report = verify.verify(audit_dir / "prod")
    assert report.ok, report.problems
    assert report.records == 21


async def test_fifty_contexts_concurrently(audit_dir: Path, options: segment.JournalOptions) -> None:
    """Fifty contexts written at once each get their own intact chain."""
    names = [f"ctx-{i}" for i in range(50)]
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(names)
        await asyncio.gather(
            *(audit.write(name, started(name), durable=j % 3 == 0) for name in names for j in range(10))
        )
        assert audit.opened_contexts() == tuple(sorted(names))
    report = verify.verify(audit_dir)
    assert report.ok, report.problems[:3]
    assert report.records == 50 * 11
    assert sorted(p.name for p in audit_dir.iterdir() if p.is_dir()) == sorted(names)


async def test_durable_write_returns_after_fsync(
    audit_dir: Path, options: segment.JournalOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable write has been fsynced by the time it returns; the group commit covers the rest."""
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(["prod"])
        monkeypatch.setattr("aofd.audit.segment.os.fsync", counting_fsync)
        await audit.write("prod", started(), durable=True)
        assert len(calls) == 1
        await audit.write("prod", started())
        for _ in range(100):  # the group commit follows within group_commit_interval
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 2
        assert audit.metrics.durable_total == 1
        assert audit.metrics.records_total == 2
        assert audit.metrics.durable_latency.count == 1
        assert audit.metrics.grouped_latency.count == 1


async def test_rotation_under_load_continues_the_chain(audit_dir: Path) -> None:
    """1,000 records across a size threshold: chain continues, each segment's first line unique."""
    opts = segment.JournalOptions(max_segment_bytes=32 * 1024, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts) as audit:
        for batch in range(10):
            await asyncio.gather(*(audit.write("prod", started()) for _ in range(100)))
            await audit.write("prod", started(), durable=batch % 2 == 0)
    directory = audit_dir / "prod"
    segments = segment.list_segments(directory)
    assert len(segments) > 5
    first_lines = [p.read_bytes().split(b"\n", 1)[0] for p in segments]
    assert len(set(first_lines)) == len(first_lines)
    previous_last: bytes | None = None
    for path in segments:
        lines = path.read_bytes().splitlines(keepends=True)
        opened = json.loads(lines[0])
        assert opened["event"]["action"] == "audit.file.opened"
        assert opened["aofd"]["file"]["first_seq"] == segment.segment_first_seq(path.name)
        if previous_last is not None:
            assert opened["aofd"]["file"]["prev_file_last_hash"] == segment.line_hash(previous_last)
        if path != segments[-1]:
            assert json.loads(lines[-1])["event"]["action"] == "audit.file.rotated"
            assert path.stat().st_size <= 32 * 1024 + records.MAX_LINE_BYTES
        previous_last = lines[-1]
    assert seqs(directory) == list(range(1, len(seqs(directory)) + 1))
    assert actions(directory).count("command.started") == 1010
    assert verify.verify(directory).ok


async def test_oversized_record_is_truncated_not_dropped(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """A 5 MB output becomes a line of at most 16 KiB that keeps the digest and length."""
    output = ("x" * 99 + "\n") * 50_000  # 5 MB
    via_builder = records.build("command.finished", context="prod", output=output, prompt="p" * 100_000)
    raw = started()
    raw["aofd"]["output"] = {"excerpt": output}  # a caller that skipped the builder's cap
    raw["process"]["args"] = ["a" * 1000] * 5000
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", via_builder, durable=True)
        await audit.write("prod", raw, durable=True)
        assert audit.metrics.truncated_total == 1
    log = read_log(audit_dir / "prod")
    digest = hashlib.sha256(output.encode()).hexdigest()
    for _, line, rec in log[1:]:
        assert len(line) <= records.MAX_LINE_BYTES
        assert rec["aofd"]["output"]["sha256"] == digest
        assert rec["aofd"]["output"]["bytes"] == len(output)
    capped, dropped = log[1][2], log[2][2]
    assert len(capped["aofd"]["output"]["excerpt"]) == records.DEFAULT_EXCERPT_BYTES
    assert capped["aofd"]["output"]["excerpt_truncated"] is True
    assert dropped["aofd"]["truncated"] is True
    assert "excerpt" not in dropped["aofd"]["output"]
    assert log[2][2]["process"]["args_count"] == 3  # the builder's count, never rewritten
    assert verify.verify(audit_dir / "prod").ok


async def test_clock_jumping_backwards_keeps_seq_monotonic(audit_dir: Path) -> None:
    """An NTP step back by an hour leaves seq, the chain and the segment order intact."""
    now = [1_750_000_000.0]
    opts = segment.JournalOptions(max_segment_bytes=8 * 1024, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts, clock=lambda: now[0]) as audit:
        for i in range(60):
            if i == 30:
                now[0] -= 3600
            await audit.write(
                "prod", {"event": {"action": "trigger.received", "id": str(i)}}, durable=i % 10 == 0
            )
            now[0] += 1
    directory = audit_dir / "prod"
    all_seqs = seqs(directory)
    assert all_seqs == sorted(all_seqs)
    assert all_seqs == list(range(1, len(all_seqs) + 1))
    stamps = [rec["@timestamp"] for _, _, rec in read_log(directory)]
    assert stamps != sorted(stamps)  # the wall clock did go backwards
    names = [p.name for p in segment.list_segments(directory)]
    assert names != sorted(names)  # so name order is not chain order: list_segments sorts by seq
    assert verify.verify(directory).ok


async def test_second_instance_on_same_dir_fails_clearly(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """A second AuditLog on the same audit dir fails at flock; the first keeps writing."""
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as first:
        await first.write("prod", started(), durable=True)
        second = journal.AuditLog(audit_dir=audit_dir, options=options)
        with pytest.raises(errors.AuditUnavailable, match="already locked by another writer"):
            await second.open(["prod"])
        await second.aclose()
        await first.write("prod", started(), durable=True)
    assert verify.verify(audit_dir / "prod").ok


@pytest.mark.parametrize(
    "name", ["../../etc/x", "../../etc/cron.d/x", "Prod_EU", "pr\u043ed", "", "a/b", "."]
)
async def test_invalid_context_name_is_refused_before_any_file(
    tmp_path: Path, name: str, options: segment.JournalOptions
) -> None:
    """A context name that is not a DNS-1123 label is refused and creates no file anywhere."""
    audit_dir = tmp_path / "a" / "b" / "audit"
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        with pytest.raises(errors.AuditUnavailable, match=r"DNS-1123|must not be empty"):
            await audit.write(name, started(), durable=True)
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert created == ["a", "a/b", "a/b/audit", "a/b/audit/.aofd-audit.lock"]


@pytest.mark.parametrize(
    ("log_path", "expected", "ignored"),
    [
        (None, "prod", False),
        ("/srv/audit/teams/prod", "teams/prod", False),
        ("/srv/audit/teams/prod/audit.log", "teams/prod", False),
        ("teams/prod", "teams/prod", False),
        ("/var/log/aof/audit.log", "prod", True),
        ("/srv/audit/../etc", "prod", True),
        ("../outside", "prod", True),
        ("/srv/audit", "prod", True),
        ("/srv/audit-other/prod", "prod", True),
    ],
)
def test_log_path_is_honoured_only_inside_the_audit_dir(
    log_path: str | None, expected: str, ignored: bool
) -> None:
    """A Context's audit.log_path is used only when it stays inside the audit dir; else a reason is given."""
    directory, reason = segment.resolve_log_dir(Path("/srv/audit"), "prod", log_path)
    assert directory == Path("/srv/audit") / expected
    assert (reason is not None) == ignored


async def test_symlinked_segment_is_refused_on_open(
    audit_dir: Path, tmp_path: Path, options: segment.JournalOptions
) -> None:
    """An audit segment replaced by a symlink (to /etc/passwd, say) makes the context refuse to open."""
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", started(), durable=True)
        active = audit.active_segment("prod")
    assert active is not None
    active.unlink()
    active.symlink_to(victim)
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        with pytest.raises(errors.AuditUnavailable, match="symlink"):
            await audit.write("prod", started(), durable=True)
        assert audit.opened_contexts() == ()
    assert victim.read_text() == "root:x:0:0\n"


async def test_active_segment_replaced_or_deleted_starts_a_new_segment(
    audit_dir: Path, tmp_path: Path, options: segment.JournalOptions
) -> None:
    """Deleting the active segment, or swapping in a symlink, is noticed and audited in a new segment."""
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", started(), durable=True)
        first = audit.active_segment("prod")
        assert first is not None
        first.unlink()
        await audit.write("prod", started(), durable=True)
        second = audit.active_segment("prod")
        assert second is not None
        assert second != first
        second.unlink()
        second.symlink_to(victim)
        await audit.write("prod", started(), durable=True)
        third = audit.active_segment("prod")
        assert third not in (first, second)
    assert victim.read_text() == "root:x:0:0\n"
    assert third is not None
    kinds = [
        rec["aofd"]["recovery"]["kind"]
        for _, _, rec in read_log(audit_dir / "prod")
        if "recovery" in rec["aofd"]
    ]
    assert kinds == ["gone"]  # the second segment's record went down with it; the third has its own
    reasons = [rec.get("event", {}).get("reason", "") for _, _, rec in read_log(audit_dir / "prod")]
    assert any("deleted or replaced" in r for r in reasons)


async def test_fsync_eio_refuses_durable_writes_without_retry(
    audit_dir: Path, options: segment.JournalOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync EIO fails the durable write, is never retried on that file, and a new segment follows."""
    failed_files: list[tuple[int, int]] = []
    synced_after_failure: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def broken_fsync(fd: int) -> None:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in failed_files:
            synced_after_failure.append(key)
        failed_files.append(key)
        raise OSError(errno.EIO, "Input/output error")

    def watching_fsync(fd: int) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in failed_files:
            synced_after_failure.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", started(), durable=True)
        broken_segment = audit.active_segment("prod")
        monkeypatch.setattr("aofd.audit.segment.os.fsync", broken_fsync)
        with pytest.raises(errors.AuditUnavailable, match="fsync"):
            await audit.write("prod", started(event_id="GATED-1"), durable=True)
        with pytest.raises(errors.AuditUnavailable):
            await audit.write("prod", started(event_id="GATED-2"), durable=True)
        assert "prod" in audit.unavailable()
        monkeypatch.setattr("aofd.audit.segment.os.fsync", watching_fsync)
        await audit.write("prod", started(event_id="GATED-3"), durable=True)
        assert audit.unavailable() == {}
        assert audit.active_segment("prod") != broken_segment
        assert audit.metrics.failures_total == 2
    assert synced_after_failure == []
    log = read_log(audit_dir / "prod")
    recovered = [rec for _, _, rec in log if rec["event"]["action"] == "audit.recovered"]
    assert [r["aofd"]["recovery"]["kind"] for r in recovered] == ["sync", "sync"]
    assert "Input/output error" in recovered[0]["event"]["reason"]
    assert recovered[0]["aofd"]["recovery"]["unsynced_seqs"] == [3, 3]
    assert verify.verify(audit_dir / "prod").ok


async def test_hung_disk_turns_into_a_refusal(audit_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that does not finish within write_timeout raises AuditUnavailable instead of hanging."""
    opts = segment.JournalOptions(write_timeout=0.1, recovery_backoff=0.0)
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        import time

        time.sleep(0.3)
        real_fsync(fd)

    async with journal.AuditLog(audit_dir=audit_dir, options=opts) as audit:
        await audit.open(["prod"])
        monkeypatch.setattr("aofd.audit.segment.os.fsync", slow_fsync)
        with pytest.raises(errors.AuditUnavailable, match="did not finish"):
            await audit.write("prod", started(), durable=True)
        assert audit.metrics.timeouts_total == 1


def run_child(code: str, audit_dir: Path, *, wait_for_line: bool = False) -> subprocess.Popen[str]:
    script = textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script, str(audit_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


DISK_FULL_CHILD = """
    import asyncio, json, resource, signal, sys
    from pathlib import Path
    from aofd import errors
    from aofd.audit import journal, records, segment

    async def main(d):
        audit = journal.AuditLog(audit_dir=Path(d), options=segment.JournalOptions(recovery_backoff=0.0))
        await audit.open(["prod"])
        for _ in range(5):
            await audit.write("prod", records.build("trigger.received", context="prod"), durable=True)
        path = audit.active_segment("prod")
        size = path.stat().st_size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        record = records.build("command.started", context="prod", event_id="GATED",
                               process=records.Process(("/usr/bin/kubectl", "delete", "pod", "x" * 300)))
        try:
            await audit.write("prod", record, durable=True)
            result = "written"
        except errors.AuditUnavailable as exc:
            result = "refused: " + str(exc)
        await audit.aclose()
        print(json.dumps({"result": result, "size": size, "path": str(path)}))

    asyncio.run(main(sys.argv[1]))
"""


async def test_disk_full_during_gated_write(audit_dir: Path, options: segment.JournalOptions) -> None:
    """RLIMIT_FSIZE mid-line: short write detected, gated write refused, torn tail repaired on open."""
    child = run_child(DISK_FULL_CHILD, audit_dir)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["result"].startswith("refused: ")
    assert "short write" in result["result"]
    torn = Path(result["path"])
    assert torn.stat().st_size == result["size"] + 100
    assert not torn.read_bytes().endswith(b"\n")
    original = torn.read_bytes()

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", started(), durable=True)
    broken = list(torn.parent.glob(torn.name + ".broken-*"))
    assert len(broken) == 1
    assert broken[0].read_bytes() == original
    repaired = torn.read_bytes().splitlines(keepends=True)
    assert repaired[-1].endswith(b"\n")
    last = json.loads(repaired[-1])
    assert last["event"]["action"] == "audit.recovered"
    assert last["aofd"]["recovery"]["dropped_bytes"] == 100
    assert last["aofd"]["recovery"]["last_good_seq"] == 6
    assert last["aofd"]["recovery"]["last_good_hash"] == segment.line_hash(repaired[-2])
    assert "GATED" not in actions(audit_dir / "prod")  # the torn command.started is gone, not abandoned
    assert "command.abandoned" not in actions(audit_dir / "prod")
    assert verify.verify(audit_dir / "prod").ok


KILL_CHILD = """
    import asyncio, sys
    from pathlib import Path
    from aofd.audit import journal, records

    async def main(d):
        audit = journal.AuditLog(audit_dir=Path(d))
        await audit.open(["prod"])
        await audit.write("prod", records.build("command.started", context="prod", event_id="ORPHAN",
            agent="k8s-ops", process=records.Process(("/usr/bin/kubectl", "rollout", "restart", "deploy/x")),
            user=records.Actor("U1")), durable=True)
        for action in ("command.started", "command.finished"):
            await audit.write("prod", records.build(action, context="prod", event_id="DONE"), durable=True)
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1]))
"""


async def test_sigkill_between_started_and_finished_marks_command_abandoned(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """After kill -9 with a command in flight, reopening records one command.abandoned with its event.id."""
    child = run_child(KILL_CHILD, audit_dir)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL

    for _ in range(2):  # a second restart must not abandon it again
        async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
            await audit.open(["prod"])
    abandoned = [
        rec for _, _, rec in read_log(audit_dir / "prod") if rec["event"]["action"] == "command.abandoned"
    ]
    assert len(abandoned) == 1
    assert abandoned[0]["event"]["id"] == "ORPHAN"
    assert abandoned[0]["event"]["outcome"] == "unknown"
    assert abandoned[0]["process"]["args"][1] == "rollout"
    assert abandoned[0]["user"]["id"] == "U1"
    assert verify.verify(audit_dir / "prod").ok


async def test_torn_last_line_is_copied_truncated_and_recorded(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """A half-written last line is copied to .broken-<ts>, cut off, and replaced by audit.recovered."""
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        for _ in range(3):
            await audit.write("prod", started(), durable=True)
        active = audit.active_segment("prod")
    assert active is not None
    fragment = b'{"@timestamp":"2025-06-01T12:00:03.412918Z","ecs":{"vers'
    with active.open("ab") as handle:
        handle.write(fragment)
    good = active.read_bytes()[: -len(fragment)]

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.open(["prod"])
    data = active.read_bytes()
    assert data.startswith(good)
    recovered = json.loads(data[len(good) :])
    assert recovered["event"]["action"] == "audit.recovered"
    assert recovered["aofd"]["recovery"]["dropped_bytes"] == len(fragment)
    assert recovered["aofd"]["recovery"]["broken_copy"].startswith(active.name + ".broken-")
    assert (active.parent / recovered["aofd"]["recovery"]["broken_copy"]).read_bytes() == good + fragment
    assert verify.verify(audit_dir / "prod").ok


async def test_bit_flip_in_old_segment_is_named_and_never_rewritten(audit_dir: Path) -> None:
    """A flipped bit in an old segment: verify names file, line, seq; nothing rewritten; writes go on."""
    opts = segment.JournalOptions(max_segment_bytes=8 * 1024, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts) as audit:
        for _ in range(40):
            await audit.write("prod", started())
    directory = audit_dir / "prod"
    old = segment.list_segments(directory)[0]
    lines = old.read_bytes().splitlines(keepends=True)
    target = 3  # 1-based line number
    raw = bytearray(lines[target - 1])
    at = raw.index(b"payments")
    raw[at] ^= 0x01  # "payments" -> "qayments": still valid JSON
    lines[target - 1] = bytes(raw)
    old.write_bytes(b"".join(lines))
    tampered = old.read_bytes()
    expected_seq = json.loads(lines[target - 1])["aofd"]["audit"]["seq"]

    report = verify.verify(directory)
    assert not report.ok
    first = report.first_problem
    assert first is not None
    assert (first.file, first.line, first.seq) == (f"prod/{old.name}", target, expected_seq)
    assert "altered" in first.reason
    assert len(report.problems) == 1

    async with journal.AuditLog(audit_dir=audit_dir, options=opts) as audit:
        await audit.write("prod", started(), durable=True)
    assert old.read_bytes() == tampered
    after = verify.verify(directory)
    assert after.problems == report.problems
    assert after.records > report.records


async def test_retention_deletes_whole_closed_segments_only(audit_dir: Path) -> None:
    """Retention removes old closed segments and never the active one."""
    now = [1_750_000_000.0]
    opts = segment.JournalOptions(max_segment_bytes=4 * 1024, retention_seconds=10.0, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts, clock=lambda: now[0]) as audit:
        for _ in range(20):
            await audit.write("prod", started())
        before = [p for p in segment.list_segments(audit_dir / "prod") if p != audit.active_segment("prod")]
        assert len(before) > 2
        for path in before:
            os.utime(path, (now[0] - 100, now[0] - 100))
        for _ in range(20):
            await audit.write("prod", started())
        active = audit.active_segment("prod")
    after = segment.list_segments(audit_dir / "prod")
    assert active in after
    assert not set(before) & set(after)
    report = verify.verify(audit_dir / "prod")
    assert report.ok
    assert any("older segments were removed" in n for n in report.notes)


async def test_damage_before_the_tail_of_the_active_segment_is_not_rewritten(
    audit_dir: Path, options: segment.JournalOptions
) -> None:
    """Two damaged lines at the end are corruption, not a torn tail: left as is, reported in a new segment."""
    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        for _ in range(5):
            await audit.write("prod", started(), durable=True)
        active = audit.active_segment("prod")
    assert active is not None
    lines = active.read_bytes().splitlines(keepends=True)
    lines[-2] = lines[-2].replace(b'"seq":', b'"Seq":')
    lines[-1] = lines[-1].replace(b'"seq":', b'"Seq":')
    active.write_bytes(b"".join(lines))
    damaged = active.read_bytes()

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        await audit.write("prod", started(), durable=True)
        assert audit.active_segment("prod") != active
    assert active.read_bytes() == damaged
    assert not list(active.parent.glob("*.broken-*"))
    newest = segment.list_segments(audit_dir / "prod")[-1].read_bytes().splitlines()
    note = json.loads(newest[1])
    assert note["event"]["action"] == "audit.recovered"
    assert note["aofd"]["recovery"]["kind"] == "corruption"
    problems = verify.verify(audit_dir / "prod").problems
    assert [(p.file, p.line) for p in problems][:2] == [
        (f"prod/{active.name}", 5),
        (f"prod/{active.name}", 6),
    ]


async def test_audit_log_is_the_runtime_audit_sink(audit_dir: Path, options: segment.JournalOptions) -> None:
    """AuditLog satisfies runtime.ports.AuditSink structurally (mypy checks this assignment)."""
    from aofd.runtime import ports

    async with journal.AuditLog(audit_dir=audit_dir, options=options) as audit:
        sink: ports.AuditSink = audit
        await sink.write("prod", started(), durable=True)
    assert verify.verify(audit_dir / "prod").ok
