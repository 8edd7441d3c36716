"""known_hosts parsing and matching (aofd.source.known_hosts), cross-checked with OpenSSH's ssh-keygen."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path

import pytest

from aofd.source import known_hosts

KEY_A = base64.b64decode("AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
KEY_B = base64.b64decode("AAAAC3NzaC1lZDI1NTE5AAAAIBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbBbB")


def _line(hosts: str, blob: bytes, marker: str = "") -> str:
    prefix = f"@{marker} " if marker else ""
    return f"{prefix}{hosts} ssh-ed25519 {base64.b64encode(blob).decode()} comment"


def _hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _check(text: str, host: str, port: int | None, blob: bytes) -> known_hosts.Verdict:
    entries = known_hosts.parse(text)
    return known_hosts.check(entries, host=host, port=port, key=known_hosts.PresentedKey(blob=blob))


@pytest.mark.parametrize(
    ("text", "host", "port", "expected"),
    [
        (_line("git.example.com", KEY_A), "git.example.com", 22, known_hosts.Verdict.TRUSTED),
        (_line("git.example.com", KEY_A), "GIT.example.com", None, known_hosts.Verdict.TRUSTED),
        (_line("other,git.example.com", KEY_A), "git.example.com", 22, known_hosts.Verdict.TRUSTED),
        (_line("[git.example.com]:2222", KEY_A), "git.example.com", 2222, known_hosts.Verdict.TRUSTED),
        (_line("git.example.com", KEY_A), "git.example.com", 2222, known_hosts.Verdict.UNKNOWN_HOST),
        (_line("*.example.com", KEY_A), "git.example.com", 22, known_hosts.Verdict.TRUSTED),
        (
            _line("*.example.com,!git.example.com", KEY_A),
            "git.example.com",
            22,
            known_hosts.Verdict.UNKNOWN_HOST,
        ),
        (_line("gi?.example.com", KEY_A), "git.example.com", 22, known_hosts.Verdict.TRUSTED),
        (_line("git.example.com", KEY_B), "git.example.com", 22, known_hosts.Verdict.MISMATCH),
        (_line("evil.example.com", KEY_A), "git.example.com", 22, known_hosts.Verdict.UNKNOWN_HOST),
        ("", "git.example.com", 22, known_hosts.Verdict.UNKNOWN_HOST),
        (_line(_hashed("git.example.com"), KEY_A), "git.example.com", 22, known_hosts.Verdict.TRUSTED),
        (
            _line(_hashed("[git.example.com]:2222"), KEY_A),
            "git.example.com",
            2222,
            known_hosts.Verdict.TRUSTED,
        ),
        (_line(_hashed("git.example.com"), KEY_A), "gitx.example.com", 22, known_hosts.Verdict.UNKNOWN_HOST),
        (
            _line("git.example.com", KEY_A) + "\n" + _line("*", KEY_A, "revoked"),
            "git.example.com",
            22,
            known_hosts.Verdict.REVOKED,
        ),
        (_line("*", KEY_A, "cert-authority"), "git.example.com", 22, known_hosts.Verdict.UNKNOWN_HOST),
        (
            "# comment\n\ngarbage\n" + _line("git.example.com", KEY_A),
            "git.example.com",
            22,
            known_hosts.Verdict.TRUSTED,
        ),
        (
            "git.example.com ssh-ed25519 !!notbase64!!",
            "git.example.com",
            22,
            known_hosts.Verdict.UNKNOWN_HOST,
        ),
    ],
)
def test_match_table(text: str, host: str, port: int | None, expected: known_hosts.Verdict) -> None:
    """Plain, wildcard, negated, bracketed-port, hashed, revoked and CA lines decide as OpenSSH does."""
    assert expected == _check(text, host, port, KEY_A)


def test_key_type_must_match_when_given() -> None:
    """A blob listed under another key type is not the same key."""
    entries = known_hosts.parse(_line("h", KEY_A))
    key = known_hosts.PresentedKey(key_type="ssh-rsa", blob=KEY_A)
    assert known_hosts.Verdict.MISMATCH == known_hosts.check(entries, host="h", port=22, key=key)


@pytest.mark.parametrize("algo", ["sha1", "md5", "sha256"])
def test_fingerprint_only(algo: str) -> None:
    """When only a fingerprint of the presented key is known, listed blobs are hashed the same way."""
    entries = known_hosts.parse(_line("h", KEY_A))
    good = known_hosts.PresentedKey(**{algo: hashlib.new(algo, KEY_A).digest()})
    bad = known_hosts.PresentedKey(**{algo: hashlib.new(algo, KEY_B).digest()})
    assert known_hosts.Verdict.TRUSTED == known_hosts.check(entries, host="h", port=None, key=good)
    assert known_hosts.Verdict.MISMATCH == known_hosts.check(entries, host="h", port=None, key=bad)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_openssh_hashed_file(tmp_path: Path) -> None:
    """Entries hashed by `ssh-keygen -H` match the same hosts in our matcher."""
    path = tmp_path / "known_hosts"
    path.write_text(_line("git.example.com", KEY_A) + "\n" + _line("[10.0.0.5]:2222", KEY_A) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True, timeout=30)
    text = path.read_text()
    assert "git.example.com" not in text
    assert "|1|" in text
    assert known_hosts.Verdict.TRUSTED == _check(text, "git.example.com", 22, KEY_A)
    assert known_hosts.Verdict.TRUSTED == _check(text, "10.0.0.5", 2222, KEY_A)
    assert known_hosts.Verdict.UNKNOWN_HOST == _check(text, "10.0.0.5", 22, KEY_A)
