"""Signature verification per platform (aofd.runtime.verify), over raw bytes, table-driven."""

from __future__ import annotations

import hmac
import json

import pytest

from aofd.runtime import verify
from tests.runtime.fakes import signing

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_PAYLOAD = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
NOW = 1_700_000_000


def test_github_published_test_vector_verifies() -> None:
    """GitHub's published vector (secret, payload, signature) verifies, and our signer agrees with it."""
    assert signing.sha256_hub(GITHUB_SECRET, GITHUB_PAYLOAD) == GITHUB_SIGNATURE
    verify.github(secrets=[GITHUB_SECRET], body=GITHUB_PAYLOAD, signature=GITHUB_SIGNATURE)


@pytest.mark.parametrize(
    ("body", "signature", "status", "reason"),
    [
        (b"Hello, World?", GITHUB_SIGNATURE, 401, verify.SIGNATURE_INVALID),
        (GITHUB_PAYLOAD, None, 401, verify.MALFORMED),
        (GITHUB_PAYLOAD, "sha1=757107ea", 401, verify.MALFORMED),
        (GITHUB_PAYLOAD, GITHUB_SIGNATURE[:-1] + "0", 401, verify.SIGNATURE_INVALID),
    ],
)
def test_github_rejections(body: bytes, signature: str | None, status: int, reason: str) -> None:
    """A one-byte body change, a missing or non-sha256 header, a wrong digest are each rejected."""
    with pytest.raises(verify.Rejected) as info:
        verify.github(secrets=[GITHUB_SECRET], body=body, signature=signature)
    assert (status, reason) == (info.value.status, info.value.reason)


def test_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signatures are compared with hmac.compare_digest, never ==."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(verify.hmac, "compare_digest", recording)
    verify.github(secrets=[GITHUB_SECRET], body=GITHUB_PAYLOAD, signature=GITHUB_SIGNATURE)
    assert [(GITHUB_SIGNATURE.encode(), GITHUB_SIGNATURE.encode())] == calls


SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_BODY = json.dumps({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message"}}).encode()


def test_slack_valid_signature_accepted() -> None:
    """A request signed by slack_sdk's generator within the window verifies."""
    headers = signing.slack_headers(SLACK_SECRET, SLACK_BODY, NOW - 299)
    assert None is verify.slack(
        secrets=[SLACK_SECRET],
        body=SLACK_BODY,
        timestamp=headers["X-Slack-Request-Timestamp"],
        signature=headers["X-Slack-Signature"],
        now=NOW,
    )


@pytest.mark.parametrize(
    ("timestamp", "signature_of", "body", "reason"),
    [
        (str(NOW - 301), "self", SLACK_BODY, verify.STALE_TIMESTAMP),
        (str(NOW + 301), "self", SLACK_BODY, verify.STALE_TIMESTAMP),
        ("not-a-number", "self", SLACK_BODY, verify.MALFORMED),
        ("\u0661\u0667" + "\u0660" * 8, "self", SLACK_BODY, verify.MALFORMED),
        (None, "self", SLACK_BODY, verify.MALFORMED),
        (str(NOW), None, SLACK_BODY, verify.MALFORMED),
        (str(NOW), "wrong-secret", SLACK_BODY, verify.SIGNATURE_INVALID),
        (
            str(NOW),
            "reserialized",
            json.dumps(json.loads(SLACK_BODY), indent=1).encode(),
            verify.SIGNATURE_INVALID,
        ),
    ],
)
def test_slack_rejections_are_401(
    timestamp: str | None, signature_of: str | None, body: bytes, reason: str
) -> None:
    """Stale, non-numeric, missing, wrong-secret and re-serialized-body requests are 401 with the right
    reason.
    """
    signature: str | None = None
    if signature_of is not None:
        ts = timestamp if timestamp is not None else str(NOW)
        secret = "another-secret" if signature_of == "wrong-secret" else SLACK_SECRET
        signed = SLACK_BODY if signature_of == "reserialized" else body
        signature = signing.slack_headers(secret, signed, ts)["X-Slack-Signature"]
    with pytest.raises(verify.Rejected) as info:
        verify.slack(secrets=[SLACK_SECRET], body=body, timestamp=timestamp, signature=signature, now=NOW)
    assert (401, reason) == (info.value.status, info.value.reason)


PD_BODY = b'{"event":{"id":"01DEN","event_type":"incident.triggered"}}'


def test_pagerduty_accepts_when_any_v1_matches() -> None:
    """Two v1 signatures where only the second is valid are accepted (rotation)."""
    header = signing.pagerduty(["old-secret", "current"], PD_BODY)
    assert None is verify.pagerduty(secrets=["current"], body=PD_BODY, signature=header)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("v0=" + "ab" * 32, 403),
        ("v1=" + "ab" * 32, 403),
        ("garbage", 400),
        ("v1=zz-not-hex", 400),
        ("v1=,", 400),
        ("", 400),
        (None, 400),
    ],
)
def test_pagerduty_rejections(header: str | None, status: int) -> None:
    """A v0-only or non-matching header is 403; a malformed or missing one is 400."""
    with pytest.raises(verify.Rejected) as info:
        verify.pagerduty(secrets=["current"], body=PD_BODY, signature=header)
    assert status == info.value.status


@pytest.mark.parametrize("header", [None, "", "wrong", "secret-token-"])
def test_telegram_wrong_or_missing_token_is_403(header: str | None) -> None:
    """Only the exact configured secret token passes."""
    verify.telegram(secret_token="secret-token", header="secret-token")
    with pytest.raises(verify.Rejected) as info:
        verify.telegram(secret_token="secret-token", header=header)
    assert 403 == info.value.status


def test_aofd_signature_with_rotation_and_window() -> None:
    """Any of several v1 values verifies; a stale timestamp or a wrong secret is 401."""
    body = b'{"text":"hi"}'
    good = signing.aofd("new", body, NOW)
    verify.aofd_http(
        secrets=["new"],
        body=body,
        timestamp=str(NOW),
        signature=f"{signing.aofd('old', body, NOW)},{good}",
        now=NOW,
    )
    cases = [
        (str(NOW - 301), signing.aofd("new", body, NOW - 301), verify.STALE_TIMESTAMP),
        (str(NOW), signing.aofd("wrong", body, NOW), verify.SIGNATURE_INVALID),
        ("12ab", good, verify.MALFORMED),
        (str(NOW), "v1=nothex!", verify.MALFORMED),
    ]
    for ts, sig, reason in cases:
        with pytest.raises(verify.Rejected) as info:
            verify.aofd_http(secrets=["new"], body=body, timestamp=ts, signature=sig, now=NOW)
        assert (401, reason) == (info.value.status, info.value.reason)


def test_no_secret_configured_fails_closed() -> None:
    """A platform that requires a secret rejects everything when none is configured."""
    with pytest.raises(verify.Rejected) as info:
        verify.github(secrets=[""], body=GITHUB_PAYLOAD, signature=GITHUB_SIGNATURE)
    assert 403 == info.value.status
