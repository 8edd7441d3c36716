"""Local servers speaking Discord's REST API (interaction webhooks, channel messages) and the Bot
Framework's (OpenID metadata, key set, token endpoint, connector), and the keys tests sign with.

Signatures and tokens here are made with `cryptography` and PyJWT directly, never with aofd's code.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.runtime.fakes.platforms import FakeServer

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"


# --- Discord -----------------------------------------------------------------------------------


class DiscordKey:
    """An application's Ed25519 key pair, as the developer portal shows the public half (hex)."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public_hex = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def headers(self, body: bytes, ts: int | str | None = None) -> dict[str, str]:
        """`X-Signature-Ed25519` over `timestamp + body`, as Discord sends it."""
        stamp = str(int(time.time()) if ts is None else ts)
        signature = self.private.sign(stamp.encode() + body).hex()
        return {
            "Content-Type": "application/json",
            "X-Signature-Ed25519": signature,
            "X-Signature-Timestamp": stamp,
        }


class FakeDiscord(FakeServer):
    """Discord's API under `/api/v10`: interaction follow-ups (`POST /webhooks/<app>/<token>`, edits
    with `PATCH .../messages/<id>`) and bot messages (`POST /channels/<id>/messages`)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages = 0
        self.app.router.add_post("/api/v10/webhooks/{app}/{token}", self._followup)
        self.app.router.add_patch("/api/v10/webhooks/{app}/{token}/messages/{id}", self._edit)
        self.app.router.add_post("/api/v10/channels/{channel}/messages", self._channel)
        self.app.router.add_patch("/api/v10/channels/{channel}/messages/{id}", self._edit)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v10"

    def _message(self, fields: dict[str, Any], channel: str) -> web.Response:
        self.messages += 1
        return web.json_response({"id": str(1000 + self.messages), "channel_id": channel, **fields})

    async def _followup(self, request: web.Request) -> web.Response:
        fields = dict(await request.json())
        fields.update(_app=request.match_info["app"], _token=request.match_info["token"])
        fields["_wait"] = request.query.get("wait", "")
        self.requests.append(("followup", fields))
        return self._message(fields, "C-from-token")

    async def _channel(self, request: web.Request) -> web.Response:
        fields = dict(await request.json())
        fields.update(_channel=request.match_info["channel"], _auth=request.headers.get("Authorization", ""))
        self.requests.append(("channel_message", fields))
        return self._message(fields, request.match_info["channel"])

    async def _edit(self, request: web.Request) -> web.Response:
        fields = dict(await request.json())
        fields.update(_id=request.match_info["id"], _path=request.path)
        self.requests.append(("edit", fields))
        return web.json_response({"id": request.match_info["id"], **fields})


def interaction(
    kind: int = 2,
    *,
    interaction_id: str = "1100000000000000001",
    name: str = "status",
    options: Sequence[Mapping[str, Any]] = (),
    guild_id: str | None = "2200000000000000001",
    roles: Sequence[str] = ("3300000000000000001",),
    custom_id: str = "",
    application_id: str = "4400000000000000001",
    token: str = "aW50ZXJhY3Rpb24tdG9rZW4",  # noqa: S107  # a made-up interaction token
) -> dict[str, Any]:
    """An interaction as Discord's documentation shows one (guild command, component or PING)."""
    user = {"id": "5500000000000000001", "username": "alice", "global_name": "Alice"}
    body: dict[str, Any] = {
        "id": interaction_id,
        "application_id": application_id,
        "type": kind,
        "token": token,
        "version": 1,
        "channel_id": "6600000000000000001",
        "channel": {"id": "6600000000000000001", "name": "ops", "type": 0},
    }
    if kind == 1:
        return {
            "id": interaction_id,
            "application_id": application_id,
            "type": 1,
            "token": token,
            "version": 1,
        }
    if guild_id is not None:
        body["guild_id"] = guild_id
        body["member"] = {"user": user, "roles": list(roles), "nick": None}
    else:
        body["user"] = user
    if kind == 2:
        body["data"] = {"id": "7700000000000000001", "name": name, "type": 1, "options": list(options)}
    elif kind == 3:
        body["data"] = {"custom_id": custom_id, "component_type": 2}
        body["message"] = {"id": "8800000000000000001", "content": "prompt"}
    return body


# --- Bot Framework -----------------------------------------------------------------------------


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SigningKey:
    """An RSA key the fake Bot Framework publishes (with its `endorsements`) and signs tokens with."""

    def __init__(self, kid: str, endorsements: Sequence[str] = ("msteams",)) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.private.public_key().public_numbers()
        self.jwk: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "n": _b64(numbers.n),
            "e": _b64(numbers.e),
            "endorsements": list(endorsements),
        }

    def token(
        self,
        *,
        audience: str,
        service_url: str,
        issuer: str = BOT_FRAMEWORK_ISSUER,
        now: float | None = None,
        lifetime: float = 3600,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A connector token as the Bot Framework issues one, signed here with PyJWT (RS256)."""
        issued = time.time() if now is None else now
        payload = {
            "iss": issuer,
            "aud": audience,
            "serviceurl": service_url,
            "nbf": int(issued) - 5,
            "iat": int(issued) - 5,
            "exp": int(issued + lifetime),
            **claims,
        }
        return jwt.encode(payload, self.private, algorithm="RS256", headers={"kid": kid or self.kid})


class FakeBotFramework(FakeServer):
    """OpenID metadata (`/v1/.well-known/openidconfiguration`), its key set (`/v1/keys`), the token
    endpoint (`/oauth2/v2.0/token`, client credentials) and the connector API
    (`/teams/v3/conversations/<id>/activities[/<activity id>]`: the service URL is `<url>/teams/`)."""

    def __init__(self, keys: Sequence[SigningKey], *, app_id: str, app_password: str) -> None:
        super().__init__()
        self.keys = list(keys)
        self.app_id = app_id
        self.app_password = app_password
        self.metadata_fetches = 0
        self.metadata_down = False
        """While True the OpenID metadata answers 503 (an outage)."""
        self.tokens_issued = 0
        self.app.router.add_get("/v1/.well-known/openidconfiguration", self._metadata)
        self.app.router.add_get("/v1/keys", self._jwks)
        self.app.router.add_post("/oauth2/v2.0/token", self._token)
        self.app.router.add_post("/teams/v3/conversations/{conversation}/activities", self._activity)
        self.app.router.add_post("/teams/v3/conversations/{conversation}/activities/{id}", self._activity)
        self.app.router.add_put("/teams/v3/conversations/{conversation}/activities/{id}", self._activity)

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/v1/.well-known/openidconfiguration"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/v2.0/token"

    @property
    def service_url(self) -> str:
        return f"{self.url}/teams/"

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_fetches += 1
        if self.metadata_down:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response(
            {
                "issuer": BOT_FRAMEWORK_ISSUER,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": f"{self.url}/v1/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [k.jwk for k in self.keys]})

    async def _token(self, request: web.Request) -> web.Response:
        form = urllib.parse.parse_qs((await request.read()).decode())
        fields = {k: v[0] for k, v in form.items()}
        self.requests.append(("token", fields))
        if (fields.get("client_id"), fields.get("client_secret")) != (self.app_id, self.app_password):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens_issued += 1
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": f"connector-token-{self.tokens_issued}",
            }
        )

    async def _activity(self, request: web.Request) -> web.Response:
        fields = dict(json.loads(await request.read()))
        fields.update(
            _method=request.method,
            _conversation=request.match_info["conversation"],
            _reply_to=request.match_info.get("id", ""),
            _auth=request.headers.get("Authorization", ""),
        )
        self.requests.append(("activity", fields))
        return web.json_response({"id": f"reply-{len(self.requests)}"})


def activity(
    service_url: str,
    *,
    activity_id: str = "1481567603816",
    text: str = "<at>OpsBot</at> /status api",
    tenant: str = "72f988bf-86f1-41af-91ab-2d7cd011db47",
    channel_id: str = "msteams",
    kind: str = "message",
    value: Mapping[str, Any] | None = None,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """A Teams channel message activity as the Bot Framework documentation shows one, sent at
    `timestamp` (Unix seconds; default now)."""
    sent = datetime.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, datetime.UTC)
    body: dict[str, Any] = {
        "type": kind,
        "id": activity_id,
        "timestamp": sent.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
        "serviceUrl": service_url,
        "channelId": channel_id,
        "from": {
            "id": "29:1XJKJMvc5GBtc2JwZq0oj8tHZmzrQgFmB25ATiQWA85gQtHieVkKilBZ9XHoq9j7Zaqt7CZ",
            "name": "Megan Bowen",
            "aadObjectId": "7faf80bc-5e81-4fd1-8a9c-7f3a0e5d6a5e",
        },
        "conversation": {
            "isGroup": True,
            "conversationType": "channel",
            "id": "19:253b1f341670408fb6fe4d8a5aa3d7c4@thread.skype;messageid=1481567603816",
            "tenantId": tenant,
        },
        "recipient": {"id": "28:c9e8c047-2a74-40a2-b28a-b162d5f5327c", "name": "OpsBot"},
        "textFormat": "plain",
        "text": text,
        "entities": [
            {
                "type": "mention",
                "mentioned": {"id": "28:c9e8c047-2a74-40a2-b28a-b162d5f5327c", "name": "OpsBot"},
                "text": "<at>OpsBot</at>",
            }
        ],
        "channelData": {
            "teamsChannelId": "19:253b1f341670408fb6fe4d8a5aa3d7c4@thread.skype",
            "teamsTeamId": "19:712c61d0ef384e5fa681ba90ca943398@thread.skype",
            "channel": {"id": "19:253b1f341670408fb6fe4d8a5aa3d7c4@thread.skype", "name": "incidents"},
            "team": {"id": "19:712c61d0ef384e5fa681ba90ca943398@thread.skype"},
            "tenant": {"id": tenant},
        },
    }
    if value is not None:
        body["value"] = dict(value)
        body.pop("text")
    return body
