"""A revision applies whole or not at all: what `aofctl validate` refuses, the daemon refuses too, whole,
and it keeps serving the last good revision; `aofctl status` names the same errors at file:line:col."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, TRIGGER, binding

pytestmark = pytest.mark.slow

SCHEDULE = """\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {name: nightly}
spec:
  type: Schedule
  config:
    cron: "0 3 * * *"
    timezone: Europe/Paris
"""
NIGHTLY_BINDING = """\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {name: nightly-report}
spec:
  flow: {name: echo-flow}
  context: {name: prod}
  trigger: {name: nightly}
"""
BROKEN_CONTEXT = (
    CONTEXT
    + """\
  security:
    allowed_commands:
      - "kubectl get ;"
"""
)
BROKEN_SCHEDULE = SCHEDULE.replace('"0 3 * * *"', '"61 25 * * *"').replace("Europe/Paris", "Mars/Olympus")


aofctl = harness.aofctl


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(target)  # one rename, as a git checkout does


ERROR_LINE = re.compile(r"(contexts/prod\.yaml|triggers/nightly\.yaml):(\d+):(\d+): error: (.*)")


def errors_in(text: str) -> list[tuple[str, int, int]]:
    """`(file, line, col)` of every error line in `text`, in order."""
    return [(m[1], int(m[2]), int(m[3])) for m in ERROR_LINE.finditer(text)]


EXPECTED = [
    ("contexts/prod.yaml", 9, 9),  # the pattern
    ("triggers/nightly.yaml", 7, 11),  # cron
    ("triggers/nightly.yaml", 8, 15),  # timezone
]


def test_a_revision_with_static_errors_is_refused_whole(tmp_path: Path) -> None:
    """A Context pattern, a cron expression and a time zone are errors for validate at their lines; the
    daemon refuses that revision whole (an agent edit in the same revision does not apply either), keeps
    serving the good one with the same listeners, and its status names the same three errors."""
    repo = tmp_path / "repo"
    good = {
        "contexts/prod.yaml": CONTEXT,
        "agents/echo.yaml": AGENT,
        "flows/echo.yaml": FLOW,
        "triggers/hook.yaml": TRIGGER,
        "triggers/nightly.yaml": SCHEDULE,
        "bindings/b1.yaml": binding("b1"),
        "bindings/nightly.yaml": NIGHTLY_BINDING,
    }
    write(repo, good)
    with harness.serve_directory(repo, tmp_path) as (daemon, admin):

        def status() -> dict[str, Any]:
            result: dict[str, Any] = json.loads(aofctl("status", "-o", "json", "--admin", admin).stdout)
            return result

        def agent_digest() -> str:
            got = json.loads(aofctl("get", "agent", "echo", "-o", "json", "--admin", admin).stdout)
            return str(got["digest"])

        daemon.wait_for(lambda: status()["ready"], what="ready")
        before, digest_before = status(), agent_digest()
        assert {"hook", "nightly"} == set(before["listeners"])

        write(
            repo,
            {
                "contexts/prod.yaml": BROKEN_CONTEXT,
                "triggers/nightly.yaml": BROKEN_SCHEDULE,
                "agents/echo.yaml": AGENT.replace("Answer briefly.", "Answer at length."),
            },
        )
        validated = aofctl("validate", str(repo))
        rejected = daemon.wait_for(lambda: status()["lastRejected"], what="the revision to be rejected")
        after = status()
        shown = aofctl("status", "--admin", admin).stdout
        digest_after = agent_digest()

    assert 1 == validated.returncode, validated.stdout
    assert EXPECTED == errors_in(validated.stdout)
    assert EXPECTED == errors_in("\n".join(rejected["errors"]))
    assert EXPECTED == errors_in(shown)
    assert before["appliedRevision"] == after["appliedRevision"]
    assert before["listeners"] == after["listeners"]
    assert digest_before == digest_after
