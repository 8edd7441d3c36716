"""Channel filter entries with `*` are wildcards (upstream's `projects: [mygroup/*]`,
`repositories: [myworkspace/*]`), the same on every platform; other entries match exactly."""

from __future__ import annotations

import time

import pytest

from aofd.runtime import ports
from aofd.specs import routes
from aofd.testing import resources


def event(platform: str, channel: str, *, channel_id: str = "") -> ports.EventMessage:
    return ports.EventMessage(
        platform=platform,
        trigger="t",
        text="x",
        user=ports.UserRef("1", "u", platform),
        channel_id=channel_id or channel,
        channel_name=channel,
        event_type="push",
        delivery_id="d",
        received_at=time.time(),
    )


@pytest.mark.parametrize(
    ("type_", "field", "platform"),
    [
        ("GitLab", "projects", "gitlab"),
        ("Bitbucket", "repositories", "bitbucket"),
        ("GitHub", "repositories", "github"),
    ],
)
def test_trigger_channel_entries_with_a_star_are_wildcards(type_: str, field: str, platform: str) -> None:
    trigger = resources.trigger("t", type_, webhook_secret="s", **{field: ["mygroup/*", "other/exact"]})
    gate = routes.Gate.of(trigger.model)
    admitted = {
        name: gate.admits(event(platform, name))
        for name in (
            "mygroup/api",
            "mygroup/sub/api",
            "other/exact",
            "other/exactly",
            "mygroupx/api",
            "x/mygroup/api",
        )
    }
    assert {
        "mygroup/api": True,
        "mygroup/sub/api": True,
        "other/exact": True,
        "other/exactly": False,
        "mygroupx/api": False,
        "x/mygroup/api": False,
    } == admitted


def test_wildcard_characters_other_than_star_are_literal_and_ids_match_too() -> None:
    filters = routes.Filters.compile(channels=["team.[ab]-*", "C0*"])
    assert filters.channel_ok(event("slack", "team.[ab]-ops"))
    assert not filters.channel_ok(event("slack", "teamx[ab]-ops"))
    assert not filters.channel_ok(event("slack", "team.a-ops"))
    assert filters.channel_ok(event("slack", "general", channel_id="C0123"))
    assert routes.Filters.compile(channels=["*"]).any_channel
