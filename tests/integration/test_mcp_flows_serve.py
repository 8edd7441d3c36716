"""MCP tools end to end through a real `aofd serve`, with servers nobody here wrote
(`mcp-server-time`, `mcp-server-git`) and the SDK's own server as a probe, driven by the real
anthropic client against a loopback Messages API that asks for tool calls:

- a read-only tool is called and its result reaches the model;
- `git_reset` is refused in a Context that blocks it, and the repository is untouched;
- `git_commit` waits for approval (`aofctl approve` by a named approver) and then commits;
- the prod and staging servers are two processes that see two environments;
- a server killed in the middle of a call fails that call cleanly (the run goes on) and is
  restarted;
- a hot swap that changes a server's args loses no event: a run holding the old server finishes
  on it, the next runs use the new one, and the old process is stopped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness
from tests.integration.test_daemon_gitops import SECRET, git
from tests.runtime.test_mcpservers import alive, install_fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VENV_BIN = Path(sys.executable).parent
ALICE = "alice-admin-token-0123456789abcdef"

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {{name: {name}}}
spec:
  namespace: {name}
  kubeconfig: {kubeconfig}
  env: {{MARK: {name}-mark}}
  limits: {{max_requests_per_hour: 1000}}
{extra}"""

PROD_EXTRA = """\
  security:
    allowed_tools: ["time/*", "fx/*", "git/git_status", "git/git_log", "git/git_commit"]
    blocked_tools: ["git/git_reset"]
  approval:
    required: true
    allowed_users: ["admin:alice"]
    require_for: ["mcp:git/git_commit"]
    timeout_seconds: 120
"""

AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {{name: ops}}
spec:
  model: anthropic:claude-test
  instructions: Use your tools.
  memory: none
  mcp_servers:
    - {{name: time, command: mcp-server-time, args: ["--local-timezone", "UTC"]}}
    - {{name: git, command: mcp-server-git, args: ["--repository", "{repo}"]}}
    - {{name: fx, command: mcp-fixture, args: {fx_args}}}
"""

FLOW = """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata: {name: ops-flow}
spec:
  agents:
    - name: ops
"""


def trigger(name: str) -> str:
    return (
        f"apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n"
        f"  type: HTTP\n  config: {{path: /hooks/http/{name}, webhook_secret: {SECRET}}}\n"
    )


def binding(name: str, context: str, trigger_name: str) -> str:
    return (
        f"apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata: {{name: {name}}}\nspec:\n"
        f"  flow: {{name: ops-flow}}\n  context: {{name: {context}}}\n  trigger: {{name: {trigger_name}}}\n"
    )


# What the model asks for, by the first word of the event text; after a tool result it answers
# with the result, so the run's answer (and the request the test reads) carries it.
CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "time": ("time__get_current_time", {"timezone": "UTC"}),
    "env": ("fx__env", {}),
    "reset": ("git__git_reset", {"repo_path": "{repo}"}),
    "commit": ("git__git_commit", {"repo_path": "{repo}", "message": "committed by the agent"}),
    "slow": ("fx__slow", {"seconds": 60}),
    "hold": ("fx__slow", {"seconds": 3}),
    "pid": ("fx__pid", {}),
}


def first_text(body: dict[str, Any]) -> str:
    content = body["messages"][0]["content"]
    return content if isinstance(content, str) else str(content[0].get("text", ""))


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    last = body["messages"][-1]
    if last["role"] != "user" or isinstance(last["content"], str):
        return []
    return [block for block in last["content"] if block.get("type") == "tool_result"]


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content)
    return str(content)


def make_responder(repo: Path) -> Any:
    counter = iter(range(1, 1_000_000))
    lock = threading.Lock()

    def respond(body: dict[str, Any]) -> Sequence[dict[str, Any]] | None:
        results = tool_results(body)
        if results:
            block = results[0]
            flag = "ERROR " if block.get("is_error") else "OK "
            return [{"type": "text", "text": flag + result_text(block)[:2000]}]
        word = first_text(body).split()[0]
        if word not in CALLS:
            return None
        name, arguments = CALLS[word]
        with lock:
            n = next(counter)
        filled = {k: v.format(repo=repo) if isinstance(v, str) else v for k, v in arguments.items()}
        return [{"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": filled}]

    return respond


def aofctl(*args: str, admin: str, token: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aofd.cli.aofctl_main", *args, "--admin", admin, "--token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def post(daemon: harness.DaemonProcess, hook: str, text: str, delivery: str) -> None:
    """A signed event to `/hooks/http/<hook>`, sent again on 503 as webhook senders do (a binding
    is not served while one of its MCP servers restarts)."""
    daemon.wait_for(lambda: send(daemon, hook, text, delivery) == 202, timeout=60, what=f"{text!r} accepted")


def send(daemon: harness.DaemonProcess, hook: str, text: str, delivery: str) -> int:
    body = json.dumps({"text": text, "user": {"id": "U1"}}).encode()
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    status, _ = daemon.post(
        f"/hooks/http/{hook}",
        body,
        which="listen",
        headers={
            "Content-Type": "application/json",
            "X-Aofd-Timestamp": ts,
            "X-Aofd-Signature": f"v1={sig}",
            "X-Aofd-Delivery": delivery,
        },
    )
    assert status in (202, 503), (hook, text, status)
    return status


UNNAMED = "unnamed-admin-token-0123456789abcdef"


def runs(daemon: harness.DaemonProcess, binding_name: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        daemon.url("admin", f"/api/v1/runs?binding={binding_name}&limit=200"),
        headers={"Authorization": f"Bearer {UNNAMED}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return list(json.loads(resp.read())["items"])


def applied(daemon: harness.DaemonProcess) -> str | None:
    request = urllib.request.Request(
        daemon.url("admin", "/api/v1/status"), headers={"Authorization": f"Bearer {UNNAMED}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read()).get("appliedRevision")


def finished(daemon: harness.DaemonProcess, binding_name: str, count: int) -> list[dict[str, Any]]:
    done = [r for r in runs(daemon, binding_name) if r["status"] not in ("running", "waiting", "pending")]
    return done if len(done) >= count else []


def answers_for(model: Any, word: str) -> list[dict[str, Any]]:
    """The tool results the model received in runs started by an event whose text begins `word`."""
    return [
        block
        for body in list(model.requests)
        if first_text(body).split()[:1] == [word]
        for block in tool_results(body)
    ]


def fx_pids(state: Path, context: str) -> set[int]:
    pids = set()
    for entry in (state / "commands").glob("mcp-fx-*.json"):
        try:
            data = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if data.get("context") == context and alive(int(data["pid"])):
            pids.add(int(data["pid"]))
    return pids


def audit(audit_dir: Path, context: str) -> list[dict[str, Any]]:
    """The Context's audit records written so far (a line still being written is left out)."""
    return [
        record
        for segment in sorted((audit_dir / context).glob("audit-*.jsonl"))
        for record in harness.audit_lines(segment)
    ]


def test_mcp_tools_under_the_context_guard_through_aofd_serve(tmp_path: Path) -> None:
    for tool in ("mcp-server-time", "mcp-server-git"):
        if not (VENV_BIN / tool).exists():
            pytest.skip(f"{tool} is not installed in the test venv (the test extra installs it)")
    gitrepo = tmp_path / "work-repo"
    gitrepo.mkdir()
    git("init", "-q", "-b", "main", cwd=gitrepo)
    (gitrepo / "a.txt").write_text("one\n")
    git("add", "a.txt", cwd=gitrepo)
    git("commit", "-q", "-m", "first", cwd=gitrepo)
    first_head = git("rev-parse", "HEAD", cwd=gitrepo).strip()
    (gitrepo / "a.txt").write_text("two\n")
    git("add", "a.txt", cwd=gitrepo)  # staged: what git_commit will commit once approved

    kube = {name: tmp_path / f"kube-{name}" for name in ("prod", "staging")}
    for path in kube.values():
        path.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    repo = tmp_path / "repo"
    files = {
        "contexts/prod.yaml": CONTEXT.format(name="prod", kubeconfig=kube["prod"], extra=PROD_EXTRA),
        "contexts/staging.yaml": CONTEXT.format(name="staging", kubeconfig=kube["staging"], extra=""),
        "agents/ops.yaml": AGENT.format(repo=gitrepo, fx_args='["stdio"]'),
        "flows/ops.yaml": FLOW,
        "triggers/prod.yaml": trigger("hook-prod"),
        "triggers/staging.yaml": trigger("hook-staging"),
        "bindings/prod.yaml": binding("b-prod", "prod", "hook-prod"),
        "bindings/staging.yaml": binding("b-staging", "staging", "hook-staging"),
    }
    harness.write_tree(repo, files)
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    (helpers / "git").symlink_to(git_path)
    fixture = install_fixture(tmp_path / "bin")
    token = tmp_path / "alice.token"
    token.write_text(ALICE + "\n")
    unnamed = tmp_path / "unnamed.token"
    unnamed.write_text(UNNAMED + "\n")
    state, audit_dir = tmp_path / "state", tmp_path / "audit"

    with fakes.anthropic_server(responder=make_responder(gitrepo)) as model:
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [{"name": "local", "directory": {"path": str(repo)}}],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "admin_api": {
                        "token_file": str(unnamed),
                        "tokens": [{"name": "alice", "token_file": str(token)}],
                    },
                    "state_dir": str(state),
                    "audit_dir": str(audit_dir),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "executables": {
                        "mcp_servers": {
                            "mcp-server-time": str(VENV_BIN / "mcp-server-time"),
                            "mcp-server-git": str(VENV_BIN / "mcp-server-git"),
                            "mcp-fixture": str(fixture),
                        },
                        "helpers_dir": str(helpers),
                    },
                    "drain_grace_seconds": 30,
                }
            )
        )
        env = {"ANTHROPIC_API_KEY": "test-key", "DAEMON_ONLY_SECRET": "never-in-a-server-0123"}
        with harness.run_daemon("--config", str(config), cwd=tmp_path, state_dir=state, env=env) as daemon:
            daemon.wait_ready(timeout=90)
            admin = daemon.endpoints["admin"]
            daemon.wait_for(
                lambda: fx_pids(state, "prod") and fx_pids(state, "staging"), timeout=60, what="servers"
            )

            # 1. A read-only tool (no allowed_tools needed in staging) and its result reaching the model.
            post(daemon, "hook-staging", "time now please", "d-time")
            daemon.wait_for(lambda: finished(daemon, "b-staging", 1), timeout=60, what="the time run")
            [time_result] = answers_for(model, "time")
            assert not time_result.get("is_error")
            assert '"timezone": "UTC"' in result_text(time_result)

            # 2. prod and staging: two processes, two environments, no daemon secret.
            post(daemon, "hook-prod", "env prod", "d-env-prod")
            post(daemon, "hook-staging", "env staging", "d-env-staging")
            daemon.wait_for(lambda: finished(daemon, "b-staging", 2), timeout=60, what="staging env run")
            daemon.wait_for(lambda: finished(daemon, "b-prod", 1), timeout=60, what="prod env run")
            seen = {}
            for block in answers_for(model, "env"):
                probe = json.loads(result_text(block))
                seen[probe["env"]["AOF_CONTEXT"]] = probe
            assert set(seen) == {"prod", "staging"}
            for name in ("prod", "staging"):
                probe_env = seen[name]["env"]
                assert probe_env["KUBECONFIG"] == str(kube[name])
                assert probe_env["MARK"] == f"{name}-mark"
                assert "DAEMON_ONLY_SECRET" not in probe_env
                assert "ANTHROPIC_API_KEY" not in probe_env
            assert fx_pids(state, "prod").isdisjoint(fx_pids(state, "staging"))

            # 3. git_reset is blocked in prod: an error result the model reads, the repo untouched.
            post(daemon, "hook-prod", "reset hard", "d-reset")
            daemon.wait_for(lambda: finished(daemon, "b-prod", 2), timeout=60, what="the reset run")
            [reset_result] = answers_for(model, "reset")
            assert reset_result.get("is_error")
            assert "blocked_tools" in result_text(reset_result)
            assert git("diff", "--cached", "--name-only", cwd=gitrepo).strip() == "a.txt"  # still staged

            # 4. git_commit waits for approval; the prompt shows server, tool and arguments.
            post(daemon, "hook-prod", "commit it", "d-commit")

            def pending() -> list[dict[str, Any]]:
                listed = aofctl("approvals", "-o", "json", admin=admin, token=token)
                assert listed.returncode == 0, listed.stderr
                return list(json.loads(listed.stdout))

            [item] = daemon.wait_for(pending, timeout=60, what="the approval request")
            assert item["argv"][:2] == ["mcp", "git/git_commit"]
            assert "committed by the agent" in item["argv"][2]
            assert git("rev-parse", "HEAD", cwd=gitrepo).strip() == first_head  # nothing before the grant
            granted = aofctl("approve", item["id"][:12], admin=admin, token=token)
            assert granted.returncode == 0, granted.stderr
            daemon.wait_for(lambda: finished(daemon, "b-prod", 3), timeout=60, what="the commit run")
            assert "committed by the agent" in git("log", "-1", "--format=%s", cwd=gitrepo)
            [commit_result] = answers_for(model, "commit")
            assert not commit_result.get("is_error"), result_text(commit_result)

            # 5. The server killed in the middle of a call: that call fails cleanly, the run goes on,
            #    and the server is restarted.
            [old_pid] = fx_pids(state, "prod")
            post(daemon, "hook-prod", "slow call", "d-slow")
            daemon.wait_for(
                lambda: any(
                    r.get("event", {}).get("action") == "command.started"
                    and r.get("aofd", {}).get("mcp", {}).get("tool") == "slow"
                    for r in audit(audit_dir, "prod")
                ),
                timeout=60,
                what="the slow call to start",
            )
            os.kill(old_pid, signal.SIGKILL)
            done = daemon.wait_for(lambda: finished(daemon, "b-prod", 4), timeout=60, what="the slow run")
            [slow_result] = answers_for(model, "slow")
            assert slow_result.get("is_error")
            assert "slept" not in result_text(slow_result)
            newest = max(done, key=lambda r: float(r["started_at"]))
            assert newest["status"] == "completed", newest  # the model read the failure and answered
            daemon.wait_for(
                lambda: fx_pids(state, "prod") - {old_pid}, timeout=60, what="the fx server to be restarted"
            )

            # 6. A hot swap of the server's args loses no event: a run holding the old server ends on
            #    it, runs after the swap use the new one, and the old process stops.
            [before_swap] = fx_pids(state, "prod")
            post(daemon, "hook-prod", "hold the old server", "d-hold")
            daemon.wait_for(
                lambda: (
                    sum(
                        1
                        for r in audit(audit_dir, "prod")
                        if r.get("event", {}).get("action") == "command.started"
                        and r.get("aofd", {}).get("mcp", {}).get("tool") == "slow"
                    )
                    >= 2
                ),
                timeout=60,
                what="the held call to start",
            )
            revision = applied(daemon)
            (repo / "agents" / "ops.yaml").write_text(AGENT.format(repo=gitrepo, fx_args='["stdio", "v2"]'))
            daemon.wait_for(lambda: applied(daemon) != revision, timeout=60, what="the swap applied")
            daemon.wait_for(
                lambda: fx_pids(state, "prod") - {before_swap}, timeout=60, what="the new fx server"
            )
            [after_swap] = fx_pids(state, "prod") - {before_swap}
            post(daemon, "hook-prod", "pid after swap", "d-pid-after")
            daemon.wait_for(lambda: finished(daemon, "b-prod", 6), timeout=90, what="held and post-swap runs")
            hold_results = answers_for(model, "hold")
            assert [r.get("is_error") for r in hold_results] == [None], [result_text(r) for r in hold_results]
            assert "slept" in result_text(hold_results[0])
            [pid_result] = answers_for(model, "pid")
            assert result_text(pid_result).strip() == str(after_swap)
            daemon.wait_for(lambda: not alive(before_swap), timeout=60, what="the old fx server to stop")

            records = audit(audit_dir, "prod")
            assert daemon.stop() == 0

    mcp_started = [
        r for r in records if r["event"]["action"] == "command.started" and "mcp" in r.get("aofd", {})
    ]
    assert {r["aofd"]["mcp"]["server"] for r in mcp_started} >= {"fx", "git"}
    denied = [r for r in records if r["event"]["action"] == "command.denied" and "mcp" in r.get("aofd", {})]
    assert [r["aofd"]["mcp"]["tool"] for r in denied] == ["git_reset"]
    assert "never-in-a-server-0123" not in daemon.log_text()
    assert not fx_pids(state, "prod")
