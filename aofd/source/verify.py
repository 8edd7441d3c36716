"""Signature verification of fetched git revisions (`sources[].git.verify`).

Owns the policy (which objects must be signed for a `mode`, who may sign) and the two
verifiers; the git adapter (`aofd.source.git`) hands it raw objects and applies nothing that
fails here. Blocking (subprocesses): called from the fetch thread.

- SSH signatures (git's `gpg.format=ssh`, SSHSIG) are verified by OpenSSH's own `ssh-keygen -Y`
  (`check-novalidate`, `find-principals`, `verify -n git`), the reference implementation of
  the allowed_signers format: principals patterns, `namespaces=`, `valid-after=`,
  `valid-before=` and `cert-authority` all mean exactly what they mean to `git verify-commit`
  and to OpenSSH, with nothing re-implemented here. Validity windows are checked against the
  time of verification (ssh-keygen's default), not against the committer date the signer chose.
- OpenPGP signatures are verified by GnuPG (`gpg --verify --status-fd`), the implementation
  git itself uses for `gpgsig`, maintained and packaged everywhere; each verification imports
  the trusted keys into a fresh, private GNUPGHOME (deleted afterwards, no agent started), so
  nothing outside `openpgp_keys_file` is ever trusted. Each armored block of the file is
  imported as a file of its own (in one packet stream, gpg reads a revocation certificate
  that follows another key as a signature on that key, and drops it), and all of them twice
  (a revocation read before its key cannot be applied on the first pass); a revocation that
  still cannot be applied (its key is not in the file) fails closed. GnuPG's verdict
  (GOODSIG/VALIDSIG, no EXPKEYSIG/REVKEYSIG/BADSIG/ERRSIG) is cross-checked against the key
  listing: the signing key or subkey must be neither expired, revoked nor invalid, and must be
  signing-capable.
  (Python OpenPGP libraries were considered: PGPy is unmaintained since 2022; GnuPG is what
  produced and what git checks these signatures with.)

Tag modes also check that the tag object names the tracked tag (`tag <name>`): a signed tag
re-pushed under another name is refused, and the provenance records the name.

Text the signer chose (an SSHSIG namespace, a tag name, a certificate principal) is quoted only
through `signatures.clean` (printable ASCII, at most 64 characters). A verifier that cannot
give a verdict (killed, crashed, a usage error: an `ssh-keygen` without `-Y`) is a
`SourceError` "verifier failed: ...", never blamed on the signature; nothing is applied
either way.

The key files are read on every verifying fetch (SIGHUP wakes every source, so it re-reads
them); a missing or unreadable file is a `SourceError`: nothing is applied (fail closed).
A revision that does not pass is a `SignatureRejected` naming the commit, the reason and the
key fingerprint.

Must not import pygit2 or asyncio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from aofd.errors import SourceError
from aofd.settings import GitVerify
from aofd.source import signatures

TOOL_TIMEOUT = 30.0
"""Seconds one `ssh-keygen` or `gpg` call may take."""

REJECTED_RETRY = 60.0
_ENV_KEEP = ("PATH", "SYSTEMROOT", "TMPDIR")


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The trusted keys as read from the configured files (None: that file is not configured)."""

    allowed_signers: bytes | None
    openpgp: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class Signature:
    """A verified signature: who signed which object, with which key."""

    object: Literal["commit", "tag"]
    format: signatures.Format
    signer: str
    fingerprint: str
    ca_fingerprint: str = ""  # an SSH certificate's CA key


@dataclasses.dataclass(frozen=True, slots=True)
class Provenance:
    """What a verified revision was signed with (the head commit's signature first)."""

    commit: str
    signatures: tuple[Signature, ...]
    tag: str = ""  # the tag modes: the verified tag object's name

    def as_details(self) -> dict[str, str]:
        first = self.signatures[0]
        details = {
            "commit": self.commit,
            "signer": first.signer,
            "fingerprint": first.fingerprint,
            "format": first.format,
            "signed": first.object,
        }
        if first.ca_fingerprint:
            details["ca_fingerprint"] = first.ca_fingerprint
        for sig in self.signatures[1:]:
            details[f"{sig.object}_signer"] = sig.signer
            details[f"{sig.object}_fingerprint"] = sig.fingerprint
            if sig.ca_fingerprint:
                details[f"{sig.object}_ca_fingerprint"] = sig.ca_fingerprint
        if self.tag:
            details["tag"] = self.tag
        return details


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """Why a fetched revision was refused (every field printable ASCII, cut to a bounded length)."""

    commit: str
    reason: str
    fingerprint: str = ""
    signer: str = ""
    object: Literal["commit", "tag"] = "commit"

    def __post_init__(self) -> None:
        for name, limit in (("commit", 80), ("reason", 240), ("fingerprint", 80), ("signer", 80)):
            object.__setattr__(self, name, signatures.clean(getattr(self, name), limit))

    def message(self) -> str:
        key = f" (key {self.fingerprint})" if self.fingerprint else ""
        return f"commit {self.commit} rejected: {self.reason}{key}"

    def as_details(self) -> dict[str, str]:
        details = {"commit": self.commit, "reason": self.reason, "object": self.object}
        if self.fingerprint:
            details["fingerprint"] = self.fingerprint
        if self.signer:
            details["signer"] = self.signer
        return details


class SignatureRejected(SourceError):
    """A fetched revision failed verification; the last good revision stays in force."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message(), retry_after=REJECTED_RETRY)
        self.rejection = rejection


class _Bad(Exception):
    def __init__(self, reason: str, fingerprint: str = "", signer: str = "") -> None:
        super().__init__(reason)
        self.reason, self.fingerprint, self.signer = reason, fingerprint, signer


def load_keys(spec: GitVerify) -> Keys:
    """Read the configured key files now.

    Raises:
        SourceError: a file is missing, unreadable or empty (fail closed: nothing applies).
    """
    return Keys(
        allowed_signers=_read_key_file(spec.ssh_allowed_signers_file, "ssh_allowed_signers_file"),
        openpgp=_read_key_file(spec.openpgp_keys_file, "openpgp_keys_file"),
    )


def _read_key_file(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(
            f"cannot read verify.{setting} {path}: {exc.strerror or exc}; "
            "nothing is applied until it is readable",
            retry_after=30.0,
        ) from exc
    if not data.strip():
        raise SourceError(f"verify.{setting} {path} is empty; nothing is applied", retry_after=30.0)
    return data


def check(
    spec: GitVerify,
    keys: Keys,
    *,
    commit: str,
    commit_raw: bytes,
    tag: str | None = None,
    tag_raw: bytes | None = None,
) -> Provenance:
    """Verify what `spec.mode` asks of the revision at `commit` (and the tracked tag `tag`,
    whose raw object is `tag_raw`, None for a lightweight tag).

    Raises:
        SignatureRejected: unsigned, badly signed, an untrusted key, or a signer not in `signers`.
        SourceError: a verifier could not run (fail closed).
    """
    found: list[Signature] = []
    name = ""
    try:
        if spec.mode in ("head", "tag_and_head"):
            signed = signatures.commit_signature(commit_raw)
            if signed is None:
                raise _Bad("the commit is not signed")
            found.append(_verify("commit", signed, spec, keys))
        if spec.mode in ("tag", "tag_and_head"):
            if tag_raw is None:
                raise _Bad(f"tag {tag} is a lightweight tag; mode {spec.mode} needs a signed annotated tag")
            signed = signatures.tag_signature(tag_raw)
            if signed is None:
                raise _Bad(f"tag {tag} is not signed")
            sig = _verify("tag", signed, spec, keys)
            found.append(sig)
            # The name is inside what was signed: a signed tag re-pushed under another ref name
            # (refs/tags/prod -> the `staging` tag object) is not the tag this source tracks.
            name = signatures.header(signed.payload, "tag") or ""
            if name != tag:
                named = f"named '{signatures.clean(name)}'" if name else "without a name"
                raise _Bad(f"the tag object is {named}, not '{tag}'", sig.fingerprint, sig.signer)
    except _Bad as bad:
        obj: Literal["commit", "tag"] = "tag" if len(found) == 1 or spec.mode == "tag" else "commit"
        if spec.mode == "tag_and_head" and len(found) == 2:
            obj = "tag"
        raise SignatureRejected(Rejection(commit, bad.reason, bad.fingerprint, bad.signer, obj)) from None
    return Provenance(commit, tuple(found), tag=name)


def _verify(
    obj: Literal["commit", "tag"], signed: signatures.Signed, spec: GitVerify, keys: Keys
) -> Signature:
    what = "the commit" if obj == "commit" else "the tag"
    if signed.format == "ssh":
        if keys.allowed_signers is None:
            raise _Bad(f"{what} has an SSH signature but no ssh_allowed_signers_file is configured")
        signer, fingerprint, ca = _verify_ssh(signed, keys.allowed_signers, spec.signers)
        return Signature(obj, signed.format, signer, fingerprint, ca)
    if signed.format == "openpgp":
        if keys.openpgp is None:
            raise _Bad(f"{what} has an OpenPGP signature but no openpgp_keys_file is configured")
        signer, fingerprint = _verify_openpgp(signed, keys.openpgp, spec.signers)
        return Signature(obj, signed.format, signer, fingerprint)
    raise _Bad(f"{what} has an unsupported signature format (only OpenPGP and SSH are verified)")


# -- SSH ----------------------------------------------------------------------------------------


def _verify_ssh(signed: signatures.Signed, allowed: bytes, signers: tuple[str, ...]) -> tuple[str, str, str]:
    """(the allowed_signers principals that matched, the key's fingerprint, a certificate's CA's).

    The signer recorded is what `find-principals` matched (the principals field of the
    allowed_signers line, or a certificate's principal): with a wildcard line, `signers` only
    narrows which identities the pattern may stand for, and is not recorded as the signer.
    """
    try:
        info = signatures.sshsig(signed.signature)
    except ValueError as exc:
        raise _Bad(f"malformed SSH signature: {exc}") from None
    fpr = info.fingerprint
    if info.namespace != "git":
        raise _Bad(f"SSH signature is for namespace '{signatures.clean(info.namespace)}', not 'git'", fpr)
    with _workdir() as work:
        sig = work / "signature"
        sig.write_bytes(signed.signature)
        allowed_file = work / "allowed_signers"
        allowed_file.write_bytes(allowed)
        done = _run(["ssh-keygen", "-Y", "check-novalidate", "-n", "git", "-s", str(sig)], signed.payload)
        if done.returncode != 0:
            _ssh_verdict(done, "check-novalidate")
            raise _Bad("bad signature (the signed content does not match: tampered or corrupt)", fpr)
        found = _run(["ssh-keygen", "-Y", "find-principals", "-f", str(allowed_file), "-s", str(sig)], b"")
        if found.returncode != 0:
            _ssh_verdict(found, "find-principals")
        principals = [p for p in found.stdout.decode("utf-8", "replace").splitlines() if p.strip()]
        if found.returncode != 0 or not principals:
            raise _Bad(
                "key not trusted (not in ssh_allowed_signers_file for namespace git, or outside its "
                "valid-after/valid-before window)",
                fpr,
            )
        for principal in principals:
            listed = [p for p in principal.split(",") if p and not p.startswith("!")]
            for identity in signers or tuple(listed) or (principal,):
                done = _run(
                    [
                        "ssh-keygen",
                        "-Y",
                        "verify",
                        "-f",
                        str(allowed_file),
                        "-I",
                        identity,
                        "-n",
                        "git",
                        "-s",
                        str(sig),
                    ],
                    signed.payload,
                )
                if done.returncode == 0:
                    return signatures.clean(principal), fpr, info.ca_fingerprint
                _ssh_verdict(done, "verify")
    named = ", ".join(signatures.clean(p) for p in principals[:3])
    if signers:
        raise _Bad(f"signed by {named}, which is not in signers", fpr, signatures.clean(principals[0]))
    raise _Bad("the signature does not verify for its allowed_signers principals", fpr, named)


def _ssh_verdict(done: subprocess.CompletedProcess[bytes], operation: str) -> None:
    """Return if a failed `ssh-keygen -Y` gave a verdict on the signature (exit 255 saying so);
    raise `SourceError` if it could not give one (killed, a usage error, an unknown `-Y`)."""
    text = (done.stderr + done.stdout).decode("utf-8", "replace").lower()
    if done.returncode == 255 and any(
        word in text for word in ("verif", "signature", "principal", "certificate")
    ):
        return
    if done.returncode == 255 and operation == "find-principals" and not text.strip():
        return
    raise _tool_failed("ssh-keygen", done)


def _tool_failed(tool: str, done: subprocess.CompletedProcess[bytes]) -> SourceError:
    if done.returncode < 0:
        try:
            name = f" ({signal.Signals(-done.returncode).name})"
        except ValueError:
            name = ""
        how = f"killed by signal {-done.returncode}{name}"
    else:
        lines = [ln.strip() for ln in done.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        how = f"exited with {done.returncode}" + (f": {signatures.clean(lines[0], 120)}" if lines else "")
    return SourceError(f"verifier failed: {tool} {how}; nothing is applied", retry_after=30.0)


# -- OpenPGP ------------------------------------------------------------------------------------


def _verify_openpgp(signed: signatures.Signed, keyring: bytes, signers: tuple[str, ...]) -> tuple[str, str]:
    with _workdir() as work:
        home = work / "gnupg"
        home.mkdir(mode=0o700)
        blocks = _ARMOR_BLOCK.findall(keyring) or [keyring]  # not armored: one binary stream
        key_files = [work / f"key-{i}.asc" for i in range(len(blocks))]
        for path, block in zip(key_files, blocks, strict=True):
            path.write_bytes(block + b"\n")
        sig = work / "signature.asc"
        sig.write_bytes(signed.signature)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--no-autostart", "--no-tty", "--no-options"]
        # Each block a file (a packet stream) of its own, all imported twice: on the first pass
        # a revocation read before its key is dropped ("no public key - can't apply revocation
        # certificate"); on the second its key is there.
        for _ in range(2):
            imported = _run([*gpg, "--import", *map(str, key_files)], b"")
            if imported.returncode < 0:
                raise _tool_failed("gpg", imported)
        unapplied = _UNAPPLIED.search(imported.stderr.decode("utf-8", "replace"))
        if unapplied:
            raise SourceError(
                f"verify.openpgp_keys_file holds a revocation certificate for key {unapplied.group(1)} "
                "that could not be applied (that key is not in the file); nothing is applied",
                retry_after=30.0,
            )
        listing = _run([*gpg, "--with-colons", "--fixed-list-mode", "--list-keys"], b"")
        if listing.returncode != 0:
            raise _tool_failed("gpg", listing)
        keys = signatures.gpg_keys(listing.stdout.decode("utf-8", "replace"))
        if not keys:
            detail = imported.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no key"]
            raise SourceError(
                f"verify.openpgp_keys_file holds no usable OpenPGP public key ({detail[0]}); "
                "nothing is applied",
                retry_after=30.0,
            )
        done = _run([*gpg, "--status-fd", "1", "--verify", str(sig), "-"], signed.payload)
    text = done.stdout.decode("utf-8", "replace")
    if done.returncode < 0 or "[GNUPG:] " not in text:
        raise _tool_failed("gpg", done)  # no verdict at all: not the signature's fault
    status = signatures.gpg_status(text)
    fpr = status.primary_fingerprint or status.key_id
    if status.signatures != 1:
        raise _Bad(f"expected one OpenPGP signature, found {status.signatures}", fpr)
    if status.problems:
        raise _Bad(", ".join(status.problems), fpr)
    if not status.good or not status.valid_fingerprint or done.returncode != 0:
        raise _Bad("bad signature", fpr)
    key = next((k for k in keys if k.fingerprint == status.primary_fingerprint), None)
    if key is None:
        raise _Bad("key not trusted (not in openpgp_keys_file)", fpr)
    if key.validity in signatures.BAD_VALIDITY:
        raise _Bad(_VALIDITY_REASON.get(key.validity, "key not valid"), fpr)
    if status.valid_fingerprint == key.fingerprint:
        usable = "s" in key.capabilities
    else:
        sub = next((s for s in key.subkeys if s[0] == status.valid_fingerprint), None)
        if sub is not None and sub[1] in signatures.BAD_VALIDITY:
            raise _Bad(f"signing subkey {sub[0]}: {_VALIDITY_REASON.get(sub[1], 'not valid')}", fpr)
        usable = sub is not None and "s" in sub[2]
    if not usable:
        raise _Bad("the signing key is not signing-capable", fpr)
    identities = [(signatures.uid_email(uid), uid) for uid in key.uids]
    if signers:
        for email, uid in identities:
            if email in signers or uid in signers:
                return signatures.clean(email if email in signers else uid), fpr
        named = signatures.clean(identities[0][0]) if identities else ""
        raise _Bad(f"signed by {named or 'a key without a user ID'}, which is not in signers", fpr, named)
    return (signatures.clean(identities[0][0]) if identities else key.fingerprint), fpr


_VALIDITY_REASON: Mapping[str, str] = {"e": "key expired", "r": "key revoked", "i": "key invalid"}
_ARMOR_BLOCK = re.compile(rb"^-----BEGIN PGP [A-Z ]+-----\r?$.*?^-----END PGP [A-Z ]+-----\r?$", re.S | re.M)
_UNAPPLIED = re.compile(r"key ([0-9A-Fa-f]+): no public key - can't apply revocation certificate")


# -- running the tools --------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aofd-verify-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run a verifier; a missing tool or a hang is a `SourceError` (fail closed)."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env["LC_ALL"] = "C"
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, env=env, timeout=TOOL_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        package = "OpenSSH's ssh-keygen (8.8 or later)" if argv[0] == "ssh-keygen" else "GnuPG's gpg"
        raise SourceError(
            f"cannot verify signatures: {argv[0]} not found; install {package}", retry_after=60.0
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SourceError(
            f"{argv[0]} took more than {TOOL_TIMEOUT:g}s verifying a signature", retry_after=30.0
        ) from exc
