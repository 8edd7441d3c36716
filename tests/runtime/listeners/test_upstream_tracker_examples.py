"""Upstream's example Triggers for Jira, GitLab, Bitbucket, Discord and Teams load with the daemon's
default substitution allow-list (`JIRA_*`, `GITLAB_*`, `BITBUCKET_*`, `DISCORD_*`, `TEAMS_*`), and the
Jira, GitLab and Bitbucket ones are served: their listeners are built from the compiled spec and start."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from aofd import settings
from aofd.cli import validate_cmd
from aofd.specs import listeners as listener_specs
from aofd.testing import resources
from tests.runtime.fakes import harness

TRIGGERS = Path(__file__).resolve().parents[2] / "data" / "upstream-triggers"
"""Upstream's example Trigger files for these platforms, vendored byte for byte (see PROVENANCE)."""
SERVED = (
    "jira-bug-triage.yaml",
    "jira-sprint-assistant.yaml",
    "gitlab-mr-review.yaml",
    "bitbucket-pr-review.yaml",
)
OTHERS = ("discord-starter.yaml", "discord-community.yaml", "teams-starter.yaml", "teams-enterprise.yaml")
OLD_ALLOW = (
    "KUBECONFIG*",
    "AOF_*",
    "AOFD_*",
    "SLACK_*",
    "TELEGRAM_*",
    "WHATSAPP_*",
    "PAGERDUTY_*",
    "GITHUB_*",
    "WEBHOOK_*",
)
"""The default allow-list before these platforms were served."""

pytestmark = pytest.mark.skipif(not TRIGGERS.is_dir(), reason=f"upstream examples not found at {TRIGGERS}")


def trigger_document(path: Path) -> str:
    """The file's `kind: Trigger` document (multi-document examples also hold Fleets and Agents)."""
    for doc in re.split(r"(?m)^---\s*$", path.read_text(encoding="utf-8")):
        if re.search(r"(?m)^kind:\s*Trigger\s*$", doc):
            return doc
    raise AssertionError(f"{path.name} has no Trigger document")


def compile_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, allow: tuple[str, ...] | None = None
) -> tuple[str, validate_cmd.compiler.Compiled]:
    text = trigger_document(TRIGGERS / name)
    for var in set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)):
        monkeypatch.setenv(var, f"value-of-{var.lower().replace('_', '-')}")
    repo = tmp_path / name.removesuffix(".yaml")
    repo.mkdir()
    (repo / "trigger.yaml").write_text(text, encoding="utf-8")
    cfg = settings.DaemonConfig() if allow is None else settings.DaemonConfig(substitution={"allow": allow})
    _views, compiled = validate_cmd.compile_paths([str(repo)], cfg=cfg, undefined="error")
    return text, compiled


@pytest.mark.parametrize("name", SERVED + OTHERS)
def test_default_allow_list_takes_the_platform_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """No `${VAR}` of the example is refused by the default allow-list; with the old one they were."""
    _text, compiled = compile_example(tmp_path, monkeypatch, name)
    assert [] == [i.format() for i in compiled.issues if i.code.startswith("subst")]
    (tmp_path / "old").mkdir()
    _text, before = compile_example(tmp_path / "old", monkeypatch, name, allow=OLD_ALLOW)
    assert any(i.code == "subst-not-allowed" for i in before.issues)


@pytest.mark.parametrize("name", SERVED)
async def test_served_examples_load_and_their_listeners_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _text, compiled = compile_example(tmp_path, monkeypatch, name)
    # The commands name agents and fleets defined in other files: only those references are missing.
    assert [] == [i.format() for i in compiled.issues if i.is_error and i.code != "ref-missing"]
    ignored = " ".join(i.message for i in compiled.issues if i.code == "unknown-field")
    for field in ("api_url", "gitlab_events", "bitbucket_events", "username", "app_password", "user_email"):
        assert f"'{field}'" not in ignored
    [(trigger, spec)] = compiled.triggers.items()
    assert isinstance(spec, listener_specs.ListenerSpec)
    assert spec.webhook
    assert "value-of-" in str(spec.config.webhook_secret)  # substituted
    async with harness.Rig() as rig:
        listener = rig.factory(spec)
        await listener.start()
        try:
            assert (trigger, True) == (listener.trigger_name, listener.running)
            assert listener.replier is not None, "the example's credentials make a replier"
        finally:
            await listener.stop(drain=0.1)


def example_config(name: str) -> tuple[str, str, dict[str, object]]:
    """The example Trigger's name, type and config, `${VAR}`s replaced by placeholder values."""
    text = re.sub(
        r"\$\{([A-Z0-9_]+)\}", lambda m: f"value-of-{m.group(1).lower()}", trigger_document(TRIGGERS / name)
    )
    doc = YAML(typ="safe", pure=True).load(text)
    return doc["metadata"]["name"], doc["spec"]["type"], dict(doc["spec"]["config"])


@pytest.mark.parametrize(
    ("name", "inside", "outside"),
    [
        ("gitlab-mr-review.yaml", "mygroup/api", "othergroup/api"),
        ("bitbucket-pr-review.yaml", "myworkspace/payments", "otherspace/payments"),
    ],
)
async def test_wildcard_examples_route_an_event_in_their_projects(
    name: str, inside: str, outside: str
) -> None:
    """Upstream's `projects: [mygroup/*]` and `repositories: [myworkspace/*]` admit an event of a project
    in the group (it starts the binding) and filter one outside it."""
    trigger_name, type_, config = example_config(name)
    config["webhook_secret"] = "hook-secret"
    config.pop("api_url", None)  # gitlab.com's, which the daemon config gives (the rig's defaults)
    trigger = resources.trigger(trigger_name, type_, **config)
    async with harness.Rig() as rig:
        await rig.apply([resources.binding("review", trigger, context_name="ci")])
        outcomes = []
        for project in (inside, outside):
            if type_ == "GitLab":
                body = json.dumps(
                    {
                        "object_kind": "merge_request",
                        "user": {"id": 1, "username": "root"},
                        "project": {"id": 15, "path_with_namespace": project},
                        "object_attributes": {"iid": 1, "title": "t", "action": "open"},
                    }
                ).encode()
                headers = {"X-Gitlab-Token": "hook-secret", "X-Gitlab-Event": "Merge Request Hook"}
                answer = await rig.send("gitlab", trigger_name, body, headers)
            else:
                body = json.dumps(
                    {
                        "actor": {"nickname": "ada"},
                        "repository": {"full_name": project},
                        "pullrequest": {"id": 3},
                    }
                ).encode()
                signature = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
                headers = {"X-Hub-Signature": signature, "X-Event-Key": "pullrequest:created"}
                answer = await rig.send("bitbucket", trigger_name, body, headers)
            outcomes.append((answer[0], json.loads(answer[1])["outcome"]))
        assert [(202, "started"), (200, "filtered")] == outcomes
        assert [inside] == [m.channel_name for _, m in rig.starter.calls]
