"""The status web page in a real browser: Debian's headless Chromium, driven by Playwright, against
a real `aofd serve` of the example repo (`examples/repo-layout`) with a loopback model.

One daemon and one browser serve the module's tests, in order: sign in and load every page (each
answer carries the Content-Security-Policy, and the browser reports no violation of it); push a
change to the watched tree and watch the overview follow it without a reload; run the flow behind
the HTTP webhook (a signed request) and open its run page, drawn node by node with the guard's
decisions; leave a command waiting for an approval and find it on the Approvals page; and check
that no page, and no JSON the pages fetched, holds a secret from the daemon's environment.
Screenshots of every page are saved under the module's temporary directory (`screenshots/`).

Skips, saying why, when Playwright or `/usr/bin/chromium` is missing (`.ci/run` installs
Chromium from Debian; Playwright never downloads a browser here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "repo-layout"
ADMIN_TOKEN = "web-ui-admin-token-5f1c0e9a7d3b"
SECRETS = {
    "WEBHOOK_SECRET": "webhook-secret-9c2e7a41",
    "SLACK_BOT_TOKEN": "xoxb-web-ui-bot-token-77aa",
    "SLACK_SIGNING_SECRET": "slack-signing-secret-3b8d",
    "WHATSAPP_ACCESS_TOKEN": "whatsapp-access-token-61f0",
    "WHATSAPP_APP_SECRET": "whatsapp-app-secret-2e95",
    "WHATSAPP_VERIFY_TOKEN": "whatsapp-verify-token-d4c7",
    "PAGERDUTY_WEBHOOK_SECRET": "pagerduty-webhook-secret-8a13",
    "PAGERDUTY_API_KEY": "pagerduty-api-key-5b6e",
    "ANTHROPIC_API_KEY": "sk-ant-web-ui-model-key-0f9d",
}
FLAG_SECRET = "flag-token-value-4e7b"
"""A value the model passes as `kubectl --token`: the guard refuses it and the audit log hashes it."""
LEAK = f"the webhook secret is {SECRETS['WEBHOOK_SECRET']}; PGPASSWORD=S3cr3tPassw0rd-db psql"
"""What the model answers to `LEAK[]`: a Trigger's secret (the daemon knows it) and a password."""
LEAKED = ("S3cr3tPassw0rd-db",)
APPROVAL_RULE = """\
  approval:
    required: true
    allowed_users: ["admin:ops"]
    require_for: ["kubectl delete"]
    timeout_seconds: 300
"""


def model(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A `kubectl` tool call with the words of the request (`get pods --token ...`), then text."""
    messages = body.get("messages") or []
    last = messages[-1].get("content") if messages else None
    if isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
        return [{"type": "text", "text": "done: the cluster answered"}]
    if "LEAK[" in json.dumps(messages):
        return [{"type": "text", "text": LEAK}]
    found = json.dumps(messages).split("RUN[", 1)
    if len(found) < 2:
        return None
    args = found[1].split("]", 1)[0].split()
    return [
        {"type": "tool_use", "id": f"toolu_{time.monotonic_ns()}", "name": "kubectl", "input": {"args": args}}
    ]


@dataclasses.dataclass
class Rig:
    daemon: harness.DaemonProcess
    repo: Path
    shots: Path
    base: str
    browser: Any  # a Playwright BrowserContext
    page: Any  # its one Page
    console: list[str]
    fetched: set[str]
    pages: dict[str, str] = dataclasses.field(default_factory=dict)

    def api(self, path: str) -> Any:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def show(self, route: str, ready: str, shot: str) -> Any:
        """Open `#/route` with a fresh load (its answer is returned), wait for `ready`, screenshot."""
        self.page.goto("about:blank")
        response = self.page.goto(f"{self.base}/ui/#/{route}")
        self.page.wait_for_selector(ready, timeout=15000)
        self.page.screenshot(path=str(self.shots / f"{shot}.png"), full_page=True)
        self.pages[shot] = self.page.content()
        return response

    def hook(self, text: str) -> int:
        body = json.dumps({"text": text, "user": {"id": "U-web"}}).encode()
        ts = str(int(time.time()))
        sig = hmac.new(
            SECRETS["WEBHOOK_SECRET"].encode(), ts.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        status, _ = self.daemon.post(
            "/hooks/http/http-webhook",
            body,
            which="listen",
            headers={
                "Content-Type": "application/json",
                "X-Aofd-Timestamp": ts,
                "X-Aofd-Signature": f"v1={sig}",
                "X-Aofd-Delivery": f"web-{time.monotonic_ns()}",
            },
        )
        return status

    def run_of(self, text: str, *, status: tuple[str, ...]) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for run in self.api("/api/v1/runs?binding=http-dev-webhook")["items"]:
                if run["status"] in status and run["run_id"] not in self.pages.get("seen-runs", ""):
                    return dict(run)
            return None

        run = self.daemon.wait_for(found, timeout=20, what=f"a run of {text!r} in {status}")
        self.pages["seen-runs"] = self.pages.get("seen-runs", "") + run["run_id"]
        return dict(run)


@pytest.fixture(autouse=True)
def _no_leaked_asyncio_tasks() -> None:
    """Overrides the suite's async check: these tests are synchronous and start no asyncio task,
    and Playwright's sync API keeps its own event loop running in this thread, beside which no
    other loop (the check's) can run."""
    return


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it when it can)")
    tmp = tmp_path_factory.mktemp("webui")
    repo = tmp / "repo"
    shutil.copytree(EXAMPLE, repo)
    token_file = tmp / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    token_file.chmod(0o600)
    shots = tmp / "screenshots"
    shots.mkdir()
    with (
        fakes.anthropic_server(responder=model) as llm,
        harness.run_daemon(
            str(repo),
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            str(token_file),
            cwd=tmp,
            state_dir=repo / ".aofd" / "state",
            env={**SECRETS, "ANTHROPIC_BASE_URL": fakes.url(llm)},
        ) as daemon,
        sync_api.sync_playwright() as pw,
    ):
        daemon.wait_ready()
        browser = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp, prefix="chromium-profile-"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = browser.new_page()
            console: list[str] = []
            fetched: set[str] = set()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: fetched.add(r.url))
            base = daemon.url("admin", "")
            yield Rig(daemon, repo, shots, base, browser, page, console, fetched)
        finally:
            browser.close()


def test_signing_in_and_every_page_loads_under_the_csp(rig: Rig) -> None:
    page = rig.page
    login = page.goto(f"{rig.base}/ui/")
    assert page.url.endswith("/ui/login")
    assert "default-src 'self'" in login.all_headers()["content-security-policy"]
    assert login.request.redirected_from is not None  # the 303 to the sign-in form
    redirect = login.request.redirected_from.response()
    assert "frame-ancestors 'none'" in redirect.all_headers()["content-security-policy"]
    page.fill("#token", "not-the-token-at-all-0000")
    page.click("button[type=submit]")
    page.wait_for_selector("#failed", state="visible")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#applied-revision")
    checks = [
        ("overview", "#last-pass", "overview"),
        ("resources", "#count", "resources"),
        ("resources?kind=FlowBinding&q=http", "#count", "resources-filtered"),
        ("resource/FlowBinding/http-dev-webhook", ".graph svg .gnode", "resource"),
        ("runs", "h1", "runs"),
        ("approvals", "h1", "approvals"),
        ("audit", "#verdict", "audit"),
    ]
    for route, ready, shot in checks:
        response = rig.show(route, ready, shot)
        headers = response.all_headers()
        assert "default-src 'self'" in headers["content-security-policy"], route
        assert "frame-ancestors 'none'" in headers["content-security-policy"], route
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    # The script and the stylesheet, as the browser got them, carry the policy and nosniff too.
    for name in ("app.js", "app.css"):
        got = page.request.get(f"{rig.base}/ui/{name}")
        assert "default-src 'self'" in got.headers["content-security-policy"], name
        assert got.headers["x-content-type-options"] == "nosniff", name
    missing = page.request.get(f"{rig.base}/ui/nothing-here")
    assert missing.status == 404
    assert "frame-ancestors 'none'" in missing.headers["content-security-policy"]
    # The kind and the filter narrow the table (and follow typing, without a reload).
    assert "http-dev-webhook" in rig.pages["resources-filtered"]
    assert "slack-dev-bot" not in rig.pages["resources-filtered"].split("<h2>Composition</h2>")[0]
    rig.show("resources?kind=FlowBinding", "#count", "resources-bindings")
    page.fill("#filter", "http-dev-webhook")
    page.wait_for_function("() => document.querySelector('#count').textContent.startsWith('1 of')")
    # The composition picture around the binding: its flow, Context and trigger, by name.
    resource = rig.pages["resource"]
    for name in ("slack-k8s-flow", "dev-context", "http-webhook", "k8s-ops"):
        assert f">{name}<" in resource, name
    # The hash chain is checked when asked (a check reads the whole log), never on a poll.
    assert "not checked yet" in rig.pages["audit"]
    rig.show("audit", "#verify", "audit-before-check")
    page.click("#verify")
    page.wait_for_function("() => document.querySelector('#verdict').textContent.includes('intact:')")
    assert "intact" in page.text_content("#verdict")
    # Status is text as well as colour.
    assert "Ready" in rig.pages["overview"]
    violations = [line for line in rig.console if "Content Security Policy" in line or "pageerror" in line]
    assert violations == []
    outside = [url for url in rig.fetched if not url.startswith((rig.base, "about:", "data:"))]
    assert outside == []


def test_a_pushed_change_shows_on_the_overview_without_a_reload(rig: Rig) -> None:
    page = rig.page
    rig.show("overview", "#applied-revision", "overview-before")
    before = page.text_content("#applied-revision")
    assert before == rig.api("/api/v1/status")["appliedRevision"]
    page.evaluate("window.__sameDocument = 'yes'")
    context_file = rig.repo / "contexts" / "dev-context.yaml"
    text = context_file.read_text()
    assert "  approval:\n    required: false\n" in text
    context_file.write_text(text.replace("  approval:\n    required: false\n", APPROVAL_RULE))
    page.wait_for_function(
        "(old) => document.querySelector('#applied-revision')?.textContent !== old",
        arg=before,
        timeout=20000,
    )
    assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened
    assert page.text_content("#applied-revision") == rig.api("/api/v1/status")["appliedRevision"]
    page.screenshot(path=str(rig.shots / "overview-after-push.png"), full_page=True)


def test_a_flow_run_is_drawn_node_by_node_with_the_guards_decisions(rig: Rig) -> None:
    assert rig.hook(f"RUN[get pods --token {FLAG_SECRET}]") == 202
    run = rig.run_of("get pods", status=("completed", "failed"))
    rig.show("runs", f"a[href='#/run/{run['run_id']}']", "runs-after")
    rig.page.click(f"a[href='#/run/{run['run_id']}']")
    rig.page.wait_for_selector(".graph svg .gnode[data-id='respond']")
    rig.page.wait_for_selector("text=command.denied")
    rig.page.screenshot(path=str(rig.shots / "run.png"), full_page=True)
    html = rig.page.content()
    rig.pages["run"] = html
    for node in ("start", "parse", "k8s", "respond"):
        assert f'data-id="{node}"' in html
    assert html.count("completed") >= 3  # each node's status, in words
    assert "identity-flag" in html  # the guard's rule that refused the --token flag
    assert "done: the cluster answered" in html  # the answer
    assert "sha256:" in html  # the refused flag's value, as the audit log hashed it


def test_a_command_waiting_for_approval_is_on_the_approvals_page(rig: Rig) -> None:
    assert rig.hook("RUN[delete pod web-1]") == 202
    pending = rig.daemon.wait_for(
        lambda: rig.api("/api/v1/approvals")["items"], timeout=20, what="a pending approval"
    )
    item = pending[0]
    rig.show("approvals", f"code[title='{item['id']}']", "approvals-pending")
    html = rig.pages["approvals-pending"]
    for shown in ("delete", "web-1", "dev-context", "U-web", item["expiresAt"]):
        assert shown in html, shown
    assert "admin:ops" in html
    rig.show(f"run/{item['runId']}", "text=approval.requested", "run-waiting")
    # The run is still going (its command waits), and its page says so in words.
    shown = rig.api(f"/api/v1/runs/{item['runId']}")
    assert shown["status"] in ("running", "waiting")
    assert f">{shown['status']}<" in rig.pages["run-waiting"]


def test_the_page_fits_a_phone(rig: Rig) -> None:
    page = rig.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for route, ready in (("overview", "#last-pass"), ("approvals", "h1"), ("runs", "h1")):
            rig.show(route, ready, f"phone-{route}")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), route
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_no_page_and_no_answer_it_fetched_holds_a_secret(rig: Rig) -> None:
    # A run whose answer echoes a secret the daemon holds (and a password): its run page and its
    # binding's page (which lists its runs) are loaded after it, and checked with the rest.
    assert rig.hook("LEAK[]") == 202
    run = rig.run_of("LEAK", status=("completed", "failed"))
    assert SECRETS["WEBHOOK_SECRET"] in LEAK  # the model did echo it
    rig.show(f"run/{run['run_id']}", ".graph svg .gnode", "run-leak")
    rig.show(
        "resource/FlowBinding/http-dev-webhook", f"a[href='#/run/{run['run_id']}']", "resource-after-runs"
    )
    assert "psql" in rig.pages["run-leak"]  # the answer is shown, its secrets are not
    assert len(rig.pages) >= 12
    secrets = [*SECRETS.values(), FLAG_SECRET, ADMIN_TOKEN, *LEAKED]
    for name, html in rig.pages.items():
        leaked = [s for s in secrets if s in html]
        assert leaked == [], name
    api_urls = sorted({url for url in rig.fetched if "/api/v1/" in url})
    assert any("/api/v1/runs/" in url for url in api_urls)
    assert any("/api/v1/audit/" in url for url in api_urls)
    assert any("/api/v1/resources/FlowBinding/http-dev-webhook" in url for url in api_urls)
    for url in api_urls:
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
        leaked = [s for s in secrets if s in body]
        assert leaked == [], url
    # And the daemon's own log (it logs no secret either).
    log = rig.daemon.log_text()
    assert [s for s in secrets if s in log] == []
    assert os.listdir(rig.shots)
