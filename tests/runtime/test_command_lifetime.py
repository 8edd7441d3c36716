"""Commands die with the daemon: the parent-death signal, the ledger of running commands, and a
restart that kills what survived and closes the audit trail (`command.abandoned` with
`killed`, `agent.run.finished` with status `interrupted`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aofd import settings
from aofd.runtime import commands
from aofd.specs import policy
from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import FLOW, TRIGGER, binding, send_event

FAKE = Path(__file__).parent / "bin" / "fake_kubectl.py"


def install_fake(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "kubectl"
    target.write_text(f"#!{sys.executable} -IS\n" + FAKE.read_text())
    target.chmod(0o755)
    return target


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return is_gone(pid)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def sleeper(*, new_session: bool = True) -> subprocess.Popen[bytes]:
    """A process standing in for a command that survived its daemon (its own session and group)."""
    return subprocess.Popen(
        [sys.executable, "-IS", "-c", "import time; time.sleep(600)"], start_new_session=new_session
    )


# -- the ledger and the reaper, in process ---------------------------------------------------


def test_proc_start_ticks_reads_field_22() -> None:
    ticks = commands.proc_start_ticks(os.getpid())
    assert ticks is not None
    assert ticks > 0
    assert commands.proc_start_ticks(os.getpid()) == ticks
    assert commands.proc_start_ticks(2**22 + 12345) is None


def test_a_recorded_survivor_is_killed_with_its_group(tmp_path: Path) -> None:
    proc = sleeper()
    try:
        ledger = commands.Ledger(tmp_path / "commands")
        ledger.record("c1", context="prod", run_id="r1", pid=proc.pid)
        assert [p.name for p in (tmp_path / "commands").iterdir()] == ["c1.json"]
        [reaped] = commands.reap_survivors(ledger)
        assert (reaped.command_id, reaped.context, reaped.pid, reaped.killed) == (
            "c1",
            "prod",
            proc.pid,
            True,
        )
        assert proc.wait(5) == -signal.SIGKILL
        # Kept, marked reaped, until the closing record is durable in the Context's audit log.
        assert [p.name for p in (tmp_path / "commands").iterdir()] == ["c1.json"]
        assert commands.reap_survivors(ledger) == [reaped]  # the same report; nothing signalled again
    finally:
        kill_quietly(proc.pid)
        proc.wait()


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    """The pid names a process started at another time: not ours, never signalled."""
    proc = sleeper()
    try:
        ledger = commands.Ledger(tmp_path / "commands")
        ledger.record("c2", context="prod", run_id="r2", pid=proc.pid)
        path = tmp_path / "commands" / "c2.json"
        entry = json.loads(path.read_text())
        entry["start_ticks"] -= 1
        path.write_text(json.dumps(entry))
        [reaped] = commands.reap_survivors(ledger)
        assert reaped.killed is False
        assert proc.poll() is None
        assert json.loads(path.read_text())["reaped"]["killed"] is False
    finally:
        kill_quietly(proc.pid)
        proc.wait()


def test_an_entry_from_another_boot_is_dropped(tmp_path: Path) -> None:
    proc = sleeper()
    try:
        ledger = commands.Ledger(tmp_path / "commands")
        ledger.record("c3", context="prod", run_id="r3", pid=proc.pid)
        path = tmp_path / "commands" / "c3.json"
        entry = json.loads(path.read_text())
        entry["boot_id"] = "another-boot"
        path.write_text(json.dumps(entry))
        [reaped] = commands.reap_survivors(ledger)
        assert reaped.killed is False
        assert proc.poll() is None
    finally:
        kill_quietly(proc.pid)
        proc.wait()


@pytest.mark.parametrize(("shift", "killed"), [(0.0, True), (86400.0, False)])
def test_without_a_boot_id_the_boot_time_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shift: float, killed: bool
) -> None:
    """systemd's ProcSubset=pid hides /proc/sys: the boot is then told by CLOCK_BOOTTIME."""
    monkeypatch.setattr(commands, "BOOT_ID_PATH", str(tmp_path / "hidden"))
    proc = sleeper()
    try:
        ledger = commands.Ledger(tmp_path / "commands")
        ledger.record("c5", context="prod", run_id="r5", pid=proc.pid)
        path = tmp_path / "commands" / "c5.json"
        entry = json.loads(path.read_text())
        assert entry["boot_id"] == ""
        entry["booted_at"] -= shift
        path.write_text(json.dumps(entry))
        [reaped] = commands.reap_survivors(ledger)
        assert reaped.killed is killed
        assert (proc.wait(5) == -signal.SIGKILL) if killed else (proc.poll() is None)
    finally:
        kill_quietly(proc.pid)
        proc.wait()


def test_an_unreadable_entry_is_reported_and_removed(tmp_path: Path) -> None:
    (tmp_path / "commands").mkdir()
    (tmp_path / "commands" / "bad.json").write_text("{not json")
    assert commands.reap_survivors(commands.Ledger(tmp_path / "commands")) == []
    assert list((tmp_path / "commands").iterdir()) == []


def test_the_ledger_records_where_the_context_logs(tmp_path: Path) -> None:
    proc = sleeper()
    try:
        where = {"prod": tmp_path / "audit" / "prod"}
        ledger = commands.Ledger(tmp_path / "commands", log_dir=where.get)
        ledger.record("c6", context="prod", run_id="r6", pid=proc.pid)
        ledger.record("c7", context="other", run_id="r7", pid=proc.pid)
        entries = {e["id"]: e for _, e in ledger.entries() if e is not None}
        assert entries["c6"]["audit_dir"] == str(tmp_path / "audit" / "prod")
        assert "audit_dir" not in entries["c7"]
    finally:
        kill_quietly(proc.pid)
        proc.wait()


def test_a_restart_that_never_applies_still_closes_the_survivor(tmp_path: Path) -> None:
    """The restarted daemon never applies a revision (its remote is missing): the survivor is still
    killed, its `command.abandoned` (killed) and its run's `interrupted` are written to where the
    Context's log was, and only then is the ledger entry removed."""
    proc = sleeper()
    try:
        audit = tmp_path / "audit"
        ledger = commands.Ledger(tmp_path / "state" / "commands", log_dir=lambda c: audit / "teams" / c)
        ledger.record("CMD-1", context="gone", run_id="RUN-1", pid=proc.pid)
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "main", "git": {"url": f"file://{tmp_path / 'missing.git'}"}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(audit),
                }
            )
        )
        with harness.run_daemon("--config", str(config), cwd=tmp_path, state_dir=tmp_path / "state") as d:
            d.wait_endpoints()
            assert proc.wait(5) == -signal.SIGKILL
            assert list((tmp_path / "state" / "commands").iterdir()) == []
            assert 0 == d.stop()
        lines = [
            json.loads(line)
            for seg in sorted((audit / "teams" / "gone").glob("audit-*.jsonl"))
            for line in seg.read_text().splitlines()
        ]
        [abandoned] = [r for r in lines if r["event"]["action"] == "command.abandoned"]
        assert (abandoned["event"]["id"], abandoned["aofd"]["abandoned"]["killed"]) == ("CMD-1", True)
        [finished] = [r for r in lines if r["event"]["action"] == "agent.run.finished"]
        assert (finished["aofd"]["agent"]["run_id"], finished["aofd"]["run"]["status"]) == (
            "RUN-1",
            "interrupted",
        )
    finally:
        kill_quietly(proc.pid)
        proc.wait()


async def test_an_entry_stays_until_its_closing_record_is_written(tmp_path: Path) -> None:
    """The Context's log cannot be opened (another writer holds it): the entry is kept, marked
    reaped, and the next start writes the record (`killed` as found the first time)."""
    from aofd.audit import journal, segment
    from aofd.daemon import wiring

    proc = sleeper()
    try:
        ledger = commands.Ledger(tmp_path / "commands")
        ledger.record("CMD-2", context="prod", run_id="RUN-2", pid=proc.pid)
        reaped = commands.reap_survivors(ledger)
        assert proc.wait(5) == -signal.SIGKILL
        (tmp_path / "audit" / "prod").mkdir(parents=True)
        held = segment.take_lock(tmp_path / "audit" / "prod" / segment.LOCK_NAME, what="a test")
        try:
            async with journal.AuditLog(audit_dir=tmp_path / "audit") as audit:
                assert await wiring.close_survivors(audit, ledger, reaped) == 0
        finally:
            os.close(held)
        assert [p.name for p in (tmp_path / "commands").iterdir()] == ["CMD-2.json"]
        again = commands.reap_survivors(ledger)
        assert again == reaped
        async with journal.AuditLog(audit_dir=tmp_path / "audit") as audit:
            assert await wiring.close_survivors(audit, ledger, again) == 1
        assert list((tmp_path / "commands").iterdir()) == []
        text = "".join(p.read_text() for p in (tmp_path / "audit" / "prod").glob("audit-*.jsonl"))
        [abandoned] = [json.loads(x) for x in text.splitlines() if '"command.abandoned"' in x]
        assert abandoned["aofd"]["abandoned"]["killed"] is True
    finally:
        kill_quietly(proc.pid)
        proc.wait()


async def test_the_ledger_holds_a_command_only_while_it_runs(tmp_path: Path) -> None:
    kubectl = install_fake(tmp_path / "bin")
    ledger = commands.Ledger(tmp_path / "commands")
    runner = commands.CommandRunner(
        executables=settings.ExecutablesSpec(paths={"kubectl": kubectl}),
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "work",
        kill_grace=0.2,
        ledger=ledger,
    )
    pol = policy.GuardPolicy(context="prod")
    seen: list[list[str]] = []
    real_record = ledger.record

    def spy(command_id: str, **kw: Any) -> None:
        real_record(command_id, **kw)
        seen.append(sorted(p.name for p in (tmp_path / "commands").iterdir()))

    ledger.record = spy  # type: ignore[method-assign]
    result = await runner.run(["kubectl", "get", "pods"], executable=kubectl, pol=pol, command_id="cid-1")
    assert result.exit_code == 0
    assert seen == [["cid-1.json"]]
    assert list((tmp_path / "commands").iterdir()) == []


# -- a real daemon killed with SIGKILL --------------------------------------------------------

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {{name: prod}}
spec:
  namespace: default
  env: {{FAKE_RECORD: "{record}"}}
  limits: {{max_requests_per_hour: 1000}}
"""
AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {name: echo}
spec:
  model: anthropic:claude-test
  instructions: Answer briefly.
  tools: [kubectl]
"""


HANG = [{"type": "tool_use", "id": "toolu_1", "name": "kubectl", "input": {"args": ["get", "pods", "hang"]}}]
"""The model's first answer: run `kubectl get pods hang` (the fake kubectl then hangs)."""


def audit_records(tmp: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted((tmp / "audit" / "prod").glob("audit-*.jsonl"))
        for line in segment.read_text().splitlines()
    ]


@pytest.mark.slow
def test_kill_9_kills_the_command_and_a_restart_kills_what_survived(tmp_path: Path) -> None:
    """kill -9 of aofd while `kubectl` runs: the command dies with it (parent-death signal); the
    grandchild it left in its process group is killed by the next start, which audits
    `command.abandoned` (killed) and closes the run (`interrupted`)."""
    record = tmp_path / "kubectl.jsonl"
    repo = tmp_path / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod.yaml": CONTEXT.format(record=record),
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    kubectl = install_fake(tmp_path / "bin")
    pids: list[int] = []
    with fakes.anthropic_server(script=[HANG]) as model:
        model_url = fakes.url(model)
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(tmp_path / "audit"),
                    "models": {"anthropic_base_url": model_url},
                    "executables": {"paths": {"kubectl": str(kubectl)}},
                }
            )
        )
        args = ["--config", str(config)]
        env = {"ANTHROPIC_API_KEY": "test-key"}
        try:
            with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as daemon:
                daemon.wait_ready()
                assert 202 == send_event(daemon, "list pods", "kill-1")
                seen = daemon.wait_for(
                    lambda: record.exists() and record.read_text().strip(), what="kubectl to start"
                )
                started = json.loads(seen.splitlines()[0])
                leader, grandchild = int(started["pid"]), int(started["grandchild"])
                pids += [leader, grandchild]
                assert not is_gone(leader)
                daemon.proc.send_signal(signal.SIGKILL)
                daemon.proc.wait()
                assert wait_gone(leader, 1.0), "kubectl outlived the daemon"
                assert not is_gone(grandchild)  # a parent-death signal is not inherited

            with harness.run_daemon(*args, cwd=tmp_path, state_dir=tmp_path / "state", env=env) as again:
                again.wait_ready()
                assert wait_gone(grandchild, 1.0), "the restart did not kill the surviving group"
                lines = again.wait_for(
                    lambda: (
                        (got := audit_records(tmp_path))
                        and any(r["event"]["action"] == "agent.run.finished" for r in got)
                        and got
                    ),
                    what="the closing records",
                )
                assert 0 == again.stop()
        finally:
            for pid in pids:
                kill_quietly(pid)
    [started_rec] = [r for r in lines if r["event"]["action"] == "command.started"]
    [abandoned] = [r for r in lines if r["event"]["action"] == "command.abandoned"]
    assert abandoned["event"]["id"] == started_rec["event"]["id"]
    assert abandoned["aofd"]["abandoned"]["killed"] is True
    assert abandoned["aofd"]["abandoned"]["pid"] == leader
    assert abandoned["process"]["args"][-3:] == ["get", "pods", "hang"]
    [run_started] = [r for r in lines if r["event"]["action"] == "agent.run.started"]
    [run_finished] = [r for r in lines if r["event"]["action"] == "agent.run.finished"]
    assert run_finished["aofd"]["agent"]["run_id"] == run_started["aofd"]["agent"]["run_id"]
    assert run_finished["aofd"]["run"]["status"] == "interrupted"
    assert run_finished["event"]["outcome"] == "unknown"
    assert list((tmp_path / "state" / "commands").iterdir()) == []
