"""The epoch digests that tie every Context's seals to the key chain, late seal passes, conflicting
certificates and bounded reads in `aofctl audit verify` (real files, fake time).

Each key move's certificate signs the count and digest of every seal made with the retiring key;
verifying the audit dir sums the seals found in all logs per epoch and compares."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from aofd.audit import journal, records, seal, segment, verify
from tests.audit.test_seal import EPOCH, T0, Clock, event, rewrite, run_cli, sealed_log, stolen_epoch_key


def load(seg: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in seg.read_bytes().splitlines()]


def append(seg: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Append `rec` chained after `seg`'s last line (as an intruder recomputing the chain does)."""
    lines = seg.read_bytes().splitlines(keepends=True)
    tail = json.loads(lines[-1])["aofd"]["audit"]
    rec.setdefault("aofd", {})["audit"] = dict(tail, seq=tail["seq"] + 1, prev=segment.line_hash(lines[-1]))
    with open(seg, "ab") as fh:
        fh.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    return rec


def forged_seal(
    vk: seal.VerificationKey, state: Path, seg: Path, key: seal.EpochKey, at: float
) -> dict[str, Any]:
    """A seal of `seg`'s last line made with the key stolen from the state dir, dated `at`."""
    lines = seg.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    fields: dict[str, Any] = {
        "chain": vk.chain,
        "epoch": key.epoch,
        "reason": "epoch",
        "context": "prod",
        "segment": seg.name,
        "file_id": last["aofd"]["audit"]["file_id"],
        "seq": last["aofd"]["audit"]["seq"],
        "head": segment.line_hash(lines[-1]),
        "next_file": None,
        "time": records.rfc3339(at),
        "certs": list(seal.read_certs(seal.certs_path(state))),
    }
    fields["sig"] = key.sign(fields)
    rec = records.build("audit.sealed", context="prod", now=at)
    rec.setdefault("aofd", {})["seal"] = fields
    return rec


async def running_log(
    tmp_path: Path,
    *,
    epochs: int,
    per_epoch: int,
    max_segment_bytes: int = 64 << 20,
    retention: float | None = None,
) -> tuple[seal.VerificationKey, Path, Path, Clock, journal.AuditLog]:
    """A daemon still running (the intruder takes the host now): `epochs` sealed epochs."""
    state = tmp_path / "state"
    vk = seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    opts = segment.JournalOptions(
        max_segment_bytes=max_segment_bytes, recovery_backoff=0.0, retention_seconds=retention
    )
    audit = journal.AuditLog(audit_dir=tmp_path / "audit", options=opts, clock=clock, keychain=chain)
    await audit.open(("prod",))
    n = 0
    for e in range(epochs):
        for _ in range(per_epoch):
            await audit.write("prod", event("prod", n, clock.now))
            n += 1
        clock.now = T0 + (e + 1) * EPOCH + 1
        assert (await audit.seal_epoch()).sealed == 1
    return vk, state, tmp_path / "audit", clock, audit


async def test_a_whole_log_rewritten_redated_and_resealed_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every record re-dated to now, history edited, the chain rebuilt and one seal added with the
    stolen current key: the certificates signed before the theft count seals that are gone."""
    vk, state, audit_dir, clock, audit = await running_log(tmp_path, epochs=6, per_epoch=3)
    try:
        key = stolen_epoch_key(state)
        [seg] = segment.list_segments(audit_dir / "prod")
        stamp = records.rfc3339(clock.now)
        recs = [
            json.loads(json.dumps(r).replace(r["@timestamp"], stamp))
            for r in load(seg)
            if r["event"]["action"] != "audit.sealed" and r.get("event", {}).get("id") != "E0005"
        ]
        rewrite(seg, recs)
        append(seg, forged_seal(vk, state, seg, key, clock.now))

        one = verify.verify(audit_dir / "prod", keys=[vk], now=clock.now)
        assert one.problems == ()  # one Context alone cannot show it...
        assert one.cross_checked is False
        assert verify.CROSS_SKIPPED in one.notes  # ...and says so
        whole = verify.verify(audit_dir, keys=[vk], now=clock.now)
        assert whole.cross_checked is True
        lost = [
            p for p in whole.problems if "records" in p.reason and "seal(s) made with that key" in p.reason
        ]
        assert [p.file for p in lost] == [f"chain {vk.chain} epoch {e}" for e in range(6)]
        assert "none of context(s) prod" in lost[1].reason
        capsys.readouterr()
        assert run_cli(["audit", "verify", str(audit_dir), "--verification-key", vk.encode()]) == 1
        assert "TAMPERED" in capsys.readouterr().out
    finally:
        await audit.aclose()


async def test_oldest_segments_deleted_with_a_forged_pruned_record_are_caught(tmp_path: Path) -> None:
    """Retention off: an `audit.pruned` record and a seal made now with the stolen key do not
    explain the seals of the deleted segments, which the certificates counted."""
    vk, state, audit_dir, clock, audit = await running_log(
        tmp_path, epochs=8, per_epoch=6, max_segment_bytes=4096
    )
    try:
        segs = segment.list_segments(audit_dir / "prod")
        assert len(segs) >= 4
        key = stolen_epoch_key(state)
        for path in segs[: len(segs) // 2]:
            path.unlink()
        kept = segment.list_segments(audit_dir / "prod")
        first = load(kept[0])[0]["aofd"]["audit"]["seq"]
        pruned = records.build("audit.pruned", context="prod", now=clock.now)
        pruned["aofd"]["pruned"] = {"files": ["x"], "first_seq": first}
        append(kept[-1], pruned)
        append(kept[-1], forged_seal(vk, state, kept[-1], key, clock.now))

        assert verify.verify(audit_dir / "prod", keys=[vk], now=clock.now).problems == ()
        whole = verify.verify(audit_dir, keys=[vk], now=clock.now)
        assert whole.problems
        assert all(p.file.startswith(f"chain {vk.chain} epoch ") for p in whole.problems)
        assert "epoch 0" in whole.problems[0].file
    finally:
        await audit.aclose()


async def test_retention_may_remove_epochs_older_than_it_allows(tmp_path: Path) -> None:
    """With retention on, the seals of segments it pruned are accepted as missing (a note), but only
    for epochs older than the retention recorded in their certificates."""
    vk, _state, audit_dir, clock, audit = await running_log(
        tmp_path, epochs=8, per_epoch=6, max_segment_bytes=4096, retention=120
    )
    try:
        segs = segment.list_segments(audit_dir / "prod")
        os.utime(segs[0], (T0, T0))  # the others are dated now (real mtime): only this one goes
        for i in range(30):
            await audit.write("prod", event("prod", 900 + i, clock.now))
        assert not segs[0].exists()
        clock.now += EPOCH
        assert (await audit.seal_epoch()).sealed == 1
        report = verify.verify(audit_dir, keys=[vk], now=clock.now)
        assert report.problems == (), report.problems
        assert any("removed by retention" in n for n in report.notes)
    finally:
        await audit.aclose()


async def test_a_clean_restart_and_a_crash_restart_certify_what_they_know(tmp_path: Path) -> None:
    """After a clean stop the next start knows its key sealed nothing (the digest checks out); after
    a crash it cannot know, and its certificate says so (not cross-checked, noted)."""
    s = await sealed_log(tmp_path, epochs=2, per_epoch=2)
    assert json.loads(seal.state_path(s.state).read_text())["fresh"] is True
    chain = seal.KeyChain.load(s.state)
    assert chain is not None
    s.clock.now += 3 * EPOCH
    opts = segment.JournalOptions(recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=s.audit_dir, options=opts, clock=s.clock, keychain=chain) as audit:
        await audit.open(("prod",))
        assert json.loads(seal.state_path(s.state).read_text())["fresh"] is False
        await audit.write("prod", event("prod", 50, s.clock.now))
        s.clock.now += EPOCH
        assert (await audit.seal_epoch()).sealed == 1
    report = verify.verify(s.audit_dir, keys=[vk := s.vk], now=s.clock.now)
    assert report.problems == (), report.problems
    assert not any("not cross-checked" in n for n in report.notes)

    # a crash after the stop seals, before the key moved on: state.json still holds their key
    crashed = seal.KeyChain.load(s.state)
    assert crashed is not None
    s.clock.now += EPOCH
    async with journal.AuditLog(
        audit_dir=s.audit_dir, options=opts, clock=s.clock, keychain=crashed
    ) as audit:
        await audit.open(("prod",))
        await audit.write("prod", event("prod", 51, s.clock.now))
        state_in_use = seal.state_path(s.state).read_bytes()
    assert json.loads(state_in_use)["fresh"] is False
    seal.state_path(s.state).write_bytes(state_in_use)  # the crash: the final key move not in place
    orphan = list(seal.read_certs(seal.certs_path(s.state)))[-1]
    again = seal.KeyChain.load(s.state)
    assert again is not None
    assert orphan not in list(seal.read_certs(seal.certs_path(s.state)))  # its key was never kept
    s.clock.now += 2 * EPOCH
    async with journal.AuditLog(audit_dir=s.audit_dir, options=opts, clock=s.clock, keychain=again) as audit:
        await audit.open(("prod",))
    certs = list(seal.read_certs(seal.certs_path(s.state)))
    assert certs[-2]["sealed"] is None  # the move after the crash: its key's seals are unknown
    report = verify.verify(s.audit_dir, keys=[vk], now=s.clock.now)
    assert report.problems == (), report.problems
    assert any("1 epoch(s) not cross-checked" in n for n in report.notes)


async def test_a_late_seal_pass_moves_the_key_on_without_sealing(tmp_path: Path) -> None:
    """The host was suspended for three epochs: the pass does not seal with the old key outside its
    epoch, it retires the key; verify reports a gap (exit 3), not a forgery."""
    state = tmp_path / "state"
    vk = seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    opts = segment.JournalOptions(recovery_backoff=0.0)
    async with journal.AuditLog(
        audit_dir=tmp_path / "audit", options=opts, clock=clock, keychain=chain
    ) as audit:
        await audit.open(("prod",))
        await audit.write("prod", event("prod", 0, clock.now))
        clock.now = T0 + EPOCH + 1
        assert (await audit.seal_epoch()).sealed == 1
        await audit.write("prod", event("prod", 1, clock.now))
        clock.now = T0 + 4 * EPOCH + 1
        late = await audit.seal_epoch()
        assert (late.epoch, late.sealed) == (1, 0)
        assert chain.epoch == 4
        for i in range(3):
            clock.now = T0 + (5 + i) * EPOCH + 1
            assert (await audit.seal_epoch()).sealed == 1
    report = verify.verify(tmp_path / "audit", keys=[vk], now=clock.now)
    assert report.problems == (), report.problems
    assert report.gaps
    assert "epochs 1..3" in report.gaps[0].reason


async def test_a_seal_written_after_its_epoch_is_a_gap_not_a_forgery(tmp_path: Path) -> None:
    """A stop seal made with a key kept past its epoch (the loop stalled, no pass ran) is late:
    reported as a gap; a seal dated before its epoch is still a forgery."""
    state = tmp_path / "state"
    vk = seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    async with journal.AuditLog(audit_dir=tmp_path / "audit", clock=clock, keychain=chain) as audit:
        await audit.open(("prod",))
        await audit.write("prod", event("prod", 0, clock.now))
        clock.now = T0 + 5 * EPOCH + 1
        await audit.write("prod", event("prod", 1, clock.now))
    report = verify.verify(tmp_path / "audit", keys=[vk], now=clock.now)
    assert report.problems == (), report.problems
    assert any("a late seal" in g.reason for g in report.gaps)


async def test_conflicting_certificates_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second certificate for an epoch, made with an old key someone kept, is reported whichever
    source it comes from (not silently dropped)."""
    state = tmp_path / "state"
    seal.setup_keys(state, interval=EPOCH, now=T0)
    key0 = stolen_epoch_key(state)  # epoch 0's key, kept by someone before it was destroyed
    chain = seal.KeyChain.load(state)
    assert chain is not None
    vk = seal.VerificationKey(
        chain.chain, chain.start, chain.interval, seal.public_bytes(key0.key.public_key())
    )
    clock = Clock(T0 + 1)
    async with journal.AuditLog(audit_dir=tmp_path / "audit", clock=clock, keychain=chain) as audit:
        await audit.open(("prod",))
        for e in range(3):
            await audit.write("prod", event("prod", e, clock.now))
            clock.now = T0 + (e + 1) * EPOCH + 1
            await audit.seal_epoch()
    other = seal.Ed25519PrivateKey.generate()
    forged = seal.make_cert(key0.key, chain.chain, 0, 1, other.public_key(), seal.sealed_summary([], 0))
    extra = tmp_path / "forged-certs.jsonl"
    extra.write_text(json.dumps(forged) + "\n")
    report = verify.verify(tmp_path / "audit", keys=[vk], now=clock.now, certificates=[extra])
    assert any("conflicting certificates for epoch 1" in p.reason for p in report.problems)
    capsys.readouterr()
    argv = [
        "audit",
        "verify",
        str(tmp_path / "audit"),
        "--verification-key",
        vk.encode(),
        "--certificates",
        str(extra),
    ]
    assert run_cli(argv) == 1
    assert "conflicting certificates for epoch 1" in capsys.readouterr().out


async def test_expect_needs_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = await sealed_log(tmp_path, epochs=1, per_epoch=1)
    [seg] = segment.list_segments(s.audit_dir / "prod")
    capsys.readouterr()
    assert run_cli(["audit", "verify", str(seg), "--expect", "prod=3"]) == 2
    assert "--expect needs a Context's directory or the audit dir" in capsys.readouterr().err


def test_certificates_are_read_bounded_and_never_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "certs.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(OSError):
        list(seal.read_certs(link))
    with pytest.raises(ValueError, match="not a regular file"):
        list(seal.read_certs(Path("/dev/zero")))
    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(b"{" + b" " * (seal.MAX_CERT_LINE + 10) + b"}\n")
    with pytest.raises(ValueError, match="longer than"):
        list(seal.read_certs(huge))


async def test_verify_streams_a_huge_line_and_names_it(tmp_path: Path) -> None:
    s = await sealed_log(tmp_path, epochs=1, per_epoch=1)
    [seg] = segment.list_segments(s.audit_dir / "prod")
    with open(seg, "ab") as fh:
        fh.write(b'{"x":"' + b"a" * (8 << 20) + b'"}\n')
    started = time.perf_counter()
    report = verify.verify(s.audit_dir / "prod", keys=[s.vk], now=s.clock.now)
    assert time.perf_counter() - started < 10
    assert any("longer than" in p.reason for p in report.problems)


def test_a_key_move_that_fails_leaves_no_certificate_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file cannot be written: the certificate of a key that was never kept is removed,
    so the retry does not leave two certificates signed by one key (which verify calls forged)."""
    state = tmp_path / "state"
    seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None

    def broken(directory: Path, data: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(seal, "_write_state", broken)
    with pytest.raises(OSError, match="disk full"):
        chain.advance_to(1)
    assert list(seal.read_certs(seal.certs_path(state))) == []
    monkeypatch.undo()
    assert chain.advance_to(2)
    [cert] = seal.read_certs(seal.certs_path(state))
    assert (cert["prev"], cert["epoch"], cert["sealed"]["count"]) == (0, 2, 0)
