"""The etcd adapter of a replica set (`cluster:`): session lease, member key, election, claims.

Owns the one connection of this process to etcd (the `etcd3aio` asyncio client over gRPC; the
only module that imports `etcd3aio` or `grpc`, and only once a `Coordinator` is started, so a
single host never loads them). Every key lives under `/aofd/<cluster.name>/`; callers name keys
relative to that prefix. Everything etcd can fail with (refused, timed out, no quorum, auth)
reaches callers as `errors.CoordinatorUnavailable`, after at most `etcd.request_timeout`.

- **Session**: one lease per process (TTL `lease_ttl`), renewed every TTL/3 (`RENEW_RETRY`
  after a failed try). `valid_until` is
  the *send* time of the last answered renewal plus the TTL it granted, on the monotonic clock,
  so the local view of the lease always ends before etcd's (etcd only ever extends leases).
- **Member key** `members/<member>` on the session lease: JSON (member, pid, started_at and what
  `set_member_info` adds: the served revision, the admin address). A member name held by another
  live process refuses the start (`errors.ConfigError`); a re-join never overwrites it.
- **Election**: `txn(create_revision(leader)==0 -> put(leader, member, lease=session))`. The
  winner keeps the key's create revision (`leader_rev`) as its fencing token; followers watch
  the leader key and campaign when it goes.
- **`fence()`**: True only while leader and `monotonic() < valid_until - margin` (margin =
  max(1 s, TTL/5)). A process paused past its lease (SIGSTOP, a long GC) wakes with `fence()`
  False; a fenced `claim` also compares the leader key in the same txn (server-side fence).
- **`claim(keys, fenced=)`**: one txn, put-if-absent for every key -> CLAIMED | DUPLICATE |
  FENCED. Claims ride on one lease per 10-minute bucket of TTL `claim_ttl` + 10 min (never one
  lease per claim); they outlive this process on purpose. `unclaim` deletes the keys that hold
  this process's value. A claim that timed out (it may have committed) and a failed `unclaim`
  go to the release queue: a background task deletes each key still holding our value
  (`txn(value == ours -> delete)`) until etcd answers.
- **`update(key, fn)`**: compare-and-swap loop (get, fn, put if the mod revision is unchanged).
- **`watch(prefix, from_rev, initial=)`**: async iterator of `WatchEvent`; after a lost stream
  or a compaction it re-reads the prefix and reports what changed against the view it holds
  (`initial`, the read the caller watched from, plus the events since): deletions included.
- `retire()` (shutdown started) resigns and stops campaigning but keeps the session; `aclose()`
  resigns leadership and revokes the session lease, so followers take over at once.

gRPC is imported with `GRPC_ENABLE_FORK_SUPPORT=0` (aofd forks to run commands; gRPC's fork
handlers are noisy and slow with a live channel) and `GRPC_VERBOSITY=NONE` unless set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import ipaddress
import json
import os
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from aofd import errors, settings
from aofd.runtime.tasks import TaskSet

if TYPE_CHECKING:
    from etcd3aio import Etcd3Client
    from etcd3aio.auth import AuthService
    from etcd3aio.kv import KVService
    from etcd3aio.lease import LeaseService
    from etcd3aio.watch import WatchService

log = structlog.get_logger("aofd.cluster")

T = TypeVar("T")

CLAIM_BUCKET = 600.0
"""Seconds of claims that share one lease (its TTL is `claim_ttl` + this)."""

MAX_CAS_TRIES = 5
MAX_RELEASES = 10_000
"""Claim keys waiting to be released (timed-out claims, failed unclaims); the oldest beyond go."""
RENEW_RETRY = 0.25
"""Seconds before the next try after a failed lease renewal (not a full TTL/3)."""
AUTH_REFRESH = 240.0
"""Seconds between etcd logins (etcd's simple tokens live 5 minutes)."""


class ClaimResult(enum.Enum):
    CLAIMED = "claimed"
    """Every key was absent and is now ours: go ahead."""
    DUPLICATE = "duplicate"
    """A key was already claimed (by any member): do not run it again."""
    FENCED = "fenced"
    """A fenced claim by a replica that cannot prove it is the leader: nothing was written."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One key as read from etcd (`key` relative to the cluster prefix)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """A key changed (`value` None: deleted) at `revision`; `key` relative to the cluster prefix."""

    key: str
    value: bytes | None
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterState:
    """What status pages and metrics show about this replica's view of the set."""

    name: str
    member: str
    endpoints: tuple[str, ...]
    etcd_up: bool
    is_leader: bool
    leader: str | None
    leader_since: float | None
    """Wall-clock time this replica became the leader (None when it is not)."""
    lease_valid_for: float
    """Seconds the session lease is still known to be valid (0 when not)."""
    revision: int
    """The etcd revision of the last answer."""
    last_error: str | None
    last_error_at: float | None
    leader_changes: int
    members: tuple[Mapping[str, object], ...]


def _load_client() -> type[Etcd3Client]:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from etcd3aio import Etcd3Client  # lazy: only replicas load gRPC

    return Etcd3Client


def _failure_types() -> tuple[type[BaseException], ...]:
    import grpc
    from etcd3aio import EtcdError

    return (EtcdError, grpc.RpcError, TimeoutError, ConnectionError)


def _reap_grpc_pollers() -> int:
    """Cancel gRPC's request-writer tasks whose call already ended; returns how many.

    grpcio's `StreamRequestMixin.cancel()` cancels its writer task only when the call was still
    running: a stream that failed (etcd restarted: UNAVAILABLE) leaves the writer waiting forever
    on etcd3aio's open-ended request generator. Only writers of finished calls are touched.
    """
    reaped = 0
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if task.done() or frame is None or getattr(coro, "__name__", "") != "_consume_request_iterator":
            continue
        call = frame.f_locals.get("self")
        done = getattr(call, "done", None)
        if callable(done) and done():
            task.cancel()
            reaped += 1
    return reaped


async def _resolve(endpoints: Sequence[tuple[str, int]]) -> list[str]:
    """`address:port` for each endpoint: etcd3aio dials `ipv4:` targets, which take addresses
    only, so host names are resolved here (every IPv4 address of each, in order, once)."""
    loop = asyncio.get_running_loop()
    out: list[str] = []
    for host, port in endpoints:
        try:
            ipaddress.IPv4Address(host)
            addresses = [host]
        except ValueError:
            try:
                found = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise errors.ConfigError(
                    f"cluster.etcd.endpoints: cannot resolve {host!r} to an IPv4 address: {reason}"
                ) from None
            addresses = [str(info[4][0]) for info in found]
        for address in addresses:
            if f"{address}:{port}" not in out:
                out.append(f"{address}:{port}")
    return out


def _read(what: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cluster.etcd.{what}: cannot read {path}: {exc.strerror}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    code = getattr(exc, "code", None)
    if callable(code) and callable(getattr(exc, "details", None)):  # a raw gRPC error
        name = getattr(code(), "name", "error")
        details = str(exc.details() or "").strip()  # type: ignore[attr-defined]
        return f"{name}: {details[:160]}" if details else str(name)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class Coordinator:
    """This process's membership of the replica set named by `spec` (see the module docstring).

    Invariants: `_leader_rev` is set only while `_lease` is the lease of the leader key at
    that create revision (as last seen); `fence()` is False whenever `_leader_rev` is None or
    the session's local deadline (minus the margin) has passed. Leadership callbacks run on
    every change of `is_leader`, in order, on the event loop.
    """

    def __init__(
        self,
        spec: settings.ClusterSpec,
        *,
        info: Mapping[str, object] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.member = spec.member
        self.prefix = f"/aofd/{spec.name}/"
        self.ttl = int(spec.lease_ttl)
        self.margin = max(1.0, spec.lease_ttl / 5)
        self.timeout = spec.etcd.request_timeout
        self._monotonic = monotonic
        self._wall = wall
        self._client: Etcd3Client | None = None
        self._failures: tuple[type[BaseException], ...] = ()
        self._tasks: TaskSet[None] = TaskSet("cluster")
        self._password: str | None = None
        self._auth_at: float | None = None
        self._lease = 0
        self._valid_until = 0.0
        self._session = asyncio.Event()
        self._stopping = asyncio.Event()
        self._retired = False  # shutdown started: never campaign again
        self._leader_rev: int | None = None
        self._leader_since: float | None = None
        self._leader_name: str | None = None
        self._leader_changes = 0
        self._callbacks: list[Callable[[bool], None]] = []
        self._claim_leases: dict[int, int] = {}
        self._claim_lock = asyncio.Lock()
        self._revision = 0
        self._up = False
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._members: tuple[Mapping[str, object], ...] = ()
        self._info: dict[str, object] = {
            **(info or {}),
            "member": self.member,
            "pid": os.getpid(),
            "started_at": wall(),
        }
        self._info_dirty = False
        self._nonce = secrets.token_hex(8)
        self._name_held = False
        # Claim keys to delete if they still hold this process's value (None: any value of this
        # process): timed-out claims that may have committed, and unclaims that failed.
        self._releases: collections.OrderedDict[bytes, bytes | None] = collections.OrderedDict()
        self._owner_tag = f"{self.member}/{self._nonce}/".encode()

    # ---- keys -----------------------------------------------------------------------------

    def key(self, relative: str) -> bytes:
        """The etcd key of `relative` (a key under this cluster's prefix)."""
        return (self.prefix + relative).encode()

    def _relative(self, key: bytes) -> str:
        return key.decode(errors="replace").removeprefix(self.prefix)

    @property
    def _leader_key(self) -> bytes:
        return self.key("leader")

    @property
    def _member_key(self) -> bytes:
        return self.key(f"members/{self.member}")

    # ---- calls ----------------------------------------------------------------------------

    def _c(self) -> Etcd3Client:
        if self._client is None:
            raise errors.CoordinatorUnavailable("etcd: not connected (the coordinator is not started)")
        return self._client

    def _kv(self) -> KVService:
        kv = self._c().kv
        if kv is None:
            raise errors.CoordinatorUnavailable("etcd: not connected")
        return kv

    def _leases(self) -> LeaseService:
        lease = self._c().lease
        if lease is None:
            raise errors.CoordinatorUnavailable("etcd: not connected")
        return lease

    def _watcher(self) -> WatchService:
        watch = self._c().watch
        if watch is None:
            raise errors.CoordinatorUnavailable("etcd: not connected")
        return watch

    def _authsvc(self) -> AuthService:
        auth = self._c().auth
        if auth is None:
            raise errors.CoordinatorUnavailable("etcd: not connected")
        return auth

    def _failed(self, what: str, exc: BaseException) -> errors.CoordinatorUnavailable:
        reason = _describe(exc)
        self._up = False
        self._last_error = f"{what}: {reason}"
        self._last_error_at = self._wall()
        if type(exc).__name__ == "EtcdUnauthenticatedError":
            self._auth_at = None  # log in again before the next renewal
        return errors.CoordinatorUnavailable(f"etcd: {what} failed ({reason})")

    async def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one etcd request within the request timeout; any failure -> CoordinatorUnavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                result = await make()
        except self._failures as exc:
            raise self._failed(what, exc) from None
        self._up = True
        header = getattr(result, "header", None)
        revision = getattr(header, "revision", 0)
        if isinstance(revision, int) and revision > self._revision:
            self._revision = revision
        return result

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> bool:
        """Connect, join (session lease and member key) and start campaigning.

        Waits up to `etcd.dial_timeout` for the first session; returns whether it has one (when
        not, it keeps trying in the background and `state().etcd_up` says so). Raises
        `errors.ConfigError` when a certificate or password file cannot be read, or when this
        member name is held by another running replica.
        """
        etcd = self.spec.etcd
        ca_cert = cert_chain = cert_key = None
        if etcd.tls:
            if etcd.ca_file is not None:
                ca_cert = _read("ca_file", etcd.ca_file)
            else:
                paths = ssl.get_default_verify_paths()
                ca_cert = _read("ca_file (the system CA bundle)", Path(paths.cafile or paths.openssl_cafile))
            if etcd.cert_file is not None and etcd.key_file is not None:
                cert_chain = _read("cert_file", etcd.cert_file)
                cert_key = _read("key_file", etcd.key_file)
        if etcd.password_file is not None:
            self._password = _read("password_file", etcd.password_file).decode().strip()
        client_class = _load_client()
        self._failures = _failure_types()
        self._client = client_class(
            await _resolve(etcd.host_ports()),
            rpc_max_attempts=1,
            tls_server_name=(etcd.tls_server_name or etcd.host_ports()[0][0]) if etcd.tls else None,
            ca_cert=ca_cert,
            cert_chain=cert_chain,
            cert_key=cert_key,
        )
        await self._client.connect()
        joined = self._tasks.spawn(self._first_join(), key="join")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(etcd.dial_timeout):
                await asyncio.wait({joined})
        if self._name_held and not joined.done():
            # Our name is held by another lease: wait for it to expire (a crashed run of this
            # member) or for the refusal (another live replica); `_join` bounds this.
            await asyncio.wait({joined})
        if joined.done() and not joined.cancelled() and isinstance(joined.exception(), errors.ConfigError):
            await self.aclose()
            raise joined.exception()  # type: ignore[misc]  # checked: a ConfigError
        return self._session.is_set()

    async def _first_join(self) -> None:
        """Join once (member name check), then run the session and campaign loops."""
        while not self._stopping.is_set():
            try:
                await self._new_session(first=True)
                break
            except errors.CoordinatorUnavailable as exc:
                log.warning("cluster.join_failed", error=str(exc))
                await self._pause(0.5)
        if self._stopping.is_set():
            return
        self._tasks.spawn(self._session_loop(), key="session")
        self._tasks.spawn(self._campaign_loop(), key="campaign")

    async def aclose(self) -> None:
        """Stop: resign leadership, revoke the session lease, close the connection (bounded)."""
        self._stopping.set()
        await self._tasks.drain(0)
        client = self._client
        if client is None:
            return
        if client.kv is not None and client.lease is not None:
            if self._releases:
                with contextlib.suppress(errors.CoordinatorUnavailable):
                    await self._release_now(list(self._releases))
                if self._releases:
                    log.warning("cluster.releases_dropped", pending=len(self._releases))
            with contextlib.suppress(errors.CoordinatorUnavailable):
                await self.resign()
            if self._lease:
                lease = self._lease
                with contextlib.suppress(errors.CoordinatorUnavailable):
                    await self._call("revoke the session lease", lambda: self._leases().revoke(lease))
        self._set_leader(None)
        self._lease = 0
        self._valid_until = 0.0
        self._session.clear()
        self._client = None
        await client.close()
        if _reap_grpc_pollers():
            await asyncio.sleep(0)  # let the cancelled writers finish

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # ---- session --------------------------------------------------------------------------

    async def _login(self) -> None:
        user = self.spec.etcd.user
        if user is None or self._password is None:
            return
        if self._auth_at is not None and self._monotonic() - self._auth_at < AUTH_REFRESH:
            return
        client = self._c()
        password = self._password
        answer = await self._call("log in", lambda: self._authsvc().authenticate(user, password))
        client.set_token(answer.token)
        self._auth_at = self._monotonic()

    async def _new_session(self, *, first: bool = False) -> None:
        await self._login()
        sent = self._monotonic()
        grant = await self._call("grant the session lease", lambda: self._leases().grant(ttl=self.ttl))
        lease, valid_until = grant.ID, sent + grant.TTL
        try:
            await self._join(lease, first=first)
        except BaseException:
            with contextlib.suppress(errors.CoordinatorUnavailable):
                await self._call("revoke the session lease", lambda: self._leases().revoke(lease))
            raise
        self._lease, self._valid_until = lease, valid_until
        self._session.set()
        with contextlib.suppress(errors.CoordinatorUnavailable):
            self._members = tuple(self._member_info(e) for e in await self.scan("members/"))
        log.info("cluster.joined", cluster=self.spec.name, member=self.member, ttl=grant.TTL)

    async def _join(self, lease: int, *, first: bool) -> None:
        """Put the member key on `lease`; on the first join, refuse a name another process holds."""
        from etcd3aio.kv import KVService as KV

        key, value = self._member_key, self._member_value()
        deadline = self._monotonic() + self.spec.lease_ttl + 2
        while True:
            answer = await self._call(
                "register this member",
                lambda: self._kv().txn(
                    [KV.txn_compare_create_revision(key, 0)],
                    [KV.txn_op_put(key, value, lease=lease)],
                    [KV.txn_op_get(key)],
                ),
            )
            if answer.succeeded:
                return
            kvs = answer.responses[0].response_range.kvs
            held = kvs[0] if kvs else None
            if held is None:
                continue  # gone meanwhile: put-if-absent again
            holder = self._member_info(self._entry(held))
            this_process = (
                holder.get("pid") == self._info["pid"]
                and holder.get("started_at") == self._info["started_at"]
            )
            if held.lease == self._lease or (not first and this_process):
                self._name_held = False
                # Ours (an older session of this process): replace it on the new lease, unless
                # someone else took it meanwhile (same incarnation compared).
                replaced = await self._call(
                    "register this member",
                    lambda: self._kv().txn(
                        [KV.txn_compare_create_revision(key, held.create_revision)],  # noqa: B023
                        [KV.txn_op_put(key, value, lease=lease)],
                        [],
                    ),
                )
                if replaced.succeeded:
                    return
                continue
            self._name_held = first
            if not first:
                # Another live process took this member name while our session was gone: do
                # not overwrite it; the session loop tries again until its lease ends.
                raise self._failed(
                    "register this member",
                    RuntimeError(f"member name {self.member!r} is held by another running aofd"),
                )
            if self._monotonic() >= deadline:
                raise errors.ConfigError(
                    f"cluster.member {self.member!r} is in use by another running aofd "
                    f"(pid {holder.get('pid', '?')}); give each replica its own member name"
                )
            await self._pause(0.25)

    def _member_value(self) -> bytes:
        info = {**self._info, "updated_at": self._wall()}
        return json.dumps(info, sort_keys=True, default=str).encode()

    def set_member_info(self, **info: object) -> None:
        """Publish more about this member (its served revision, admin address) at the next renewal."""
        self._info.update(info)
        self._info_dirty = True

    async def _session_loop(self) -> None:
        while not self._stopping.is_set():
            await self._renew_until_lost()
            if self._stopping.is_set():
                return
            self._session.clear()
            old, self._lease = self._lease, 0
            self._set_leader(None)
            with contextlib.suppress(errors.CoordinatorUnavailable):
                # Gone locally: make it gone in etcd too (its keys go, followers campaign now).
                await self._call("revoke the old session lease", lambda: self._leases().revoke(old))  # noqa: B023
            while not self._stopping.is_set():
                try:
                    await self._new_session()
                    break
                except errors.CoordinatorUnavailable as exc:
                    log.warning("cluster.session_failed", error=str(exc))
                    await self._pause(0.5)

    async def _renew_until_lost(self) -> None:
        """Renew the session lease every TTL/3 (`RENEW_RETRY` after a failed try) until etcd
        says it is gone or the deadline passed."""
        wait = self.ttl / 3
        while not self._stopping.is_set():
            await self._pause(wait)
            if self._stopping.is_set():
                return
            sent = self._monotonic()
            try:
                await self._login()
                ttl = await self._keep_alive(self._lease)
            except errors.CoordinatorUnavailable as exc:
                if self._monotonic() >= self._valid_until:
                    log.warning("cluster.lease_lost", member=self.member, error=str(exc))
                    return
                log.warning("cluster.renew_failed", error=str(exc))
                wait = RENEW_RETRY
                continue
            wait = self.ttl / 3
            if ttl <= 0:
                log.warning("cluster.lease_lost", member=self.member, error="etcd says the lease expired")
                return
            self._valid_until = sent + ttl
            _reap_grpc_pollers()
            if self._info_dirty:
                self._info_dirty = False
                with contextlib.suppress(errors.CoordinatorUnavailable):
                    await self._put_member()
            with contextlib.suppress(errors.CoordinatorUnavailable):
                entries = await self.scan("members/")
                self._members = tuple(self._member_info(e) for e in entries)

    async def _put_member(self) -> None:
        lease, key, value = self._lease, self._member_key, self._member_value()
        await self._call("update this member", lambda: self._kv().put(key, value, lease=lease))

    @staticmethod
    def _member_info(entry: Entry) -> Mapping[str, object]:
        try:
            data = json.loads(entry.value)
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {"member": entry.key.removeprefix("members/")}

    async def _keep_alive(self, lease: int) -> int:
        async def renew() -> int:
            call = self._leases().keep_alive(lease)
            try:
                async for answer in call:
                    return int(answer.TTL)
            finally:
                call.cancel()
            return 0

        return await self._call("renew the session lease", renew)

    # ---- leadership -----------------------------------------------------------------------

    def fence(self) -> bool:
        """True only while this replica leads and its lease is surely still valid (see module)."""
        return self._leader_rev is not None and self._monotonic() < self._valid_until - self.margin

    @property
    def is_leader(self) -> bool:
        return self.fence()

    @property
    def leader_rev(self) -> int | None:
        """The fencing token: the leader key's create revision while this replica leads."""
        return self._leader_rev if self.fence() else None

    def session_valid(self) -> bool:
        """True while the session lease is surely valid (readiness: claims can be made)."""
        return self._session.is_set() and self._monotonic() < self._valid_until

    def on_leadership(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call `callback(True)` on gaining and `callback(False)` on losing leadership; returns
        a function that unsubscribes. Callbacks must not block (spawn a task for I/O)."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def _set_leader(self, rev: int | None) -> None:
        was = self._leader_rev is not None
        self._leader_rev = rev
        now = rev is not None
        if now:
            self._leader_name = self.member
        if was == now:
            return
        self._leader_since = self._wall() if now else None
        self._leader_changes += 1
        log.info("cluster.leadership", member=self.member, leader=now, fencing_token=rev)
        for callback in list(self._callbacks):
            try:
                callback(now)
            except Exception as exc:  # one bad subscriber must not stop the others
                log.error("cluster.leadership_callback_failed", error=repr(exc))

    async def _campaign_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._session.is_set() or (self._retired and self._leader_rev is None):
                await self._pause(0.1)
                continue
            if self._leader_rev is not None:
                # Lead until the local deadline (minus the margin) says we cannot prove it.
                remaining = self._valid_until - self.margin - self._monotonic()
                if remaining <= 0:
                    log.warning("cluster.step_down", member=self.member, reason="lease not renewed in time")
                    self._set_leader(None)
                    continue
                await self._pause(min(remaining, 0.25))
                continue
            if not self.session_valid() or self._monotonic() >= self._valid_until - self.margin:
                await self._pause(0.1)
                continue
            try:
                await self._campaign()
            except errors.CoordinatorUnavailable as exc:
                log.warning("cluster.campaign_failed", error=str(exc))
                await self._pause(0.5)

    async def _campaign(self) -> None:
        from etcd3aio.kv import KVService as KV

        key, lease = self._leader_key, self._lease
        answer = await self._call(
            "campaign for leadership",
            lambda: self._kv().txn(
                [KV.txn_compare_create_revision(key, 0)],
                [KV.txn_op_put(key, self.member.encode(), lease=lease)],
                [KV.txn_op_get(key)],
            ),
        )
        if answer.succeeded:
            if lease == self._lease and self.session_valid():
                self._set_leader(answer.header.revision)
                if self._retired:  # won while `retire` ran: hand it over again
                    await self.resign()
            return
        kvs = answer.responses[0].response_range.kvs
        if not kvs:
            return
        held = kvs[0]
        self._leader_name = held.value.decode(errors="replace")
        if held.lease == lease and lease == self._lease:
            self._set_leader(held.create_revision)  # still ours (a step-down without losing the lease)
            return
        await self._wait_for_delete(key, answer.header.revision + 1)

    async def _wait_for_delete(self, key: bytes, from_rev: int) -> None:
        """Return when `key` is deleted (watched from `from_rev`), after 1 s, or when stopping."""

        async def deleted() -> None:
            async for answer in self._watcher().watch(key, start_revision=from_rev):
                if answer.canceled or any(e.type == 1 for e in answer.events):
                    return

        stop = asyncio.ensure_future(self._stopping.wait())
        watch = asyncio.ensure_future(deleted())
        try:
            await asyncio.wait({stop, watch}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, watch):
                task.cancel()
            await asyncio.gather(stop, watch, return_exceptions=True)

    async def retire(self) -> None:
        """Shutdown has started: resign leadership and never campaign again, keeping the session
        (claims, approvals and limits go on working while runs drain), so another replica takes
        the singleton duties now rather than after the drain."""
        self._retired = True
        await self.resign()

    async def resign(self) -> None:
        """Give up leadership now (delete the leader key if it is still ours)."""
        from etcd3aio.kv import KVService as KV

        rev = self._leader_rev
        self._set_leader(None)
        if rev is None:
            return
        key = self._leader_key
        await self._call(
            "resign leadership",
            lambda: self._kv().txn([KV.txn_compare_create_revision(key, rev)], [KV.txn_op_delete(key)], []),
        )

    # ---- claims ---------------------------------------------------------------------------

    async def _claims_lease(self) -> int:
        bucket = int(self._wall() // CLAIM_BUCKET)
        lease = self._claim_leases.get(bucket)
        if lease is not None:
            return lease
        async with self._claim_lock:
            lease = self._claim_leases.get(bucket)
            if lease is None:
                ttl = int(self.spec.claim_ttl + CLAIM_BUCKET)
                grant = await self._call("grant a claims lease", lambda: self._leases().grant(ttl=ttl))
                lease = int(grant.ID)
                self._claim_leases = {b: v for b, v in self._claim_leases.items() if b >= bucket - 1}
                self._claim_leases[bucket] = lease
            return lease

    async def claim(self, keys: Sequence[str], *, fenced: bool = False) -> ClaimResult:
        """Claim every key at once (put-if-absent in one txn); see `ClaimResult`.

        `fenced`: only while this replica leads (checked locally first, then by etcd in the same
        txn); a failed server-side fence makes this replica step down.

        A claim that timed out may still commit in etcd afterwards, and the platform's retry of
        the refused delivery may reach any replica. So its keys are queued for release: a
        background task deletes each key if it still holds this claim's value, retrying until
        etcd answers (`pending_releases`). A new claim of a queued key here releases it first.
        """
        if not keys:
            return ClaimResult.CLAIMED
        rev = self._leader_rev
        if fenced and (rev is None or not self.fence()):
            return ClaimResult.FENCED
        full = [self.key(k) for k in keys]
        queued = [k for k in full if k in self._releases]
        if queued:
            await self._release_now(queued)  # our own earlier attempt: gone before claiming again
        value = self._owner_tag + secrets.token_hex(4).encode()
        try:
            answer = await self._claim_txn(full, value, rev if fenced else None)
        except errors.CoordinatorUnavailable:
            self._queue_release(full, value)  # it may have committed: make sure it did not stick
            raise
        if answer.succeeded:
            return ClaimResult.CLAIMED
        found = [r.response_range.kvs for r in answer.responses]
        if fenced:
            leader = found[-1]
            if not leader or leader[0].create_revision != rev:
                log.warning("cluster.fenced", member=self.member, reason="the leader key is no longer ours")
                if self._leader_rev == rev:
                    self._set_leader(None)
                return ClaimResult.FENCED
            found = found[:-1]
        if any(found):
            return ClaimResult.DUPLICATE  # taken by another delivery attempt (any replica)
        return await self.claim(keys, fenced=fenced)  # the keys went meanwhile: try again

    async def _claim_txn(self, full: list[bytes], value: bytes, rev: int | None) -> Any:
        from etcd3aio.kv import KVService as KV

        compare = [KV.txn_compare_create_revision(k, 0) for k in full]
        failure = [KV.txn_op_get(k) for k in full]
        if rev is not None:
            compare.append(KV.txn_compare_create_revision(self._leader_key, rev))
            failure.append(KV.txn_op_get(self._leader_key))
        for attempt in range(2):
            lease = await self._claims_lease()
            puts = [KV.txn_op_put(k, value, lease=lease) for k in full]
            try:
                return await self._call("claim", lambda: self._kv().txn(compare, puts, failure))  # noqa: B023
            except errors.CoordinatorUnavailable as exc:
                if attempt or "lease not found" not in str(exc):
                    raise
                # The claims lease is gone (revoked, or etcd lost it): take a new one, once.
                self._claim_leases.clear()
        raise AssertionError("unreachable")

    async def unclaim(self, keys: Sequence[str]) -> None:
        """Delete this process's claims of `keys` (a delivery that must be retried:
        `retry_later`); a key another replica holds now stays. When etcd does not answer, the
        keys are queued for release (retried in the background) and the error is raised."""
        full = [self.key(k) for k in keys]
        for k in full:
            self._releases.pop(k, None)
        try:
            await self._release_now(full)
        except errors.CoordinatorUnavailable:
            self._queue_release(full, None)
            raise

    async def _release_now(self, full: Sequence[bytes]) -> None:
        """Delete each key that holds this process's value (the queued one, else any of ours)."""
        from etcd3aio.kv import KVService as KV

        for k in full:
            value = self._releases.get(k)
            if value is None:
                answer = await self._call("read a claim", lambda: self._kv().get(k))  # noqa: B023
                held = bytes(answer.kvs[0].value) if answer.kvs else b""
                if not held.startswith(self._owner_tag):
                    self._releases.pop(k, None)
                    continue  # absent, or another replica's claim now
                value = held
            mine = value
            await self._call(
                "drop a claim",
                lambda: self._kv().txn(
                    [KV.txn_compare_value(k, mine)],  # noqa: B023
                    [KV.txn_op_delete(k)],  # noqa: B023
                    [],
                ),
            )
            self._releases.pop(k, None)

    def _queue_release(self, full: Sequence[bytes], value: bytes | None) -> None:
        for k in full:
            self._releases[k] = value
            self._releases.move_to_end(k)
        dropped = 0
        while len(self._releases) > MAX_RELEASES:
            self._releases.popitem(last=False)
            dropped += 1
        log.warning("cluster.release_queued", keys=len(full), pending=len(self._releases), dropped=dropped)
        if self._tasks.get("release") is None and not self._stopping.is_set():
            self._tasks.spawn(self._release_loop(), key="release")

    @property
    def pending_releases(self) -> int:
        """Claim keys still waiting to be released (etcd did not answer yet)."""
        return len(self._releases)

    async def _release_loop(self) -> None:
        """Release queued claim keys until the queue is empty, backing off while etcd is away."""
        backoff = 0.25
        while self._releases and not self._stopping.is_set():
            try:
                await self._release_now(list(self._releases))
            except errors.CoordinatorUnavailable as exc:
                log.debug("cluster.release_failed", pending=len(self._releases), error=str(exc))
                await self._pause(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            log.info("cluster.released", member=self.member)

    # ---- plain keys -----------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        full = self.key(key)
        answer = await self._call("read", lambda: self._kv().get(full))
        return self._entry(answer.kvs[0]) if answer.kvs else None

    async def scan(self, prefix: str) -> list[Entry]:
        """Every key under `prefix` (relative), in key order."""
        entries, _revision = await self.scan_at(prefix)
        return entries

    async def scan_at(self, prefix: str) -> tuple[list[Entry], int]:
        """Every key under `prefix` and the etcd revision they were read at (to watch from +1)."""
        from etcd3aio import prefix_range_end

        full = self.key(prefix)
        answer = await self._call(
            "read",
            lambda: self._kv().get(full, range_end=prefix_range_end(full)),
        )
        return [self._entry(kv) for kv in answer.kvs], int(answer.header.revision)

    async def put(self, key: str, value: bytes, *, session_lease: bool = False) -> int:
        """Write `key`; with `session_lease` it goes when this process's session ends. Returns
        the revision written."""
        full = self.key(key)
        lease = self._lease if session_lease else 0
        if session_lease and not self.session_valid():
            raise errors.CoordinatorUnavailable("etcd: no valid session to write on")
        answer = await self._call("write", lambda: self._kv().put(full, value, lease=lease))
        return int(answer.header.revision)

    async def delete(self, key: str) -> None:
        full = self.key(key)
        await self._call("delete", lambda: self._kv().delete(full))

    def _entry(self, kv: Any) -> Entry:
        return Entry(self._relative(kv.key), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.lease)

    async def update(
        self, key: str, fn: Callable[[bytes | None], tuple[T, bytes | None]], *, session_lease: bool = False
    ) -> T:
        """Compare-and-swap: read `key`, `fn(value)` -> (result, new value), write only if nobody
        wrote in between; retried up to `MAX_CAS_TRIES` times. A new value of None deletes the
        key; the same value as before writes nothing. An existing key keeps its lease; a new one
        gets the session lease when `session_lease`. Returns `fn`'s result of the committed try.
        """
        from etcd3aio.kv import KVService as KV

        full = self.key(key)
        for _ in range(MAX_CAS_TRIES):
            answer = await self._call("read", lambda: self._kv().get(full))
            kv = answer.kvs[0] if answer.kvs else None
            old = bytes(kv.value) if kv is not None else None
            result, new = fn(old)
            if new == old:
                return result
            if kv is None:
                if session_lease and not self.session_valid():
                    raise errors.CoordinatorUnavailable("etcd: no valid session to write on")
                compare = [KV.txn_compare_create_revision(full, 0)]
                lease = self._lease if session_lease else 0
            else:
                # Same incarnation (create revision) and no write since (version): nobody wrote.
                compare = [
                    KV.txn_compare_create_revision(full, kv.create_revision),
                    KV.txn_compare_version(full, kv.version),
                ]
                lease = kv.lease
            op = KV.txn_op_delete(full) if new is None else KV.txn_op_put(full, new, lease=lease)
            written = await self._call("write", lambda: self._kv().txn(compare, [op], []))  # noqa: B023
            if written.succeeded:
                return result
        raise errors.CoordinatorUnavailable(f"etcd: {key} kept changing ({MAX_CAS_TRIES} tries); try again")

    # ---- watch ----------------------------------------------------------------------------

    async def watch(
        self, prefix: str, from_rev: int, *, initial: Iterable[Entry]
    ) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from revision `from_rev` on, until the caller stops.

        Read first (`scan_at`), then watch from its revision + 1 passing what it read as
        `initial` (required: it is the view the differences are taken against). When the stream breaks (etcd
        restarted, unreachable) or history was compacted, the prefix is read again and only the
        differences from that view are reported (a key gone meanwhile: value None; an unchanged
        key is not reported again), then watching resumes; errors never end the iteration.
        """
        from etcd3aio import prefix_range_end

        full = self.key(prefix)
        known: dict[str, bytes] = {e.key: e.value for e in initial}
        next_rev = from_rev
        backoff = 0.25
        while not self._stopping.is_set():
            resync = False
            try:
                async for answer in self._watcher().watch(
                    full, range_end=prefix_range_end(full), start_revision=next_rev
                ):
                    if answer.canceled or answer.compact_revision > 0:
                        resync = True
                        break
                    for event in answer.events:
                        key = self._relative(event.kv.key)
                        rev = int(event.kv.mod_revision)
                        if event.type == 1:
                            known.pop(key, None)
                            yield WatchEvent(key, None, rev)
                        else:
                            known[key] = bytes(event.kv.value)
                            yield WatchEvent(key, bytes(event.kv.value), rev)
                        next_rev = max(next_rev, rev + 1)
                    if answer.header.revision >= next_rev:
                        next_rev = int(answer.header.revision) + 1
                    backoff = 0.25
            except self._failures as exc:
                self._failed("watch", exc)
                resync = True
            if not resync:
                continue
            await self._pause(backoff)
            backoff = min(backoff * 2, 2.0)
            try:
                entries, revision = await self.scan_at(prefix)
            except errors.CoordinatorUnavailable:
                continue
            now = {e.key: e.value for e in entries}
            for key in sorted(set(known) - set(now)):
                yield WatchEvent(key, None, revision)
            for entry in entries:
                if known.get(entry.key) != entry.value:
                    yield WatchEvent(entry.key, entry.value, entry.mod_revision)
            known = now
            next_rev = revision + 1

    # ---- status ---------------------------------------------------------------------------

    def state(self) -> ClusterState:
        leading = self.fence()
        return ClusterState(
            name=self.spec.name,
            member=self.member,
            endpoints=self.spec.etcd.endpoints,
            etcd_up=self._up and self.session_valid(),
            is_leader=leading,
            leader=self.member if leading else self._leader_name,
            leader_since=self._leader_since if leading else None,
            lease_valid_for=max(0.0, self._valid_until - self._monotonic())
            if self._session.is_set()
            else 0.0,
            revision=self._revision,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            leader_changes=self._leader_changes,
            members=self._members,
        )
