"""Upstream's own Discord and Teams trigger examples load with their `${DISCORD_*}`/`${TEAMS_*}`
variables, their listeners start, and they answer a verified request.

The examples are upstream's files, vendored byte for byte under tests/data/upstream-triggers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aofd.plan import compiler, desired, diff
from aofd.resources import documents
from aofd.settings import PlatformsSpec
from tests.plan.conftest import WriteTree, agent, doc, flow, view
from tests.plan.conftest import write_tree as write_tree  # the fixture
from tests.runtime.fakes import chat_apis, harness

TRIGGERS = Path(__file__).resolve().parents[2] / "data" / "upstream-triggers"
"""Upstream's example Trigger files for these platforms, vendored byte for byte (see PROVENANCE)."""

pytestmark = pytest.mark.skipif(not TRIGGERS.is_dir(), reason=f"conformance corpus not found at {TRIGGERS}")


def _targets(files: list[str]) -> dict[str, str]:
    """Minimal Agents, AgentFleets and AgentFlows for every name the examples' commands run."""
    out: dict[str, str] = {}
    for name in files:
        parsed = documents.parse(name, (TRIGGERS / name).read_bytes())
        for document in parsed.documents:
            for command in (document.data.get("spec") or {}).get("commands", {}).values():
                if command.get("agent"):
                    out[f"agents/{command['agent']}.yaml"] = agent(command["agent"])
                if command.get("fleet"):
                    out[f"fleets/{command['fleet']}.yaml"] = doc(
                        "AgentFleet", command["fleet"], "agents:\n  - name: devops"
                    )
                    out["agents/devops.yaml"] = agent("devops")
                if command.get("flow"):
                    out[f"flows/{command['flow']}.yaml"] = flow(command["flow"], "devops")
                    out["agents/devops.yaml"] = agent("devops")
    return out


async def _serve(
    rig: harness.Rig, write_tree: WriteTree, files: list[str], variables: dict[str, str]
) -> None:
    examples = {f"triggers/{name}": (TRIGGERS / name).read_text(encoding="utf-8") for name in files}
    snap = write_tree({**examples, **_targets(files)})
    state = desired.build([view(snap)], variables=variables)
    assert [] == [i.format() for i in state.issues if i.is_error]
    compiled = compiler.build(state)
    outcome = await rig.applier.apply(diff.compute(compiled, rig.inventory))
    assert {} == dict(outcome.stalled)


@pytest.mark.parametrize("files", [["discord-starter.yaml"], ["discord-community.yaml"]])
async def test_upstream_discord_examples_start_and_answer_ping(
    write_tree: WriteTree, files: list[str]
) -> None:
    key = chat_apis.DiscordKey()
    variables = {
        "DISCORD_BOT_TOKEN": "bot-token",
        "DISCORD_APPLICATION_ID": "4400000000000000001",
        "DISCORD_PUBLIC_KEY": key.public_hex,
        "DISCORD_GUILD_ID": "2200000000000000001",
        "DISCORD_ADMIN_ROLE": "1",
        "DISCORD_DEVOPS_ROLE": "2",
        "DISCORD_SRE_ROLE": "3",
    }
    name = files[0].removesuffix(".yaml")
    async with harness.Rig() as rig:
        await _serve(rig, write_tree, files, variables)
        listener = rig.switchboard.current.listeners[name]
        assert listener.running
        body = json.dumps(chat_apis.interaction(1)).encode()
        assert (200, {"type": 1}) == (
            (status := await rig.send("discord", name, body, key.headers(body)))[0],
            json.loads(status[1]),
        )


@pytest.mark.parametrize("files", [["teams-starter.yaml"], ["teams-enterprise.yaml"]])
async def test_upstream_teams_examples_start_and_take_a_verified_activity(
    write_tree: WriteTree, files: list[str]
) -> None:
    app_id = "c9e8c047-2a74-40a2-b28a-b162d5f5327c"
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    variables = {"TEAMS_APP_ID": app_id, "TEAMS_APP_PASSWORD": "secret", "TEAMS_TENANT_ID": tenant}
    name = files[0].removesuffix(".yaml")
    signer = chat_apis.SigningKey("k1")
    async with chat_apis.FakeBotFramework([signer], app_id=app_id, app_password="secret") as bf:
        spec = PlatformsSpec(teams_openid_metadata_url=bf.metadata_url, teams_token_url=bf.token_url)
        async with harness.Rig(platforms=spec) as rig:
            await _serve(rig, write_tree, files, variables)
            assert rig.switchboard.current.listeners[name].running
            token = signer.token(audience=app_id, service_url=bf.service_url)
            body = json.dumps(chat_apis.activity(bf.service_url, tenant=tenant)).encode()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            status, _ = await rig.send("teams", name, body, headers)
            # No binding uses the trigger: the event is verified and answered, and runs nothing.
            assert (200, []) == (status, rig.starter.calls)
