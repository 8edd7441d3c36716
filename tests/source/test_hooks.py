"""Push-webhook verification (aofd.source.hooks)."""

from __future__ import annotations

import pytest

from aofd.source import hooks

NOW = 1_700_000_000.0
SECRET = b"hook-secret"


def test_github_published_test_vector() -> None:
    """GitHub's documented example signature verifies."""
    secret = b"It's a Secret to Everybody"
    body = b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert expected == hooks.github_signature(secret, body)
    verdict = hooks.verify(secret=secret, headers={"X-Hub-Signature-256": expected}, body=body, now=NOW)
    assert hooks.Verdict.OK == verdict


def test_github_one_byte_change_fails() -> None:
    """Changing one byte of the body breaks the GitHub signature."""
    secret = b"It's a Secret to Everybody"
    signature = hooks.github_signature(secret, b"Hello, World!")
    verdict = hooks.verify(
        secret=secret, headers={"x-hub-signature-256": signature}, body=b"Hello, World?", now=NOW
    )
    assert hooks.Verdict.BAD_SIGNATURE == verdict


@pytest.mark.parametrize("value", ["sha256=", "sha1=abc", "", "sha256=zz", "\u00e9"])
def test_github_malformed(value: str) -> None:
    """Malformed GitHub signature headers are bad signatures, never errors."""
    verdict = hooks.verify(secret=SECRET, headers={"X-Hub-Signature-256": value}, body=b"{}", now=NOW)
    assert hooks.Verdict.BAD_SIGNATURE == verdict


def test_gitlab_token() -> None:
    """GitLab's shared token must match exactly."""
    ok = hooks.verify(secret=SECRET, headers={"X-Gitlab-Token": "hook-secret"}, body=b"{}", now=NOW)
    bad = hooks.verify(secret=SECRET, headers={"X-Gitlab-Token": "hook-secreT"}, body=b"{}", now=NOW)
    assert (hooks.Verdict.OK, hooks.Verdict.BAD_SIGNATURE) == (ok, bad)


def _generic(ts: str, body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    return {"X-Aofd-Timestamp": ts, "X-Aofd-Signature": hooks.generic_signature(secret, ts, body)}


def test_generic_ok_and_one_byte_change() -> None:
    """The generic HMAC covers timestamp and body; a one-byte body change fails."""
    headers = _generic(str(int(NOW)), b'{"ref":"main"}')
    assert hooks.Verdict.OK == hooks.verify(secret=SECRET, headers=headers, body=b'{"ref":"main"}', now=NOW)
    assert hooks.Verdict.BAD_SIGNATURE == hooks.verify(
        secret=SECRET, headers=headers, body=b'{"ref":"mainx"}', now=NOW
    )


def test_generic_timestamp_is_signed() -> None:
    """Replaying a signature with a fresh timestamp fails."""
    headers = _generic(str(int(NOW) - 10), b"x")
    headers["X-Aofd-Timestamp"] = str(int(NOW))
    assert hooks.Verdict.BAD_SIGNATURE == hooks.verify(secret=SECRET, headers=headers, body=b"x", now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, -10_000])
def test_generic_stale(skew: int) -> None:
    """A timestamp more than 300 s away from now is stale, even with a valid signature."""
    headers = _generic(str(int(NOW) + skew), b"x")
    assert hooks.Verdict.STALE == hooks.verify(secret=SECRET, headers=headers, body=b"x", now=NOW)


@pytest.mark.parametrize("ts", ["", "abc", "1e9", "-5", "9" * 20])
def test_generic_malformed_timestamp(ts: str) -> None:
    """Non-numeric or absurd timestamps are bad signatures."""
    headers = {"X-Aofd-Timestamp": ts, "X-Aofd-Signature": "v1=00"}
    assert hooks.Verdict.BAD_SIGNATURE == hooks.verify(secret=SECRET, headers=headers, body=b"x", now=NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Aofd-Signature": "v1=00"},
        {"X-Aofd-Timestamp": "1700000000"},
        {"Content-Type": "application/json"},
    ],
)
def test_missing_headers(headers: dict[str, str]) -> None:
    """Without a complete signature the verdict is missing."""
    assert hooks.Verdict.MISSING == hooks.verify(secret=SECRET, headers=headers, body=b"x", now=NOW)


def test_no_secret_accepts_nothing() -> None:
    """A source without a configured secret never accepts a hook."""
    headers = {"X-Gitlab-Token": ""}
    assert hooks.Verdict.MISSING == hooks.verify(secret=b"", headers=headers, body=b"x", now=NOW)
