"""Conversation memory: the earlier turns of a chat thread, kept per Context, binding and thread.

This module owns `Memory`, the daemon's one store of conversations, and the pure pieces a run
needs from it:

- a conversation is keyed by `Key(context, binding, conversation)`. The conversation id comes from
  the listener (`ports.EventMessage.conversation`: a Slack thread, a Telegram reply chain, a
  WhatsApp sender, an HTTP `thread`); schedules and webhooks from PagerDuty or GitHub carry none
  and are never remembered. The same thread under two Contexts is two conversations, and a
  binding moved to another Context starts fresh: the Context is the directory its memory lives in;
- stores (an agent's `memory`, `aofd.specs.memory.MemoryPolicy`): `state` (default) is one JSON
  file per conversation, `<state_dir>/memory/<context>/<sha256(binding NUL conversation)>.json`;
  `file` is one named file in that directory holding that agent's conversations; `in_memory` is
  a dict (gone at restart); `none` keeps nothing. Files are written atomically
  (`aofd.durable.atomic_write`), off the event loop;
- a turn is `{at, user_text, answer_text, tools: [{name, ok}]}`: what the person asked, what
  the agent answered and which tools it used (only tools that were offered to it: a name the
  model made up is stored as `unknown tool`). Tool *output* is never stored (it can hold
  anything a cluster said, and would be replayed into every later prompt). Text is redacted
  before it is stored: the injected `redact` (the audit log's secret patterns, wired by the
  daemon: the runtime does not import the audit package) and the literal secrets `secrets_of`
  gives (the daemon passes the Context's secret-looking `env` values and its own tokens and
  keys), of `MIN_SECRET_CHARS` or more;
- retention: at most `max_messages` turns, none older than `max_age_seconds` (expired turns are
  dropped on every load and write, never shown, and `sweep` removes expired files and the
  directories of Contexts no longer loaded), at most `max_conversations` conversations per
  Context and store (the least recently used are evicted), at most `MAX_TEXT_BYTES` of each
  text, at most `max_store_bytes` per named file or `in_memory` table (the oldest conversations
  go first); a WhatsApp conversation (one per sender) starts again after `IDLE_SECONDS` of silence;
- locking: one `asyncio.Lock` per (Context, file): a slow store of one Context holds up no other;
- Telegram reply chains: a reply continues the conversation of the message it replies to,
  the bot's answers included. `resolve` maps a message to its chain's root through an alias
  table (message -> root) that `remember` extends with the user's message and the bot's answer;
- `history_messages`: the turns an agent is shown, as user/assistant pairs, tools summarised as
  `[tools used: git__git_status ok]`, the oldest dropped first to fit the token budget (chars/4);
- `show` and `clear` for the admin API (`aofctl memory`); a clear is audited as `memory.cleared`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import structlog

from aofd import durable
from aofd.runtime import ports
from aofd.specs import memory as memory_specs

log = structlog.get_logger()

REDACTED = "[REDACTED]"
MAX_CONVERSATIONS = 1000
"""Conversations kept per Context (per store); the least recently used beyond it are evicted."""
MAX_TEXT_BYTES = 8 * 1024
"""The most of one user message or answer that is stored (UTF-8 bytes)."""
MAX_STORE_BYTES = 2 * 1024 * 1024
"""The most a named (`file:`) store or an `in_memory` table of one Context holds (bytes of JSON)."""
MAX_TOOL_NAME_CHARS = 128
UNKNOWN_TOOL = "unknown tool"
"""What a tool use is stored as when the model called a tool it was not offered."""
MAX_TOOLS_PER_TURN = 50
MAX_ALIASES = 5000
"""Telegram messages remembered per Context as members of a reply chain."""
MIN_SECRET_CHARS = 8
"""Literal secrets shorter than this are not replaced (`true`, `default`: nothing to protect)."""
IDLE_SECONDS: Mapping[str, float] = {"whatsapp": 3600.0}
"""Platforms whose conversation has no thread: after this much silence the next message starts a new one."""
ALIASED_PLATFORMS = frozenset({"telegram"})
"""Platforms whose conversation id is the message replied to, resolved to its chain's root."""
ALIASES_FILE = ".telegram-aliases.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_HASH_FILE = re.compile(r"^[0-9a-f]{64}\.json$")
Role = Literal["user", "assistant"]


class UnknownContext(LookupError):
    """`clear` of a conversation under a Context this daemon neither runs nor keeps memory for."""


class Key(NamedTuple):
    """One conversation: the Context, the binding and the platform's conversation id."""

    context: str
    binding: str
    conversation: str


@dataclasses.dataclass(frozen=True, slots=True)
class ToolUse:
    """A tool an agent called in a turn (its name as offered to the model) and whether it succeeded."""

    name: str
    ok: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: the person's text, the agent's answer, the tools it used (never their output)."""

    at: float
    user_text: str
    answer_text: str
    tools: tuple[ToolUse, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "user_text": self.user_text,
            "answer_text": self.answer_text,
            "tools": [{"name": t.name, "ok": t.ok} for t in self.tools],
        }

    @classmethod
    def from_json(cls, data: Any) -> Turn | None:
        """A stored turn, or None for anything that is not one (a damaged file loses turns, not the run)."""
        if not isinstance(data, dict):
            return None
        at, user, answer = data.get("at"), data.get("user_text"), data.get("answer_text")
        if not isinstance(at, int | float) or not isinstance(user, str) or not isinstance(answer, str):
            return None
        raw_tools = data.get("tools")
        if raw_tools is not None and not isinstance(raw_tools, list):
            return None
        tools = tuple(
            ToolUse(t["name"], bool(t.get("ok")))
            for t in raw_tools or []
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        )
        return cls(float(at), user, answer, tools)


@dataclasses.dataclass(frozen=True, slots=True)
class Recall:
    """What a run lends its agent: the conversation's earlier turns, for `agent` only."""

    agent: str
    policy: memory_specs.MemoryPolicy
    turns: tuple[Turn, ...] = ()


def conversation_key(binding: str, conversation: str) -> str:
    """The file name stem of a conversation in its Context's directory: sha256(binding NUL conversation)."""
    return hashlib.sha256(f"{binding}\0{conversation}".encode()).hexdigest()


def context_dir_name(context: str) -> str:
    """A Context's directory name: its name when that is a safe file name, else a digest of it."""
    if _SAFE_NAME.match(context) and context not in (".", ".."):
        return context
    return "ctx-" + hashlib.sha256(context.encode()).hexdigest()[:32]


def tools_summary(tools: Sequence[ToolUse]) -> str:
    """`[tools used: git__git_status ok, kubectl failed]`, or '' for none."""
    if not tools:
        return ""
    return "[tools used: " + ", ".join(f"{t.name} {'ok' if t.ok else 'failed'}" for t in tools) + "]"


def history_messages(
    turns: Sequence[Turn], policy: memory_specs.MemoryPolicy, *, cap_tokens: int | None = None
) -> list[tuple[Role, str]]:
    """The last `max_context_messages` turns as (role, text) user/assistant pairs, oldest first,
    the oldest dropped until they fit `policy.max_tokens` and `cap_tokens` (chars/4)."""
    budget = policy.max_tokens if cap_tokens is None else min(policy.max_tokens, cap_tokens)
    chosen = list(turns[-policy.max_context_messages :]) if policy.max_context_messages > 0 else []
    pairs: list[tuple[str, str]] = []
    for turn in chosen:
        summary = tools_summary(turn.tools)
        answer = f"{summary}\n{turn.answer_text}".strip() if summary else turn.answer_text
        pairs.append((turn.user_text or "(no text)", answer or "(no answer)"))
    used = sum(len(u) + len(a) for u, a in pairs)
    while pairs and used / 4 > budget:
        user, answer = pairs.pop(0)
        used -= len(user) + len(answer)
    out: list[tuple[Role, str]] = []
    for user, answer in pairs:
        out += [("user", user), ("assistant", answer)]
    return out


def own_ref(message: ports.EventMessage) -> str:
    """The message's own id in its conversation's namespace (`<chat>/<message id>`), for the platforms
    whose conversations are reply chains; '' for others."""
    if message.platform not in ALIASED_PLATFORMS:
        return ""
    for field in ("message", "edited_message", "channel_post"):
        msg = message.raw.get(field)
        if isinstance(msg, dict) and isinstance(msg.get("message_id"), int):
            return f"{message.channel_id}/{msg['message_id']}"
    return ""


def _clip(text: str) -> str:
    """`text`, cut to `MAX_TEXT_BYTES` of UTF-8 (on a character boundary) and marked when cut."""
    if len(text) <= MAX_TEXT_BYTES // 4:
        return text
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= MAX_TEXT_BYTES:
        return text
    return raw[:MAX_TEXT_BYTES].decode("utf-8", errors="ignore") + " …"


def _turns_of(data: Any) -> list[Turn]:
    """The valid turns of a stored conversation record (anything else in it is ignored)."""
    raw = data.get("turns") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    turns = (Turn.from_json(t) for t in raw)
    return [t for t in turns if t is not None]


def _max_age_of(data: Any) -> float:
    """The age limit a stored record was written under (the default for records without one)."""
    value = data.get("max_age_seconds") if isinstance(data, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return memory_specs.DEFAULT_MAX_AGE_SECONDS


def _fresh(turns: Iterable[Turn], max_age: float, now: float) -> list[Turn]:
    return [t for t in turns if now - t.at <= max_age]


def _turn_bytes(turn: Turn) -> int:
    """About the JSON size of a turn (for the byte caps of in-memory tables)."""
    return 64 + len(turn.user_text) + len(turn.answer_text) + sum(len(t.name) + 16 for t in turn.tools)


class Memory:
    """The daemon's conversations: recall before a run, remember after it, show and clear for operators.

    `state_dir` None keeps the `state` and `file` stores in memory too (tests, `aofctl run`).
    `redact` scrubs secrets out of text; `secrets_of(context)` are the values replaced besides
    (the Context's env); `audit` receives `memory.cleared`; `clock` is wall time (`time.time`).
    """

    def __init__(
        self,
        *,
        state_dir: Path | None,
        redact: Callable[[str], str] = lambda text: text,
        secrets_of: Callable[[str], Iterable[str]] = lambda _context: (),
        audit: ports.AuditSink | None = None,
        clock: Callable[[], float] = time.time,
        max_conversations: int = MAX_CONVERSATIONS,
        max_store_bytes: int = MAX_STORE_BYTES,
        known_context: Callable[[str], bool] = lambda _context: True,
    ) -> None:
        self.root = state_dir / "memory" if state_dir is not None else None
        self._redact = redact
        self._secrets_of = secrets_of
        self._audit = audit
        self._clock = clock
        self._max = max(1, max_conversations)
        self._max_bytes = max(4096, max_store_bytes)
        self._known = known_context
        # (context, store tag) -> conversation key -> entry, least recently used first
        self._dicts: dict[tuple[str, str], collections.OrderedDict[str, _Entry]] = {}
        self._aliases: dict[str, collections.OrderedDict[str, str]] = {}
        # one lock per (Context directory, file name): held while that file is read and rewritten
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- where things live ------------------------------------------------------------------

    def _dir(self, context: str) -> Path:
        assert self.root is not None
        return self.root / context_dir_name(context)

    def _on_disk(self, policy: memory_specs.MemoryPolicy) -> bool:
        return self.root is not None and policy.store in ("state", "file")

    def _tag(self, policy: memory_specs.MemoryPolicy) -> str:
        return f"file:{policy.file_name}" if policy.store == "file" and policy.file_name else policy.store

    def _lock(self, context: str, name: str) -> asyncio.Lock:
        """The lock of one file (or in-memory table entry) of a Context; kept while anyone holds it."""
        key = (context_dir_name(context), name)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _lock_of(self, key: Key, policy: memory_specs.MemoryPolicy) -> asyncio.Lock:
        if policy.store == "file" and policy.file_name:
            return self._lock(key.context, policy.file_name)
        return self._lock(key.context, f"{conversation_key(key.binding, key.conversation)}.json")

    # -- Telegram reply chains --------------------------------------------------------------

    async def resolve(self, context: str, binding: str, conversation: str) -> str:
        """The root of the reply chain `conversation` (a message replied to) belongs to, or itself."""
        aliases = await self._alias_table(context)
        return aliases.get(f"{binding}\0{conversation}", conversation)

    async def _alias_table(self, context: str) -> collections.OrderedDict[str, str]:
        table = self._aliases.get(context)
        if table is None:
            table = collections.OrderedDict()
            if self.root is not None:
                path = self._dir(context) / ALIASES_FILE
                data = await asyncio.to_thread(_read_json, path)
                if isinstance(data, dict):
                    for k, v in data.items():
                        if isinstance(k, str) and isinstance(v, str):
                            table[k] = v
            table = self._aliases.setdefault(context, table)  # another task may have loaded it meanwhile
        return table

    async def _alias(self, key: Key, refs: Iterable[str], *, persist: bool) -> None:
        refs = [r for r in refs if r and r != key.conversation]
        if not refs:
            return
        table = await self._alias_table(key.context)
        for ref in refs:
            table[f"{key.binding}\0{ref}"] = key.conversation
            table.move_to_end(f"{key.binding}\0{ref}")
        while len(table) > MAX_ALIASES:
            table.popitem(last=False)
        if persist and self.root is not None:
            async with self._lock(key.context, ALIASES_FILE):
                data = json.dumps(dict(table), separators=(",", ":")).encode()
                await asyncio.to_thread(durable.atomic_write, self._dir(key.context) / ALIASES_FILE, data)

    # -- recall and remember ----------------------------------------------------------------

    async def recall(
        self, key: Key, policy: memory_specs.MemoryPolicy, *, idle: float | None = None
    ) -> tuple[Turn, ...]:
        """The conversation's turns that are still kept (by age, and `idle` for thread-less platforms)."""
        if not policy.enabled or not key.conversation:
            return ()
        turns = await self._load(key, policy)
        return tuple(self._live(turns, policy, idle))

    async def remember(
        self,
        key: Key,
        policy: memory_specs.MemoryPolicy,
        *,
        user_text: str,
        answer_text: str,
        tools: Sequence[ToolUse] = (),
        idle: float | None = None,
        aliases: Iterable[str] = (),
    ) -> None:
        """Append one turn (redacted, clipped) and apply retention; `aliases` are further message refs
        (the user's message, the bot's answer) that continue this conversation when replied to."""
        if not policy.enabled or not key.conversation:
            return
        turn = Turn(
            self._clock(),
            _clip(self._clean(key.context, user_text)),
            _clip(self._clean(key.context, answer_text)),
            tuple(
                ToolUse(self._clean(key.context, t.name)[:MAX_TOOL_NAME_CHARS], t.ok)
                for t in tools[:MAX_TOOLS_PER_TURN]
            ),
        )
        async with self._lock_of(key, policy):
            turns = self._live(await self._load(key, policy), policy, idle)
            turns.append(turn)
            await self._save(key, policy, turns[-max(1, policy.max_messages) :])
        await self._alias(key, aliases, persist=self._on_disk(policy))

    def _live(self, turns: list[Turn], policy: memory_specs.MemoryPolicy, idle: float | None) -> list[Turn]:
        now = self._clock()
        if idle is not None and turns and now - turns[-1].at > idle:
            return []
        return [t for t in turns if now - t.at <= policy.max_age_seconds]

    def _clean(self, context: str, text: str) -> str:
        for value in sorted(set(self._secrets_of(context)), key=len, reverse=True):
            if len(value) >= MIN_SECRET_CHARS and value in text:
                text = text.replace(value, REDACTED)
        return self._redact(text)

    async def _load(self, key: Key, policy: memory_specs.MemoryPolicy) -> list[Turn]:
        stem = conversation_key(key.binding, key.conversation)
        if not self._on_disk(policy):
            table = self._dicts.get((key.context, self._tag(policy)))
            found = table.get(stem) if table is not None else None
            return list(found.turns) if found is not None else []
        data = await asyncio.to_thread(_read_json, self._path(key, policy))
        if policy.store == "file":
            conversations = data.get("conversations") if isinstance(data, dict) else None
            data = conversations.get(stem) if isinstance(conversations, dict) else None
        if not isinstance(data, dict) or data.get("binding") != key.binding:
            if data is not None and not isinstance(data, dict):
                log.warning("memory.damaged", context=key.context, store=self._tag(policy))
            return []
        if not isinstance(data.get("turns"), list):
            log.warning("memory.damaged", context=key.context, store=self._tag(policy))
        return _turns_of(data)

    def _path(self, key: Key, policy: memory_specs.MemoryPolicy) -> Path:
        if policy.store == "file" and policy.file_name:
            return self._dir(key.context) / policy.file_name
        return self._dir(key.context) / f"{conversation_key(key.binding, key.conversation)}.json"

    async def _save(self, key: Key, policy: memory_specs.MemoryPolicy, turns: list[Turn]) -> None:
        stem = conversation_key(key.binding, key.conversation)
        record = {
            "version": 1,
            "context": key.context,
            "binding": key.binding,
            "conversation": key.conversation,
            "max_age_seconds": policy.max_age_seconds,
            "turns": [t.to_json() for t in turns],
        }
        if not self._on_disk(policy):
            table = self._dicts.setdefault((key.context, self._tag(policy)), collections.OrderedDict())
            table.pop(stem, None)
            entry = _Entry(key, turns, policy.max_age_seconds, sum(map(_turn_bytes, turns)))
            while entry.size > self._max_bytes and len(entry.turns) > 1:
                entry = dataclasses.replace(
                    entry, turns=entry.turns[1:], size=entry.size - _turn_bytes(entry.turns[0])
                )
            table[stem] = entry
            total = sum(e.size for e in table.values())
            while len(table) > 1 and (len(table) > self._max or total > self._max_bytes):
                total -= table.popitem(last=False)[1].size
            return
        now = self._clock()
        if policy.store == "file":
            await asyncio.to_thread(
                _update_named_file, self._path(key, policy), stem, record, self._max, self._max_bytes, now
            )
        else:
            await asyncio.to_thread(_write_conversation, self._path(key, policy), record, self._max)

    # -- operators --------------------------------------------------------------------------

    async def show(self, key: Key) -> list[dict[str, Any]] | None:
        """Every stored copy of the conversation that still has turns within its age limit (one per
        store that holds it), or None."""
        now = self._clock()
        stem = conversation_key(key.binding, key.conversation)
        found: list[dict[str, Any]] = []
        for (context, tag), table in self._dicts.items():
            entry = table.get(stem) if context == key.context else None
            turns = _fresh(entry.turns, entry.max_age, now) if entry is not None else []
            if turns:
                found.append({"store": tag, "turns": [t.to_json() for t in turns]})
        if self.root is not None:
            copies = await asyncio.to_thread(self._on_disk_copies, key, now)
            found += [{"store": c.store, "turns": [t.to_json() for t in c.turns]} for c in copies if c.turns]
        return found or None

    async def clear(self, key: Key, *, user: ports.UserRef | None = None) -> int:
        """Forget the conversation in every store; how many copies there were. Audited first, durably
        (`memory.cleared`): when the audit log cannot take the record (`AuditUnavailable`), nothing
        is removed. `UnknownContext` (nothing audited) for a Context this daemon neither runs nor
        keeps memory for."""
        stem = conversation_key(key.binding, key.conversation)
        if not self._known(key.context) and not await self._has_memory(key.context):
            raise UnknownContext(key.context)
        now = self._clock()
        tables = [t for (context, _tag), t in self._dicts.items() if context == key.context and stem in t]
        on_disk = await asyncio.to_thread(self._on_disk_copies, key, now) if self.root is not None else []
        copies = len(tables) + len(on_disk)
        if self._audit is not None:
            event = ports.AuditEvent(
                "memory.cleared",
                outcome="success" if copies else "unknown",
                user=user,
                reason=None if copies else "no such conversation",
                details={
                    "memory": {
                        "binding": key.binding,
                        "conversation_sha256": hashlib.sha256(key.conversation.encode()).hexdigest(),
                        "copies": copies,
                    }
                },
            )
            await self._audit.write(key.context, event, durable=True)
        for table in tables:
            table.pop(stem, None)
        for copy in on_disk:
            async with self._lock(key.context, copy.name):
                await asyncio.to_thread(_remove_copy, self._dir(key.context) / copy.name, stem)
        return copies

    async def _has_memory(self, context: str) -> bool:
        if any(c == context for c, _tag in self._dicts):
            return True
        return self.root is not None and await asyncio.to_thread(self._dir(context).is_dir)

    def _on_disk_copies(self, key: Key, now: float) -> list[_Copy]:
        """The conversation's copies under its Context's directory (its own file, and its entry in
        any named file), their turns within the age limit. Runs in a worker thread."""
        directory = self._dir(key.context)
        stem = conversation_key(key.binding, key.conversation)
        found: list[_Copy] = []
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return found
        for name in names:
            path = directory / name
            if name.startswith("."):
                continue
            if name == f"{stem}.json":
                data = _read_json(path)
                if isinstance(data, dict) and data.get("binding") == key.binding:
                    found.append(_Copy("state", name, _fresh(_turns_of(data), _max_age_of(data), now)))
            elif not _HASH_FILE.match(name):
                data = _read_json(path)
                conversations = data.get("conversations") if isinstance(data, dict) else None
                record = conversations.get(stem) if isinstance(conversations, dict) else None
                if isinstance(record, dict):
                    turns = _fresh(_turns_of(record), _max_age_of(record), now)
                    found.append(_Copy(f"file:{name}", name, turns))
        return found

    # -- retention sweep ----------------------------------------------------------------------

    async def sweep(self, contexts: Collection[str]) -> int:
        """Drop what is past its age limit in every store, and everything of Contexts not in
        `contexts` (the ones this daemon runs); how many conversations (or Context directories) went.
        File work runs in worker threads, one file at a time under its lock."""
        keep = set(contexts)
        now = self._clock()
        removed = 0
        for (context, tag), table in list(self._dicts.items()):
            if context not in keep:
                removed += len(table)
                del self._dicts[(context, tag)]
                continue
            for stem, entry in list(table.items()):
                if not _fresh(entry.turns, entry.max_age, now):
                    del table[stem]
                    removed += 1
        for context in [c for c in self._aliases if c not in keep]:
            del self._aliases[context]
        if self.root is None:
            return removed
        dirs = {context_dir_name(c): c for c in keep}
        try:
            names = await asyncio.to_thread(os.listdir, self.root)
        except FileNotFoundError:
            return removed
        for name in sorted(names):
            path = self.root / name
            if name not in dirs:
                if await asyncio.to_thread(path.is_dir):
                    await asyncio.to_thread(shutil.rmtree, path, True)
                    removed += 1
                continue
            try:
                files = await asyncio.to_thread(os.listdir, path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for file_name in sorted(files):
                if file_name.startswith("."):
                    continue
                async with self._lock(dirs[name], file_name):
                    removed += await asyncio.to_thread(_sweep_file, path / file_name, now)
        return removed


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """An `in_memory` (or state-less) conversation: its turns, its age limit, about its size in bytes."""

    key: Key
    turns: list[Turn]
    max_age: float
    size: int


class _Copy(NamedTuple):
    """One stored copy of a conversation on disk: its store tag, its file name, its live turns."""

    store: str
    name: str
    turns: list[Turn]


# -- file I/O (worker threads) --------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or damaged (a warning: memory is best effort)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("memory.unreadable", file=path.name, error=type(exc).__name__)
        return None
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("memory.damaged", file=path.name)
        return None


def _encode(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _write_conversation(path: Path, record: dict[str, Any], max_conversations: int) -> None:
    new = not path.exists()
    durable.atomic_write(path, _encode(record))
    if new:
        _evict(path.parent, max_conversations)


def _evict(directory: Path, max_conversations: int) -> None:
    """Remove the least recently written conversation files beyond `max_conversations`."""
    files: list[tuple[float, Path]] = []
    for entry in os.scandir(directory):
        if _HASH_FILE.match(entry.name):
            with contextlib.suppress(FileNotFoundError):
                files.append((entry.stat().st_mtime, Path(entry.path)))
    if len(files) <= max_conversations:
        return
    files.sort()
    for _mtime, path in files[: len(files) - max_conversations]:
        path.unlink(missing_ok=True)
    durable.fsync_dir(directory)


def _update_named_file(
    path: Path, stem: str, record: dict[str, Any], max_conversations: int, max_bytes: int, now: float
) -> None:
    """Put `record` into the named file, last; drop expired conversations, then the oldest until
    there are at most `max_conversations` of at most `max_bytes` in all (the newest loses its oldest
    turns when it alone is too big)."""
    data = _read_json(path)
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, dict):
        conversations = {}
    conversations.pop(stem, None)
    for other, value in list(conversations.items()):
        if not isinstance(value, dict) or not _fresh(_turns_of(value), _max_age_of(value), now):
            del conversations[other]
    while len(record["turns"]) > 1 and len(_encode(record)) + 64 > max_bytes:
        record = {**record, "turns": record["turns"][1:]}
    conversations[stem] = record  # last written last: eviction drops the first
    while len(conversations) > max_conversations:
        conversations.pop(next(iter(conversations)))
    encoded = _encode({"version": 1, "conversations": conversations})
    if len(encoded) > max_bytes:  # the oldest conversations go until the rest fit
        sizes = {k: len(_encode(v)) + len(k) + 4 for k, v in conversations.items()}
        total = 32 + sum(sizes.values())
        while len(conversations) > 1 and total > max_bytes:
            oldest = next(iter(conversations))
            del conversations[oldest]
            total -= sizes.pop(oldest)
        encoded = _encode({"version": 1, "conversations": conversations})
    durable.atomic_write(path, encoded)


def _remove_copy(path: Path, stem: str) -> None:
    """Remove one conversation: its own file, or its entry in a named file."""
    if path.name == f"{stem}.json":
        path.unlink(missing_ok=True)
        durable.fsync_dir(path.parent)
        return
    data = _read_json(path)
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if isinstance(conversations, dict) and conversations.pop(stem, None) is not None:
        durable.atomic_write(path, _encode(data))


def _sweep_file(path: Path, now: float) -> int:
    """Drop the expired turns of one file (a conversation's own or a named one); remove the file
    when nothing is left; how many conversations went."""
    if not path.is_file():
        return 0
    data = _read_json(path)
    if _HASH_FILE.match(path.name):
        turns = _fresh(_turns_of(data), _max_age_of(data), now)
        if not turns:
            path.unlink(missing_ok=True)
            return 1
        if isinstance(data, dict) and len(turns) != len(data.get("turns") or []):
            durable.atomic_write(path, _encode({**data, "turns": [t.to_json() for t in turns]}))
        return 0
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, dict):
        return 0
    removed, changed = 0, False
    for stem, record in list(conversations.items()):
        raw = record.get("turns") if isinstance(record, dict) else None
        turns = _fresh(_turns_of(record), _max_age_of(record), now)
        if not turns:
            del conversations[stem]
            removed += 1
        elif not isinstance(raw, list) or len(turns) != len(raw):
            conversations[stem] = {**record, "turns": [t.to_json() for t in turns]}
            changed = True
    if removed or changed:
        durable.atomic_write(path, _encode({"version": 1, "conversations": conversations}))
    return removed
