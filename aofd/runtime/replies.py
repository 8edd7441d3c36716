"""Posting answers back to chat platforms, escaped, with each trigger's own credentials.

Owns

- `escape_slack()`: `&` -> `&amp;`, `<` -> `&lt;`, `>` -> `&gt;` on everything aofd posts to Slack,
  so agent output cannot mass-mention (`<!channel>`) or disguise links (`<https://evil|https://good>`)
  (RELIABILITY.md section 2, section 6 row 47);
- `SlackReplier`: `chat.postMessage` through slack_sdk's `AsyncWebClient` (base URL from
  `PlatformsSpec.slack_api_url`) in the event's channel and thread, and approval prompts with
  Approve/Deny buttons (`action_id` `aofd_approve`/`aofd_deny`, `value` = the request id) showing
  the argv as an escaped JSON array (`ensure_ascii=True`, so no bidi or look-alike characters);
- `TelegramReplier` (`sendMessage`, inline keyboard for approvals) and `WhatsAppReplier`
  (Graph `/{phone_number_id}/messages`) over the runtime's HTTP client (`httpclient`);
- `MultiReplier`, the `ports.Replier` the flow engine uses: it finds the trigger's *current*
  listener in the routing table and posts through its replier; HTTP, PagerDuty, GitHub and
  Schedule triggers have no chat to answer in (the answer is stored on the run), so it logs.

Every platform error is translated into `ReplyError` here. It must not log tokens (Telegram puts
the token in the URL) and must not choose where to post: the target comes from the event.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from aofd import errors
from aofd.runtime import httpclient, ports

log = structlog.get_logger()

APPROVE_ACTION = "aofd_approve"
DENY_ACTION = "aofd_deny"
MAX_SLACK_TEXT = 39_000
"""chat.postMessage truncates at 40,000 characters; stay under it after escaping."""


class ReplyError(errors.Temporary):
    """A platform refused or failed to take a reply; retrying later may work."""


def escape_slack(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def argv_json(argv: tuple[str, ...] | list[str]) -> str:
    """An argv as a JSON array with only ASCII characters (what approvers read)."""
    return json.dumps(list(argv), ensure_ascii=True)


class SlackReplier:
    """Posts to Slack with one trigger's bot token."""

    def __init__(self, *, api_url: str, token: str) -> None:
        self.client = AsyncWebClient(token=token or None, base_url=api_url)

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        safe = escape_slack(text)[:MAX_SLACK_TEXT]
        await self._post(target, text=safe)

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> None:
        command = escape_slack(argv_json(argv))
        headline = escape_slack(summary)[:2000]
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{headline}\n```{command}```"}},
            {
                "type": "actions",
                "block_id": "aofd_approval",
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE_ACTION,
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve"},
                        "value": request_id,
                    },
                    {
                        "type": "button",
                        "action_id": DENY_ACTION,
                        "style": "danger",
                        "text": {"type": "plain_text", "text": "Deny"},
                        "value": request_id,
                    },
                ],
            },
        ]
        await self._post(target, text=f"Approval requested: {command}", blocks=blocks)

    async def channel_name(self, channel_id: str) -> str:
        """`conversations.info` name of a channel ('' when it cannot be read: routing goes on by id)."""
        try:
            resp = await self.client.conversations_info(channel=channel_id)
            channel = resp.get("channel")
        except SlackApiError as exc:
            log.warning("slack.channel_lookup_failed", channel=channel_id, error=_slack_error(exc))
            return ""
        except Exception as exc:  # any transport or decoding failure: fall back to routing by id
            log.warning("slack.channel_lookup_failed", channel=channel_id, error=type(exc).__name__)
            return ""
        return str(channel.get("name", "")) if isinstance(channel, dict) else ""

    async def _post(self, target: ports.ReplyTarget, **fields: Any) -> None:
        kwargs: dict[str, Any] = {"channel": target.channel_id, **fields}
        if target.thread:
            kwargs["thread_ts"] = target.thread
        try:
            await self.client.chat_postMessage(**kwargs)
        except SlackApiError as exc:
            raise ReplyError(f"chat.postMessage failed: {_slack_error(exc)}") from exc
        except (
            Exception
        ) as exc:  # slack_sdk's transport failures (its HTTP library's errors), translated here
            raise ReplyError(f"chat.postMessage failed: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        return None


def _slack_error(exc: SlackApiError) -> str:
    data = getattr(exc.response, "data", None)
    return str(data.get("error", "")) if isinstance(data, dict) else f"HTTP {exc.response.status_code}"


class _JsonPoster:
    """POSTs JSON through the runtime's HTTP client (its pool opened lazily, closed by `aclose`)."""

    def __init__(self) -> None:
        self._http = httpclient.HttpClient(timeout=30.0)

    async def post_json(
        self, url: str, body: dict[str, Any], *, headers: dict[str, str] | None = None, what: str
    ) -> dict[str, Any]:
        try:
            answer = await self._http.request("POST", url, json_body=body, headers=headers)
            data = answer.json()
        except (httpclient.HttpError, ValueError) as exc:
            raise ReplyError(f"{what} failed: {type(exc).__name__}") from exc
        if answer.status >= 300 or not isinstance(data, dict):
            raise ReplyError(f"{what} answered HTTP {answer.status}")
        return data

    async def aclose(self) -> None:
        await self._http.aclose()


class TelegramReplier(_JsonPoster):
    """Posts to Telegram with one trigger's bot token (`sendMessage`)."""

    def __init__(self, *, api_url: str, token: str) -> None:
        super().__init__()
        self._url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        await self._send(target, {"text": text[:4096]})

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> None:
        keyboard = {
            "inline_keyboard": [
                [
                    {"text": "Approve", "callback_data": f"{APPROVE_ACTION}:{request_id}"},
                    {"text": "Deny", "callback_data": f"{DENY_ACTION}:{request_id}"},
                ]
            ]
        }
        text = f"{summary}\n{argv_json(argv)}"[:4096]
        await self._send(target, {"text": text, "reply_markup": keyboard})

    async def _send(self, target: ports.ReplyTarget, fields: dict[str, Any]) -> None:
        body: dict[str, Any] = {"chat_id": target.channel_id, **fields}
        if target.thread.isdigit():
            body["reply_parameters"] = {"message_id": int(target.thread), "allow_sending_without_reply": True}
        data = await self.post_json(self._url, body, what="sendMessage")
        if not data.get("ok"):
            raise ReplyError(f"sendMessage refused: {data.get('description', '')}")


class WhatsAppReplier(_JsonPoster):
    """Posts to WhatsApp through the Graph API messages endpoint of one phone number."""

    def __init__(self, *, api_url: str, token: str, phone_number_id: str) -> None:
        super().__init__()
        self._url = f"{api_url.rstrip('/')}/{phone_number_id}/messages"
        self._headers = {"Authorization": f"Bearer {token}"}

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": target.channel_id,
            "type": "text",
            "text": {"preview_url": False, "body": text[:4096]},
        }
        if target.thread:
            body["context"] = {"message_id": target.thread}
        await self.post_json(self._url, body, headers=self._headers, what="Graph messages")

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> None:
        await self.reply(
            target, f"{summary}\n{argv_json(argv)}\nApprove in Slack or with aofctl (request {request_id})."
        )


NO_CHAT_PLATFORMS = frozenset({"http", "pagerduty", "github", "schedule", "cli"})


class MultiReplier:
    """`ports.Replier` for every platform: posts through the current listener of the target's trigger.

    `lookup(trigger)` is the chat replier of that trigger's listener in the current routing table
    (`routing.Switchboard.replier`), or None.
    """

    def __init__(self, *, lookup: Callable[[str], ports.ChatReplier | None]) -> None:
        self._lookup = lookup

    def _replier(self, target: ports.ReplyTarget) -> ports.ChatReplier | None:
        if target.platform in NO_CHAT_PLATFORMS:
            return None
        replier = self._lookup(target.trigger)
        if replier is None:
            log.warning("reply.no_listener", platform=target.platform, trigger=target.trigger)
        return replier

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        replier = self._replier(target)
        if replier is None:
            log.info("reply.not_posted", platform=target.platform, trigger=target.trigger, chars=len(text))
            return
        await replier.reply(target, text)

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> None:
        """Post an approval prompt (buttons where the platform has them)."""
        replier = self._replier(target)
        if replier is None:
            log.info("reply.approval_not_posted", platform=target.platform, request_id=request_id)
            return
        await replier.ask_approval(target, request_id=request_id, summary=summary, argv=argv)
