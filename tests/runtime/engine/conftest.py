"""Fixtures of the flow-engine tests: the real command guard over a fake kubectl, fake model servers,
a recording replier, and an engine factory."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from aofd import settings
from aofd.runtime import approvals, commands, engine, guard, limits, ports, runs
from aofd.runtime.providers import base, registry
from aofd.testing import recorders
from aofd.testing import resources as res_kit
from tests.runtime.fakes_models import servers

FAKE_KUBECTL = Path(__file__).parents[1] / "bin" / "fake_kubectl.py"
FAST_RETRY = base.RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)


RecordingReplier = recorders.RecordingReplier


class ScriptedApprovals:
    """An ApprovalGate answering each request with the next scripted status (after an optional wait)."""

    def __init__(self, *statuses: str, wait: Any = None) -> None:
        self.statuses = list(statuses)
        self.requests: list[Any] = []
        self.wait = wait

    async def request(self, request: Any) -> Any:
        from aofd.runtime import fleets

        self.requests.append(request)
        if self.wait is not None:
            await self.wait()
        status = self.statuses.pop(0)
        return fleets.ApprovalDecision(status, by="U-APPROVER" if status != "expired" else "")  # type: ignore[arg-type]


def message(
    text: str, *, user: str = "U1", channel: str = "C-ORIGIN", thread: str = "1700000000.0001"
) -> ports.EventMessage:
    return ports.EventMessage(
        platform="slack",
        trigger="slack-bot",
        text=text,
        user=ports.UserRef(user, "alice", "slack:T1"),
        channel_id=channel,
        thread=thread,
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def kubectl_bin(tmp_path: Path) -> Path:
    """The guard engineer's fake kubectl installed as an executable with this interpreter."""
    target = tmp_path / "bin" / "kubectl"
    target.parent.mkdir(parents=True)
    target.write_text(f"#!{sys.executable} -IS\n" + FAKE_KUBECTL.read_text())
    target.chmod(0o755)
    return target


@pytest.fixture
def audit() -> recorders.RecordingAudit:
    return recorders.RecordingAudit()


@pytest.fixture
def replier() -> RecordingReplier:
    return RecordingReplier()


GuardFactory = Callable[[Mapping[str, Any]], guard.CommandGuard]


@pytest.fixture
def make_guard(tmp_path: Path, kubectl_bin: Path, audit: recorders.RecordingAudit) -> GuardFactory:
    """Build the real CommandGuard for a set of Context resources (name -> LoadedResource)."""

    def build(contexts: Mapping[str, Any]) -> guard.CommandGuard:
        policies = {name: res_kit.guard_policy(res) for name, res in contexts.items()}
        runner = commands.CommandRunner(
            executables=settings.ExecutablesSpec(paths={"kubectl": kubectl_bin}),
            cache_dir=tmp_path / "cache",
            work_dir=tmp_path / "work",
            kill_grace=0.2,
        )

        async def request_approval(_req: approvals.ApprovalRequest) -> None:
            return None

        return guard.CommandGuard(
            runner=runner,
            limits=limits.RateLimits(),
            approvals=approvals.ApprovalStore(),
            audit=audit,
            approval_requester=request_approval,
            policy_provider=policies.get,
        )

    return build


@pytest.fixture
async def anthropic_server() -> AsyncIterator[servers.FakeModelServer]:
    server = servers.FakeModelServer(servers.sequence(servers.a_text("hello")))
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def openai_server() -> AsyncIterator[servers.FakeModelServer]:
    server = servers.FakeModelServer(servers.sequence(servers.o_text("hello")))
    await server.start()
    yield server
    await server.close()


EngineFactory = Callable[..., engine.Engine]


@pytest.fixture
async def make_engine(replier: RecordingReplier) -> AsyncIterator[EngineFactory]:
    """Build engines (closed after the test); `models` and `factories` choose the providers."""
    built: list[engine.Engine] = []

    def build(
        *,
        commands: Any = None,
        models: settings.ModelsSpec | None = None,
        factories: Mapping[str, Any] | None = None,
        approvals_gate: Any = None,
        history: runs.RunHistory | None = None,
        **kwargs: Any,
    ) -> engine.Engine:
        providers = registry.Providers(
            models=models or settings.ModelsSpec(anthropic_base_url="http://127.0.0.1:9"),
            environ={"ANTHROPIC_API_KEY": "sk-test"},
            factories=factories,
        )
        eng = engine.Engine(
            providers=providers,
            commands=commands or _NoCommands(),
            replier=replier,
            history=history if history is not None else runs.RunHistory(capacity=50),
            approvals=approvals_gate,
            retry=FAST_RETRY,
            **kwargs,
        )
        built.append(eng)
        return eng

    yield build
    for eng in built:
        await eng.aclose()


class _NoCommands:
    async def run(self, request: Any) -> Any:
        raise AssertionError(f"no command expected, got {request.argv}")
