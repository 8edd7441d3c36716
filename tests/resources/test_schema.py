"""The editor JSON Schema: every kind, both spellings, widened enums, by-name forms, the loader's verdicts."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest

from aofd.cli import schema_cmd
from aofd.resources import documents, ids, kinds, schema, validation
from aofd.resources.kinds import agent, base, daemonconfig, fleet, trigger


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


def enum_values(doc: dict[str, Any], name: str) -> set[str]:
    """The values an enum definition lists (beside its case-insensitive pattern)."""
    return {value for alternative in definition(doc, name)["anyOf"] for value in alternative.get("enum", [])}


def test_enums_list_other_casings() -> None:
    """An enum lists the lowercase and separator variants validation accepts."""
    doc = schema.json_schema()
    assert {"Slack", "slack", "SLACK"} <= enum_values(doc, "TriggerType")
    assert {"round-robin", "round_robin"} <= enum_values(doc, "Distribution")


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


# --- a valid schema that agrees with the loader ------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "aof-examples"

# Loader error codes of checks JSON Schema cannot express; errors with these codes are not
# compared (the full list of such checks is in the docstring of aofd.resources.schema).
# Other such checks (unique ids and names, a fleet's manager, per-type required config,
# trigger paths, min_approvers) report the codes "invalid" and "missing-field", which type
# errors and missing fields report too, so they cannot be left out by code.
SEMANTIC_CODES = frozenset(
    {
        "reference",  # a connection end or a workflow's entrypoint names no node or step
    }
)

MODES = [pytest.param(False, id="default"), pytest.param(True, id="strict")]


def yaml_files(root: Path) -> list[Path]:
    found = {p for pattern in ("*.yaml", "*.yml") for p in root.rglob(pattern) if p.is_file()}
    return sorted(found)


def example_files() -> list[Any]:
    params: list[Any] = [
        pytest.param(p, id=f"examples/{p.relative_to(EXAMPLES)}") for p in yaml_files(EXAMPLES)
    ]
    if not CORPUS.is_dir():
        reason = f"conformance corpus not found at {CORPUS}"
        return [*params, pytest.param(None, id="aof-examples", marks=pytest.mark.skip(reason=reason))]
    return [
        *params,
        *(pytest.param(p, id=f"aof-examples/{p.relative_to(CORPUS)}") for p in yaml_files(CORPUS)),
    ]


@functools.cache
def validator(strict: bool) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema.json_schema(strict=strict))


def verdicts(doc: documents.Document, *, strict: bool) -> tuple[str, str]:
    """(schema verdict, loader verdict) of one document, each "accepts" or "refuses"."""
    result = validation.validate_document(doc, strict=strict)
    refused = any(i.is_error and i.code not in SEMANTIC_CODES for i in result.issues)
    schema_ok = validator(strict).is_valid(doc.data)
    return ("accepts" if schema_ok else "refuses"), ("refuses" if refused else "accepts")


@pytest.mark.parametrize("strict", MODES)
def test_schema_is_a_valid_draft_2020_12_schema(strict: bool) -> None:
    """The default and the strict schema both pass the draft 2020-12 meta-schema."""
    assert None is jsonschema.Draft202012Validator.check_schema(schema.json_schema(strict=strict))


def test_a_property_named_enum_is_not_the_enum_keyword() -> None:
    """OutputSchema's property `enum` keeps the schema pydantic gives it; only real enums are widened."""
    expected = agent.OutputSchema.model_json_schema()["properties"]["enum"]
    assert expected == definition(schema.json_schema(), "OutputSchema")["properties"]["enum"]


@pytest.mark.parametrize("strict", MODES)
@pytest.mark.parametrize("path", example_files())
def test_schema_agrees_with_the_loader_on_every_example(path: Path, strict: bool) -> None:
    """Each document of examples/ and the upstream corpus: the schema accepts it iff the loader does."""
    parsed = documents.parse(str(path), path.read_bytes())
    disagreements = []
    for doc in parsed.documents:
        by_schema, by_loader = verdicts(doc, strict=strict)
        if by_schema != by_loader:
            disagreements.append(
                f"{path} document {doc.index}: the schema {by_schema}, the loader {by_loader}"
            )
    assert [] == disagreements


def doc_of(text: str) -> documents.Document:
    parsed = documents.parse("case.yaml", text.encode())
    assert [] == list(parsed.issues)
    return parsed.documents[0]


AGENT = "apiVersion: aof.dev/v1\nkind: Agent\nmetadata:\n  name: a\nspec:\n  model: m\n"
CONTEXT = "apiVersion: aof.dev/v1\nkind: Context\nmetadata:\n  name: c\n"
WORKFLOW = "apiVersion: aof.dev/v1\nkind: Workflow\nmetadata:\n  name: w\nspec:\n  entrypoint: s\n  steps:\n"

# (id, document, verdict in default mode, verdict in strict mode)
CASES = [
    ("flat-agent", "apiVersion: aof.dev/v1\nkind: Agent\nname: a\nmodel: m\n", "accepts", "accepts"),
    (
        "flat-agent-unknown-key",
        "apiVersion: aof.dev/v1\nkind: Agent\nname: a\nmodel: m\nx: 1\n",
        "accepts",
        "refuses",
    ),
    (
        "flat-agent-bad-name",
        "apiVersion: aof.dev/v1\nkind: Agent\nname: A_B\nmodel: m\n",
        "refuses",
        "refuses",
    ),
    ("flat-agent-no-model", "apiVersion: aof.dev/v1\nkind: Agent\nname: a\n", "refuses", "refuses"),
    (
        "flat-workflow",
        "api_version: aof.dev/v1\nkind: Workflow\nname: w\nentrypoint: s\nsteps:\n  - name: s\n",
        "accepts",
        "accepts",
    ),
    ("agent-top-level-unknown-key", AGENT + "status: {}\n", "accepts", "refuses"),
    ("agent-metadata-unknown-key", AGENT.replace("  name: a\n", "  name: a\n  x: 1\n"), "accepts", "refuses"),
    ("agent-two-spellings", AGENT + "  max_tokens: 3\n  maxTokens: 3\n", "accepts", "refuses"),
    ("context-spec-unknown-key", CONTEXT + "spec:\n  x: 1\n", "refuses", "refuses"),
    ("context-metadata-unknown-key", CONTEXT + "  x: 1\n", "refuses", "refuses"),
    ("context-two-spellings", CONTEXT + "spec:\n  working_dir: /a\n  workingDir: /a\n", "refuses", "refuses"),
    (
        "context-map-scalars",
        CONTEXT + "spec:\n  env:\n    PORT: 5432\n    DEBUG: true\n",
        "accepts",
        "accepts",
    ),
    ("context-map-null", CONTEXT + "spec:\n  env:\n    PORT:\n", "refuses", "refuses"),
    ("memory-string", AGENT + "  memory: in-memory\n", "accepts", "accepts"),
    (
        "enum-any-casing",
        AGENT + "  memory:\n    type: x\n  tools:\n    - name: t\n      source: M-C-P\n",
        "accepts",
        "accepts",
    ),
    ("enum-unknown-value", AGENT + "  tools:\n    - type: Bash\n", "refuses", "refuses"),
    (
        "literal-is-exact",
        WORKFLOW + "    - name: s\n      join:\n        strategy: ALL\n",
        "refuses",
        "refuses",
    ),
    (
        "next-as-a-string",
        WORKFLOW + "    - name: s\n      next: s\n      on_error: s\n",
        "accepts",
        "accepts",
    ),
    ("typed-tool-with-name", AGENT + "  tools:\n    - type: Shell\n      name: x\n", "accepts", "refuses"),
    ("tool-not-a-mapping", AGENT + "  tools:\n    - 5\n", "refuses", "refuses"),
    (
        "agent-ref-wrapped",
        WORKFLOW + "    - name: s\n      agent:\n        agentRef: a\n",
        "accepts",
        "accepts",
    ),
    (
        "agent-ref-wrapped-unknown-key",
        WORKFLOW + "    - name: s\n      agent:\n        agentRef:\n          name: a\n          x: 1\n",
        "refuses",
        "refuses",
    ),
    ("api-version-missing", AGENT.replace("apiVersion: aof.dev/v1\n", ""), "refuses", "refuses"),
    ("api-version-legacy", AGENT.replace("aof.dev/v1", "aof.sh/v2"), "accepts", "accepts"),
    ("api-version-foreign", AGENT.replace("aof.dev/v1", "v1"), "refuses", "refuses"),
    ("api-version-two-spellings", "api_version: aof.dev/v1\n" + AGENT, "accepts", "refuses"),
    (
        "namespace-not-a-label",
        AGENT.replace("  name: a\n", "  name: a\n  namespace: Prod\n"),
        "refuses",
        "refuses",
    ),
    (
        "fleet-without-agents",
        "apiVersion: aof.dev/v1\nkind: AgentFleet\nmetadata:\n  name: f\nspec:\n  agents: []\n",
        "refuses",
        "refuses",
    ),
    (
        "flow-without-nodes-or-agents",
        "apiVersion: aof.dev/v1\nkind: AgentFlow\nmetadata:\n  name: f\nspec: {}\n",
        "refuses",
        "refuses",
    ),
    (
        "binding-without-target",
        "apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata:\n  name: b\nspec:\n  flow: null\n",
        "refuses",
        "refuses",
    ),
    ("daemon-config-unknown-key", "apiVersion: aof.dev/v1\nkind: DaemonConfig\nx: 1\n", "accepts", "refuses"),
    ("unknown-kind", "apiVersion: aof.dev/v1\nkind: Fleet\nmetadata:\n  name: f\n", "refuses", "refuses"),
    ("not-a-mapping", "- a\n", "refuses", "refuses"),
]


@pytest.mark.parametrize(
    ("text", "default", "strict"), [pytest.param(*case[1:], id=case[0]) for case in CASES]
)
def test_schema_and_loader_agree_on_the_edge_cases(text: str, default: str, strict: str) -> None:
    """Flat form, unknown keys in and out of a Context, casings, string forms, apiVersion: one verdict."""
    doc = doc_of(text)
    assert ((default, default), (strict, strict)) == (verdicts(doc, strict=False), verdicts(doc, strict=True))


@pytest.mark.parametrize("name", ["a", "a-1", "9", "a" * 63, "a" * 64, "", "-a", "a-", "A", "a_b", "a.b"])
def test_names_are_dns_1123_labels_as_the_loader_says(name: str) -> None:
    """metadata.name in the schema accepts exactly what `ids.name_problem` accepts."""
    metadata = definition(schema.json_schema(), "Metadata")["properties"]
    for key in ("name", "namespace"):
        assert (ids.name_problem(name) is None) == jsonschema.Draft202012Validator(metadata[key]).is_valid(
            name
        )


@pytest.mark.parametrize(
    ("enum", "value"),
    [
        (fleet.SharedMemoryType, "in-memory"),
        (fleet.Distribution, "RoundRobin"),
        (trigger.TriggerType, "sLaCk"),
        (trigger.TriggerType, "pager_duty"),
        (trigger.TriggerType, "Teams"),
        (fleet.Distribution, "round-robin!"),
    ],
)
def test_case_insensitive_enums_match_as_the_model_does(enum: type[base.CIEnum], value: str) -> None:
    """An enum value validates in the schema exactly when the model's enum takes it."""
    try:
        enum(value)
    except ValueError:
        expected = False
    else:
        expected = True
    doc = schema.json_schema()
    checker = jsonschema.Draft202012Validator({**definition(doc, enum.__name__), "$defs": doc["$defs"]})
    assert expected == checker.is_valid(value)


def test_every_before_validator_is_known_to_the_schema() -> None:
    """Each `mode="before"` validator either adds a string form the schema lists or takes no other shape."""
    unknown = []
    models: list[type[pydantic.BaseModel]] = [*kinds.MODELS.values(), daemonconfig.DaemonConfig]
    for cls in schema._all_models(models):
        decorators = cls.__pydantic_decorators__
        for validator_ in decorators.model_validators.values():
            name = validator_.func.__qualname__
            known = cls.__name__ in schema._STRING_FORMS or name in schema._SHAPE_KEEPING_VALIDATORS
            if validator_.info.mode == "before" and not known:
                unknown.append(f"{cls.__name__}: {name}")
        for validator_ in decorators.field_validators.values():
            name = validator_.func.__qualname__
            known = name in schema._FIELD_STRING_FORMS or name in schema._SHAPE_KEEPING_VALIDATORS
            if validator_.info.mode == "before" and not known:
                unknown.append(f"{cls.__name__}: {name}")
    assert [] == unknown


def cli_schema(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """`aofctl schema ARGS...` through the subcommand's own parser registration."""
    parser = argparse.ArgumentParser(prog="aofctl")
    schema_cmd.register(parser.add_subparsers())
    parsed = parser.parse_args(["schema", *args])
    assert 0 == parsed.func(parsed)
    printed: dict[str, Any] = json.loads(capsys.readouterr().out)
    return printed


def closed(doc: dict[str, Any]) -> set[str]:
    return {name for name, body in doc["$defs"].items() if body.get("additionalProperties") is False}


def test_cli_strict_schema_refuses_unknown_keys_in_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """`aofctl schema --strict` closes every model; the default closes only what is under a Context."""
    default, strict = cli_schema(capsys), cli_schema(capsys, "--strict")
    assert schema.json_schema() == default
    assert schema.json_schema(strict=True) == strict
    assert {"Context", "ContextSpec", "Approval", "MetadataInContext"} <= closed(default)
    assert set() == {"AgentSpec", "Metadata", "TriggerSpec", "DaemonConfig"} & closed(default)
    assert {"Context", "ContextSpec", "AgentSpec", "Metadata", "TriggerSpec", "DaemonConfig"} <= closed(
        strict
    )
    assert closed(default) - {"MetadataInContext"} < closed(strict)
