"""Signature verification for every trigger platform: pure functions over raw bytes.

Owns the per-platform algorithms of RELIABILITY.md section 2 (Slack's timestamp checks,
GitHub, WhatsApp, Jira and Bitbucket `sha256=` HMACs, PagerDuty's `v1=` lists, the static
tokens of Telegram, GitLab and aofd's Opsgenie header,
aofd's own `X-Aofd-Signature`, Discord's Ed25519 over timestamp and body, and the Bot
Framework's RS256 bearer tokens for Microsoft Teams, checked with PyJWT against a given key).
Every function takes the raw request body exactly as
received, never a parsed or re-serialised one, compares in constant time
(`hmac.compare_digest`), and raises `Rejected` with an HTTP status and an audit reason.

It must not do I/O, read clocks (callers pass `now`), log, or parse JSON: a rejection
here happens before anything interprets the payload.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aofd import errors

# Reasons written to the audit log as `event.reason` of `trigger.rejected`.
SIGNATURE_INVALID = "signature_invalid"
STALE_TIMESTAMP = "stale_timestamp"
REPLAY = "replay"
BODY_TOO_LARGE = "body_too_large"
UNKNOWN_SOURCE = "unknown_source"
MALFORMED = "malformed"

_HEX = re.compile(r"[0-9a-fA-F]+")

DEFAULT_WINDOW = 300.0
"""Seconds a signed timestamp may differ from now (Slack's and aofd's replay window)."""


class Rejected(errors.AofdError):
    """A request failed verification; `status` is the HTTP answer, `reason` the audit reason.

    The message is for logs only; clients get a generic body.
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    """Lower-case hex of HMAC-SHA256(secret, message)."""
    # hmac.digest is the one-shot C implementation (several times faster than hmac.new for small inputs).
    return hmac.digest(secret.encode("utf-8"), message, "sha256").hex()


def _any_equal(expected: Iterable[str], given: Iterable[str]) -> bool:
    """True if any given value equals any expected one; every pair is compared (no early exit)."""
    found = False
    for want in expected:
        for got in given:
            # `|` rather than `or`: the number of comparisons does not depend on which matched.
            found = hmac.compare_digest(want.encode("utf-8"), got.encode("utf-8")) | found
    return found


def _secrets(secrets: Sequence[str]) -> Sequence[str]:
    if len(secrets) == 1 and secrets[0]:
        return secrets  # the common case, without building a tuple per request
    usable = tuple(s for s in secrets if s)
    if not usable:
        raise Rejected(403, SIGNATURE_INVALID, "no secret is configured for this trigger")
    return usable


def check_timestamp(timestamp: str | None, *, now: float, window: float = DEFAULT_WINDOW) -> int:
    """Parse a signed Unix timestamp header and check it lies within `window` seconds of `now`.

    Returns:
        The timestamp as an int.

    Raises:
        Rejected: 401 `malformed` when missing or not an integer, 401 `stale_timestamp` when outside.
    """
    text = timestamp.strip() if timestamp is not None else ""
    if not text:
        raise Rejected(401, MALFORMED, "timestamp header missing")
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise Rejected(401, MALFORMED, "timestamp header is not a Unix timestamp")
    value = int(text)
    if abs(now - value) > window:
        raise Rejected(401, STALE_TIMESTAMP, f"timestamp is {now - value:.0f}s away from now")
    return value


def slack_basestring(timestamp: str, body: bytes) -> bytes:
    """What Slack signs: `v0:<timestamp>:<raw body>`."""
    return b"v0:" + timestamp.encode("ascii") + b":" + body


def slack(
    *,
    secrets: Sequence[str],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    window: float = DEFAULT_WINDOW,
) -> None:
    """Verify Slack's `X-Slack-Signature` (`v0=` HMAC of `v0:ts:body`) and its 5-minute window.

    Raises:
        Rejected: 401 for a missing, malformed, stale or wrong signature (never 500).
    """
    usable = _secrets(secrets)
    if not signature:
        raise Rejected(401, MALFORMED, "X-Slack-Signature missing")
    check_timestamp(timestamp, now=now, window=window)
    assert timestamp is not None  # checked above
    if not signature.startswith("v0="):
        raise Rejected(401, MALFORMED, "X-Slack-Signature is not a v0 signature")
    base = slack_basestring(timestamp.strip(), body)
    expected = ["v0=" + hmac_sha256_hex(secret, base) for secret in usable]
    if not _any_equal(expected, [signature.strip()]):
        raise Rejected(401, SIGNATURE_INVALID, "X-Slack-Signature does not match")


def sha256_header(
    *, secrets: Sequence[str], body: bytes, signature: str | None, header: str, status: int = 401
) -> None:
    """Verify a `sha256=<hex HMAC of the raw body>` header (GitHub, WhatsApp/Meta).

    Raises:
        Rejected: `status` (401 by default) for a missing, malformed or wrong signature.
    """
    usable = _secrets(secrets)
    if not signature:
        raise Rejected(status, MALFORMED, f"{header} missing")
    if not signature.startswith("sha256="):
        raise Rejected(status, MALFORMED, f"{header} is not a sha256= signature")
    expected = ["sha256=" + hmac_sha256_hex(secret, body) for secret in usable]
    if not _any_equal(expected, [signature.strip()]):
        raise Rejected(status, SIGNATURE_INVALID, f"{header} does not match")


def github(*, secrets: Sequence[str], body: bytes, signature: str | None) -> None:
    """Verify GitHub's `X-Hub-Signature-256` (the legacy SHA-1 header is ignored)."""
    sha256_header(secrets=secrets, body=body, signature=signature, header="X-Hub-Signature-256")


def whatsapp(*, secrets: Sequence[str], body: bytes, signature: str | None) -> None:
    """Verify Meta's `X-Hub-Signature-256` with the app secret."""
    sha256_header(secrets=secrets, body=body, signature=signature, header="X-Hub-Signature-256")


def jira(*, secrets: Sequence[str], body: bytes, signature: str | None) -> None:
    """Verify Jira's `X-Hub-Signature` (`sha256=` HMAC of the raw body with the webhook secret)."""
    sha256_header(secrets=secrets, body=body, signature=signature, header="X-Hub-Signature")


def bitbucket(*, secrets: Sequence[str], body: bytes, signature: str | None) -> None:
    """Verify Bitbucket Cloud's `X-Hub-Signature` (`sha256=` HMAC of the raw body with the secret)."""
    sha256_header(secrets=secrets, body=body, signature=signature, header="X-Hub-Signature")


def shared_token(*, secrets: Sequence[str], given: str | None, name: str) -> None:
    """Check a static shared token header (GitLab's `X-Gitlab-Token`, aofd's Opsgenie token header)
    against every configured value (rotation), in constant time.

    Raises:
        Rejected: 403 when no token is configured, 401 when the header is missing, 403 when it
            matches none.
    """
    usable = _secrets(secrets)
    if given is None or not given.strip():
        raise Rejected(401, MALFORMED, f"{name} missing")
    if not _any_equal(usable, [given.strip()]):
        raise Rejected(403, SIGNATURE_INVALID, f"{name} does not match")


def _versioned(header: str, *, name: str) -> list[tuple[str, str]]:
    """Split `v1=abc,v1=def` into (version, value) pairs; 400 when it is not that shape."""
    pairs: list[tuple[str, str]] = []
    for part in header.split(","):
        item = part.strip()
        version, sep, value = item.partition("=")
        if not sep or not version or not value or not version.startswith("v"):
            raise Rejected(400, MALFORMED, f"{name} is malformed")
        if _HEX.fullmatch(value) is None:
            raise Rejected(400, MALFORMED, f"{name} value is not hex")
        pairs.append((version, value.lower()))
    return pairs


def pagerduty(*, secrets: Sequence[str], body: bytes, signature: str | None) -> None:
    """Verify PagerDuty v3's `X-PagerDuty-Signature`: accept when any `v1=` value matches.

    Raises:
        Rejected: 400 for a missing or malformed header, 403 for no matching `v1=` (a `v0=`-only
            header included).
    """
    usable = _secrets(secrets)
    if not signature or not signature.strip():
        raise Rejected(400, MALFORMED, "X-PagerDuty-Signature missing")
    pairs = _versioned(signature, name="X-PagerDuty-Signature")
    given = [value for version, value in pairs if version == "v1"]
    expected = [hmac_sha256_hex(secret, body) for secret in usable]
    if not given or not _any_equal(expected, given):
        raise Rejected(403, SIGNATURE_INVALID, "no X-PagerDuty-Signature v1 value matches")


def telegram(*, secret_token: str, header: str | None) -> None:
    """Verify Telegram's static `X-Telegram-Bot-Api-Secret-Token` (there is no body signature).

    Raises:
        Rejected: 403 when missing or different.
    """
    if not secret_token:
        raise Rejected(403, SIGNATURE_INVALID, "no secret_token is configured for this trigger")
    if header is None:
        raise Rejected(403, SIGNATURE_INVALID, "X-Telegram-Bot-Api-Secret-Token missing")
    if not hmac.compare_digest(secret_token.encode("utf-8"), header.encode("utf-8")):
        raise Rejected(403, SIGNATURE_INVALID, "X-Telegram-Bot-Api-Secret-Token does not match")


def aofd_basestring(timestamp: str, body: bytes) -> bytes:
    """What aofd's generic webhook signs: `<timestamp>.<raw body>`."""
    return timestamp.encode("ascii") + b"." + body


def keyed(secrets: Sequence[str]) -> tuple[hmac.HMAC, ...]:
    """One HMAC-SHA256 keyed with each non-empty secret, for `aofd_http_keyed`.

    Keying (hashing the padded key) is done once here; each request `copy()`s the keyed state, which
    yields exactly `HMAC(secret, message)`. Listeners build these when they are built, so that a
    rotated secret (a changed trigger digest, hence a new listener) gets new keys.
    """
    return tuple(hmac.new(s.encode("utf-8"), digestmod=hashlib.sha256) for s in secrets if s)


def aofd_http(
    *,
    secrets: Sequence[str],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    window: float = DEFAULT_WINDOW,
) -> None:
    """Verify `X-Aofd-Signature: v1=<hex HMAC(secret, ts + "." + body)>` (several `v1=` allowed).

    Raises:
        Rejected: 401 for missing, malformed, stale or wrong signatures.
    """
    aofd_http_keyed(
        keys=keyed(_secrets(secrets)),
        body=body,
        timestamp=timestamp,
        signature=signature,
        now=now,
        window=window,
    )


def aofd_http_keyed(
    *,
    keys: Sequence[hmac.HMAC],
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    window: float = DEFAULT_WINDOW,
) -> None:
    """`aofd_http` with the secrets already keyed (`keyed(secrets)`): the same checks, in the same order.

    Raises:
        Rejected: 403 when there is no key; 401 for missing, malformed, stale or wrong signatures.
    """
    if not keys:
        raise Rejected(403, SIGNATURE_INVALID, "no secret is configured for this trigger")
    if not signature or not signature.strip():
        raise Rejected(401, MALFORMED, "X-Aofd-Signature missing")
    check_timestamp(timestamp, now=now, window=window)
    assert timestamp is not None  # checked above
    # What is signed is `<timestamp>.<raw body>`; it is fed in parts rather than copied into one buffer.
    stamp = timestamp.strip().encode("ascii")
    if len(keys) == 1 and "," not in signature:
        # The common case (one secret, one signature), without the list machinery.
        given_one = signature.strip()
        if not given_one.startswith("v1=") or _HEX.fullmatch(given_one, 3) is None:
            raise Rejected(401, MALFORMED, "X-Aofd-Signature is not a v1 signature")
        # Both sides are ASCII hex (checked above), which compare_digest takes as str directly.
        if not hmac.compare_digest(_aofd_hex(keys[0], stamp, body), given_one[3:].lower()):
            raise Rejected(401, SIGNATURE_INVALID, "no X-Aofd-Signature v1 value matches")
        return
    try:
        pairs = _versioned(signature, name="X-Aofd-Signature")
    except Rejected as exc:
        raise Rejected(401, exc.reason, exc.detail) from None
    given = [value for version, value in pairs if version == "v1"]
    expected = [_aofd_hex(key, stamp, body) for key in keys]
    if not given or not _any_equal(expected, given):
        raise Rejected(401, SIGNATURE_INVALID, "no X-Aofd-Signature v1 value matches")


def _aofd_hex(key: hmac.HMAC, stamp: bytes, body: bytes) -> str:
    """Lower-case hex of HMAC-SHA256(secret, `aofd_basestring(stamp, body)`), from the keyed state."""
    mac = key.copy()
    mac.update(stamp)
    mac.update(b".")
    mac.update(body)
    return mac.hexdigest()


def static_header(*, expected: str, given: str | None, name: str) -> None:
    """Check a configured static header (HTTP `required_headers`) in constant time.

    `expected` of `""` or `"*"` only requires presence.

    Raises:
        Rejected: 401 when missing, 403 when different.
    """
    if given is None:
        raise Rejected(401, MALFORMED, f"required header {name} missing")
    if expected in ("", "*"):
        return
    if not hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8")):
        raise Rejected(403, SIGNATURE_INVALID, f"required header {name} does not match")


def ed25519_public_key(hex_key: str) -> Ed25519PublicKey:
    """A Discord application's `public_key` (64 hex characters) as a key.

    Raises:
        ValueError: it is not 32 bytes of hex (the message does not repeat the value).
    """
    text = hex_key.strip()
    if len(text) != 64 or _HEX.fullmatch(text) is None:
        raise ValueError("is not 64 hex characters (the application's public key from the developer portal)")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def discord(
    *,
    key: Ed25519PublicKey,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    window: float = DEFAULT_WINDOW,
) -> None:
    """Verify Discord's `X-Signature-Ed25519` (Ed25519 over `<X-Signature-Timestamp><raw body>`) and
    that the timestamp lies within `window` seconds of `now`.

    Raises:
        Rejected: 401 for a missing, malformed, stale or wrong signature.
    """
    given = signature.strip() if signature else ""
    if not given:
        raise Rejected(401, MALFORMED, "X-Signature-Ed25519 missing")
    if len(given) != 128 or _HEX.fullmatch(given) is None:
        raise Rejected(401, MALFORMED, "X-Signature-Ed25519 is not 64 bytes of hex")
    check_timestamp(timestamp, now=now, window=window)
    assert timestamp is not None  # checked above
    try:
        key.verify(bytes.fromhex(given), timestamp.strip().encode("ascii") + body)
    except InvalidSignature:
        raise Rejected(401, SIGNATURE_INVALID, "X-Signature-Ed25519 does not match") from None


BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
"""The `iss` of the tokens the Bot Framework connector sends to a bot."""

BOT_FRAMEWORK_LEEWAY = 300.0
"""Seconds of clock skew allowed on `exp` and `nbf` (the Bot Framework SDKs allow 5 minutes)."""


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header.

    Raises:
        Rejected: 401 when the header is missing or is not a bearer token.
    """
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Rejected(401, MALFORMED, "Authorization is not a bearer token")
    return token.strip()


def jwt_key_id(token: str) -> str:
    """The `kid` of a JWT's header, read without verifying anything (to find the key).

    Raises:
        Rejected: 401 when the token is not a JWT, is not RS256, or names no key.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Rejected(401, MALFORMED, "the bearer token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise Rejected(401, SIGNATURE_INVALID, "the bearer token is not signed with RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Rejected(401, MALFORMED, "the bearer token names no key (kid)")
    return kid


def bot_framework(
    *,
    token: str,
    jwk: Mapping[str, Any],
    app_id: str,
    now: float,
    issuer: str = BOT_FRAMEWORK_ISSUER,
    leeway: float = BOT_FRAMEWORK_LEEWAY,
) -> dict[str, Any]:
    """Verify a Bot Framework connector token with the JWK its `kid` names: the RS256 signature,
    `iss`, `aud` (the bot's `app_id`), and `exp`/`nbf` against `now` within `leeway` seconds.

    Returns:
        The token's claims (`serviceurl` among them; the caller checks it and the key's
        `endorsements` against the activity).

    Raises:
        Rejected: 401 for a bad signature, issuer, audience or time, or a key that is not RSA.
    """
    if not app_id:
        raise Rejected(403, SIGNATURE_INVALID, "no app_id is configured for this trigger")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm="RS256").key
    except jwt.PyJWTError:
        raise Rejected(401, SIGNATURE_INVALID, "the signing key is not an RSA key") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=app_id,
            issuer=issuer,
            # Times are checked below against the caller's clock.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp"]},
        )
    except jwt.InvalidSignatureError:
        raise Rejected(401, SIGNATURE_INVALID, "the bearer token's signature does not match") from None
    except jwt.InvalidAudienceError:
        raise Rejected(401, SIGNATURE_INVALID, "the bearer token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise Rejected(401, SIGNATURE_INVALID, "the bearer token has another issuer") from None
    except jwt.PyJWTError as exc:
        raise Rejected(401, MALFORMED, f"the bearer token is not valid ({type(exc).__name__})") from None
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Rejected(401, MALFORMED, "the bearer token's exp is not a number")
    if now > exp + leeway:
        raise Rejected(401, STALE_TIMESTAMP, f"the bearer token expired {now - exp:.0f}s ago")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and now < nbf - leeway:
        raise Rejected(401, STALE_TIMESTAMP, "the bearer token is not valid yet")
    return claims
