"""Posting answers back to chat platforms, escaped, with each trigger's own credentials.

Owns

- `escape_slack()`: `&` -> `&amp;`, `<` -> `&lt;`, `>` -> `&gt;` on everything aofd posts to Slack,
  so agent output cannot mass-mention (`<!channel>`) or disguise links (`<https://evil|https://good>`)
  (RELIABILITY.md section 2, section 6 row 47);
- `SlackReplier`: `chat.postMessage` through slack_sdk's `AsyncWebClient` (base URL from
  `PlatformsSpec.slack_api_url`) in the event's channel and thread, and approval prompts with
  Approve/Deny buttons (`action_id` `aofd_approve`/`aofd_deny`, `value` = the request id) showing
  the argv as an escaped JSON array (`ensure_ascii=True`, so no bidi or look-alike characters).
  A slash command's answers go to its `response_url` instead (a bot that is not in the channel
  cannot use chat.postMessage there): `in_channel`, or `ephemeral` for a private answer (a
  failure), only under `PlatformsSpec.slack_response_url_base` (`response_url_ok`), at most
  `RESPONSE_URL_USES` times and within `RESPONSE_URL_TTL`, as Slack allows; past that, or when the
  URL answers non-2xx, the answer goes to chat.postMessage and `slack.response_url_fallback` is
  logged (never with the URL: it lets anyone post to the channel);
- `update_approval`: the prompt replaced by how the request ended, its buttons gone
  (Slack `chat.update`, Telegram `editMessageText`; WhatsApp cannot edit); private answers to a
  click that changed nothing (Slack `chat.postEphemeral`, Telegram `answerCallbackQuery`);
- `TelegramReplier` (`sendMessage`, inline keyboard for approvals) and `WhatsAppReplier`
  (Graph `/{phone_number_id}/messages`) over the runtime's HTTP client (`httpclient`);
- `MultiReplier`, the `ports.Replier` the flow engine uses: it finds the trigger's *current*
  listener in the routing table and posts through its replier; HTTP, PagerDuty, GitHub and
  Schedule triggers have no chat to answer in (the answer is stored on the run), so it logs.

Every platform error is translated into `ReplyError` here. It must not log tokens (Telegram puts
the token in the URL) and must not choose where to post: the target comes from the event.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.parse
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

DEFAULT_RESPONSE_URL_BASE = "https://hooks.slack.com/"
RESPONSE_URL_TTL = 30 * 60.0
"""Seconds a slash command's response_url is valid (Slack: 30 minutes)."""
RESPONSE_URL_USES = 5
"""Answers Slack takes through one response_url."""
RESPONSE_URL_MEMORY = 4096
"""Response URLs whose uses a replier counts (the oldest is forgotten first)."""
RESPONSE_URL_TIMEOUT = 10
"""Seconds one POST to a response_url may take before the answer falls back to chat.postMessage."""


class ReplyError(errors.Temporary):
    """A platform refused or failed to take a reply; retrying later may work."""


def escape_slack(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def argv_json(argv: tuple[str, ...] | list[str]) -> str:
    """An argv as a JSON array with only ASCII characters (what approvers read)."""
    return json.dumps(list(argv), ensure_ascii=True)


def response_url_ok(url: str, base: str) -> bool:
    """True when `url` is under `base`: the same scheme, host and port, no user info, no whitespace or
    control characters or backslashes, and a path below the base's (so a forged slash-command payload
    cannot make aofd POST anywhere else)."""
    if not url or not base or any(c.isspace() or c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return False
    prefix = base if base.endswith("/") else base + "/"
    if not url.startswith(prefix):
        return False
    try:
        got, want = urllib.parse.urlsplit(url), urllib.parse.urlsplit(prefix)
        same_port = got.port == want.port
    except ValueError:
        return False
    return (
        same_port
        and got.scheme == want.scheme
        and "@" not in got.netloc
        and got.hostname == want.hostname
        and got.path.startswith(want.path)
    )


class SlackReplier:
    """Posts to Slack with one trigger's bot token (or through a slash command's response_url)."""

    def __init__(
        self,
        *,
        api_url: str,
        token: str,
        response_url_base: str = DEFAULT_RESPONSE_URL_BASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = AsyncWebClient(token=token or None, base_url=api_url)
        self.response_url_base = response_url_base
        # response_url answers go through the runtime's client: it never follows a redirect (a
        # redirect under the allowed base could lead anywhere), and its errors carry no URL.
        self._hooks = httpclient.HttpClient(timeout=RESPONSE_URL_TIMEOUT)
        self._clock = clock
        # Invariant: at most RESPONSE_URL_MEMORY entries (url -> answers sent or being sent through it).
        self._uses: collections.OrderedDict[str, int] = collections.OrderedDict()

    def share_response_urls(self, other: SlackReplier) -> None:
        """Count response_url uses together with `other` (the replier of the listener this one replaces)."""
        self._uses = other._uses

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        safe = escape_slack(text)[:MAX_SLACK_TEXT]
        url = target.extra.get(ports.RESPONSE_URL)
        if not url:
            await self._post(target, text=safe)
            return
        failed = await self._respond(target, url, safe)
        if failed is None:
            return
        try:
            await self._post(target, text=safe)
        except ReplyError as exc:
            raise ReplyError(f"{failed}; then {exc}") from exc

    async def _respond(self, target: ports.ReplyTarget, url: str, text: str) -> str | None:
        """POST the answer to the slash command's response_url; None, or why it was not taken there."""
        reason, detail = self._usable(url, target.extra.get(ports.ISSUED_AT, ""))
        if not reason:
            private = target.extra.get(ports.VISIBILITY) == "private"
            body = {"text": text, "response_type": "ephemeral" if private else "in_channel"}
            try:
                answer = await self._hooks.request("POST", url, json_body=body, max_body=64 * 1024)
            except httpclient.HttpError as exc:
                reason, detail = "transport", f"response_url failed: {exc}"
            else:
                if 200 <= answer.status < 300:
                    return None
                reason, detail = f"http_{answer.status}", f"response_url answered HTTP {answer.status}"
        log.warning(
            "slack.response_url_fallback",
            trigger=target.trigger,
            channel=target.channel_id,
            reason=reason,
            detail=detail + "; posting with chat.postMessage",
        )
        return detail

    def _usable(self, url: str, issued_at: str) -> tuple[str, str]:
        """('', '') and one use counted, or (reason, detail) why `url` must not be used."""
        if not response_url_ok(url, self.response_url_base):
            return "refused", f"response_url is not under {self.response_url_base}"
        try:
            age = self._clock() - float(issued_at)
        except ValueError:
            age = 0.0  # unknown: let Slack say whether it is still valid
        if age >= RESPONSE_URL_TTL:
            return "expired", f"response_url is older than {RESPONSE_URL_TTL / 60:.0f} minutes"
        uses = self._uses.pop(url, 0)
        self._uses[url] = min(uses + 1, RESPONSE_URL_USES)
        while len(self._uses) > RESPONSE_URL_MEMORY:
            self._uses.popitem(last=False)
        if uses >= RESPONSE_URL_USES:
            return "used_up", f"response_url was used {RESPONSE_URL_USES} times"
        return "", ""

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        """Post the prompt with Approve/Deny buttons; returns `<channel>/<ts>` of the message."""
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
        answer = await self._post(target, text=f"Approval requested: {command}", blocks=blocks)
        channel, ts = answer.get("channel"), answer.get("ts")
        return f"{channel}/{ts}" if isinstance(channel, str) and isinstance(ts, str) and ts else ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """Replace the prompt `prompt` (`<channel>/<ts>` from `ask_approval`) with `text`: no buttons."""
        channel, _, ts = prompt.partition("/")
        if not channel or not ts:
            return
        safe = escape_slack(text)[:MAX_SLACK_TEXT]
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": safe[:2900]}}]
        try:
            await self.client.chat_update(channel=channel, ts=ts, text=safe, blocks=blocks)
        except SlackApiError as exc:
            raise ReplyError(f"chat.update failed: {_slack_error(exc)}") from exc
        except Exception as exc:  # slack_sdk's transport failures, translated here
            raise ReplyError(f"chat.update failed: {type(exc).__name__}") from exc

    async def tell_privately(self, *, channel: str, user: str, text: str, thread: str = "") -> None:
        """`chat.postEphemeral`: `text` shown only to `user` in `channel` (why a click was refused)."""
        fields: dict[str, Any] = {"channel": channel, "user": user, "text": escape_slack(text)[:3000]}
        if thread:
            fields["thread_ts"] = thread
        try:
            await self.client.chat_postEphemeral(**fields)
        except SlackApiError as exc:
            raise ReplyError(f"chat.postEphemeral failed: {_slack_error(exc)}") from exc
        except Exception as exc:  # slack_sdk's transport failures, translated here
            raise ReplyError(f"chat.postEphemeral failed: {type(exc).__name__}") from exc

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

    async def bot_user_id(self) -> str:
        """The bot's own user id from `auth.test` ('' when it cannot be read: mentions stay in the text)."""
        try:
            resp = await self.client.auth_test()
        except SlackApiError as exc:
            log.warning("slack.auth_test_failed", error=_slack_error(exc))
            return ""
        except Exception as exc:  # any transport or decoding failure
            log.warning("slack.auth_test_failed", error=type(exc).__name__)
            return ""
        user_id = resp.get("user_id")
        return user_id if isinstance(user_id, str) else ""

    async def _post(self, target: ports.ReplyTarget, **fields: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"channel": target.channel_id, **fields}
        if target.thread:
            kwargs["thread_ts"] = target.thread
        try:
            answer = await self.client.chat_postMessage(**kwargs)
            return answer.data if isinstance(answer.data, dict) else {}
        except SlackApiError as exc:
            raise ReplyError(f"chat.postMessage failed: {_slack_error(exc)}") from exc
        except (
            Exception
        ) as exc:  # slack_sdk's transport failures (its HTTP library's errors), translated here
            raise ReplyError(f"chat.postMessage failed: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        await self._hooks.aclose()


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
    """Posts to Telegram with one trigger's bot token (`sendMessage`, `editMessageText`,
    `answerCallbackQuery`)."""

    def __init__(self, *, api_url: str, token: str) -> None:
        super().__init__()
        self._base = f"{api_url.rstrip('/')}/bot{token}"
        self._url = f"{self._base}/sendMessage"

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        await self._send(target, {"text": text[:4096]})

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        """Post the prompt with an inline keyboard; returns the message id."""
        keyboard = {
            "inline_keyboard": [
                [
                    {"text": "Approve", "callback_data": f"{APPROVE_ACTION}:{request_id}"},
                    {"text": "Deny", "callback_data": f"{DENY_ACTION}:{request_id}"},
                ]
            ]
        }
        text = f"{summary}\n{argv_json(argv)}"[:4096]
        data = await self._send(target, {"text": text, "reply_markup": keyboard})
        result = data.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return str(message_id) if isinstance(message_id, int) else ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """`editMessageText` of the prompt (`prompt`: its message id): `text`, no keyboard."""
        if not prompt.isdigit():
            return
        body = {"chat_id": target.channel_id, "message_id": int(prompt), "text": text[:4096]}
        data = await self.post_json(f"{self._base}/editMessageText", body, what="editMessageText")
        if not data.get("ok"):
            raise ReplyError(f"editMessageText refused: {data.get('description', '')}")

    async def answer_click(self, query_id: str, text: str, *, alert: bool) -> None:
        """`answerCallbackQuery`: ends the button's spinner; `text` is shown only to the clicker."""
        body: dict[str, Any] = {"callback_query_id": query_id, "text": text[:200], "show_alert": alert}
        data = await self.post_json(f"{self._base}/answerCallbackQuery", body, what="answerCallbackQuery")
        if not data.get("ok"):
            raise ReplyError(f"answerCallbackQuery refused: {data.get('description', '')}")

    async def _send(self, target: ports.ReplyTarget, fields: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"chat_id": target.channel_id, **fields}
        if target.thread.isdigit():
            body["reply_parameters"] = {"message_id": int(target.thread), "allow_sending_without_reply": True}
        data = await self.post_json(self._url, body, what="sendMessage")
        if not data.get("ok"):
            raise ReplyError(f"sendMessage refused: {data.get('description', '')}")
        return data


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
    ) -> str:
        """WhatsApp has no buttons here: the prompt says how to decide (`aofctl approve`)."""
        await self.reply(
            target,
            f"{summary}\n{argv_json(argv)}\nAn approver decides with: aofctl approve {request_id} "
            f"(or aofctl deny {request_id}).",
        )
        return ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """Messages cannot be edited here: the outcome is told in the chat instead."""
        return


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
    ) -> str:
        """Post an approval prompt (buttons where the platform has them); a reference to it or ''."""
        replier = self._replier(target)
        if replier is None:
            log.info("reply.approval_not_posted", platform=target.platform, request_id=request_id)
            return ""
        return await replier.ask_approval(target, request_id=request_id, summary=summary, argv=argv)

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """Replace a prompt posted by `ask_approval` with how it ended (where the platform can)."""
        replier = self._replier(target) if prompt else None
        if replier is not None:
            await replier.update_approval(target, prompt=prompt, text=text)
