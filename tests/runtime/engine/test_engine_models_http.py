"""Agents on the real anthropic/openai clients against loopback servers, kubectl via the real guard."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aofd import settings
from aofd.runtime import runs
from aofd.testing import resources as res
from tests.runtime.engine.conftest import EngineFactory, GuardFactory, RecordingReplier, message, read_records
from tests.runtime.fakes_models import servers

K8S_OPS = {
    "model": "anthropic:claude-sonnet-4",
    "instructions": "You are a Kubernetes operations assistant. Use kubectl.",
    "tools": ["kubectl"],
    "max_tokens": 8192,
}


def k8s_script(body: dict[str, Any]) -> servers.Reply:
    """Ask for `kubectl get pods` first, then answer from the tool result."""
    last = body["messages"][-1]
    if isinstance(last["content"], str):
        return servers.a_tool_use("kubectl", {"args": ["get", "pods", "-l", "app=nginx"]})
    result = last["content"][0]
    assert result["type"] == "tool_result"
    return servers.a_text(f"nginx is in CrashLoopBackOff (kubectl said: {result['content'].strip()})")


KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"


def contexts(tmp_path: Path) -> dict[str, Any]:
    record = tmp_path / "kubectl.jsonl"
    kube = tmp_path / "kube"
    kube.mkdir(exist_ok=True)
    for name in ("prod", "staging"):
        (kube / f"{name}.yaml").write_text(KUBECONFIG)
    return {
        "prod": res.context(
            "prod",
            kubeconfig=str(kube / "prod.yaml"),
            namespace="payments",
            cluster="prod-us-east-1",
            env={"FAKE_RECORD": str(record), "ENVIRONMENT": "production"},
            limits={"max_tokens_per_request": 4096},
        ),
        "staging": res.context(
            "staging",
            kubeconfig=str(kube / "staging.yaml"),
            namespace="staging",
            env={"FAKE_RECORD": str(record), "ENVIRONMENT": "staging"},
            limits={"max_tokens_per_request": 8192},
        ),
    }


def models(server: servers.FakeModelServer) -> settings.ModelsSpec:
    return settings.ModelsSpec(anthropic_base_url=server.base_url)


def bindings(ctxs: dict[str, Any]) -> dict[str, Any]:
    agent = res.agent("k8s-ops", **K8S_OPS)
    flow = res.flow("slack-k8s-flow", agents=[{"name": "k8s-ops"}])
    return {
        name: res.bind(f"slack-{name}-k8s-bot", ctx=ctx, flow_res=flow, agents=[agent])
        for name, ctx in ctxs.items()
    }


async def test_k8s_ops_answers_with_prod_kubeconfig_and_namespace(
    tmp_path: Path,
    anthropic_server: servers.FakeModelServer,
    make_engine: EngineFactory,
    make_guard: GuardFactory,
    replier: RecordingReplier,
) -> None:
    """The prod binding's agent runs kubectl with prod's kubeconfig and namespace, answers in thread."""
    anthropic_server.script = k8s_script
    ctxs = contexts(tmp_path)
    eng = make_engine(commands=make_guard(ctxs), models=models(anthropic_server))
    plan = res.run_plan(bindings(ctxs)["prod"])
    record = await eng.run(plan, message("why is nginx crashing"))

    assert record.status is runs.RunStatus.COMPLETED, record.error
    calls = read_records(tmp_path / "kubectl.jsonl")
    assert len(calls) == 1, anthropic_server.bodies()[-1]["messages"]
    assert calls[0]["argv"][1:] == ["--namespace", "payments", "get", "pods", "-l", "app=nginx"]
    assert calls[0]["env"]["KUBECONFIG"] == str(tmp_path / "kube" / "prod.yaml")
    assert calls[0]["env"]["ENVIRONMENT"] == "production"
    first = anthropic_server.bodies()[0]
    assert first["system"] == K8S_OPS["instructions"]
    assert first["max_tokens"] == 4096  # the agent asks 8192, prod caps at 4096
    assert first["tools"][0]["name"] == "kubectl"
    assert "production" not in str(first["messages"])  # context env never reaches the prompt
    headers = anthropic_server.requests[0][2]
    assert headers.get("x-api-key") == "sk-test" or headers.get("authorization") == "Bearer sk-test", headers
    ((target, text),) = replier.sent
    assert (target.channel_id, target.thread) == ("C-ORIGIN", "1700000000.0001")
    assert "CrashLoopBackOff" in text
    assert record.input_tokens == 30
    assert record.model_calls == 2
    assert record.tool_calls == 1


async def test_staging_binding_uses_staging_context(
    tmp_path: Path,
    anthropic_server: servers.FakeModelServer,
    make_engine: EngineFactory,
    make_guard: GuardFactory,
) -> None:
    """The same agent and flow under the staging binding use staging's kubeconfig and namespace."""
    anthropic_server.script = k8s_script
    ctxs = contexts(tmp_path)
    eng = make_engine(commands=make_guard(ctxs), models=models(anthropic_server))
    record = await eng.run(res.run_plan(bindings(ctxs)["staging"]), message("why is nginx crashing"))

    assert record.status is runs.RunStatus.COMPLETED, record.error
    (call,) = read_records(tmp_path / "kubectl.jsonl")
    assert call["argv"][1:4] == ["--namespace", "staging", "get"]
    assert call["env"]["KUBECONFIG"] == str(tmp_path / "kube" / "staging.yaml")
    assert anthropic_server.bodies()[0]["max_tokens"] == 8192


async def test_two_contexts_concurrently_stay_isolated(
    tmp_path: Path,
    anthropic_server: servers.FakeModelServer,
    make_engine: EngineFactory,
    make_guard: GuardFactory,
) -> None:
    """Ten prod and ten staging runs at once: each kubectl call sees only its own Context."""

    def slow_script(body: dict[str, Any]) -> servers.Reply:
        last = body["messages"][-1]
        if isinstance(last["content"], str):
            return servers.a_tool_use("kubectl", {"command": "get pods slow"})
        return servers.a_text("done")

    anthropic_server.script = slow_script
    ctxs = contexts(tmp_path)
    eng = make_engine(commands=make_guard(ctxs), models=models(anthropic_server))
    plans = {name: res.run_plan(b) for name, b in bindings(ctxs).items()}
    records = await asyncio.gather(
        *(eng.run(plans[name], message(f"q{i}")) for i in range(10) for name in ("prod", "staging"))
    )
    assert all(r.status is runs.RunStatus.COMPLETED for r in records)
    calls = read_records(tmp_path / "kubectl.jsonl")
    assert len(calls) == 20
    for call in calls:
        ns = call["argv"][2]
        expected = {"payments": ("prod", "production"), "staging": ("staging", "staging")}[ns]
        assert call["env"]["KUBECONFIG"] == str(tmp_path / "kube" / f"{expected[0]}.yaml")
        assert call["env"]["ENVIRONMENT"] == expected[1]
        assert call["env"]["AOF_CONTEXT"] == expected[0]
    assert {c["env"]["AOF_CONTEXT"] for c in calls} == {"prod", "staging"}


async def test_rate_limit_then_success_is_retried(
    anthropic_server: servers.FakeModelServer, make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """A 429 in Anthropic's error shape is retried with backoff and the run then completes."""
    anthropic_server.script = servers.sequence(
        servers.a_error(429, "rate_limit_error", "slow down"), servers.a_text("all good")
    )
    eng = make_engine(models=models(anthropic_server))
    agent = res.agent("plain", model="claude-sonnet-4")
    plan = res.run_plan(res.bind("b", ctx=res.context("prod"), agent_res=agent))
    record = await eng.run(plan, message("hi"))
    assert record.status is runs.RunStatus.COMPLETED, record.error
    assert len(anthropic_server.requests) == 2
    assert replier.texts() == ["all good"]


async def test_persistent_overload_fails_with_clear_message(
    anthropic_server: servers.FakeModelServer, make_engine: EngineFactory, replier: RecordingReplier
) -> None:
    """A persistent 529 is retried max_retries times, then the run fails and the origin is told why."""
    anthropic_server.script = servers.sequence(servers.a_error(529, "overloaded_error", "Overloaded"))
    eng = make_engine(models=models(anthropic_server))
    plan = res.run_plan(
        res.bind("b", ctx=res.context("prod"), agent_res=res.agent("plain", model="claude-x"))
    )
    record = await eng.run(plan, message("hi"))
    assert record.status is runs.RunStatus.FAILED
    assert len(anthropic_server.requests) == 4  # 1 + max_retries (3)
    (text,) = replier.texts()
    assert "HTTP 529 (overloaded)" in text
    assert "after 4 attempts" in text
    assert record.run_id in text


async def test_openai_compatible_server_with_tool_calls(
    tmp_path: Path,
    openai_server: servers.FakeModelServer,
    make_engine: EngineFactory,
    make_guard: GuardFactory,
    replier: RecordingReplier,
) -> None:
    """`openai:` agents use the openai client against an OpenAI-compatible base URL, tool calls included."""

    def script(body: dict[str, Any]) -> servers.Reply:
        if body["messages"][-1]["role"] == "user":
            return servers.o_tool_call("kubectl", {"args": ["get", "pods"]})
        assert body["messages"][-1]["role"] == "tool"
        return servers.o_text("pods: " + body["messages"][-1]["content"].strip())

    openai_server.script = script
    ctxs = contexts(tmp_path)
    spec = settings.ModelsSpec(openai_base_url=openai_server.base_url + "/v1")
    eng = make_engine(commands=make_guard(ctxs), models=spec)
    agent = res.agent("k8s-oai", model="openai:gpt-4o-mini", instructions="be brief", tools=["kubectl"])
    record = await eng.run(
        res.run_plan(res.bind("b", ctx=ctxs["prod"], agent_res=agent)), message("list pods")
    )
    assert record.status is runs.RunStatus.COMPLETED, record.error
    first = openai_server.bodies()[0]
    assert first["messages"][0] == {"role": "system", "content": "be brief"}
    assert first["tools"][0]["function"]["name"] == "kubectl"
    assert replier.texts() == ["pods: ok"]
    (call,) = read_records(tmp_path / "kubectl.jsonl")
    assert call["argv"][1:] == ["--namespace", "payments", "get", "pods"]


async def test_policy_refusal_goes_back_to_the_model(
    tmp_path: Path,
    anthropic_server: servers.FakeModelServer,
    make_engine: EngineFactory,
    make_guard: GuardFactory,
) -> None:
    """A shell operator in a tool call is refused by the guard and the model reads the refusal."""

    def script(body: dict[str, Any]) -> servers.Reply:
        last = body["messages"][-1]
        if isinstance(last["content"], str):
            return servers.a_tool_use("kubectl", {"command": "get pods; rm -rf /"})
        return servers.a_text("refused: " + str(last["content"][0].get("is_error")))

    anthropic_server.script = script
    ctxs = contexts(tmp_path)
    eng = make_engine(commands=make_guard(ctxs), models=models(anthropic_server))
    agent = res.agent("k8s-ops", **K8S_OPS)
    record = await eng.run(res.run_plan(res.bind("b", ctx=ctxs["prod"], agent_res=agent)), message("x"))
    assert record.answer == "refused: True"
    assert read_records(tmp_path / "kubectl.jsonl") == []
    tool_result = anthropic_server.bodies()[1]["messages"][-1]["content"][0]
    assert "shell operators not allowed" in tool_result["content"]


def test_plan_lists_every_model_of_a_binding() -> None:
    """A compiled binding lists the models of its named agents, fleet members and inline agents (what
    the apply stage checks the providers of)."""
    fleet = res.fleet("f", agents=[{"name": "g", "spec": {"model": "google:gemini-2.5-flash"}}])
    flow = res.flow(
        "fl",
        nodes=[
            {"id": "a", "type": "Agent", "config": {"agent": "k8s-ops"}},
            {"id": "b", "type": "Fleet", "config": {"fleet": "f"}},
            {"id": "c", "type": "Agent", "config": {"inline": {"name": "i", "model": "openai:gpt-4o"}}},
        ],
    )
    binding = res.bind(
        "b", ctx=res.context("prod"), flow_res=flow, agents=[res.agent("k8s-ops", **K8S_OPS)], fleets=[fleet]
    )
    found = [str(ref) for ref in res.binding_spec(binding).models]
    assert ["anthropic:claude-sonnet-4", "google:gemini-2.5-flash", "openai:gpt-4o"] == found
