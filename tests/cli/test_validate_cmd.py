"""`aofctl validate` run in-process: output format, summary line, exit codes 0/1/2, JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from aofd.cli import aofctl_main, graph_cmd, schema_cmd, validate_cmd

AGENT = (
    "apiVersion: aof.dev/v1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n"
    "  model: anthropic:claude-sonnet-4\n"
)
FLOW = (
    "apiVersion: aof.dev/v1\nkind: AgentFlow\nmetadata:\n  name: f\nspec:\n  agents:\n    - name: {agent}\n"
)
CONTEXT = (
    "apiVersion: aof.dev/v1\nkind: Context\nmetadata:\n  name: prod\nspec:\n"
    "  kubeconfig: ${KUBECONFIG_NOPE_X}\n"
)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def aofctl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """`aofctl ARGS...` in-process with the offline commands registered; returns (code, out, err)."""
    modules = tuple(aofctl_main.COMMAND_MODULES)
    for module in (validate_cmd, graph_cmd, schema_cmd):
        if module not in modules:
            modules += (module,)
    monkeypatch.setattr(aofctl_main, "COMMAND_MODULES", modules)
    monkeypatch.delenv("KUBECONFIG_NOPE_X", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = aofctl_main.main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_valid_tree_exits_zero(aofctl: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid tree prints only the summary line and exits 0."""
    write(
        tmp_path / "repo", {"agents/a.yaml": AGENT.format(name="a"), "flows/f.yaml": FLOW.format(agent="a")}
    )
    monkeypatch.chdir(tmp_path)
    assert (0, "2 resources in 2 files: 0 errors, 0 warnings\n", "") == aofctl("validate", "repo")


def test_invalid_tree_exits_one_with_file_line_col(
    aofctl: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors print as FILE:LINE:COL with the path as typed, then the summary; exit 1."""
    write(
        tmp_path / "repo",
        {"agents/a.yaml": AGENT.format(name="k8s-ops"), "f.yaml": FLOW.format(agent="k8s-opz")},
    )
    monkeypatch.chdir(tmp_path)
    expected_out = (
        "./repo/f.yaml:7:13: error: AgentFlow/f: spec.agents[0].name refers to Agent 'k8s-opz', "
        "which does not exist; did you mean 'k8s-ops'?\n"
        "2 resources in 2 files: 1 error, 0 warnings\n"
    )
    assert (1, expected_out, "") == aofctl("validate", "./repo")


@pytest.mark.parametrize(
    ("flags", "expected_code", "severity"), [((), 0, "warning"), (("--env-strict",), 1, "error")]
)
def test_undefined_variable_is_a_warning_unless_env_strict(
    aofctl: Run, tmp_path: Path, flags: tuple[str, ...], expected_code: int, severity: str
) -> None:
    """An undefined ${VAR} warns (exit 0), and with --env-strict it is an error (exit 1)."""
    path = tmp_path / "ctx.yaml"
    path.write_text(CONTEXT, encoding="utf-8")
    code, out, _ = aofctl("validate", str(path), *flags)
    expected_line = (
        f"{path}:6:15: {severity}: Context/prod: spec.kubeconfig: undefined variable KUBECONFIG_NOPE_X: "
        "set it in the daemon's environment, or write ${KUBECONFIG_NOPE_X:-default}"
    )
    assert (expected_code, expected_line) == (code, out.splitlines()[0])


def test_single_file_and_json_output(aofctl: Run, tmp_path: Path) -> None:
    """`-o json` gives validity, counts and the issues as objects."""
    path = tmp_path / "f.yaml"
    path.write_text(FLOW.format(agent="ghost"), encoding="utf-8")
    code, out, _ = aofctl("validate", "-o", "json", str(path))
    data = json.loads(out)
    assert (1, False, 1, 1, 1, "ref-missing", str(path)) == (
        code,
        data["valid"],
        data["resources"],
        data["files"],
        data["errors"],
        data["issues"][0]["code"],
        data["issues"][0]["path"],
    )


@pytest.mark.parametrize(
    "args",
    [
        ("validate",),
        ("validate", "/definitely/not/here"),
        ("validate", "-o", "xml", "."),
        ("validate", "--bogus", "."),
    ],
)
def test_usage_errors_exit_two(aofctl: Run, args: tuple[str, ...]) -> None:
    """No PATH, a missing PATH, or a bad flag is a usage error: exit 2."""
    assert 2 == aofctl(*args)[0]


def test_strict_turns_unknown_keys_into_errors(aofctl: Run, tmp_path: Path) -> None:
    """An unknown key in an Agent warns, and is an error with --strict."""
    path = tmp_path / "a.yaml"
    path.write_text(AGENT.format(name="a") + "  modle: typo\n", encoding="utf-8")
    assert (0, 1) == (aofctl("validate", str(path))[0], aofctl("validate", "--strict", str(path))[0])


def test_schema_prints_json(aofctl: Run) -> None:
    """`aofctl schema` prints a JSON Schema document."""
    code, out, _ = aofctl("schema")
    assert (0, True) == (code, "$schema" in json.loads(out))


def test_approval_settings_that_cannot_hold_are_warnings(aofctl: Run, tmp_path: Path) -> None:
    """A Context whose only approver can never approve their own requests validates (exit 0) with
    a warning at the setting that says what happens and how to fix it."""
    path = tmp_path / "ctx.yaml"
    path.write_text(
        "apiVersion: aof.dev/v1\nkind: Context\nmetadata:\n  name: prod\nspec:\n  approval:\n"
        "    required: true\n    allowed_users: [U1]\n",
        encoding="utf-8",
    )
    code, out, _ = aofctl("validate", str(path))
    assert (0, 2) == (code, len(out.splitlines())), out
    assert out.startswith(
        f"{path}:8:20: warning: Context/prod: approval.min_approvers is 1 and approval.allowed_users "
        "names 1 approver, and allow_self_approval is false: requests made by one of the approvers "
        "cannot be granted; add an approver"
    ), out
    assert out.endswith("1 resource in 1 file: 0 errors, 1 warning\n"), out
