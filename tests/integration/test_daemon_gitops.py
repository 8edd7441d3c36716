"""A real `aofd serve` process following a real git remote: hot swaps without a restart,
broken commits kept out, and a restart with the remote gone coming up on the last good revision."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness

pytestmark = pytest.mark.slow

SECRET = "integration-secret"

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata: {name: prod}
spec:
  namespace: default
  limits: {max_requests_per_hour: 1000}
"""
AGENT = """\
apiVersion: aof.dev/v1
kind: Agent
metadata: {name: echo}
spec:
  model: anthropic:claude-test
  instructions: Answer briefly.
"""
FLOW = """\
apiVersion: aof.dev/v1
kind: AgentFlow
metadata: {name: echo-flow}
spec:
  agents:
    - name: echo
"""
TRIGGER = f"""\
apiVersion: aof.dev/v1
kind: Trigger
metadata: {{name: hook}}
spec:
  type: HTTP
  config: {{webhook_secret: {SECRET}}}
"""


def binding(name: str, flow: str = "echo-flow") -> str:
    return f"""\
apiVersion: aof.dev/v1
kind: FlowBinding
metadata: {{name: {name}}}
spec:
  flow: {{name: {flow}}}
  context: {{name: prod}}
  trigger: {{name: hook}}
"""


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


class Repo:
    """A work tree pushing to a bare remote."""

    def __init__(self, root: Path) -> None:
        self.remote = root / "remote.git"
        self.work = root / "work"
        git("init", "--bare", "-b", "main", str(self.remote), cwd=root)
        git("init", "-b", "main", str(self.work), cwd=root)
        git("remote", "add", "origin", str(self.remote), cwd=self.work)

    def commit(self, files: dict[str, str | None], message: str) -> str:
        for path, text in files.items():
            target = self.work / path
            if text is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work).strip()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = Repo(tmp_path)
    repo.commit(
        {
            "agents/echo.yaml": AGENT,
            "flows/echo.yaml": FLOW,
            "triggers/hook.yaml": TRIGGER,
            "bindings/b1.yaml": binding("b1"),
        },
        "initial",
    )
    hook_secret = tmp_path / "hook-secret"
    hook_secret.write_text("push-hook-secret\n")
    secrets = tmp_path / "secrets"
    (secrets / "contexts").mkdir(parents=True)
    (secrets / "contexts" / "prod.yaml").write_text(CONTEXT)
    with fakes.anthropic_server() as model:
        config = tmp_path / "aofd.yaml"
        config.write_text(
            json.dumps(
                {
                    "sources": [
                        {
                            "name": "main",
                            "git": {
                                "url": f"file://{repo.remote}",
                                "ref": {"branch": "main"},
                                "interval": "1h",
                            },
                            "kinds": ["Agent", "AgentFleet", "AgentFlow", "Trigger", "FlowBinding"],
                            "webhook_secret_file": str(hook_secret),
                        },
                        {"name": "secrets", "directory": {"path": str(secrets)}, "kinds": ["Context"]},
                    ],
                    "listen": "127.0.0.1:0",
                    "admin": "127.0.0.1:0",
                    "state_dir": str(tmp_path / "state"),
                    "audit_dir": str(tmp_path / "audit"),
                    "models": {"anthropic_base_url": fakes.url(model)},
                    "drain_grace_seconds": 5,
                }
            )
        )
        yield {"repo": repo, "config": config, "tmp": tmp_path, "model": model}


def start(setup: dict[str, Any]) -> Any:
    return harness.run_daemon(
        "--config",
        str(setup["config"]),
        cwd=setup["tmp"],
        state_dir=setup["tmp"] / "state",
        env={"ANTHROPIC_API_KEY": "test-key"},
    )


def send_event(daemon: harness.DaemonProcess, text: str, delivery: str) -> int:
    body = json.dumps({"text": text, "user": {"id": "U1"}}).encode()
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    status, _ = daemon.post(
        "/hooks/http/hook",
        body,
        which="listen",
        headers={
            "Content-Type": "application/json",
            "X-Aofd-Timestamp": ts,
            "X-Aofd-Signature": f"v1={sig}",
            "X-Aofd-Delivery": delivery,
        },
    )
    return status


def runs_of(daemon: harness.DaemonProcess, name: str) -> list[dict[str, Any]]:
    status, data = daemon.get(f"/api/v1/resources/FlowBinding/{name}")
    if status != 200:
        return []
    return list(data["items"][0].get("runs") or [])


def applied(daemon: harness.DaemonProcess) -> str:
    return str(daemon.get("/api/v1/status")[1].get("appliedRevision") or "")


def test_push_hot_swaps_routing_without_restart(setup: dict[str, Any]) -> None:
    """A pushed binding change reroutes events in the same process; the unchanged listener is kept."""
    with start(setup) as daemon:
        daemon.wait_ready()
        pid = daemon.pid
        listener_id = daemon.get("/api/v1/status")[1]["listeners"]["hook"]["id"]
        assert 202 == send_event(daemon, "first", "d-1")
        daemon.wait_for(
            lambda: [r for r in runs_of(daemon, "b1") if r["status"] == "completed"], what="b1 run"
        )
        before = applied(daemon)

        setup["repo"].commit({"bindings/b1.yaml": None, "bindings/b2.yaml": binding("b2")}, "rename binding")
        daemon.post("/api/v1/reconcile")
        daemon.wait_for(lambda: applied(daemon) != before, what="new revision applied")

        assert 202 == send_event(daemon, "second", "d-2")
        daemon.wait_for(
            lambda: [r for r in runs_of(daemon, "b2") if r["status"] == "completed"], what="b2 run"
        )
        status = daemon.get("/api/v1/status")[1]
        assert pid == status["pid"]
        assert listener_id == status["listeners"]["hook"]["id"]
        assert 404 == daemon.get("/api/v1/resources/FlowBinding/b1")[0]
        assert 0 == daemon.stop()


def test_broken_commit_changes_nothing_until_fixed(setup: dict[str, Any]) -> None:
    """A commit with a dangling reference is rejected with file:line; the fix is then applied."""
    with start(setup) as daemon:
        daemon.wait_ready()
        good = applied(daemon)

        setup["repo"].commit({"bindings/b1.yaml": binding("b1", flow="echo-flwo")}, "typo")
        daemon.post("/api/v1/reconcile")
        status = daemon.wait_for(
            lambda: (s := daemon.get("/api/v1/status")[1]).get("lastRejected") and s, what="rejection"
        )
        assert good == status["appliedRevision"]
        assert any("bindings/b1.yaml:" in e and "echo-flwo" in e for e in status["lastRejected"]["errors"])
        cli = subprocess.run(
            [sys.executable, "-m", "aofd.cli.aofctl_main", "get", "fb", "--admin", daemon.endpoints["admin"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert 0 == cli.returncode
        assert "b1" in cli.stdout
        assert "bindings/b1.yaml:" in cli.stderr
        assert 202 == send_event(daemon, "still routed", "d-3")
        daemon.wait_for(lambda: runs_of(daemon, "b1"), what="event still handled by the last good revision")

        setup["repo"].commit({"bindings/b1.yaml": binding("b1")}, "fix")
        daemon.post("/api/v1/reconcile")
        daemon.wait_for(lambda: not daemon.get("/api/v1/status")[1].get("lastRejected"), what="fix applied")
        assert good != applied(daemon)
        assert 0 == daemon.stop()


def test_kill_9_then_restart_with_the_remote_gone(setup: dict[str, Any]) -> None:
    """After kill -9 mid-apply, a restart with the remote unreachable serves the last good revision."""
    with start(setup) as daemon:
        daemon.wait_ready()
        first = applied(daemon)
        setup["repo"].commit({"bindings/b2.yaml": binding("b2")}, "add b2")
        daemon.post("/api/v1/reconcile")
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()

    shutil.move(str(setup["repo"].remote), str(setup["tmp"] / "remote-gone.git"))
    with start(setup) as again:
        again.wait_ready()
        revision = applied(again)
        assert revision
        assert revision.startswith("main@")
        names = {i["name"] for i in again.get("/api/v1/resources/FlowBinding")[1]["items"]}
        assert "b1" in names
        assert (revision == first) == ("b2" not in names)
        status = again.wait_for(
            lambda: (
                (s := again.get("/api/v1/status")[1]) and any(src["lastError"] for src in s["sources"]) and s
            ),
            what="the fetch error to be reported",
        )
        assert revision == status["appliedRevision"]
        assert 202 == send_event(again, "after restart", "d-4")
        again.wait_for(lambda: runs_of(again, "b1"), what="event handled after restart")
        assert 0 == again.stop()


def test_push_hook_wakes_the_source(setup: dict[str, Any]) -> None:
    """A signed GitHub push hook fetches at once (polling is an hour away); a bad signature is refused,
    an unknown source is 404 and a GET is 405.
    """
    with start(setup) as daemon:
        daemon.wait_ready()
        before = applied(daemon)
        setup["repo"].commit({"bindings/b2.yaml": binding("b2")}, "add b2")
        payload = b'{"ref": "refs/heads/main", "after": "forged"}'

        bad = daemon.post(
            "/hooks/git/main", payload, which="listen", headers={"X-Hub-Signature-256": "sha256=00"}
        )
        assert 401 == bad[0]
        assert 404 == daemon.post("/hooks/git/nope", payload, which="listen")[0]
        assert before == applied(daemon)  # a refused hook wakes nothing (the 401 is decided first)

        assert 405 == daemon.get("/hooks/git/main", which="listen")[0]
        sig = hmac.new(b"push-hook-secret", payload, hashlib.sha256).hexdigest()
        # With `Expect: 100-continue` the server answers `100 Continue` first (the client skips it).
        good = daemon.post(
            "/hooks/git/main",
            payload,
            which="listen",
            headers={"X-Hub-Signature-256": f"sha256={sig}", "Expect": "100-continue"},
        )
        assert 202 == good[0]
        daemon.wait_for(lambda: applied(daemon) != before, timeout=10, what="the pushed commit applied")
        assert 0 == daemon.stop()
