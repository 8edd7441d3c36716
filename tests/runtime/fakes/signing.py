"""Signatures computed from each platform's published algorithm, independently of aofd.runtime.verify."""

from __future__ import annotations

import hashlib
import hmac

from slack_sdk.signature import SignatureVerifier


def slack_headers(secret: str, body: bytes, ts: int | str) -> dict[str, str]:
    """Slack's headers, signed by slack_sdk's own SignatureVerifier.generate_signature."""
    sig = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    assert sig is not None
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig}


def sha256_hub(secret: str, body: bytes) -> str:
    """GitHub's / Meta's `X-Hub-Signature-256` value."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pagerduty(secrets: list[str], body: bytes) -> str:
    """PagerDuty v3's `X-PagerDuty-Signature`: one `v1=` per secret, comma separated."""
    return ",".join("v1=" + hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets)


def aofd(secret: str, body: bytes, ts: int | str) -> str:
    """aofd's `X-Aofd-Signature` value (`v1=` HMAC of `ts.body`)."""
    return "v1=" + hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()
