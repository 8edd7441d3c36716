"""OpenSSH `known_hosts` parsing and host-key matching, implemented here (pure).

Owns the trust decision for SSH remotes: a host key is trusted only if the configured
known_hosts file lists it for that host. An unknown host is refused, never auto-accepted
(no trust-on-first-use). Supported: plain host patterns (`host`, `host,alias`, `[host]:port`,
`*`/`?` wildcards, `!` negation), hashed entries (`|1|salt|hash`, HMAC-SHA1 of the host
name), `@revoked` lines. `@cert-authority` lines are skipped: certificate checking is not
implemented, so a CA alone never makes a host trusted.

The presented key is compared either as (key type, key blob) or, when only a fingerprint
is available (libgit2 hands out the SHA-1 and MD5 of the raw key blob), by hashing each
listed key blob the same way. The blob itself starts with the key type, so a blob or
fingerprint match also matches the key type.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import re


class Verdict(enum.Enum):
    """How a presented host key relates to the known_hosts file."""

    TRUSTED = "trusted"
    UNKNOWN_HOST = "unknown-host"
    MISMATCH = "key-mismatch"
    REVOKED = "revoked"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One known_hosts line: host patterns (or one hashed name), key type and key blob."""

    patterns: tuple[str, ...]
    key_type: str
    blob: bytes
    marker: str = ""  # "", "revoked" or "cert-authority"
    hashed_salt: bytes = b""
    hashed_name: bytes = b""
    lineno: int = 0

    def matches_host(self, name: str) -> bool:
        """Whether this line applies to the host name `name` (`host` or `[host]:port`)."""
        if self.hashed_name:
            digest = hmac.new(self.hashed_salt, name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(digest, self.hashed_name)
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _glob(pattern[1:] if negated else pattern, name):
                if negated:
                    return False
                matched = True
        return matched


@dataclasses.dataclass(frozen=True, slots=True)
class PresentedKey:
    """The key a server showed: its type and blob, or only fingerprints of the blob."""

    key_type: str | None = None
    blob: bytes | None = None
    sha1: bytes | None = None
    md5: bytes | None = None
    sha256: bytes | None = None

    def __post_init__(self) -> None:
        if self.blob is None and not (self.sha1 or self.md5 or self.sha256):
            raise ValueError("a presented key needs its blob or at least one fingerprint")

    def same_as(self, entry: Entry) -> bool:
        """Constant-time compare against a listed key, by blob when known, else by fingerprint."""
        if self.blob is not None:
            type_ok = self.key_type is None or self.key_type == entry.key_type
            return type_ok and hmac.compare_digest(self.blob, entry.blob)
        for have, algo in ((self.sha256, "sha256"), (self.sha1, "sha1"), (self.md5, "md5")):
            if have:
                want = hashlib.new(algo, entry.blob, usedforsecurity=False).digest()
                return hmac.compare_digest(have, want)
        return False  # pragma: no cover - __post_init__ forbids this


def host_name(host: str, port: int | None) -> str:
    """The name known_hosts files use: `host` on port 22, `[host]:port` otherwise."""
    if port is None or port == 22:
        return host
    return f"[{host}]:{port}"


def parse(text: str) -> tuple[Entry, ...]:
    """Parse a known_hosts file; malformed lines are skipped (OpenSSH does the same)."""
    entries: list[Entry] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = ""
        if fields[0].startswith("@"):
            marker = fields[0][1:]
            fields = fields[1:]
        if len(fields) < 3 or marker not in ("", "revoked", "cert-authority"):
            continue
        hosts, key_type, key_b64 = fields[0], fields[1], fields[2]
        try:
            blob = base64.b64decode(key_b64, validate=True)
        except binascii.Error:
            continue
        if hosts.startswith("|1|"):
            parts = hosts.split("|")
            if len(parts) != 4:
                continue
            try:
                salt = base64.b64decode(parts[2], validate=True)
                hashed = base64.b64decode(parts[3], validate=True)
            except binascii.Error:
                continue
            entries.append(
                Entry((), key_type, blob, marker, hashed_salt=salt, hashed_name=hashed, lineno=lineno)
            )
        else:
            patterns = tuple(p.lower() for p in hosts.split(",") if p)
            entries.append(Entry(patterns, key_type, blob, marker, lineno=lineno))
    return tuple(entries)


def check(entries: tuple[Entry, ...], *, host: str, port: int | None, key: PresentedKey) -> Verdict:
    """Decide whether `key` is the known key of `host:port`.

    A revoked key is refused for every host. Otherwise the key is trusted only if a plain
    (unmarked) line for this host lists it; lines for the host with other keys make it a
    mismatch; no line for the host makes it unknown.
    """
    name = host_name(host.lower(), port)
    if any(e.marker == "revoked" and key.same_as(e) for e in entries):
        return Verdict.REVOKED
    listed = [e for e in entries if not e.marker and e.matches_host(name)]
    if not listed:
        return Verdict.UNKNOWN_HOST
    if any(key.same_as(e) for e in listed):
        return Verdict.TRUSTED
    return Verdict.MISMATCH


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH `match_pattern`: `*` and `?` wildcards, nothing else special, case-insensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, name.lower()) is not None
