"""The Discord interactions listener (`type: Discord`) at `/hooks/discord/<trigger>`.

Owns Discord's interactions endpoint:

- verification before anything reads the body: `X-Signature-Ed25519` is an Ed25519 signature of
  `<X-Signature-Timestamp><raw body>` by the application's `public_key`
  (`aofd.runtime.verify.discord`); a timestamp outside the 5-minute window is refused (401), like a
  missing or wrong signature (Discord itself probes endpoints with bad signatures and expects 401);
- `PING` (type 1) answered with `PONG`;
- application commands (type 2, event type `slash_command`, text `/<name> <options...>`) and
  message components (type 3, event type `message_component`, text the component's `custom_id`
  and selected values), de-duplicated on the interaction id, answered at once (Discord waits 3
  seconds) with a deferred response (type 5); the agent's answer is a follow-up through the
  interaction's webhook (`aofd.runtime.replies.DiscordReplier`), whose address the event carries
  as its response URL;
- the trigger's `guild_ids` and `allowed_roles`: an interaction from another guild (or a direct
  message, when `guild_ids` is set), or from a member with none of the roles, runs nothing, is told
  so privately and is audited as `trigger.rejected` (`unknown_source`);
- approval buttons (`custom_id` `aofd_approve:<request id>` / `aofd_deny:<request id>`, posted by
  `DiscordReplier.ask_approval`), passed to the `ApprovalDecider` once per click.

The listener refuses to start without a valid `public_key` (64 hex characters) and a numeric
`application_id`. The API base URL is the trigger's `base_url` or `PlatformsSpec.discord_api_url`.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aofd.runtime import ports, replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()

PING = 1
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

PONG = 1
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
AUTOCOMPLETE_RESULT = 8

SUBCOMMAND_TYPES = frozenset({1, 2})
"""Option types that nest further options (SUB_COMMAND, SUB_COMMAND_GROUP)."""

NOT_ALLOWED_TEXT = "This command is not available to you here."


class DiscordListener(base.WebhookListener):
    """`type: Discord` triggers."""

    platform = "discord"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self.config
        self.application_id = str(config.application_id or "").strip()
        self.guild_ids = frozenset(str(g).strip() for g in config.guild_ids if str(g).strip())
        self.allowed_roles = frozenset(str(r).strip() for r in config.allowed_roles if str(r).strip())
        self.api_url = (config.base_url or self.deps.platforms.discord_api_url).rstrip("/")
        self.key: Ed25519PublicKey | None = None
        self.discord = replies.DiscordReplier(
            api_url=self.api_url,
            application_id=self.application_id,
            bot_token=base.secret_value(config.bot_token),
            clock=self.deps.clock,
        )
        self.replier = self.discord

    async def start(self) -> None:
        """Refuse to serve without the key that verifies interactions and the application's id."""
        where = f"Trigger {self.trigger_name}: config"
        public_key = base.secret_value(self.config.public_key)
        if not public_key:
            raise base.ListenerError(
                f"{where}.public_key is missing: a Discord trigger needs the application's public key "
                "(developer portal, General Information) to verify interactions"
            )
        try:
            self.key = verify.ed25519_public_key(public_key)
        except ValueError as exc:
            raise base.ListenerError(f"{where}.public_key {exc}") from None
        if not self.application_id.isdigit():
            raise base.ListenerError(
                f"{where}.application_id must be the application's numeric id (it names the "
                "webhook answers are posted to)"
            )
        await super().start()

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        if self.key is None:  # not started: nothing can be verified
            raise verify.Rejected(
                403, verify.SIGNATURE_INVALID, "no public_key is configured for this trigger"
            )
        verify.discord(
            key=self.key,
            body=body,
            timestamp=request.headers.get("X-Signature-Timestamp"),
            signature=request.headers.get("X-Signature-Ed25519"),
            now=self.deps.clock(),
        )
        payload = self.parse_json(body)
        if not isinstance(payload, dict):
            raise verify.Rejected(400, verify.MALFORMED, "interaction is not a JSON object")
        kind = payload.get("type")
        if kind == PING:
            return base.json_response({"type": PONG})
        if kind == AUTOCOMPLETE:
            return base.json_response({"type": AUTOCOMPLETE_RESULT, "data": {"choices": []}})
        if kind not in (APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT):
            raise verify.Rejected(400, verify.MALFORMED, f"interaction type {kind!r} is not handled")
        token = payload.get("token")
        if not isinstance(token, str) or not token or not payload.get("id"):
            raise verify.Rejected(400, verify.MALFORMED, "interaction has no id or token")
        refusal = self._refusal(payload)
        if refusal:
            # Logged, counted and audited like any rejection (`trigger.rejected`, `unknown_source`);
            # the user is told privately.
            await self.rejected(request, verify.Rejected(403, verify.UNKNOWN_SOURCE, refusal))
            return _message(NOT_ALLOWED_TEXT)
        if kind == MESSAGE_COMPONENT and await self._approval_click(payload):
            return base.json_response({"type": DEFERRED_UPDATE_MESSAGE})
        message = normalize(
            self.trigger_name,
            payload,
            response_url=self.discord.webhook(token),
            received_at=self.deps.clock(),
        )
        return _answer(await self.accept(message))

    def _refusal(self, payload: dict[str, Any]) -> str:
        """Why the trigger's `guild_ids`/`allowed_roles` refuse this interaction ('' when they do not)."""
        guild = str(payload.get("guild_id") or "")
        if self.guild_ids and guild not in self.guild_ids:
            return f"guild {guild or '(direct message)'} is not in guild_ids"
        if self.allowed_roles:
            roles = _dict(payload.get("member")).get("roles")
            held = {str(r) for r in roles} if isinstance(roles, list) else set()
            if not held & self.allowed_roles:
                return "the member has none of allowed_roles"
        return ""

    async def _approval_click(self, payload: dict[str, Any]) -> bool:
        """Pass an Approve/Deny button click to the approvals store (once per interaction)."""
        custom_id = str(_dict(payload.get("data")).get("custom_id", ""))
        action, _, request_id = custom_id.partition(":")
        if action not in (replies.APPROVE_ACTION, replies.DENY_ACTION) or not request_id:
            return False
        click_id = str(payload.get("id", ""))
        if not await self.first_time("action:" + click_id):
            return True
        # The click's own interaction webhook, for a private answer to the clicker.
        target = ports.ReplyTarget(
            "discord",
            self.trigger_name,
            str(payload.get("channel_id") or ""),
            extra={
                ports.RESPONSE_URL: self.discord.webhook(str(payload.get("token", ""))),
                ports.ISSUED_AT: repr(self.deps.clock()),
                ports.VISIBILITY: "private",
            },
        )
        self.spawn(
            self._decide(request_id, _user(payload), action == replies.APPROVE_ACTION, click_id, target),
            name=f"discord-approval:{self.trigger_name}",
        )
        return True

    async def _decide(
        self, request_id: str, user: ports.UserRef, approve: bool, click_id: str, target: ports.ReplyTarget
    ) -> None:
        """Decide one click; a click that changed nothing (or still needs more approvers) is answered
        to the clicker alone (an ephemeral follow-up); the prompt itself changes when the request ends."""
        await base.decide_and_answer(
            self.deps, self.trigger_name, self.discord, request_id, user, approve, click_id, target
        )


_dict = base.as_dict


def _message(text: str) -> ports.HttpResponse:
    """An immediate private answer (`CHANNEL_MESSAGE_WITH_SOURCE`, ephemeral, no mentions)."""
    return base.json_response(
        {
            "type": CHANNEL_MESSAGE,
            "data": {
                "content": text,
                "flags": replies.DISCORD_EPHEMERAL,
                "allowed_mentions": {"parse": []},
            },
        }
    )


def _answer(outcome: ports.RouteOutcome | None) -> ports.HttpResponse:
    """The interaction response: deferred while a flow runs, else a private line saying why not."""
    if outcome is None:
        return _message("Already received.")
    if outcome.started or outcome.outcome == "deferred":
        return base.json_response({"type": DEFERRED_CHANNEL_MESSAGE})
    if outcome.outcome in ("no_match", "unknown_trigger"):
        return _message(ports.NO_MATCH_TEXT)
    if outcome.outcome == "stalled":
        return _message(ports.STALLED_TEXT)
    return _message("This command could not be started.")


def _user(payload: dict[str, Any]) -> ports.UserRef:
    """Who clicked or typed: `member.user` in a guild, `user` in a direct message."""
    user = _dict(_dict(payload.get("member")).get("user")) or _dict(payload.get("user"))
    name = user.get("username") or user.get("global_name") or ""
    return ports.UserRef(str(user.get("id", "")), str(name), "discord")


def _option_words(options: object) -> list[str]:
    """A command's options as words: subcommand names, then values, in order."""
    words: list[str] = []
    if not isinstance(options, list):
        return words
    for option in options:
        if not isinstance(option, dict):
            continue
        if option.get("type") in SUBCOMMAND_TYPES:
            words.append(str(option.get("name", "")))
            words.extend(_option_words(option.get("options")))
        elif "value" in option:
            words.append(str(option["value"]))
    return [w for w in words if w]


def _component_values(data: dict[str, Any]) -> list[str]:
    values = data.get("values")
    found = [str(v) for v in values] if isinstance(values, list) else []
    for row in data.get("components") or []:  # a modal's text inputs
        for item in _dict(row).get("components") or []:
            value = _dict(item).get("value")
            if isinstance(value, str) and value:
                found.append(value)
    return found


def normalize(
    trigger: str, payload: dict[str, Any], *, response_url: str, received_at: float | None = None
) -> ports.EventMessage:
    """An application command or component interaction as an EventMessage.

    Its `raw` is the interaction without its `token`, plus the follow-up webhook as the response
    URL (`EventMessage.reply_target`).
    """
    data = _dict(payload.get("data"))
    if payload.get("type") == APPLICATION_COMMAND:
        text = " ".join([f"/{data.get('name', '')}", *_option_words(data.get("options"))])
        event_type = "slash_command"
    else:
        text = " ".join([str(data.get("custom_id", "")), *_component_values(data)]).strip()
        event_type = "message_component"
    channel = _dict(payload.get("channel"))
    raw = {k: v for k, v in payload.items() if k != "token"}
    raw[ports.RESPONSE_URL] = response_url
    return ports.EventMessage(
        platform="discord",
        trigger=trigger,
        text=text,
        user=_user(payload),
        channel_id=str(payload.get("channel_id") or channel.get("id") or ""),
        channel_name=str(channel.get("name") or ""),
        thread="",
        event_type=event_type,
        delivery_id=str(payload.get("id", "")),
        raw=raw,
        received_at=time.time() if received_at is None else received_at,
    )
