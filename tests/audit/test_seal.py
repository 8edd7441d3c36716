"""Forward-secure sealing of the audit logs: setup-keys, seals per epoch / rotation / stop,
key evolution, and what `aofctl audit verify --verification-key` catches (real files, fake time)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aofd import settings
from aofd.audit import journal, records, seal, segment, verify
from aofd.cli import audit_cmd
from tests.audit import ecs_check

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000
EPOCH = 60


class Clock:
    """Fake wall clock for the journal and the seal passes."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aofctl")
    audit_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def event(context: str, i: int, now: float | None = None) -> dict[str, Any]:
    """A record as the daemon writes it; `now` is its @timestamp (the fake clock's time)."""
    return records.build("trigger.received", context=context, event_id=f"E{i:04d}", reason=f"r{i}", now=now)


@dataclasses.dataclass
class Sealed:
    vk: seal.VerificationKey
    clock: Clock
    state: Path
    audit_dir: Path


async def sealed_log(
    tmp_path: Path,
    *,
    contexts: tuple[str, ...] = ("prod",),
    epochs: int = 3,
    per_epoch: int = 4,
    max_segment_bytes: int = 64 * 1024 * 1024,
    idle: tuple[str, ...] = (),
) -> Sealed:
    """A daemon-style log: `per_epoch` records in each of `epochs` epochs, a seal pass at each
    epoch's end, then a clean stop (stop seals)."""
    state = tmp_path / "state"
    vk = seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    audit_dir = tmp_path / "audit"
    opts = segment.JournalOptions(max_segment_bytes=max_segment_bytes, recovery_backoff=0.0)
    n = 0
    async with journal.AuditLog(audit_dir=audit_dir, options=opts, clock=clock, keychain=chain) as audit:
        await audit.open((*contexts, *idle))
        for e in range(epochs):
            for _ in range(per_epoch):
                for context in contexts:
                    await audit.write(context, event(context, n, clock.now))
                n += 1
            clock.now = T0 + (e + 1) * EPOCH + 1
            done = await audit.seal_epoch()
            assert done.epoch == e
            assert done.sealed == len(contexts) + len(idle)
            assert not done.failed
    return Sealed(vk, clock, state, audit_dir)


def lines_of(directory: Path) -> list[tuple[Path, bytes, dict[str, Any]]]:
    return [
        (path, raw, json.loads(raw))
        for path in segment.list_segments(directory)
        for raw in path.read_bytes().splitlines(keepends=True)
    ]


def action(rec: dict[str, Any]) -> str:
    return str(rec["event"]["action"])


def seal_lines(directory: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line in its segment, aofd.seal) of every seal."""
    out = []
    for path in segment.list_segments(directory):
        for n, raw in enumerate(path.read_bytes().splitlines(), 1):
            rec = json.loads(raw)
            if action(rec) == "audit.sealed":
                out.append((n, rec["aofd"]["seal"]))
    return out


def rewrite(
    path: Path, recs: list[dict[str, Any]], *, prev: str = segment.GENESIS, first_seq: int = 1
) -> None:
    """What an attacker with root does: write `recs` with seq and the hash chain recomputed."""
    out = []
    for seq, rec in enumerate(recs, first_seq):
        rec["aofd"]["audit"]["seq"] = seq
        rec["aofd"]["audit"]["prev"] = prev
        raw = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        prev = segment.line_hash(raw)
        out.append(raw)
    path.write_bytes(b"".join(out))


def stolen_epoch_key(state: Path) -> seal.EpochKey:
    """What an intruder takes from the state dir: the current epoch's private key and certificate."""
    data = json.loads(seal.state_path(state).read_text())
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["key"]))
    return seal.EpochKey(data["chain"], data["epoch"], private, tuple(data["certs"]))


def check(s: Sealed, target: Path | None = None, *, now: float | None = None) -> verify.VerifyReport:
    return verify.verify(target or s.audit_dir / "prod", keys=[s.vk], now=s.clock.now if now is None else now)


# -- setup-keys ---------------------------------------------------------------------------


def test_setup_keys_prints_the_key_once_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The (public) verification key is printed on stdout; the state is 0600 in a 0700 dir and
    holds the private key that goes with it; no overwrite without --force; --force starts a new
    chain."""
    state = tmp_path / "state"
    assert run_cli(["audit", "setup-keys", "--state-dir", str(state)]) == 0
    out = capsys.readouterr()
    vk = seal.VerificationKey.parse(out.out.strip())
    assert vk.interval == 60
    assert "cannot make them" in out.err
    path = seal.state_path(state)
    assert path == state / "audit-seal" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert (data["chain"], data["epoch"], data["certs"]) == (vk.chain, 0, [])
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["key"]))
    assert seal.public_bytes(private.public_key()) == vk.public0
    assert data["key"] not in out.out + out.err

    assert run_cli(["audit", "setup-keys", "--state-dir", str(state)]) == 1
    assert "--force" in capsys.readouterr().err
    assert json.loads(path.read_text())["chain"] == vk.chain

    assert run_cli(["audit", "setup-keys", "--state-dir", str(state), "--force", "--interval", "5m"]) == 0
    again = seal.VerificationKey.parse(capsys.readouterr().out.strip())
    assert again.chain != vk.chain
    assert again.interval == 300
    chain = seal.KeyChain.load(state)
    assert chain is not None
    assert (chain.chain, chain.interval) == (again.chain, 300)


def test_malformed_verification_key_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "audit").mkdir()
    assert run_cli(["audit", "verify", str(tmp_path / "audit"), "--verification-key", "aofd-seal-v1:zz"]) == 2
    assert "--verification-key #1" in capsys.readouterr().err


def test_daemon_config_rejects_checkpoint_every_and_a_mismatched_interval(tmp_path: Path) -> None:
    """The removed option fails with what to use instead; an epoch length that differs from the
    key chain's fails at start saying both ways out."""
    with pytest.raises(ValueError, match=r"checkpoint_every was removed.*setup-keys"):
        settings.AuditSpec.model_validate({"checkpoint_every": 5})
    assert settings.AuditSpec.model_validate({"seal_interval": "2m"}).seal_interval == 120
    with pytest.raises(ValueError, match="whole number"):
        settings.AuditSpec.model_validate({"seal_interval": "250ms"})
    seal.setup_keys(tmp_path, interval=60)
    with pytest.raises(seal.SealStateError, match="seal_interval: 60s"):
        seal.load_for_daemon(tmp_path, interval=30)
    assert seal.load_for_daemon(tmp_path / "none", interval=60) is None


# -- the writer ---------------------------------------------------------------------------


async def test_seals_every_epoch_at_rotation_and_at_stop(tmp_path: Path) -> None:
    """Each epoch's pass seals the head with that epoch's key; a rotation seals the old segment
    naming the next one; a clean stop ends the log with a stop seal; everything verifies."""
    s = await sealed_log(tmp_path, epochs=3, per_epoch=6, max_segment_bytes=8 * 1024)
    directory = s.audit_dir / "prod"
    log = lines_of(directory)
    seals = [(i, rec["aofd"]["seal"]) for i, (_, _, rec) in enumerate(log) if action(rec) == "audit.sealed"]
    reasons = [f["reason"] for _, f in seals]
    assert reasons.count("epoch") == 3
    assert "rotation" in reasons
    assert reasons[-1] == "stop"
    assert log[-1][2]["aofd"]["seal"]["reason"] == "stop"
    assert [f["epoch"] for _, f in seals if f["reason"] == "epoch"] == [0, 1, 2]
    for i, fields in seals:
        path, _, rec = log[i]
        assert fields["head"] == segment.line_hash(log[i - 1][1])
        assert fields["seq"] == rec["aofd"]["audit"]["seq"] - 1
        assert fields["segment"] == path.name
        assert rec["event"]["category"] == ["file"]
        assert rec["event"]["type"] == ["info"]
        assert ecs_check.problems(rec) == [], fields["reason"]
        if fields["reason"] == "rotation":
            assert action(log[i + 1][2]) == "audit.file.rotated"
            assert log[i + 2][0].name == fields["next_file"]
    report = check(s)
    assert report.ok, report.problems
    assert report.gaps == ()
    assert report.seals[0].sealed_seq == log[-2][2]["aofd"]["audit"]["seq"]
    assert report.seals[0].unsealed == 0
    assert "sealed up to seq" in report.seals[0].format()


async def test_an_idle_context_is_sealed_every_epoch(tmp_path: Path) -> None:
    """A Context with no new records still gets one seal per epoch (re-sealing the same head), so
    a missing epoch always means something."""
    s = await sealed_log(tmp_path, contexts=("prod",), idle=("quiet",), epochs=3)
    quiet = seal_lines(s.audit_dir / "quiet")
    assert [(f["reason"], f["epoch"]) for _, f in quiet] == [
        ("epoch", 0),
        ("epoch", 1),
        ("epoch", 2),
        ("stop", 3),
    ]
    report = verify.verify(s.audit_dir, keys=[s.vk], now=s.clock.now)
    assert report.ok
    assert report.gaps == ()
    assert {st.log for st in report.seals} == {"prod", "quiet"}


async def test_key_evolution_destroys_the_old_key(tmp_path: Path) -> None:
    """After a pass the state holds only the new epoch's private key, certified by the old one;
    no earlier private key is left in the state dir, and the certificates chain every epoch's
    public key back to the verification key."""
    state = tmp_path / "state"
    vk = seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    async with journal.AuditLog(audit_dir=tmp_path / "audit", clock=clock, keychain=chain) as audit:
        await audit.write("prod", event("prod", 0, clock.now))
        private = [json.loads(seal.state_path(state).read_text())["key"]]
        clock.now = T0 + EPOCH + 1
        assert (await audit.seal_epoch()).epoch == 0
        private.append(json.loads(seal.state_path(state).read_text())["key"])
        clock.now = T0 + 3 * EPOCH + 1
        assert (await audit.seal_epoch()).epoch == 1
        private.append(json.loads(seal.state_path(state).read_text())["key"])
        assert audit.sealing_status() == {"enabled": True, "chain": vk.chain, "epoch": 3, "interval": EPOCH}
    data = json.loads(seal.state_path(state).read_text())
    # epoch 3 sealed the stop; once those seals were durable the key moved on to epoch 4
    assert data["epoch"] == 4
    assert len({*private, data["key"]}) == 4
    on_disk = b"".join(p.read_bytes() for p in seal.state_dir_of(state).iterdir())
    for old in private:
        assert old.encode() not in on_disk
    assert not list(seal.state_dir_of(state).glob("*.tmp"))
    certs = list(seal.read_certs(seal.certs_path(state)))
    assert [(c["prev"], c["epoch"]) for c in certs] == [(0, 1), (1, 3), (3, 4)]
    store = seal.CertStore(vk)
    for cert in certs:
        store.add(cert)
    mine = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["key"]))
    certified = store.public(4)
    assert certified is not None
    assert seal.public_bytes(certified) == seal.public_bytes(mine.public_key())
    assert store.public(2) is None  # skipped over: that epoch never had a key


async def test_a_seal_that_cannot_be_written_fails_closed(tmp_path: Path) -> None:
    """Disk full while sealing: the pass reports the Context, the journal is failed like after any
    write failure (readiness names it) and a gated write is refused."""
    script = textwrap.dedent(
        """
        import asyncio, json, resource, signal, sys
        from pathlib import Path
        from aofd import errors
        from aofd.audit import journal, records, seal, segment

        async def main(audit_dir, state):
            chain = seal.KeyChain.load(Path(state))
            now = [chain.start + 1.0]
            audit = journal.AuditLog(audit_dir=Path(audit_dir), keychain=chain, clock=lambda: now[0],
                                     options=segment.JournalOptions(recovery_backoff=3600.0))
            await audit.open(["prod"])
            await audit.write("prod", records.build("trigger.received", context="prod"), durable=True)
            size = audit.active_segment("prod").stat().st_size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))
            now[0] += chain.interval
            done = await audit.seal_epoch()
            unavailable = audit.unavailable()
            try:
                await audit.write("prod", records.build("command.started", context="prod"), durable=True)
                gated = "written"
            except errors.AuditUnavailable as exc:
                gated = "refused: " + str(exc)
            await audit.aclose()
            print(json.dumps({"failed": done.failed, "unavailable": unavailable, "gated": gated}))

        asyncio.run(main(sys.argv[1], sys.argv[2]))
        """
    )
    state = tmp_path / "state"
    seal.setup_keys(state, interval=EPOCH, now=T0)
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "audit"), str(state)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert "short write" in result["failed"]["prod"]
    assert "short write" in result["unavailable"]["prod"]
    assert result["gated"].startswith("refused: ")
    # the seal that was not written is not counted in its epoch's certificate: none is "missing"
    certs = list(seal.read_certs(seal.certs_path(state)))
    assert (certs[0]["prev"], certs[0]["sealed"]["count"]) == (0, 0)


async def test_a_crash_between_evolving_and_sealing_shows_as_a_gap(tmp_path: Path) -> None:
    """The key moved on and the daemon died before its next seals: restart recovers the log, loses
    no record, and verify reports the epochs with no seal (exit 3), not tampering."""
    state = tmp_path / "state"
    vk = seal.setup_keys(state, interval=EPOCH, now=T0)
    chain = seal.KeyChain.load(state)
    assert chain is not None
    clock = Clock(T0 + 1)
    directory = tmp_path / "audit" / "prod"
    first = segment.ContextJournal(
        context="prod",
        directory=directory,
        options=segment.JournalOptions(),
        origin=records.Origin(),
        clock=clock,
        sealer=lambda: chain.current,
    )
    first.open()
    for i in range(3):
        first.append(event("prod", i, clock.now))
    clock.now = T0 + EPOCH + 1
    assert first.seal("epoch", chain.current)
    chain.advance_to(1)
    first.append(event("prod", 3, clock.now))
    clock.now = T0 + 2 * EPOCH + 1
    chain.advance_to(2)  # evolved; the crash comes before the seals of epoch 1
    first.sync()
    first.close()  # a crash: no stop seal

    clock.now = T0 + 5 * EPOCH + 1
    reloaded = seal.KeyChain.load(state)
    assert reloaded is not None
    assert reloaded.epoch == 2
    async with journal.AuditLog(audit_dir=tmp_path / "audit", clock=clock, keychain=reloaded) as audit:
        await audit.open(["prod"])
        assert reloaded.epoch == 5
        await audit.write("prod", event("prod", 4, clock.now))
    ids = [rec["event"]["id"] for _, _, rec in lines_of(directory) if action(rec) == "trigger.received"]
    assert ids == [f"E{i:04d}" for i in range(5)]
    report = verify.verify(directory, keys=[vk], now=clock.now)
    assert report.problems == (), report.problems
    assert not report.ok  # a gap is never read as intact: it may be a truncation
    assert len(report.gaps) == 2
    assert "epochs 1..4" in report.gaps[0].reason
    assert "possible truncation" in report.gaps[0].reason
    assert "1 record(s)" in report.gaps[1].reason
    assert "aofd died" in report.gaps[1].reason
    assert run_cli(["audit", "verify", str(directory), "--verification-key", vk.encode()]) == 3


# -- attacks --------------------------------------------------------------------------------


async def single_segment(tmp_path: Path) -> tuple[Sealed, Path, list[dict[str, Any]]]:
    s = await sealed_log(tmp_path, epochs=3, per_epoch=4)
    segs = segment.list_segments(s.audit_dir / "prod")
    assert len(segs) == 1
    recs = [json.loads(raw) for raw in segs[0].read_bytes().splitlines()]
    return s, segs[0], recs


def seal_indexes(recs: list[dict[str, Any]]) -> list[int]:
    return [i for i, rec in enumerate(recs) if action(rec) == "audit.sealed"]


async def test_without_the_key_a_recomputed_chain_passes(tmp_path: Path) -> None:
    """Why seals exist: an edit with the chain recomputed is invisible to the chain alone."""
    s, seg, recs = await single_segment(tmp_path)
    recs[3]["reason"] = "nothing to see"
    rewrite(seg, recs)
    plain = verify.verify(s.audit_dir / "prod")
    assert plain.ok
    assert any("seal(s) not checked" in n for n in plain.notes)
    assert not check(s).ok


@pytest.mark.parametrize("attack", ["edit", "insert", "delete", "reorder"])
async def test_recomputed_chain_is_caught_and_the_first_unsealed_line_named(
    tmp_path: Path, attack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Edit, insert, delete or reorder lines in epoch 1 and recompute the chain: the seal of epoch
    1 no longer matches; the first bad line named is the first one after epoch 0's seal."""
    s, seg, recs = await single_segment(tmp_path)
    first_seal, _second_seal = seal_indexes(recs)[:2]
    target = first_seal + 2  # inside epoch 1
    if attack == "edit":
        recs[target]["reason"] = "nothing to see"
    elif attack == "insert":
        recs.insert(target, json.loads(json.dumps(recs[target])))
    elif attack == "delete":
        del recs[target]
    else:
        recs[target], recs[target + 1] = recs[target + 1], recs[target]
    rewrite(seg, recs)
    report = check(s)
    first = report.first_problem
    assert first is not None
    assert (first.file, first.line) == (f"prod/{seg.name}", first_seal + 2)
    assert "chain recomputed" in first.reason
    capsys.readouterr()
    assert run_cli(["audit", "verify", str(s.audit_dir), "--verification-key", s.vk.encode()]) == 1
    assert f"first bad line prod/{seg.name}:{first_seal + 2}:" in capsys.readouterr().out


async def test_an_edit_without_recomputing_is_named_at_its_own_line(tmp_path: Path) -> None:
    s, seg, _ = await single_segment(tmp_path)
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"r', b'"R', 1)
    seg.write_bytes(b"".join(lines))
    first = check(s).first_problem
    assert first is not None
    assert first.line == 5


async def test_a_truncated_tail_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cut the log right after epoch 0's seal (later seals and the stop seal gone): verify says the
    log stopped being sealed there, naming the last seal's line, and exits non-zero."""
    s, seg, recs = await single_segment(tmp_path)
    keep = seal_indexes(recs)[0] + 1
    seg.write_bytes(b"".join(seg.read_bytes().splitlines(keepends=True)[:keep]))
    assert verify.verify(s.audit_dir / "prod").ok  # the chain alone cannot tell
    report = check(s)
    assert not report.ok
    assert report.problems == ()
    assert [(g.line, "not a stop seal" in g.reason) for g in report.gaps] == [(keep, True)]
    assert "possible truncation" in report.gaps[0].reason
    assert run_cli(["audit", "verify", str(s.audit_dir / "prod"), "--verification-key", s.vk.encode()]) == 3
    out = capsys.readouterr().out
    assert f"NOT SEALED for a while (possible truncation): prod/{seg.name}:{keep}:" in out
    assert "sealed up to seq" in out


def append_records(seg: Path, recs: list[dict[str, Any]]) -> None:
    """Append `recs` to `seg`, chained on from its last line (what an intruder can do)."""
    lines = seg.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    prev, seq = segment.line_hash(lines[-1]), last["aofd"]["audit"]["seq"]
    out = []
    for rec in recs:
        seq += 1
        rec["aofd"]["audit"].update(seq=seq, prev=prev)
        raw = json.dumps(rec).encode() + b"\n"
        prev = segment.line_hash(raw)
        out.append(raw)
    with seg.open("ab") as handle:
        handle.write(b"".join(out))


async def test_unsealed_records_after_the_last_seal_are_reported(tmp_path: Path) -> None:
    """Records after the newest epoch seal are counted as not sealed yet; records dated before
    that seal's epoch, or anything after a stop seal in the same segment, are insertions."""
    s, seg, recs = await single_segment(tmp_path)
    assert recs[-1]["aofd"]["seal"]["reason"] == "stop"
    seg.write_bytes(b"".join(seg.read_bytes().splitlines(keepends=True)[:-1]))  # as if still running
    fresh = [event("prod", 90 + i, s.clock.now) for i in range(2)]
    for rec in fresh:
        rec["aofd"]["audit"] = dict(recs[2]["aofd"]["audit"])
    append_records(seg, fresh)
    report = check(s)
    assert report.ok, (report.problems, report.gaps)
    status = report.seals[0]
    assert status.unsealed == 2
    assert status.sealed_seq == recs[-3]["aofd"]["audit"]["seq"]
    assert "2 records after it are not sealed yet" in status.format()

    old = json.loads(json.dumps(recs[2]))  # dated in epoch 0, appended after epoch 2's seal
    append_records(seg, [old])
    report = check(s)
    assert report.first_problem is not None
    assert report.first_problem.line == len(recs) + 2
    assert "inserted" in report.first_problem.reason


async def test_records_after_a_stop_seal_in_its_segment_are_insertions(tmp_path: Path) -> None:
    """aofd never writes after a stop seal in the same segment (a restart opens a new one)."""
    s, seg, recs = await single_segment(tmp_path)
    extra = event("prod", 90, s.clock.now)
    extra["aofd"]["audit"] = dict(recs[2]["aofd"]["audit"])
    append_records(seg, [extra])
    report = check(s)
    assert report.first_problem is not None
    assert report.first_problem.line == len(recs) + 1
    assert "after the stop seal" in report.first_problem.reason


async def test_a_deleted_newest_segment_is_caught(tmp_path: Path) -> None:
    """Removing the newest segment is caught by the rotation seal naming it; cutting the older
    segment back to before that seal shows as the log no longer being sealed."""
    s = await sealed_log(tmp_path, epochs=4, per_epoch=8, max_segment_bytes=8 * 1024)
    directory = s.audit_dir / "prod"
    segs = segment.list_segments(directory)
    assert len(segs) >= 3
    segs[-1].unlink()
    report = check(s)
    assert any("which is missing" in p.reason for p in report.problems)

    previous = segs[-2]
    recs = [json.loads(raw) for raw in previous.read_bytes().splitlines()]
    rotation = next(
        i
        for i, r in enumerate(recs)
        if r["event"]["action"] == "audit.sealed" and r["aofd"]["seal"]["reason"] == "rotation"
    )
    before = [i for i in seal_indexes(recs) if i < rotation]
    assert before  # an epoch seal precedes the rotation seal
    keep = before[-1] + 1
    previous.write_bytes(b"".join(previous.read_bytes().splitlines(keepends=True)[:keep]))
    report = check(s)
    assert report.problems == ()
    assert report.gaps, "a log cut back to an older seal must show as not sealed since"
    assert not report.ok


async def test_forged_seals_with_a_later_key_are_caught(tmp_path: Path) -> None:
    """An attacker with the state file (epoch j's key) recomputes the chain and forges seals: one
    claiming an earlier epoch does not verify; one for epoch j leaves the epochs before it unsealed."""
    s, seg, recs = await single_segment(tmp_path)
    key_j = stolen_epoch_key(s.state)
    epoch_j = key_j.epoch
    assert epoch_j == 4  # the stop seals were made with epoch 3's key, destroyed at stop
    keep = seal_indexes(recs)[0] + 1
    forged_recs = recs[:keep] + [json.loads(json.dumps(recs[keep])) for _ in range(2)]
    for rec in forged_recs[keep:]:
        rec["reason"] = "forged"

    def forge(claimed_epoch: int, reason: str) -> None:
        chain_recs = [json.loads(json.dumps(r)) for r in forged_recs]
        rewrite(seg, chain_recs)
        last_raw = seg.read_bytes().splitlines(keepends=True)[-1]
        fields = {
            "chain": s.vk.chain,
            "epoch": claimed_epoch,
            "reason": reason,
            "context": "prod",
            "segment": seg.name,
            "file_id": chain_recs[-1]["aofd"]["audit"]["file_id"],
            "seq": chain_recs[-1]["aofd"]["audit"]["seq"],
            "head": segment.line_hash(last_raw),
            "next_file": None,
            "time": records.rfc3339(s.clock.now),
            "certs": list(seal.read_certs(seal.certs_path(s.state))),  # public, on the host
        }
        fields["sig"] = key_j.sign(fields)
        rec = json.loads(json.dumps(recs[seal_indexes(recs)[1]]))
        rec["aofd"]["seal"] = fields
        rewrite(seg, [*chain_recs, rec])

    forge(1, "epoch")
    report = check(s)
    assert report.first_problem is not None
    assert report.first_problem.line == keep + 3
    assert "does not verify" in report.first_problem.reason

    forge(epoch_j, "stop")
    report = check(s)
    assert not report.ok
    assert [g.line for g in report.gaps] == [keep, keep + 1]
    assert "epochs 1..3" in report.gaps[0].reason
    assert "not sealed in their epoch" in report.gaps[1].reason


async def test_a_new_key_chain_after_a_clean_stop_verifies_with_both_keys(tmp_path: Path) -> None:
    """Key rotation: re-running setup-keys starts a new chain; seals of the old one need its key
    (noted when missing), and the switch after a stop seal is no gap."""
    s = await sealed_log(tmp_path, epochs=2)
    vk2 = seal.setup_keys(s.state, interval=EPOCH, force=True, now=s.clock.now)
    chain2 = seal.KeyChain.load(s.state)
    assert chain2 is not None
    clock = Clock(s.clock.now + 10)
    async with journal.AuditLog(audit_dir=s.audit_dir, clock=clock, keychain=chain2) as audit:
        await audit.write("prod", event("prod", 99, clock.now))
        clock.now += EPOCH
        assert (await audit.seal_epoch()).sealed == 1
    both = verify.verify(s.audit_dir / "prod", keys=[s.vk, vk2], now=clock.now)
    assert both.ok
    assert both.gaps == ()
    assert both.seals[0].unsealed == 0
    new_only = verify.verify(s.audit_dir / "prod", keys=[vk2], now=clock.now)
    assert new_only.ok
    assert new_only.gaps == ()
    assert any(s.vk.chain in note for note in new_only.notes)


def test_seal_message_covers_every_field() -> None:
    """Changing any sealed field breaks the signature."""
    key = seal.EpochKey("0123456789abcdef", 3, Ed25519PrivateKey.generate())
    fields: dict[str, Any] = {name: f"v-{name}" for name in seal.SEALED_FIELDS}
    sig = key.sign(fields)
    public = key.key.public_key()
    assert seal.signature_ok(public, sig, seal.seal_message(fields))
    for name in seal.SEALED_FIELDS:
        assert not seal.signature_ok(public, sig, seal.seal_message({**fields, name: "other"})), name
    assert os.path.basename(str(seal.state_path(Path("/x")))) == seal.STATE_FILE_NAME


def test_a_late_seal_with_an_older_key_is_skipped(tmp_path: Path) -> None:
    """A seal request that arrives after a later epoch's key sealed the log (a pass that timed
    out on a slow disk) is dropped, so seals never go backwards in epochs."""
    key = Ed25519PrivateKey.generate()
    journal_ = segment.ContextJournal(
        context="prod",
        directory=tmp_path / "prod",
        options=segment.JournalOptions(),
        origin=records.Origin(),
    )
    journal_.open()
    try:
        assert journal_.seal("rotation", seal.EpochKey("0123456789abcdef", 4, key))
        assert not journal_.seal("epoch", seal.EpochKey("0123456789abcdef", 3, key))
        assert journal_.seal("epoch", seal.EpochKey("0123456789abcdef", 4, key))
        assert journal_.seal("epoch", seal.EpochKey("fedcba9876543210", 0, key))  # a new chain
    finally:
        journal_.close()
    assert [f["epoch"] for _, f in seal_lines(tmp_path / "prod")] == [4, 4, 0]
