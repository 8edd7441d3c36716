"""Forward-secure sealing of the audit logs: the key chain, its state file, the seal MAC.

This module owns the cryptography and the on-disk sealing state; the journal
(`aofd.audit.segment`) writes the `audit.sealed` records and `aofd.audit.verify` checks them.

- A key chain is `k_0, k_1, ...` with `k_{i+1} = HMAC-SHA256(k_i, "aofd-seal/evolve" || chain)`:
  one way, so whoever holds `k_i` can derive every later key and no earlier one.
- Time is cut into epochs of `interval` seconds from `start`; epoch `i` is sealed with
  `k_i` (the MAC key is `HMAC-SHA256(k_i, "aofd-seal/mac")`, never `k_i` itself).
- The verification key (`aofd-seal-v1:<chain>:<start>:<interval>:<k_0 hex>`) is printed once
  by `aofctl audit setup-keys` and kept away from the host; a verifier derives every epoch
  key from it.
- The daemon keeps only the current epoch's key, in `<state_dir>/audit-seal/state.json`
  (0600, directory 0700). Moving to a later epoch writes the new key to a temporary file,
  fsyncs it, renames it over the state file and fsyncs the directory, and only then uses the
  new key: the old key is gone from disk before anything is sealed with the new one.

What it cannot do: wipe a key from the process's memory (Python bytes are immutable), or
erase blocks the file system keeps after a rename. Someone who takes the host at time T
holds the key of T's epoch and can seal anything from then on; every seal of an earlier
epoch stays unforgeable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

STATE_DIR_NAME: Final = "audit-seal"
"""The sealing state's directory under the daemon's `state_dir` (never under the audit dir)."""
STATE_FILE_NAME: Final = "state.json"
KEY_PREFIX: Final = "aofd-seal-v1"
MAC_PREFIX: Final = "hmac-sha256:"
DEFAULT_INTERVAL: Final = 60
REASONS: Final = frozenset({"epoch", "rotation", "stop"})
"""Why a seal was written: the end of an epoch, a segment rotation, the log closing."""

_EVOLVE: Final = b"aofd-seal/evolve\x00"
_MAC: Final = b"aofd-seal/mac"
_CHAIN_RE = re.compile(r"^[0-9a-f]{16}$")
_KEY_RE = re.compile(r"^aofd-seal-v1:([0-9a-f]{16}):(\d{1,12}):(\d{1,9}):([0-9a-f]{64})$")


class SealStateError(Exception):
    """The sealing state is missing pieces, unreadable or not ours; the message says where and why."""


def state_dir_of(state_dir: Path) -> Path:
    """`<state_dir>/audit-seal`: where `aofctl audit setup-keys` and the daemon keep the state."""
    return Path(state_dir) / STATE_DIR_NAME


def state_path(state_dir: Path) -> Path:
    """`<state_dir>/audit-seal/state.json`."""
    return state_dir_of(state_dir) / STATE_FILE_NAME


def evolve(key: bytes, chain: str) -> bytes:
    """The next epoch's key (one way)."""
    return hmac.digest(key, _EVOLVE + chain.encode("ascii"), "sha256")


def mac_key(key: bytes) -> bytes:
    """The key that MACs seals of an epoch, derived from (never equal to) the epoch key."""
    return hmac.digest(key, _MAC, "sha256")


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
)
"""The `aofd.seal.*` fields a seal's MAC covers, in this order."""


def seal_message(fields: Mapping[str, Any]) -> bytes:
    """The bytes a seal's MAC is computed over: each of `SEALED_FIELDS`, JSON-encoded, one a line."""
    parts = [b"aofd-seal/v1"]
    parts.extend(json.dumps(fields.get(name), sort_keys=True).encode() for name in SEALED_FIELDS)
    return b"\n".join(parts)


def compute_mac(epoch_mac_key: bytes, fields: Mapping[str, Any]) -> str:
    return MAC_PREFIX + hmac.digest(epoch_mac_key, seal_message(fields), "sha256").hex()


@dataclasses.dataclass(frozen=True, slots=True)
class EpochKey:
    """What a writer needs to seal during one epoch (the MAC key only, not the chain key)."""

    chain: str
    epoch: int
    key: bytes = dataclasses.field(repr=False)

    def sign(self, fields: Mapping[str, Any]) -> str:
        return compute_mac(self.key, fields)


@dataclasses.dataclass(frozen=True, slots=True)
class VerificationKey:
    """The first key of a chain, its start and epoch length: enough to check every seal of it."""

    chain: str
    start: int
    interval: int
    key0: bytes = dataclasses.field(repr=False)

    def encode(self) -> str:
        return f"{KEY_PREFIX}:{self.chain}:{self.start}:{self.interval}:{self.key0.hex()}"

    @classmethod
    def parse(cls, text: str) -> VerificationKey:
        """Parse `aofd-seal-v1:<chain>:<start>:<interval>:<64 hex>`; ValueError says what is wrong
        (never repeating the key)."""
        m = _KEY_RE.match(text.strip())
        if m is None:
            raise ValueError(
                "a verification key looks like aofd-seal-v1:<16 hex>:<start>:<interval>:<64 hex> "
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


class KeyDeriver:
    """Derives epoch MAC keys of one chain from its verification key, caching the way forward."""

    def __init__(self, vk: VerificationKey) -> None:
        self.vk = vk
        self._epoch = 0
        self._key = vk.key0
        self._macs: dict[int, bytes] = {}

    def mac_key(self, epoch: int) -> bytes:
        found = self._macs.get(epoch)
        if found is not None:
            return found
        if epoch < self._epoch:  # rare (a replayed older seal): start again from k_0
            self._epoch, self._key = 0, self.vk.key0
        while self._epoch < epoch:
            self._key = evolve(self._key, self.vk.chain)
            self._epoch += 1
        found = mac_key(self._key)
        if len(self._macs) < 4096:
            self._macs[epoch] = found
        return found


# -- the daemon's state ---------------------------------------------------------------


def _write_state(directory: Path, state: Mapping[str, Any]) -> None:
    """Write `state` to `directory/state.json` atomically and durably (tmp, fsync, rename, fsync dir)."""
    path = directory / STATE_FILE_NAME
    tmp = directory / (STATE_FILE_NAME + ".tmp")
    data = json.dumps(state, sort_keys=True).encode() + b"\n"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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
    vk = VerificationKey(secrets.token_hex(8), start, int(interval), secrets.token_bytes(32))
    _write_state(
        directory,
        {
            "version": 1,
            "chain": vk.chain,
            "start": vk.start,
            "interval": vk.interval,
            "epoch": 0,
            "key": vk.key0.hex(),
        },
    )
    return vk


class KeyChain:
    """The daemon's side of a chain: the current epoch and its key, moved forward durably.

    Thread-safe for readers: `current` is one immutable `EpochKey` swapped in after the state
    file holding the new key is durable. `advance_to` is called from one task at a time.
    """

    def __init__(
        self, directory: Path, *, chain: str, start: int, interval: int, epoch: int, key: bytes
    ) -> None:
        self.directory = directory
        self.chain = chain
        self.start = start
        self.interval = interval
        self._epoch = epoch
        self._key = key
        self.current = EpochKey(chain, epoch, mac_key(key))

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
        try:
            data = json.loads(raw)
            chain, start, interval = data["chain"], data["start"], data["interval"]
            epoch, key = data["epoch"], bytes.fromhex(data["key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SealStateError(
                f"the sealing state {path} is damaged ({type(exc).__name__}); "
                "run `aofctl audit setup-keys --force` to start a new key chain"
            ) from None
        ok = (
            isinstance(chain, str)
            and _CHAIN_RE.match(chain)
            and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, interval, epoch)
            )
            and interval > 0
            and len(key) == 32
        )
        if not ok:
            raise SealStateError(
                f"the sealing state {path} is damaged (bad field values); "
                "run `aofctl audit setup-keys --force` to start a new key chain"
            )
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            raise SealStateError(
                f"the sealing state {path} is readable by others (mode {mode:o}); chmod 600 it"
            )
        return cls(directory, chain=chain, start=start, interval=interval, epoch=epoch, key=key)

    @property
    def epoch(self) -> int:
        return self._epoch

    def epoch_at(self, now: float) -> int:
        """The epoch `now` falls in (0 before the chain's start)."""
        return max(0, int((now - self.start) // self.interval))

    def epoch_end(self, epoch: int) -> float:
        return float(self.start + (epoch + 1) * self.interval)

    def advance_to(self, epoch: int) -> bool:
        """Evolve the key to `epoch` (never backwards), durably, then use it; True if it moved.

        The new state is on disk (fsynced file and directory) before `current` changes, so a
        crash leaves either the old key unused-after or the new key in place: never a seal made
        with a key that is still recoverable from disk for a later epoch. Raises OSError.
        """
        if epoch <= self._epoch:
            return False
        key = self._key
        for _ in range(epoch - self._epoch):
            key = evolve(key, self.chain)
        _write_state(
            self.directory,
            {
                "version": 1,
                "chain": self.chain,
                "start": self.start,
                "interval": self.interval,
                "epoch": epoch,
                "key": key.hex(),
            },
        )
        self._epoch, self._key = epoch, key
        self.current = EpochKey(self.chain, epoch, mac_key(key))
        return True


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
