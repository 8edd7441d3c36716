"""validate_document: kind and apiVersion rules, names, positions, messages, and the result shape."""

from __future__ import annotations

import textwrap
import time

import pytest

from aofd.resources import documents, ids, validation
from aofd.resources.kinds import agent
from aofd.testing import resources as testing_resources


def parse_one(text: str) -> documents.Document:
    parsed = documents.parse("res.yaml", textwrap.dedent(text).encode())
    assert () == parsed.issues
    [doc] = parsed.documents
    return doc


def load(text: str, *, strict: bool = False) -> validation.ValidationResult:
    return validation.validate_document(parse_one(text), strict=strict)


def messages(result: validation.ValidationResult) -> list[tuple[str, str]]:
    return [(i.severity, i.message) for i in result.issues]


AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {name: a}
spec: {model: m}
"""


def test_loaded_resource_carries_key_doc_and_position() -> None:
    """A valid document gives a LoadedResource with its key, model, document and start position."""
    doc = parse_one("# a comment\n" + AGENT)
    result = validation.validate_document(doc)
    assert result.ok
    assert result.resource is not None
    assert (ids.ResourceKey(ids.Kind.AGENT, "default", "a"), "res.yaml", 2, 1) == (
        result.resource.key,
        result.resource.path,
        result.resource.line,
        result.resource.col,
    )
    assert doc is result.resource.doc
    assert isinstance(result.resource.model, agent.Agent)
    assert (5, 15) == result.resource.position(("spec", "model"))


def test_namespace_is_part_of_the_key() -> None:
    """`metadata.namespace` goes into the resource key."""
    result = load(AGENT.replace("{name: a}", "{name: a, namespace: team-a}"))
    assert result.resource is not None
    assert ids.ResourceKey(ids.Kind.AGENT, "team-a", "a") == result.resource.key


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("Fleet", "unknown kind 'Fleet'; did you mean 'AgentFleet'?"),
        ("Flow", "unknown kind 'Flow'; did you mean 'AgentFlow'?"),
        ("agent", "unknown kind 'agent'; did you mean 'Agent'?"),
        ("Contxt", "unknown kind 'Contxt'; did you mean 'Context'?"),
    ],
)
def test_unknown_kind_suggests_the_real_one(kind: str, expected: str) -> None:
    """Kinds upstream's docs use (Fleet, Flow) and typos are errors naming the real kind."""
    result = load(AGENT.replace("kind: Agent", f"kind: {kind}"))
    assert None is result.resource
    assert [("error", expected)] == messages(result)
    assert (2, 7) == (result.issues[0].line, result.issues[0].col)


def test_missing_kind_is_an_error() -> None:
    """A document without `kind` is rejected and the message lists the kinds."""
    result = load(AGENT.replace("kind: Agent\n", ""))
    assert ["unknown-kind"] == [i.code for i in result.issues]
    assert result.issues[0].message.startswith("missing 'kind'; expected one of Context, Agent")


@pytest.mark.parametrize(
    ("api_version", "severity"),
    [("aof.dev/v1alpha1", "warning"), ("aof.sh/v1alpha1", "warning"), ("apps/v1", "error"), ("1", "error")],
)
def test_api_version_rules(api_version: str, severity: str) -> None:
    """v1 is silent, v1alpha1 and aof.sh are warnings, anything else is an error."""
    result = load(AGENT.replace("aof.dev/v1", api_version))
    assert [(severity, "api-version", 1)] == [(i.severity, i.code, i.line) for i in result.issues]
    assert (severity == "warning") == (result.resource is not None)


def test_missing_api_version_is_an_error() -> None:
    """A document without apiVersion is rejected."""
    result = load(AGENT.replace("apiVersion: aof.dev/v1\n", ""))
    assert ["error"] == [i.severity for i in result.issues]


@pytest.mark.parametrize("name", ["K8s-Ops", "k8s_ops", "-ops", "ops.prod", "a" * 64, "../etc"])
def test_names_must_be_dns_1123_labels(name: str) -> None:
    """Uppercase, underscores, dots, leading dashes, over-long and path-like names are rejected."""
    result = load(AGENT.replace("{name: a}", f"{{name: {name!r}}}"))
    assert ["invalid-name"] == [i.code for i in result.issues]


def test_non_mapping_document_is_an_error() -> None:
    """A list at the top of a document is not a resource."""
    result = load("- a\n- b\n")
    assert [("error", 1, 1)] == [(i.severity, i.line, i.col) for i in result.issues]
    assert "got a list" in result.issues[0].message


def test_empty_document_has_nothing_to_say() -> None:
    """A document whose data is null yields no resource and no issue."""
    empty = testing_resources.FakeDocument(path="e.yaml", data=None)
    assert validation.ValidationResult(None, ()) == validation.validate_document(empty)


def test_every_type_error_is_reported_at_its_own_value() -> None:
    """Several wrong values give one issue each, in line order, each at its value."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Agent
        metadata: {name: a}
        spec:
          model: 4
          temperature: "hot"
          max_iterations: 2.5
          tools: kubectl
        """
    )
    assert [
        (5, 10, "expected a string for 'spec.model', got the integer 4"),
        (
            6,
            16,
            "expected a number for 'spec.temperature', got the string 'hot' (quoted numbers are strings; "
            "remove the quotes)",
        ),
        (7, 19, "expected an integer for 'spec.max_iterations', got the number 2.5"),
        (8, 10, "expected a list for 'spec.tools', got the string 'kubectl'"),
    ] == [(i.line, i.col, i.message) for i in result.issues]


def test_union_errors_are_merged_into_one_message() -> None:
    """A value matching no alternative of a union is one issue listing what was expected."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: AgentFlow
        metadata: {name: f}
        spec:
          nodes:
            - id: w
              type: Wait
              config: {duration: [1, 2]}
        """
    )
    assert [
        (
            8,
            26,
            "invalid value for 'spec.nodes[0].config.duration': expected a number, a string or an integer, "
            "got a list",
        )
    ] == [(i.line, i.col, i.message) for i in result.issues]


def test_unknown_keys_in_several_places_are_all_dropped() -> None:
    """Every unknown key warns once and the rest of the document still loads."""
    result = load(
        """\
        apiVersion: aof.dev/v1
        kind: Trigger
        metadata: {name: t}
        spec:
          type: HTTP
          platform: http
          config: {path: /hook, colour: blue}
          commands:
            /run: {agent: a, params: {x: 1}}
        """
    )
    assert result.resource is not None
    assert [6, 7, 9] == [i.line for i in result.issues]
    assert {"warning"} == {i.severity for i in result.issues}
    assert (
        "unknown field 'params' in Trigger spec.commands['/run']; it is ignored" == result.issues[2].message
    )


def test_strict_turns_unknown_keys_into_errors_everywhere() -> None:
    """With strict=True an unknown key in any kind rejects the resource."""
    result = load(AGENT.replace("{model: m}", "{model: m, colour: blue}"), strict=True)
    assert None is result.resource
    assert [("error", "unknown field 'colour' in Agent spec")] == messages(result)


def test_validation_is_not_pathologically_slow() -> None:
    """Validating a small document stays far below 10 ms (a sanity bound; bench/load.py measures speed)."""
    doc = parse_one(AGENT)
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        validation.validate_document(doc)
    per_document = (time.perf_counter() - started) / rounds
    assert per_document < 0.01
