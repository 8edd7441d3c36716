"""The pygit2 adapter: a bare mirror per git source, and snapshots read from its objects.

Owns everything that talks to libgit2 (the only module importing pygit2) and translates
its errors into `SourceError` with redacted messages. One `Mirror` per source:

- lives at `state_dir/sources/<name>.git`, a bare repository with no remote in its config
  (an anonymous remote per fetch, so no URL and no credential is ever written to disk);
- asks the remote for the tracked ref first (`list_heads`, i.e. ls-remote) and skips all
  work when it has not moved: no fetch, no tree walk, the previous snapshot object returned;
- fetches only the tracked ref (`+refs/heads/B:refs/aofd/heads/B`, `+refs/tags/T:refs/aofd/tags/T`),
  shallow (depth 1) over network transports; libgit2's `file://` transport does not do
  shallow fetches, so local remotes fetch full history;
- commit pins: if the commit is already in the mirror, nothing touches the network
  (a commit id names immutable content). Otherwise, with `ref: {commit, branch}`, the branch
  is fetched and the commit must be reachable from it; with `ref: {commit}` alone the
  commit id itself is fetched (servers allow this for reachable commits in protocol v2 or
  with `uploadpack.allowReachableSHA1InWant`), falling back to fetching all branch heads
  and looking the commit up there;
- reads the tree straight from the object database at the commit: no work tree, no
  checkout, hence no hooks, no submodules, no LFS smudge, no symlink following. Tree entries
  of mode symlink (120000) or gitlink (160000) are refused as issues; the caps of `Limits`
  are checked from blob headers before reading; a blob whose id equals the previous
  snapshot's is handed over as the previous `SourceFile` object without reading it;
- reads incrementally when the previous snapshot's commit is in the mirror: only entries
  whose ids differ between the two trees are visited (equal subtrees are skipped unread),
  the rest of the previous snapshot is reused (the same `files` mapping if no file changed);
  a tree-wide cap, a commit the mirror lacks or a missing path means a full walk;
- force-pushes are followed (refspecs are forced; the new commit is the truth, an old
  commit that vanished is never looked up);
- a corrupt mirror (truncated pack, missing object, stale lock) is deleted and re-cloned
  once within the same call; if that fails too, the error is reported;
- with `verify:`, the key files are read before anything else (missing: fail closed) and a
  new commit (and the tracked tag object) is checked by `aofd.source.verify` before its tree
  is read; a revision that fails raises `verify.SignatureRejected` and is never returned.
  Unless `verify.allow_rollback`, a new commit must also descend from the one applied (`sync`'s
  `applied`, which the owner takes from the state dir): a force-push back to an older signed
  commit, or a tag moved back, is refused as "not a fast-forward of <applied>". A commit pin is
  exempt (the daemon config, not the remote, chose it), and so is the first revision when
  nothing was ever applied. Such sources fetch full history (never shallow), so that an
  ancestor is never missing; a shallow mirror left from before is re-cloned once.

Auth: credentials are read from files on every fetch (rotation works) through
`RemoteCallbacks.credentials`: HTTPS token (`UserPass(username or "x-access-token", token)`),
username/password, or an SSH key pair. SSH host keys are checked in `certificate_check`
against the configured known_hosts file with `aofd.source.known_hosts` (an unknown host is
refused, never added). pygit2 1.21 passes `None` for the certificate, so the host key is
read from libgit2's `git_cert_hostkey` that pygit2's C callback holds (one frame up), at
libgit2 >= 1.2 offsets, and cross-checked against libgit2's own SHA-1 of it; anything
unexpected refuses the host (fail closed).

Everything here is synchronous and blocking; `aofd.source.runner` runs it in a thread with
a timeout. A `Mirror` admits one call at a time (`threading.Lock`); a call abandoned after
a timeout keeps the lock until libgit2 returns, and later calls fail fast meanwhile.

Must not: check out a work tree, write credentials anywhere, put an unredacted URL or a
secret into a message, import asyncio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
import shutil
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pygit2
import pygit2.enums
from pygit2.ffi import ffi

from aofd.errors import Issue, SourceError
from aofd.resources import snapshot
from aofd.resources.ids import Revision
from aofd.settings import GitAuth, GitSourceSpec
from aofd.source import known_hosts, redact, rules, verify

_MODE_TREE = 0o040000
_MODE_BLOB = 0o100644
_MODE_EXEC = 0o100755
_MODE_LINK = 0o120000
_MODE_GITLINK = 0o160000
DEFAULT_TOKEN_USERNAME = "x-access-token"  # noqa: S105 - a username (GitHub's convention), not a secret

# libgit2 messages that mean the local mirror, not the remote, is broken.
_CORRUPT = re.compile(
    r"corrupt|packfile|pack file|inflate|failed to read|object not found|could not find|"
    r"missing|invalid object|\.lock|failed to lock|bad tree|odb|short read|truncated|"
    r"index file|not a git repository|could not find repository",
    re.IGNORECASE,
)
_TREE_CAPS = frozenset({"too-many-files", "tree-too-large"})
_AUTH = re.compile(r"authenticat|credential|401|403|unauthori[sz]ed|forbidden|permission denied", re.I)


class _Refused(Exception):
    """Raised from a callback to abort the libgit2 call; `message` is already redacted."""


@dataclasses.dataclass(slots=True)
class Stats:
    """Counters of the work a mirror did (tests and metrics read them)."""

    ls_remotes: int = 0
    fetches: int = 0
    trees_read: int = 0
    blobs_read: int = 0
    rebuilds: int = 0
    incremental_reads: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Tracked:
    """What to fetch for a `GitRef`: the remote ref, where it lands, and an optional pin."""

    remote_ref: str | None
    local_ref: str | None
    commit: str | None

    @classmethod
    def of(cls, spec: GitSourceSpec) -> _Tracked:
        ref = spec.ref
        if ref.tag:
            return cls(f"refs/tags/{ref.tag}", f"refs/aofd/tags/{ref.tag}", ref.commit)
        if ref.commit and not ref.branch:
            return cls(None, None, ref.commit)
        branch = ref.branch or "main"
        return cls(f"refs/heads/{branch}", f"refs/aofd/heads/{branch}", ref.commit)


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials from files (read now, once per call) and known_hosts host-key checking."""

    def __init__(self, *, auth: GitAuth | None, url: str) -> None:
        super().__init__()
        self.auth = auth
        parsed = urllib.parse.urlsplit(url)
        self.scheme = parsed.scheme
        self.host = parsed.hostname or ""
        self.port = parsed.port
        self.url_username = urllib.parse.unquote(parsed.username) if parsed.username else None
        self.secrets: list[str] = [urllib.parse.unquote(p) for p in (parsed.username, parsed.password) if p]
        self.credential_calls = 0
        self.host_check: str | None = None  # why a host key was refused
        self._known: tuple[known_hosts.Entry, ...] | None = None
        self._read_files()

    def _read_files(self) -> None:
        """Read every secret file now, so a rotated token is used and can be scrubbed."""
        self.username: str | None = None
        self.secret: str | None = None
        self.passphrase: str | None = None
        auth = self.auth
        if auth is None:
            return
        self.username = auth.username or _read_secret(auth.username_file)
        if auth.token_file is not None:
            self.secret = _read_secret(auth.token_file)
        elif auth.password_file is not None:
            self.secret = _read_secret(auth.password_file)
        self.passphrase = _read_secret(auth.ssh_passphrase_file)
        self.secrets += [s for s in (self.secret, self.passphrase) if s]
        if auth.known_hosts_file is not None:
            try:
                text = auth.known_hosts_file.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise SourceError(
                    f"cannot read known_hosts file {auth.known_hosts_file}: {exc.strerror}", retry_after=30.0
                ) from exc
            self._known = known_hosts.parse(text)

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        """Hand libgit2 one set of credentials; a second request means they were rejected."""
        self.credential_calls += 1
        if self.credential_calls > 1:
            raise _Refused("authentication failed: the remote rejected the configured credentials")
        allowed = pygit2.enums.CredentialType(allowed_types)
        auth = self.auth
        ssh_key = auth.ssh_key_file if auth is not None else None
        if ssh_key is not None and allowed & pygit2.enums.CredentialType.SSH_KEY:
            user = username_from_url or self.username or "git"
            public = auth.ssh_public_key_file if auth is not None else None
            return pygit2.Keypair(user, str(public) if public else None, str(ssh_key), self.passphrase or "")
        if self.secret is not None and allowed & pygit2.enums.CredentialType.USERPASS_PLAINTEXT:
            default = DEFAULT_TOKEN_USERNAME if auth is not None and auth.token_file else None
            user = self.username or self.url_username or default or "git"
            return pygit2.UserPass(user, self.secret)
        if allowed & pygit2.enums.CredentialType.USERNAME:
            return pygit2.Username(username_from_url or self.username or "git")
        raise _Refused("authentication required, but no usable credentials are configured for this source")

    def certificate_check(self, certificate: Any, valid: bool, host: bytes) -> bool:
        """TLS: libgit2's verdict stands. SSH: the host key must be listed in known_hosts."""
        if self.scheme != "ssh":
            if not valid:
                self.host_check = "TLS certificate of the remote is not valid"
            return bool(valid)
        if self._known is None:
            self.host_check = "ssh remotes need auth.known_hosts_file (unknown hosts are never accepted)"
            return False
        key = _presented_host_key()
        if key is None:
            self.host_check = "could not read the ssh host key presented by the remote"
            return False
        name = host.decode("utf-8", "replace") or self.host
        verdict = known_hosts.check(self._known, host=name, port=self.port, key=key)
        if verdict is known_hosts.Verdict.TRUSTED:
            return True
        self.host_check = {
            known_hosts.Verdict.UNKNOWN_HOST: f"ssh host {known_hosts.host_name(name, self.port)} "
            "is not in the known_hosts file (never auto-accepted)",
            known_hosts.Verdict.MISMATCH: f"ssh host key of {known_hosts.host_name(name, self.port)} "
            "does not match the known_hosts file",
            known_hosts.Verdict.REVOKED: "ssh host key is marked @revoked in the known_hosts file",
        }[verdict]
        return False


def _read_secret(path: Path | None) -> str | None:
    """A secret file's content without the trailing newline, or None if not configured."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise SourceError(f"cannot read credential file {path}: {exc.strerror}", retry_after=30.0) from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"credential file {path} is not UTF-8 text", retry_after=30.0) from exc


# Layout of libgit2 (>= 1.2) `git_cert_hostkey`, which pygit2's cdef declares only in part.
_CERT_HOSTKEY_LIBSSH2 = 2
_SSH_SHA1, _SSH_SHA256, _SSH_RAW = 1 << 1, 1 << 2, 1 << 3
_OFF_TYPE, _OFF_SHA1, _OFF_SHA256, _OFF_RAW_PTR, _OFF_RAW_LEN = 4, 24, 44, 80, 88


def _presented_host_key() -> known_hosts.PresentedKey | None:
    """The host key libgit2 is asking about, taken from pygit2's C callback frame.

    pygit2 (1.21) calls `certificate_check(None, valid, host)` from its cffi callback
    `_certificate_check_cb(cert_i, ...)`; `cert_i` is libgit2's `git_cert *`. Returns None
    (the caller refuses the host) if the frame, the cert type or the layout is not what we
    expect: the raw key must hash to libgit2's own SHA-1 of it.
    """
    frame = inspect.currentframe()
    cert: Any = None
    try:
        depth = 0
        while frame is not None and depth < 6:
            if frame.f_code.co_name == "_certificate_check_cb" and "cert_i" in frame.f_locals:
                cert = frame.f_locals["cert_i"]
                break
            frame = frame.f_back
            depth += 1
    finally:
        del frame
    if cert is None or not isinstance(cert, ffi.CData):
        return None
    try:
        base = ffi.cast("unsigned char *", cert)
        if ffi.cast("int *", base)[0] != _CERT_HOSTKEY_LIBSSH2:
            return None
        kinds = ffi.cast("int *", base + _OFF_TYPE)[0]
        sha1 = bytes(ffi.buffer(base + _OFF_SHA1, 20)) if kinds & _SSH_SHA1 else None
        sha256 = bytes(ffi.buffer(base + _OFF_SHA256, 32)) if kinds & _SSH_SHA256 else None
        if kinds & _SSH_RAW and sha1 is not None:
            raw = ffi.cast("char **", base + _OFF_RAW_PTR)[0]
            length = int(ffi.cast("size_t *", base + _OFF_RAW_LEN)[0])
            if raw != ffi.NULL and 0 < length < 65536:
                blob = bytes(ffi.buffer(raw, length))
                if hashlib.sha1(blob, usedforsecurity=False).digest() == sha1:
                    return known_hosts.PresentedKey(blob=blob)
            return None
        if sha256 is not None or sha1 is not None:
            return known_hosts.PresentedKey(sha256=sha256, sha1=sha1)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


class Mirror:
    """A bare mirror of one git source and the snapshots read from it (blocking calls).

    Invariant: at most one call runs at a time (`_lock`); `_remote_id` is the remote ref id
    (tag object or commit) that produced the snapshot last returned by `sync`.
    """

    def __init__(
        self,
        *,
        name: str,
        spec: GitSourceSpec,
        state_dir: Path,
        limits: snapshot.Limits = snapshot.DEFAULT_LIMITS,
    ) -> None:
        self.name = name
        self.spec = spec
        self.path = Path(state_dir) / "sources" / f"{name}.git"
        self.limits = limits
        self.tracked = _Tracked.of(spec)
        self.stats = Stats()
        self.display_url = redact.url(spec.url)
        self._lock = threading.Lock()
        self._remote_id: str | None = None
        self._subpath = tuple(p for p in Path(spec.path).parts if p not in (".", ""))
        if Path(spec.path).is_absolute() or ".." in self._subpath:
            raise SourceError(f"path {spec.path!r} must be relative to the repository", retry_after=300.0)

    @property
    def display_root(self) -> str:
        return f"git:{self.name}"

    def sync(self, previous: snapshot.Snapshot | None, *, applied: str | None = None) -> snapshot.Snapshot:
        """Bring the mirror up to the remote's tracked ref and return its snapshot.

        Returns `previous` itself when the remote ref has not moved and `previous` was read
        at that commit (no fetch, no tree walk). `applied` is the commit in force, which a
        verified source's new commit must descend from (see the module docstring).

        Raises:
            SourceError: unreachable remote, rejected credentials, untrusted host key,
                ref or commit not found, or a mirror that stayed corrupt after one rebuild.
                Messages are redacted.
        """
        if not self._lock.acquire(blocking=False):
            raise SourceError(
                f"a previous fetch of {self.display_url} is still running (abandoned after its timeout)",
                retry_after=5.0,
            )
        try:
            try:
                return self._sync_once(previous, applied)
            except _Corrupt as exc:
                self._rebuild()
                try:
                    return self._sync_once(previous, applied)
                except _Corrupt as again:
                    raise SourceError(
                        f"mirror of {self.display_url} is corrupt even after a rebuild: {again}",
                        retry_after=5.0,
                    ) from exc
        finally:
            self._lock.release()

    # -- internals (called with the lock held) -------------------------------------------------

    def _sync_once(self, previous: snapshot.Snapshot | None, applied: str | None) -> snapshot.Snapshot:
        # Key files first: one that is missing or unreadable fails closed, before any fetch.
        keys = verify.load_keys(self.spec.verify) if self.spec.verify is not None else None
        repo = self._open()
        if self._needs_history() and repo.is_shallow:
            self._rebuild()
            repo = self._open()
        callbacks = _Callbacks(auth=self.spec.auth, url=self.spec.url)
        try:
            commit = self._update(repo, callbacks)
        except (pygit2.GitError, _Refused, KeyError, ValueError, OSError) as exc:
            raise self._translate(exc, callbacks) from exc
        if previous is not None and previous.revision == str(commit.id):
            return previous
        provenance = self._verify(repo, commit, keys) if keys is not None else None
        if provenance is not None and applied and self._needs_history():
            self._fast_forward(repo, commit, applied, provenance)
        try:
            snap = self._read(repo, commit, previous)
        except (pygit2.GitError, KeyError, ValueError) as exc:
            raise _Corrupt(self._scrub(str(exc), callbacks)) from exc
        if provenance is not None:
            snap = dataclasses.replace(snap, provenance=provenance.as_details())
        return snap

    def _verify(self, repo: pygit2.Repository, commit: pygit2.Commit, keys: verify.Keys) -> verify.Provenance:
        """Check the signatures `verify.mode` asks for (raises `verify.SignatureRejected`)."""
        assert self.spec.verify is not None
        try:
            commit_raw = repo.odb.read(commit.id)[1]
            tag_raw: bytes | None = None
            if self.spec.ref.tag and self._remote_id is not None:
                target = repo.get(self._remote_id)
                if isinstance(target, pygit2.Tag):
                    tag_raw = repo.odb.read(target.id)[1]
        except (pygit2.GitError, KeyError, ValueError) as exc:
            raise _Corrupt(str(exc)) from exc
        return verify.check(
            self.spec.verify,
            keys,
            commit=str(commit.id),
            commit_raw=commit_raw,
            tag=self.spec.ref.tag,
            tag_raw=tag_raw,
        )

    def _needs_history(self) -> bool:
        """A verified source that refuses rollbacks (a pin excepted) needs its ancestry."""
        checked = self.spec.verify
        return checked is not None and not checked.allow_rollback and self.tracked.commit is None

    def _fast_forward(
        self, repo: pygit2.Repository, commit: pygit2.Commit, applied: str, provenance: verify.Provenance
    ) -> None:
        """Refuse `commit` unless it is `applied` or descends from it (raises `SignatureRejected`)."""
        if str(commit.id) == applied:
            return
        try:
            descends = repo.descendant_of(commit.id, pygit2.Oid(hex=applied))
        except (pygit2.GitError, KeyError, ValueError):
            descends = False  # the applied commit is not in its history (or not a commit id)
        if not descends:
            first = provenance.signatures[0]
            raise verify.SignatureRejected(
                verify.Rejection(
                    str(commit.id), f"not a fast-forward of {applied}", first.fingerprint, first.signer
                )
            )

    def _open(self) -> pygit2.Repository:
        if self.path.exists():
            try:
                repo = pygit2.Repository(str(self.path))
                if repo.is_bare:
                    return repo
            except pygit2.GitError:
                pass
            self._rebuild()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return pygit2.init_repository(str(self.path), bare=True)
        except (pygit2.GitError, OSError) as exc:
            raise SourceError(f"cannot create the mirror at {self.path}: {exc}", retry_after=30.0) from exc

    def _rebuild(self) -> None:
        """Delete the mirror; the next `_open` starts from an empty repository."""
        self.stats.rebuilds += 1
        self._remote_id = None
        shutil.rmtree(self.path, ignore_errors=True)

    def _update(self, repo: pygit2.Repository, callbacks: _Callbacks) -> pygit2.Commit:
        """Fetch what moved (if anything) and return the commit to read."""
        tracked = self.tracked
        if tracked.commit is not None:
            have = _lookup_commit(repo, tracked.commit)
            if have is not None:
                return have
        if tracked.remote_ref is None:
            return self._fetch_pinned(repo, callbacks)
        remote = repo.remotes.create_anonymous(self.spec.url)
        self.stats.ls_remotes += 1
        heads = {h.name: str(h.oid) for h in remote.list_heads(callbacks=callbacks)}
        remote_id = heads.get(tracked.remote_ref)
        if remote_id is None:
            raise SourceError(f"{self.spec.ref.describe()} not found on {self.display_url}", retry_after=60.0)
        assert tracked.local_ref is not None
        local = _ref_target(repo, tracked.local_ref)
        if local != remote_id or not _has(repo, remote_id):
            self.stats.fetches += 1
            remote.fetch(
                [f"+{tracked.remote_ref}:{tracked.local_ref}"],
                callbacks=callbacks,
                prune=pygit2.enums.FetchPrune.NO_PRUNE,
                depth=self._depth(),
            )
        self._remote_id = remote_id
        target = repo.get(remote_id)
        if target is None:
            raise _Corrupt(f"{tracked.remote_ref} was fetched but {remote_id[:12]} is not in the mirror")
        commit = target.peel(pygit2.Commit)
        if tracked.commit is None:
            return commit
        pinned = _lookup_commit(repo, tracked.commit)
        if pinned is None or not (pinned.id == commit.id or repo.descendant_of(commit.id, pinned.id)):
            raise SourceError(
                f"commit {tracked.commit} is not reachable from {self.spec.ref.describe()} "
                f"on {self.display_url}",
                retry_after=300.0,
            )
        return pinned

    def _fetch_pinned(self, repo: pygit2.Repository, callbacks: _Callbacks) -> pygit2.Commit:
        """`ref: {commit: X}` alone: fetch X by id, else all branch heads, then look X up."""
        commit_id = self.spec.ref.commit or ""
        remote = repo.remotes.create_anonymous(self.spec.url)
        if re.fullmatch(r"[0-9a-f]{40}", commit_id):
            self.stats.fetches += 1
            try:
                remote.fetch([f"+{commit_id}:refs/aofd/pinned/{commit_id}"], callbacks=callbacks)
            except pygit2.GitError:
                if callbacks.host_check or callbacks.credential_calls > 1:
                    raise
            found = _lookup_commit(repo, commit_id)
            if found is not None:
                return found
            remote = repo.remotes.create_anonymous(self.spec.url)
        self.stats.fetches += 1
        remote.fetch(["+refs/heads/*:refs/aofd/all/heads/*"], callbacks=callbacks)
        found = _lookup_commit(repo, commit_id)
        if found is None:
            raise SourceError(
                f"commit {commit_id} not found on any branch of {self.display_url}", retry_after=300.0
            )
        return found

    def _depth(self) -> int:
        """Shallow over the network, except for commit pins (the pin may be below the tip) and
        sources that refuse rollbacks (`_needs_history`); libgit2's local (`file://`) transport
        cannot do shallow fetches."""
        if self.tracked.commit is not None or self.spec.url.startswith("file://") or self._needs_history():
            return 0
        return 1

    def _read(
        self, repo: pygit2.Repository, commit: pygit2.Commit, previous: snapshot.Snapshot | None
    ) -> snapshot.Snapshot:
        """Walk the commit's tree under `path` into a snapshot (blob headers before blobs)."""
        self.stats.trees_read += 1
        budget = rules.Budget(self.limits)
        files: dict[str, snapshot.SourceFile] = {}
        issues: list[Issue] = []
        tree: pygit2.Tree = commit.tree
        prefix = ""
        for part in self._subpath:
            try:
                entry = tree[part]
            except KeyError:
                entry = None
            prefix += part + "/"
            if entry is None or entry.filemode != _MODE_TREE:
                issues.append(
                    rules.error(
                        self._display(prefix.rstrip("/")),
                        f"path {self.spec.path!r} is not a directory at commit {str(commit.id)[:12]}",
                        "path-not-found",
                    )
                )
                return self._snapshot(commit, files, issues)
            tree = _tree(repo, entry.id)
        old = previous.files if previous is not None else {}
        incremental = self._read_changes(repo, tree, previous)
        if incremental is not None:
            snap = self._snapshot_from(commit, previous, *incremental)
            if snap is not None:
                return snap
        self._walk(repo, tree, prefix, budget, files, issues, old)
        return self._snapshot(commit, files, issues)

    def _read_changes(
        self, repo: pygit2.Repository, tree: pygit2.Tree, previous: snapshot.Snapshot | None
    ) -> tuple[dict[str, snapshot.SourceFile], list[Issue], set[str], tuple[str, ...]] | None:
        """Read only what differs from `previous`'s commit: (files read, their issues, removed
        paths, removed prefixes), or None when a full read is needed (no usable previous
        commit in the mirror, a tree-wide cap, the path missing at either commit)."""
        if previous is None or any(i.code in _TREE_CAPS for i in previous.issues):
            return None
        old_commit = _lookup_commit(repo, previous.revision) if len(previous.revision) == 40 else None
        if old_commit is None:
            return None
        old_tree: pygit2.Tree | None = old_commit.tree
        for part in self._subpath:
            assert old_tree is not None
            try:
                entry = old_tree[part]
            except KeyError:
                return None
            if entry.filemode != _MODE_TREE:
                return None
            old_tree = _tree(repo, entry.id)
        assert old_tree is not None
        self.stats.incremental_reads += 1
        budget = rules.Budget(self.limits)
        files: dict[str, snapshot.SourceFile] = {}
        issues: list[Issue] = []
        removed: set[str] = set()
        prefixes: list[str] = []
        self._diff(
            repo,
            old_tree,
            tree,
            "".join(p + "/" for p in self._subpath),
            budget,
            files,
            issues,
            removed,
            prefixes,
            previous.files,
        )
        if budget.exhausted:
            return None
        return files, issues, removed, tuple(prefixes)

    def _diff(
        self,
        repo: pygit2.Repository,
        old_tree: pygit2.Tree,
        new_tree: pygit2.Tree,
        prefix: str,
        budget: rules.Budget,
        files: dict[str, snapshot.SourceFile],
        issues: list[Issue],
        removed: set[str],
        prefixes: list[str],
        old_files: Any,
    ) -> None:
        """Walk only the entries that differ; subtrees with equal ids are skipped unread."""
        before = {e.name or "": e for e in old_tree}
        after = {e.name or "": e for e in new_tree}
        for name in sorted(before.keys() | after.keys()):
            if rules.is_ignored(name):
                continue
            old, new = before.get(name), after.get(name)
            if old is not None and new is not None and old.id == new.id and old.filemode == new.filemode:
                continue
            rel = prefix + name
            if old is not None and new is not None and old.filemode == new.filemode == _MODE_TREE:
                self._diff(
                    repo,
                    _tree(repo, old.id),
                    _tree(repo, new.id),
                    rel + "/",
                    budget,
                    files,
                    issues,
                    removed,
                    prefixes,
                    old_files,
                )
                continue
            if old is not None:
                removed.add(rel)
                if old.filemode == _MODE_TREE:
                    prefixes.append(rel + "/")
            if new is not None:
                self._entry(repo, new, rel, budget, files, issues, old_files)

    def _snapshot_from(
        self,
        commit: pygit2.Commit,
        previous: snapshot.Snapshot | None,
        read: dict[str, snapshot.SourceFile],
        read_issues: list[Issue],
        removed: set[str],
        prefixes: tuple[str, ...],
    ) -> snapshot.Snapshot | None:
        """`previous` with the changes of `_read_changes` applied; None if a cap is now exceeded."""
        assert previous is not None
        gone = set(removed)
        if prefixes:
            gone.update(rel for rel in previous.files if rel.startswith(prefixes))
        files = snapshot.merged_files(previous.files, read, gone)
        total = sum(len(f.content) for f in files.values()) if len(files) <= self.limits.max_files else None
        if total is None or total > self.limits.max_tree_bytes:
            return None
        exact = {self._display(rel) for rel in removed | read.keys()}
        below = tuple(self._display(p) for p in prefixes)
        kept = [i for i in previous.issues if i.path not in exact and not i.path.startswith(below)]
        return snapshot.Snapshot(
            source=self.name,
            revision=Revision(str(commit.id)),
            files=files,
            issues=tuple(sorted([*kept, *read_issues])),
            display_root=self.display_root,
        )

    def _walk(
        self,
        repo: pygit2.Repository,
        tree: pygit2.Tree,
        prefix: str,
        budget: rules.Budget,
        files: dict[str, snapshot.SourceFile],
        issues: list[Issue],
        old: Any,
    ) -> None:
        for entry in sorted(tree, key=lambda e: e.name or ""):
            name = entry.name or ""
            if rules.is_ignored(name):
                continue
            self._entry(repo, entry, prefix + name, budget, files, issues, old)
            if budget.exhausted:
                return

    def _entry(
        self,
        repo: pygit2.Repository,
        entry: pygit2.Object,
        rel: str,
        budget: rules.Budget,
        files: dict[str, snapshot.SourceFile],
        issues: list[Issue],
        old: Any,
    ) -> None:
        """One tree entry (not ignored): a subtree is walked, a resource file read or reused."""
        mode = entry.filemode
        if mode == _MODE_TREE:
            self._walk(repo, _tree(repo, entry.id), rel + "/", budget, files, issues, old)
            return
        if mode == _MODE_LINK:
            issues.append(
                rules.error(self._display(rel), "is a symlink; symlinks are not followed", "symlink")
            )
            return
        if mode == _MODE_GITLINK:
            issues.append(
                rules.error(
                    self._display(rel), "is a submodule (gitlink); submodules are not read", "submodule"
                )
            )
            return
        if mode not in (_MODE_BLOB, _MODE_EXEC) or not rules.is_candidate(rel.rpartition("/")[2]):
            return
        blob_id = str(entry.id)
        prior = old.get(rel)
        if prior is not None and prior.blob == blob_id:
            size = len(prior.content)
        else:
            prior = None
            _, size = repo.odb.read_header(entry.id)
        refused = budget.admit(self._display(rel), size)
        if refused is not None:
            issues.append(refused)
        if refused is not None or budget.exhausted:
            return
        if prior is not None:
            files[rel] = prior
            return
        self.stats.blobs_read += 1
        _, data = repo.odb.read(entry.id)
        files[rel] = snapshot.SourceFile(rel, data, blob_id)

    def _snapshot(
        self, commit: pygit2.Commit, files: dict[str, snapshot.SourceFile], issues: list[Issue]
    ) -> snapshot.Snapshot:
        return snapshot.Snapshot.build(
            source=self.name,
            files=files,
            revision=Revision(str(commit.id)),
            issues=tuple(sorted(issues)),
            display_root=self.display_root,
        )

    def _display(self, rel: str) -> str:
        return f"{self.display_root}/{rel}"

    def _scrub(self, message: str, callbacks: _Callbacks) -> str:
        return redact.text(message, secrets=callbacks.secrets)

    def _translate(self, exc: BaseException, callbacks: _Callbacks) -> Exception:
        """Map a libgit2 failure to `SourceError` (or `_Corrupt`), with a redacted message."""
        if isinstance(exc, SourceError | _Corrupt):
            return exc
        detail = self._scrub(str(exc) or type(exc).__name__, callbacks)
        where = f"fetch of {self.display_url} ({self.spec.ref.describe()})"
        if callbacks.host_check:
            return SourceError(f"{where} refused: {callbacks.host_check}", retry_after=60.0)
        if isinstance(exc, _Refused):
            return SourceError(f"{where} failed: {detail}", retry_after=60.0)
        if callbacks.credential_calls > 1 or _AUTH.search(detail):
            return SourceError(f"{where} failed: authentication failed ({detail})", retry_after=60.0)
        if isinstance(exc, pygit2.GitError | KeyError) and _CORRUPT.search(detail) and not _network(detail):
            return _Corrupt(detail)
        return SourceError(f"{where} failed: {detail}", retry_after=5.0)


class _Corrupt(Exception):
    """The local mirror is damaged; `Mirror.sync` deletes and re-clones it once."""


def _network(detail: str) -> bool:
    return bool(
        re.search(
            r"resolve|connect|timed out|refused|unreachable|network|socket|remote|ssh|http", detail, re.I
        )
    )


def _ref_target(repo: pygit2.Repository, name: str) -> str | None:
    try:
        ref = repo.references.get(name)
    except (pygit2.GitError, ValueError):
        return None
    if ref is None:
        return None
    return str(ref.target)


def _lookup_commit(repo: pygit2.Repository, commit_id: str | None) -> pygit2.Commit | None:
    """The commit with this (full or abbreviated) id if the mirror has it, else None."""
    if not commit_id:
        return None
    try:
        obj = repo.revparse_single(commit_id) if len(commit_id) < 40 else repo.get(commit_id)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    if obj is None:
        return None
    try:
        return obj.peel(pygit2.Commit)
    except (pygit2.GitError, ValueError, KeyError):
        return None


def _tree(repo: pygit2.Repository, object_id: pygit2.Oid) -> pygit2.Tree:
    obj = repo[object_id]
    if not isinstance(obj, pygit2.Tree):
        raise KeyError(f"{object_id} is not a tree")
    return obj


def _has(repo: pygit2.Repository, object_id: str) -> bool:
    try:
        return repo.odb.exists(object_id)
    except (ValueError, pygit2.GitError):
        return False
