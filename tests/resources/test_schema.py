"""The editor JSON Schema: every kind, both spellings, widened enums and by-name references."""

from __future__ import annotations

import json
from typing import Any

from aofd.resources import ids, schema


def definition(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = doc["$defs"][name]
    return found


def test_schema_is_draft_2020_12_with_one_branch_per_kind() -> None:
    """The schema declares draft 2020-12 and has a oneOf branch for every kind plus DaemonConfig."""
    doc = schema.json_schema()
    assert "https://json-schema.org/draft/2020-12/schema" == doc["$schema"]
    refs = [branch["$ref"].rsplit("/", 1)[-1] for branch in doc["oneOf"]]
    expected = [
        "Context",
        "Agent",
        "AgentFleet",
        "AgentFlow",
        "Trigger",
        "FlowBinding",
        "Workflow",
        "DaemonConfig",
    ]
    assert expected == refs
    assert {k.value for k in ids.Kind} <= set(refs)


def test_each_kind_branch_requires_its_kind_constant() -> None:
    """`kind` is required and constant in every branch, so exactly one branch matches a document."""
    doc = schema.json_schema()
    for branch in doc["oneOf"]:
        name = branch["$ref"].rsplit("/", 1)[-1]
        body = definition(doc, name)
        assert "kind" in body["required"]
        assert name == body["properties"]["kind"]["const"]


def test_both_spellings_and_synonyms_are_properties() -> None:
    """snake_case and camelCase keys (and synonyms such as cluster_name) are both listed."""
    doc = schema.json_schema()
    context_spec = definition(doc, "ContextSpec")["properties"]
    assert {"working_dir", "workingDir", "cluster", "cluster_name", "clusterName"} <= set(context_spec)
    trigger_spec = definition(doc, "TriggerSpec")["properties"]
    assert {"default_agent", "defaultAgent"} <= set(trigger_spec)
    node_config = definition(doc, "NodeConfig")["properties"]
    assert {"script_config", "scriptConfig", "wait_for_reaction", "waitForReaction"} <= set(node_config)
    assert {"apiVersion", "api_version"} <= set(definition(doc, "Agent")["properties"])
    assert {"from"} <= set(definition(doc, "FlowConnection")["properties"])


def test_enums_list_other_casings() -> None:
    """An enum lists the lowercase and separator variants validation accepts."""
    doc = schema.json_schema()
    assert {"Slack", "slack", "SLACK"} <= set(definition(doc, "TriggerType")["enum"])
    assert {"round-robin", "round_robin"} <= set(definition(doc, "Distribution")["enum"])


def test_references_accept_a_bare_name() -> None:
    """`flow: my-flow` is valid in the schema as well as `flow: {name: my-flow}`."""
    ref = definition(schema.json_schema(), "Ref")
    assert {"string", "object"} == {alt["type"] for alt in ref["anyOf"]}


def test_schema_is_json_and_fresh_on_every_call() -> None:
    """The schema serializes to JSON and callers get their own copy."""
    first = schema.json_schema()
    first["$defs"].clear()
    second = schema.json_schema()
    assert second["$defs"]
    assert json.loads(json.dumps(second)) == second
