"""The Microsoft Teams listener (`type: Teams`, Bot Framework) at `/hooks/teams/<trigger>`.

Owns the Bot Framework's messaging endpoint:

- authentication before anything reads the body: the `Authorization: Bearer` JWT must be signed
  (RS256) by a key of the Bot Framework's OpenID metadata (`PlatformsSpec.teams_openid_metadata_url`
  -> `jwks_uri`), with issuer `https://api.botframework.com`, audience the trigger's `app_id`, and
  `exp`/`nbf` within 5 minutes of now (`aofd.runtime.verify.bot_framework`); then, from the
  activity, its `channelId` must be `msteams` (the keys are endorsed for Web Chat and Direct Line
  too, where the client writes the activity), the key's `endorsements` must name it, the token's
  `serviceurl` claim must equal the activity's `serviceUrl`, and a `message` activity's
  `timestamp` must lie within 5 minutes of now (the token is valid for an hour and not bound to
  the body: this keeps a captured activity from being replayed after its de-dup entry expired).
  Every failure is 401 and audited as `trigger.rejected`. The keys (`OpenIdKeys`) are cached for a
  day; a token naming a key not in the cache refreshes them, at most once a minute; while they
  cannot be fetched and none are held, requests are 503 (retried by the sender), not rejected;
- the trigger's `allowed_tenants` (compared case-insensitively): a message from another tenant,
  or without `conversation.tenantId` and `channelData.tenant.id` both set and equal, is refused
  (403, audited as `unknown_source`);
- `message` activities as EventMessages (event type `message`; the bot's own `<at>` mention
  removed from the text; the conversation is the channel, the activity id the thread), de-duplicated
  on conversation and activity id; other activity types are acknowledged and not routed;
- Adaptive Card approval clicks (a `message` whose `value` has `aofd_action` and `request_id`,
  posted by `aofd.runtime.replies.TeamsReplier.ask_approval`), passed to the `ApprovalDecider`;
- the trigger's replier (`TeamsReplier`): it learns each conversation's service URL from verified
  activities only (`trust`), and gets its token with `app_id`/`app_password`.

The listener refuses to start without `app_id` and `app_password`.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from aofd import settings
from aofd.runtime import httpclient, ports, replies, verify
from aofd.runtime.listeners import base

log = structlog.get_logger()

KEYS_TTL = 24 * 3600.0
"""Seconds the Bot Framework's signing keys are used before they are fetched again."""

KEYS_MIN_REFRESH = 60.0
"""A token naming an unknown key refreshes the keys at most this often (seconds; successful fetches)."""

KEYS_RETRY = 5.0
"""After a failed fetch, the next try waits this long (seconds); meanwhile requests are 503 when no
keys are held."""

ACTIVITY_WINDOW = verify.BOT_FRAMEWORK_LEEWAY
"""An activity's `timestamp` must lie within this many seconds of now. Its token is a bearer token,
valid for an hour (plus the leeway) and not bound to the body: the window, well inside the de-dup
cache's TTL, is what keeps a captured activity from being replayed once its de-dup entry is gone."""

KEYS_MAX_BYTES = 256 * 1024

_MENTION = re.compile(r"<at>[^<]*</at>")


class KeysUnavailable(Exception):
    """The OpenID metadata or its key set could not be fetched (the endpoint answers 503)."""


class OpenIdKeys:
    """The signing keys (JWKs, by `kid`) published through an OpenID metadata document.

    Fetched on first use, kept for `ttl` seconds, fetched again when a token names a key not held
    (at most once every `min_refresh` seconds after a successful fetch, so unknown `kid`s cannot
    make aofd hammer the metadata endpoint). A failed fetch is retried after `retry` seconds; until
    then, with no keys held, lookups raise `KeysUnavailable` (503, the sender retries) rather than
    finding no key (401). One fetch at a time.
    """

    def __init__(
        self,
        *,
        metadata_url: str,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = KEYS_TTL,
        min_refresh: float = KEYS_MIN_REFRESH,
        retry: float = KEYS_RETRY,
    ) -> None:
        self.metadata_url = metadata_url
        self._clock = clock
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._retry = retry
        self._http = httpclient.HttpClient(timeout=10.0)
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched = float("-inf")
        self._failed = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> dict[str, Any] | None:
        """The JWK named `kid`, or None when the metadata's key set has no such key.

        Raises:
            KeysUnavailable: the keys could not be fetched and none are held.
        """
        found = self._keys.get(kid)
        if found is not None and self._clock() - self._fetched < self._ttl:
            return found
        async with self._lock:
            age = self._clock() - self._fetched
            found = self._keys.get(kid)
            if found is not None and age < self._ttl:
                return found
            if age >= self._min_refresh and self._clock() - self._failed >= self._retry:
                try:
                    await self._fetch()
                except KeysUnavailable:
                    self._failed = self._clock()
                    if not self._keys:
                        raise
                    log.warning("teams.keys_refresh_failed", url=self.metadata_url)
            elif not self._keys:
                raise KeysUnavailable("the key set could not be fetched; retrying shortly")
            return self._keys.get(kid)

    async def _fetch(self) -> None:
        self.fetches += 1
        metadata = await self._json(self.metadata_url, "OpenID metadata")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeysUnavailable("the OpenID metadata has no jwks_uri")
        try:
            settings.check_base_url(jwks_uri)
        except ValueError as exc:
            raise KeysUnavailable(f"the OpenID metadata's jwks_uri {exc}") from None
        jwks = await self._json(jwks_uri, "key set")
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise KeysUnavailable("the key set has no keys")
        self._keys = {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}
        self._fetched = self._clock()  # only a successful fetch holds back the next for min_refresh
        log.info("teams.keys_fetched", keys=len(self._keys))

    async def _json(self, url: str, what: str) -> dict[str, Any]:
        try:
            answer = await self._http.request("GET", url, max_body=KEYS_MAX_BYTES)
            data = answer.json()
        except (httpclient.HttpError, ValueError) as exc:
            raise KeysUnavailable(f"{what}: {type(exc).__name__}") from None
        if answer.status != 200 or not isinstance(data, dict):
            raise KeysUnavailable(f"{what} answered HTTP {answer.status}")
        return data

    async def aclose(self) -> None:
        await self._http.aclose()


class TeamsListener(base.WebhookListener):
    """`type: Teams` triggers."""

    platform = "teams"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self.config
        self.app_id = base.secret_value(config.app_id).strip()
        self.app_password = base.secret_value(config.app_password)
        self.tenants = frozenset(t.strip().lower() for t in config.allowed_tenants if t.strip())
        self.keys = OpenIdKeys(
            metadata_url=self.deps.platforms.teams_openid_metadata_url, clock=self.deps.clock
        )
        self.teams = replies.TeamsReplier(
            token_url=self.deps.platforms.teams_token_url,
            app_id=self.app_id,
            app_password=self.app_password,
            clock=self.deps.clock,
        )
        self.replier = self.teams

    def succeed(self, previous: base.Listener) -> None:
        """Keep the conversations (and their service URLs) the replaced listener had seen."""
        if isinstance(previous, TeamsListener):
            self.teams.share_service_urls(previous.teams)

    async def start(self) -> None:
        """Refuse to serve without the bot's id (the tokens' audience) and password (its replies)."""
        where = f"Trigger {self.trigger_name}: config"
        if not self.app_id or "${" in self.app_id:
            raise base.ListenerError(
                f"{where}.app_id is missing: a Teams trigger needs the bot's Microsoft App ID "
                "(the audience its Bot Framework tokens must carry)"
            )
        if not self.app_password or "${" in self.app_password:
            raise base.ListenerError(
                f"{where}.app_password is missing: a Teams trigger needs the bot's client secret "
                "to post its answers"
            )
        await super().start()

    async def stop(self, *, drain: float) -> None:
        try:
            await super().stop(drain=drain)
        finally:
            await self.keys.aclose()

    async def on_request(self, request: ports.HttpRequest, body: bytes) -> ports.HttpResponse:
        token = verify.bearer(request.headers.get("Authorization"))
        kid = verify.jwt_key_id(token)
        try:
            jwk = await self.keys.key(kid)
        except KeysUnavailable as exc:
            log.warning("teams.keys_unavailable", trigger=self.trigger_name, error=str(exc))
            return ports.HttpResponse.text(503, "service unavailable", headers={"Retry-After": "30"})
        if jwk is None:
            raise verify.Rejected(401, verify.SIGNATURE_INVALID, "the bearer token names an unknown key")
        claims = verify.bot_framework(token=token, jwk=jwk, app_id=self.app_id, now=self.deps.clock())
        activity = self.parse_json(body)
        if not isinstance(activity, dict):
            raise verify.Rejected(400, verify.MALFORMED, "activity is not a JSON object")
        _check_endorsement(jwk, claims, activity)
        if activity.get("type") != "message":
            return base.json_response({"accepted": False, "outcome": "ignored"})
        _check_timestamp(activity, now=self.deps.clock())
        if self.tenants:
            tenant = _tenant(activity)
            if tenant not in self.tenants:
                raise verify.Rejected(
                    403, verify.UNKNOWN_SOURCE, f"tenant {tenant or '(none)'} is not in allowed_tenants"
                )
        conversation = str(_dict(activity.get("conversation")).get("id") or "")
        activity_id = str(activity.get("id") or "")
        if not conversation or not activity_id:
            raise verify.Rejected(400, verify.MALFORMED, "activity has no conversation or id")
        self.teams.trust(conversation, str(activity["serviceUrl"]))
        if await self._approval_click(activity, conversation, activity_id):
            return ports.HttpResponse(200)
        message = normalize(self.trigger_name, activity, received_at=self.deps.clock())
        return base.outcome_response(await self.accept(message, reply_on_no_match=True))

    async def _approval_click(self, activity: dict[str, Any], conversation: str, activity_id: str) -> bool:
        """Pass an Approve/Deny click on an approval card to the approvals store (once per click)."""
        value = _dict(activity.get("value"))
        action, request_id = value.get(replies.TEAMS_ACTION), value.get("request_id")
        if action not in (replies.APPROVE_ACTION, replies.DENY_ACTION) or not isinstance(request_id, str):
            return False
        click_id = f"{conversation}|{activity_id}"
        if not await self.first_time("action:" + click_id):
            return True
        target = ports.ReplyTarget("teams", self.trigger_name, conversation, activity_id)
        self.spawn(
            self._decide(request_id, _user(activity), action == replies.APPROVE_ACTION, click_id, target),
            name=f"teams-approval:{self.trigger_name}",
        )
        return True

    async def _decide(
        self, request_id: str, user: ports.UserRef, approve: bool, click_id: str, target: ports.ReplyTarget
    ) -> None:
        """Decide one click; a click that changed nothing is answered in the conversation."""
        await base.decide_and_answer(
            self.deps, self.trigger_name, self.teams, request_id, user, approve, click_id, target
        )


_dict = base.as_dict


TEAMS_CHANNEL = "msteams"
"""The only Bot Framework channel a Teams trigger takes activities from."""


def _check_endorsement(jwk: dict[str, Any], claims: dict[str, Any], activity: dict[str, Any]) -> None:
    """The activity must come from Teams, the key be endorsed for that channel, and the token be
    issued for its service URL.

    The Bot Framework's keys are endorsed for every channel it signs for, Web Chat and Direct Line
    among them, where the client writes `from`, `channelData` and `value`: only `msteams` is
    taken, so neither the tenant nor the approver can be chosen by the sender.

    Raises:
        Rejected: 401 when any of it does not hold (or the activity lacks the fields), 400 when
            the service URL is not one aofd would send a token to.
    """
    channel = activity.get("channelId")
    endorsements = jwk.get("endorsements")
    if not isinstance(channel, str) or not channel:
        raise verify.Rejected(401, verify.MALFORMED, "activity has no channelId")
    if channel != TEAMS_CHANNEL:
        raise verify.Rejected(
            401, verify.UNKNOWN_SOURCE, f"activity is from channel {channel[:40]!r}, not {TEAMS_CHANNEL}"
        )
    if not isinstance(endorsements, list) or channel not in endorsements:
        raise verify.Rejected(
            401, verify.SIGNATURE_INVALID, f"the signing key is not endorsed for channel {channel}"
        )
    service_url = activity.get("serviceUrl")
    claimed = claims.get("serviceurl")
    if not isinstance(service_url, str) or not isinstance(claimed, str) or service_url != claimed:
        raise verify.Rejected(
            401, verify.SIGNATURE_INVALID, "the token's serviceurl is not the activity's serviceUrl"
        )
    try:
        settings.check_base_url(service_url)
    except ValueError as exc:
        raise verify.Rejected(400, verify.MALFORMED, f"serviceUrl {exc}") from None


def _check_timestamp(activity: dict[str, Any], *, now: float) -> None:
    """The activity's `timestamp` (ISO 8601, set by the channel) must lie within `ACTIVITY_WINDOW`.

    Raises:
        Rejected: 401 `malformed` without a readable timestamp, `stale_timestamp` outside the window.
    """
    text = activity.get("timestamp")
    try:
        sent = datetime.datetime.fromisoformat(text) if isinstance(text, str) and len(text) <= 40 else None
    except ValueError:
        sent = None
    if sent is None or sent.tzinfo is None:
        raise verify.Rejected(401, verify.MALFORMED, "activity has no timestamp with a time zone")
    skew = now - sent.timestamp()
    if abs(skew) > ACTIVITY_WINDOW:
        raise verify.Rejected(401, verify.STALE_TIMESTAMP, f"activity timestamp is {skew:.0f}s away from now")


def _tenant(activity: dict[str, Any]) -> str:
    """The tenant as Teams sets it, lower-cased: `conversation.tenantId` and `channelData.tenant.id`
    must both be there and agree; "" otherwise."""
    conversation = _dict(activity.get("conversation")).get("tenantId")
    channel = _dict(_dict(activity.get("channelData")).get("tenant")).get("id")
    if not isinstance(conversation, str) or not isinstance(channel, str):
        return ""
    tenant = conversation.strip().lower()
    return tenant if tenant and tenant == channel.strip().lower() else ""


def _user(activity: dict[str, Any]) -> ports.UserRef:
    """The sender: the Azure AD object id when Teams gives one (stable across bots), else the
    channel account id."""
    sender = _dict(activity.get("from"))
    return ports.UserRef(
        str(sender.get("aadObjectId") or sender.get("id") or ""), str(sender.get("name") or ""), "teams"
    )


def _text(activity: dict[str, Any]) -> str:
    """The message text with the bot's own mentions (`<at>Name</at>`) removed."""
    text = str(activity.get("text") or "")
    bot = str(_dict(activity.get("recipient")).get("id") or "")
    for entity in activity.get("entities") or []:
        entity = _dict(entity)
        if entity.get("type") == "mention" and _dict(entity.get("mentioned")).get("id") == bot:
            mention = entity.get("text")
            if isinstance(mention, str) and mention:
                text = text.replace(mention, "")
    if text.lstrip().startswith("<at>"):
        text = _MENTION.sub("", text, count=1)
    return text.replace("&nbsp;", " ").strip()


def normalize(
    trigger: str, activity: dict[str, Any], *, received_at: float | None = None
) -> ports.EventMessage:
    """A `message` activity as an EventMessage (channel: the conversation; thread: the activity id)."""
    conversation = _dict(activity.get("conversation"))
    channel_data = _dict(activity.get("channelData"))
    channel_name = _dict(channel_data.get("channel")).get("name") or conversation.get("name") or ""
    conversation_id = str(conversation.get("id") or "")
    activity_id = str(activity.get("id") or "")
    return ports.EventMessage(
        platform="teams",
        trigger=trigger,
        text=_text(activity),
        user=_user(activity),
        channel_id=conversation_id,
        channel_name=str(channel_name),
        thread=activity_id,
        event_type="message",
        delivery_id=f"{conversation_id}|{activity_id}",
        raw=activity,
        received_at=time.time() if received_at is None else received_at,
    )
