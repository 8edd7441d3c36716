"""The seed's Example 2 through a real `aofd serve`: the same Agent `k8s-ops` in `prod-strict`
(approval for `kubectl delete|scale|apply`, approver U015SRE_LEAD) and `staging-permissive` (none).

One daemon serves every scenario; each starts with a signed Slack Events API message in its own
thread (or a Telegram webhook update), the loopback model answers with the `kubectl` tool call
the message names (`RUN[delete pod web-1]`), and the approvals are clicked as Slack sends them
(signed `block_actions` payloads) or decided with `aofctl approve`. Every step is checked in the
Slack and Telegram calls the daemon made, in the fake kubectl's record and in the audit log, and
`aofctl audit verify` passes on both Contexts' logs at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.audit import ecs_check
from tests.integration import fakes, harness
from tests.runtime.fakes import platforms, signing
from tests.runtime.test_command_lifetime import install_fake

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SIGNING_SECRET = "example2-slack-signing-secret"
BOT_TOKEN = "xoxb-example2-bot-token"
TELEGRAM_TOKEN = "123456:example2-telegram-token"
TELEGRAM_SECRET = "example2-telegram-secret-token"
OPS_TOKEN = "ops-admin-token-0123456789abcdefghij"
UNNAMED_TOKEN = "unnamed-admin-token-0123456789abcdef"

LEAD = "U015SRE_LEAD"
DEV = "U015VBH1GTZ"
OUTSIDER = "U0OUTSIDER"
PROD_CHANNEL = "CPROD"
STAGING_CHANNEL = "CSTAGING"
NOBOT_CHANNEL = "CNOBOT"
TG_APPROVER = 4242
TG_DEV = 5151
TG_OUTSIDER = 7777
TG_CHAT = -100200300

APPROVAL_TIMEOUT = 6
"""prod-strict's `approval.timeout_seconds`: longer than its run deadline."""
RUN_DEADLINE = 2
"""prod-strict's `limits.max_execution_time_seconds`."""

PROD = """\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: prod-strict
spec:
  kubeconfig: ${{KUBECONFIG_PROD}}
  env: {{FAKE_RECORD: "{record}"}}
  limits: {{max_execution_time_seconds: {deadline}, max_requests_per_hour: 1000}}
  approval:
    required: true
    allowed_users:
      - U015SRE_LEAD
      - admin:ops
      - telegram:4242
    require_for:
      - kubectl delete
      - kubectl scale
      - kubectl apply
    timeout_seconds: {timeout}
"""
STAGING = """\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: staging-permissive
spec:
  kubeconfig: ${{KUBECONFIG_STAGING}}
  approval:
    required: false
  env:
    ALLOW_DELETE: "true"
    FAKE_RECORD: "{record}"
"""
AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata:
  name: k8s-ops
spec:
  model: anthropic:claude-test
  instructions: "You are a Kubernetes ops assistant."
  tools: [kubectl]
"""
SLACK_TRIGGER = f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: slack-bot}}
spec:
  type: Slack
  config: {{bot_token: "{BOT_TOKEN}", signing_secret: "{SIGNING_SECRET}"}}
"""
TELEGRAM_TRIGGER = f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: telegram-bot}}
spec:
  type: Telegram
  config: {{bot_token: "{TELEGRAM_TOKEN}", secret_token: "{TELEGRAM_SECRET}", mode: webhook}}
"""

APPROVED_RUN = [
    "agent.run.started",
    "command.requested",
    "approval.requested",
    "approval.granted",
    "command.started",
    "command.finished",
    "agent.run.finished",
]
"""The audit actions of a run whose command was approved and ran."""


def binding(name: str, context: str, trigger: str, channels: tuple[str, ...] = ()) -> str:
    match = f"\n  match: {{channels: {json.dumps(list(channels))}}}" if channels else ""
    return f"""\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {{name: {name}}}
spec:
  agent: {{name: k8s-ops}}
  context: {{name: {context}}}
  trigger: {{name: {trigger}}}{match}
"""


def kubeconfig(cluster: str) -> str:
    return f"""\
apiVersion: v1
kind: Config
clusters: [{{name: {cluster}, cluster: {{server: "https://127.0.0.1:1"}}}}]
users: [{{name: ops, user: {{token: not-a-real-token}}}}]
contexts: [{{name: {cluster}, context: {{cluster: {cluster}, user: ops}}}}]
current-context: {cluster}
"""


_RUN = re.compile(r"RUN\[([^\]]*)\]")
_calls = itertools.count(1)


def model(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The loopback model: a `kubectl` tool call with the args the message names (`RUN[get pods]`),
    then, once the tool answered, a final text."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content")
    if isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    ):
        return [{"type": "text", "text": "done"}]
    found = _RUN.search(json.dumps(messages))
    if found is None:
        return None
    args = found.group(1).split()
    return [{"type": "tool_use", "id": f"toolu_{next(_calls)}", "name": "kubectl", "input": {"args": args}}]


@dataclasses.dataclass
class Rig:
    """The running daemon and everything around it, shared by the module's tests."""

    daemon: harness.DaemonProcess
    slack: Slack
    telegram: platforms.FakeTelegram
    tmp: Path
    audit_dir: Path
    records: dict[str, Path]
    kubeconfigs: dict[str, Path]
    tokens: dict[str, Path]
    seq: Iterator[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    # --- Slack ---------------------------------------------------------------------------

    def post_slack(self, payload: dict[str, Any] | None = None, *, form: dict[str, str] | None = None) -> int:
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            kind = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(payload).encode()
            kind = "application/json"
        headers = {**signing.slack_headers(SIGNING_SECRET, body, int(time.time())), "Content-Type": kind}
        status, _ = self.daemon.post("/hooks/slack/slack-bot", body, which="listen", headers=headers)
        return status

    def say(self, user: str, channel: str, text: str) -> str:
        """A person writes `text` in `channel`; the new thread's ts."""
        n = next(self.seq)
        ts = f"1800000000.{n:06d}"
        event = {"type": "message", "user": user, "text": text, "channel": channel, "ts": ts}
        envelope = {"type": "event_callback", "team_id": "T1", "event_id": f"Ev{n:08d}", "event": event}
        assert self.post_slack(envelope) == 200
        return ts

    def click(self, user: str, prompt: dict[str, Any], action: str) -> None:
        """`user` clicks the prompt's button `action` (`aofd_approve` / `aofd_deny`)."""
        n = next(self.seq)
        [value] = {b["value"] for b in buttons(prompt)}
        payload = {
            "type": "block_actions",
            "trigger_id": f"trig.{n}",
            "team": {"id": "T1"},
            "user": {"id": user, "username": user.lower(), "team_id": "T1"},
            "channel": {"id": prompt["channel"]},
            "container": {"type": "message", "channel_id": prompt["channel"], "message_ts": prompt["_ts"]},
            "message": {"ts": prompt["_ts"], "thread_ts": prompt["thread_ts"]},
            "actions": [
                {"action_id": action, "block_id": "aofd_approval", "value": value, "action_ts": f"{n}.0"}
            ],
        }
        assert self.post_slack(form={"payload": json.dumps(payload)}) == 200

    def calls(self, method: str, **fields: Any) -> list[dict[str, Any]]:
        return [c for c in self.slack.calls(method) if all(c.get(k) == v for k, v in fields.items())]

    def prompt(self, thread: str) -> dict[str, Any]:
        """The approval prompt posted in `thread` (with `_ts`, its own ts), once it is there."""

        def find() -> dict[str, Any] | None:
            for method, fields in list(self.slack.requests):
                if method == "chat.postMessage" and fields.get("thread_ts") == thread and buttons(fields):
                    return fields
            return None

        found: dict[str, Any] = self.daemon.wait_for(find, what=f"the approval prompt in {thread}")
        return found

    # --- the audit log, the fake kubectl ----------------------------------------------------

    def audit(self, context: str) -> list[dict[str, Any]]:
        """The Context's audit records so far, in order."""
        return [
            record
            for segment in sorted((self.audit_dir / context).glob("audit-*.jsonl"))
            for record in complete_lines(segment)
        ]

    def run_of(self, context: str, request_id: str) -> list[dict[str, Any]]:
        """The audit records of the run that asked for approval `request_id`, in order."""
        lines = self.audit(context)
        runs = {r["trace"]["id"] for r in lines if approval_id(r) == request_id and "trace" in r}
        assert len(runs) == 1, (request_id, runs)
        [run] = runs
        return [r for r in lines if r.get("trace", {}).get("id") == run]

    def finished_with(self, context: str, word: str) -> list[dict[str, Any]]:
        """The records of the run whose command held `word`, once it has finished ([] before)."""
        lines = self.audit(context)
        trace = trace_of(lines, word)
        run = [r for r in lines if trace and r.get("trace", {}).get("id") == trace]
        ends = [n for n, r in enumerate(run) if r["event"]["action"] == "agent.run.finished"]
        return run[: ends[0] + 1] if ends else []

    def finished(self, context: str, request_id: str) -> list[dict[str, Any]]:
        """The run's records up to `agent.run.finished`, once it has finished ([] before)."""
        run = self.run_of(context, request_id)
        ends = [n for n, r in enumerate(run) if r["event"]["action"] == "agent.run.finished"]
        return run[: ends[0] + 1] if ends else []

    def settled(self, prompt: dict[str, Any]) -> str:
        """Once the prompt was replaced (same channel and ts, no buttons) and the thread told the
        same text: that text."""
        [update] = self.daemon.wait_for(
            lambda: self.calls("chat.update", channel=prompt["channel"], ts=prompt["_ts"]),
            what="the prompt updated",
        )
        assert buttons(update) == []
        assert not [b for b in update["blocks"] if b.get("type") == "actions"]
        text = str(update["text"])
        self.daemon.wait_for(
            lambda: self.calls("chat.postMessage", thread_ts=prompt["thread_ts"], text=text),
            what="the thread told the outcome",
        )
        return text

    def ran(self, context: str) -> list[dict[str, Any]]:
        """What the fake kubectl recorded of its runs in `context`."""
        return complete_lines(self.records[context])

    # --- aofctl, Telegram, the daemon's log --------------------------------------------------

    def aofctl(self, *args: str, who: str = "unnamed") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "aofd.cli.aofctl_main",
                *args,
                "--admin",
                self.daemon.endpoints["admin"],
                "--token-file",
                str(self.tokens[who]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def pending(self) -> list[dict[str, Any]]:
        """`aofctl approvals -o json`."""
        listed = self.aofctl("approvals", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        return list(json.loads(listed.stdout))

    def telegram_update(self, update: dict[str, Any]) -> int:
        body = json.dumps({"update_id": 1000 + next(self.seq), **update}).encode()
        headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        status, _ = self.daemon.post("/hooks/telegram/telegram-bot", body, which="listen", headers=headers)
        return status

    def daemon_log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.daemon.log_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a file another process appends to (a line still being written is left out)."""
    if not path.exists():
        return []
    *complete, _partial = path.read_text().split("\n")
    return [json.loads(line) for line in complete if line]


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        element
        for block in message.get("blocks") or []
        if block.get("type") == "actions"
        for element in block.get("elements", [])
    ]


class Slack(platforms.FakeSlack):
    """The Slack Web API fake, keeping in each `chat.postMessage` call the `ts` it answered (`_ts`)."""

    async def _api(self, request: web.Request) -> web.Response:
        response = await super()._api(request)
        if request.match_info["method"] == "chat.postMessage":
            # No await since the call was recorded: the last one is this one.
            self.requests[-1][1]["_ts"] = json.loads(response.text or "{}").get("ts")
        return response


def approval_id(record: dict[str, Any]) -> str | None:
    found = record.get("aofd", {}).get("approval", {}).get("id")
    return found if isinstance(found, str) else None


def actions(records: list[dict[str, Any]]) -> list[str]:
    return [r["event"]["action"] for r in records]


def stamp(record: dict[str, Any]) -> float:
    """When an audit record was written (epoch seconds)."""
    return datetime.datetime.fromisoformat(record["@timestamp"].replace("Z", "+00:00")).timestamp()


def trace_of(lines: list[dict[str, Any]], word: str) -> str:
    """The run whose `command.requested` argv holds `word` ('' when none did)."""
    for r in lines:
        if r["event"]["action"] == "command.requested" and word in r.get("process", {}).get("args", []):
            return str(r["trace"]["id"])
    return ""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("example2")
    records = {"prod-strict": tmp / "kubectl-prod.jsonl", "staging-permissive": tmp / "kubectl-staging.jsonl"}
    kubeconfigs = {
        "prod-strict": tmp / "kube" / "prod.yaml",
        "staging-permissive": tmp / "kube" / "staging.yaml",
    }
    for name, where in kubeconfigs.items():
        where.parent.mkdir(exist_ok=True)
        where.write_text(kubeconfig(name))
    repo = tmp / "repo"
    harness.write_tree(
        repo,
        {
            "contexts/prod-strict.yaml": PROD.format(
                record=records["prod-strict"], deadline=RUN_DEADLINE, timeout=APPROVAL_TIMEOUT
            ),
            "contexts/staging-permissive.yaml": STAGING.format(record=records["staging-permissive"]),
            "agents/k8s-ops.yaml": AGENT,
            "triggers/slack-bot.yaml": SLACK_TRIGGER,
            "triggers/telegram-bot.yaml": TELEGRAM_TRIGGER,
            "bindings/prod.yaml": binding("prod", "prod-strict", "slack-bot", (PROD_CHANNEL, NOBOT_CHANNEL)),
            "bindings/staging.yaml": binding(
                "staging", "staging-permissive", "slack-bot", (STAGING_CHANNEL,)
            ),
            "bindings/telegram.yaml": binding("telegram", "prod-strict", "telegram-bot"),
        },
    )
    kubectl = install_fake(tmp / "bin")
    tokens = {"ops": tmp / "tokens" / "ops", "unnamed": tmp / "tokens" / "unnamed"}
    tokens["ops"].parent.mkdir()
    tokens["ops"].write_text(OPS_TOKEN + "\n")
    tokens["unnamed"].write_text(UNNAMED_TOKEN + "\n")
    audit_dir = tmp / "audit"
    slack = Slack(
        channels={PROD_CHANNEL: "prod-ops", STAGING_CHANNEL: "staging-ops"}, not_in_channels={NOBOT_CHANNEL}
    )
    telegram = platforms.FakeTelegram(token=TELEGRAM_TOKEN)
    with (
        fakes.serve_in_thread(slack),
        fakes.serve_in_thread(telegram),
        fakes.anthropic_server(responder=model) as anthropic,
    ):
        config = tmp / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "admin_api": {
                        "token_file": str(tokens["unnamed"]),
                        "tokens": [{"name": "ops", "token_file": str(tokens["ops"])}],
                    },
                    "state_dir": str(tmp / "state"),
                    "audit_dir": str(audit_dir),
                    "models": {"anthropic_base_url": fakes.url(anthropic)},
                    "executables": {"paths": {"kubectl": str(kubectl)}},
                    "platforms": {"slack_api_url": slack.api_url, "telegram_api_url": telegram.url},
                }
            )
        )
        env = {
            "ANTHROPIC_API_KEY": "test-key",
            "KUBECONFIG_PROD": str(kubeconfigs["prod-strict"]),
            "KUBECONFIG_STAGING": str(kubeconfigs["staging-permissive"]),
        }
        with harness.run_daemon("--config", str(config), cwd=tmp, state_dir=tmp / "state", env=env) as daemon:
            daemon.wait_ready()
            rig = Rig(daemon, slack, telegram, tmp, audit_dir, records, kubeconfigs, tokens)
            # Warm the model client first: its SDK is imported and built on first use, which can
            # take seconds on a loaded machine and would eat prod-strict's 2 s run deadline.
            rig.say(DEV, STAGING_CHANNEL, "hello")
            daemon.wait_for(
                lambda: [
                    r for r in rig.audit("staging-permissive") if r["event"]["action"] == "agent.run.finished"
                ],
                what="the warm-up run",
            )
            yield rig
            assert daemon.stop() == 0


def hex_id(value: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{64}", value) is not None


def assert_prompt(prompt: dict[str, Any]) -> str:
    """The prompt has Approve/Deny buttons carrying the request id and names it; the id."""
    assert [b["action_id"] for b in buttons(prompt)] == ["aofd_approve", "aofd_deny"]
    [request_id] = {str(b["value"]) for b in buttons(prompt)}
    assert hex_id(request_id)
    summary = json.dumps(prompt["blocks"])
    assert f"request {request_id[:12]}" in summary
    assert "prod-strict" in summary
    return request_id


def test_an_approver_approves_after_an_outsider_and_the_requester_are_refused(rig: Rig) -> None:
    before = len(rig.ran("prod-strict"))
    thread = rig.say(DEV, PROD_CHANNEL, "please RUN[delete pod web-1]")
    prompt = rig.prompt(thread)
    request_id = assert_prompt(prompt)
    assert actions(rig.run_of("prod-strict", request_id))[-2:] == ["command.requested", "approval.requested"]

    rig.click(OUTSIDER, prompt, "aofd_approve")
    [told] = rig.daemon.wait_for(
        lambda: rig.calls("chat.postEphemeral", user=OUTSIDER), what="the outsider told"
    )
    assert told["channel"] == PROD_CHANNEL
    assert "not one of the approvers" in told["text"]
    rig.click(DEV, prompt, "aofd_approve")
    [told] = rig.daemon.wait_for(lambda: rig.calls("chat.postEphemeral", user=DEV), what="the requester told")
    assert "not one of the approvers" in told["text"]
    assert rig.ran("prod-strict")[before:] == []  # both refusals left the request pending
    assert rig.calls("chat.update", ts=prompt["_ts"]) == []

    rig.click(LEAD, prompt, "aofd_approve")
    [ran] = rig.daemon.wait_for(lambda: rig.ran("prod-strict")[before:], what="kubectl to run")
    assert ran["argv"][-3:] == ["delete", "pod", "web-1"]
    assert ran["env"]["KUBECONFIG"] == str(rig.kubeconfigs["prod-strict"])
    run = rig.daemon.wait_for(lambda: rig.finished("prod-strict", request_id), what="the run to finish")
    assert actions(run) == [
        "agent.run.started",
        "command.requested",
        "approval.requested",
        "approval.refused",
        "approval.refused",
        "approval.granted",
        "command.started",
        "command.finished",
        "agent.run.finished",
    ]
    refused = [r for r in run if r["event"]["action"] == "approval.refused"]
    assert [(r["aofd"]["approval"]["voter"]["id"], r["event"]["reason"]) for r in refused] == [
        (OUTSIDER, "not_allowed"),
        (DEV, "not_allowed"),
    ]
    [granted] = [r for r in run if r["event"]["action"] == "approval.granted"]
    assert granted["aofd"]["approval"]["final"] is True
    assert [a["id"] for a in granted["aofd"]["approval"]["approvers"]] == [LEAD]
    assert run[-1]["event"]["outcome"] == "success"
    text = rig.settled(prompt)
    assert text.startswith("Approved by")
    assert LEAD in text

    rig.click(LEAD, prompt, "aofd_approve")  # after the decision
    [told] = rig.daemon.wait_for(
        lambda: rig.calls("chat.postEphemeral", user=LEAD), what="the late click told"
    )
    assert "already decided" in told["text"]
    late = rig.daemon.wait_for(
        lambda: [
            r
            for r in rig.audit("prod-strict")
            if approval_id(r) == request_id
            and r["event"]["action"] == "approval.refused"
            and r["aofd"]["approval"]["voter"]["id"] == LEAD
        ],
        what="the late click audited",
    )
    assert [r["event"]["reason"] for r in late] == ["already_decided"]
    assert len(rig.ran("prod-strict")) == before + 1
    clicks = [
        line
        for line in rig.daemon_log()
        if line.get("event") == "approval.clicked" and line.get("request_id") == request_id
    ]
    assert [(c["user"], c["result"]) for c in clicks] == [
        (OUTSIDER, "refused"),
        (DEV, "refused"),
        (LEAD, "counted"),
        (LEAD, "refused"),
    ]


def test_an_approver_denies(rig: Rig) -> None:
    before = len(rig.ran("prod-strict"))
    thread = rig.say(DEV, PROD_CHANNEL, "please RUN[scale deployment web --replicas=0]")
    prompt = rig.prompt(thread)
    request_id = assert_prompt(prompt)
    rig.click(LEAD, prompt, "aofd_deny")
    run = rig.daemon.wait_for(lambda: rig.finished("prod-strict", request_id), what="the run to finish")
    assert actions(run) == [
        "agent.run.started",
        "command.requested",
        "approval.requested",
        "approval.denied",
        "command.denied",
        "agent.run.finished",
    ]
    [denied] = [r for r in run if r["event"]["action"] == "approval.denied"]
    assert denied["aofd"]["approval"]["denier"]["id"] == LEAD
    [refused] = [r for r in run if r["event"]["action"] == "command.denied"]
    assert refused["aofd"]["decision"]["stage"] == "approval"
    text = rig.settled(prompt)
    assert text.startswith("Denied by")
    assert LEAD in text
    assert len(rig.ran("prod-strict")) == before  # nothing ran


def test_self_approval_is_refused_and_the_request_expires(rig: Rig) -> None:
    before = len(rig.ran("prod-strict"))
    thread = rig.say(LEAD, PROD_CHANNEL, "please RUN[delete pod web-4]")
    prompt = rig.prompt(thread)
    request_id = assert_prompt(prompt)
    rig.click(LEAD, prompt, "aofd_approve")
    told = rig.daemon.wait_for(
        lambda: [c for c in rig.calls("chat.postEphemeral", user=LEAD) if c.get("thread_ts") == thread],
        what="the requester told",
    )
    assert "someone else has to approve" in told[0]["text"]
    [pending] = [p for p in rig.pending() if p["id"] == request_id]  # still waiting for someone else
    assert pending["requester"]["id"] == LEAD

    run = rig.daemon.wait_for(
        lambda: rig.finished("prod-strict", request_id), timeout=APPROVAL_TIMEOUT + 15, what="the expiry"
    )
    assert actions(run) == [
        "agent.run.started",
        "command.requested",
        "approval.requested",
        "approval.refused",
        "approval.expired",
        "command.denied",
        "agent.run.finished",
    ]
    by_action = {r["event"]["action"]: r for r in run}
    assert by_action["approval.refused"]["event"]["reason"] == "self_not_allowed"
    assert by_action["approval.refused"]["aofd"]["approval"]["voter"]["id"] == LEAD
    assert by_action["approval.refused"]["user"]["id"] == LEAD  # the requester: LEAD clicked their own
    waited = stamp(by_action["approval.expired"]) - stamp(by_action["approval.requested"])
    assert APPROVAL_TIMEOUT - 0.5 <= waited < APPROVAL_TIMEOUT + 5
    assert by_action["command.denied"]["aofd"]["decision"]["stage"] == "approval"
    text = rig.settled(prompt)
    assert text.startswith(f"No decision within {APPROVAL_TIMEOUT} s")
    assert len(rig.ran("prod-strict")) == before

    rig.click(LEAD, prompt, "aofd_approve")  # after the expiry
    told = rig.daemon.wait_for(
        lambda: [c for c in rig.calls("chat.postEphemeral", user=LEAD) if c.get("thread_ts") == thread][1:],
        what="the late click told",
    )
    assert "no longer open" in told[0]["text"]
    late = rig.daemon.wait_for(
        lambda: [
            r
            for r in rig.audit("prod-strict")
            if approval_id(r) == request_id and r["event"]["action"] == "approval.refused"
        ][1:],
        what="the late click audited",
    )
    assert [r["event"]["reason"] for r in late] == ["expired"]
    assert len(rig.ran("prod-strict")) == before


def test_waiting_for_approval_pauses_the_run_deadline(rig: Rig) -> None:
    """prod-strict's runs have 2 s; the approval 6 s. A click at 3.5 s still runs the command."""
    before = len(rig.ran("prod-strict"))
    thread = rig.say(DEV, PROD_CHANNEL, "please RUN[delete pod web-3]")
    prompt = rig.prompt(thread)
    request_id = assert_prompt(prompt)
    asked = stamp(
        next(r for r in rig.run_of("prod-strict", request_id) if r["event"]["action"] == "agent.run.started")
    )
    time.sleep(max(0.0, asked + RUN_DEADLINE + 1.5 - time.time()))  # the scenario is about time
    rig.click(LEAD, prompt, "aofd_approve")
    run = rig.daemon.wait_for(lambda: rig.finished("prod-strict", request_id), what="the run to finish")
    assert actions(run) == APPROVED_RUN
    assert stamp(run[-1]) - stamp(run[0]) > RUN_DEADLINE + 1
    assert run[-1]["event"]["outcome"] == "success"
    ran = rig.ran("prod-strict")[before:]
    assert [r["argv"][-3:] for r in ran] == [["delete", "pod", "web-3"]]
    assert rig.settled(prompt).startswith("Approved by")


def test_an_operator_approves_with_aofctl(rig: Rig) -> None:
    before = len(rig.ran("prod-strict"))
    thread = rig.say(DEV, PROD_CHANNEL, "please RUN[delete pod web-5]")
    prompt = rig.prompt(thread)
    request_id = assert_prompt(prompt)
    [item] = [p for p in rig.pending() if p["id"] == request_id]
    assert item["context"] == "prod-strict"
    assert item["requester"]["id"] == DEV
    granted = rig.aofctl("approve", request_id[:12], who="ops")
    assert granted.returncode == 0, granted.stderr
    assert "granted by admin:ops" in granted.stdout
    run = rig.daemon.wait_for(lambda: rig.finished("prod-strict", request_id), what="the run to finish")
    assert actions(run) == APPROVED_RUN
    [grant] = [r for r in run if r["event"]["action"] == "approval.granted"]
    assert [a["id"] for a in grant["aofd"]["approval"]["approvers"]] == ["admin:ops"]
    ran = rig.ran("prod-strict")[before:]
    assert [r["argv"][-3:] for r in ran] == [["delete", "pod", "web-5"]]
    assert ran[0]["env"]["KUBECONFIG"] == str(rig.kubeconfigs["prod-strict"])
    text = rig.settled(prompt)  # decided elsewhere, shown where it was asked
    assert text.startswith("Approved by")
    assert "admin:ops" in text
    assert request_id not in {p["id"] for p in rig.pending()}


def test_a_prompt_that_cannot_be_posted_cancels_the_request(rig: Rig) -> None:
    """The bot is not in the channel: nobody can be asked, so the request is withdrawn at once."""
    before = len(rig.ran("prod-strict"))
    rig.say(DEV, NOBOT_CHANNEL, "please RUN[delete pod web-6]")
    run = rig.daemon.wait_for(lambda: rig.finished_with("prod-strict", "web-6"), what="the run to finish")
    assert actions(run) == [
        "agent.run.started",
        "command.requested",
        "approval.requested",
        "approval.cancelled",
        "command.denied",
        "agent.run.finished",
    ]
    assert "could not be posted" in run[3]["event"]["reason"]
    assert run[4]["aofd"]["decision"]["stage"] == "approval"
    assert rig.calls("chat.update", channel=NOBOT_CHANNEL) == []
    assert len(rig.ran("prod-strict")) == before


def test_staging_runs_the_same_delete_at_once(rig: Rig) -> None:
    before = len(rig.ran("staging-permissive"))
    thread = rig.say(DEV, STAGING_CHANNEL, "please RUN[delete pod web-1]")
    [ran] = rig.daemon.wait_for(
        lambda: rig.ran("staging-permissive")[before:], what="kubectl to run in staging"
    )
    assert ran["argv"][-3:] == ["delete", "pod", "web-1"]
    assert ran["env"]["KUBECONFIG"] == str(rig.kubeconfigs["staging-permissive"])
    assert ran["env"]["ALLOW_DELETE"] == "true"
    rig.daemon.wait_for(
        lambda: rig.calls("chat.postMessage", thread_ts=thread, text="done"), what="the answer"
    )
    assert not [c for c in rig.calls("chat.postMessage", thread_ts=thread) if buttons(c)]

    def finished_run() -> list[dict[str, Any]]:  # the run's last record follows its answer
        lines = rig.audit("staging-permissive")
        run = [r for r in lines if r.get("trace", {}).get("id") == trace_of(lines, "web-1")]
        return run if run and run[-1]["event"]["action"] == "agent.run.finished" else []

    run = rig.daemon.wait_for(finished_run, what="the run's closing record")
    assert not [r for r in rig.audit("staging-permissive") if r["event"]["action"].startswith("approval.")]
    assert actions(run) == [
        "agent.run.started",
        "command.requested",
        "command.started",
        "command.finished",
        "agent.run.finished",
    ]


def test_a_tool_call_with_shell_operators_is_audited_and_refused(rig: Rig) -> None:
    before = len(rig.ran("staging-permissive"))
    thread = rig.say(DEV, STAGING_CHANNEL, "please RUN[get pods ; rm -rf /]")
    rig.daemon.wait_for(
        lambda: rig.calls("chat.postMessage", thread_ts=thread, text="done"), what="the answer"
    )
    records = rig.daemon.wait_for(lambda: rig.finished_with("staging-permissive", "rm"), what="the run")
    assert actions(records) == [
        "agent.run.started",
        "command.requested",
        "command.denied",
        "agent.run.finished",
    ]
    denied = records[2]
    assert ";" in denied["event"]["reason"]
    assert rig.ran("staging-permissive")[before:] == []


def test_telegram_prompt_refusal_and_approval(rig: Rig) -> None:
    before = len(rig.ran("prod-strict"))
    assert (
        rig.telegram_update(
            {
                "message": {
                    "message_id": 10,
                    "from": {"id": TG_DEV, "username": "dev"},
                    "chat": {"id": TG_CHAT, "type": "group", "title": "ops"},
                    "date": int(time.time()),
                    "text": "please RUN[delete pod tg-1]",
                }
            }
        )
        == 200
    )
    [prompt] = rig.daemon.wait_for(
        lambda: [f for f in rig.telegram.calls("sendMessage") if "reply_markup" in f],
        what="the Telegram prompt",
    )
    [[approve, deny]] = prompt["reply_markup"]["inline_keyboard"]
    prefix, _, request_id = approve["callback_data"].partition(":")
    assert prefix == "aofd_approve"
    assert hex_id(request_id)
    assert deny["callback_data"] == f"aofd_deny:{request_id}"
    assert f"request {request_id[:12]}" in prompt["text"]

    def callback(user: int, data: str) -> None:
        n = next(rig.seq)
        query = {
            "id": f"cq{n}",
            "from": {"id": user, "username": f"user{user}"},
            "message": {"message_id": 99, "chat": {"id": TG_CHAT, "type": "group"}},
            "data": data,
        }
        assert rig.telegram_update({"callback_query": query}) == 200

    callback(TG_OUTSIDER, approve["callback_data"])
    [answer] = rig.daemon.wait_for(lambda: rig.telegram.calls("answerCallbackQuery"), what="the refusal")
    assert answer["show_alert"] is True
    assert "not one of the approvers" in answer["text"]
    assert rig.telegram.calls("editMessageText") == []

    callback(TG_APPROVER, approve["callback_data"])
    run = rig.daemon.wait_for(lambda: rig.finished("prod-strict", request_id), what="the run to finish")
    assert actions(run) == [
        "agent.run.started",
        "command.requested",
        "approval.requested",
        "approval.refused",
        "approval.granted",
        "command.started",
        "command.finished",
        "agent.run.finished",
    ]
    by_action = {r["event"]["action"]: r for r in run}
    assert by_action["approval.refused"]["aofd"]["approval"]["voter"]["id"] == str(TG_OUTSIDER)
    assert by_action["approval.refused"]["event"]["reason"] == "not_allowed"
    assert [a["id"] for a in by_action["approval.granted"]["aofd"]["approval"]["approvers"]] == [
        str(TG_APPROVER)
    ]
    answers = rig.telegram.calls("answerCallbackQuery")
    assert len(answers) == 2
    assert answers[1]["show_alert"] is False
    [edited] = rig.daemon.wait_for(lambda: rig.telegram.calls("editMessageText"), what="the prompt edited")
    assert edited["message_id"] == 99
    assert str(edited["chat_id"]) == str(TG_CHAT)
    assert "reply_markup" not in edited
    assert edited["text"].startswith("Approved by")
    assert str(TG_APPROVER) in edited["text"]
    told = rig.daemon.wait_for(
        lambda: [f for f in rig.telegram.calls("sendMessage") if f["text"] == edited["text"]],
        what="the outcome told",
    )
    assert str(told[0]["chat_id"]) == str(TG_CHAT)
    ran = rig.ran("prod-strict")[before:]
    assert [r["argv"][-3:] for r in ran] == [["delete", "pod", "tg-1"]]


def test_the_seed_audit_line_of_an_approved_command_names_the_approver(rig: Rig) -> None:
    """The seed's "Audit Trail" `approved_by` of a command run after approval:
    `aofd.approval.approver.id` on `command.started` and `command.finished`."""
    lines = rig.audit("prod-strict")
    granted = {
        r["trace"]["id"]: r["aofd"]["approval"]["approvers"][0]["id"]
        for r in lines
        if r["event"]["action"] == "approval.granted" and r["aofd"]["approval"].get("final")
    }
    ran = [
        r
        for r in lines
        if r["event"]["action"] in ("command.started", "command.finished") and r["trace"]["id"] in granted
    ]
    assert ran  # the approval tests above ran commands after a grant
    approved_by = [r["aofd"].get("approval", {}).get("approver", {}).get("id") for r in ran]
    assert approved_by == [granted[r["trace"]["id"]] for r in ran]


def test_every_audit_line_is_ecs(rig: Rig) -> None:
    """Every line the daemon wrote so far (runs, commands, approvals, config, start) uses ECS fields
    with ECS types and allowed values, aofd's own under `aofd.*` with one type each; run records
    carry `event.type` and `trace.id` = the run id, like the run's command records."""
    lines = rig.audit("prod-strict") + rig.audit("staging-permissive")
    assert [(r["event"]["action"], ecs_check.problems(r)) for r in lines if ecs_check.problems(r)] == []
    assert ecs_check.type_conflicts(lines) == []
    kinds = {r["event"]["action"] for r in lines}
    assert {"daemon.started", "config.applied", "agent.run.started", "agent.run.finished"} <= kinds
    # the ECS base fields on every line the daemon wrote, its own start and config changes included
    assert [
        (r["event"]["action"], ecs_check.missing_base_fields(r))
        for r in lines
        if ecs_check.missing_base_fields(r)
    ] == []
    started = [r for r in lines if r["event"]["action"] == "daemon.started"]
    assert all(isinstance(r["aofd"]["version"], str) and r["aofd"]["pid"] > 0 for r in started)
    for run in (r for r in lines if r["event"]["action"].startswith("agent.run.")):
        assert run["event"]["type"] in (["start"], ["end"])
        assert run["trace"]["id"] == run["aofd"]["agent"]["run_id"]
        assert (run["aofd"]["agent"]["name"], run["aofd"]["flow"]) == ("k8s-ops", "k8s-ops")


def test_the_audit_logs_verify_and_hold_no_secrets(rig: Rig) -> None:
    """Last: every Context's audit log verifies; no token reached the daemon's log."""
    verify = subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", "audit", "verify", str(rig.audit_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for context in ("prod-strict", "staging-permissive"):
        assert rig.audit(context)
    log = rig.daemon.log_text()
    for secret in (SIGNING_SECRET, BOT_TOKEN, TELEGRAM_TOKEN, TELEGRAM_SECRET, OPS_TOKEN, UNNAMED_TOKEN):
        assert secret not in log
