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
import time
from typing import Any

import structlog

from aofd.runtime import httpclient, ports, replies, verify
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
        self.telegram = replies.TelegramReplier(api_url=self.api_url, token=self.token)
        self.replier = self.telegram
        self._http: httpclient.HttpClient | None = None
        self.offset = 0

    def succeed(self, previous: base.Listener) -> None:
        """Polling the same bot: go on from the offset the replaced listener reached."""
        if isinstance(previous, TelegramListener) and previous.token == self.token:
            self.offset = max(self.offset, previous.offset)

    async def start(self) -> None:
        if self.polling:
            self._http = httpclient.HttpClient(timeout=self.poll_timeout + 10)
            self.spawn(self._poll_loop(), name=f"telegram-poll:{self.trigger_name}", key="poll")
        elif not self.secret_token:
            log.warning(
                "listener.no_secret",
                trigger=self.trigger_name,
                platform=self.platform,
                detail="webhook mode without secret_token: every request will be rejected",
            )
        await super().start()

    async def stop(self, *, drain: float) -> None:
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
        update_id = update.get("update_id")
        delivery = str(update_id) if isinstance(update_id, int) else ""
        query = update.get("callback_query")
        if isinstance(query, dict):
            if self.first_time(delivery):
                await self._callback(query)
            return
        message = normalize(self.trigger_name, update)
        if message is None:
            return
        self.accept(message, reply_on_no_match=True)

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
        while True:
            try:
                params = {"offset": str(self.offset), "timeout": str(int(self.poll_timeout))}
                answer = await self._http.request("GET", url, params=params, max_body=MAX_UPDATES_BYTES)
                if answer.status == CONFLICT:
                    # Another getUpdates holds the bot: the listener this one replaces, for the moment
                    # of a hot swap, or another process. Telegram ended one of the two requests.
                    log.info("telegram.poll_conflict", trigger=self.trigger_name)
                    await asyncio.sleep(self.conflict_delay)
                    continue
                data = answer.json()
                if not isinstance(data, dict) or not data.get("ok"):
                    raise RuntimeError(f"getUpdates answered {answer.status}")
                for update in data.get("result") or []:
                    if not isinstance(update, dict):
                        continue
                    update_id = update.get("update_id")
                    if isinstance(update_id, int):
                        self.offset = max(self.offset, update_id + 1)
                    await self.on_update(update)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The URL holds the token: log the error's type only.
                log.warning("telegram.poll_failed", trigger=self.trigger_name, error=type(exc).__name__)
                await asyncio.sleep(self.retry_delay)


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
    )
