"""Signature verification of git sources (aofd.source.signatures, aofd.source.verify and the git
mirror): commits and tags signed by the real tools (`git commit -S`, `git tag -s`) with SSH keys
made by `ssh-keygen` and GnuPG keys made in the test; allowed_signers handling compared with
`git verify-commit` itself."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import signkit
from gitkit import Remote, git

from aofd.errors import SourceError
from aofd.resources import snapshot
from aofd.resources.ids import Revision
from aofd.settings import DirectorySourceSpec, GitRef, GitSourceSpec, GitVerify, SourceSpec
from aofd.source import backoff, runner, signatures, verify
from aofd.source import git as git_mod

pytestmark = pytest.mark.skipif(signkit.have_tools() is not None, reason=f"{signkit.have_tools()}")

ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SSH key pairs: alice and bob (trusted), mallory (never trusted)."""
    root = tmp_path_factory.mktemp("ssh")
    return {name: signkit.ssh_key(root, name) for name in ("alice", "bob", "mallory")}


@pytest.fixture(scope="module")
def pgp() -> Iterator[dict[str, Any]]:
    """One GNUPGHOME for the module: alice (good), carol (good, not a listed signer), eve (expired
    in 2020), rex (revoked), mallory (never exported to the trusted file)."""
    with signkit.gpg_home() as home:
        fprs = {
            "alice": home.generate(f"Alice <{ALICE}>"),
            "carol": home.generate("Carol <carol@example.com>"),
            "eve": home.generate("Eve <eve@example.com>", expire="2d", fake_time=signkit.FAKE_PAST),
            "rex": home.generate("Rex <rex@example.com>"),
            "mallory": home.generate("Mallory <mallory@example.com>"),
        }
        trusted = home.export(fprs["alice"], fprs["carol"], fprs["eve"], fprs["rex"]) + home.revocation(
            fprs["rex"]
        )
        yield {"home": home, "fprs": fprs, "trusted": trusted}


def allowed(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def spec_of(remote: Remote, ref: GitRef | None = None, **verify_args: Any) -> GitSourceSpec:
    return GitSourceSpec(url=remote.url, ref=ref or GitRef(branch="main"), verify=GitVerify(**verify_args))


def mirror(spec: GitSourceSpec, state_dir: Path) -> git_mod.Mirror:
    return git_mod.Mirror(name="main", spec=spec, state_dir=state_dir)


def rejected(m: git_mod.Mirror, previous: Any = None) -> verify.Rejection:
    with pytest.raises(verify.SignatureRejected) as caught:
        m.sync(previous)
    return caught.value.rejection


# -- SSH ----------------------------------------------------------------------------------------


def test_ssh_signed_head_applies_with_signer_and_fingerprint(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.write("agent.yaml", "kind: Agent\nmetadata: {name: signed}\n")
    head = remote.commit("signed")
    signers = allowed(tmp_path / "allowed", f'{ALICE} namespaces="git" {signkit.public(keys["alice"])}')
    snap = mirror(spec_of(remote, ssh_allowed_signers_file=signers), state_dir).sync(None)
    assert head == snap.revision
    assert {
        "commit": head,
        "signer": ALICE,
        "fingerprint": signkit.fingerprint(keys["alice"]),
        "format": "ssh",
        "signed": "commit",
    } == snap.provenance


def test_unsigned_commit_rejected_whole_and_status_names_it(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The last good revision stays in force; status names the commit and the reason."""
    signkit.sign_with_ssh(remote, keys["alice"])
    good = remote.commit("good")
    signers = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    spec = SourceSpec(name="main", git=spec_of(remote, ssh_allowed_signers_file=signers))
    source = runner.GitSource(spec, state_dir)

    async def scenario() -> None:
        assert good == (await source.fetch()).revision
        signkit.unsign(remote)
        remote.write("agent.yaml", "kind: Agent\nmetadata: {name: evil}\n")
        bad = remote.commit("unsigned")
        with pytest.raises(SourceError, match=f"commit {bad} rejected: the commit is not signed"):
            await source.fetch()
        assert source.last_good is not None
        assert good == source.last_good.revision
        status = source.status()
        assert status.stale
        assert {"commit": bad, "reason": "the commit is not signed", "object": "commit"} == status.rejected
        assert status.provenance is not None
        assert good == status.provenance["commit"]

    asyncio.run(scenario())


def test_untrusted_ssh_key_rejected_with_its_fingerprint(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    signkit.sign_with_ssh(remote, keys["mallory"])
    head = remote.commit("by mallory")
    signers = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    why = rejected(mirror(spec_of(remote, ssh_allowed_signers_file=signers), state_dir))
    assert head == why.commit
    assert why.reason.startswith("key not trusted")
    assert signkit.fingerprint(keys["mallory"]) == why.fingerprint


def test_ssh_signer_not_in_signers(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    signkit.sign_with_ssh(remote, keys["bob"])
    remote.commit("by bob")
    signers = allowed(
        tmp_path / "allowed",
        f"{ALICE} {signkit.public(keys['alice'])}",
        f"{BOB} {signkit.public(keys['bob'])}",
    )
    why = rejected(mirror(spec_of(remote, ssh_allowed_signers_file=signers, signers=[ALICE]), state_dir))
    assert f"signed by {BOB}, which is not in signers" == why.reason
    assert BOB == why.signer
    assert signkit.fingerprint(keys["bob"]) == why.fingerprint
    snap = mirror(spec_of(remote, ssh_allowed_signers_file=signers, signers=[ALICE, BOB]), state_dir).sync(
        None
    )
    assert snap.provenance is not None
    assert BOB == snap.provenance["signer"]


def test_ssh_key_outside_its_validity_window(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("signed by a key that expired")
    signers = allowed(
        tmp_path / "allowed", f'{ALICE} valid-before="20200101" {signkit.public(keys["alice"])}'
    )
    why = rejected(mirror(spec_of(remote, ssh_allowed_signers_file=signers), state_dir))
    assert "valid-after/valid-before" in why.reason
    assert signkit.fingerprint(keys["alice"]) == why.fingerprint


def test_tampered_commit_object_rejected(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """A commit rewritten with its gpgsig header kept (another tree, same signature) is refused."""
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.write("agent.yaml", "kind: Agent\nmetadata: {name: original}\n")
    remote.commit("signed")
    remote.write("agent.yaml", "kind: Agent\nmetadata: {name: injected}\n")
    signkit.unsign(remote)
    other = remote.commit("a tree to steal", push=False)
    raw = subprocess.run(
        ["git", "cat-file", "commit", "HEAD~1"], cwd=remote.work, capture_output=True, check=True
    ).stdout
    tree = remote.git("rev-parse", f"{other}^{{tree}}")
    forged_raw = raw.replace(raw.split(b"\n", 1)[0], f"tree {tree}".encode(), 1)
    assert signatures.commit_signature(forged_raw) is not None  # the signature travels along
    forged = (
        subprocess.run(
            ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
            cwd=remote.work,
            input=forged_raw,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    remote.git("update-ref", "refs/heads/main", forged)
    remote.push(force=True)
    signers = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    why = rejected(mirror(spec_of(remote, ssh_allowed_signers_file=signers), state_dir))
    assert forged == why.commit
    assert why.reason.startswith("bad signature")
    assert signkit.fingerprint(keys["alice"]) == why.fingerprint


def test_signed_merge_commit_applies(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Only the commit to apply must be signed: a signed merge of unsigned work is accepted."""
    remote.git("checkout", "-q", "-b", "feature")
    remote.write("feature.yaml", "kind: Agent\nmetadata: {name: feature}\n")
    remote.commit("unsigned feature work", push=False)
    remote.git("checkout", "-q", "main")
    remote.write("other.yaml", "kind: Agent\nmetadata: {name: other}\n")
    remote.commit("unsigned main work", push=False)
    signkit.sign_with_ssh(remote, keys["alice"])
    git("merge", "-q", "--no-ff", "-S", "-m", "merge feature", "feature", cwd=remote.work)
    remote.push()
    head = remote.head()
    assert 2 == len(remote.git("rev-list", "--parents", "-n", "1", "HEAD").split()) - 1
    signers = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    snap = mirror(spec_of(remote, ssh_allowed_signers_file=signers), state_dir).sync(None)
    assert head == snap.revision
    assert {"feature.yaml", "other.yaml"} <= set(snap.files)


def test_key_file_missing_fails_closed_and_is_reread(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("signed")
    path = tmp_path / "allowed"
    m = mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir)
    with pytest.raises(SourceError, match=f"cannot read verify.ssh_allowed_signers_file {path}"):
        m.sync(None)
    allowed(path, f"{BOB} {signkit.public(keys['bob'])}")
    assert rejected(m).reason.startswith("key not trusted")
    allowed(path, f"{ALICE} {signkit.public(keys['alice'])}")  # rotation: read again on the next fetch
    assert m.sync(None).provenance is not None


# The allowed_signers options, compared with git's own verdict (`git verify-commit`).
_VARIANTS = {
    "plain": "{who} {key}",
    "namespace git": '{who} namespaces="git" {key}',
    "namespace file only": '{who} namespaces="file" {key}',
    "valid-before past": '{who} valid-before="20000101" {key}',
    "valid-after future": '{who} valid-after="20990101" {key}',
    "valid window now": '{who} valid-after="20000101",valid-before="20990101" {key}',
    "principal pattern": "*@example.com {key}",
    "negated pattern": "*@example.com,!alice@example.com {key}",
    "other key": "{who} {other}",
    "cert-authority for a plain key": "{who} cert-authority {key}",
}


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_allowed_signers_agrees_with_git_verify_commit(
    variant: str, remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("signed")
    line = _VARIANTS[variant].format(
        who=ALICE, key=signkit.public(keys["alice"]), other=signkit.public(keys["bob"])
    )
    path = allowed(tmp_path / "allowed", line)
    git_says = (
        subprocess.run(
            ["git", "-c", f"gpg.ssh.allowedSignersFile={path}", "verify-commit", "HEAD"],
            cwd=remote.work,
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir).sync(None)
        ours = True
    except verify.SignatureRejected:
        ours = False
    assert git_says == ours, variant


def test_ssh_certificate_signed_by_a_trusted_authority(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """`cert-authority`: a key certified by the CA for the principal is trusted (as by git)."""
    ca = signkit.ssh_key(tmp_path / "ca", "ca")
    user = signkit.ssh_key(tmp_path / "user", "carol")
    signkit.run("ssh-keygen", "-q", "-s", str(ca), "-I", "carol", "-n", "carol@example.com", f"{user}.pub")
    signkit.sign_with_ssh(remote, Path(f"{user}-cert.pub"))
    remote.git("config", "gpg.ssh.program", "ssh-keygen")
    remote.commit("signed with a certificate")
    path = allowed(tmp_path / "allowed", f"*@example.com cert-authority {signkit.public(ca)}")
    snap = mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir).sync(None)
    assert snap.provenance is not None
    assert "carol@example.com" == snap.provenance["signer"]  # the principal the certificate names
    strict = mirror(spec_of(remote, ssh_allowed_signers_file=path, signers=["dave@example.com"]), state_dir)
    assert "not in signers" in rejected(strict).reason
    only_carol = mirror(
        spec_of(remote, ssh_allowed_signers_file=path, signers=["carol@example.com"]), state_dir
    ).sync(None)
    assert only_carol.provenance is not None
    assert "carol@example.com" == only_carol.provenance["signer"]


# -- tags ---------------------------------------------------------------------------------------


def test_tag_modes(remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    path = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    head = remote.head()  # unsigned (the fixture's commit)
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.git("tag", "-s", "-m", "release 1", "v1")
    remote.git("tag", "--no-sign", "v1-light")
    remote.push(ref="v1")
    remote.push(ref="v1-light")
    tag = GitRef(tag="v1")
    snap = mirror(spec_of(remote, tag, mode="tag", ssh_allowed_signers_file=path), state_dir).sync(None)
    assert head == snap.revision
    assert snap.provenance is not None
    assert ("tag", ALICE) == (snap.provenance["signed"], snap.provenance["signer"])
    both = rejected(
        mirror(spec_of(remote, tag, mode="tag_and_head", ssh_allowed_signers_file=path), state_dir)
    )
    assert ("commit", "the commit is not signed") == (both.object, both.reason)
    light = mirror(
        spec_of(remote, GitRef(tag="v1-light"), mode="tag", ssh_allowed_signers_file=path), state_dir
    )
    assert "lightweight tag" in rejected(light).reason


def test_tag_and_head_both_signed(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    path = allowed(
        tmp_path / "allowed",
        f"{ALICE} {signkit.public(keys['alice'])}",
        f"{BOB} {signkit.public(keys['bob'])}",
    )
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("signed by alice")
    signkit.sign_with_ssh(remote, keys["bob"])
    remote.git("tag", "-s", "-m", "release 2", "v2")
    remote.push(ref="v2")
    spec = spec_of(remote, GitRef(tag="v2"), mode="tag_and_head", ssh_allowed_signers_file=path)
    snap = mirror(spec, state_dir).sync(None)
    assert snap.provenance is not None
    assert (ALICE, BOB) == (snap.provenance["signer"], snap.provenance["tag_signer"])
    only_alice = spec_of(
        remote, GitRef(tag="v2"), mode="tag_and_head", ssh_allowed_signers_file=path, signers=[ALICE]
    )
    why = rejected(mirror(only_alice, state_dir))
    assert ("tag", BOB) == (why.object, why.signer)


# -- OpenPGP ------------------------------------------------------------------------------------


def pgp_case(
    remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any], who: str, **args: Any
) -> Any:
    email = {"alice": ALICE}.get(who, f"{who}@example.com")
    fake = signkit.FAKE_PAST if who == "eve" else None
    signkit.sign_with_gpg(remote, pgp["home"], email, fake_time=fake)
    remote.write("agent.yaml", f"kind: Agent\nmetadata: {{name: by-{who}}}\n")
    head = remote.commit(f"signed by {who}")
    trusted = tmp_path / "trusted.asc"
    trusted.write_bytes(pgp["trusted"])
    return head, mirror(spec_of(remote, openpgp_keys_file=trusted, **args), state_dir)


def test_openpgp_signed_commit_applies(
    remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any]
) -> None:
    head, m = pgp_case(remote, state_dir, tmp_path, pgp, "alice", signers=[ALICE])
    snap = m.sync(None)
    assert head == snap.revision
    assert snap.provenance is not None
    assert (ALICE, pgp["fprs"]["alice"], "openpgp") == (
        snap.provenance["signer"],
        snap.provenance["fingerprint"],
        snap.provenance["format"],
    )


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("eve", "key expired"),
        ("rex", "key revoked"),
        ("mallory", "key not trusted (not in openpgp_keys_file)"),
        ("carol", "signed by carol@example.com, which is not in signers"),
    ],
)
def test_openpgp_refused(
    who: str, reason: str, remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any]
) -> None:
    head, m = pgp_case(remote, state_dir, tmp_path, pgp, who, signers=[ALICE])
    why = rejected(m)
    assert (head, reason) == (why.commit, why.reason)
    assert pgp["fprs"][who].endswith(why.fingerprint) or pgp["fprs"][who] == why.fingerprint


def test_openpgp_signature_without_openpgp_keys(
    remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any], keys: dict[str, Path]
) -> None:
    signkit.sign_with_gpg(remote, pgp["home"], ALICE)
    remote.commit("signed with gpg")
    path = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    why = rejected(mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir))
    assert "OpenPGP signature but no openpgp_keys_file" in why.reason


# -- parsing and config -------------------------------------------------------------------------


def test_commit_payload_strips_every_signature_header() -> None:
    raw = (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"author A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n"
        b"gpgsig -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n"
        b"gpgsig-sha256 -----BEGIN PGP SIGNATURE-----\n def\n -----END PGP SIGNATURE-----\n"
        b"\nmessage\n gpgsig in the message stays\n"
    )
    signed = signatures.commit_signature(raw)
    assert signed is not None
    assert b"-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n" == signed.signature
    assert (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"author A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n"
        b"\nmessage\n gpgsig in the message stays\n"
    ) == signed.payload
    assert "ssh" == signed.format
    assert signatures.commit_signature(b"tree x\n\nunsigned\n") is None


def test_config_needs_a_key_file_and_a_tag_for_tag_modes(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="verify needs a key file"):
        GitVerify(mode="head")
    with pytest.raises(pydantic.ValidationError, match="track a tag"):
        GitSourceSpec(url="file:///r", verify=GitVerify(mode="tag", openpgp_keys_file=tmp_path / "k.asc"))
    ok = GitSourceSpec(
        url="file:///r", ref=GitRef(tag="v1"), verify=GitVerify(mode="tag", openpgp_keys_file=tmp_path / "k")
    )
    assert ok.verify is not None
    assert "tag" == ok.verify.mode


# -- the run loop ---------------------------------------------------------------------------------


class _Scripted(runner._BaseSource):
    """A source whose fetches return or raise scripted items, then set `stop`."""

    type = "git"

    def __init__(self, items: list[str | verify.Rejection], stop: Any) -> None:
        spec = SourceSpec(name="main", directory=DirectorySourceSpec(path=Path("/nonexistent")))
        super().__init__(
            spec=spec, interval=0.001, retry=backoff.Backoff(base=0.001, jitter=0.0), clock=lambda: 0.0
        )
        self.items = items
        self.stop = stop

    @property
    def location(self) -> str:
        return "scripted"

    def _time_limit(self) -> float:
        return 10.0

    async def _produce(self, previous: Any) -> Any:
        if not self.items:
            self.stop.set()
            return previous
        item = self.items.pop(0)
        if isinstance(item, verify.Rejection):
            raise verify.SignatureRejected(item)
        return snapshot.Snapshot.build(source=self.name, files={}, revision=Revision(item))


def test_each_rejected_commit_is_reported_once() -> None:
    """The same commit refused on every poll is audited once; a new one (or the same after a good
    revision in between) again."""
    a = verify.Rejection("a" * 40, "the commit is not signed")
    b = verify.Rejection("b" * 40, "bad signature", "SHA256:x")

    async def scenario() -> list[str]:
        stop = asyncio.Event()
        source = _Scripted(["good", a, a, a, b, b, "good", b], stop)
        seen: list[str] = []

        async def on_snapshot(snap: Any) -> None:
            pass

        async def on_rejected(name: str, details: Any) -> None:
            seen.append(f"{name}:{details['commit'][0]}:{details['reason']}")

        await source.run(on_snapshot=on_snapshot, stop=stop, on_rejected=on_rejected)
        return seen

    assert [
        "main:a:the commit is not signed",
        "main:b:bad signature",
        "main:b:bad signature",
    ] == asyncio.run(scenario())


# -- review fixes: revocations, tag names, rollback, untrusted text, signers, certs, tool failures --


@pytest.mark.parametrize("order", ["revocation, key", "key, other key, revocation"])
def test_openpgp_revocation_anywhere_in_the_file_revokes(
    order: str, remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any]
) -> None:
    """`cat rev.asc key.asc`: in one import, gpg cannot apply a revocation read before its key;
    after another key, it reads it as a signature on that key (and drops it)."""
    home, fprs = pgp["home"], pgp["fprs"]
    signkit.sign_with_gpg(remote, home, "rex@example.com")
    remote.commit("signed by rex")
    trusted = tmp_path / "trusted.asc"
    rex, rev, alice = home.export(fprs["rex"]), home.revocation(fprs["rex"]), home.export(fprs["alice"])
    trusted.write_bytes(rev + rex if order == "revocation, key" else rex + alice + rev)
    why = rejected(mirror(spec_of(remote, openpgp_keys_file=trusted), state_dir))
    assert "key revoked" == why.reason


def test_openpgp_revocation_of_a_key_not_in_the_file_fails_closed(
    remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any]
) -> None:
    home, fprs = pgp["home"], pgp["fprs"]
    signkit.sign_with_gpg(remote, home, ALICE)
    remote.commit("signed by alice")
    trusted = tmp_path / "trusted.asc"
    trusted.write_bytes(home.export(fprs["alice"]) + home.revocation(fprs["mallory"]))
    m = mirror(spec_of(remote, openpgp_keys_file=trusted), state_dir)
    with pytest.raises(SourceError, match=r"revocation certificate .* could not be applied") as caught:
        m.sync(None)
    assert not isinstance(caught.value, verify.SignatureRejected)


def test_tag_object_named_otherwise_is_refused(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Force-pushing refs/tags/prod to the signed `staging` tag object does not deploy it."""
    path = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("release")
    remote.git("tag", "-s", "-m", "prod", "prod")
    remote.push(ref="prod")
    spec = spec_of(remote, GitRef(tag="prod"), mode="tag", ssh_allowed_signers_file=path)
    snap = mirror(spec, state_dir).sync(None)
    assert snap.provenance is not None
    assert "prod" == snap.provenance["tag"]
    remote.commit("staging work")
    remote.git("tag", "-s", "-m", "staging", "staging")
    remote.push(ref="staging")
    remote.git("push", "-q", "--force", "origin", "refs/tags/staging:refs/tags/prod")
    why = rejected(mirror(spec, state_dir), snap)
    assert ("tag", "the tag object is named 'staging', not 'prod'") == (why.object, why.reason)
    assert signkit.fingerprint(keys["alice"]) == why.fingerprint


def _signed_history(remote: Remote, keys: dict[str, Path], tmp_path: Path) -> tuple[str, str, Path]:
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.write("agent.yaml", "kind: Agent\nmetadata: {name: old}\n")
    old = remote.commit("old, signed")
    remote.write("agent.yaml", "kind: Agent\nmetadata: {name: new}\n")
    new = remote.commit("new, signed")
    return old, new, allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")


def test_rollback_to_an_older_signed_commit_is_refused(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    old, new, path = _signed_history(remote, keys, tmp_path)
    m = mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir)
    assert new == m.sync(None, applied=new).revision
    remote.git("reset", "-q", "--hard", old)
    remote.push(force=True)
    why = rejected_applied(m, new)
    assert (old, f"not a fast-forward of {new}") == (why.commit, why.reason)
    assert signkit.fingerprint(keys["alice"]) == why.fingerprint
    # Opted out: the older signed commit applies.
    lax = mirror(spec_of(remote, ssh_allowed_signers_file=path, allow_rollback=True), state_dir)
    assert old == lax.sync(None, applied=new).revision


def rejected_applied(m: git_mod.Mirror, applied: str) -> verify.Rejection:
    with pytest.raises(verify.SignatureRejected) as caught:
        m.sync(None, applied=applied)
    return caught.value.rejection


def test_fast_forward_and_merge_of_the_applied_head_apply(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    old, new, path = _signed_history(remote, keys, tmp_path)
    m = mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir)
    assert new == m.sync(None, applied=old).revision  # a fast-forward
    remote.git("checkout", "-q", "-b", "feature", old)
    remote.write("feature.yaml", "kind: Agent\nmetadata: {name: feature}\n")
    remote.commit("feature work", push=False)
    remote.git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "-S", "-m", "merge feature", "feature", cwd=remote.work)
    remote.push()
    merged = remote.head()
    assert merged == m.sync(None, applied=new).revision


def test_rollback_refused_through_the_source_and_shown_in_status(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The owner tells the source what was applied (also the revision restored at start)."""
    old, new, path = _signed_history(remote, keys, tmp_path)
    source = runner.GitSource(
        SourceSpec(name="main", git=spec_of(remote, ssh_allowed_signers_file=path)), state_dir
    )
    source.mark_applied(Revision(new))  # as restored from the state dir: not verified by this process
    status = source.status()
    assert {"commit": new, "verified": "not re-verified since restart"} == status.provenance
    remote.git("reset", "-q", "--hard", old)
    remote.push(force=True)

    async def scenario() -> None:
        with pytest.raises(SourceError, match=f"commit {old} rejected: not a fast-forward of {new}"):
            await source.fetch()

    asyncio.run(scenario())
    assert source.status().rejected is not None
    assert f"not a fast-forward of {new}" == source.status().rejected["reason"]  # type: ignore[index]


def test_untrusted_signature_text_is_cut_and_printable() -> None:
    """The SSHSIG namespace and the tag name are the signer's text: never quoted whole or raw."""

    def string(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    key = string(b"ssh-ed25519") + string(b"\x01" * 32)
    namespace = ("\x1b[31mevil\n" + "A" * 200_000).encode()
    blob = (
        b"SSHSIG" + struct.pack(">I", 1) + string(key) + string(namespace) + string(b"") + string(b"sha512")
    )
    armored = base64.b64encode(blob).decode()
    sig = (
        "-----BEGIN SSH SIGNATURE-----\n"
        + "\n".join(armored[i : i + 70] for i in range(0, len(armored), 70))
        + "\n-----END SSH SIGNATURE-----"
    )
    raw = (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n"
        + b"gpgsig "
        + sig.replace("\n", "\n ").encode()
        + b"\n\nm\n"
    )
    spec = GitVerify(ssh_allowed_signers_file=Path("/nonexistent"))
    keys = verify.Keys(allowed_signers=b"x ssh-ed25519 AAAA\n", openpgp=None)
    with pytest.raises(verify.SignatureRejected) as caught:
        verify.check(spec, keys, commit="c" * 40, commit_raw=raw)
    for text in (caught.value.rejection.message(), *caught.value.rejection.as_details().values()):
        assert len(text) < 250, text[:300]
        assert text.isascii(), text[:300]
        assert text.isprintable(), text[:300]
    assert "namespace '?[31mevil?AAAA" in caught.value.rejection.reason


def test_untrusted_tag_name_is_cut_and_printable(keys: dict[str, Path], tmp_path: Path) -> None:
    """A validly signed tag object whose name is terminal escapes and 5000 characters."""
    payload = (
        b"object "
        + b"c" * 40
        + b"\ntype commit\ntag \x1b]0;x\x07"
        + b"B" * 5000
        + b"\ntagger A <a@x> 1 +0000\n\nm\n"
    )
    (tmp_path / "tag").write_bytes(payload)
    signkit.run(
        "ssh-keygen", "-q", "-Y", "sign", "-f", str(keys["alice"]), "-n", "git", str(tmp_path / "tag")
    )
    tag_raw = payload + (tmp_path / "tag.sig").read_bytes()
    path = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    spec = GitVerify(mode="tag", ssh_allowed_signers_file=path)
    with pytest.raises(verify.SignatureRejected) as caught:
        verify.check(
            spec, verify.load_keys(spec), commit="c" * 40, commit_raw=b"", tag="prod", tag_raw=tag_raw
        )
    why = caught.value.rejection
    assert why.reason.startswith("the tag object is named '?]0;x?BBB")
    assert why.reason.endswith("...', not 'prod'")
    for text in (why.message(), *why.as_details().values()):
        assert len(text) < 250, text[:300]
        assert text.isascii(), text[:300]
        assert text.isprintable(), text[:300]


def test_wildcard_principal_is_recorded_as_what_matched(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """`*@example.com <alice's key>` with `signers: [bob]`: the record says the pattern, not bob."""
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("signed by alice")
    path = allowed(tmp_path / "allowed", f"*@example.com {signkit.public(keys['alice'])}")
    snap = mirror(spec_of(remote, ssh_allowed_signers_file=path, signers=[BOB]), state_dir).sync(None)
    assert snap.provenance is not None
    assert "*@example.com" == snap.provenance["signer"]


def test_certificate_fingerprint_is_the_inner_keys_as_git_shows_it(
    remote: Remote, state_dir: Path, tmp_path: Path
) -> None:
    ca = signkit.ssh_key(tmp_path / "ca", "ca")
    user = signkit.ssh_key(tmp_path / "user", "carol")
    signkit.run("ssh-keygen", "-q", "-s", str(ca), "-I", "carol", "-n", "carol@example.com", f"{user}.pub")
    signkit.sign_with_ssh(remote, Path(f"{user}-cert.pub"))
    remote.commit("signed with a certificate")
    path = allowed(tmp_path / "allowed", f"*@example.com cert-authority {signkit.public(ca)}")
    shown = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={path}", "verify-commit", "HEAD"],
        cwd=remote.work,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    inner = signkit.run("ssh-keygen", "-l", "-f", f"{user}-cert.pub").split()[1]
    assert inner == signkit.fingerprint(user)
    assert f"key {inner}" in shown
    snap = mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir).sync(None)
    assert snap.provenance is not None
    assert inner == snap.provenance["fingerprint"]
    assert signkit.fingerprint(ca) == snap.provenance["ca_fingerprint"]


def _fake_tool(bindir: Path, name: str, script: str) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / name).write_text("#!/bin/sh\n" + script)
    (bindir / name).chmod(0o755)


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("kill -SEGV $$\n", "killed by signal"),
        ('echo "unknown option -- Y" >&2\nexit 1\n', "exited with 1: unknown option -- Y"),
    ],
)
def test_ssh_keygen_failure_is_a_source_error_not_a_bad_signature(
    script: str,
    said: str,
    remote: Remote,
    state_dir: Path,
    keys: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.commit("signed")
    path = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    _fake_tool(tmp_path / "bin", "ssh-keygen", script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(SourceError, match=f"verifier failed: ssh-keygen {said}") as caught:
        mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir).sync(None)
    assert not isinstance(caught.value, verify.SignatureRejected)


def test_gpg_crash_while_verifying_is_a_source_error(
    remote: Remote, state_dir: Path, tmp_path: Path, pgp: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    signkit.sign_with_gpg(remote, pgp["home"], ALICE)
    remote.commit("signed by alice")
    trusted = tmp_path / "trusted.asc"
    trusted.write_bytes(pgp["trusted"])
    real = shutil.which("gpg")
    _fake_tool(
        tmp_path / "bin",
        "gpg",
        f'for a in "$@"; do [ "$a" = --verify ] && kill -KILL $$; done\nexec {real} "$@"\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(SourceError, match="verifier failed: gpg killed by signal") as caught:
        mirror(spec_of(remote, openpgp_keys_file=trusted), state_dir).sync(None)
    assert not isinstance(caught.value, verify.SignatureRejected)


def test_unsigned_merge_carrying_a_mergetag_is_unsigned(
    remote: Remote, state_dir: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Merging a signed tag copies its signature into a `mergetag` header: not the commit's."""
    signkit.sign_with_ssh(remote, keys["alice"])
    remote.git("checkout", "-q", "-b", "feature")
    remote.commit("feature, signed", push=False)
    remote.git("tag", "-s", "-m", "signed feature", "feature-v1")
    remote.git("checkout", "-q", "main")
    signkit.unsign(remote)
    git("merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "unsigned merge", "feature-v1", cwd=remote.work)
    remote.push()
    raw = subprocess.run(
        ["git", "cat-file", "commit", "HEAD"], cwd=remote.work, capture_output=True, check=True
    ).stdout
    assert b"\nmergetag object " in raw
    path = allowed(tmp_path / "allowed", f"{ALICE} {signkit.public(keys['alice'])}")
    why = rejected(mirror(spec_of(remote, ssh_allowed_signers_file=path), state_dir))
    assert (remote.head(), "the commit is not signed") == (why.commit, why.reason)
