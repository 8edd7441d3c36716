"""`${VAR}` expansion rules (DESIGN.md section 2, RELIABILITY.md section 4.4 and rows 12-13)."""

from __future__ import annotations

import pytest

from aofd.plan import substitute

ALLOW = ("KUBECONFIG*", "AOF_*", "WEBHOOK_*")
VARS = {"KUBECONFIG_PROD": "/etc/k/prod", "AOF_X": "x", "AWS_SECRET_ACCESS_KEY": "hunter2"}


@pytest.mark.parametrize(
    ("text", "expected_value", "expected_codes"),
    [
        ("plain text", "plain text", []),
        ("${KUBECONFIG_PROD}", "/etc/k/prod", []),
        ("a/${AOF_X}/b", "a/x/b", []),
        ("$${KUBECONFIG_PROD}", "${KUBECONFIG_PROD}", []),
        ("$BARE and $ alone", "$BARE and $ alone", []),
        ("${AOF_MISSING:-fallback}", "fallback", []),
        ("${KUBECONFIG_PROD:-unused}", "/etc/k/prod", []),
        ("${AOF_MISSING}", "${AOF_MISSING}", ["subst-undefined"]),
        ("${A${B}}", "${A${B}}", ["subst-nested"]),
        ("${AOF_X", "${AOF_X", ["subst-syntax"]),
        ("${lower}", "${lower}", ["subst-name"]),
        ("${}", "${}", ["subst-name"]),
        ("${AWS_SECRET_ACCESS_KEY}", "${AWS_SECRET_ACCESS_KEY}", ["subst-not-allowed"]),
        ("${KUBECONFIG_PROD}:${AOF_X}", "/etc/k/prod:x", []),
    ],
)
def test_expand(text: str, expected_value: str, expected_codes: list[str]) -> None:
    """Each form expands, stays literal, or is reported exactly as the rules say."""
    result = substitute.expand(text, policy=substitute.Policy(variables=VARS, allow=ALLOW))
    assert (expected_value, expected_codes) == (result.value, [p.code for p in result.problems])


@pytest.mark.parametrize(("undefined", "expected"), [("error", "error"), ("warning", "warning")])
def test_undefined_severity_follows_the_policy(undefined: substitute.Undefined, expected: str) -> None:
    """An undefined variable is an error for the daemon and a warning for validate."""
    policy = substitute.Policy(variables={}, allow=ALLOW, undefined=undefined)
    result = substitute.expand("${AOF_NOPE}", policy=policy)
    assert [expected] == [p.severity for p in result.problems]


class RecordingEnv(dict[str, str]):
    """A variables mapping that records every name looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: list[str] = []

    def get(self, key: str, default: object = None) -> str | None:  # type: ignore[override]
        self.read.append(key)
        return super().get(key)

    def __getitem__(self, key: str) -> str:
        self.read.append(key)
        return super().__getitem__(key)


def test_variable_outside_allow_list_is_never_read_and_its_value_never_shown() -> None:
    """A name the allow-list does not permit is reported by name and never looked up."""
    env = RecordingEnv({"AWS_SECRET_ACCESS_KEY": "hunter2"})
    result = substitute.expand(
        "${AWS_SECRET_ACCESS_KEY}", policy=substitute.Policy(variables=env, allow=ALLOW)
    )
    messages = " ".join(p.message for p in result.problems)
    assert ([], True, False) == (
        env.read,
        "not allowed by the daemon's substitution allow-list" in messages,
        "hunter2" in messages,
    )


def test_references_lists_names_but_not_escapes() -> None:
    """`references` names what a text would read, skipping `$${X}` escapes."""
    assert ("A_B", "C") == substitute.references("${A_B} $${ESCAPED} ${C:-d} $BARE")


@pytest.mark.parametrize("name", ["AOFD_ADMIN_TOKEN", "ADMIN_TOKEN", "ANTHROPIC_API_KEY"])
def test_the_daemons_own_credentials_are_never_substituted(name: str) -> None:
    """`AOFD_*` (on the default list) or `*` must not copy the admin token or a model key into a resource."""
    env = RecordingEnv({name: "s3cret-value"})
    result = substitute.expand(f"${{{name}}}", policy=substitute.Policy(variables=env, allow=("*",)))
    assert env.read == []
    assert "s3cret-value" not in result.value
    assert not substitute.allowed(name, ("*", "AOFD_*"))
