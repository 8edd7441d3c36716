"""`${...}` templates and `when`/`condition` expressions of AgentFlows (pure).

This module owns rendering `${event.text}`, `${trigger.user.id}`, `${<node>.output}` and
nested paths (`${node.output.field}`, `${node.output.items[0]}`) against a run's scope,
and evaluating conditions (`true`, `a == b`, `a != b`, `<`, `>`, `<=`, `>=`, `&&`/`AND`,
`||`/`OR`, `!x`).

Rules:
- The scope is built by the engine from the event, the trigger data, the Context's name,
  namespace and cluster, and node results. **Never the host environment**: `${HOME}` or
  `${AWS_SECRET_ACCESS_KEY}` that resolve to nothing stay literal, as written.
- A path walks mappings and lists; a string that holds JSON is parsed when a path goes
  into it (agents often answer in JSON). Node ids may contain `-` (`${k8s-process.output}`).
- Non-string values render as compact JSON.

It must not do I/O or read `os.environ`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLACEHOLDER = re.compile(r"\$\{([^{}]+)\}")
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def lookup(path: str, scope: Mapping[str, Any]) -> Any:
    """The value at a dotted path, or `MISSING`. The longest scope key that prefixes the path wins
    (so a node id with dots or dashes resolves before its parts)."""
    path = path.strip()
    if not path:
        return MISSING
    head, rest = _split_head(path, scope)
    if head is None:
        return MISSING
    value: Any = scope[head]
    for name, index in _SEGMENT.findall(rest):
        value = _step(value, name, index)
        if value is MISSING:
            return MISSING
    return value


def _split_head(path: str, scope: Mapping[str, Any]) -> tuple[str | None, str]:
    if path in scope:
        return path, ""
    cut = len(path)
    while True:
        cut = max(path.rfind(".", 0, cut), path.rfind("[", 0, cut))
        if cut <= 0:
            return None, ""
        if path[:cut] in scope:
            return path[:cut], path[cut:]


def _step(value: Any, name: str, index: str) -> Any:
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return MISSING
    if index:
        if isinstance(value, Sequence) and not isinstance(value, str):
            i = int(index)
            return value[i] if i < len(value) else MISSING
        return MISSING
    if isinstance(value, Mapping):
        return value.get(name, MISSING)
    if isinstance(value, Sequence) and not isinstance(value, str) and name.isdigit():
        i = int(name)
        return value[i] if i < len(value) else MISSING
    return MISSING


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def render(text: str, scope: Mapping[str, Any]) -> str:
    """Replace every `${path}` that resolves in `scope`; leave the others exactly as written."""
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        value = lookup(match.group(1), scope)
        return match.group(0) if value is MISSING else to_text(value)

    return _PLACEHOLDER.sub(replace, text)


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every string inside a JSON-like value; a string that is exactly one `${path}` keeps its type."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value.strip())
        if whole:
            found = lookup(whole.group(1), scope)
            return value if found is MISSING else found
        return render(value, scope)
    if isinstance(value, Mapping):
        return {k: render_value(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, scope) for v in value]
    return value


# --- conditions ------------------------------------------------------------------------------

_OR = re.compile(r"\s*(?:\|\||\bOR\b|\bor\b)\s*")
_AND = re.compile(r"\s*(?:&&|\bAND\b|\band\b)\s*")
_CMP = re.compile(r"^(.*?)\s*(==|!=|>=|<=|>|<)\s*(.*)$", re.DOTALL)


def evaluate(
    expression: str | bool, scope: Mapping[str, Any], local: Mapping[str, Any] | None = None
) -> bool:
    """Evaluate a condition after rendering `${...}`. Bare words resolve in `local`, then `scope`.

    Anything that is not a recognisable comparison or truth value is false (and the engine
    records the expression), as upstream does.
    """
    if isinstance(expression, bool):
        return expression
    text = " ".join(expression.split())
    return any(
        all(_term(term, scope, local or {}) for term in _AND.split(alternative))
        for alternative in _OR.split(text)
    )


def _term(term: str, scope: Mapping[str, Any], local: Mapping[str, Any]) -> bool:
    term = term.strip()
    negate = False
    while term.startswith("!") and not term.startswith("!="):
        negate, term = not negate, term[1:].strip()
    if term.lower().startswith("not "):
        negate, term = not negate, term[4:].strip()
    match = _CMP.match(term)
    if match:
        left = _operand(match.group(1), scope, local)
        right = _operand(match.group(3), scope, local)
        result = _compare(left, match.group(2), right)
    else:
        result = _truthy(_operand(term, scope, local))
    return result != negate


def _operand(text: str, scope: Mapping[str, Any], local: Mapping[str, Any]) -> Any:
    text = text.strip()
    whole = _PLACEHOLDER.fullmatch(text)
    if whole:
        value = lookup(whole.group(1), scope)
        return text if value is MISSING else value
    if "${" in text:
        return render(text, scope)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false", "null", "none"):
        return {"true": True, "false": False}.get(lowered)
    number = _number(text)
    if number is not None:
        return number
    for source in (local, scope):
        value = lookup(text, source)
        if value is not MISSING:
            return value
    return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _norm(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return to_text(value).strip().strip("'\"").strip().lower()


def _compare(left: Any, op: str, right: Any) -> bool:
    if op in ("==", "!="):
        ln, rn = _number(left), _number(right)
        equal = ln == rn if ln is not None and rn is not None else _norm(left) == _norm(right)
        return equal if op == "==" else not equal
    ln, rn = _number(left), _number(right)
    if ln is None or rn is None:
        return False
    return {">": ln > rn, "<": ln < rn, ">=": ln >= rn, "<=": ln <= rn}[op]


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "approved")
    if isinstance(value, Mapping) and "result" in value:
        return _truthy(value["result"])
    return bool(value)
