"""Signed git objects, parsed: what was signed, the signature, and what the tools said of it.

Pure functions over bytes and text (no I/O); `aofd.source.verify` runs the verifiers.

- `commit_signature`: a commit's `gpgsig` header (continuation lines start with a space) and
  the payload exactly as git computes it in `parse_buffer_signed_by_header`: the raw object
  without the `gpgsig` header and without any other `gpgsig*` header (`gpgsig-sha256`), every
  other byte kept (`mergetag` headers, the message, trailing newlines);
- `tag_signature`: an annotated tag's signature is appended to its message; as git's
  `parse_signed_buffer`, it starts at the last line that opens a signature armor, and the
  payload is everything before it;
- `header`: a header of a raw object (the `tag <name>` of an annotated tag);
- `sshsig`: the public key (and its SHA256 fingerprint, as `ssh-keygen -l` and git print it:
  for a certificate, the fingerprint of the key inside it, and the CA key's separately) and the
  namespace of an armored SSHSIG blob (PROTOCOL.sshsig, PROTOCOL.certkeys);
- `gpg_status` and `gpg_keys`: GnuPG's machine-readable `--status-fd` and `--with-colons`
  output (doc/DETAILS of GnuPG);
- `clean`: text parsed from a signature or an object before it is verified (a namespace, a tag
  name, a principal) made safe to quote in a message: printable ASCII, at most 64 characters.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from typing import Literal

Format = Literal["openpgp", "ssh", "x509"]

_ARMOR: tuple[tuple[bytes, Format], ...] = (
    (b"-----BEGIN PGP SIGNATURE-----", "openpgp"),
    (b"-----BEGIN PGP MESSAGE-----", "openpgp"),
    (b"-----BEGIN SSH SIGNATURE-----", "ssh"),
    (b"-----BEGIN SIGNED MESSAGE-----", "x509"),
)
_SIG_HEADER = b"gpgsig"


@dataclasses.dataclass(frozen=True, slots=True)
class Signed:
    """A signed object split as git splits it: `payload` is what the signature covers."""

    payload: bytes
    signature: bytes
    format: Format | None


def signature_format(signature: bytes) -> Format | None:
    """Which kind of signature an armored blob is, by its first line (None: unknown)."""
    for marker, fmt in _ARMOR:
        if signature.startswith(marker):
            return fmt
    return None


def commit_signature(raw: bytes) -> Signed | None:
    """The `gpgsig` signature of a raw commit object and the payload it signs; None if unsigned."""
    payload = bytearray()
    signature = bytearray()
    in_signature = saw = other = False
    pos, end = 0, len(raw)
    while pos < end:
        nl = raw.find(b"\n", pos)
        nxt = end if nl < 0 else nl + 1
        line = raw[pos:nxt]
        sig: bytes | None = None
        if in_signature and line.startswith(b" "):
            sig = line[1:]
        elif line.startswith(_SIG_HEADER + b" "):
            sig = line[len(_SIG_HEADER) + 1 :]
            other = False
        elif line.startswith(_SIG_HEADER):
            other = True  # gpgsig-sha256 (or another algorithm's): not ours, not in the payload
        elif other and not line.startswith(b" "):
            other = False
        if sig is not None:
            signature += sig
            saw = in_signature = True
        else:
            if line.startswith(b"\n"):
                nxt = end  # the blank line ends the headers: the rest is the message, kept whole
                line = raw[pos:]
            if not other:
                payload += line
            in_signature = False
        pos = nxt
    if not saw:
        return None
    return Signed(bytes(payload), bytes(signature), signature_format(bytes(signature)))


def tag_signature(raw: bytes) -> Signed | None:
    """The signature appended to a raw annotated tag object and its payload; None if unsigned."""
    match = len(raw)
    pos = 0
    while pos < len(raw):
        if signature_format(raw[pos : pos + 40]) is not None:
            match = pos
        nl = raw.find(b"\n", pos)
        pos = len(raw) if nl < 0 else nl + 1
    if match == len(raw):
        return None
    signature = raw[match:]
    return Signed(raw[:match], signature, signature_format(signature))


def header(raw: bytes, name: str) -> str | None:
    """The first header `name` of a raw commit or tag object (before the blank line)."""
    head = raw.split(b"\n\n", 1)[0]
    prefix = name.encode() + b" "
    for line in head.split(b"\n"):
        if line.startswith(prefix):
            return line[len(prefix) :].decode("utf-8", "replace")
    return None


CLEAN_LIMIT = 64


def clean(text: str, limit: int = CLEAN_LIMIT) -> str:
    """`text` as it may be quoted in a message, a status field or an audit record: anything but
    printable ASCII becomes `?`, and it is cut to `limit` characters (`...` marks the cut)."""
    head = text[: limit + 1]
    safe = "".join(c if " " <= c <= "~" else "?" for c in head)
    return safe if len(safe) <= limit else safe[: max(0, limit - 3)] + "..."


# -- SSHSIG ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SshSig:
    key_type: str  # clean()ed: the signer chose it
    fingerprint: str  # "SHA256:<base64, no padding>" of the public key (inside a certificate)
    namespace: str  # raw: compare, then clean() to quote
    ca_fingerprint: str = ""  # a certificate's: the certifying CA key's fingerprint


_CERT_SUFFIX = "-cert-v01@openssh.com"
# The key fields of each certificate type, after its nonce (PROTOCOL.certkeys): the plain
# public key is its type followed by the same fields.
_CERT_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ssh-dss": 4,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}


def fingerprint_of(key_blob: bytes) -> str:
    """`SHA256:...` of a public key blob, as `ssh-keygen -l` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def sshsig(armored: bytes) -> SshSig:
    """Parse an armored SSHSIG blob (`ssh-keygen -Y sign`); ValueError if it is not one."""
    lines = armored.decode("ascii", "replace").strip().splitlines()
    if (
        len(lines) < 3
        or lines[0] != "-----BEGIN SSH SIGNATURE-----"
        or lines[-1] != "-----END SSH SIGNATURE-----"
    ):
        raise ValueError("not an armored SSH signature")
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error as exc:
        raise ValueError("SSH signature armor is not base64") from exc
    if not blob.startswith(b"SSHSIG"):
        raise ValueError("SSH signature lacks the SSHSIG magic")
    reader = _Reader(blob[6:])
    version = reader.uint32()
    if version != 1:
        raise ValueError(f"unsupported SSHSIG version {version}")
    public_key = reader.string()
    namespace = reader.string().decode("utf-8", "replace")
    key_type = _Reader(public_key).string().decode("ascii", "replace")
    fingerprint, ca = fingerprint_of(public_key), ""
    if key_type.endswith(_CERT_SUFFIX):
        fingerprint, ca = _certificate_fingerprints(public_key, key_type[: -len(_CERT_SUFFIX)], fingerprint)
    return SshSig(key_type=clean(key_type), fingerprint=fingerprint, namespace=namespace, ca_fingerprint=ca)


def _certificate_fingerprints(blob: bytes, base: str, whole: str) -> tuple[str, str]:
    """(the certified key's fingerprint, the CA key's) of an OpenSSH certificate blob; a type
    this does not know keeps the whole blob's fingerprint and no CA."""
    fields = _CERT_KEY_FIELDS.get(base)
    if fields is None:
        return whole, ""
    reader = _Reader(blob)
    reader.string()  # the certificate type
    reader.string()  # nonce
    inner = _string(base.encode()) + b"".join(_string(reader.string()) for _ in range(fields))
    reader.skip(8 + 4)  # serial, type
    for _ in range(2):  # key id, principals
        reader.string()
    reader.skip(8 + 8)  # valid after, valid before
    for _ in range(3):  # critical options, extensions, reserved
        reader.string()
    return fingerprint_of(inner), fingerprint_of(reader.string())


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def uint32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise ValueError("SSH signature is truncated")
        value = int.from_bytes(self._data[self._pos : self._pos + 4], "big")
        self._pos += 4
        return value

    def skip(self, size: int) -> None:
        if self._pos + size > len(self._data):
            raise ValueError("SSH signature is truncated")
        self._pos += size

    def string(self) -> bytes:
        size = self.uint32()
        if self._pos + size > len(self._data):
            raise ValueError("SSH signature is truncated")
        value = self._data[self._pos : self._pos + size]
        self._pos += size
        return value


# -- GnuPG's machine-readable output -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class GpgStatus:
    """What `gpg --status-fd` said of one `--verify` (doc/DETAILS, "Format of the status codes")."""

    signatures: int  # NEWSIG lines
    good: bool  # GOODSIG
    valid_fingerprint: str  # VALIDSIG: the signing (sub)key's fingerprint
    primary_fingerprint: str  # VALIDSIG: its primary key's fingerprint
    problems: tuple[str, ...]  # BADSIG, ERRSIG, EXPSIG, EXPKEYSIG, REVKEYSIG, ... as words
    key_id: str  # the key id the signature names (from any of the lines above)


_PROBLEMS = {
    "BADSIG": "bad signature",
    "ERRSIG": "signature could not be checked",
    "EXPSIG": "signature expired",
    "EXPKEYSIG": "key expired",
    "REVKEYSIG": "key revoked",
    "KEYEXPIRED": "key expired",
    "KEYREVOKED": "key revoked",
    "NO_PUBKEY": "key not trusted (not in openpgp_keys_file)",
}


def gpg_status(text: str) -> GpgStatus:
    signatures = 0
    good = False
    valid = primary = key_id = ""
    problems: list[str] = []
    for line in text.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        words = line[len("[GNUPG:] ") :].split(" ")
        code, args = words[0], words[1:]
        if code == "NEWSIG":
            signatures += 1
        elif code == "GOODSIG":
            good = True
            key_id = key_id or (args[0] if args else "")
        elif code == "VALIDSIG" and len(args) >= 10:
            valid, primary = args[0], args[9]
        elif code == "VALIDSIG" and args:
            valid = primary = args[0]
        elif code in _PROBLEMS:
            reason = _PROBLEMS[code]
            if code == "ERRSIG" and len(args) >= 6 and args[5] == "9":
                reason = _PROBLEMS["NO_PUBKEY"]
            if code == "ERRSIG" and len(args) >= 7 and args[6] not in ("", "-"):
                key_id = args[6]
            elif args and code not in ("KEYEXPIRED", "KEYREVOKED"):
                key_id = key_id or args[0]
            if reason not in problems:
                problems.append(reason)
    return GpgStatus(signatures, good, valid, primary, tuple(problems), key_id)


@dataclasses.dataclass(frozen=True, slots=True)
class PgpKey:
    """One primary key of `gpg --with-colons --fixed-list-mode --list-keys` with its subkeys."""

    fingerprint: str
    validity: str  # field 2: "e" expired, "r" revoked, "i" invalid, ...
    capabilities: str  # field 12 of the primary: the usable capabilities of the whole key
    uids: tuple[str, ...]  # user IDs that are not revoked, expired or invalid
    subkeys: tuple[tuple[str, str, str], ...]  # (fingerprint, validity, capabilities)


BAD_VALIDITY = frozenset("eri")


@dataclasses.dataclass(slots=True)
class _KeyBuilder:
    validity: str
    capabilities: str
    fingerprint: str = ""
    uids: list[str] = dataclasses.field(default_factory=list)
    subkeys: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def build(self) -> PgpKey:
        return PgpKey(
            self.fingerprint, self.validity, self.capabilities, tuple(self.uids), tuple(self.subkeys)
        )


def gpg_keys(text: str) -> tuple[PgpKey, ...]:
    keys: list[PgpKey] = []
    current: _KeyBuilder | None = None
    last: str | None = None  # "pub" or "sub": whose fpr line comes next
    sub: tuple[str, str] = ("", "")
    for line in text.splitlines():
        fields = line.split(":")
        kind = fields[0]
        if kind == "pub":
            if current is not None:
                keys.append(current.build())
            current = _KeyBuilder(validity=_field(fields, 1), capabilities=_field(fields, 11))
            last = "pub"
        elif current is None:
            continue
        elif kind == "sub":
            sub = (_field(fields, 1), _field(fields, 11))
            last = "sub"
        elif kind == "fpr" and last == "pub":
            current.fingerprint = _field(fields, 9)
            last = None
        elif kind == "fpr" and last == "sub":
            current.subkeys.append((_field(fields, 9), *sub))
            last = None
        elif kind == "uid" and _field(fields, 1) not in BAD_VALIDITY:
            uid = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), _field(fields, 9))
            current.uids.append(uid)
    if current is not None:
        keys.append(current.build())
    return tuple(keys)


def _field(fields: list[str], index: int) -> str:
    return fields[index] if index < len(fields) else ""


_EMAIL = re.compile(r"<([^<>\s]+@[^<>\s]+)>\s*$")


def uid_email(uid: str) -> str:
    """The email of an OpenPGP user ID (`Name <email>`), or the user ID if it is a bare address."""
    m = _EMAIL.search(uid)
    if m:
        return m.group(1)
    return uid.strip()
