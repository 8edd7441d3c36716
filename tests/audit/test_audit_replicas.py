"""Audit logs of the replicas of a set (`cluster:`): each member writes its own segments
(`audit-<member>-<UTC>-<seq>.jsonl`) with its own chain and seq and stamps `service.node.name` and
`aofd.cluster.name` on every line; a directory holding several members' segments (collected from
several hosts) verifies as one chain per member, a member's recovery reads only its own segments,
and sealing works per member. A single host's names and records are unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from aofd.audit import journal, records, seal, segment, tail, verify
from tests.audit import ecs_check

T0 = 1_750_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def origin(member: str | None) -> records.Origin:
    if member is None:
        return records.Origin()
    return records.Origin(member=member, cluster_name="ops-prod")


async def write_log(
    audit_dir: Path, member: str | None, count: int, *, keychain: seal.KeyChain | None = None
) -> None:
    who = origin(member)
    opts = segment.JournalOptions(max_segment_bytes=4 * 1024, recovery_backoff=0.0)
    async with journal.AuditLog(audit_dir=audit_dir, options=opts, origin=who, keychain=keychain) as audit:
        for i in range(count):
            record = records.build("trigger.received", context="prod", event_id=f"{member}-{i}", origin=who)
            await audit.write("prod", record)
        if keychain is not None:
            await audit.seal_epoch()


def lines(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(raw) for p in paths for raw in p.read_bytes().splitlines()]


def test_segment_names_carry_the_member_and_parse_back() -> None:
    assert segment.segment_name(T0, 7) == "audit-20250615T150640Z-7.jsonl"  # single host: unchanged
    named = segment.segment_name(T0, 7, "host-a")
    assert named == "audit-host-a-20250615T150640Z-7.jsonl"
    assert (segment.segment_member(named), segment.segment_first_seq(named)) == ("host-a", 7)
    assert segment.segment_member("audit-20250615T150640Z-7.jsonl") is None
    assert segment.segment_first_seq("audit-Host-A-20250615T150640Z-7.jsonl") is None  # not a member name


async def test_each_member_has_its_own_chain_and_a_collected_dir_verifies_per_member(tmp_path: Path) -> None:
    for member in ("host-a", "host-b"):
        await write_log(tmp_path / member, member, 40)
    collected = tmp_path / "collected" / "prod"
    collected.mkdir(parents=True)
    for member in ("host-a", "host-b"):
        own = segment.list_segments(tmp_path / member / "prod")
        assert len(own) > 1, "rotated at least once"
        assert all(p.name.startswith(f"audit-{member}-") for p in own)
        for p in own:
            shutil.copy2(p, collected / p.name)
        got = lines(own)
        assert [r["aofd"]["audit"]["seq"] for r in got] == list(range(1, len(got) + 1))  # its own seq
        assert {r["service"]["node"]["name"] for r in got} == {member}
        assert {r["aofd"]["cluster"]["name"] for r in got} == {"ops-prod"}
        assert all(ecs_check.problems(r) == [] for r in got)

    assert set(segment.by_member(segment.list_segments(collected))) == {"host-a", "host-b"}
    report = verify.verify(collected)
    assert report.ok, report.problems
    assert any("member host-a" in n for n in report.notes)
    assert any("member host-b" in n for n in report.notes)
    assert verify.verify(tmp_path / "collected").ok

    # Tampering with one member's chain is found, and named in that member's segment.
    victim = segment.list_segments(collected, "host-b")[0]
    kept = victim.read_bytes().splitlines(keepends=True)
    del kept[2]
    victim.write_bytes(b"".join(kept))
    broken = verify.verify(collected)
    assert not broken.ok
    assert {p.file for p in broken.problems} == {f"prod/{victim.name}"}


async def test_a_member_recovers_from_its_own_segments_only(tmp_path: Path) -> None:
    """Another member's segments in the same directory change neither its seq nor its chain."""
    await write_log(tmp_path, "host-b", 60)
    b_last = lines(segment.list_segments(tmp_path / "prod", "host-b"))[-1]["aofd"]["audit"]["seq"]
    await write_log(tmp_path, "host-a", 3)  # the root lock is one daemon at a time, as on one host
    await write_log(tmp_path, "host-a", 3)
    a_lines = lines(segment.list_segments(tmp_path / "prod", "host-a"))
    assert a_lines[0]["aofd"]["audit"]["seq"] == 1
    assert a_lines[0]["aofd"]["audit"]["prev"] == segment.GENESIS
    assert a_lines[-1]["aofd"]["audit"]["seq"] < b_last
    assert not any(r["event"]["action"] == "audit.recovered" for r in a_lines)
    assert verify.verify(tmp_path / "prod").ok


async def test_a_single_host_log_is_unchanged(tmp_path: Path) -> None:
    await write_log(tmp_path, None, 5)
    (only,) = segment.list_segments(tmp_path / "prod")
    assert segment.segment_member(only.name) is None
    got = lines([only])
    assert all("node" not in r["service"] and "cluster" not in r["aofd"] for r in got)
    assert segment.list_segments(tmp_path / "prod", None) == [only]
    assert segment.list_segments(tmp_path / "prod", "host-a") == []


async def test_each_member_seals_its_own_log_with_its_own_key(tmp_path: Path) -> None:
    """Sealing works per member (each replica its own state dir and key chain); the collected
    directory verifies against both members' verification keys."""
    keys = []
    collected = tmp_path / "collected"
    for member in ("host-a", "host-b"):
        state = tmp_path / member / "state"
        keys.append(seal.setup_keys(state, interval=3600, now=T0))
        chain = seal.KeyChain.load(state)
        assert chain is not None
        await write_log(tmp_path / member / "audit", member, 10, keychain=chain)
        shutil.copytree(tmp_path / member / "audit" / "prod", collected / "prod", dirs_exist_ok=True)
    sealed = [
        r for r in lines(segment.list_segments(collected / "prod")) if r["event"]["action"] == "audit.sealed"
    ]
    assert {r["service"]["node"]["name"] for r in sealed} == {"host-a", "host-b"}
    report = verify.verify(collected, keys=keys)
    assert report.ok, (report.problems, report.gaps)
    assert len(report.seals) >= 2


def test_the_tail_of_a_directory_with_several_chains_is_its_newest_lines(tmp_path: Path) -> None:
    """A single host's newer segment beside a member's older one (a replica set gone back to one
    host, a renamed host): the tail reads by the time in the names, not grouped by member."""
    (tmp_path / "audit-host-a-20261201T000000Z-1.jsonl").write_text('{"n": "old, host-a"}\n')
    (tmp_path / "audit-20261205T000000Z-1.jsonl").write_text('{"n": "newer, single host"}\n')
    (tmp_path / "audit-zz-host-20261203T000000Z-1.jsonl").write_text('{"n": "middle, zz-host"}\n')
    assert [b'{"n": "newer, single host"}\n'] == tail.last_lines(tmp_path, 1)
    assert [b'{"n": "middle, zz-host"}\n', b'{"n": "newer, single host"}\n'] == tail.last_lines(tmp_path, 2)
    assert [p.name for p in segment.by_time(tmp_path)] == [
        "audit-host-a-20261201T000000Z-1.jsonl",
        "audit-zz-host-20261203T000000Z-1.jsonl",
        "audit-20261205T000000Z-1.jsonl",
    ]
