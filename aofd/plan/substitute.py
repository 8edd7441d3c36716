"""`${VAR}` substitution in secret-bearing strings (DESIGN.md section 2, RELIABILITY.md section 4.4); pure.

This module owns the expansion rules, for one string at a time:

- `${NAME}` is replaced by the variable's value; `NAME` must match `[A-Z_][A-Z0-9_]{0,63}`.
- `${NAME:-default}` uses `default` when `NAME` is undefined (upstream's example contexts use it).
- `$${X}` is the escape: it becomes the literal text `${X}`.
- a bare `$NAME` (and any other lone `$`) is left as it is, so secrets containing `$` survive.
- nested `${A${B}}`, an unterminated `${`, an empty or malformed name are errors.
- a name outside the allow-list (glob patterns such as `KUBECONFIG*`) is an error and is never
  looked up: "not allowed by the daemon's substitution allow-list".
- an undefined name is an error for the daemon and a warning for `aofctl validate` (then the
  text is left as written); the admin API's dry run ("ignore") looks no variable up and says
  nothing about which exist, so a posted tree cannot probe the daemon's environment.

Which fields are secret-bearing is decided by the planner (`aofd.plan.desired`); every
other string, prompts and `${event.text}` templates included, is never passed here.
Messages name variables only, never values: a value may be a credential.

Pure: no I/O, no `os.environ`; the caller hands in the variables.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from aofd import errors

NAME_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
"""What a substitutable variable name looks like."""

Undefined = Literal["error", "warning", "ignore"]


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a `${...}` reference: severity, message, code (no position, no value)."""

    severity: errors.Severity
    message: str
    code: str


@dataclasses.dataclass(frozen=True, slots=True)
class Expansion:
    """The result of expanding one string.

    `value` is the expanded text (undefined or rejected references are left as written);
    `names` are the variables the text refers to, in order of appearance (allowed or not).
    """

    value: str
    names: tuple[str, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Where values come from and how strict to be; built once per `build()`."""

    variables: Mapping[str, str]
    allow: tuple[str, ...]
    undefined: Undefined = "error"

    def allows(self, name: str) -> bool:
        return allowed(name, self.allow)


NEVER_SUBSTITUTED: frozenset[str] = frozenset(
    {
        "AOFD_ADMIN_TOKEN",
        "ADMIN_TOKEN",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
    }
)
"""The daemon's own credentials: never put into a resource, whatever the allow-list says
(`AOFD_*` is on the default list; a Trigger secret `${AOFD_ADMIN_TOKEN}` would copy the admin
token into a webhook check that anyone who can push a Trigger can test). `ADMIN_TOKEN` is the
name the systemd credential `admin-token` would be offered under."""


def allowed(name: str, allow: Sequence[str]) -> bool:
    """True when `name` matches one of the allow-list globs (case-sensitive) and is not one of
    the daemon's own credentials (`NEVER_SUBSTITUTED`)."""
    if name in NEVER_SUBSTITUTED:
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)


def references(text: str) -> tuple[str, ...]:
    """The variable names `${NAME}` / `${NAME:-x}` in `text` would read (escapes excluded)."""
    return expand(text, policy=Policy(variables={}, allow=(), undefined="warning")).names


def expand(text: str, *, policy: Policy) -> Expansion:
    """Expand the `${...}` references of `text` under `policy`; never raises, never logs."""
    if "$" not in text:
        return Expansion(text, (), ())
    out: list[str] = []
    names: list[str] = []
    problems: list[Problem] = []
    i = 0
    n = len(text)
    while i < n:
        dollar = text.find("$", i)
        if dollar < 0:
            out.append(text[i:])
            break
        out.append(text[i:dollar])
        if text.startswith("$${", dollar):
            # The escape: `$${X}` is the literal `${X}`, nothing inside is looked at.
            end = text.find("}", dollar + 3)
            stop = n if end < 0 else end + 1
            out.append(text[dollar + 1 : stop])
            i = stop
            continue
        if not text.startswith("${", dollar):
            out.append("$")  # a bare `$NAME` or a lone `$`: literal
            i = dollar + 1
            continue
        end = text.find("}", dollar + 2)
        if end < 0:
            problems.append(
                Problem("error", "unterminated '${': a reference must end with '}'", "subst-syntax")
            )
            out.append(text[dollar:])
            break
        body = text[dollar + 2 : end]
        original = text[dollar : end + 1]
        i = end + 1
        if "${" in body or "{" in body:
            problems.append(Problem("error", "nested '${...}' references are not supported", "subst-nested"))
            # Skip the rest of the nested construct: up to the brace that closes the outer one.
            depth = body.count("{") - body.count("}")
            while depth > 0 and i < n:
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                i += 1
            out.append(text[dollar:i])
            continue
        name, has_default, default = body.partition(":-")
        if not NAME_PATTERN.fullmatch(name):
            problems.append(
                Problem(
                    "error",
                    f"{_quote_name(name)} is not a variable name that can be substituted: "
                    "names are [A-Z_][A-Z0-9_]{0,63}, with an optional ':-default'",
                    "subst-name",
                )
            )
            out.append(original)
            continue
        names.append(name)
        if not policy.allows(name):
            problems.append(
                Problem(
                    "error",
                    f"variable {name} is not allowed by the daemon's substitution allow-list "
                    f"({', '.join(policy.allow) or 'empty'})",
                    "subst-not-allowed",
                )
            )
            out.append(original)
            continue
        value = policy.variables.get(name)
        if value is not None:
            out.append(value)
        elif has_default:
            out.append(default)
        elif policy.undefined == "ignore":
            out.append(original)
        else:
            problems.append(
                Problem(
                    policy.undefined,
                    f"undefined variable {name}: set it in the daemon's environment, "
                    f"or write ${{{name}:-default}}",
                    "subst-undefined",
                )
            )
            out.append(original)
    return Expansion("".join(out), tuple(names), tuple(problems))


def _quote_name(name: str) -> str:
    # Show at most a short prefix of what was written: it is not a secret, but keep messages small.
    shown = name if len(name) <= 40 else name[:40] + "..."
    return repr(shown) if shown else "an empty name"
