"""Conversation memory's stores (`aofd.runtime.memory`): real files in a temp state dir, a fake clock,
the audit log's own redaction."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from aofd import errors
from aofd.audit import redact
from aofd.runtime import memory, ports
from aofd.specs import memory as memory_specs
from aofd.testing import recorders

STATE = memory_specs.MemoryPolicy()
KEY = memory.Key("prod", "slack-prod-bot", "C1/1700000000.000100")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def store(tmp_path: Path, clock: Clock | None = None, **kwargs: object) -> memory.Memory:
    return memory.Memory(
        state_dir=tmp_path,
        redact=redact.redact_text,
        clock=clock or Clock(),
        **kwargs,
    )


async def test_state_store_survives_a_restart(tmp_path: Path) -> None:
    """A turn written by one instance is read by a new one (the daemon restarted) from its file."""
    first = store(tmp_path)
    await first.remember(
        KEY,
        STATE,
        user_text="why is nginx down?",
        answer_text="OOMKilled",
        tools=[memory.ToolUse("kubectl", True)],
    )
    path = tmp_path / "memory" / "prod" / f"{memory.conversation_key(KEY.binding, KEY.conversation)}.json"
    assert path.is_file()
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    again = store(tmp_path)
    (turn,) = await again.recall(KEY, STATE)
    assert (turn.user_text, turn.answer_text, turn.tools) == (
        "why is nginx down?",
        "OOMKilled",
        (memory.ToolUse("kubectl", True),),
    )
    assert await again.recall(KEY._replace(context="staging"), STATE) == ()
    assert await again.recall(KEY._replace(binding="other"), STATE) == ()


async def test_secrets_and_context_env_values_are_redacted_in_the_file(tmp_path: Path) -> None:
    env = {"prod": ["hunter2-prod-db", "x"]}
    mem = store(tmp_path, secrets_of=lambda ctx: env.get(ctx, []))
    await mem.remember(
        KEY,
        STATE,
        user_text="use key sk-ant-api03-AbCdEf0123456789 and the password hunter2-prod-db",
        answer_text="connected with hunter2-prod-db; x stays",
    )
    (path,) = (tmp_path / "memory" / "prod").glob("*.json")
    raw = path.read_text()
    assert "sk-ant-api03" not in raw
    assert "hunter2-prod-db" not in raw
    assert raw.count("[REDACTED]") >= 3
    assert "x stays" in raw  # values too short to be secrets are not garbled in


async def test_retention_by_turns_and_by_age(tmp_path: Path) -> None:
    clock = Clock()
    mem = store(tmp_path, clock)
    policy = dataclasses.replace(STATE, max_messages=3, max_age_seconds=3600)
    for n in range(5):
        await mem.remember(KEY, policy, user_text=f"q{n}", answer_text=f"a{n}")
        clock.now += 60
    assert [t.user_text for t in await mem.recall(KEY, policy)] == ["q2", "q3", "q4"]
    stored = json.loads(next((tmp_path / "memory" / "prod").glob("*.json")).read_text())
    assert len(stored["turns"]) == 3

    clock.now += 3600 - 3 * 60 + 1  # q2 is now older than an hour, q3 and q4 are not
    assert [t.user_text for t in await mem.recall(KEY, policy)] == ["q3", "q4"]
    clock.now += 3600
    assert await mem.recall(KEY, policy) == ()


async def test_idle_window_starts_a_new_conversation(tmp_path: Path) -> None:
    clock = Clock()
    mem = store(tmp_path, clock)
    key = memory.Key("prod", "wa", "15551234567")
    await mem.remember(key, STATE, user_text="hi", answer_text="hello", idle=600)
    clock.now += 599
    assert len(await mem.recall(key, STATE, idle=600)) == 1
    clock.now += 2
    assert await mem.recall(key, STATE, idle=600) == ()
    await mem.remember(key, STATE, user_text="again", answer_text="yes", idle=600)
    assert [t.user_text for t in await mem.recall(key, STATE, idle=600)] == ["again"]


async def test_at_most_n_conversations_per_context(tmp_path: Path) -> None:
    clock = Clock()
    mem = store(tmp_path, clock, max_conversations=2)
    keys = [KEY._replace(conversation=f"C1/{n}") for n in range(3)]
    for key in keys:
        await mem.remember(key, STATE, user_text="q", answer_text="a")
        clock.now += 1
    assert len(list((tmp_path / "memory" / "prod").glob("*.json"))) == 2
    assert await mem.recall(keys[0], STATE) == ()
    assert len(await mem.recall(keys[2], STATE)) == 1


async def test_none_stores_nothing_and_in_memory_writes_no_file(tmp_path: Path) -> None:
    mem = store(tmp_path)
    off = dataclasses.replace(STATE, store="none")
    await mem.remember(KEY, off, user_text="q", answer_text="a")
    assert await mem.recall(KEY, off) == ()
    in_memory = dataclasses.replace(STATE, store="in_memory")
    await mem.remember(KEY, in_memory, user_text="q", answer_text="a")
    assert len(await mem.recall(KEY, in_memory)) == 1
    assert await mem.recall(KEY, STATE) == ()  # another store
    assert not (tmp_path / "memory").exists()


async def test_file_store_keeps_the_agents_conversations_in_one_named_file(tmp_path: Path) -> None:
    policy = dataclasses.replace(STATE, store="file", file_name="k8s-ops.json")
    mem = store(tmp_path)
    other = KEY._replace(conversation="C1/2")
    await mem.remember(KEY, policy, user_text="q1", answer_text="a1")
    await mem.remember(other, policy, user_text="q2", answer_text="a2")
    assert [p.name for p in (tmp_path / "memory" / "prod").iterdir()] == ["k8s-ops.json"]
    again = store(tmp_path)
    assert [t.user_text for t in await again.recall(other, policy)] == ["q2"]
    assert await again.clear(KEY) == 1
    assert await again.recall(KEY, policy) == ()
    assert [t.user_text for t in await again.recall(other, policy)] == ["q2"]


async def test_clear_is_audited_before_anything_is_removed(tmp_path: Path) -> None:
    audit = recorders.RecordingAudit()
    mem = store(tmp_path, audit=audit)
    await mem.remember(KEY, STATE, user_text="q", answer_text="a")
    alice = ports.UserRef("admin:alice", "alice", "admin")
    shown = await mem.show(KEY)
    assert shown is not None
    assert shown[0]["store"] == "state"
    assert shown[0]["turns"][0]["answer_text"] == "a"

    assert await mem.clear(KEY, user=alice) == 1
    assert await mem.recall(KEY, STATE) == ()
    assert await mem.show(KEY) is None
    ((context, event),) = [(c, e) for c, e in audit.events if e.action == "memory.cleared"]
    assert context == "prod"
    assert event.user == alice
    assert event.details["memory"]["binding"] == KEY.binding
    assert KEY.conversation not in json.dumps(event.details)  # its digest only


async def test_clear_removes_nothing_when_the_audit_log_is_unavailable(tmp_path: Path) -> None:
    class Down:
        async def write(self, context: str, event: ports.AuditEvent, *, durable: bool = False) -> None:
            raise errors.AuditUnavailable("disk full")

    mem = store(tmp_path, audit=Down())
    await mem.remember(KEY, STATE, user_text="q", answer_text="a")
    with pytest.raises(errors.AuditUnavailable):
        await mem.clear(KEY)
    assert len(await mem.recall(KEY, STATE)) == 1


async def test_telegram_aliases_map_replies_to_the_chain_root_across_a_restart(tmp_path: Path) -> None:
    mem = store(tmp_path)
    root = KEY._replace(conversation="-100/10")
    await mem.remember(root, STATE, user_text="q", answer_text="a", aliases=["-100/10", "-100/11"])
    again = store(tmp_path)
    assert await again.resolve("prod", KEY.binding, "-100/11") == "-100/10"  # a reply to the bot's answer
    assert await again.resolve("prod", KEY.binding, "-100/12") == "-100/12"  # not in a chain: its own
    assert await again.resolve("staging", KEY.binding, "-100/11") == "-100/11"  # never across Contexts


def test_history_is_trimmed_oldest_first_to_the_token_budget() -> None:
    turns = [
        memory.Turn(1.0, "u" * 400, "a" * 400, (memory.ToolUse("git__git_status", True),)),
        memory.Turn(2.0, "second", "answer two", (memory.ToolUse("kubectl", False),)),
    ]
    policy = dataclasses.replace(STATE, max_tokens=100)
    assert memory.history_messages(turns, policy) == [
        ("user", "second"),
        ("assistant", "[tools used: kubectl failed]\nanswer two"),
    ]
    roomy = dataclasses.replace(STATE, max_tokens=10_000)
    assert len(memory.history_messages(turns, roomy)) == 4
    assert len(memory.history_messages(turns, roomy, cap_tokens=100)) == 2  # the Context's cap
    assert memory.history_messages(turns, dataclasses.replace(roomy, max_context_messages=1))[0] == (
        "user",
        "second",
    )


async def test_expired_turns_are_dropped_from_disk_and_from_show(tmp_path: Path) -> None:
    """The age limit applies to what is kept, not only to what is recalled: a remember drops the
    expired turns from the file, `show` never returns them, and a sweep removes expired files and the
    directories of Contexts no longer loaded."""
    clock = Clock()
    mem = store(tmp_path, clock)
    policy = dataclasses.replace(STATE, max_age_seconds=60)
    other = KEY._replace(conversation="C1/2")
    await mem.remember(KEY, policy, user_text="my password is hunter2hunter2", answer_text="noted")
    await mem.remember(other, policy, user_text="old", answer_text="a")
    await mem.remember(KEY._replace(context="gone"), policy, user_text="q", answer_text="a")
    clock.now += 10 * 86400
    assert await mem.show(KEY) is None
    await mem.remember(KEY, policy, user_text="new", answer_text="a")
    path = tmp_path / "memory" / "prod" / f"{memory.conversation_key(KEY.binding, KEY.conversation)}.json"
    assert "hunter2" not in path.read_text()
    shown = await mem.show(KEY)
    assert shown is not None
    assert [t["user_text"] for t in shown[0]["turns"]] == ["new"]

    removed = await mem.sweep({"prod"})
    assert removed >= 2
    assert sorted(p.name for p in (tmp_path / "memory").iterdir()) == ["prod"]
    assert [p.name for p in (tmp_path / "memory" / "prod").glob("*.json")] == [path.name]


async def test_expired_in_memory_and_named_file_conversations_are_swept(tmp_path: Path) -> None:
    clock = Clock()
    mem = store(tmp_path, clock)
    named = dataclasses.replace(STATE, store="file", file_name="ops.json", max_age_seconds=60)
    ram = dataclasses.replace(STATE, store="in_memory", max_age_seconds=60)
    await mem.remember(KEY, named, user_text="q-file", answer_text="a")
    await mem.remember(KEY, ram, user_text="q-ram", answer_text="a")
    clock.now += 120
    assert await mem.show(KEY) is None
    await mem.sweep({"prod"})
    assert "q-file" not in (tmp_path / "memory" / "prod" / "ops.json").read_text()
    assert mem._dicts.get(("prod", "in_memory")) in (None, {})


async def test_a_slow_store_of_one_context_does_not_hold_up_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locks are per (Context, file): a remember stuck writing dev's named file does not block prod."""
    import threading

    from aofd import durable

    release = threading.Event()
    real = durable.atomic_write

    def slow(path: Path, data: bytes, *args: object, **kwargs: object) -> None:
        if path.parent.name == "dev":
            release.wait(10)
        real(path, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(durable, "atomic_write", slow)
    mem = store(tmp_path)
    named = dataclasses.replace(STATE, store="file", file_name="ops.json")
    stuck = asyncio.ensure_future(
        mem.remember(KEY._replace(context="dev"), named, user_text="q", answer_text="a")
    )
    try:
        await asyncio.wait_for(mem.remember(KEY, STATE, user_text="q", answer_text="a"), 5)
        assert not stuck.done()
    finally:
        release.set()
        await stuck
    assert len(await mem.recall(KEY, STATE)) == 1


async def test_stored_text_and_stores_are_capped_in_bytes(tmp_path: Path) -> None:
    """A turn keeps at most MAX_TEXT_BYTES of each text; a named file and an in_memory table at most
    `max_store_bytes` (the oldest conversations go first)."""
    mem = store(tmp_path, max_store_bytes=64 * 1024)
    big = "é" * 100_000
    await mem.remember(KEY, STATE, user_text=big, answer_text=big)
    (turn,) = await mem.recall(KEY, STATE)
    assert len(turn.user_text.encode()) <= memory.MAX_TEXT_BYTES + 8
    assert len(turn.answer_text.encode()) <= memory.MAX_TEXT_BYTES + 8
    for policy in (
        dataclasses.replace(STATE, store="file", file_name="ops.json"),
        dataclasses.replace(STATE, store="in_memory"),
    ):
        keys = [KEY._replace(conversation=f"C1/{n}") for n in range(12)]
        for key in keys:
            await mem.remember(key, policy, user_text="x" * 6000, answer_text="y" * 6000)
        assert len(await mem.recall(keys[-1], policy)) == 1
        assert await mem.recall(keys[0], policy) == ()
    assert (tmp_path / "memory" / "prod" / "ops.json").stat().st_size <= 64 * 1024
    table = mem._dicts[("prod", "in_memory")]
    assert 0 < len(table) < 12


async def test_env_values_shorter_than_eight_chars_are_not_redacted(tmp_path: Path) -> None:
    mem = store(tmp_path, secrets_of=lambda _ctx: ["info", "default", "true", "s3cr3t-value"])
    await mem.remember(
        KEY, STATE, user_text="more information on pods in the default namespace", answer_text="s3cr3t-value"
    )
    (turn,) = await mem.recall(KEY, STATE)
    assert turn.user_text == "more information on pods in the default namespace"
    assert turn.answer_text == "[REDACTED]"


@pytest.mark.parametrize(
    "content",
    [
        {"binding": KEY.binding, "turns": 5},
        {"binding": KEY.binding, "turns": [{"at": 1, "user_text": "q", "answer_text": "a", "tools": 3}]},
        {
            "binding": KEY.binding,
            "turns": [{"at": 1, "user_text": "q", "answer_text": "a", "tools": [{"name": 4}]}],
        },
        [1, 2],
    ],
)
async def test_a_file_of_the_wrong_shape_is_treated_as_empty(tmp_path: Path, content: object) -> None:
    mem = store(tmp_path)
    path = tmp_path / "memory" / "prod" / f"{memory.conversation_key(KEY.binding, KEY.conversation)}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content))
    turns = await mem.recall(KEY, STATE)
    assert all(isinstance(t.tools, tuple) for t in turns)
    await mem.show(KEY)  # must not raise
    await mem.remember(KEY, STATE, user_text="q2", answer_text="a2")
    assert [t.user_text for t in await mem.recall(KEY, STATE)][-1] == "q2"


async def test_clear_of_an_unknown_context_is_refused_before_any_audit(tmp_path: Path) -> None:
    audit = recorders.RecordingAudit()
    mem = store(tmp_path, audit=audit, known_context=lambda name: name == "prod")
    with pytest.raises(memory.UnknownContext):
        await mem.clear(KEY._replace(context="nosuch"))
    assert audit.events == []
    assert await mem.clear(KEY) == 0  # a known Context: audited, nothing there
    assert len(audit.events) == 1
