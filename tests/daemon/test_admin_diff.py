"""`POST /api/v1/diff` is no oracle and no way to stall the daemon: it never substitutes or
compares a secret (a right and a wrong guess get the same answer), never says which variables
exist, keeps the sources' caps and a small body limit, and plans off the event loop."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aofd import settings
from aofd.daemon import admin, view
from aofd.plan import compiler, desired
from aofd.plan import diff as diff_mod
from aofd.resources import ids, snapshot
from aofd.resources.kinds import base as kinds_base
from tests.daemon.test_admin_auth import TOKEN, FakeView, call, serving
from tests.plan.conftest import binding, doc, flow

SECRET = "hunter2-webhook-secret"
BOT = "xoxb-secret-1234567890"
HEADER = "hdr-value-0987654321"
VARS = {"WEBHOOK_SECRET": SECRET, "SLACK_BOT_TOKEN": BOT, "WEBHOOK_HEADER": HEADER}


def files(secret: str = "${WEBHOOK_SECRET}", header: str = "${WEBHOOK_HEADER}") -> dict[str, bytes]:  # noqa: S107
    trigger = f"type: HTTP\nconfig:\n  webhook_secret: '{secret}'\n  required_headers:\n    X-Key: '{header}'"
    tree = {
        "t.yaml": doc("Trigger", "hook", trigger),
        "c.yaml": doc("Context", "prod", "namespace: default\nkubeconfig: '${SLACK_BOT_TOKEN}'"),
        "a.yaml": doc("Agent", "echo", "model: anthropic:claude-sonnet-4\ninstructions: You help."),
        "f.yaml": flow("fl", "echo"),
        "b.yaml": binding("b1", "fl", "prod", "hook"),
    }
    return {p: t.encode() for p, t in tree.items()}


def running_daemon(tmp_path: Path) -> Any:
    """What `AdminView` reads of a daemon that applied `files()` with `VARS` and its digest key."""
    cfg = settings.DaemonConfig(
        sources=(settings.SourceSpec(name="local", directory=settings.DirectorySourceSpec(path=tmp_path)),),
        state_dir=tmp_path / "state",
    )
    snap = snapshot.Snapshot.build(
        source="local", files={p: snapshot.SourceFile.of(p, c) for p, c in files().items()}
    )
    views = [desired.SourceView(name="local", kinds=desired.ALL_KINDS, snapshot=snap)]
    state = desired.build(views, variables=VARS, digest_key=b"k" * 32)
    compiled = compiler.build(state)
    assert compiled.ok, [i.format() for i in compiled.errors]
    running = {n: s.digest for n, s in compiled.listeners.items()}
    reconciler = SimpleNamespace(
        applied=state,
        conditions={},
        snapshots={"local": snap},
        inventory=diff_mod.Inventory.of(state, listeners=running),
    )
    return SimpleNamespace(reconciler=reconciler, cfg=cfg, runtime=None)


def compared(answer: dict[str, Any]) -> tuple[object, ...]:
    plan = answer["plan"]
    lines = answer["text"].splitlines()[1:]
    return (answer["errors"], plan["summary"], plan["changes"], plan["listeners"], lines)


def test_a_right_and_a_wrong_guess_get_the_same_answer(tmp_path: Path) -> None:
    dry = view.AdminView(running_daemon(tmp_path))
    right = dry.diff(None, files(secret=SECRET, header=HEADER))
    wrong = dry.diff(None, files(secret="guess-1", header="guess-2"))
    as_written = dry.diff(None, files())
    # The revision names the posted tree itself (its content digest, which the poster knows):
    # everything compared against what runs is the same for each.
    assert compared(right) == compared(wrong) == compared(as_written)
    assert right["errors"] == []
    assert "0 to update" in right["text"]
    assert "not compared" in right["text"]


def test_the_answer_holds_no_secret_nor_any_plain_digest_of_one(tmp_path: Path) -> None:
    daemon = running_daemon(tmp_path)
    answer = json.dumps(view.AdminView(daemon).diff(None, files(secret="changed")))
    state = daemon.reconciler.applied
    for value in (SECRET, BOT, HEADER):
        assert value not in answer
    for key, res in state.resources.items():
        assert str(kinds_base.digest(res.model)) not in answer or key.kind is not ids.Kind.TRIGGER
        assert str(state.digests[key]) not in answer or not state.digests[key].startswith("hmac")


def test_undefined_variables_are_not_reported_so_none_can_be_probed(tmp_path: Path) -> None:
    dry = view.AdminView(running_daemon(tmp_path))
    exists = dry.diff(None, files(secret="${WEBHOOK_SECRET}"))
    missing = dry.diff(None, files(secret="${WEBHOOK_NO_SUCH_VARIABLE}"))
    assert exists["errors"] == missing["errors"] == []
    assert "WEBHOOK_NO_SUCH_VARIABLE" not in json.dumps(missing)


def test_a_real_change_is_still_shown(tmp_path: Path) -> None:
    changed = dict(files())
    changed["a.yaml"] = doc(
        "Agent", "echo", "model: anthropic:claude-sonnet-4\ninstructions: Other."
    ).encode()
    answer = view.AdminView(running_daemon(tmp_path)).diff(None, changed)
    assert answer["plan"]["summary"]["update"] >= 1
    assert "Agent/echo" in answer["text"] or "echo" in answer["text"]


def test_the_api_and_describe_never_show_a_secret_bearing_value(tmp_path: Path) -> None:
    shown = view.AdminView(running_daemon(tmp_path))
    for kind, name in ((ids.Kind.TRIGGER, "hook"), (ids.Kind.CONTEXT, "prod")):
        text = json.dumps(list(shown.resources(kind, name)))
        for value in (SECRET, BOT, HEADER):
            assert value not in text
    (trigger,) = shown.resources(ids.Kind.TRIGGER, "hook")
    assert trigger["spec"]["config"]["required_headers"] == {"X-Key": "***"}


def body(tree: Mapping[str, bytes]) -> dict[str, Any]:
    return {"files": {p: base64.b64encode(c).decode() for p, c in tree.items()}}


async def test_an_oversized_request_is_refused_with_413() -> None:
    fake = FakeView()
    async with serving(admin.AdminApi(fake, token=TOKEN, max_diff_bytes=1024)) as bound:
        status, text, _ = await call(
            bound, "POST", "/api/v1/diff", token=TOKEN, body=body({"a.yaml": b"x" * 4096})
        )
    assert status == 413
    assert "max_diff_bytes" in text
    assert fake.diffs == []


def test_the_default_body_limit_is_small() -> None:
    assert settings.AdminApiSpec().max_diff_bytes <= 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({f"f{i}.yaml": b"" for i in range(snapshot.DEFAULT_LIMITS.max_files + 1)}, "at most 10000"),
        ({"big.yaml": b"#" * (snapshot.DEFAULT_LIMITS.max_file_bytes + 1)}, "big.yaml"),
    ],
)
async def test_the_sources_caps_apply_to_a_posted_tree(tree: dict[str, bytes], expected: str) -> None:
    fake = FakeView()
    api = admin.AdminApi(fake, token=TOKEN, max_diff_bytes=64 * 1024 * 1024)
    async with serving(api) as bound:
        status, text, _ = await call(bound, "POST", "/api/v1/diff", token=TOKEN, body=body(tree))
    assert status == 413
    assert expected in text
    assert fake.diffs == []


@pytest.mark.parametrize("bad", [{"files": {"../x.yaml": "eA=="}}, {"files": {"a.yaml": "not base64!"}}, [1]])
async def test_a_malformed_tree_is_a_clear_400(bad: Any) -> None:
    async with serving(admin.AdminApi(FakeView(), token=TOKEN)) as bound:
        status, text, _ = await call(bound, "POST", "/api/v1/diff", token=TOKEN, body=bad)
    assert status == 400
    assert "error" in json.loads(text)


class BlockingView(FakeView):
    """A view whose dry run blocks until released, as planning a large tree does."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def diff(self, source: str | None, files: Mapping[str, bytes]) -> dict[str, Any]:
        self.started.set()
        self.release.wait(30)
        return super().diff(source, files)


async def test_planning_runs_off_the_event_loop_and_one_at_a_time() -> None:
    blocking = BlockingView()
    async with serving(admin.AdminApi(blocking, token=TOKEN)) as bound:
        pending = asyncio.create_task(call(bound, "POST", "/api/v1/diff", token=TOKEN, body=body({})))
        try:
            assert await asyncio.to_thread(blocking.started.wait, 10)
            # The loop still answers while the dry run plans (it would hang here on the loop).
            status, _, _ = await asyncio.wait_for(call(bound, "GET", "/healthz"), timeout=5)
            assert status == 200
            second = await asyncio.wait_for(
                call(bound, "POST", "/api/v1/diff", token=TOKEN, body=body({})), timeout=5
            )
            assert second[0] == 429
        finally:
            blocking.release.set()
        status, text, _ = await asyncio.wait_for(pending, timeout=10)
    assert status == 200
    assert "0 to update" in text


def test_secrets_that_expand_to_nothing_are_not_a_false_update(tmp_path: Path) -> None:
    """A Context whose env is `${SLACK_EMPTY:-}` (unset) runs with an empty value; posting the
    same tree must still plan nothing (an empty value is masked like any other)."""
    daemon = running_daemon(tmp_path)
    tree = dict(files())
    tree["c.yaml"] = doc("Context", "prod", "namespace: default\nenv:\n  E: '${SLACK_EMPTY:-}'").encode()
    snap = snapshot.Snapshot.build(
        source="local", files={p: snapshot.SourceFile.of(p, c) for p, c in tree.items()}
    )
    state = desired.build(
        [desired.SourceView(name="local", kinds=desired.ALL_KINDS, snapshot=snap)],
        variables=VARS,
        digest_key=b"k" * 32,
    )
    compiled = compiler.build(state)
    daemon.reconciler.applied = state
    daemon.reconciler.inventory = diff_mod.Inventory.of(
        state, listeners={n: s.digest for n, s in compiled.listeners.items()}
    )
    answer = view.AdminView(daemon).diff(None, tree)
    assert answer["errors"] == []
    assert "0 to update" in answer["text"], answer["text"]
