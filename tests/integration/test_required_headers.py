"""A real `aofd serve` process: `required_headers: {X-Api-Key: ${WEBHOOK_APIKEY}}` is compared
against the variable's value from the daemon's environment, never against the literal text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, binding
from tests.integration.test_revision_whole import write

pytestmark = pytest.mark.slow

API_KEY = "k-7f3a9c-integration"
TRIGGER = """\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {name: hook}
spec:
  type: HTTP
  config:
    required_headers:
      X-Api-Key: "${WEBHOOK_APIKEY}"
      X-Team: sre
"""


def test_required_header_value_comes_from_the_environment(tmp_path: Path) -> None:
    """With WEBHOOK_APIKEY set, the right key is accepted, the literal `${WEBHOOK_APIKEY}` is refused
    (403), a missing header is refused (401), and the literal header value `sre` still counts."""
    repo = tmp_path / "repo"
    write(
        repo,
        {
            "contexts/prod.yaml": CONTEXT,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    body = json.dumps({"text": "hello", "user": {"id": "U1"}}).encode()
    with (
        fakes.anthropic_server() as model,
        harness.run_daemon(
            str(repo),
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            cwd=tmp_path,
            state_dir=repo / ".aofd" / "state",
            env={"ANTHROPIC_BASE_URL": fakes.url(model), "WEBHOOK_APIKEY": API_KEY},
        ) as daemon,
    ):
        daemon.wait_ready()

        def send(key: str | None, team: str = "sre", delivery: str = "") -> int:
            headers = {"Content-Type": "application/json", "X-Team": team, "X-Aofd-Delivery": delivery}
            if key is not None:
                headers["X-Api-Key"] = key
            return daemon.post("/hooks/http/hook", body, which="listen", headers=headers)[0]

        daemon.wait_for(lambda: send("probe", delivery="probe") == 403, what="the listener")
        literal = send("${WEBHOOK_APIKEY}", delivery="d1")
        missing = send(None, delivery="d2")
        wrong_team = send(API_KEY, team="dev", delivery="d3")
        right = send(API_KEY, delivery="d4")
        log = daemon.log_text()

    assert (403, 401, 403, 202) == (literal, missing, wrong_team, right)
    assert API_KEY not in log
