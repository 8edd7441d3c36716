"""Test helpers for signed git objects made by the real tools: SSH keys (`ssh-keygen`) and
GnuPG keys in a private GNUPGHOME (`gpg --quick-gen-key`), and work clones configured so that
`git commit -S` / `git tag -s` sign with them.

`GpgHome` stops the gpg-agent that key generation and signing start, on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.source.gitkit import Remote

FAKE_PAST = "20200101T000000"


def have_tools() -> str | None:
    """None if ssh-keygen and gpg are installed, else what is missing."""
    missing = [tool for tool in ("ssh-keygen", "gpg", "gpgconf") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed" if missing else None


def run(*argv: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode(errors="replace")


def ssh_key(directory: Path, name: str) -> Path:
    """A new ed25519 key pair `directory/name` (+ `.pub`); returns the private key path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path))
    return path


def public(key: Path) -> str:
    """`type base64` of a key pair's public half (no comment)."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def fingerprint(key: Path) -> str:
    """`SHA256:...` as `ssh-keygen -l` prints it."""
    return run("ssh-keygen", "-l", "-f", f"{key}.pub").split()[1]


def sign_with_ssh(remote: Remote, key: Path) -> None:
    """Make `remote.work` sign commits and tags with the SSH key `key` (`gpg.format=ssh`)."""
    remote.git("config", "gpg.format", "ssh")
    remote.git("config", "user.signingkey", str(key))
    remote.git("config", "commit.gpgsign", "true")
    remote.git("config", "tag.gpgsign", "true")


def sign_with_gpg(remote: Remote, home: GpgHome, email: str, *, fake_time: str | None = None) -> None:
    """Make `remote.work` sign with the GnuPG key of `email` in `home` (optionally at a faked time)."""
    script = home.path / f"gpg-{'past' if fake_time else 'now'}.sh"
    extra = f" --faked-system-time {fake_time}!" if fake_time else ""
    script.write_text(f'#!/bin/sh\nexec gpg --homedir {home.path}{extra} "$@"\n')
    script.chmod(0o755)
    remote.git("config", "gpg.format", "openpgp")
    remote.git("config", "gpg.program", str(script))
    remote.git("config", "user.signingkey", email)
    remote.git("config", "commit.gpgsign", "true")
    remote.git("config", "tag.gpgsign", "true")


def unsign(remote: Remote) -> None:
    remote.git("config", "commit.gpgsign", "false")
    remote.git("config", "tag.gpgsign", "false")


class GpgHome:
    """A private GNUPGHOME (short path: gpg-agent's socket lives in it) with keys made in it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="aofd-t-gpg-"))
        self.path.chmod(0o700)

    def gpg(self, *args: str, stdin: bytes | None = None) -> str:
        return run(
            "gpg", "--homedir", str(self.path), "--batch", "--pinentry-mode", "loopback", *args, stdin=stdin
        )

    def generate(self, uid: str, *, expire: str = "1y", fake_time: str | None = None) -> str:
        """An ed25519 signing key for `uid`; returns its fingerprint."""
        faked = ["--faked-system-time", f"{fake_time}!"] if fake_time else []
        self.gpg(*faked, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", expire)
        listing = self.gpg("--with-colons", "--fixed-list-mode", "--list-keys", uid)
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def revocation(self, fpr: str) -> bytes:
        """The revocation certificate gpg made at generation time, ready to import (appended to
        an exported key, it revokes the key for whoever imports both; the key still signs here)."""
        cert = (self.path / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
        return cert.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"
        ).encode()

    def export(self, *fprs: str) -> bytes:
        return self.gpg("--armor", "--export", *fprs).encode()

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError, subprocess.TimeoutExpired):
            run("gpgconf", "--homedir", str(self.path), "--kill", "all")
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def gpg_home() -> Iterator[GpgHome]:
    home = GpgHome()
    try:
        yield home
    finally:
        home.close()
