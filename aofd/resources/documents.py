"""YAML bytes -> plain Python documents, with a source position for every value.

This module owns reading repository YAML, which is hostile input (RELIABILITY.md section 4).
It drives ruamel.yaml's C *event* parser and builds dicts, lists and scalars itself in one
pass, so every cap is enforced while events are read, before anything could be expanded:

- aliases and anchors are rejected (no billion laughs, no self-referential data),
- nesting deeper than `Limits.max_depth`, more than `Limits.max_nodes_per_file` nodes,
  scalars over `Limits.max_scalar_bytes` and files over `Limits.max_file_bytes` are rejected
  (the file size is checked before any decoding or parsing), and decimal integers longer
  than 4,300 digits are rejected (int() of those raises, or is quadratic without the cap),
- duplicate keys, merge keys (`<<`), non-scalar keys and every tag outside the standard
  `!!str !!int !!float !!bool !!null !!map !!seq` are rejected,
- the bytes must be UTF-8 without NUL bytes (a UTF-8 BOM is allowed; UTF-16/32 are not).

Plain scalars are resolved with the YAML 1.2 *core* schema whatever `%YAML` directive the file
carries: `null ~` and empty are None; `true false` (also `True TRUE ...`) are bools; `no yes on
off` stay strings; `010` is the int 10 (decimal, not octal), `0o10` is 8, `0x10` is 16;
`.inf -.inf .nan` are floats; anything else (timestamps, `1_000`, `10:30`) is a string.
Quoted and block scalars are always strings. Mapping keys are always strings: a scalar key is
kept as its source text (`1: x` has the key "1", `true: x` the key "true").

Positions are 1-based `(line, col)` of a node's first character; for a block scalar that is
its `|` or `>` indicator. A location is a tuple of mapping keys and list indexes from the
document root: `Document.positions[("spec", "agents", 0)]` is where that list item starts,
`Document.key_positions[("spec", "agents")]` is where the key `agents` is written, and
`positions[()]` is the root node.

Positions are kept compactly, because a daemon holds every document of its repos for as long
as they are current (100,000 resources and more): one flat array of unsigned ints per document
(16-bit when every value fits, else 32-bit), five per node in document order (`line, col,
key line, key col, span`; the key's place is 0 for list items and the root, `span` counts the
node and everything under it). A location is found by walking `data` alongside the array,
skipping a sibling's whole subtree in one step; `positions` and `key_positions` are read-only
mapping views over it. Mapping keys are interned, since the same few dozen keys repeat in
every resource.

A file with any problem yields no documents, only issues; problems are data, never
exceptions (RecursionError, MemoryError and every ruamel error are turned into issues).
This module must not validate resource schemas, resolve references, substitute variables
or do any I/O: it gets bytes and returns values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ruamel.yaml import error as yaml_error
from ruamel.yaml import events as yaml_events

from aofd import errors
from aofd.resources import snapshot

try:  # the C event parser (ruamel.yaml.clib): ~30x faster than the pure-Python one
    from ruamel.yaml.cyaml import CParser as _CParser  # type: ignore[attr-defined]
except ImportError:
    _CParser = None

Location = tuple[str | int, ...]
"""Path from a document's root to a node: mapping keys (str) and list indexes (int)."""

Position = tuple[int, int]
"""1-based `(line, col)`."""

_INTERN_MAX = 64
"""String values up to this length are interned: kinds, apiVersions, models, tool names repeat."""

MAX_ISSUES_PER_FILE = 20
"""Stop reading a file after this many problems; more would only repeat themselves."""

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
_STR_TAG = _YAML_TAG_PREFIX + "str"
_MAP_TAG = _YAML_TAG_PREFIX + "map"
_SEQ_TAG = _YAML_TAG_PREFIX + "seq"
_SCALAR_TAGS = frozenset(_YAML_TAG_PREFIX + name for name in ("str", "int", "float", "bool", "null"))

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT_DEC = re.compile(r"[-+]?[0-9]+")
_MAX_INT_DIGITS = 4300
"""Longest decimal int converted (Python's own default cap; str->int is quadratic beyond it)."""
_INT_OCT = re.compile(r"0o[0-7]+")
_INT_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_FLOAT_SPECIAL = {
    ".inf": math.inf,
    ".Inf": math.inf,
    ".INF": math.inf,
    "+.inf": math.inf,
    "+.Inf": math.inf,
    "+.INF": math.inf,
    "-.inf": -math.inf,
    "-.Inf": -math.inf,
    "-.INF": -math.inf,
    ".nan": math.nan,
    ".NaN": math.nan,
    ".NAN": math.nan,
}
# A plain scalar starting with any other character is a string: skips the regexes.
_NON_STR_FIRST_CHARS = frozenset("0123456789+-.~nNtTfF")
_WORD_FIRST_CHARS = frozenset("~nNtTfF")
"""First characters of a null or a bool only: past those checks, such a scalar is a string."""

_BAD_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)
_BOM_FIRST_BYTES = frozenset(bom[:1] for bom, _ in _BAD_BOMS)
_UTF8_BOM = b"\xef\xbb\xbf"

_NO_KEY: object = object()
"""Marks a mapping frame that is waiting for its next key."""


_FIELDS = 5
"""Unsigned ints per node in a document's position table: line, col, key line, key col, span."""
_SPAN = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """One non-empty YAML document of a file, as plain data with positions.

    `data` is built from dict (insertion ordered), list, str, int, float, bool and None only,
    and must not be modified: `table` describes its nodes in order (see the module docstring).
    `positions` maps the location of every node (the root is `()`) to where its value starts;
    `key_positions` maps the location of every mapping entry to where its key is written.
    """

    path: str
    index: int
    line: int
    col: int
    data: object
    table: array[int] = dataclasses.field(repr=False)

    @property
    def positions(self) -> Mapping[Location, Position]:
        return _PositionsView(self, keys=False)

    @property
    def key_positions(self) -> Mapping[Location, Position]:
        return _PositionsView(self, keys=True)

    def position(self, loc: Sequence[str | int]) -> Position:
        """Where the node at `loc` starts, or its nearest ancestor that exists (the root at worst)."""
        record, _ = self._locate(loc)
        base = record * _FIELDS
        return self.table[base], self.table[base + 1]

    def key_position(self, loc: Sequence[str | int]) -> Position:
        """Where the key of the entry at `loc` is written, else `position(loc)` (list items, root)."""
        record, depth = self._locate(loc)
        base = record * _FIELDS
        table = self.table
        if depth == len(loc) and table[base + 2]:
            return table[base + 2], table[base + 3]
        return table[base], table[base + 1]

    def _locate(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """The record of the deepest node on `loc` that exists, and how many parts of `loc` it matched."""
        table = self.table
        node = self.data
        record = 0
        depth = 0
        for part in loc:
            child = record + 1
            if type(node) is dict:
                if not isinstance(part, str) or part not in node:
                    break
                for key in node:
                    if key == part:
                        break
                    child += table[child * _FIELDS + _SPAN]
                node = node[part]
            elif type(node) is list:
                if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part < len(node):
                    break
                for _ in range(part):
                    child += table[child * _FIELDS + _SPAN]
                node = node[part]
            else:
                break
            record = child
            depth += 1
        return record, depth


class _PositionsView(Mapping[Location, Position]):
    """`Document.positions` (every node) or `Document.key_positions` (mapping entries) as a mapping."""

    __slots__ = ("_doc", "_keys")

    def __init__(self, doc: Document, *, keys: bool) -> None:
        self._doc = doc
        self._keys = keys

    def __getitem__(self, loc: Location) -> Position:
        if not isinstance(loc, tuple):
            raise KeyError(loc)
        record, depth = self._doc._locate(loc)
        base = record * _FIELDS + (2 if self._keys else 0)
        table = self._doc.table
        if depth != len(loc) or not table[base]:
            raise KeyError(loc)
        return table[base], table[base + 1]

    def __contains__(self, loc: object) -> bool:
        if not isinstance(loc, tuple):
            return False
        record, depth = self._doc._locate(loc)
        return depth == len(loc) and bool(self._doc.table[record * _FIELDS + (2 if self._keys else 0)])

    def __iter__(self) -> Iterator[Location]:
        stack: list[tuple[Location, object]] = [((), self._doc.data)]
        while stack:
            loc, node = stack.pop()
            if not self._keys or (loc and isinstance(loc[-1], str)):
                yield loc
            if isinstance(node, dict):
                stack.extend(((*loc, k), v) for k, v in reversed(node.items()))
            elif isinstance(node, list):
                stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(node))))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclasses.dataclass(frozen=True, slots=True)
class ParseResult:
    """The documents of one file, or no documents and the issues that made the file bad."""

    documents: tuple[Document, ...]
    issues: tuple[errors.Issue, ...]

    @property
    def ok(self) -> bool:
        return not self.issues


class _Stop(Exception):
    """Reading the file cannot usefully continue (a cap was hit, or too many issues)."""


class _IntTooLongError(ValueError):
    """A plain scalar is a decimal integer with more than `_MAX_INT_DIGITS` digits."""

    def __init__(self, digits: int) -> None:
        super().__init__(f"integer has {digits} digits; at most {_MAX_INT_DIGITS} are allowed")


def parse(path: str, content: bytes, *, limits: snapshot.Limits = snapshot.DEFAULT_LIMITS) -> ParseResult:
    """Parse every YAML document in `content`; never raises for any input bytes.

    Args:
        path: how the file is shown to users; copied into documents and issues.
        content: the file's bytes.
        limits: caps on hostile input.

    Returns:
        The non-empty documents in file order, or (when anything is wrong anywhere in the
        file) no documents and at least one error issue with the line and column of the problem.
    """
    text_or_issue = _decode(path, content, limits)
    if isinstance(text_or_issue, errors.Issue):
        return ParseResult((), (text_or_issue,))
    reader = _Reader(path, text_or_issue, limits)
    try:
        reader.run()
    except _Stop:
        pass
    except yaml_error.MarkedYAMLError as exc:
        reader.add_syntax_issue(exc)
    except yaml_error.YAMLError as exc:  # ReaderError: bad character, with an offset
        reader.add_reader_issue(exc)
    except RecursionError:
        reader.issue(0, 0, f"nesting is deeper than {limits.max_depth} levels", "yaml-depth", fatal=False)
    except MemoryError:
        reader.issue(0, 0, "file needs too much memory to read", "too-large", fatal=False)
    if reader.issues:
        return ParseResult((), tuple(reader.issues))
    return ParseResult(tuple(reader.documents), ())


def _decode(path: str, content: bytes, limits: snapshot.Limits) -> str | errors.Issue:
    """Check size and encoding before anything looks at the content."""
    if len(content) > limits.max_file_bytes:
        return errors.Issue(
            path,
            0,
            0,
            "error",
            f"file is {len(content)} bytes; at most {limits.max_file_bytes} are allowed",
            "too-large",
        )
    for bom, name in _BAD_BOMS if content[:1] in _BOM_FIRST_BYTES else ():
        if content.startswith(bom):
            return errors.Issue(
                path, 1, 1, "error", f"file is {name} (byte order mark); YAML files must be UTF-8", "encoding"
            )
    nul = content.find(b"\0")
    if nul >= 0:
        line, col = _byte_position(content, nul)
        return errors.Issue(path, line, col, "error", "NUL byte; YAML files must be UTF-8 text", "encoding")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(content, exc.start)
        return errors.Issue(
            path,
            line,
            col,
            "error",
            f"invalid UTF-8 (byte 0x{content[exc.start]:02x}); YAML files must be UTF-8",
            "encoding",
        )
    if content.startswith(_UTF8_BOM):
        text = text[1:]
    return text


def _byte_position(content: bytes, offset: int) -> Position:
    """1-based line and column (in characters) of a byte offset."""
    line_start = content.rfind(b"\n", 0, offset) + 1
    line = content.count(b"\n", 0, offset) + 1
    col = len(content[line_start:offset].decode("utf-8", "replace")) + 1
    return line, col


def _text_position(text: str, offset: int) -> Position:
    """1-based line and column of a character offset."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _resolve_plain(value: str) -> object:
    """A plain (unquoted, untagged) scalar under the YAML 1.2 core schema."""
    if not value:
        return None
    if value[0] not in _NON_STR_FIRST_CHARS:
        return value
    if value in _NULLS:
        return None
    boolean = _BOOLS.get(value)
    if boolean is not None:
        return boolean
    if value[0] in _WORD_FIRST_CHARS:  # `flow-1`, `team-a`: no number starts with a letter or `~`
        return value
    if _INT_DEC.fullmatch(value):
        digits = len(value.lstrip("+-"))
        if digits > _MAX_INT_DIGITS:
            raise _IntTooLongError(digits)
        return int(value, 10)
    if _INT_OCT.fullmatch(value):
        return int(value[2:], 8)
    if _INT_HEX.fullmatch(value):
        return int(value[2:], 16)
    if _FLOAT.fullmatch(value):
        return float(value)
    special = _FLOAT_SPECIAL.get(value)
    if special is not None:
        return special
    return value


def _resolve_tagged(tag: str, value: str) -> tuple[object, bool]:
    """A scalar with an explicit standard tag: `(value, True)`, or `(None, False)` when it does not fit."""
    if tag == _STR_TAG:
        return value, True
    resolved = _resolve_plain(value)
    kind = tag[len(_YAML_TAG_PREFIX) :]
    if kind == "null":
        return None, resolved is None
    if kind == "bool":
        return resolved, isinstance(resolved, bool)
    if kind == "int":
        return resolved, isinstance(resolved, int) and not isinstance(resolved, bool)
    # float: YAML 1.2 allows an int-looking value ("!!float 1" is 1.0).
    if isinstance(resolved, int | float) and not isinstance(resolved, bool):
        return float(resolved), True
    return None, False


def _short_tag(tag: str) -> str:
    if tag.startswith(_YAML_TAG_PREFIX):
        return "!!" + tag[len(_YAML_TAG_PREFIX) :]
    return tag


def _event_source(text: str) -> Callable[[], Any]:
    """A function returning the next parser event (the C parser when it is installed)."""
    if _CParser is not None:
        return _CParser(text).get_event  # type: ignore[no-any-return]
    from ruamel.yaml import YAML  # fallback without ruamel.yaml.clib

    return iter(YAML(typ="safe", pure=True).parse(text)).__next__  # type: ignore[no-any-return]


class _Reader:
    """One pass over the events of one file: builds the documents, records positions, enforces caps.

    Invariant: `stack` holds one frame per open collection, innermost last; a frame is
    `[container, location, pending_key]`, where `pending_key` is `_NO_KEY` for a mapping waiting
    for its next key (and for every sequence, where it is unused).
    """

    __slots__ = ("documents", "issues", "limits", "path", "text")

    def __init__(self, path: str, text: str, limits: snapshot.Limits) -> None:
        self.path = path
        self.text = text
        self.limits = limits
        self.documents: list[Document] = []
        self.issues: list[errors.Issue] = []

    def issue(self, line: int, col: int, message: str, code: str, *, fatal: bool) -> None:
        """Record a problem; raise `_Stop` when reading cannot or need not continue."""
        self.issues.append(errors.Issue(self.path, line, col, "error", message, code))
        if fatal:
            raise _Stop
        if len(self.issues) >= MAX_ISSUES_PER_FILE:
            self.issues.append(
                errors.Issue(
                    self.path, line, col, "error", f"stopped after {MAX_ISSUES_PER_FILE} problems", code
                )
            )
            raise _Stop

    def add_syntax_issue(self, exc: yaml_error.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        message = str(exc.problem or "invalid YAML")
        if exc.context:
            context_mark = exc.context_mark
            where = ""
            if context_mark is not None and (context_mark.line + 1, context_mark.column + 1) != (line, col):
                where = f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
            message = f"{message} ({exc.context}{where})"
        self.issues.append(errors.Issue(self.path, line, col, "error", message, "yaml-syntax"))

    def add_reader_issue(self, exc: yaml_error.YAMLError) -> None:
        offset = getattr(exc, "position", None)
        line, col = _text_position(self.text, offset) if isinstance(offset, int) else (0, 0)
        reason = getattr(exc, "reason", None) or str(exc)
        character = getattr(exc, "character", None)
        if isinstance(character, int):
            reason = f"{reason} (U+{character:04X})"
        self.issues.append(errors.Issue(self.path, line, col, "error", str(reason), "yaml-syntax"))

    def run(self) -> None:
        """Read every event; one flat loop with the innermost collection in locals, for speed."""
        limits = self.limits
        max_depth = limits.max_depth
        max_nodes = limits.max_nodes_per_file
        max_scalar = limits.max_scalar_bytes
        # A character is at most 4 UTF-8 bytes: only long scalars need encoding to be measured.
        scalar_chars_unchecked = max_scalar // 4
        scalar_cls = yaml_events.ScalarEvent
        map_start_cls = yaml_events.MappingStartEvent
        seq_start_cls = yaml_events.SequenceStartEvent
        end_classes = (yaml_events.MappingEndEvent, yaml_events.SequenceEndEvent)
        alias_cls = yaml_events.AliasEvent
        doc_start_cls = yaml_events.DocumentStartEvent
        doc_end_cls = yaml_events.DocumentEndEvent
        stream_end_cls = yaml_events.StreamEndEvent
        resolve_plain = _resolve_plain
        non_str_first = _NON_STR_FIRST_CHARS
        no_key = _NO_KEY
        issue = self.issue

        next_event = _event_source(self.text)
        intern = sys.intern
        intern_max = _INTERN_MAX
        nodes = 0
        doc_index = -1
        # The innermost open collection lives in locals; `stack` saves the enclosing ones with
        # the record index where each starts. Invariant: `cur` is None at document level;
        # `pending` is the key whose value comes next in a mapping (`no_key` while a key is
        # expected, and always in a sequence), written at `key_line, key_col`; `cur_start` is
        # the record of `cur`. `table` gets `_FIELDS` ints per node, in document order.
        stack: list[tuple[Any, bool, int]] = []
        cur: Any = None
        cur_is_map = False
        cur_start = 0
        pending: object = no_key
        key_line = key_col = 0
        table: list[int] = []
        records = 0
        root: object = None
        root_pos: Position = (0, 0)

        while True:
            event = next_event()
            cls = type(event)
            value: object
            if cls is scalar_cls:
                mark = event.start_mark
                line = mark.line + 1
                col = mark.column + 1
                nodes += 1
                if nodes > max_nodes:
                    issue(line, col, f"file has more than {max_nodes} YAML nodes", "yaml-nodes", fatal=True)
                text: str = event.value
                if len(text) > scalar_chars_unchecked and len(text.encode("utf-8")) > max_scalar:
                    size = len(text.encode("utf-8"))
                    message = f"scalar is {size} bytes; at most {max_scalar} are allowed"
                    issue(line, col, message, "yaml-scalar-size", fatal=True)
                if event.anchor is not None:
                    self._anchor((line, col), event.anchor)
                tag = event.ctag  # the `tag` property builds a str; ctag is None when untagged
                if tag is not None:
                    tag = event.tag
                if pending is no_key and cur_is_map:
                    # A mapping key: always kept as its source text.
                    if tag is not None and tag != _STR_TAG:
                        message = (
                            f"mapping keys must be strings; tag {_short_tag(tag)} is not allowed on a key"
                        )
                        issue(line, col, message, "yaml-key", fatal=False)
                    elif text == "<<" and not event.style:
                        issue(line, col, "merge keys (<<) are not allowed", "yaml-merge", fatal=False)
                    pending = intern(text)
                    if text in cur:
                        first = _entry_line(table, cur_start, cur, text)
                        message = f"duplicate key {text!r}: first at line {first}, again at line {line}"
                        issue(line, col, message, "yaml-duplicate-key", fatal=False)
                    key_line, key_col = line, col
                    continue
                if tag is None:
                    # Plain style is '' (C parser) or None (pure parser); quoted and block scalars are str.
                    if event.style or not text or text[0] not in non_str_first:
                        if len(text) <= intern_max:
                            value = intern(text) if text else (text if event.style else None)
                        else:
                            value = text
                    else:
                        try:
                            value = resolve_plain(text)
                        except _IntTooLongError as exc:
                            value = None
                            issue(line, col, str(exc), "yaml-int", fatal=False)
                elif tag in _SCALAR_TAGS:
                    try:
                        value, fits = _resolve_tagged(tag, text)
                    except _IntTooLongError as exc:
                        value, fits = None, True
                        issue(line, col, str(exc), "yaml-int", fatal=False)
                    if not fits:
                        message = f"value {text!r} is not a valid {_short_tag(tag)}"
                        issue(line, col, message, "yaml-tag", fatal=False)
                else:
                    value = None
                    issue(line, col, _tag_message(tag), "yaml-tag", fatal=False)
            elif cls is map_start_cls or cls is seq_start_cls:
                mark = event.start_mark
                line = mark.line + 1
                col = mark.column + 1
                nodes += 1
                if nodes > max_nodes:
                    issue(line, col, f"file has more than {max_nodes} YAML nodes", "yaml-nodes", fatal=True)
                if len(stack) >= max_depth:
                    message = f"nesting is deeper than {max_depth} levels (depth > {max_depth})"
                    issue(line, col, message, "yaml-depth", fatal=True)
                if event.anchor is not None:
                    self._anchor((line, col), event.anchor)
                is_map = cls is map_start_cls
                tag = event.ctag  # the `tag` property builds a str; ctag is None when untagged
                if tag is not None:
                    tag = event.tag
                if tag is not None and tag != (_MAP_TAG if is_map else _SEQ_TAG):
                    issue(line, col, _tag_message(tag), "yaml-tag", fatal=False)
                container: Any = {} if is_map else []
                if cur_is_map:
                    if pending is no_key:
                        kind = "mapping" if is_map else "list"
                        message = f"mapping keys must be strings; found a {kind} used as a key"
                        issue(line, col, message, "yaml-key", fatal=True)
                    cur[pending] = container
                    table += (line, col, key_line, key_col, 0)
                elif cur is not None:
                    cur.append(container)
                    table += (line, col, 0, 0, 0)
                else:
                    root = container
                    root_pos = (line, col)
                    table += (line, col, 0, 0, 0)
                # Save the enclosing collection (its pending key is now consumed) and descend.
                stack.append((cur, cur_is_map, cur_start))
                cur, cur_is_map, cur_start, pending = container, is_map, records, no_key
                records += 1
                continue
            elif cls in end_classes:
                table[cur_start * _FIELDS + _SPAN] = records - cur_start
                cur, cur_is_map, cur_start = stack.pop()
                pending = no_key
                continue
            elif cls is alias_cls:
                mark = event.start_mark
                line = mark.line + 1
                col = mark.column + 1
                nodes += 1
                if nodes > max_nodes:
                    issue(line, col, f"file has more than {max_nodes} YAML nodes", "yaml-nodes", fatal=True)
                message = f"aliases and anchors are not allowed (alias *{event.anchor})"
                issue(line, col, message, "yaml-alias", fatal=False)
                if pending is no_key and cur_is_map:
                    # An alias used as a key: keep the structure consistent so reading goes on.
                    pending = f"*{event.anchor}"
                    key_line, key_col = line, col
                    continue
                value = None
            elif cls is doc_start_cls:
                doc_index += 1
                table = []
                records = 0
                root = None
                root_pos = (0, 0)
                continue
            elif cls is doc_end_cls:
                if root is not None and not self.issues:
                    self.documents.append(
                        Document(
                            path=self.path,
                            index=doc_index,
                            line=root_pos[0],
                            col=root_pos[1],
                            data=root,
                            table=_pack(table),
                        )
                    )
                continue
            elif cls is stream_end_cls:
                return
            else:  # StreamStartEvent
                continue

            # A scalar or alias value: attach it to the open collection, or make it the root.
            records += 1
            if cur_is_map:
                table += (line, col, key_line, key_col, 1)
                cur[pending] = value
                pending = no_key
            elif cur is not None:
                table += (line, col, 0, 0, 1)
                cur.append(value)
            else:
                table += (line, col, 0, 0, 1)
                root = value
                root_pos = (line, col)

    def _anchor(self, pos: Position, anchor: str) -> None:
        self.issue(*pos, f"aliases and anchors are not allowed (anchor &{anchor})", "yaml-alias", fatal=False)


def _pack(table: list[int]) -> array[int]:
    """The table as 16-bit ints when every line and column fits (nearly always), else 32-bit."""
    try:
        return array("H", table)
    except OverflowError:
        return array("I", table)


def _entry_line(table: list[int], start: int, mapping: dict[str, object], key: str) -> int:
    """The line of the entry `key` of the (still open) mapping whose record is `start`; 0 if unknown."""
    child = start + 1
    for existing in mapping:
        if child * _FIELDS >= len(table):
            return 0
        if existing == key:
            return table[child * _FIELDS + 2]
        child += table[child * _FIELDS + _SPAN]
    return 0


def _tag_message(tag: str) -> str:
    return (
        f"tag {_short_tag(tag)} is not allowed; only the standard tags "
        "!!str, !!int, !!float, !!bool, !!null, !!map and !!seq are"
    )
