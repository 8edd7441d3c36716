"""The Telegram Bot API listener (`type: Telegram`): webhook or long polling.

Owns

- the webhook at `/hooks/telegram/<trigger>`: `X-Telegram-Bot-Api-Secret-Token` must equal the
  trigger's `secret_token` (or `webhook_secret`), else 403 (a missing token too); there is no body
  signature and no timestamp, so dedupe on `update_id` is the replay defence;
- long polling (`getUpdates` with `offset` and `timeout`) when `mode: polling`, or when no secret
  token is configured and no mode is given (no public URL needed); the webhook then answers 403.
  A listener that replaces another for the same bot goes on from its offset, and the brief
  overlap of the two pollers during a hot swap (Telegram answers one of them 409) is retried
  after a second, quietly;
- replicas (`cluster:`): long polling is a singleton duty. Only the leader polls (it starts on
  winning the election and stops on losing it), the lease is checked (`fence()`) before every
  getUpdates, each update is claimed with a fenced claim before it is handled, and the offset
  reached is stored in etcd (`telegram/<sha256(token)[:16]>/offset`, only ever moved forward)
  after each batch; a new leader goes on from it. A replica that wakes past its lease fails its
  fence and stops before the next call, so it never confirms updates it did not run. Webhook
  mode is not a singleton: any replica takes an update, claimed (plain) on `update_id`;
- normalization of `message`, `edited_message`, `channel_post` (chat id and title as channel,
  `from` as user, `message_thread_id` or the message id as thread) and of `callback_query`
  buttons `aofd_approve:<request id>` / `aofd_deny:<request id>` (approval decisions), each answered
  with `answerCallbackQuery` (an alert saying why for a click that changed nothing);
- the trigger's replier (`sendMessage`, `aofd.runtime.replies.TelegramReplier`).

The Bot API base URL is the trigger's `base_url` or `PlatformsSpec.telegram_api_url`.
It must not log the bot token (it is part of every Bot API URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from aofd import errors
from aofd.runtime import httpclient, ports, replies, verify
from aofd.runtime.cluster import ClaimResult
from aofd.runtime.listeners import base
from aofd.specs import listeners as listener_specs

log = structlog.get_logger()

CONFLICT = 409
MAX_UPDATES_BYTES = 16 * 1024 * 1024
"""The most a getUpdates answer may be (100 updates of a few kilobytes are far below it)."""
"""What getUpdates answers while another getUpdates for the same bot is pending."""

APPROVE_PREFIX = "aofd_approve:"
DENY_PREFIX = "aofd_deny:"


class TelegramListener(base.WebhookListener):
    """`type: Telegram` triggers."""

    platform = "telegram"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = base.secret_value(self.config.bot_token)
        self.secret_token = base.secret_value(self.config.secret_token or self.config.webhook_secret)
        self.polling = listener_specs.polls(self.config)
        self.api_url = (self.config.base_url or self.deps.platforms.telegram_api_url).rstrip("/")
        self.poll_timeout = 25.0
        self.retry_delay = 5.0
        self.conflict_delay = 1.0
        self.fence_wait = 0.25
        self.telegram = replies.TelegramReplier(api_url=self.api_url, token=self.token)
        self.replier = self.telegram
        self._http: httpclient.HttpClient | None = None
        self.offset = 0
        self._stored_offset = 0  # the offset last read from or written to etcd
        self.offset_key = f"telegram/{hashlib.sha256(self.token.encode()).hexdigest()[:16]}/offset"
        self._unsubscribe: Callable[[], None] | None = None
        self._leading = False  # what the last leadership callback said (cluster only)
        self._waiting = False  # the poll loop is inside getUpdates (nothing claimed yet)

    def succeed(self, previous: base.Listener) -> None:
        """Polling the same bot: go on from the offset the replaced listener reached."""
        if isinstance(previous, TelegramListener) and previous.token == self.token:
            self.offset = max(self.offset, previous.offset)

    async def start(self) -> None:
        if self.polling:
            self._http = httpclient.HttpClient(timeout=self.poll_timeout + 10)
            if self.deps.coordinator is None:
                self._start_polling()
        elif not self.secret_token:
            log.warning(
                "listener.no_secret",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="webhook mode without secret_token: every request will be rejected",
            )
        await super().start()
        coordinator = self.deps.coordinator
        if self.polling and coordinator is not None and self._unsubscribe is None:
            self._unsubscribe = coordinator.on_leadership(self.on_leadership)
            self.on_leadership(coordinator.fence())

    def on_leadership(self, leading: bool) -> None:
        """With `cluster:`: poll while this replica leads, stop polling when it no longer does.
        A loop waiting in getUpdates is cancelled (nothing was claimed); one handling a batch
        finishes the update in hand (a click being decided, already claimed) and ends at its
        next fence check. Never blocks."""
        self._leading = leading
        if not self.polling or self._http is None or not self.running:
            return
        task = self._tasks.get("poll")
        alive = task is not None and not task.done() and not task.cancelling()
        if leading and not alive:
            self._start_polling()
        elif not leading and task is not None and alive and self._waiting:
            task.cancel()

    def _start_polling(self) -> None:
        self.spawn(self._poll_loop(), name=f"telegram-poll:{self.trigger_name}", key="poll")

    async def stop(self, *, drain: float) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self.cancel("poll")
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await super().stop(drain=drain)

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        if self.polling:
            raise verify.Rejected(403, verify.UNKNOWN_SOURCE, "this trigger uses long polling")
        verify.telegram(
            secret_token=self.secret_token, header=request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        )
        update = self.parse_json(body)
        if not isinstance(update, dict):
            raise verify.Rejected(400, verify.MALFORMED, "update is not an object")
        await self.on_update(update)
        return ports.HttpResponse.text(200, "ok")

    async def on_update(self, update: dict[str, Any]) -> None:
        """Dedupe on `update_id`, then route a message or decide an approval button."""
        if await self.first_time(_delivery(update)):
            await self._handle(update)

    async def _handle(self, update: dict[str, Any]) -> None:
        """Route a message or decide an approval button of an update already claimed."""
        query = update.get("callback_query")
        if isinstance(query, dict):
            await self._callback(query)
            return
        message = normalize(self.trigger_name, update)
        if message is None:
            return
        outcome = self.deps.dispatcher.dispatch(message, reply_on_no_match=True)
        if base.retry_later(outcome):
            await self.forget(message.delivery_id)

    async def _callback(self, query: dict[str, Any]) -> None:
        data = str(query.get("data", ""))
        sender = query.get("from") if isinstance(query.get("from"), dict) else {}
        assert isinstance(sender, dict)
        query_id = str(query.get("id", ""))
        for prefix, approve in ((APPROVE_PREFIX, True), (DENY_PREFIX, False)):
            if data.startswith(prefix):
                user = ports.UserRef(str(sender.get("id", "")), str(sender.get("username", "")), "telegram")
                click_id = f"telegram:{query_id}"
                click = await base.decide_click(
                    self.deps, self.trigger_name, data[len(prefix) :], user, approve, click_id
                )
                await self._answer(query_id, click.text if click else "", alert=bool(click and click.refused))
                return

    async def _answer(self, query_id: str, text: str, *, alert: bool) -> None:
        """`answerCallbackQuery`: ends the button's spinner and tells the clicker privately why a
        click changed nothing (an alert); the prompt itself is edited when the request ends."""
        if not query_id:
            return
        try:
            await self.telegram.answer_click(query_id, text, alert=alert)
        except replies.ReplyError as exc:
            log.warning("approval.click_not_answered", trigger=self.trigger_name, error=str(exc))

    async def _poll_loop(self) -> None:
        assert self._http is not None
        url = f"{self.api_url}/bot{self.token}/getUpdates"
        coordinator = self.deps.coordinator
        leading = False
        while True:
            if coordinator is not None:
                # The lease is checked before every getUpdates: a replica that cannot prove it
                # leads (paused past its lease, cut off from etcd) asks Telegram for nothing.
                if not coordinator.fence():
                    if leading:
                        log.info("telegram.poll_paused", trigger=self.trigger_name, reason="not the leader")
                    leading = False
                    if not self._leading:
                        return  # stepped down: the next leadership callback starts a new loop
                    await asyncio.sleep(self.fence_wait)
                    continue
                if not leading:
                    leading = True
                    await self._load_offset()
            try:
                params = {"offset": str(self.offset), "timeout": str(int(self.poll_timeout))}
                self._waiting = True
                try:
                    answer = await self._http.request("GET", url, params=params, max_body=MAX_UPDATES_BYTES)
                finally:
                    self._waiting = False
                if answer.status == CONFLICT:
                    # Another getUpdates holds the bot: the listener this one replaces, for the moment
                    # of a hot swap, or another process. Telegram ended one of the two requests.
                    log.info("telegram.poll_conflict", trigger=self.trigger_name)
                    await asyncio.sleep(self.conflict_delay)
                    continue
                data = answer.json()
                if not isinstance(data, dict) or not data.get("ok"):
                    raise RuntimeError(f"getUpdates answered {answer.status}")
                taken = await self._take_batch([u for u in data.get("result") or [] if isinstance(u, dict)])
                if coordinator is not None:
                    await self._store_offset()
                if not taken:
                    leading = False  # fenced by etcd: the coordinator steps down
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The URL holds the token: log the error's type only.
                log.warning("telegram.poll_failed", trigger=self.trigger_name, error=type(exc).__name__)
                await asyncio.sleep(self.retry_delay)

    async def _take_batch(self, updates: list[dict[str, Any]]) -> bool:
        """Claim and handle a getUpdates batch in order, moving the offset past each update taken
        (or seen before). False when a fenced claim failed: this replica no longer leads, and the
        offset stays at that update so the new leader gets it (and no later one is confirmed).
        etcd unreachable raises (the loop retries the batch from that update; claims make the
        ones taken harmless)."""
        fenced = self.deps.coordinator is not None
        for update in updates:
            delivery = _delivery(update)
            result = await self.deps.claims.claim(self.platform, self.trigger_name, delivery, fenced=fenced)
            if result is ClaimResult.FENCED:
                log.warning("telegram.poll_fenced", trigger=self.trigger_name, update_id=delivery)
                return False
            update_id = update.get("update_id")
            if isinstance(update_id, int):
                self.offset = max(self.offset, update_id + 1)
            if result is ClaimResult.DUPLICATE:
                self.duplicate(delivery)
                continue
            await self._handle(update)
        return True

    async def _load_offset(self) -> None:
        """A new leader goes on from the offset the set reached (best effort: claims make updates
        served again harmless)."""
        coordinator = self.deps.coordinator
        assert coordinator is not None
        try:
            entry = await coordinator.get(self.offset_key)
        except errors.CoordinatorUnavailable as exc:
            log.warning("telegram.offset_not_read", trigger=self.trigger_name, error=str(exc))
            return
        if entry is not None and entry.value.isdigit():
            self._stored_offset = int(entry.value)
            self.offset = max(self.offset, self._stored_offset)

    async def _store_offset(self) -> None:
        """Store the offset reached while still the leader; it only ever moves forward."""
        coordinator = self.deps.coordinator
        assert coordinator is not None
        reached = self.offset
        if reached <= self._stored_offset or not coordinator.fence():
            return

        def forward(old: bytes | None) -> tuple[None, bytes | None]:
            known = int(old) if old is not None and old.isdigit() else 0
            return None, str(max(known, reached)).encode() if reached > known else old

        try:
            await coordinator.update(self.offset_key, forward)
            self._stored_offset = reached
        except errors.CoordinatorUnavailable as exc:
            log.warning("telegram.offset_not_stored", trigger=self.trigger_name, error=str(exc))


def _delivery(update: dict[str, Any]) -> str:
    update_id = update.get("update_id")
    return str(update_id) if isinstance(update_id, int) else ""


def normalize(trigger: str, update: dict[str, Any]) -> ports.EventMessage | None:
    """A message-like update as an EventMessage; None for updates that carry no message."""
    for key in ("message", "edited_message", "channel_post"):
        msg = update.get(key)
        if isinstance(msg, dict):
            break
    else:
        return None
    chat = msg.get("chat") if isinstance(msg.get("chat"), dict) else {}
    sender = msg.get("from") if isinstance(msg.get("from"), dict) else {}
    assert isinstance(chat, dict)
    assert isinstance(sender, dict)
    if sender.get("is_bot"):
        return None
    thread = msg.get("message_thread_id") or msg.get("message_id") or ""
    # A reply continues the conversation of the message it replies to (the memory resolves that
    # message to its reply chain's root); any other message starts one.
    replied = msg.get("reply_to_message") if isinstance(msg.get("reply_to_message"), dict) else {}
    assert isinstance(replied, dict)
    head = replied.get("message_id") or msg.get("message_id")
    name = sender.get("username") or " ".join(
        str(x) for x in (sender.get("first_name"), sender.get("last_name")) if x
    )
    update_id = update.get("update_id")
    return ports.EventMessage(
        platform="telegram",
        trigger=trigger,
        text=str(msg.get("text") or msg.get("caption") or ""),
        user=ports.UserRef(str(sender.get("id", "")), str(name), "telegram"),
        channel_id=str(chat.get("id", "")),
        channel_name=str(chat.get("title") or chat.get("username") or ""),
        thread=str(thread),
        event_type=key,
        delivery_id=str(update_id) if isinstance(update_id, int) else "",
        raw=update,
        received_at=time.time(),
        conversation=f"{chat.get('id', '')}/{head}" if isinstance(head, int) else "",
    )
