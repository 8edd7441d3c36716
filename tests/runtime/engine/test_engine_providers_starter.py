"""Provider checks at apply time (Stalled reasons), model strings, retries, and the run supervisor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.runtime import runs, starter
from aofd.runtime.providers import base, google, registry
from aofd.testing import resources as res
from aofd.testing.models import ScriptedProvider
from tests.runtime.engine.conftest import EngineFactory, GuardFactory, RecordingReplier, message


def test_missing_google_package_names_the_extra() -> None:
    """`google:` without google-genai installed is a Stalled reason naming the extra aofd[google]."""
    problem = registry.provider_problem(
        "google:gemini-2.5-flash",
        settings.ModelsSpec(),
        environ={"GOOGLE_API_KEY": "k"},
        available=lambda m: m != "google.genai",
    )
    assert problem == "provider google needs the google-genai package: pip install 'aofd[google]'"
    if not registry.module_available("google.genai"):  # this machine: really not installed
        assert (
            registry.provider_problem(
                "google:gemini-2.5-flash", settings.ModelsSpec(), environ={"GOOGLE_API_KEY": "k"}
            )
            == problem
        )
        with pytest.raises(base.ModelError, match=r"aofd\[google\]"):
            google.GoogleProvider(api_key="k", timeout=1.0)


def test_missing_openai_package_and_unconfigured_providers(tmp_path: Path) -> None:
    """openai-compatible providers need the openai extra and a base URL; anthropic needs a key or base URL."""
    absent = registry.provider_problem(
        "openai:gpt-4o", settings.ModelsSpec(), environ={"OPENAI_API_KEY": "k"}, available=lambda m: False
    )
    assert absent == "provider openai needs the openai package: pip install 'aofd[openai]'"
    assert "needs models.openai_base_url" in (
        registry.provider_problem("ollama:llama3", settings.ModelsSpec(), environ={}) or ""
    )
    assert "not configured" in (
        registry.provider_problem("claude-sonnet-4", settings.ModelsSpec(), environ={}) or ""
    )
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    assert (
        registry.provider_problem(
            "claude-sonnet-4", settings.ModelsSpec(anthropic_api_key_file=key), environ={}
        )
        is None
    )
    assert "not supported" in (
        registry.provider_problem("bedrock:titan", settings.ModelsSpec(), environ={}) or ""
    )


def test_binding_with_uninstalled_provider_has_a_stall_reason() -> None:
    """A compiled binding names the models its fleet members use; without their SDK the provider check
    (what the apply stage asks for each) names the extra to install."""
    fleet = res.fleet("f", agents=[{"name": "g", "spec": {"model": "google:gemini-2.5-flash"}}])
    flow = res.flow("fl", nodes=[{"id": "n", "type": "Fleet", "config": {"fleet": "f"}}])
    spec = res.binding_spec(res.bind("b", ctx=res.context("prod"), flow_res=flow, fleets=[fleet]))
    problems = [
        registry.provider_problem(
            ref.model,
            settings.ModelsSpec(),
            provider=ref.provider,
            environ={"GOOGLE_API_KEY": "k"},
            available=lambda module: module != "google.genai",
        )
        for ref in spec.models
    ]
    assert ["provider google needs the google-genai package: pip install 'aofd[google]'"] == problems


async def test_retries_stop_at_the_deadline() -> None:
    """No retry starts when its backoff would end after the run's deadline."""

    class Busy:
        name = "anthropic"
        calls = 0

        async def complete(self, request: base.ModelRequest) -> base.ModelResponse:
            Busy.calls += 1
            raise base.ModelError("busy", provider="anthropic", retryable=True, status=529, retry_after=5.0)

        async def aclose(self) -> None:
            return None

    loop = asyncio.get_running_loop()
    with pytest.raises(base.ModelError, match="no time left"):
        await base.complete_with_retry(
            Busy(),
            base.ModelRequest("m", ()),
            policy=base.RetryPolicy(),
            deadline=loop.time() + 1.0,
            clock=loop.time,
        )
    assert Busy.calls == 1


async def test_starter_returns_at_once_and_drains(
    make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """start() returns at once; drain cancels runs past the grace period and records it."""
    provider = ScriptedProvider(lambda r: "done", delays={"slow": 5.0, "fast": 0.0})
    eng = make_engine(factories={"anthropic": lambda: provider})
    sup = starter.FlowStarter(engine=eng, grace=0.2)
    fast = res.binding_spec(
        res.bind("fast-b", ctx=res.context("prod"), agent_res=res.agent("fast", model="anthropic:fast"))
    )
    slow_b = res.binding_spec(
        res.bind("slow-b", ctx=res.context("prod"), agent_res=res.agent("slow", model="anthropic:slow"))
    )
    fast_id = sup.start(fast, message("q"))
    slow_id = sup.start(slow_b, message("q"))
    assert sup.running == 2
    assert eng.history.get(slow_id)["status"] == "running"
    done = await sup.wait(fast_id)
    assert done is not None
    assert done.status is runs.RunStatus.COMPLETED
    await sup.drain()
    assert sup.running == 0
    cancelled = eng.history.get(slow_id)
    assert cancelled is not None
    assert cancelled["status"] == "cancelled"
    assert any("was cancelled" in t for t in replier.texts())
    with pytest.raises(errors.NotAccepting):
        sup.start(fast, message("late"))


async def test_run_keeps_its_binding_snapshot(make_engine: EngineFactory) -> None:
    """A run started on a binding keeps that binding's agent even if a newer binding changes it mid-run."""
    provider = ScriptedProvider(lambda r: r.system, delays={"m": 0.05})
    eng = make_engine(factories={"anthropic": lambda: provider})
    sup = starter.FlowStarter(engine=eng)
    old = res.bind(
        "b",
        ctx=res.context("prod"),
        agent_res=res.agent("a", model="anthropic:m", instructions="v1"),
        digest="d1",
    )
    new = res.bind(
        "b",
        ctx=res.context("prod"),
        agent_res=res.agent("a", model="anthropic:m", instructions="v2"),
        digest="d2",
    )
    first = sup.start(res.binding_spec(old), message("q"))
    second = sup.start(res.binding_spec(new), message("q"))
    records = [await sup.wait(first), await sup.wait(second)]
    assert [r.answer for r in records if r is not None] == ["v1", "v2"]
    await sup.drain()


async def test_max_tokens_per_day_counts_the_runs_tokens(
    make_engine: EngineFactory, make_guard: GuardFactory, replier: RecordingReplier
) -> None:
    """`limits.max_tokens_per_day`: a run's model tokens are charged to its Context, so once the
    budget is spent the next run is refused (ScriptedProvider uses 5 tokens per call)."""
    ctx = res.context("prod", limits={"max_tokens_per_day": 8})
    provider = ScriptedProvider(lambda r: "ok")
    command_guard = make_guard({"prod": ctx})
    eng = make_engine(
        factories={"anthropic": lambda: provider}, commands=command_guard, admission=command_guard
    )
    binding = res.bind("b", ctx=ctx, agent_res=res.agent("a", model="anthropic:m"))
    records = [await eng.run(res.run_plan(binding), message(f"q{i}")) for i in range(3)]
    assert [r.status for r in records] == [
        runs.RunStatus.COMPLETED,
        runs.RunStatus.COMPLETED,
        runs.RunStatus.FAILED,
    ]
    assert "8 tokens per day" in (records[2].error or "")
    assert len(provider.requests) == 2


async def test_warm_builds_a_providers_client_off_the_loop() -> None:
    """What the applier runs in the background after a swap: the SDK imported in a thread and the
    client built, so the first run does not pay for it within its deadline; factories and unknown
    names are skipped."""
    providers = registry.Providers(
        models=settings.ModelsSpec(anthropic_base_url="http://127.0.0.1:9"),
        environ={"ANTHROPIC_API_KEY": "k"},
        factories={"openai": lambda: ScriptedProvider(lambda r: "x")},
    )
    warmed: list[bool] = []  # `warming` as the daemon's callback sees it
    providers.on_warmed = lambda: warmed.append(providers.warming)
    try:
        warming = providers.warm(["anthropic", "openai", "no-such-provider"])
        assert providers.warming  # from the call on: the pass that asked sees it at once
        await warming
        assert set(providers._clients) == {"anthropic"}
        assert warmed == [False]  # told once, after the import
        client = providers._clients["anthropic"]
        await providers.warm(["anthropic"])  # built already: the same client, nothing to tell
        assert providers.get("anthropic") is client
        assert warmed == [False]
    finally:
        await providers.aclose()


async def test_a_slow_sdk_import_does_not_hold_up_the_daemons_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """`asyncio.run` joins the default executor's threads before it returns: an import running
    there (seconds on a busy host) kept a daemon stopped right after start from exiting."""
    import threading

    entered, release = threading.Event(), threading.Event()

    def slow_import(name: str) -> object:
        entered.set()
        release.wait(30)
        return object()

    monkeypatch.setattr(registry.importlib, "import_module", slow_import)
    providers = registry.Providers(
        models=settings.ModelsSpec(anthropic_base_url="http://127.0.0.1:9"),
        environ={"ANTHROPIC_API_KEY": "k"},
    )
    warming = asyncio.create_task(providers.warm(["anthropic"]))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        await asyncio.wait_for(asyncio.get_running_loop().shutdown_default_executor(), 5)
        assert providers.warming  # the import is still running, outside the default executor
    finally:
        release.set()
        await warming
        await providers.aclose()
