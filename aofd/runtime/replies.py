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
- `DiscordReplier`: interaction follow-ups (`/webhooks/<application_id>/<token>`, ephemeral for a
  private answer) while the token is valid, else bot messages; no mentions allowed, markdown
  escaped (`escape_discord`); Approve/Deny buttons (`custom_id` `aofd_approve:<id>`);
- `TeamsReplier`: Bot Framework connector replies at the service URL a verified activity of the
  conversation came with, with a client-credentials token (cached); Adaptive Card approvals;
- `MultiReplier`, the `ports.Replier` the flow engine uses: it finds the trigger's *current*
  listener in the routing table and posts through its replier (Jira, GitLab, Bitbucket and
  Opsgenie answers are comments and notes: `aofd.runtime.tracker_replies`); HTTP, PagerDuty,
  GitHub, Schedule and Manual triggers have no chat to answer in (the answer is stored on the
  run), so it logs.

Every platform error is translated into `ReplyError` here. It must not log tokens (Telegram puts
the token in the URL) and must not choose where to post: the target comes from the event.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from aofd import errors
from aofd.runtime import approvals, httpclient, ports

log = structlog.get_logger()

APPROVE_ACTION = "aofd_approve"
DENY_ACTION = "aofd_deny"
MAX_SLACK_TEXT = 39_000
"""chat.postMessage truncates at 40,000 characters; stay under it after escaping."""
SLACK_SECTION_TEXT = 3000
"""Slack refuses a section block whose text is longer (`invalid_blocks`)."""
TELEGRAM_MAX_TEXT = 4096
"""Telegram refuses a message longer than 4,096 characters."""
WHATSAPP_MAX_TEXT = 4096
"""WhatsApp (Cloud API) takes a text body of at most 4,096 characters."""
SUMMARY_ROOM = 300
"""Characters an approval prompt keeps for its summary where one message holds summary and argv
(the argv, held by the guard to `approvals.prompt_budget`, fits in what is left)."""
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
    """An argv as a JSON array with only ASCII characters and no markup characters (what approvers
    read: `approvals.render_argv`, whose length the guard holds to `approvals.prompt_budget`)."""
    return approvals.render_argv(argv)


def cut(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its start and a visible
    `… (cut: N more characters)` marker, `limit` characters in all: an approval prompt never
    loses its end silently."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(f"… (cut: {len(text)} more characters)"))
    return text[:keep] + f"… (cut: {len(text) - keep} more characters)"


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
        # Two sections (Slack takes at most 3,000 characters in one): the summary, then the argv in
        # a code block, whole (the guard keeps it within `approvals.prompt_budget("slack")`).
        command = cut(escape_slack(argv_json(argv)), SLACK_SECTION_TEXT - 6)
        headline = cut(escape_slack(summary), SLACK_SECTION_TEXT)
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{command}```"}},
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
        return await self.send_json("POST", url, body, headers=headers, what=what)

    async def send_json(
        self, method: str, url: str, body: dict[str, Any], *, headers: dict[str, str] | None = None, what: str
    ) -> dict[str, Any]:
        """`method` `body` as JSON to `url`; the answer's JSON object. Raises `ReplyError` (no URL in it)."""
        try:
            answer = await self._http.request(method, url, json_body=body, headers=headers)
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

    async def reply(self, target: ports.ReplyTarget, text: str) -> str | None:
        """`sendMessage`; the sent message's id (a reply to it continues the conversation)."""
        data = await self._send(target, {"text": text[:4096]})
        result = data.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return str(message_id) if isinstance(message_id, int) else None

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
        command = cut(argv_json(argv), TELEGRAM_MAX_TEXT - SUMMARY_ROOM)
        text = f"{cut(summary, TELEGRAM_MAX_TEXT - len(command) - 1)}\n{command}"
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
        command = cut(argv_json(argv), WHATSAPP_MAX_TEXT - 2 * SUMMARY_ROOM)
        hint = f"An approver decides with: aofctl approve {request_id} (or aofctl deny {request_id})."
        room = WHATSAPP_MAX_TEXT - len(command) - len(hint) - 2
        await self.reply(target, f"{cut(summary, room)}\n{command}\n{hint}")
        return ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """Messages cannot be edited here: the outcome is told in the chat instead."""
        return


DISCORD_MAX_TEXT = 2000
"""Discord refuses message content longer than 2,000 characters."""
DISCORD_TOKEN_TTL = 15 * 60.0
"""Seconds an interaction token (its follow-up webhook) is valid (Discord: 15 minutes)."""
DISCORD_EPHEMERAL = 64
"""Message flag: only the user who started the interaction sees it."""
_DISCORD_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()<@:-])")


def escape_discord(text: str) -> str:
    """Backslash-escape Discord's markdown characters, so agent output cannot disguise links
    (`[good](https://evil)`), break out of formatting or spell a mention."""
    return _DISCORD_MARKDOWN.sub(r"\\\1", text)


class DiscordReplier(_JsonPoster):
    """Posts to Discord for one application: through the interaction's follow-up webhook
    (`/webhooks/<application_id>/<token>`, which the listener puts in the event as its response URL)
    while its token is valid, else as the bot (`/channels/<id>/messages` with `bot_token`).

    Every message is sent with `allowed_mentions: {parse: []}`: nothing an agent writes pings anyone.
    """

    def __init__(
        self, *, api_url: str, application_id: str, bot_token: str, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self._api = api_url.rstrip("/")
        self.webhook_base = f"{self._api}/webhooks/{application_id}/"
        self._bot = {"Authorization": f"Bot {bot_token}"} if bot_token else {}
        self._clock = clock

    def webhook(self, token: str) -> str:
        """The follow-up webhook of the interaction whose token is `token`."""
        return self.webhook_base + urllib.parse.quote(token, safe="")

    def _hook(self, target: ports.ReplyTarget) -> str:
        """The target's interaction webhook when it is this application's and still valid, else ''."""
        url = target.extra.get(ports.RESPONSE_URL, "")
        if not url or not response_url_ok(url, self.webhook_base):
            return ""
        try:
            age = self._clock() - float(target.extra.get(ports.ISSUED_AT, ""))
        except ValueError:
            age = 0.0
        return url if age < DISCORD_TOKEN_TTL - 30 else ""

    async def _send(self, target: ports.ReplyTarget, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "allowed_mentions": {"parse": []}}
        hook = self._hook(target)
        if hook:
            if target.extra.get(ports.VISIBILITY) == "private":
                body["flags"] = DISCORD_EPHEMERAL
            return await self.post_json(hook + "?wait=true", body, what="Discord follow-up")
        if not self._bot or not target.channel_id:
            raise ReplyError("Discord: the interaction's token has expired and no bot_token is configured")
        url = f"{self._api}/channels/{urllib.parse.quote(target.channel_id, safe='')}/messages"
        return await self.post_json(url, body, headers=self._bot, what="Discord create message")

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        await self._send(target, {"content": escape_discord(text)[:DISCORD_MAX_TEXT]})

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        """Post the prompt with Approve/Deny buttons (`custom_id` `aofd_approve:<id>`); returns
        `<channel>/<message id>`."""
        # The argv in a code block, as it is (`argv_json` has no backtick) and whole; the summary
        # gets the rest of the 2,000 characters, cut with a marker if it must be.
        command = "```\n" + cut(argv_json(argv), DISCORD_MAX_TEXT - SUMMARY_ROOM) + "\n```"
        text = cut(escape_discord(summary), DISCORD_MAX_TEXT - len(command) - 1) + "\n" + command
        buttons = [
            {"type": 2, "style": 3, "label": "Approve", "custom_id": f"{APPROVE_ACTION}:{request_id}"},
            {"type": 2, "style": 4, "label": "Deny", "custom_id": f"{DENY_ACTION}:{request_id}"},
        ]
        data = await self._send(target, {"content": text, "components": [{"type": 1, "components": buttons}]})
        message_id, channel = data.get("id"), data.get("channel_id") or target.channel_id
        return f"{channel}/{message_id}" if isinstance(message_id, str) and message_id else ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """Replace the prompt (`<channel>/<message id>`) with `text` and no buttons."""
        channel, _, message_id = prompt.partition("/")
        if not message_id.isdigit():
            return
        body = {"content": escape_discord(text)[:DISCORD_MAX_TEXT], "components": []}
        hook = self._hook(target)
        if hook:
            url, headers = f"{hook}/messages/{message_id}", None
        elif self._bot and channel:
            url = f"{self._api}/channels/{urllib.parse.quote(channel, safe='')}/messages/{message_id}"
            headers = self._bot
        else:
            return
        await self.send_json("PATCH", url, body, headers=headers, what="Discord edit message")


TEAMS_SCOPE = "https://api.botframework.com/.default"
"""The scope a bot's token for the Bot Framework connector is asked for."""
TEAMS_MAX_TEXT = 28_000
"""Teams refuses messages over about 28 KB."""
SERVICE_URL_MEMORY = 4096
"""Conversations whose service URL a Teams replier remembers (the oldest is forgotten first)."""


class TeamsReplier(_JsonPoster):
    """Posts to Microsoft Teams through the Bot Framework connector, as one bot (`app_id`).

    Where: `<serviceUrl>/v3/conversations/<conversation id>/activities/<activity id>` (a reply to
    the activity). The service URL is the one a verified activity of that conversation came with
    (its token's `serviceurl` claim vouches for it; the listener calls `trust`); a conversation
    never seen is not posted to. The bearer token comes from the client-credentials flow at
    `token_url` with `app_id`/`app_password`, cached until a minute before it expires. Text is sent
    as `plain`, so agent output cannot disguise links or spell mentions.
    """

    def __init__(
        self,
        *,
        token_url: str,
        app_id: str,
        app_password: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._token_url = token_url
        self._app_id = app_id
        self._app_password = app_password
        self._clock = clock
        self._token = ""
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        # Invariant: at most SERVICE_URL_MEMORY entries (conversation id -> service URL).
        self._service_urls: collections.OrderedDict[str, str] = collections.OrderedDict()

    def trust(self, conversation_id: str, service_url: str) -> None:
        """Remember the service URL a verified activity of `conversation_id` came with."""
        self._service_urls.pop(conversation_id, None)
        self._service_urls[conversation_id] = service_url
        while len(self._service_urls) > SERVICE_URL_MEMORY:
            self._service_urls.popitem(last=False)

    def share_service_urls(self, other: TeamsReplier) -> None:
        """Know the conversations `other` (the replier of the listener this one replaces) knew."""
        self._service_urls = other._service_urls

    async def token(self) -> str:
        """A bearer token for the connector (client credentials; cached until shortly before expiry)."""
        async with self._token_lock:
            if self._token and self._clock() < self._token_expires:
                return self._token
            if not self._app_id or not self._app_password:
                raise ReplyError("Teams: no app_id/app_password to get a token with")
            form = urllib.parse.urlencode(
                {
                    "grant_type": "client_credentials",
                    "client_id": self._app_id,
                    "client_secret": self._app_password,
                    "scope": TEAMS_SCOPE,
                }
            )
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            try:
                answer = await self._http.request("POST", self._token_url, data=form, headers=headers)
                data = answer.json()
            except (httpclient.HttpError, ValueError) as exc:
                raise ReplyError(f"Teams token request failed: {type(exc).__name__}") from exc
            token = data.get("access_token") if isinstance(data, dict) else None
            if answer.status != 200 or not isinstance(token, str) or not token:
                raise ReplyError(f"Teams token request answered HTTP {answer.status}")
            expires_in = data.get("expires_in", 3600)
            seconds = float(expires_in) if isinstance(expires_in, int | float | str) else 3600.0
            self._token, self._token_expires = token, self._clock() + max(seconds - 60.0, 0.0)
            return token

    def _conversation(self, target: ports.ReplyTarget) -> str:
        service = self._service_urls.get(target.channel_id)
        if service is None:
            raise ReplyError("Teams: no verified activity came from this conversation")
        conversation = urllib.parse.quote(target.channel_id, safe="")
        return f"{service.rstrip('/')}/v3/conversations/{conversation}/activities"

    async def _activity(
        self, method: str, url: str, activity: dict[str, Any], *, what: str
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {await self.token()}"}
        return await self.send_json(method, url, activity, headers=headers, what=what)

    async def _post(self, target: ports.ReplyTarget, activity: dict[str, Any]) -> dict[str, Any]:
        url = self._conversation(target)
        if target.thread:
            url += "/" + urllib.parse.quote(target.thread, safe="")
            activity = {**activity, "replyToId": target.thread}
        return await self._activity("POST", url, activity, what="Teams reply")

    async def reply(self, target: ports.ReplyTarget, text: str) -> None:
        await self._post(target, {"type": "message", "textFormat": "plain", "text": text[:TEAMS_MAX_TEXT]})

    async def ask_approval(
        self, target: ports.ReplyTarget, *, request_id: str, summary: str, argv: tuple[str, ...]
    ) -> str:
        """Post an Adaptive Card with Approve/Deny buttons (`Action.Submit` with `aofd_action` and
        `request_id`); returns the posted activity's id."""
        card = {
            "type": "AdaptiveCard",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": "1.4",
            # RichTextBlock/TextRun: a TextRun shows its text as written, where a TextBlock would
            # render an agent-written `[safe](https://evil)` as a disguised link.
            "body": [
                {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": cut(summary, 2000)}]},
                {
                    "type": "RichTextBlock",
                    "inlines": [{"type": "TextRun", "text": argv_json(argv), "fontType": "Monospace"}],
                },
            ],
            "actions": [
                {
                    "type": "Action.Submit",
                    "title": title,
                    "data": {TEAMS_ACTION: action, "request_id": request_id},
                }
                for title, action in (("Approve", APPROVE_ACTION), ("Deny", DENY_ACTION))
            ],
        }
        activity = {
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
        }
        data = await self._post(target, activity)
        activity_id = data.get("id")
        return activity_id if isinstance(activity_id, str) else ""

    async def update_approval(self, target: ports.ReplyTarget, *, prompt: str, text: str) -> None:
        """Replace the prompt activity `prompt` with `text` (its card and buttons gone)."""
        if not prompt:
            return
        url = f"{self._conversation(target)}/{urllib.parse.quote(prompt, safe='')}"
        activity = {"type": "message", "id": prompt, "textFormat": "plain", "text": text[:TEAMS_MAX_TEXT]}
        await self._activity("PUT", url, activity, what="Teams update activity")


TEAMS_ACTION = "aofd_action"
"""The key of an approval card button's `data` naming the action (`aofd_approve`/`aofd_deny`)."""


NO_CHAT_PLATFORMS = frozenset({"http", "pagerduty", "github", "schedule", "cli", "manual"})


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

    async def reply(self, target: ports.ReplyTarget, text: str) -> str | None:
        replier = self._replier(target)
        if replier is None:
            log.info("reply.not_posted", platform=target.platform, trigger=target.trigger, chars=len(text))
            return None
        return await replier.reply(target, text)

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
