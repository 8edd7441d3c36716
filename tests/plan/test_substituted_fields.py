"""Trigger identifiers (Discord guilds and roles, Teams tenants and app id, tracker accounts) take
`${VAR}` like secrets do, but are not secrets: written literally they are shown and digested as
they are, so `aofctl diff` and `describe` see a change to them; written with `${VAR}` they are
substituted and masked, like a Context's kubeconfig."""

from __future__ import annotations

import json

from aofd.plan import desired, dryrun, extract
from aofd.resources import ids
from aofd.resources.kinds import trigger as trigger_kind
from tests.plan.conftest import WriteTree, doc, view

DISCORD = ids.ResourceKey.of(ids.Kind.TRIGGER, "discord")
TEAMS = ids.ResourceKey.of(ids.Kind.TRIGGER, "teams")


def _tree(guilds: str, tenants: str, app_id: str = "app-1") -> dict[str, str]:
    discord = (
        "type: Discord\nconfig:\n  bot_token: 'tok-secret'\n  public_key: '${DISCORD_PUBLIC_KEY}'\n"
        f"  application_id: '123'\n  guild_ids: {guilds}\n  allowed_roles: ['9']"
    )
    teams = (
        f"type: Teams\nconfig:\n  app_id: '{app_id}'\n  app_password: 'pw-secret'\n"
        f"  allowed_tenants: {tenants}"
    )
    return {"d.yaml": doc("Trigger", "discord", discord), "t.yaml": doc("Trigger", "teams", teams)}


VARS = {"DISCORD_PUBLIC_KEY": "a" * 64, "TEAMS_TENANT": "tenant-from-env"}


def _build(write_tree: WriteTree, files: dict[str, str]) -> desired.DesiredState:
    return desired.build([view(write_tree(files))], variables=VARS, digest_key=None)


def _public(state: desired.DesiredState, key: ids.ResourceKey) -> str:
    return str(dryrun.public_digest(state.resources[key], state.digests[key]))


def test_a_literal_identifier_change_shows_in_the_diff_and_describe(write_tree: WriteTree) -> None:
    before = _build(write_tree, _tree("['111']", "['T1']"))
    after = _build(write_tree, _tree("['666']", "['T2']", app_id="app-2"))
    assert _public(before, DISCORD) != _public(after, DISCORD)
    assert _public(before, TEAMS) != _public(after, TEAMS)
    shown = extract.masked_spec(after.resources[DISCORD])["config"]
    assert (["666"], ["9"], "123", "***", "***") == (
        shown["guild_ids"],
        shown["allowed_roles"],
        shown["application_id"],
        shown["public_key"],
        shown["bot_token"],
    )
    teams = extract.masked_spec(after.resources[TEAMS])["config"]
    assert ("app-2", ["T2"], "***") == (teams["app_id"], teams["allowed_tenants"], teams["app_password"])


def test_an_identifier_written_with_a_variable_is_substituted_and_masked(write_tree: WriteTree) -> None:
    state = _build(write_tree, _tree("[111]", "['${TEAMS_TENANT}', 'T9']"))
    model = state.resources[TEAMS].model
    assert ("tenant-from-env", "T9") == model.spec.config.allowed_tenants  # type: ignore[attr-defined]
    shown = extract.masked_spec(state.resources[TEAMS])
    assert ["***", "T9"] == shown["config"]["allowed_tenants"]
    assert "tenant-from-env" not in json.dumps(shown)
    assert "a" * 64 == state.resources[DISCORD].model.spec.config.public_key  # type: ignore[attr-defined]
    assert ["111"] == extract.masked_spec(state.resources[DISCORD])["config"]["guild_ids"]


def test_real_secrets_stay_secret_fields() -> None:
    for field in ("bot_token", "app_password", "webhook_secret", "api_token", "token", "signing_secret"):
        assert field in trigger_kind.SECRET_FIELDS
    for field in ("guild_ids", "allowed_roles", "allowed_tenants", "app_id", "application_id", "public_key"):
        assert field not in trigger_kind.SECRET_FIELDS
        assert field in trigger_kind.SUBSTITUTED_FIELDS
