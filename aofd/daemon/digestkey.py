"""The install's digest key: 32 random bytes in the state dir, made once, never shown.

Digests of resources that hold a secret-bearing value are HMACs under this key
(`aofd.plan.registry.keyed_digest`), so a digest the admin API shows or the state dir keeps
cannot be used to test a guessed secret offline, and two installs' digests of the same
secret differ. The file `digest-key` is created mode 0600, atomically (written whole to a
temporary file, then linked into place, so a crash or a second process never leaves a short
key); it is read on every start. Deleting it re-keys: every secret-bearing resource is then
applied once more, as an update.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from aofd import errors

FILENAME = "digest-key"
KEY_BYTES = 32


def load_or_create(state_dir: Path) -> bytes:
    """The key in `state_dir`, created on first use; `Stalled` when it is unreadable or damaged."""
    path = state_dir / FILENAME
    key = _read(path)
    if key is not None:
        return key
    tmp = state_dir / f".{FILENAME}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # someone else won the race: theirs is kept
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    key = _read(path)
    if key is None:
        raise errors.Stalled(f"{path}: the digest key could not be created")
    return key


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.Stalled(f"{path}: cannot read the digest key: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        key = fh.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise errors.Stalled(
            f"{path}: the digest key must be {KEY_BYTES} bytes; remove the file to make a new one "
            "(every resource holding a secret is then applied again)"
        )
    return key
