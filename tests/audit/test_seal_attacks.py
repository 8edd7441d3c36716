"""What an intruder with root (and the sealing state of their time) tries against a sealed log, and
what `verify --verification-key` says: re-sealed history, a whole run cut off after a stop seal,
a log copied over another Context's, gaps and foreign seals, deleted oldest segments; and the
daemon's side: seals durable before the key moves on, the stop epoch's key retired, setup-keys
refused while aofd runs. Real files, fake time."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import journal, records, seal, segment, verify
from aofd.reconcile import state as daemon_state
from tests.audit import ecs_check
from tests.audit.test_seal import (
    EPOCH,
    T0,
    Clock,
    Sealed,
    action,
    check,
    event,
    rewrite,
    run_cli,
    seal_indexes,
    sealed_log,
    stolen_epoch_key,
)


def stolen_key(s: Sealed) -> tuple[seal.EpochKey, int]:
    """What the intruder reads from the state dir: the current epoch's key and its number."""
    key = stolen_epoch_key(s.state)
    return key, key.epoch


def forged_seal(
    s: Sealed, seg: Path, template: dict[str, Any], key: seal.EpochKey, epoch: int, reason: str, at: float
) -> dict[str, Any]:
    """A seal record over `seg`'s last line, signed with a stolen key, claiming `at` as its time."""
    lines = seg.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    fields: dict[str, Any] = {
        "chain": s.vk.chain,
        "epoch": epoch,
        "reason": reason,
        "context": last["aofd"]["context"],
        "segment": seg.name,
        "file_id": last["aofd"]["audit"]["file_id"],
        "seq": last["aofd"]["audit"]["seq"],
        "head": segment.line_hash(lines[-1]),
        "next_file": None,
        "time": records.rfc3339(at),
        "certs": list(seal.read_certs(seal.certs_path(s.state))),  # public, on the host
    }
    fields["sig"] = key.sign(fields)
    rec = json.loads(json.dumps(template))
    rec["aofd"]["seal"] = fields
    return rec


def load(seg: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in seg.read_bytes().splitlines()]


@pytest.mark.parametrize("claimed", ["now", "epoch 0"])
async def test_history_resealed_with_the_stolen_key_is_caught(
    tmp_path: Path, claimed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Strip every seal, edit a record of epoch 0, recompute the chain and add one seal made with
    the key from state.json: the seal cannot vouch for records written epochs before its own
    (unsealed history), and a seal claiming an earlier time than its epoch is forged."""
    s = await sealed_log(tmp_path, epochs=3, per_epoch=4)
    seg = segment.list_segments(s.audit_dir / "prod")[0]
    recs = load(seg)
    key, epoch = stolen_key(s)
    template = recs[seal_indexes(recs)[0]]
    body = [r for r in recs if action(r) != "audit.sealed"]
    body[2]["reason"] = "forged in epoch 0"
    rewrite(seg, body)
    at = s.clock.now if claimed == "now" else T0 + 30
    rewrite(seg, [*body, forged_seal(s, seg, template, key, epoch, "stop", at)])

    report = check(s)
    assert not report.ok
    first = report.first_problem
    assert first is not None
    if claimed == "now":
        assert first.line == 1
        assert "unsealed history" in first.reason
    else:
        assert first.line == len(body) + 1
        assert "before epoch" in first.reason
    capsys.readouterr()
    assert run_cli(["audit", "verify", str(s.audit_dir), "--verification-key", s.vk.encode()]) == 1
    assert "TAMPERED" in capsys.readouterr().out


async def two_runs(tmp_path: Path) -> tuple[Sealed, float]:
    """Run 1: epochs 0..2 and a clean stop; run 2 (a new segment) from epoch 5 to 8, stopped."""
    s = await sealed_log(tmp_path, epochs=3, per_epoch=4)
    chain = seal.KeyChain.load(s.state)
    assert chain is not None
    clock = Clock(T0 + 5 * EPOCH + 1)
    async with journal.AuditLog(audit_dir=s.audit_dir, clock=clock, keychain=chain) as audit:
        await audit.open(("prod",))
        for e in range(5, 9):
            for i in range(3):
                await audit.write("prod", event("prod", 1000 + e * 10 + i, clock.now))
            clock.now = T0 + (e + 1) * EPOCH + 1
            await audit.seal_epoch()
    return s, clock.now


async def test_a_run_deleted_after_a_stop_seal_shows_as_downtime_and_fails_against_the_siem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cutting the log back to run 1's stop seal cannot be told from downtime by the log alone:
    verify lists the stretch as downtime (with its times), and with the newest seq/head the SIEM
    holds (`--expect`) it fails; appending after the stop seal is an insertion."""
    s, now = await two_runs(tmp_path)
    directory = s.audit_dir / "prod"
    intact = verify.verify(directory, keys=[s.vk], now=now)
    assert intact.ok, (intact.problems, intact.gaps)
    assert len(intact.downtime) == 2
    assert "aofd stopped (stop seal, epoch 3)" in intact.downtime[0]
    assert "epochs 4..4" in intact.downtime[0]
    segs = segment.list_segments(directory)
    last_seal = load(segs[-1])[-1]["aofd"]["seal"]
    shipped = verify.Expectation(last_seal["seq"], last_seal["head"])
    assert verify.verify(directory, keys=[s.vk], now=now, expect={"prod": shipped}).ok

    for seg in segs[1:]:
        seg.unlink()
    cut = verify.verify(directory, keys=[s.vk], now=now)
    assert any("has not sealed this log since" in d for d in cut.downtime)
    # the audit dir sums the seals of each epoch: run 2's seals, counted by the certificates, are gone
    whole = verify.verify(s.audit_dir, keys=[s.vk], now=now, certificates=[seal.certs_path(s.state)])
    assert [p.file for p in whole.problems][:2] == [f"chain {s.vk.chain} epoch {e}" for e in (5, 6)]
    against = verify.verify(directory, keys=[s.vk], now=now, expect={"prod": shipped})
    assert not against.ok
    assert against.first_problem is not None
    assert f"seq {shipped.seq} was sealed and shipped" in against.first_problem.reason
    wrong_head = verify.Expectation(3, "sha256:" + "0" * 64)
    assert "does not hash" in str(verify.verify(directory, keys=[s.vk], expect={"prod": wrong_head}).problems)

    key = s.vk.encode()
    capsys.readouterr()
    expect = f"prod={shipped.seq}:{shipped.head}"
    assert run_cli(["audit", "verify", str(s.audit_dir), "--verification-key", key, "--expect", expect]) == 1
    assert "was sealed and shipped" in capsys.readouterr().out
    expect_file = tmp_path / "siem.json"
    expect_file.write_text(json.dumps({"prod": {"seq": shipped.seq, "head": shipped.head}}))
    argv = ["audit", "verify", str(s.audit_dir), "--verification-key", key, "--expect-file", str(expect_file)]
    assert run_cli(argv) == 1
    expect_file.write_text(json.dumps({"staging": {"seq": 1}}))
    assert run_cli(argv) == 1
    assert "no audit log for context 'staging'" in capsys.readouterr().out
    assert run_cli(["audit", "verify", str(s.audit_dir), "--expect", "prod=x"]) == 2

    # and writing on after the stop seal, sealed with the stolen key, is an insertion
    stolen, epoch = stolen_key(s)
    seg = segs[0]
    recs = load(seg)
    extra = json.loads(json.dumps(recs[2]))
    extra["aofd"]["audit"]["seq"] = 0
    body = [*recs, extra]
    rewrite(seg, body)
    rewrite(seg, [*body, forged_seal(s, seg, recs[seal_indexes(recs)[0]], stolen, epoch, "epoch", now)])
    report = verify.verify(directory, keys=[s.vk], now=now)
    assert report.first_problem is not None
    assert report.first_problem.line == len(recs) + 1


async def test_a_log_copied_over_another_contexts_is_caught(tmp_path: Path) -> None:
    """`rm -r prod; cp -r dev prod`: every seal and record names dev, not prod."""
    s = await sealed_log(tmp_path, contexts=("prod", "dev"), epochs=2, per_epoch=3)
    assert verify.verify(s.audit_dir, keys=[s.vk], now=s.clock.now).ok
    shutil.rmtree(s.audit_dir / "prod")
    shutil.copytree(s.audit_dir / "dev", s.audit_dir / "prod")
    report = verify.verify(s.audit_dir, keys=[s.vk], now=s.clock.now)
    assert not report.ok
    first = report.first_problem
    assert first is not None
    assert first.file.startswith("prod/")
    assert "belongs to context 'dev'" in first.reason


async def test_a_gap_is_not_intact_and_foreign_seals_alone_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Truncate to epoch 0's seal and seal on with the current key: in the Context's directory a
    gap, reported as a possible truncation and not ok; in the audit dir the seals of epochs 1-3 the
    certificates counted are missing: tampered. A log whose seals are all of another chain is not
    verified: it fails."""
    s = await sealed_log(tmp_path, epochs=4, per_epoch=3)
    seg = segment.list_segments(s.audit_dir / "prod")[0]
    recs = load(seg)
    keep = recs[: seal_indexes(recs)[0] + 1]
    key, epoch = stolen_key(s)
    rewrite(seg, keep)
    rewrite(seg, [*keep, forged_seal(s, seg, keep[-1], key, epoch, "stop", s.clock.now)])
    report = check(s)
    assert report.problems == ()
    assert report.gaps
    assert "possible truncation" in report.gaps[0].reason
    assert not report.ok
    capsys.readouterr()
    assert run_cli(["audit", "verify", str(s.audit_dir / "prod"), "--verification-key", s.vk.encode()]) == 3
    out = capsys.readouterr().out
    assert "possible truncation" in out
    assert verify.CROSS_SKIPPED in out
    assert run_cli(["audit", "verify", str(s.audit_dir), "--verification-key", s.vk.encode()]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out
    assert "epoch 1" in out
    assert "none of context(s) prod" in out

    other = seal.setup_keys(tmp_path / "other", interval=EPOCH, now=T0)
    fresh = await sealed_log(tmp_path / "fresh", epochs=2)
    foreign = verify.verify(fresh.audit_dir / "prod", keys=[other], now=fresh.clock.now)
    assert not foreign.ok
    assert foreign.first_problem is not None
    assert "none of the 3 seal(s)" in foreign.first_problem.reason
    assert fresh.vk.chain in foreign.first_problem.reason


async def test_deleted_oldest_segments_fail_unless_retention_said_so(tmp_path: Path) -> None:
    """Deleting the first segments is caught (the log no longer starts at seq 1 and no
    audit.pruned record explains it); retention writes that record, sealed like any other."""
    s = await sealed_log(tmp_path, epochs=4, per_epoch=8, max_segment_bytes=8 * 1024)
    directory = s.audit_dir / "prod"
    segs = segment.list_segments(directory)
    assert len(segs) >= 3
    aside = tmp_path / "aside"
    shutil.copytree(directory, aside)
    segs[0].unlink()
    report = check(s)
    assert report.first_problem is not None
    assert "oldest segment(s) were deleted" in report.first_problem.reason

    shutil.rmtree(directory)
    shutil.copytree(aside, directory)
    os.utime(segs[0], (T0, T0))  # older than the retention; the others are dated now
    chain = seal.KeyChain.load(s.state)
    assert chain is not None
    clock = Clock(s.clock.now + 5)
    opts = segment.JournalOptions(max_segment_bytes=8 * 1024, retention_seconds=120)
    async with journal.AuditLog(audit_dir=s.audit_dir, options=opts, clock=clock, keychain=chain) as audit:
        for i in range(40):
            await audit.write("prod", event("prod", 500 + i, clock.now))
    assert not segs[0].exists()
    pruned = [
        json.loads(raw)
        for seg in segment.list_segments(directory)
        for raw in seg.read_bytes().splitlines()
        if b'"audit.pruned"' in raw
    ]
    assert len(pruned) == 1
    assert pruned[0]["aofd"]["pruned"] == {
        "files": [segs[0].name],
        "first_seq": segment.segment_first_seq(segs[1].name),
    }
    assert ecs_check.problems(pruned[0]) == []
    report = verify.verify(directory, keys=[s.vk], now=clock.now)
    assert report.ok, (report.problems, report.gaps)


async def test_seals_are_fsynced_before_the_key_moves_on(tmp_path: Path) -> None:
    """With group commit far away, the pass still fsyncs every seal before it evolves the key."""
    seen: list[list[int]] = []
    audit_ref: list[journal.AuditLog] = []

    class Watching(seal.KeyChain):
        def advance_to(self, epoch: int, *, final: bool = False) -> bool:
            if audit_ref:  # not the move at open, before any Context is open
                seen.append([w.journal.unsynced for w in audit_ref[0]._writers.values()])
            return super().advance_to(epoch, final=final)

    state = tmp_path / "state"
    seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = Watching.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    opts = segment.JournalOptions(group_commit_interval=3600.0, group_commit_records=10_000)
    async with journal.AuditLog(
        audit_dir=tmp_path / "audit", options=opts, clock=clock, keychain=chain
    ) as audit:
        audit_ref.append(audit)
        await audit.open(("prod", "dev"))
        await audit.write("prod", event("prod", 1, clock.now))
        clock.now = T0 + EPOCH + 1
        seen.clear()
        assert (await audit.seal_epoch()).sealed == 2
        assert seen == [[0, 0]]


async def test_stop_retires_the_stop_epochs_key_and_a_quick_restart_verifies(tmp_path: Path) -> None:
    """After the stop seals are durable the key moves one epoch on (the stop epoch cannot be
    sealed from the state left on disk); a restart within the same epoch seals with the next key
    and the log still verifies with no gap."""
    s = await sealed_log(tmp_path, epochs=2, per_epoch=3)
    _, epoch = stolen_key(s)
    seals = [
        json.loads(raw)["aofd"]["seal"]
        for raw in segment.list_segments(s.audit_dir / "prod")[0].read_bytes().splitlines()
        if b'"audit.sealed"' in raw
    ]
    assert seals[-1]["reason"] == "stop"
    assert epoch == seals[-1]["epoch"] + 1
    chain = seal.KeyChain.load(s.state)
    assert chain is not None
    clock = Clock(s.clock.now + 5)  # still the stop seal's epoch
    async with journal.AuditLog(audit_dir=s.audit_dir, clock=clock, keychain=chain) as audit:
        await audit.open(("prod",))
        await audit.write("prod", event("prod", 77, clock.now))
        clock.now = chain.epoch_end(chain.epoch) + 1
        assert (await audit.seal_epoch()).epoch == epoch
    report = verify.verify(s.audit_dir / "prod", keys=[s.vk], now=clock.now)
    assert report.ok, (report.problems, report.gaps)
    assert [d for d in report.downtime if "has not sealed this log since" not in d] == []


def test_setup_keys_is_refused_while_the_daemon_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon holds the state dir's lock; a new chain now would be undone by its next key
    move, so setup-keys refuses (even with --force) until it stops."""
    state = tmp_path / "state"
    assert run_cli(["audit", "setup-keys", "--state-dir", str(state)]) == 0
    before = seal.state_path(state).read_bytes()
    lock = daemon_state.StateLock(state)
    lock.acquire()
    try:
        capsys.readouterr()
        assert run_cli(["audit", "setup-keys", "--state-dir", str(state), "--force"]) == 1
        err = capsys.readouterr().err
        assert "already running" in err
        assert "stop it first" in err
        assert seal.state_path(state).read_bytes() == before
    finally:
        lock.release()
    assert run_cli(["audit", "setup-keys", "--state-dir", str(state), "--force"]) == 0
    assert seal.state_path(state).read_bytes() != before


@pytest.mark.parametrize(("restart_after", "ok"), [(120, True), (2 * 3600, False)])
async def test_records_from_before_sealing_was_set_up(tmp_path: Path, restart_after: int, ok: bool) -> None:
    """An existing log, then setup-keys, then aofd restarted: the older records are noted as
    checked by the chain only when the first seal follows the chain's start closely; later than
    that an intruder could have re-dated history, so they are unsealed history."""
    audit_dir = tmp_path / "audit"
    clock = Clock(T0 - 600)
    async with journal.AuditLog(audit_dir=audit_dir, clock=clock) as audit:
        for i in range(3):
            await audit.write("prod", event("prod", i, clock.now))
    vk = seal.setup_keys(tmp_path / "state", interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(tmp_path / "state")
    assert chain is not None
    clock.now = T0 + restart_after
    async with journal.AuditLog(audit_dir=audit_dir, clock=clock, keychain=chain) as audit:
        await audit.write("prod", event("prod", 9, clock.now))
        clock.now += EPOCH
        await audit.seal_epoch()
    report = verify.verify(audit_dir / "prod", keys=[vk], now=clock.now)
    assert report.ok is ok, (report.problems, report.gaps)
    if ok:
        assert any("predate the key chain" in note for note in report.notes)
    else:
        assert report.first_problem is not None
        assert "unsealed history" in report.first_problem.reason


async def test_the_verification_key_is_public_and_certificates_link_the_epochs(tmp_path: Path) -> None:
    """A Context opened late holds certificates from its first epoch on only: verified alone it
    needs the others' logs or the state dir's certs.jsonl (public) to link back to the key;
    a certificate that does not chain to the verification key makes nothing verify."""
    s = await sealed_log(tmp_path, epochs=3, per_epoch=2)
    chain = seal.KeyChain.load(s.state)
    assert chain is not None
    clock = Clock(s.clock.now + 1)
    async with journal.AuditLog(audit_dir=s.audit_dir, clock=clock, keychain=chain) as audit:
        await audit.open(("prod", "late"))
        await audit.write("late", event("late", 1, clock.now))
        clock.now = chain.epoch_end(chain.epoch) + 1
        assert (await audit.seal_epoch()).sealed == 2
    alone = verify.verify(s.audit_dir / "late", keys=[s.vk], now=clock.now)
    assert alone.first_problem is not None
    assert "--certificates" in alone.first_problem.reason
    with_file = verify.verify(
        s.audit_dir / "late", keys=[s.vk], now=clock.now, certificates=[seal.certs_path(s.state)]
    )
    assert with_file.ok, (with_file.problems, with_file.gaps)
    assert verify.verify(s.audit_dir, keys=[s.vk], now=clock.now).ok
    assert run_cli(["audit", "verify", str(s.audit_dir / "late"), "--verification-key", s.vk.encode()]) == 1
    argv = ["audit", "verify", str(s.audit_dir / "late"), "--verification-key", s.vk.encode()]
    assert run_cli([*argv, "--certificates", str(seal.certs_path(s.state))]) == 0

    impostor = seal.setup_keys(tmp_path / "impostor", interval=EPOCH, now=T0)
    twin = seal.VerificationKey(s.vk.chain, s.vk.start, s.vk.interval, impostor.public0)
    report = verify.verify(s.audit_dir, keys=[twin], now=clock.now)
    assert report.first_problem is not None
    assert "does not verify" in report.first_problem.reason or "certified" in report.first_problem.reason


async def test_a_seal_pass_seals_a_slice_of_contexts_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand writer threads sealing at once starve the event loop (100-200 ms stalls): the
    pass hands out `SEAL_SLICE` seals at a time and waits for them before the next slice."""
    monkeypatch.setattr(journal, "SEAL_SLICE", 2)
    in_flight: list[Any] = []
    most = 0
    submit = journal._Writer.submit

    def counting(self: Any, request: Any) -> None:
        nonlocal most
        if isinstance(request, journal._SealRequest):
            in_flight.append(request.future)
            most = max(most, sum(1 for f in in_flight if not f.done()))
        submit(self, request)

    monkeypatch.setattr(journal._Writer, "submit", counting)
    state = tmp_path / "state"
    seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    async with journal.AuditLog(audit_dir=tmp_path / "audit", clock=clock, keychain=chain) as audit:
        await audit.open([f"c{i}" for i in range(5)])
        clock.now = T0 + EPOCH + 1
        done = await audit.seal_epoch()
    assert (done.sealed, dict(done.failed)) == (5, {})
    assert most == 2
