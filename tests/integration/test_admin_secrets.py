"""A real `aofd serve` with an admin token and secrets in its resources: the API needs the
token, and neither the API, `aofctl describe` nor the log ever holds a secret value, even for
a Context whose kubeconfig is `${SLACK_BOT_TOKEN}` and is Stalled because of it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import AGENT, CONTEXT, FLOW, binding
from tests.integration.test_required_headers import TRIGGER
from tests.integration.test_revision_whole import write

pytestmark = pytest.mark.slow

TOKEN = "integration-admin-token-5f0c2e9a"
BOT = "xoxb-secret-9d8c7b6a5f4e"
API_KEY = "k-2b4d6f-header-value"
LEAKY = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: leaky}
spec:
  namespace: default
  kubeconfig: ${SLACK_BOT_TOKEN}
"""


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_admin_api_needs_the_token_and_shows_no_secret(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write(
        repo,
        {
            "contexts/prod.yaml": CONTEXT,
            "contexts/leaky.yaml": LEAKY,
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
    )
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    state_dir = repo / ".aofd" / "state"
    with (
        fakes.anthropic_server() as model,
        harness.run_daemon(
            str(repo),
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            str(token_file),
            cwd=tmp_path,
            state_dir=state_dir,
            env={"ANTHROPIC_BASE_URL": fakes.url(model), "SLACK_BOT_TOKEN": BOT, "WEBHOOK_APIKEY": API_KEY},
        ) as daemon,
    ):
        daemon.wait_ready()
        base = daemon.url("admin", "")
        assert fetch(base + "/healthz")[0] == 200
        assert fetch(base + "/api/v1/status")[0] == 401
        assert fetch(base + "/api/v1/status", "wrong-token-0123456789")[0] == 401

        def stalled() -> str:
            status, text = fetch(base + "/api/v1/resources/Context/leaky", TOKEN)
            item = json.loads(text)["items"][0] if status == 200 else {}
            return str((item.get("status") or {}).get("message", ""))

        message = daemon.wait_for(lambda: "kubeconfig" in stalled() and stalled(), what="leaky stalled")
        assert "${SLACK_BOT_TOKEN}" in message
        shown = [message]
        for path in ("/api/v1/status", "/api/v1/inventory", "/api/v1/resources", "/metrics"):
            status, text = fetch(base + path, TOKEN)
            assert status == 200
            shown.append(text)
        for kind, name in (("Context", "leaky"), ("Trigger", "hook")):
            shown.append(fetch(base + f"/api/v1/resources/{kind}/{name}", TOKEN)[1])
            described = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "aofd.cli.aofctl_main",
                    "describe",
                    kind,
                    name,
                    "--admin",
                    daemon.endpoints["admin"],
                    "--token-file",
                    str(token_file),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert described.returncode == 0, described.stderr
            shown.append(described.stdout)
        shown.append(daemon.log_text())
        everything = "\n".join(shown)
        assert BOT not in everything
        assert API_KEY not in everything
        assert TOKEN not in everything
        key = state_dir / "digest-key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().hex() not in everything
