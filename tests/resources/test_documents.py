"""aofd.resources.documents: hostile YAML is rejected with a position, good YAML keeps every position."""

# The house style is `expected == actual` (STYLE.md habit 9); ruff's SIM300 calls that a Yoda condition.

from __future__ import annotations

import math
import time
import tracemalloc

import pytest

from aofd import errors
from aofd.resources import documents, snapshot

PATH = "contexts/prod.yaml"


def only_issue(content: bytes, *, limits: snapshot.Limits = snapshot.DEFAULT_LIMITS) -> errors.Issue:
    """Parse `content`, assert the file is bad, and return its first issue."""
    result = documents.parse(PATH, content, limits=limits)
    assert result.documents == ()
    assert result.issues
    assert all(issue.path == PATH and issue.severity == "error" for issue in result.issues)
    return result.issues[0]


def data_of(content: bytes) -> object:
    """Parse a one-document file that must be valid and return its data."""
    result = documents.parse(PATH, content)
    assert result.issues == ()
    assert len(result.documents) == 1
    return result.documents[0].data


BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


# --- RELIABILITY.md section 6, rows 1-3: aliases and depth ------------------------------------


def test_billion_laughs_is_rejected_fast_with_flat_memory() -> None:
    """An alias bomb is rejected at its first anchor within 50 ms, without expanding anything."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = documents.parse(PATH, BILLION_LAUGHS)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.documents == ()
    assert (1, 4, "aliases and anchors are not allowed (anchor &a)") == (
        result.issues[0].line,
        result.issues[0].col,
        result.issues[0].message,
    )
    assert elapsed < 2.0  # an expansion would take minutes; timing is bench/load.py's job
    assert peak < 1_000_000


def test_billion_laughs_issue_count_is_capped() -> None:
    """A file full of aliases stops after MAX_ISSUES_PER_FILE problems plus one 'stopped' note."""
    result = documents.parse(PATH, BILLION_LAUGHS)
    assert documents.MAX_ISSUES_PER_FILE + 1 == len(result.issues)
    assert f"stopped after {documents.MAX_ISSUES_PER_FILE} problems" == result.issues[-1].message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: &a [*a]\n", [(1, 4, "anchor &a"), (1, 8, "alias *a")]),
        (b"x: 1\nb: *nowhere\n", [(2, 4, "alias *nowhere")]),
        (b"a: &keep {k: v}\n", [(1, 4, "anchor &keep")]),
        (b"- &s plain\n", [(1, 3, "anchor &s")]),
        (b"? *k\n: v\n", [(1, 3, "alias *k")]),
    ],
    ids=["self-referential", "alias-only", "anchor-on-mapping", "anchor-on-scalar", "alias-as-key"],
)
def test_aliases_and_anchors_are_rejected(content: bytes, expected: list[tuple[int, int, str]]) -> None:
    """Every anchor and every alias is an issue at its own position; no documents come back."""
    result = documents.parse(PATH, content)
    assert result.documents == ()
    assert [(line, col, f"aliases and anchors are not allowed ({what})") for line, col, what in expected] == [
        (issue.line, issue.col, issue.message) for issue in result.issues
    ]
    assert {"yaml-alias"} == {issue.code for issue in result.issues}


@pytest.mark.parametrize(
    ("content", "position"),
    [
        (b"[" * 10_000 + b"]" * 10_000, (1, 65)),
        (b"{a: " * 10_000 + b"1" + b"}" * 10_000, (1, 257)),
        (b"".join(b"  " * i + b"k:\n" for i in range(100)) + b"  " * 100 + b"v\n", (65, 129)),
        (b"- " * 10_000 + b"x\n", (1, 129)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-mappings", "block-sequences"],
)
def test_deep_nesting_is_rejected_without_recursion_error(content: bytes, position: tuple[int, int]) -> None:
    """Nesting 10,000 deep stops at level 65 with 'depth > 64' and the place where it happened."""
    issue = only_issue(content)
    assert (*position, "nesting is deeper than 64 levels (depth > 64)", "yaml-depth") == (
        issue.line,
        issue.col,
        issue.message,
        issue.code,
    )


def test_nesting_exactly_at_the_limit_is_accepted() -> None:
    """Sixty-four nested collections are within the limit."""
    data = data_of(b"[" * 64 + b"]" * 64)
    depth = 0
    while isinstance(data, list):
        depth += 1
        data = data[0] if data else None
    assert 64 == depth


def test_recursion_and_memory_errors_become_issues(monkeypatch: pytest.MonkeyPatch) -> None:
    """RecursionError and MemoryError from the parser are issues, never exceptions."""
    for exc, message in [
        (RecursionError, "nesting is deeper than 64 levels"),
        (MemoryError, "file needs too much memory to read"),
    ]:

        def failing(text: str, exc: type[BaseException] = exc) -> object:
            raise exc

        monkeypatch.setattr(documents, "_event_source", failing)
        assert message == only_issue(b"a: 1\n").message


# --- row 4: duplicate keys, and keys in general --------------------------------------------------

DUPLICATE_BLOCKED_COMMANDS = b"""\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: prod
spec:
  blocked_commands:
    - kubectl delete
  namespace: default
  blocked_commands:
    - rm -rf
"""


def test_duplicate_key_in_a_context_names_the_key_and_both_lines() -> None:
    """A second `blocked_commands` is an error at the second key naming lines 6 and 9."""
    issue = only_issue(DUPLICATE_BLOCKED_COMMANDS)
    expected = errors.Issue(
        PATH,
        9,
        3,
        "error",
        "duplicate key 'blocked_commands': first at line 6, again at line 9",
        "yaml-duplicate-key",
    )
    assert expected == issue


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: 1\na: 2\n", "duplicate key 'a': first at line 1, again at line 2"),
        (b"{a: 1, 'a': 2}\n", "duplicate key 'a': first at line 1, again at line 1"),
        (b"1: x\n'1': y\n", "duplicate key '1': first at line 1, again at line 2"),
        (b"<<: {a: 1}\n", "merge keys (<<) are not allowed"),
        (b"? [a, b]\n: 1\n", "mapping keys must be strings; found a list used as a key"),
        (b"{a: 1}: 2\n", "mapping keys must be strings; found a mapping used as a key"),
        (b"!!int 1: x\n", "mapping keys must be strings; tag !!int is not allowed on a key"),
    ],
    ids=["block", "flow-and-quoted", "int-and-string", "merge", "list-key", "mapping-key", "tagged-key"],
)
def test_bad_keys_are_rejected(content: bytes, expected: str) -> None:
    """Duplicate, merge, non-scalar and non-string-tagged keys are rejected with a clear message."""
    assert expected == only_issue(content).message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"1: one\n2: two\n", {"1": "one", "2": "two"}),
        (b"true: t\nnull: n\n~: x\n", {"true": "t", "null": "n", "~": "x"}),
        (b"'<<': quoted\n", {"<<": "quoted"}),
        (b"!!str k: v\n", {"k": "v"}),
        (b"0x10: hex\n010: dec\n", {"0x10": "hex", "010": "dec"}),
    ],
    ids=["ints", "bool-and-null", "quoted-merge", "str-tag", "source-text"],
)
def test_scalar_keys_are_kept_as_their_source_text(content: bytes, expected: dict[str, str]) -> None:
    """`1:` is the key "1" (upstream's tier_consensus), never the int 1 or a bool."""
    data = data_of(content)
    assert expected == data
    assert isinstance(data, dict)
    assert all(type(key) is str for key in data)


# --- row 5: tags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "tag"),
    [
        (b"run: !!python/object/apply:os.system ['rm -rf /']\n", "!!python/object/apply:os.system"),
        (b"x: !!python/name:os.system\n", "!!python/name:os.system"),
        (b"x: !custom value\n", "!custom"),
        (b"x: ! value\n", "!"),
        (b"x: !!binary aGVsbG8=\n", "!!binary"),
        (b"x: !!timestamp 2001-12-14\n", "!!timestamp"),
        (b"x: !!set {a, b}\n", "!!set"),
        (b"x: !!omap [a: 1]\n", "!!omap"),
        (b"%TAG !e! tag:example.com,2000:\n---\nx: !e!thing 1\n", "tag:example.com,2000:thing"),
        (b"x: !!seq {a: 1}\n", "!!seq"),
        (b"x: !!map [a]\n", "!!map"),
    ],
    ids=[
        "python-apply",
        "python-name",
        "local",
        "non-specific",
        "binary",
        "timestamp",
        "set",
        "omap",
        "tag-directive",
        "seq-on-mapping",
        "map-on-sequence",
    ],
)
def test_tags_outside_the_core_schema_are_rejected(content: bytes, tag: str) -> None:
    """Any tag other than !!str/int/float/bool/null/map/seq (on the right node) is 'not allowed'."""
    issue = only_issue(content)
    assert ("yaml-tag", f"tag {tag} is not allowed") == (issue.code, issue.message.split(";")[0])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"x: !!str 10\n", "10"),
        (b"x: !!int '7'\n", 7),
        (b"x: !!int 0x1F\n", 31),
        (b"x: !!float 1\n", 1.0),
        (b"x: !!bool 'true'\n", True),
        (b"x: !!null ''\n", None),
        (b"x: !!map {a: 1}\n", {"a": 1}),
        (b"x: !!seq [1]\n", [1]),
    ],
)
def test_standard_tags_are_accepted(content: bytes, expected: object) -> None:
    """Explicit standard tags apply core-schema rules to the tagged text."""
    assert {"x": expected} == data_of(content)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"x: !!int ten\n", "value 'ten' is not a valid !!int"),
        (b"x: !!bool yes\n", "value 'yes' is not a valid !!bool"),
        (b"x: !!float abc\n", "value 'abc' is not a valid !!float"),
        (b"x: !!null nil\n", "value 'nil' is not a valid !!null"),
    ],
)
def test_standard_tags_on_values_that_do_not_fit_are_rejected(content: bytes, message: str) -> None:
    """`!!int ten` is an error, not a silent string."""
    assert message == only_issue(content).message


# --- row 6: YAML 1.2 core schema scalars ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no", "no"),
        ("yes", "yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("N", "N"),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("tRUE", "tRUE"),
        ("null", None),
        ("Null", None),
        ("NULL", None),
        ("~", None),
        ("", None),
        ("nil", "nil"),
        ("010", 10),
        ("0", 0),
        ("-17", -17),
        ("+3", 3),
        ("0o17", 15),
        ("0x1F", 31),
        ("0xff", 255),
        ("0b101", "0b101"),
        ("1_000", "1_000"),
        ("10:30", "10:30"),
        ("1.5", 1.5),
        ("-.5", -0.5),
        ("1.", 1.0),
        ("1e3", 1000.0),
        ("6.02E+23", 6.02e23),
        (".inf", math.inf),
        ("-.Inf", -math.inf),
        ("+.INF", math.inf),
        ("2001-12-14", "2001-12-14"),
        ("-x", "-x"),
        (".", "."),
        ("fallback", "fallback"),
        ("${KUBECONFIG_PROD}", "${KUBECONFIG_PROD}"),
    ],
)
def test_plain_scalars_follow_the_yaml_1_2_core_schema(text: str, expected: object) -> None:
    """`no` stays 'no' and `010` is 10: YAML 1.2 core, never 1.1's False and 8."""
    data = data_of(b"v: " + text.encode() + b"\n")
    assert isinstance(data, dict)
    assert (type(expected), expected) == (type(data["v"]), data["v"])


def test_nan_is_a_float() -> None:
    """`.nan`, `.NaN` and `.NAN` are floats (checked apart: NaN never equals itself)."""
    data = data_of(b"[.nan, .NaN, .NAN]\n")
    assert isinstance(data, list)
    assert [True, True, True] == [isinstance(v, float) and math.isnan(v) for v in data]


@pytest.mark.parametrize(
    "content",
    [b"v: 'no'\n", b'v: "010"\n', b"v: |-\n  true\n", b"v: >-\n  ~\n", b"v: ''\n"],
    ids=["single", "double", "literal", "folded", "empty-quoted"],
)
def test_quoted_and_block_scalars_are_strings(content: bytes) -> None:
    """Only plain scalars are resolved; quoting or a block style always gives a string."""
    data = data_of(content)
    assert isinstance(data, dict)
    assert str is type(data["v"])


def test_yaml_1_1_directive_does_not_change_resolution() -> None:
    """A `%YAML 1.1` directive does not bring back 1.1 booleans or octals."""
    assert {"approval": "no", "rate": 10} == data_of(b"%YAML 1.1\n---\napproval: no\nrate: 010\n")


# --- row 7: size caps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "size"),
    [
        (b"a: b\n" * (10 * 1024 * 1024), 50 * 1024 * 1024),
        (b"a: '" + b"x" * (5 * 1024 * 1024) + b"'\n", 5 * 1024 * 1024 + 6),
    ],
    ids=["50MB-file", "5MB-line"],
)
def test_oversized_files_are_rejected_before_parsing(content: bytes, size: int) -> None:
    """The file cap is checked first: a 50 MB file is rejected in well under 50 ms."""
    started = time.perf_counter()
    issue = only_issue(content)
    elapsed = time.perf_counter() - started
    expected = errors.Issue(
        PATH, 0, 0, "error", f"file is {size} bytes; at most 1048576 are allowed", "too-large"
    )
    assert expected == issue
    assert elapsed < 2.0  # the cap is checked before parsing 50 MB


def test_oversized_scalar_is_rejected() -> None:
    """A scalar over max_scalar_bytes is rejected at its position, counted in UTF-8 bytes."""
    limits = snapshot.Limits(max_scalar_bytes=8)
    assert {"a": "é" * 4} == documents.parse(PATH, "a: ééé\u00e9\n".encode(), limits=limits).documents[0].data
    issue = only_issue("a: ok\nb: ééééé\n".encode(), limits=limits)
    assert (2, 4, "scalar is 10 bytes; at most 8 are allowed") == (issue.line, issue.col, issue.message)


@pytest.mark.parametrize(
    ("content", "position"),
    [
        (b"a: 1\nb: " + b"9" * 5000 + b"\n", (2, 4)),
        (b"a: !!int " + b"9" * 5000 + b"\n", (1, 4)),
        (b"a: !!float -" + b"9" * 5000 + b"\n", (1, 4)),
    ],
)
def test_overlong_integer_is_an_issue_not_a_crash(content: bytes, position: tuple[int, int]) -> None:
    """A decimal integer over 4,300 digits is an issue at its position (int() raises, or is quadratic)."""
    issue = only_issue(content)
    assert (*position, "integer has 5000 digits; at most 4300 are allowed", "yaml-int") == (
        issue.line,
        issue.col,
        issue.message,
        issue.code,
    )


def test_node_count_cap() -> None:
    """More than max_nodes_per_file nodes (keys, values and collections) is rejected."""
    limits = snapshot.Limits(max_nodes_per_file=5)
    assert documents.parse(PATH, b"a: 1\nb: 2\n", limits=limits).ok
    issue = only_issue(b"a: 1\nb: 2\nc: 3\n", limits=limits)
    assert (3, 1, "file has more than 5 YAML nodes") == (issue.line, issue.col, issue.message)


# --- row 8: encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfea\x00:\x00", (1, 1, "file is UTF-16 (byte order mark); YAML files must be UTF-8")),
        (b"\xfe\xff\x00a\x00:", (1, 1, "file is UTF-16 (byte order mark); YAML files must be UTF-8")),
        (
            b"\xff\xfe\x00\x00a\x00\x00\x00",
            (1, 1, "file is UTF-32 (byte order mark); YAML files must be UTF-8"),
        ),
        (
            b"\x00\x00\xfe\xff\x00\x00\x00a",
            (1, 1, "file is UTF-32 (byte order mark); YAML files must be UTF-8"),
        ),
        (b"a: 1\nb: x\x00y\n", (2, 5, "NUL byte; YAML files must be UTF-8 text")),
        (b"a: 1\nname: caf\xe9\n", (2, 10, "invalid UTF-8 (byte 0xe9); YAML files must be UTF-8")),
        ("a: é\nb: ".encode() + b"\xc3(\n", (2, 4, "invalid UTF-8 (byte 0xc3); YAML files must be UTF-8")),
        (b"a: \xed\xa0\x80\n", (1, 4, "invalid UTF-8 (byte 0xed); YAML files must be UTF-8")),
    ],
    ids=["utf16-le", "utf16-be", "utf32-le", "utf32-be", "nul", "latin1", "truncated", "surrogate"],
)
def test_bad_encodings_are_rejected_with_path_and_position(
    content: bytes, expected: tuple[int, int, str]
) -> None:
    """UTF-16/32, NUL bytes and invalid UTF-8 are encoding errors at the offending line and column."""
    issue = only_issue(content)
    assert (*expected, "encoding", PATH) == (issue.line, issue.col, issue.message, issue.code, issue.path)


def test_control_characters_are_rejected_with_position() -> None:
    """A C0 control character (other than tab/newline) is a syntax issue at its position."""
    issue = only_issue(b"a: 1\nb: x\x07\n")
    assert (2, 5, "control characters are not allowed (U+0007)") == (issue.line, issue.col, issue.message)


def test_utf8_bom_is_accepted_and_positions_ignore_it() -> None:
    """A UTF-8 byte order mark is allowed and does not shift columns."""
    result = documents.parse(PATH, b"\xef\xbb\xbfa: 1\n")
    assert ({"a": 1}, (1, 4)) == (result.documents[0].data, result.documents[0].positions[("a",)])


# --- multi-document files, empty documents --------------------------------------------------------

MULTI = b"""\
# agents
apiVersion: aof.dev/v1
kind: Agent
---
---
# only a comment
---
apiVersion: aof.dev/v1
kind: AgentFleet
...
---
- just a list
---
"""


def test_multi_document_file_keeps_order_index_and_root_position() -> None:
    """Non-empty documents come back in order with their stream index and root position."""
    result = documents.parse(PATH, MULTI)
    assert () == result.issues
    assert [
        (0, 2, 1, {"apiVersion": "aof.dev/v1", "kind": "Agent"}),
        (3, 8, 1, {"apiVersion": "aof.dev/v1", "kind": "AgentFleet"}),
        (4, 12, 1, ["just a list"]),
    ] == [(d.index, d.line, d.col, d.data) for d in result.documents]
    assert [PATH] * 3 == [d.path for d in result.documents]
    assert (9, 7) == result.documents[1].positions[("kind",)]


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", b"# just a comment\n", b"---\n", b"---\n---\n...\n", b"--- # c\n", b"~\n", b"null\n"],
    ids=["empty", "blank", "comment", "one-marker", "markers", "marker-comment", "tilde", "null"],
)
def test_empty_documents_are_skipped_silently(content: bytes) -> None:
    """Empty and null documents produce neither documents nor issues."""
    assert documents.ParseResult((), ()) == documents.parse(PATH, content)


def test_one_bad_document_makes_the_whole_file_bad() -> None:
    """A good first document is not returned when a later one in the same file is hostile."""
    result = documents.parse(PATH, b"kind: Agent\n---\nkind: Context\nx: &a 1\n")
    assert ((), [(4, 4)]) == (result.documents, [(i.line, i.col) for i in result.issues])


# --- positions --------------------------------------------------------------------------------------

NESTED = b"""\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: prod
spec:
  approval:
    allowed_users:
      - U015SRE_LEAD
      -   "U016PLATFORM_ADMIN"
  instructions: |
    line one
    line two
  env: {ENVIRONMENT: production, 'LOG': info}
  rules:
    - name: r1
      match: [get, "describe"]
    -
      name: r2
"""


@pytest.mark.parametrize(
    ("loc", "value", "key"),
    [
        ((), (1, 1), None),
        (("apiVersion",), (1, 13), (1, 1)),
        (("metadata",), (4, 3), (3, 1)),
        (("metadata", "name"), (4, 9), (4, 3)),
        (("spec",), (6, 3), (5, 1)),
        (("spec", "approval", "allowed_users"), (8, 7), (7, 5)),
        (("spec", "approval", "allowed_users", 0), (8, 9), None),
        (("spec", "approval", "allowed_users", 1), (9, 11), None),
        (("spec", "instructions"), (10, 17), (10, 3)),
        (("spec", "env"), (13, 8), (13, 3)),
        (("spec", "env", "ENVIRONMENT"), (13, 22), (13, 9)),
        (("spec", "env", "LOG"), (13, 41), (13, 34)),
        (("spec", "rules", 0), (15, 7), None),
        (("spec", "rules", 0, "match"), (16, 14), (16, 7)),
        (("spec", "rules", 0, "match", 1), (16, 20), None),
        (("spec", "rules", 1), (18, 7), None),
        (("spec", "rules", 1, "name"), (18, 13), (18, 7)),
    ],
)
def test_positions_of_nested_values_and_keys(
    loc: tuple[str | int, ...], value: tuple[int, int], key: tuple[int, int] | None
) -> None:
    """Every value, list item, block scalar and key has its exact 1-based line and column."""
    (document,) = documents.parse(PATH, NESTED).documents
    assert (value, key) == (document.positions[loc], document.key_positions.get(loc))


def test_every_node_has_a_position() -> None:
    """positions covers every value reachable from the root."""
    (document,) = documents.parse(PATH, NESTED).documents

    def locations(node: object, loc: tuple[str | int, ...]) -> list[tuple[str | int, ...]]:
        found = [loc]
        if isinstance(node, dict):
            for k, v in node.items():
                found += locations(v, (*loc, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                found += locations(v, (*loc, i))
        return found

    assert sorted(map(repr, locations(document.data, ()))) == sorted(map(repr, document.positions))


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("spec", "rules", 1, "name"), (18, 13)),
        (("spec", "rules", 1, "missing", 3), (18, 7)),
        (("spec", "nope"), (6, 3)),
        (("nope", "deeper"), (1, 1)),
        ((), (1, 1)),
    ],
)
def test_position_falls_back_to_the_nearest_known_ancestor(
    loc: tuple[str | int, ...], expected: tuple[int, int]
) -> None:
    """A location that does not exist (e.g. a missing field) points at its closest parent."""
    (document,) = documents.parse(PATH, NESTED).documents
    assert expected == document.position(loc)


def test_key_position_points_at_the_key_and_falls_back_to_the_value() -> None:
    """key_position gives the key's place for mapping entries and the value's place otherwise."""
    (document,) = documents.parse(PATH, NESTED).documents
    assert [(5, 1), (8, 9), (6, 3)] == [
        document.key_position(("spec",)),
        document.key_position(("spec", "approval", "allowed_users", 0)),
        document.key_position(("spec", "nope")),
    ]


def test_columns_count_characters_not_bytes() -> None:
    """Columns after non-ASCII text count characters, as editors do."""
    (document,) = documents.parse(PATH, "é: ü\nx: [ä, ö]\n".encode()).documents
    assert [(1, 4), (2, 8)] == [document.positions[("é",)], document.positions[("x", 1)]]


# --- syntax errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: 1\n  b: 2\n", (2, 4, "mapping values are not allowed in this context")),
        (
            b"a: [1, 2\nb: 3\n",
            (
                2,
                2,
                "did not find expected ',' or ']'"
                " (while parsing a flow sequence started at line 1, column 4)",
            ),
        ),
        (
            b"a: 'open\n",
            (
                2,
                1,
                "found unexpected end of stream (while scanning a quoted scalar started at line 1, column 4)",
            ),
        ),
        (
            b"a:\n\t- b\n",
            (2, 1, "found character that cannot start any token (while scanning for the next token)"),
        ),
        (
            b"- a\nb: c\n",
            (
                2,
                1,
                "did not find expected '-' indicator"
                " (while parsing a block collection started at line 1, column 1)",
            ),
        ),
    ],
    ids=["indent", "unclosed-flow", "unclosed-quote", "tab", "mixed"],
)
def test_syntax_errors_keep_the_parser_position_and_message(
    content: bytes, expected: tuple[int, int, str]
) -> None:
    """A syntax error is one issue with ruamel's line, column and message."""
    result = documents.parse(PATH, content)
    assert ((), [(*expected, "yaml-syntax")]) == (
        result.documents,
        [(i.line, i.col, i.message, i.code) for i in result.issues],
    )


# --- the pure-Python fallback --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [NESTED, MULTI, b"v: [no, 010, ~, '1']\n"], ids=["nested", "multi", "scalars"]
)
def test_pure_python_fallback_gives_the_same_documents(
    monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    """Without the C parser, the pure-Python event parser yields identical data and positions."""
    fast = documents.parse(PATH, content)
    monkeypatch.setattr(documents, "_CParser", None)
    slow = documents.parse(PATH, content)
    assert fast == slow


@pytest.mark.parametrize(
    "content", [BILLION_LAUGHS, b"[" * 10_000, b"a: !!python/object/apply:os.system [ls]\n", b"a: 1\na: 2\n"]
)
def test_pure_python_fallback_rejects_the_same_input(monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """The fallback enforces the same caps, with the same first issue."""
    fast = documents.parse(PATH, content)
    monkeypatch.setattr(documents, "_CParser", None)
    slow = documents.parse(PATH, content)
    assert (fast.issues[0].line, fast.issues[0].message) == (slow.issues[0].line, slow.issues[0].message)
