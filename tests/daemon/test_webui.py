"""The status web page's server half, over real loopback HTTP: `/ui/` is behind the admin token
(a same-origin sign-in form starts a session whose HttpOnly cookie, a random id, reads the
page's routes and never writes; without tokens only a loopback Host is answered; cross-site
writes are refused), every page answer carries
a strict Content-Security-Policy, the static files load nothing from elsewhere and run no inline
code, and the page's data (runs, flow graphs, audit tails and verdicts) is redacted and capped."""

from __future__ import annotations

import base64
import json
import re
import types
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from aofd.audit import journal, records
from aofd.daemon import admin, auditsink, webui
from aofd.runtime import ports
from tests.daemon.test_admin_auth import TOKEN, FakeView, serving

OPS_TOKEN = "ops-operator-token-0123456789abcdef"


class PageView(FakeView):
    """A `DaemonView` with the page's data, recording what it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[Any, ...]] = []

    def runs(self, binding: str | None, limit: int) -> list[dict[str, Any]]:
        self.asked.append(("runs", binding, limit))
        return [{"run_id": "R1"}]

    async def run(self, run_id: str) -> dict[str, Any] | None:
        self.asked.append(("run", run_id))
        return {"run_id": run_id} if run_id == "R1" else None

    def graph(self, focus: str | None) -> dict[str, Any]:
        self.asked.append(("graph", focus))
        return {"nodes": [], "edges": []} if focus != "Agent/ghost" else {"error": "Agent/ghost not found"}

    async def audit(self) -> list[dict[str, Any]]:
        return [{"context": "prod", "verify": {"ok": True}}]

    async def audit_tail(self, context: str, lines: int, *, verify: bool = False) -> dict[str, Any] | None:
        self.asked.append(("audit", context, lines, verify))
        return {"context": context, "entries": []} if context == "prod" else None


async def fetch(
    bound: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
) -> tuple[int, str, Mapping[str, str]]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    send = dict(headers or {})
    if data is not None:
        send["Content-Type"] = "application/x-www-form-urlencoded"
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://{bound}{path}", headers=send, data=data, allow_redirects=False
        ) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


def cookie_of(headers: Mapping[str, str]) -> str:
    """`name=value` of the page's cookie as the server set it."""
    return headers["Set-Cookie"].split(";", 1)[0]


async def test_without_a_token_the_page_sends_you_to_sign_in_and_serves_nothing_else() -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        status, _, headers = await fetch(bound, "GET", "/ui/")
        assert (status, headers["Location"]) == (303, "/ui/login")
        assert (await fetch(bound, "GET", "/ui"))[2]["Location"] == "/ui/"
        for path in ("/ui/app.js", "/api/v1/runs", "/api/v1/graph", "/api/v1/audit", "/api/v1/runs/R1"):
            assert (await fetch(bound, "GET", path))[0] == 401, path
        status, text, headers = await fetch(bound, "GET", "/ui/login")
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert 'name="token"' in text
        assert (await fetch(bound, "GET", "/ui/app.css"))[0] == 200
        # A bearer token (aofctl's way) reads the page too.
        status, text, headers = await fetch(
            bound, "GET", "/ui/", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200
        assert '<script src="/ui/app.js"' in text


def same_site(bound: str, scheme: str = "http") -> dict[str, str]:
    """What a browser sends with a form posted from the page itself."""
    return {"Origin": f"{scheme}://{bound}"}


async def sign_in(bound: str, token: str) -> tuple[int, Mapping[str, str]]:
    status, _, headers = await fetch(
        bound, "POST", "/ui/login", form={"token": token}, headers=same_site(bound)
    )
    return status, headers


async def test_signing_in_sets_an_opaque_session_cookie_that_reads_the_page_and_nothing_else() -> None:
    view = PageView()
    api = admin.AdminApi(view, token=TOKEN, named_tokens={"ops": OPS_TOKEN})
    async with serving(api) as bound:
        status, headers = await sign_in(bound, TOKEN + "x")
        assert (status, headers["Location"]) == (303, "/ui/login#failed")
        assert "Set-Cookie" not in headers
        status, headers = await sign_in(bound, OPS_TOKEN)
        assert (status, headers["Location"]) == (303, "/ui/")
        set_cookie = headers["Set-Cookie"]
        parts = {p.strip() for p in set_cookie.split(";")}
        assert {"HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={int(webui.SESSION_S)}"} <= parts
        assert "Secure" not in parts  # plain http: a Secure cookie would never come back
        value = cookie_of(headers).split("=", 1)[1]
        # The cookie is a random id: no token in it, in any encoding.
        assert len(value) >= 40
        assert OPS_TOKEN not in set_cookie
        assert base64.urlsafe_b64encode(OPS_TOKEN.encode()).decode().rstrip("=") not in set_cookie
        as_bearer = {"Authorization": f"Bearer {value}"}  # the cookie's value is no token
        assert (await fetch(bound, "POST", "/api/v1/reconcile", headers=as_bearer))[0] == 401
        cookie = {"Cookie": cookie_of(headers)}
        assert (await fetch(bound, "GET", "/ui/", headers=cookie))[0] == 200
        assert (await fetch(bound, "GET", "/ui/app.js", headers=cookie))[0] == 200
        status, _, _ = await fetch(bound, "GET", "/api/v1/runs?binding=b1&limit=5", headers=cookie)
        assert (status, view.asked[-1]) == (200, ("runs", "b1", 5))
        for path in ("/api/v1/status", "/api/v1/graph", "/api/v1/audit", "/api/v1/audit/prod"):
            assert (await fetch(bound, "GET", path, headers=cookie))[0] == 200, path
        # Only what the page reads: not the metrics, the inventory, nor remembered conversations.
        for path in ("/metrics", "/api/v1/inventory", "/api/v1/memory?context=c&binding=b&thread=t"):
            assert (await fetch(bound, "GET", path, headers=cookie))[0] == 401, path
        # The cookie never writes: no reconcile, no approval decision, no diff, no run.
        page = {**cookie, **same_site(bound)}
        assert (await fetch(bound, "POST", "/api/v1/reconcile", headers=page))[0] == 401
        decide = "/api/v1/approvals/" + "a" * 64 + "/approve"
        assert (await fetch(bound, "POST", decide, headers=page))[0] == 401
        assert (await fetch(bound, "POST", "/api/v1/diff", headers=page))[0] == 401
        assert (await fetch(bound, "POST", "/api/v1/runs", headers=page))[0] == 401
        assert view.reconciles == []
        # A forged or damaged cookie, or the old token-in-a-cookie, reads nothing.
        old = "aofd_ui=" + base64.urlsafe_b64encode(OPS_TOKEN.encode()).decode()
        for bad in ("aofd_ui=bm90LWEtdG9rZW4=", "aofd_ui=%%%", "aofd_ui=", old, f"aofd_ui={OPS_TOKEN}"):
            assert (await fetch(bound, "GET", "/api/v1/status", headers={"Cookie": bad}))[0] == 401, bad
        # Signing out revokes the session: the same cookie reads nothing after.
        status, _, headers = await fetch(bound, "POST", "/ui/logout", headers=page)
        assert (status, headers["Location"]) == (303, "/ui/login")
        assert "Max-Age=0" in headers["Set-Cookie"]
        assert (await fetch(bound, "GET", "/api/v1/status", headers=cookie))[0] == 401


async def test_a_session_expires_and_the_table_is_bounded() -> None:
    now = [0.0]
    sessions = webui.Sessions(ttl=60, limit=3, clock=lambda: now[0])
    first = sessions.open("ops")
    assert sessions.get(first) == webui.Session("ops", 60)
    now[0] = 61
    assert sessions.get(first) is None
    ids_ = [sessions.open(None) for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.get(ids_[0]) is None  # the oldest went first
    assert sessions.get(ids_[-1]) is not None
    sessions.close(ids_[-1])
    assert sessions.get(ids_[-1]) is None
    assert sessions.get("not-a-session") is None


async def test_the_cookie_is_secure_when_the_browser_came_over_https() -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        for extra in (same_site(bound, "https"), {**same_site(bound), "X-Forwarded-Proto": "https"}):
            _, _, headers = await fetch(bound, "POST", "/ui/login", form={"token": TOKEN}, headers=extra)
            assert "Secure" in {p.strip() for p in headers["Set-Cookie"].split(";")}


@pytest.mark.parametrize(
    "foreign",
    ['prefs={"dark":true}', "a b", 'sessionid=abc"def', "foo=bar;;", "csrftoken=a\\b", "aofd_ui=stale"],
)
async def test_another_applications_cookie_does_not_lock_the_page_out(foreign: str) -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        _, headers = await sign_in(bound, TOKEN)
        mine = cookie_of(headers)
        for header in (f"{foreign}; {mine}", f"{mine}; {foreign}"):
            assert (await fetch(bound, "GET", "/api/v1/status", headers={"Cookie": header}))[0] == 200, header


async def test_signing_in_or_out_from_another_site_is_refused() -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        for headers in (
            {},
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            for path in ("/ui/login", "/ui/logout"):
                status, _, got = await fetch(bound, "POST", path, form={"token": TOKEN}, headers=headers)
                assert status == 403, (path, headers)
                assert "Set-Cookie" not in got
                assert "frame-ancestors 'none'" in got["Content-Security-Policy"]
        # A same-origin form without Origin (a strict referrer policy) says so in Sec-Fetch-Site.
        _, _, got = await fetch(
            bound,
            "POST",
            "/ui/login",
            form={"token": TOKEN},
            headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        )
        assert got["Location"] == "/ui/"


async def test_a_sign_in_form_with_too_many_fields_is_a_failed_sign_in() -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        form = {"token": TOKEN, **{f"f{i}": "x" for i in range(5)}}
        status, _, headers = await fetch(bound, "POST", "/ui/login", form=form, headers=same_site(bound))
        assert (status, headers["Location"]) == (303, "/ui/login#failed")
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert "Set-Cookie" not in headers


async def test_without_tokens_only_a_loopback_host_is_answered_and_cross_site_writes_are_refused() -> None:
    view = PageView()
    async with serving(admin.AdminApi(view)) as bound:
        port = bound.rsplit(":", 1)[1]
        rebound = {"Host": f"rebind.evil.example:{port}"}
        for path in ("/ui/", "/api/v1/status", "/api/v1/runs/R1", "/api/v1/audit"):
            assert (await fetch(bound, "GET", path, headers=rebound))[0] == 403, path
        status, _, _ = await fetch(
            bound, "POST", "/api/v1/reconcile", headers={**rebound, "Origin": f"http://{rebound['Host']}"}
        )
        assert status == 403
        assert (await fetch(bound, "GET", "/healthz", headers=rebound))[0] == 200  # probes
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert (await fetch(bound, "GET", "/api/v1/status", headers={"Host": host}))[0] == 200, host
        # A "simple" cross-site POST (no preflight) is refused; aofctl's (no Origin) goes through.
        for cross in (
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"},
        ):
            assert (await fetch(bound, "POST", "/api/v1/reconcile", headers=cross))[0] == 403, cross
        assert view.reconciles == []
        assert (await fetch(bound, "POST", "/api/v1/reconcile"))[0] == 202
        assert (await fetch(bound, "POST", "/api/v1/reconcile", headers=same_site(bound)))[0] == 202


async def test_a_bearer_write_without_origin_still_works_and_a_cross_site_one_does_not() -> None:
    view = PageView()
    async with serving(admin.AdminApi(view, token=TOKEN)) as bound:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await fetch(bound, "POST", "/api/v1/reconcile", headers=auth))[0] == 202
        evil = {**auth, "Origin": "http://evil.example"}
        assert (await fetch(bound, "POST", "/api/v1/reconcile", headers=evil))[0] == 403
        assert len(view.reconciles) == 1


async def test_without_admin_tokens_the_page_is_as_open_as_the_api() -> None:
    async with serving(admin.AdminApi(PageView())) as bound:
        assert (await fetch(bound, "GET", "/ui/"))[0] == 200
        status, _, headers = await fetch(bound, "GET", "/ui/login")
        assert (status, headers["Location"]) == (303, "/ui/")


async def test_every_page_answer_carries_the_security_headers() -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answers = [
            await fetch(bound, "GET", path, headers=auth)
            for path in ("/ui/", "/ui/app.js", "/ui/app.css", "/ui/login", "/ui/nothing-here", "/ui")
        ]
        answers += [
            await fetch(bound, "GET", path) for path in ("/ui/", "/ui/app.js", "/ui/index.html")
        ]  # 303, 401
        answers.append(await fetch(bound, "POST", "/ui/login", form={"token": "x"}, headers=same_site(bound)))
        for path, (_, _, headers) in zip(
            [
                "/ui/",
                "/ui/app.js",
                "/ui/app.css",
                "/ui/login",
                "/ui/nothing-here",
                "/ui",
                "/ui/ (out)",
                "/ui/app.js (out)",
                "/ui/index.html (out)",
                "login failed",
            ],
            answers,
            strict=True,
        ):
            csp = headers.get("Content-Security-Policy", "")
            assert "default-src 'self'" in csp, path
            assert "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp, path
            assert "unsafe-eval" not in csp, path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Referrer-Policy"] == "same-origin", path
        assert (await fetch(bound, "GET", "/ui/nothing-here", headers=auth))[0] == 404
        assert (await fetch(bound, "DELETE", "/ui/", headers=auth))[0] == 405
        _, _, headers = await fetch(bound, "GET", "/ui/app.js", headers=auth)
        assert headers["Content-Type"].startswith("text/javascript")


def test_the_static_files_run_no_inline_code_and_load_nothing_from_elsewhere() -> None:
    files = {name: (webui.STATIC / name).read_text() for name in webui.FILES}
    for name in ("index.html", "login.html"):
        html = files[name]
        assert "<style" not in html, name
        assert " style=" not in html, name
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], name  # every script is a file
        assert re.findall(r"\son\w+=", html) == [], name  # no inline event handlers
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert url.startswith(("/ui/", "#", "data:")), (name, url)
    script = files["app.js"]
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "document.write"):
        assert risky not in script
    # The one absolute URL is the SVG namespace, which is a name, never fetched.
    assert set(re.findall(r"https?://[^\s\"']+", script)) == {"http://www.w3.org/2000/svg"}
    assert re.findall(r"https?://", files["app.css"]) == []


async def test_the_page_data_routes_answer_from_the_view() -> None:
    view = PageView()
    async with serving(admin.AdminApi(view, token=TOKEN)) as bound:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await fetch(bound, "GET", "/api/v1/runs", headers=auth))[0] == 200
        assert view.asked[-1] == ("runs", None, 50)
        assert (await fetch(bound, "GET", "/api/v1/runs?limit=nope", headers=auth))[0] == 200
        assert view.asked[-1] == ("runs", None, 50)
        assert (await fetch(bound, "GET", "/api/v1/runs/R1", headers=auth))[0] == 200
        status, text, _ = await fetch(bound, "GET", "/api/v1/runs/R2", headers=auth)
        assert status == 404
        assert "no run" in text
        assert (await fetch(bound, "GET", "/api/v1/graph?focus=Agent/ghost", headers=auth))[0] == 404
        assert view.asked[-1] == ("graph", "Agent/ghost")
        assert (await fetch(bound, "GET", "/api/v1/audit", headers=auth))[0] == 200
        assert (await fetch(bound, "GET", "/api/v1/audit/prod?lines=7", headers=auth))[0] == 200
        assert view.asked[-1] == ("audit", "prod", 7, False)  # a poll: no check of the whole log
        assert (await fetch(bound, "GET", "/api/v1/audit/prod?lines=7&verify=1", headers=auth))[0] == 200
        assert view.asked[-1] == ("audit", "prod", 7, True)
        assert (await fetch(bound, "GET", "/api/v1/audit/staging", headers=auth))[0] == 404
        assert (await fetch(bound, "POST", "/api/v1/graph", headers=auth))[0] == 405
        assert (await fetch(bound, "PUT", "/api/v1/audit/prod", headers=auth))[0] == 405


def test_a_shown_run_is_redacted_and_capped_and_the_list_leaves_outputs_out() -> None:
    run = {
        "run_id": "R1",
        "answer": "done; password=hunter2 was used",
        "error": None,
        "usage": {"input_tokens": 5, "output_tokens": 3},
        "nodes": [
            {
                "id": "a",
                "status": "completed",
                "output": {"text": "x" * 9000, "api_key": "k-123"},
                "error": None,
            },
            {"id": "b", "status": "failed", "output": None, "error": "GET https://h/?token=abc123 failed"},
        ],
    }
    shown = webui.shown_run(run, outputs=True)
    assert "hunter2" not in shown["answer"]
    assert shown["usage"] == {"input_tokens": 5, "output_tokens": 3}
    first = shown["nodes"][0]["output"]
    assert len(first["text"]) == webui.MAX_TEXT_CHARS + 1
    assert first["text"].endswith("…")
    assert first["api_key"] != "k-123"
    assert "abc123" not in shown["nodes"][1]["error"]
    assert all("output" not in n for n in webui.shown_run(run, outputs=False)["nodes"])


def test_the_flow_graph_is_the_specs_nodes_and_connections_with_the_runs_status() -> None:
    spec = {
        "nodes": [
            {"id": "plan", "type": "Agent"},
            {"id": "ok", "type": "Approval"},
            {"id": "apply", "type": "Agent"},
        ],
        "connections": [
            {"from": "start", "to": "plan"},
            {"from": "plan", "to": "ok"},
            {"from": "ok", "to": "apply"},
        ],
    }
    ran = [{"id": "plan", "status": "completed", "duration_ms": 12.5}, {"id": "ok", "status": "waiting"}]
    got = webui.flow_graph(spec, ran)
    by_id = {n["id"]: n for n in got["nodes"]}
    assert [n["id"] for n in got["nodes"]] == ["start", "plan", "ok", "apply"]
    assert [by_id[i]["layer"] for i in ("start", "plan", "ok", "apply")] == [0, 1, 2, 3]
    assert (by_id["plan"]["status"], by_id["plan"]["duration_ms"]) == ("completed", 12.5)
    assert by_id["ok"]["status"] == "waiting"
    assert by_id["apply"]["status"] == "not run"
    assert len(got["edges"]) == 3
    # Without a spec (an agent binding), the recorded nodes in the order they ran.
    alone = webui.flow_graph(None, [{"id": "x", "type": "agent"}, {"id": "y", "type": "response"}])
    assert [(n["id"], n["layer"]) for n in alone["nodes"]] == [("x", 0), ("y", 1)]
    assert alone["edges"] == [{"from": "x", "to": "y", "label": ""}]


async def write_log(audit_dir: Path, context: str, run_id: str) -> None:
    async with journal.AuditLog(audit_dir=audit_dir) as log:
        sink = auditsink.AuditAdapter(log, redactor=records.ArgvRedactor(key=b"k"))
        user = ports.UserRef(id="U1", name="u", domain="slack:T1")
        await sink.write(context, ports.AuditEvent("agent.run.started", run_id=run_id, user=user))
        await sink.write(
            context,
            ports.AuditEvent("command.denied", outcome="failure", reason="not allowed", run_id=run_id),
        )
        await sink.write(context, ports.AuditEvent("agent.run.started", run_id="OTHER", user=user))


def fake_daemon(audit_dir: Path) -> Any:
    """What `Pages` reads of a daemon: the config's audit dir; no audit log open, nothing applied."""
    return types.SimpleNamespace(
        cfg=types.SimpleNamespace(audit_dir=audit_dir), audit=None, reconciler=None, runtime=None
    )


async def test_the_audit_tail_and_verdict_follow_the_log_and_catch_tampering(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    await write_log(audit_dir, "prod", "RUN1")
    now = [0.0]
    pages = webui.Pages(cast("Any", fake_daemon(audit_dir)), reverify_s=30, clock=lambda: now[0])
    # Polls never check the log (a check reads all of it): only an explicit request does.
    logs = await pages.audit()
    assert [(x["context"], x["verify"]["ok"]) for x in logs] == [("prod", None)]
    tail = await pages.audit_tail("prod", 2)
    assert tail is not None
    assert tail["verify"]["text"] == "not checked yet"
    assert [e["action"] for e in tail["entries"]] == ["agent.run.started", "command.denied"]  # newest first
    assert tail["entries"][1]["runId"] == "RUN1"
    checked = await pages.audit_tail("prod", 2, verify=True)
    assert checked is not None
    assert checked["verify"]["ok"] is True
    assert [(x["context"], x["verify"]["ok"]) for x in await pages.audit()] == [
        ("prod", True)
    ]  # the last verdict
    assert await pages.audit_tail("../prod", 2) is None  # only Contexts with a log, by name
    events = webui._run_events(audit_dir / "prod", "RUN1")
    assert [e["action"] for e in events] == ["agent.run.started", "command.denied"]
    assert events[1]["reason"] == "not allowed"
    # Change one byte of a record: the verdict (recomputed: the segment changed) says so.
    segment_path = next((audit_dir / "prod").glob("audit-*.jsonl"))
    text = segment_path.read_text()
    segment_path.write_text(text.replace("not allowed", "not alloweD"))
    now[0] = 10.0

    async def check() -> dict[str, Any]:
        got = await pages.audit_tail("prod", 1, verify=True)
        assert got is not None
        return cast("dict[str, Any]", got["verify"])

    assert (await check())["ok"] is True  # checked 10 s ago: not yet again
    now[0] = 31.0
    verdict = await check()
    assert verdict["ok"] is False
    assert verdict["problems"]
    assert "TAMPERED" in verdict["text"]
    assert (await pages.audit())[0]["verify"]["ok"] is False


def test_the_pages_files_exist_and_ship_as_package_data() -> None:
    for name in webui.FILES:
        assert (webui.STATIC / name).is_file(), name
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"daemon/ui/*"' in pyproject


@pytest.mark.parametrize("header", ["", "other=1", "aofd_ui", "aofd_ui=", "xaofd_ui=1", 'a b; prefs={"x":1}'])
def test_a_cookie_header_without_the_pages_cookie_carries_no_session(header: str) -> None:
    assert webui.cookie_values(header) == []


def test_the_pages_cookie_is_found_among_any_others() -> None:
    assert webui.cookie_values('a b; prefs={"dark":true}; aofd_ui=S1;x=y\\z; aofd_ui="S2"') == ["S1", "S2"]


async def test_every_admin_api_answer_says_nosniff_and_may_not_be_framed() -> None:
    async with serving(admin.AdminApi(PageView(), token=TOKEN)) as bound:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path, extra in (
            ("/healthz", {}),
            ("/api/v1/status", auth),
            ("/api/v1/status", {}),
            ("/nope", auth),
            ("/metrics", auth),
        ):
            _, _, headers = await fetch(bound, "GET", path, headers=extra)
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path


class FakeHistory:
    """The run history's two questions (`RunHistory.recent` and `get`) over fixed records."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self._runs = runs

    def recent(self, *, binding: str | None, limit: int) -> list[dict[str, Any]]:
        return [r for r in self._runs if binding in (None, r["binding"])][:limit]

    def get(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self._runs if r["run_id"] == run_id), None)


PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAnotarealkey\n-----END RSA PRIVATE KEY-----"
AWS = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def leaky_run() -> dict[str, Any]:
    """A run whose answer, error and output echo secrets: the daemon's own values (a Trigger's
    secret and header value, a Context's kubeconfig variable, an admin token) and well-known shapes."""
    from tests.daemon.test_admin_diff import BOT, HEADER, SECRET

    stdout = f"PGPASSWORD=S3cr3tPassw0rd psql\n{PEM}\naws_secret_access_key = {AWS}\n" + "y" * 7000
    return {
        "run_id": "R-leak",
        "binding": "b1",
        "flow": "fl",
        "context": "prod",
        "status": "failed",
        "answer": f"token=abc123 and the hook secret is {SECRET}",
        "error": f"GET https://h/?token=abc123 failed: password=hunter2 ({HEADER})",
        "nodes": [
            {
                "id": "k8s",
                "status": "failed",
                "error": f"kubeconfig {BOT} refused; admin {TOKEN}",
                "output": {"stdout": stdout, "pairs": [["api_key", "k-123"]], "env": f"X={SECRET}"},
            }
        ],
    }


LEAKS = ("hunter2-webhook-secret", "xoxb-secret-1234567890", "hdr-value-0987654321", TOKEN, "abc123",
         "hunter2", "S3cr3tPassw0rd", "MIIEpAIBAAKCAQEA", AWS, "k-123")  # fmt: skip


def leaky_daemon(tmp_path: Path) -> Any:
    from tests.daemon.test_admin_diff import running_daemon

    daemon = running_daemon(tmp_path)
    daemon.runtime = types.SimpleNamespace(history=FakeHistory([leaky_run()]))
    daemon.admin_tokens = lambda: (TOKEN,)
    daemon.audit = None
    return daemon


async def test_the_resource_page_and_the_run_page_show_no_secret_a_run_echoed(tmp_path: Path) -> None:
    from aofd.daemon import view
    from aofd.resources import ids

    shown = view.AdminView(leaky_daemon(tmp_path))
    resource = json.dumps(list(shown.resources(ids.Kind.BINDING, "b1")))
    assert "R-leak" in resource  # the run is there, redacted
    assert [s for s in LEAKS if s in resource] == []
    assert len(resource) < 6000  # capped, no output
    run = json.dumps(await shown.run("R-leak"))
    assert "R-leak" in run
    assert [s for s in LEAKS if s in run] == []
    assert "psql" in run  # the rest of the output is still there
    listed = json.dumps(shown.runs("b1", 10))
    assert [s for s in LEAKS if s in listed] == []


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("PGPASSWORD=S3cr3tPassw0rd psql -h db", "S3cr3tPassw0rd"),
        ("export DB_SECRET='abc-def-ghi'", "abc-def-ghi"),
        (f"AWS_SECRET_ACCESS_KEY={AWS}", AWS),
        (f"key:\n{PEM}\nafter", "MIIEpAIBAAKCAQEA"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANtruncated", "MIIEvQIBADAN"),
        ("the value is my-env-value-77 here", "my-env-value-77"),
    ],
)
def test_run_text_is_redacted_by_pattern_and_by_the_daemons_known_values(text: str, gone: str) -> None:
    known = webui.KnownSecrets(["my-env-value-77", "short"])
    shown = webui.redact_shown(text, known)
    assert gone not in shown
    assert "[REDACTED]" in shown
    assert webui.redact_shown("a short word", known) == "a short word"  # under 6 characters: not searched
