"""The Slack listener (`type: Slack`): Events API over HTTP, slash commands, approval buttons, Socket Mode.

Owns

- `/hooks/slack/<trigger>`: `X-Slack-Signature` over `v0:<ts>:<raw body>` with the trigger's
  `signing_secret` and the 5-minute window (`aofd.runtime.verify.slack`: a missing, non-numeric or
  stale timestamp is 401, never 500), `url_verification` answered with the challenge, `ssl_check`;
- Events API `event_callback`s: de-duplicated on `event_id` *before* the 200 is sent (so a retry,
  `X-Slack-Retry-Num`, that arrives while the first delivery is still being handled is dropped)
  and on `channel:ts` (a mention delivered both as `message` and `app_mention` runs once, whichever
  comes first: the bot's own leading mention is removed from either, the bot user id coming from
  the envelope's `authorizations`, else from `auth.test`, cached); the 200 goes back at once and
  the channel name lookup (`conversations.info`, cached) and routing run after, in a task the
  listener owns. Bot messages and edits are ignored (no reply loops), and so are event types the
  trigger's `events` leaves out (before the `channel:ts` dedupe, so the twin it takes still runs);
- slash commands (form-encoded; dedupe on `trigger_id`): acknowledged in the HTTP response at once
  (no I/O before it), every later answer through the command's `response_url` (see
  `aofd.runtime.replies.SlackReplier`), which must be under `PlatformsSpec.slack_response_url_base`:
  a command with any other response_url runs nothing and is audited as `trigger.rejected`;
- interactive `block_actions` with `action_id` `aofd_approve`/`aofd_deny` and the approval request id
  as value, passed to the `ApprovalDecider`; clicks de-duplicated on `trigger_id` + `action_ts`; a
  click that changes nothing (or a vote that needs more) is answered to the clicker alone
  (`chat.postEphemeral`, in the prompt's thread); the prompt itself is replaced when the request ends
  (`aofd.runtime.approvaldesk`);
- Socket Mode when the trigger has an `app_token`: slack_sdk's aiohttp `SocketModeClient` with
  `apps.connections.open` at `PlatformsSpec.slack_api_url`; each envelope is claimed first (its
  event id and `channel:ts` twin, command `trigger_id` or click id), then acknowledged, then
  handled by the same code as the HTTP path (no request signature exists there);
- replicas (`cluster:`): every replica serves the HTTP endpoints, and a delivery's ids are
  claimed in etcd before the 200 (a retry, `X-Slack-Retry-Num`, that reaches another replica
  does not run again; etcd unreachable -> 503, Slack retries). Socket Mode is a singleton duty:
  only the leader holds the connection (opened on winning the election, closed on losing it),
  and its claims are fenced: a claim refused by the fence, or etcd unreachable, leaves the
  envelope unacknowledged (Slack delivers it again), a duplicate is acknowledged and dropped;
- the trigger's replier (`aofd.runtime.replies.SlackReplier`).

slack_sdk is imported here and in `aofd.runtime.replies` only. Bolt is not used: its request
pipeline would hide the point where dedupe must happen and call `auth.test` on the first event.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from aofd import errors
from aofd.runtime import ports, replies, verify
from aofd.runtime.cluster import ClaimResult
from aofd.runtime.listeners import base

log = structlog.get_logger()

IGNORED_SUBTYPES_ALLOWED = frozenset({"thread_broadcast", "file_share", "me_message"})
"""Message subtypes that are still people talking; every other subtype (edits, joins, bots) is ignored."""

_LEADING_MENTION = re.compile(r"^\s*<@([A-Z0-9]+)(?:\|[^>]*)?>\s*")
CHANNEL_CACHE_SIZE = 4096


class SlackListener(base.WebhookListener):
    """`type: Slack` triggers."""

    platform = "slack"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.signing_secret = base.secret_value(self.config.signing_secret)
        self.app_token = base.secret_value(self.config.app_token)
        self.api_url = self.config.base_url or self.deps.platforms.slack_api_url
        self.slack = replies.SlackReplier(
            api_url=self.api_url,
            token=base.secret_value(self.config.bot_token),
            response_url_base=self.deps.platforms.slack_response_url_base,
            clock=self.deps.clock,
        )
        self.replier = self.slack
        self.socket: SocketModeClient | None = None
        self.socket_ping_interval = 10.0
        self.socket_retry_delay = 5.0
        self._unsubscribe: Callable[[], None] | None = None
        self.events = frozenset(e for e in self.config.events if e)
        self._bot_user_id = ""
        # Invariant: at most CHANNEL_CACHE_SIZE entries, least recently added evicted first.
        self._channel_names: collections.OrderedDict[str, str] = collections.OrderedDict()

    def succeed(self, previous: base.Listener) -> None:
        """Keep counting the uses of response URLs that the replaced listener's commands handed out."""
        if isinstance(previous, SlackListener):
            self.slack.share_response_urls(previous.slack)

    async def start(self) -> None:
        if self.app_token and self.deps.coordinator is None:
            await self._connect_socket()
        elif not self.signing_secret:
            log.warning(
                "listener.no_secret",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="no signing_secret and no app_token: every request will be rejected",
            )
        await super().start()
        coordinator = self.deps.coordinator
        if self.app_token and coordinator is not None and self._unsubscribe is None:
            self._unsubscribe = coordinator.on_leadership(self.on_leadership)
            self.on_leadership(coordinator.fence())

    def on_leadership(self, leading: bool) -> None:
        """With `cluster:`: hold the Socket Mode connection while this replica leads, close it
        when it no longer does. Never blocks (the connection is a task of this listener)."""
        if not self.app_token or self.deps.coordinator is None or not self.running:
            return
        task = self._tasks.get("socket")
        alive = task is not None and not task.done() and not task.cancelling()
        if leading and not alive:
            self.spawn(self._hold_socket(), name=f"slack-socket:{self.trigger_name}", key="socket")
        elif not leading and task is not None and alive:
            task.cancel()

    async def _hold_socket(self) -> None:
        """Connect (retrying every `socket_retry_delay`) and hold the connection until cancelled."""
        try:
            while True:
                try:
                    await self._connect_socket()
                    break
                except Exception as exc:
                    log.warning("slack.socket_failed", trigger=self.trigger_name, error=type(exc).__name__)
                    await asyncio.sleep(self.socket_retry_delay)
            log.info("slack.socket_connected", trigger=self.trigger_name, reason="leader")
            await asyncio.Event().wait()
        finally:
            await self._close_socket()

    async def _connect_socket(self) -> None:
        client = SocketModeClient(
            app_token=self.app_token,
            web_client=AsyncWebClient(base_url=self.api_url),
            ping_interval=self.socket_ping_interval,
        )
        client.socket_mode_request_listeners.append(self._on_socket_request)
        self.socket = client
        try:
            # slack_sdk leaves connect/close unannotated.
            await client.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._close_socket()
            raise

    async def stop(self, *, drain: float) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self.cancel("socket")
        await self._close_socket()
        await super().stop(drain=drain)

    async def _close_socket(self) -> None:
        client, self.socket = self.socket, None
        if client is None:
            return
        await client.close()  # type: ignore[no-untyped-call]
        owned = [
            t
            for t in (client.message_processor, client.current_session_monitor, client.message_receiver)
            if t is not None
        ]
        await asyncio.gather(*owned, return_exceptions=True)

    # --- HTTP --------------------------------------------------------------------------------

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        verify.slack(
            secrets=(self.signing_secret,),
            body=body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"),
            now=self.deps.clock(),
        )
        if request.content_type == "application/x-www-form-urlencoded":
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", errors="replace")).items()}
            if form.get("ssl_check"):
                return ports.HttpResponse(200)
            if "payload" in form:
                try:
                    payload = json.loads(form["payload"])
                except ValueError:
                    raise verify.Rejected(400, verify.MALFORMED, "interactive payload is not JSON") from None
                if not isinstance(payload, dict):
                    raise verify.Rejected(400, verify.MALFORMED, "interactive payload is not an object")
                await self.on_interactive(payload)
                return ports.HttpResponse(200)
            answer = await self.on_command(form)
            return base.json_response(answer)
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "payload is not an object")
        kind = payload.get("type")
        if kind == "url_verification":
            return base.json_response({"challenge": str(payload.get("challenge", ""))})
        if kind == "event_callback":
            await self.on_event(payload)
        return ports.HttpResponse(200)

    # --- shared by HTTP and Socket Mode ------------------------------------------------------

    async def on_event(self, envelope: dict[str, Any]) -> None:
        """Claim an Events API envelope now (its `event_id` and `msg:<channel>:<ts>` twin in one
        claim); normalize and route it in a task (after the ack)."""
        ids = self._event_ids(envelope)
        if ids is not None and await self.first_time(*ids):
            self._route(envelope)

    def _event_ids(self, envelope: dict[str, Any]) -> tuple[str, str] | None:
        """The ids to claim for an event (None: an event this trigger ignores)."""
        event = envelope.get("event")
        if not isinstance(event, dict) or not _from_a_person(event):
            return None
        if self.events and not _event_taken(str(event.get("type", "")), self.events):
            return None  # the trigger's filters would refuse it: it must not claim its `channel:ts` twin
        channel, ts = str(event.get("channel", "")), str(event.get("ts", ""))
        return str(envelope.get("event_id", "")), f"msg:{channel}:{ts}" if channel and ts else ""

    def _route(self, envelope: dict[str, Any]) -> None:
        event = envelope.get("event")
        assert isinstance(event, dict)
        self.spawn(self._route_event(envelope, event), name=f"slack-event:{self.trigger_name}")

    async def _route_event(self, envelope: dict[str, Any], event: dict[str, Any]) -> None:
        channel_id = str(event.get("channel", ""))
        name = await self.channel_name(channel_id) if channel_id else ""
        bot = ""
        if event.get("type") != "app_mention" and _LEADING_MENTION.match(str(event.get("text", ""))):
            bot = await self.bot_user_id(envelope)
        message = normalize_event(self.trigger_name, envelope, event, channel_name=name, bot_user_id=bot)
        self.deps.dispatcher.dispatch(message, reply_on_no_match=True)

    async def bot_user_id(self, envelope: dict[str, Any]) -> str:
        """The bot's user id: the envelope's bot authorization, else `auth.test` (cached; '' if unknown)."""
        for grant in envelope.get("authorizations") or []:
            if isinstance(grant, dict) and grant.get("is_bot") and grant.get("user_id"):
                return str(grant["user_id"])
        if not self._bot_user_id:
            self._bot_user_id = await self.slack.bot_user_id()
        return self._bot_user_id

    async def channel_name(self, channel_id: str) -> str:
        """A channel's name from the cache, else `conversations.info` (direct messages have none)."""
        cached = self._channel_names.get(channel_id)
        if cached is not None:
            return cached
        if channel_id.startswith("D"):
            return ""
        name = await self.slack.channel_name(channel_id)
        if name:
            self._channel_names[channel_id] = name
            while len(self._channel_names) > CHANNEL_CACHE_SIZE:
                self._channel_names.popitem(last=False)
        return name

    async def on_command(self, form: dict[str, str]) -> dict[str, Any]:
        """Claim (on `trigger_id`) and route a slash command; the answer is the HTTP response body.

        Nothing here waits on I/O but the claim (with `cluster:`, one etcd round trip), so the
        acknowledgement is well inside Slack's 3 seconds.
        """
        refused = self._check_command(form)
        if refused is not None:
            return refused
        message = normalize_command(self.trigger_name, form, received_at=self.deps.clock())
        return _command_answer(await self.accept(message))

    def _check_command(self, form: dict[str, str]) -> dict[str, Any] | None:
        """The answer to a command that must not run (a response_url that is not Slack's), else None."""
        url = form.get(ports.RESPONSE_URL, "")
        if url and not replies.response_url_ok(url, self.slack.response_url_base):
            self._refuse_command(f"slash command response_url is not under {self.slack.response_url_base}")
            return {
                "response_type": "ephemeral",
                "text": "This command was refused: its response_url is not Slack's.",
            }
        return None

    async def _run_claimed_command(self, form: dict[str, str]) -> dict[str, Any]:
        """Route a slash command whose `trigger_id` this replica has claimed (Socket Mode)."""
        message = normalize_command(self.trigger_name, form, received_at=self.deps.clock())
        outcome = self.deps.dispatcher.dispatch(message)
        if base.retry_later(outcome):
            await self.forget(message.delivery_id)
        return _command_answer(outcome)

    def _refuse_command(self, detail: str) -> None:
        """Log, count and audit (`trigger.rejected`, reason `malformed`) a command that is not run."""
        log.warning(
            "trigger.rejected",
            trigger=self.trigger_name,
            platform=self.platform,
            status=200,
            reason=verify.MALFORMED,
            detail=detail,
        )
        if self.deps.on_rejected is not None:
            self.deps.on_rejected(self.platform, verify.MALFORMED)
        self.audit_rejection(verify.Rejected(200, verify.MALFORMED, detail), "")

    async def on_interactive(self, payload: dict[str, Any]) -> None:
        """Pass approval button clicks to the approvals store (once per click, across replicas)."""
        if payload.get("type") != "block_actions":
            return
        if await self.first_time(_click_key(payload)):
            self._decide_clicks(payload)

    def _decide_clicks(self, payload: dict[str, Any]) -> None:
        """Decide the approval buttons of a click this replica has claimed (in tasks)."""
        click_id = _click_key(payload).removeprefix("action:")
        user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
        assert isinstance(user, dict)
        team = str(user.get("team_id") or _dict(payload.get("team")).get("id", ""))
        who = ports.UserRef(
            str(user.get("id", "")), str(user.get("username") or user.get("name") or ""), f"slack:{team}"
        )
        channel = str(
            _dict(payload.get("channel")).get("id") or _dict(payload.get("container")).get("channel_id") or ""
        )
        message = _dict(payload.get("message"))
        thread = str(message.get("thread_ts") or "")
        for action in payload.get("actions") or []:
            if not isinstance(action, dict):
                continue
            action_id = str(action.get("action_id", ""))
            if action_id not in (replies.APPROVE_ACTION, replies.DENY_ACTION):
                continue
            request_id = str(action.get("value", ""))
            self.spawn(
                self._decide(request_id, who, action_id == replies.APPROVE_ACTION, click_id, channel, thread),
                name=f"slack-approval:{self.trigger_name}",
            )

    async def _decide(
        self, request_id: str, user: ports.UserRef, approve: bool, action_id: str, channel: str, thread: str
    ) -> None:
        """Decide one click; a click that changed nothing (or still needs more approvers) is answered
        privately to the clicker (`chat.postEphemeral`); the prompt itself changes when the request ends."""
        click = await base.decide_click(self.deps, self.trigger_name, request_id, user, approve, action_id)
        if click is None or not click.text or not channel or not user.id:
            return
        try:
            await self.slack.tell_privately(channel=channel, user=user.id, text=click.text, thread=thread)
        except replies.ReplyError as exc:
            log.warning(
                "approval.click_not_answered",
                trigger=self.trigger_name,
                request_id=request_id,
                error=str(exc),
            )

    # --- Socket Mode -------------------------------------------------------------------------

    async def _on_socket_request(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        """Claim an envelope, acknowledge it, then handle it like the HTTP path would.

        The claim comes before the ack: an envelope this replica may not take (a fenced claim
        refused: it no longer leads; etcd unreachable) is left unacknowledged, so Slack delivers
        it again; a duplicate is acknowledged and dropped.
        """
        payload: dict[str, Any] = req.payload or {}
        ids: tuple[str, ...] | None = None
        if req.type == "slash_commands":
            form = {k: str(v) for k, v in payload.items()}
            refused = self._check_command(form)
            if refused is not None:
                await _ack(client, req, refused)
                return
            ids = (form.get("trigger_id", ""),)
        elif req.type == "events_api" and payload.get("type") == "event_callback":
            ids = self._event_ids(payload)
        elif req.type == "interactive" and payload.get("type") == "block_actions":
            ids = (_click_key(payload),)
        if ids is None:
            await _ack(client, req)
            return
        result = await self._socket_claim(ids)
        if result is None:
            return  # not acknowledged: Slack delivers it again
        if req.type == "slash_commands":
            answer = (
                await self._run_claimed_command(form)
                if result is ClaimResult.CLAIMED
                else _command_answer(None)
            )
            await _ack(client, req, answer)
            return
        await _ack(client, req)
        if result is not ClaimResult.CLAIMED:
            return
        if req.type == "events_api":
            self._route(payload)
        else:
            self._decide_clicks(payload)

    async def _socket_claim(self, ids: tuple[str, ...]) -> ClaimResult | None:
        """Claim a Socket Mode envelope's ids (fenced with `cluster:`); None when it must not be
        acknowledged (fenced, or etcd unreachable)."""
        try:
            result = await self.deps.claims.claim(
                self.platform, self.trigger_name, ids, fenced=self.deps.coordinator is not None
            )
        except errors.CoordinatorUnavailable as exc:
            self.coordinator_unavailable(exc)
            return None
        if result is ClaimResult.FENCED:
            log.warning("slack.socket_envelope_not_taken", trigger=self.trigger_name, reason="not the leader")
            return None
        if result is ClaimResult.DUPLICATE:
            self.duplicate(next((i for i in ids if i), ""))
        return result


async def _ack(
    client: AsyncBaseSocketModeClient, req: SocketModeRequest, payload: dict[str, Any] | None = None
) -> None:
    await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id, payload=payload))


def _command_answer(outcome: ports.RouteOutcome | None) -> dict[str, Any]:
    """The immediate answer to a slash command (None: a duplicate)."""
    if outcome is None:
        return {"response_type": "ephemeral", "text": "Already received."}
    if outcome.started or outcome.outcome == "deferred":
        return {"response_type": "ephemeral", "text": "Working on it."}
    if outcome.outcome in ("no_match", "unknown_trigger"):
        return {"response_type": "ephemeral", "text": ports.NO_MATCH_TEXT}
    if outcome.outcome == "stalled":
        return {"response_type": "ephemeral", "text": ports.STALLED_TEXT}
    return {"response_type": "ephemeral", "text": "This command could not be started."}


def _click_key(payload: dict[str, Any]) -> str:
    """The claim id of an interactive click: `action:<trigger_id>:<first action_ts>`."""
    return f"action:{payload.get('trigger_id', '')}:{_first_action_ts(payload)}"


_dict = base.as_dict


def _first_action_ts(payload: dict[str, Any]) -> str:
    for action in payload.get("actions") or []:
        if isinstance(action, dict) and action.get("action_ts"):
            return str(action["action_ts"])
    return ""


def _from_a_person(event: dict[str, Any]) -> bool:
    if event.get("bot_id") or event.get("bot_profile"):
        return False
    subtype = event.get("subtype")
    return subtype is None or subtype in IGNORED_SUBTYPES_ALLOWED


def _event_taken(kind: str, events: frozenset[str]) -> bool:
    """Whether a trigger with `events` takes an event of type `kind` (as `routes.Filters.event_ok`)."""
    return kind in events or kind.partition(".")[0] in events


def normalize_event(
    trigger: str,
    envelope: dict[str, Any],
    event: dict[str, Any],
    *,
    channel_name: str = "",
    bot_user_id: str = "",
) -> ports.EventMessage:
    """An Events API event as an EventMessage.

    The leading mention is removed from an `app_mention`'s text, and from any other event's text when
    it mentions `bot_user_id` (the `message` twin of an `app_mention` may arrive first, and runs).
    """
    kind = str(event.get("type", "message"))
    text = str(event.get("text", ""))
    if kind == "app_mention":
        text = _LEADING_MENTION.sub("", text, count=1)
    elif bot_user_id:
        found = _LEADING_MENTION.match(text)
        if found is not None and found.group(1) == bot_user_id:
            text = text[found.end() :]
    team = str(envelope.get("team_id") or event.get("team") or "")
    channel = str(event.get("channel", ""))
    thread = str(event.get("thread_ts") or event.get("ts") or "")
    return ports.EventMessage(
        platform="slack",
        trigger=trigger,
        text=text,
        user=ports.UserRef(str(event.get("user", "")), "", f"slack:{team}" if team else "slack"),
        channel_id=channel,
        channel_name=channel_name,
        thread=thread,
        event_type=kind,
        delivery_id=str(envelope.get("event_id", "")),
        raw=envelope,
        received_at=time.time(),
        conversation=f"{channel}/{thread}" if channel and thread else "",  # the thread: memory's key
    )


def normalize_command(
    trigger: str, form: dict[str, str], *, received_at: float | None = None
) -> ports.EventMessage:
    """A slash command as an EventMessage: text `/cmd args`, event type `slash_command`.

    Its `raw` form keeps the `response_url` its answers go to (`EventMessage.reply_target`); checking
    that URL is the caller's job (`SlackListener.on_command`).
    """
    command = form.get("command", "")
    args = form.get("text", "")
    team = form.get("team_id", "")
    return ports.EventMessage(
        platform="slack",
        trigger=trigger,
        text=f"{command} {args}".strip(),
        user=ports.UserRef(
            form.get("user_id", ""), form.get("user_name", ""), f"slack:{team}" if team else "slack"
        ),
        channel_id=form.get("channel_id", ""),
        channel_name=form.get("channel_name", ""),
        thread="",
        event_type="slash_command",
        delivery_id=form.get("trigger_id", ""),
        raw=dict(form),
        received_at=time.time() if received_at is None else received_at,
    )
