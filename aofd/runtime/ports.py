"""The seams of the runtime: small Protocols and value types shared by listeners, the
dispatcher, the flow engine and the command guard.

The runtime never imports the audit package (DESIGN.md section 3 keeps source, runtime
and audit independent); it writes audit records through `AuditSink`, which the daemon
wires to `aofd.audit`. Likewise replies go out through `Replier`, implemented per platform,
and listeners hand events to the `Dispatch` port (`aofd.runtime.dispatch.Dispatcher`), so no
listener module depends on routing or on another listener.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol


class UserRef(NamedTuple):
    """Who sent an event: the immutable platform id (never the display name) and a name."""

    id: str
    name: str = ""
    domain: str = ""  # "slack:T0001", "telegram", "whatsapp:<waba>", "pagerduty", "github", "cli"


@dataclasses.dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where an answer goes: a platform, the trigger that received the event, a channel and thread.

    `extra` holds what only the platform's replier reads: a Slack slash command's `response_url`
    (and `issued_at`, when the command arrived), and `visibility: private` for an answer only the
    asker needs (a run's failure; Slack's `ephemeral`). `repr` hides the response URL: it lets
    anyone post to the channel for half an hour.
    """

    platform: str
    trigger: str
    channel_id: str = ""
    thread: str = ""
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        extra = {k: "<hidden>" if k == RESPONSE_URL else v for k, v in self.extra.items()}
        return (
            f"ReplyTarget(platform={self.platform!r}, trigger={self.trigger!r}, "
            f"channel_id={self.channel_id!r}, thread={self.thread!r}, extra={extra!r})"
        )


RESPONSE_URL = "response_url"
"""`ReplyTarget.extra` key (and slash-command form field) of the URL a slash command's answers go to."""

ISSUED_AT = "issued_at"
"""`ReplyTarget.extra` key: when the response URL was issued (`EventMessage.received_at`, as text)."""

RESPONSE_URL_EVENTS = frozenset({"slash_command", "message_component"})
"""Event types whose answers go to the `response_url` the event carries in its `raw` (Slack's slash
commands; Discord's interactions, whose listener puts the interaction's webhook there)."""

VISIBILITY = "visibility"
"""`ReplyTarget.extra` key; the value `private` asks for an answer only the asker sees, where possible."""


def private(target: ReplyTarget) -> ReplyTarget:
    """`target` for an answer only the asker needs (platforms without private answers post it as usual)."""
    return dataclasses.replace(target, extra={**target.extra, VISIBILITY: "private"})


_NO_PAYLOAD: Mapping[str, Any] = types.MappingProxyType({})


class EventMessage(NamedTuple):
    """One event, normalized across platforms (the router's and the flow engine's input).

    A named tuple, like `UserRef`: immutable, and the cheapest record CPython builds (a frozen
    dataclass costs five times as much per event, and one of these is built for every request).
    """

    platform: str  # slack, telegram, whatsapp, pagerduty, github, http, schedule, cli
    trigger: str  # the Trigger resource's name
    text: str
    user: UserRef
    channel_id: str = ""
    channel_name: str = ""
    thread: str = ""
    event_type: str = "message"
    delivery_id: str = ""
    raw: Mapping[str, Any] = _NO_PAYLOAD
    received_at: float = 0.0  # time.time() at arrival
    conversation: str = ""
    """What the event continues, for conversation memory (`aofd.runtime.memory`): a Slack
    `<channel>/<thread ts>`, a Telegram `<chat>/<message replied to, else its own id>`, a WhatsApp
    sender, an HTTP `thread`; '' for events that are never remembered (schedules, webhooks)."""

    def reply_target(self) -> ReplyTarget:
        """Where answers to this event go; a slash command's (and a Discord component click's) carry
        its `response_url` (see `ReplyTarget`)."""
        if self.event_type in RESPONSE_URL_EVENTS:
            url = self.raw.get(RESPONSE_URL)
            if url and isinstance(url, str):
                extra = {RESPONSE_URL: url, ISSUED_AT: repr(self.received_at)}
                return ReplyTarget(self.platform, self.trigger, self.channel_id, self.thread, extra)
        return ReplyTarget(self.platform, self.trigger, self.channel_id, self.thread)


AuditOutcome = Literal["success", "failure", "unknown"]


@dataclasses.dataclass(frozen=True, slots=True)
class AuditProcess:
    """A command as its audit line shows it: the argv as run (argv[0] the pinned path), or only the
    text of a command that never became an argv (`command_line`), and how it ended."""

    args: tuple[str, ...] = ()
    command_line: str | None = None
    exit_code: int | None = None
    working_directory: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditTarget:
    """The Kubernetes target of a command (`orchestrator.*`): namespace (`*` for all), cluster, resource."""

    namespace: str | None = None
    cluster: str | None = None
    resource_type: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record, typed: what every writer hands the `AuditSink`, which renders it as one ECS line
    (`aofd.daemon.auditsink.render`, through `aofd.audit.records.build`).

    `action` is a name of the audit vocabulary (`aofd.audit.records.ACTIONS`: `command.started`,
    `config.applied`, ...), which also fixes the ECS category and type; `event_id` is shared by the
    stages of one command; `related` are further user ids (requester, approvers); `details` are the
    action's own `aofd.*` fields (`decision`, `approval`, `output`, `run`, `revision`, ...).
    """

    action: str
    outcome: AuditOutcome = "success"
    reason: str | None = None
    event_id: str | None = None
    duration_ns: int | None = None
    user: UserRef | None = None
    related: tuple[str, ...] = ()
    run_id: str | None = None
    agent: str | None = None
    process: AuditProcess | None = None
    target: AuditTarget | None = None
    trigger: Mapping[str, str] | None = None
    source_ip: str | None = None
    http_status: int | None = None
    message: str | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    approver: UserRef | None = None
    """Who approved the command (the vote that completed the request): the seed's `approved_by`."""


class AuditSink(Protocol):
    """Append one audit event to a Context's log.

    `durable=True` returns only once the record is on disk (fsync); it raises
    `aofd.errors.AuditUnavailable` if that cannot be done, and the caller must not go on
    with the action the record authorises.
    """

    async def write(self, context: str, event: AuditEvent, *, durable: bool = False) -> None: ...


class AuditLogs(Protocol):
    """Opening a Context's audit log before its bindings take events (`aofd.audit.journal.AuditLog`).

    `open_context` is idempotent; it returns why the Context's `audit.log_path` was ignored (or
    None) and raises `aofd.errors.AuditUnavailable` when the log cannot be opened.
    """

    async def open_context(self, context: str, *, log_path: str | None = None) -> str | None: ...


class Replier(Protocol):
    """Post text back to where an event came from (escaping is the replier's job).

    `reply` may return the posted message's id where a conversation continues by replying to it
    (Telegram); None elsewhere."""

    async def reply(self, target: ReplyTarget, text: str) -> str | None: ...


NO_MATCH_TEXT = "No flow is bound to this channel."
"""What a chat platform is told when no binding takes its message (never a random binding)."""

STALLED_TEXT = "This bot cannot run flows right now; the operators can see why in aofd's status."
"""What a chat platform is told when the binding that takes its message cannot run on this host now."""

Outcome = Literal[
    "started",
    "deferred",
    "no_match",
    "filtered",
    "unknown_trigger",
    "unknown_binding",
    "stalled",
    "stopping",
    "error",
]


class RouteOutcome(NamedTuple):
    """What happened to one event: started (with binding and run id), or why not.

    A named tuple: one is built for every event, and it is cheaper than a frozen dataclass.
    """

    outcome: Outcome
    binding: str = ""
    context: str = ""
    run_id: str = ""
    score: int = 0
    detail: str = ""
    reason: str = ""
    """`stalled`: the binding's Stalled reason (`ContextNotReady`, ...); names nothing of the host."""

    @property
    def started(self) -> bool:
        return self.outcome == "started"


class Dispatch(Protocol):
    """Where listeners hand verified, de-duplicated events (`aofd.runtime.dispatch.Dispatcher`)."""

    def dispatch(self, message: EventMessage, *, reply_on_no_match: bool = False) -> RouteOutcome:
        """Route `message` and start the chosen binding's flow; never raises, never blocks."""

    def contexts_for(self, trigger: str) -> tuple[str, ...]:
        """The Contexts of the current bindings of `trigger` (where its rejections are audited)."""


class ChatReplier(Protocol):
    """Posts to one chat platform with one trigger's credentials (built in `aofd.runtime.replies`)."""

    async def reply(self, target: ReplyTarget, text: str) -> str | None: ...

    async def ask_approval(
        self, target: ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        """Post an approval prompt; a reference to the message for `update_approval` ('' none)."""

    async def update_approval(self, target: ReplyTarget, *, prompt: str, text: str) -> None:
        """Replace the prompt `prompt` with `text`, no buttons (a no-op where messages cannot be edited)."""

    async def aclose(self) -> None: ...


class HttpRequest(Protocol):
    """An HTTP request as listeners and the admin API read it (`aofd.runtime.httpserver` adapts aiohttp's).

    `headers` look names up case-insensitively; `body(limit)` reads the whole body, at most `limit`
    bytes, and raises `aofd.runtime.verify.Rejected` (413 over the limit, checked on `Content-Length`
    before any byte is read and before `Expect: 100-continue` is answered; 400 for a short body; 417
    for an unknown expectation).
    """

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query(self) -> Mapping[str, str]: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def remote(self) -> str: ...

    def buffered(self, limit: int) -> bytes | None:
        """The body when it is already whole in memory (the usual small webhook), without a coroutine;
        None when `body` must be awaited. Same checks and errors as `body`."""

    async def body(self, limit: int) -> bytes: ...


class HttpResponse(NamedTuple):
    """An HTTP answer: status, body bytes, content type, extra headers (None: none).

    A named tuple, like `EventMessage`: one is built for every request.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] | None = None

    @classmethod
    def text(cls, status: int, text: str, *, headers: Mapping[str, str] | None = None) -> HttpResponse:
        return cls(status, text.encode("utf-8"), "text/plain", headers)

    @classmethod
    def json(cls, data: Any, *, status: int = 200, indent: int | None = None) -> HttpResponse:
        separators = (",", ":") if indent is None else None
        text = json.dumps(data, indent=indent, separators=separators, default=str)
        return cls(status, text.encode("utf-8"), "application/json")
