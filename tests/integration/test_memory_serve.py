"""Conversation memory through a real `aofd serve`: signed Slack Events API messages, the loopback
Messages API, the daemon's state dir, its admin API and `aofctl memory`.

Two Slack apps (two triggers) post the same channel and thread to two bindings under two Contexts:
the second message of the prod thread sees the first answer; the same thread under staging does
not; `aofctl memory show` prints the prod conversation, and `aofctl memory clear` (named token)
forgets it, audited as `memory.cleared` in prod's log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness
from tests.runtime.fakes import platforms, signing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SECRETS = {"slack-prod": "prod-signing-secret-0123", "slack-staging": "staging-signing-secret-0123"}
OPS_TOKEN = "ops-admin-token-0123456789abcdefghij"
CHANNEL = "COPS"
CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {{name: {name}}}
spec:
  env: {{DB_PASSWORD: "{password}"}}
"""
AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {name: helper}
spec:
  model: anthropic:claude-test
  instructions: "Answer briefly."
"""


def trigger(name: str) -> str:
    return f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: {name}}}
spec:
  type: Slack
  config: {{bot_token: "xoxb-{name}", signing_secret: "{SECRETS[name]}"}}
"""


def binding(name: str, context: str, trigger_name: str) -> str:
    return f"""\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {{name: {name}}}
spec:
  agent: {{name: helper}}
  context: {{name: {context}}}
  trigger: {{name: {trigger_name}}}
"""


def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Each request is answered with the number of messages it held."""
    return [{"type": "text", "text": f"nginx is OOMKilled (seen {len(body.get('messages') or [])})"}]


def say(daemon: harness.DaemonProcess, trigger_name: str, text: str, ts: str, thread: str = "") -> None:
    event = {"type": "message", "user": "U1", "text": text, "channel": CHANNEL, "ts": ts}
    if thread:
        event["thread_ts"] = thread
    envelope = {"type": "event_callback", "team_id": "T1", "event_id": f"Ev{ts}", "event": event}
    body = json.dumps(envelope).encode()
    headers = {
        **signing.slack_headers(SECRETS[trigger_name], body, int(time.time())),
        "Content-Type": "application/json",
    }
    status, _ = daemon.post(f"/hooks/slack/{trigger_name}", body, which="listen", headers=headers)
    assert status == 200


def audit(audit_dir: Path, context: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for segment in sorted((audit_dir / context).glob("audit-*.jsonl"))
        for line in segment.read_text().split("\n")[:-1]
        if line
    ]


def finished(audit_dir: Path, context: str) -> int:
    return sum(1 for r in audit(audit_dir, context) if r["event"]["action"] == "agent.run.finished")


def test_a_thread_follow_up_sees_the_first_answer_only_in_its_own_context(tmp_path: Path) -> None:
    repo = harness.write_tree(
        tmp_path / "repo",
        {
            "contexts/prod.yaml": CONTEXT.format(name="prod", password="prod-db-pass-4711"),
            "contexts/staging.yaml": CONTEXT.format(name="staging", password="staging-db-pass-4712"),
            "agents/helper.yaml": AGENT,
            "triggers/slack-prod.yaml": trigger("slack-prod"),
            "triggers/slack-staging.yaml": trigger("slack-staging"),
            "bindings/prod.yaml": binding("prod-bot", "prod", "slack-prod"),
            "bindings/staging.yaml": binding("staging-bot", "staging", "slack-staging"),
        },
    )
    token = tmp_path / "ops-token"
    token.write_text(OPS_TOKEN + "\n")
    audit_dir = tmp_path / "audit"
    slack = platforms.FakeSlack(channels={CHANNEL: "ops"})
    with fakes.serve_in_thread(slack), fakes.anthropic_server(responder=answer) as model:
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "admin_api": {"tokens": [{"name": "ops", "token_file": str(token)}]},
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(audit_dir),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "platforms": {"slack_api_url": slack.api_url},
                }
            )
        )
        env = {"ANTHROPIC_API_KEY": "test-key"}
        with harness.run_daemon(
            "--config", str(config), cwd=tmp_path, state_dir=tmp_path / "state", env=env
        ) as daemon:
            daemon.wait_ready()
            say(
                daemon,
                "slack-prod",
                "why is nginx down? the password is prod-db-pass-4711",
                "1800000000.000001",
            )
            daemon.wait_for(lambda: finished(audit_dir, "prod") == 1, what="the first run")
            say(daemon, "slack-prod", "what now?", "1800000000.000002", thread="1800000000.000001")
            daemon.wait_for(lambda: finished(audit_dir, "prod") == 2, what="the follow-up")
            say(daemon, "slack-staging", "what now?", "1800000000.000003", thread="1800000000.000001")
            daemon.wait_for(lambda: finished(audit_dir, "staging") == 1, what="the staging run")

            first, follow, other = (r["messages"] for r in model.requests)
            assert len(first) == 1
            assert [m["role"] for m in follow] == ["user", "assistant", "user"]
            assert follow[0]["content"] == "why is nginx down? the password is [REDACTED]"
            assert follow[1]["content"] == "nginx is OOMKilled (seen 1)"
            assert follow[2]["content"] == "what now?"
            assert other == [{"role": "user", "content": "what now?"}]  # staging: a conversation of its own

            stored = list((tmp_path / "state" / "memory" / "prod").glob("*.json"))
            assert len(stored) == 1
            text = stored[0].read_text()
            assert "prod-db-pass-4711" not in text  # the Context's env value, redacted before it was stored
            assert not (tmp_path / "state" / "memory" / "staging" / stored[0].name).exists()

            where = ["--context", "prod", "--binding", "prod-bot", "--thread", f"{CHANNEL}/1800000000.000001"]
            admin = ["--admin", daemon.endpoints["admin"], "--token-file", str(token)]
            shown = aofctl("memory", "show", *where, *admin)
            assert shown.returncode == 0, shown.stderr
            assert "user: why is nginx down? the password is [REDACTED]" in shown.stdout
            assert "user: what now?" in shown.stdout
            cleared = aofctl("memory", "clear", *where, *admin)
            assert cleared.returncode == 0, cleared.stderr
            assert not list((tmp_path / "state" / "memory" / "prod").glob("*.json"))
            assert aofctl("memory", "show", *where, *admin).returncode == 4
            [record] = [r for r in audit(audit_dir, "prod") if r["event"]["action"] == "memory.cleared"]
            assert record["user"]["id"] == "admin:ops"
            assert daemon.stop() == 0


def aofctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
