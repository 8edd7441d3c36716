"""The daemon's wiring of conversation memory (`aofd.daemon.wiring`): which literal values it redacts."""

from __future__ import annotations

from pathlib import Path

from aofd import settings
from aofd.audit import journal
from aofd.daemon import wiring
from aofd.runtime import memory
from aofd.specs import memory as memory_specs
from aofd.specs import policy


async def test_memory_redacts_secret_env_values_and_the_daemons_keys_but_not_ordinary_words(
    tmp_path: Path,
) -> None:
    runtime = wiring.Runtime(
        settings.DaemonConfig(state_dir=tmp_path / "state"),
        audit=journal.AuditLog(audit_dir=tmp_path / "audit"),
        sources=[],
        environ={"ANTHROPIC_API_KEY": "model-key-0123456789", "TELEGRAM_BOT_TOKEN": "tg-token-abcdefgh"},
    )
    try:
        runtime.policies["prod"] = policy.GuardPolicy(
            context="prod",
            env=(("DB_PASSWORD", "hunter2-prod-db"), ("NAMESPACE", "default"), ("VERBOSE", "information")),
        )
        key = memory.Key("prod", "b", "t")
        await runtime.memory.remember(
            key,
            memory_specs.MemoryPolicy(),
            user_text="more information on pods in the default namespace, db hunter2-prod-db",
            answer_text="used model-key-0123456789 and tg-token-abcdefgh",
        )
        (turn,) = await runtime.memory.recall(key, memory_specs.MemoryPolicy())
        assert turn.user_text == "more information on pods in the default namespace, db [REDACTED]"
        assert turn.answer_text == "used [REDACTED] and [REDACTED]"
    finally:
        await runtime.aclose()
