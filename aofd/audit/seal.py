"""Forward-secure sealing of the audit logs: the key chain, its state and certificates, the seal signature.

This module owns the cryptography and the on-disk sealing state; the journal
(`aofd.audit.segment`) writes the `audit.sealed` records and `aofd.audit.verify` checks them.

- Each epoch has its own Ed25519 key pair. Time is cut into epochs of `interval` seconds from
  `start`; a seal of epoch `i` is an Ed25519 signature by epoch `i`'s private key.
- The **verification key** (`aofd-seal-v2:<chain>:<start>:<interval>:<epoch 0's public key>`)
  is printed by `aofctl audit setup-keys`. It is public: it checks seals and cannot make one.
- Moving from epoch `i` to a later epoch `j`, the daemon makes `j`'s key pair and a
  **certificate**: `j`'s public key signed with `i`'s private key. Certificates chain every
  epoch's public key back to the verification key; each seal carries its epoch's certificate,
  and `<state_dir>/audit-seal/certs.jsonl` keeps them all (public, like the key).
- The daemon keeps only the current epoch's private key, in `<state_dir>/audit-seal/state.json`
  (0600, directory 0700). Moving on appends the certificate (fsynced), writes the new key to a
  temporary file, fsyncs it, renames it over the state file and fsyncs the directory, and only
  then uses the new key: the old private key is gone from disk before anything is sealed with
  the new one, and nothing on disk gives it back.

A certificate also carries `sealed`: the count and digest of every seal made with the key that
signs it (across all Contexts; `KeyChain.record_seal`), and the retention then in force; None when
the daemon cannot know (it restarted after a crash with a key it may have sealed with, or a seal's
fsync failed). `aofd.audit.verify` compares it with the seals it finds in the audit dir.

What it cannot do: wipe a key from the process's memory (Python cannot), or erase blocks the
file system keeps after a rename. Someone who takes the host at time T holds the key of T's
epoch and can seal anything from then on; every seal of an earlier epoch stays unforgeable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from aofd import durable

STATE_DIR_NAME: Final = "audit-seal"
"""The sealing state's directory under the daemon's `state_dir` (never under the audit dir)."""
STATE_FILE_NAME: Final = "state.json"
CERTS_FILE_NAME: Final = "certs.jsonl"
"""Every certificate of the chain, one JSON object a line (public; give it to verify when the
logs no longer hold the whole chain, after retention)."""
KEY_PREFIX: Final = "aofd-seal-v2"
SIG_PREFIX: Final = "ed25519:"
DEFAULT_INTERVAL: Final = 60
REASONS: Final = frozenset({"epoch", "rotation", "stop"})
"""Why a seal was written: the end of an epoch, a segment rotation, the log closing."""

_CHAIN_RE = re.compile(r"^[0-9a-f]{16}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_RE = re.compile(r"^aofd-seal-v2:([0-9a-f]{16}):(\d{1,12}):(\d{1,9}):([0-9a-f]{64})$")


class SealStateError(Exception):
    """The sealing state is missing pieces, unreadable or not ours; the message says where and why."""


def state_dir_of(state_dir: Path) -> Path:
    """`<state_dir>/audit-seal`: where `aofctl audit setup-keys` and the daemon keep the state."""
    return Path(state_dir) / STATE_DIR_NAME


def state_path(state_dir: Path) -> Path:
    """`<state_dir>/audit-seal/state.json`."""
    return state_dir_of(state_dir) / STATE_FILE_NAME


def certs_path(state_dir: Path) -> Path:
    """`<state_dir>/audit-seal/certs.jsonl`."""
    return state_dir_of(state_dir) / CERTS_FILE_NAME


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


SEALED_FIELDS: Final = (
    "chain",
    "epoch",
    "reason",
    "context",
    "segment",
    "file_id",
    "seq",
    "head",
    "next_file",
    "time",
    "certs",
)
"""The `aofd.seal.*` fields a seal's signature covers, in this order."""


def seal_message(fields: Mapping[str, Any]) -> bytes:
    """The bytes a seal's signature is over: each of `SEALED_FIELDS`, JSON-encoded, one a line."""
    parts = [b"aofd-seal/v2"]
    parts.extend(json.dumps(fields.get(name), sort_keys=True).encode() for name in SEALED_FIELDS)
    return b"\n".join(parts)


def cert_message(
    chain: str, prev: int, epoch: int, public: str, sealed: object = None, *, v3: bool = False
) -> bytes:
    """The bytes a certificate's signature is over (v3: with the `sealed` summary of epoch `prev`'s
    seals; v2 certificates of older aofd have none and are not cross-checked)."""
    if not v3:
        return b"aofd-seal/cert/v2\n" + json.dumps([chain, prev, epoch, public]).encode()
    return b"aofd-seal/cert/v3\n" + json.dumps([chain, prev, epoch, public, sealed], sort_keys=True).encode()


def seal_line(context: str, seq: object, head: object) -> str:
    """One seal as the epoch digest counts it: its signed Context, seq and head."""
    return json.dumps([context, seq, head])


def seals_digest(lines: Iterable[str]) -> str:
    """sha256 over the sorted `seal_line`s of one epoch's seals (across every Context)."""
    digest = hashlib.sha256(b"aofd-seal-digest/v1\n")
    for line in sorted(lines):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def sealed_summary(lines: list[str] | None, retention: int) -> dict[str, Any] | None:
    """What a certificate records of the seals its signer's key made: how many, their digest, and
    the audit retention (seconds, 0 = off) then in force; None when aofd does not know (it
    restarted with a key it may have sealed with before a crash)."""
    if lines is None:
        return None
    return {"count": len(lines), "digest": seals_digest(lines), "retention": int(retention)}


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return SIG_PREFIX + key.sign(message).hex()


def signature_ok(public: Ed25519PublicKey, signature: object, message: bytes) -> bool:
    """Whether `signature` (`ed25519:<128 hex>`) is `public`'s over `message`."""
    if not isinstance(signature, str) or not signature.startswith(SIG_PREFIX):
        return False
    try:
        raw = bytes.fromhex(signature[len(SIG_PREFIX) :])
        public.verify(raw, message)
    except (ValueError, InvalidSignature):
        return False
    return True


def make_cert(
    key: Ed25519PrivateKey,
    chain: str,
    prev: int,
    epoch: int,
    public: Ed25519PublicKey,
    sealed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Certify `public` as epoch `epoch`'s key with `key`, epoch `prev`'s private key, and sign
    `sealed` (`sealed_summary` of every seal made with `key`) with it."""
    hex_public = public_bytes(public).hex()
    summary = dict(sealed) if sealed is not None else None
    return {
        "chain": chain,
        "prev": prev,
        "epoch": epoch,
        "public": hex_public,
        "sealed": summary,
        "sig": sign(key, cert_message(chain, prev, epoch, hex_public, summary, v3=True)),
    }


def _cert_message_of(chain: str, cert: Mapping[str, Any]) -> bytes:
    return cert_message(
        chain,
        int(cert["prev"]),
        int(cert["epoch"]),
        str(cert["public"]),
        cert.get("sealed"),
        v3="sealed" in cert,
    )


MAX_BRIDGE: Final = 16
"""At most this many certificates ride along in a seal (see `KeyChain.published`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class EpochKey:
    """What a writer needs to seal during one epoch: the private key and the certificates each
    seal carries (this epoch's, and those of earlier key moves not yet in every open log)."""

    chain: str
    epoch: int
    key: Ed25519PrivateKey = dataclasses.field(repr=False)
    certs: tuple[Mapping[str, Any], ...] = ()

    def sign(self, fields: Mapping[str, Any]) -> str:
        return sign(self.key, seal_message(fields))


@dataclasses.dataclass(frozen=True, slots=True)
class VerificationKey:
    """Epoch 0's public key, the chain's start and epoch length: enough (with the certificates)
    to check every seal of the chain, and nothing to make one with."""

    chain: str
    start: int
    interval: int
    public0: bytes

    def encode(self) -> str:
        return f"{KEY_PREFIX}:{self.chain}:{self.start}:{self.interval}:{self.public0.hex()}"

    @classmethod
    def parse(cls, text: str) -> VerificationKey:
        """Parse `aofd-seal-v2:<chain>:<start>:<interval>:<64 hex>`; ValueError says what is wrong."""
        m = _KEY_RE.match(text.strip())
        if m is None:
            raise ValueError(
                "a verification key looks like aofd-seal-v2:<16 hex>:<start>:<interval>:<64 hex> "
                "(as printed by `aofctl audit setup-keys`)"
            )
        interval = int(m.group(3))
        if interval <= 0:
            raise ValueError("the verification key's epoch length is 0")
        return cls(m.group(1), int(m.group(2)), interval, bytes.fromhex(m.group(4)))

    def epoch_window(self, epoch: int) -> tuple[float, float]:
        """The start and end (seconds since the epoch) of `epoch`."""
        begin = self.start + epoch * self.interval
        return float(begin), float(begin + self.interval)


class CertStore:
    """The public keys of one chain's epochs, certified back to its verification key.

    `add` collects certificates (from seals and certs files, in any order and with repeats);
    `public(epoch)` is the key that a seal of `epoch` must verify with, or None when no
    certificate chain from the verification key reaches that epoch.
    """

    def __init__(self, vk: VerificationKey) -> None:
        self.vk = vk
        self._certs: dict[int, list[Mapping[str, Any]]] = {}
        self._seen: set[tuple[int, int, str, str]] = set()
        self._keys: dict[int, Ed25519PublicKey] | None = None
        self.conflicts: list[int] = []  # epochs with two different certified keys
        self.moves: dict[int, Mapping[str, Any]] = {}  # prev epoch -> its verified certificate

    def add(self, cert: object) -> None:
        if not isinstance(cert, Mapping) or cert.get("chain") != self.vk.chain:
            return
        prev, epoch, public, sig = cert.get("prev"), cert.get("epoch"), cert.get("public"), cert.get("sig")
        if not (
            isinstance(prev, int)
            and isinstance(epoch, int)
            and not isinstance(prev, bool)
            and not isinstance(epoch, bool)
            and 0 <= prev < epoch
            and isinstance(public, str)
            and _HEX64_RE.match(public)
            and isinstance(sig, str)
        ):
            return
        marker = (prev, epoch, public, sig)
        if "sealed" in cert and not (cert["sealed"] is None or _summary_ok(cert["sealed"])):
            return
        if marker in self._seen:
            return
        self._seen.add(marker)
        self._certs.setdefault(epoch, []).append(cert)
        self._keys = None

    def public(self, epoch: int) -> Ed25519PublicKey | None:
        if self._keys is None:
            self._keys = self._resolve()
        return self._keys.get(epoch)

    def _resolve(self) -> dict[int, Ed25519PublicKey]:
        keys = {0: Ed25519PublicKey.from_public_bytes(self.vk.public0)}
        conflicts: set[int] = set()
        self.moves = {}
        for epoch in sorted(self._certs):  # a certificate's signer is always of an earlier epoch
            for cert in self._certs[epoch]:
                prev = int(cert["prev"])
                signer = keys.get(prev)
                if signer is None or not signature_ok(
                    signer, cert["sig"], _cert_message_of(self.vk.chain, cert)
                ):
                    continue
                public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(cert["public"])))
                known = keys.get(epoch)
                if known is not None and public_bytes(known) != public_bytes(public):
                    conflicts.add(epoch)  # two keys certified for one epoch: one was forged
                    continue
                moved = self.moves.get(prev)
                if moved is not None and (
                    moved["epoch"] != epoch or moved.get("sealed") != cert.get("sealed")
                ):
                    conflicts.add(epoch)  # one key signed two different moves: one was forged
                    continue
                keys[epoch] = public
                self.moves[prev] = cert
        self.conflicts = sorted(conflicts)
        return keys

    def resolve(self) -> None:
        """Check every certificate collected so far (fills `conflicts` and `moves`)."""
        if self._keys is None:
            self._keys = self._resolve()


def _summary_ok(summary: object) -> bool:
    return (
        isinstance(summary, Mapping)
        and isinstance(summary.get("count"), int)
        and not isinstance(summary.get("count"), bool)
        and isinstance(summary.get("digest"), str)
        and _HEX64_RE.match(str(summary.get("digest"))) is not None
        and isinstance(summary.get("retention"), int)
        and not isinstance(summary.get("retention"), bool)
    )


MAX_CERT_LINE: Final = 64 * 1024
"""The longest line `read_certs` accepts (a certificate is about 400 bytes)."""
MAX_CERTS_FILE: Final = 1 << 30
"""The most `read_certs` reads of one file (a year of 60 s epochs is about 300 MB)."""


def read_certs(path: Path) -> Iterable[Mapping[str, Any]]:
    """The certificates in a certs file (malformed lines are skipped: each is checked on use).

    Never follows a symlink and reads only a regular file, a line at a time, up to
    `MAX_CERT_LINE` bytes a line and `MAX_CERTS_FILE` in all; OSError/ValueError say where."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError(f"{path}: not a regular file")
        total = 0
        for number, line in enumerate(iter(lambda: handle.readline(MAX_CERT_LINE + 1), b""), 1):
            total += len(line)
            if len(line) > MAX_CERT_LINE or total > MAX_CERTS_FILE:
                raise ValueError(f"{path}:{number}: longer than {MAX_CERT_LINE} bytes or the file too big")
            with contextlib.suppress(ValueError):
                cert = json.loads(line)
                if isinstance(cert, dict):
                    yield cert


# -- the daemon's state ---------------------------------------------------------------


def _write_state(directory: Path, state: Mapping[str, Any]) -> None:
    """Write `state` to `directory/state.json` atomically and durably (tmp, fsync, rename, fsync dir)."""
    durable.atomic_write(directory / STATE_FILE_NAME, json.dumps(state, sort_keys=True).encode() + b"\n")


def _append_cert(directory: Path, cert: Mapping[str, Any] | None, *, truncate: bool = False) -> None:
    """Append `cert` to the certs file (created empty when `cert` is None), fsynced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(directory / CERTS_FILE_NAME, flags | (os.O_TRUNC if truncate else 0), 0o644)
    try:
        if cert is not None:
            data = json.dumps(cert, sort_keys=True).encode() + b"\n"
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {directory / CERTS_FILE_NAME}")
        os.fsync(fd)
    finally:
        os.close(fd)


def _state(
    chain: str,
    start: int,
    interval: int,
    epoch: int,
    key: Ed25519PrivateKey,
    certs: Iterable[Mapping[str, Any]],
    *,
    fresh: bool = False,
) -> dict[str, Any]:
    return {
        "version": 2,
        "chain": chain,
        "start": start,
        "interval": interval,
        "epoch": epoch,
        "key": private_bytes(key).hex(),
        "certs": list(certs),
        "fresh": fresh,  # nothing was sealed with this key yet (the next start may sum its seals)
    }


def setup_keys(
    state_dir: Path, *, interval: int = DEFAULT_INTERVAL, force: bool = False, now: float | None = None
) -> VerificationKey:
    """Create a new key chain under `state_dir` and return its verification key.

    Refuses (`SealStateError`) when sealing state exists and `force` is false. The directory is
    created 0700 (an existing one is tightened to 0700), the state file 0600.
    """
    if interval <= 0:
        raise SealStateError(f"the epoch length must be at least 1 second, got {interval}")
    directory = state_dir_of(state_dir)
    path = directory / STATE_FILE_NAME
    if path.exists() and not force:
        raise SealStateError(
            f"sealing state already exists at {path}; a new key chain replaces it "
            "(and its verification key): give --force to do that"
        )
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if directory.is_symlink() or not directory.is_dir():
        raise SealStateError(f"refusing sealing state directory {directory}: not a directory")
    os.chmod(directory, 0o700)
    start = int(time.time() if now is None else now)
    key = Ed25519PrivateKey.generate()
    vk = VerificationKey(secrets.token_hex(8), start, int(interval), public_bytes(key.public_key()))
    _append_cert(directory, None, truncate=True)
    _write_state(directory, _state(vk.chain, vk.start, vk.interval, 0, key, (), fresh=True))
    return vk


def _drop_orphan_certs(directory: Path, epoch: int) -> None:
    """Cut a certificate signed by the current key (`epoch`) off the end of the certs file: a crash
    after a key move appended its certificate and before the new key was in place leaves one whose
    key was never kept nor used (the next move certifies another key for that epoch). Only the
    last line can be one: each start drops it before the next move."""
    path = directory / CERTS_FILE_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        begin = max(0, size - MAX_CERT_LINE)
        tail = os.pread(fd, size - begin, begin)
        cut = tail.rstrip(b"\n").rfind(b"\n") + 1
        if cut == 0 and begin > 0:
            return
        with contextlib.suppress(ValueError):
            last = json.loads(tail[cut:])
            prev = last.get("prev") if isinstance(last, dict) else None
            if isinstance(prev, int) and prev >= epoch:
                os.ftruncate(fd, begin + cut)
                os.fsync(fd)
    finally:
        os.close(fd)


class KeyChain:
    """The daemon's side of a chain: the current epoch and its key, moved forward durably.

    Thread-safe for readers: `current` is one immutable `EpochKey` swapped in after the state
    file holding the new key is durable. `advance_to` is called from one task at a time.

    It also keeps the ledger of the seals made with the current key (`record_seal`, under
    `lock`, which writers hold while they write a seal): the next key move signs their count and
    digest (`sealed_summary`) into the certificate, so a verifier of the whole audit dir can tell
    that a seal made before the move is gone. `retention` (seconds, 0 = off) goes with it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        chain: str,
        start: int,
        interval: int,
        epoch: int,
        key: Ed25519PrivateKey,
        certs: Iterable[Mapping[str, Any]] = (),
        fresh: bool = False,
    ) -> None:
        self.directory = directory
        self.chain = chain
        self.start = start
        self.interval = interval
        self.retention = 0
        self.lock = threading.RLock()
        self._epoch = epoch
        self.current = EpochKey(chain, epoch, key, tuple(certs)[-MAX_BRIDGE:])
        # The seals made with the current key; None: unknown (the key may have sealed before a
        # crash, or a seal's fsync failed): the next certificate says so.
        self._sealed: list[str] | None = [] if fresh else None
        self._fresh_on_disk = fresh

    @classmethod
    def load(cls, state_dir: Path) -> KeyChain | None:
        """The chain kept under `state_dir`, or None when there is no sealing state at all."""
        directory = state_dir_of(state_dir)
        path = directory / STATE_FILE_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SealStateError(f"cannot read the sealing state {path}: {exc}") from exc
        damaged = (
            f"the sealing state {path} is damaged or of an older aofd; "
            "run `aofctl audit setup-keys --force` to start a new key chain"
        )
        try:
            data = json.loads(raw)
            version, chain, start, interval = data["version"], data["chain"], data["start"], data["interval"]
            epoch, key, certs = data["epoch"], bytes.fromhex(data["key"]), data["certs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SealStateError(f"{damaged} ({type(exc).__name__})") from None
        ok = (
            version == 2
            and isinstance(chain, str)
            and _CHAIN_RE.match(chain)
            and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, interval, epoch)
            )
            and interval > 0
            and len(key) == 32
            and isinstance(certs, list)
            and all(isinstance(c, dict) for c in certs)
        )
        if not ok:
            raise SealStateError(f"{damaged} (bad field values)")
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            raise SealStateError(
                f"the sealing state {path} is readable by others (mode {mode:o}); chmod 600 it"
            )
        _drop_orphan_certs(directory, epoch)
        return cls(
            directory,
            chain=chain,
            start=start,
            interval=interval,
            epoch=epoch,
            key=Ed25519PrivateKey.from_private_bytes(key),
            certs=certs,
            fresh=data.get("fresh") is True,
        )

    @property
    def epoch(self) -> int:
        return self._epoch

    def epoch_at(self, now: float) -> int:
        """The epoch `now` falls in (0 before the chain's start)."""
        return max(0, int((now - self.start) // self.interval))

    def epoch_end(self, epoch: int) -> float:
        return float(self.start + (epoch + 1) * self.interval)

    def advance_to(self, epoch: int, *, final: bool = False) -> bool:
        """Make `epoch`'s key pair (never backwards), certify it with the current key, make it
        durable, then use it; True if it moved. `final`: this process seals nothing more (the
        stop), so the new key is recorded as fresh.

        The certificate (with the count and digest of every seal made with the current key) is
        appended to the certs file and the new state is on disk (fsynced file and directory)
        before `current` changes: after a crash either the old key is still the current one
        (nothing was sealed with the new) or the new key is in place and the old one is gone.
        Epochs skipped over never get a key. Raises OSError.
        """
        with self.lock:  # no seal is written with the old key while (or after) it is certified
            if epoch <= self._epoch:
                return False
            old = self.current
            key = Ed25519PrivateKey.generate()
            summary = sealed_summary(self._sealed, self.retention)
            cert = make_cert(old.key, self.chain, old.epoch, epoch, key.public_key(), summary)
            certs = (*old.certs, cert)[-MAX_BRIDGE:]
            _append_cert(self.directory, cert)
            state = _state(self.chain, self.start, self.interval, epoch, key, certs, fresh=final)
            try:
                _write_state(self.directory, state)
            except OSError:
                with contextlib.suppress(OSError):  # the new key is gone: so must its certificate be
                    _drop_orphan_certs(self.directory, old.epoch)
                raise
            self._epoch = epoch
            self.current = EpochKey(self.chain, epoch, key, certs)
            self._sealed = []
            self._fresh_on_disk = final
            return True

    def claim(self) -> None:
        """Before this process seals with a key loaded as fresh, record durably that it is no
        longer: after a crash the next start must not claim that it sealed nothing."""
        with self.lock:
            if not self._fresh_on_disk:
                return
            cur = self.current
            state = _state(self.chain, self.start, self.interval, cur.epoch, cur.key, cur.certs)
            _write_state(self.directory, state)
            self._fresh_on_disk = False

    def is_current(self, key: EpochKey) -> bool:
        """Whether `key` may still seal (call with `lock` held)."""
        return key.chain == self.chain and key.epoch == self._epoch

    def record_seal(self, key: EpochKey, context: str, seq: object, head: object) -> None:
        """Count a seal written with `key` (call with `lock` held, right after writing it)."""
        if self.is_current(key) and self._sealed is not None:
            self._sealed.append(seal_line(context, seq, head))

    def seal_uncertain(self, epoch: int) -> None:
        """A seal of `epoch` was written but may not be durable (its fsync failed): the next
        certificate must not claim to know the epoch's seals."""
        with self.lock:
            if epoch == self._epoch:
                self._sealed = None

    def published(self, epoch: int) -> None:
        """Every open log holds a seal of `epoch` now (with the certificates up to it): later seals
        need not carry those certificates again. In memory; the next key move writes it down."""
        cur = self.current
        if cur.epoch == epoch:
            self.current = EpochKey(
                cur.chain, cur.epoch, cur.key, tuple(c for c in cur.certs if c["epoch"] > epoch)
            )


def load_for_daemon(state_dir: Path, *, interval: int) -> KeyChain | None:
    """The daemon's key chain under `state_dir` (None: sealing is off), checked against the
    configured `audit.seal_interval`; `SealStateError` says what to change when they differ."""
    chain = KeyChain.load(state_dir)
    if chain is not None and chain.interval != interval:
        raise SealStateError(
            f"audit.seal_interval is {interval}s but the key chain in {chain.directory} has "
            f"{chain.interval}s epochs: set seal_interval: {chain.interval}s, or start a new chain with "
            f"`aofctl audit setup-keys --state-dir {state_dir} --interval {interval}s --force`"
        )
    return chain
