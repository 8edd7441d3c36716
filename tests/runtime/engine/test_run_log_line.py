"""One canonical log line per flow run (`flow run`), whatever ended it: what ran, for whom, how it
ended, what it cost. Runs go through the real FlowStarter and engine; logs are captured."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
import structlog

from aofd.runtime import runs, starter
from aofd.testing import resources as res
from aofd.testing.models import ScriptedProvider
from tests.runtime.engine.conftest import EngineFactory, GuardFactory, message


def run_lines(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "flow run"]


async def test_a_completed_run_logs_one_line_with_its_cost(make_engine: EngineFactory) -> None:
    provider = ScriptedProvider(lambda r: "all good")
    eng = make_engine(factories={"anthropic": lambda: provider})
    sup = starter.FlowStarter(engine=eng)
    binding = res.binding_spec(
        res.bind("prod-b", ctx=res.context("prod"), agent_res=res.agent("a", model="anthropic:m"))
    )
    with structlog.testing.capture_logs() as logs:
        run_id = sup.start(binding, message("how are the pods?", user="U42"))
        record = await sup.wait(run_id)
        await sup.drain()
    assert record is not None
    assert record.status is runs.RunStatus.COMPLETED
    (line,) = run_lines(logs)
    duration = line.pop("duration_ms")
    assert isinstance(duration, float)
    assert duration >= 0
    assert line == {
        "event": "flow run",
        "log_level": "info",
        "run_id": run_id,
        "binding": "prod-b",
        "flow": record.flow,
        "context": "prod",
        "trigger": "slack-bot",
        "platform": "slack",
        "user": "U42",
        "status": "completed",
        "nodes": {"completed": 1},
        "model_calls": 1,
        "tool_calls": 0,
        "commands_run": 0,
        "commands_denied": 0,
        "approvals": 0,
        "approval_wait_s": 0.0,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "error": None,
    }
    assert record.input_tokens + record.output_tokens > 0


async def test_a_run_refused_by_its_limits_logs_not_started(
    make_engine: EngineFactory, make_guard: GuardFactory
) -> None:
    """A run the Context's limits refuse never starts; its line says so, at warning level."""
    ctx = res.context("prod", limits={"max_requests_per_hour": 1})
    provider = ScriptedProvider(lambda r: "ok")
    command_guard = make_guard({"prod": ctx})
    eng = make_engine(
        factories={"anthropic": lambda: provider}, commands=command_guard, admission=command_guard
    )
    sup = starter.FlowStarter(engine=eng)
    binding = res.binding_spec(res.bind("b", ctx=ctx, agent_res=res.agent("a", model="anthropic:m")))
    with structlog.testing.capture_logs() as logs:
        for text in ("first", "second"):
            await sup.wait(sup.start(binding, message(text)))
        await sup.drain()
    first, second = run_lines(logs)
    assert (first["status"], first["log_level"]) == ("completed", "info")
    assert (second["status"], second["log_level"]) == ("failed", "warning")
    assert second["error"].startswith("not started: ")
    assert second["nodes"] == {}
    assert second["model_calls"] == 0


async def test_runs_cancelled_at_shutdown_log_their_line(make_engine: EngineFactory) -> None:
    """Draining cancels a slow run (recorded `cancelled`) and a run whose task never got to start."""
    provider = ScriptedProvider(lambda r: "late", delays={"slow": 30.0})
    eng = make_engine(factories={"anthropic": lambda: provider})
    sup = starter.FlowStarter(engine=eng, grace=0.0)
    binding = res.binding_spec(
        res.bind("b", ctx=res.context("prod"), agent_res=res.agent("s", model="anthropic:slow"))
    )
    with structlog.testing.capture_logs() as logs:
        ids = [sup.start(binding, message("q")) for _ in range(2)]
        await sup.drain()
    lines = {line["run_id"]: line for line in run_lines(logs)}
    assert set(lines) == set(ids), "exactly one line per run"
    assert {line["status"] for line in lines.values()} == {"cancelled"}
    assert {line["log_level"] for line in lines.values()} == {"info"}


def test_log_fields_cut_the_error_and_count_nodes() -> None:
    record = runs.RunRecord("R1", "b", "f", "prod", "slack", "hook", "U1", started_at=100.0)
    record.node("a", "agent").status = runs.NodeStatus.COMPLETED
    record.node("b", "agent").status = runs.NodeStatus.FAILED
    record.node("c", "end").status = runs.NodeStatus.SKIPPED
    record.note_command(ran=True)
    record.note_command(ran=False)
    record.note_command(ran=False)
    record.note_approval(12.25)
    record.note_approval(-1.0)  # a clock step never makes a negative wait
    record.finish(runs.RunStatus.FAILED, error="x" * 500, now=101.5)
    fields = record.log_fields()
    assert fields["nodes"] == {"completed": 1, "failed": 1, "skipped": 1}
    assert (fields["commands_run"], fields["commands_denied"]) == (1, 2)
    assert (fields["approvals"], fields["approval_wait_s"]) == (2, 12.25)
    assert fields["duration_ms"] == 1500.0
    assert len(fields["error"]) == runs.MAX_LOGGED_ERROR_CHARS
    assert fields["error"].endswith("…")
    assert record.error == "x" * 500, "the record keeps the whole error"


@pytest.mark.parametrize("status", [runs.RunStatus.RUNNING, runs.RunStatus.WAITING])
def test_an_unfinished_record_logs_as_cancelled(status: runs.RunStatus) -> None:
    record = runs.RunRecord("R1", "b", "f", "prod", "slack", "hook", "U1", started_at=100.0, status=status)
    fields = record.log_fields(now=100.25)
    assert (fields["status"], fields["duration_ms"]) == ("cancelled", 250.0)
