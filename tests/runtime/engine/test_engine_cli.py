"""`aofctl run agent` end to end: resources from a directory, the real engine, guard and audit log."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from aofd.cli import run_cmd
from tests.runtime.fakes_models import servers

AGENT = """apiVersion: aof.dev/v1
kind: Agent
metadata:
  name: k8s-ops
spec:
  model: anthropic:claude-sonnet-4
  instructions: You are helpful.
"""
CONTEXT = """apiVersion: aof.dev/v1
kind: Context
metadata:
  name: prod
spec:
  namespace: payments
"""


@pytest.mark.slow
async def test_run_agent_prints_json_and_audits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aofctl run agent NAME --context prod -i hello -o json` answers and audits to the Context's log."""
    server = servers.FakeModelServer(servers.sequence(servers.a_text("hi from model")))
    url = await server.start()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "agent.yaml").write_text(AGENT)
    (tmp_path / "repo" / "context.yaml").write_text(CONTEXT)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-cli")
    parser = argparse.ArgumentParser()
    run_cmd.register(parser.add_subparsers())
    argv = [
        "run",
        "agent",
        "k8s-ops",
        str(tmp_path / "repo"),
        "--context",
        "prod",
        "-i",
        "hello",
        "-o",
        "json",
    ]
    argv += ["--audit-dir", str(tmp_path / "audit"), "--state-dir", str(tmp_path / "state")]
    args = parser.parse_args(argv)
    try:
        code = await asyncio.to_thread(args.func, args)
    finally:
        await server.close()
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == "hi from model"
    assert out["context"] == "prod"
    lines = [
        json.loads(x)
        for x in next((tmp_path / "audit" / "prod").glob("audit-*.jsonl")).read_text().splitlines()
    ]
    actions = [line["event"]["action"] for line in lines]
    assert "agent.run.started" in actions
    assert "agent.run.finished" in actions
