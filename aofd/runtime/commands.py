"""Running one vetted argv as a child process (effects: processes, files, the clock).

This module owns how a command the policy allowed is executed (RELIABILITY.md section 3.2,
items 1, 3, 4 and 7):

- `asyncio.create_subprocess_exec(<pinned path>, *argv[1:])`: never a shell, never `PATH`
  lookup; `stdin` is /dev/null; the child leads its own session and process group, so a
  timeout kills the whole group (SIGTERM, a grace period, then SIGKILL), grandchildren included.
- **The environment is built from scratch**: `PATH` = the approved helpers dir only (a
  non-existent directory when there is none: an *empty* PATH means "the current directory" to
  Go and libc), `HOME` and `KUBECACHEDIR` under the daemon's cache dir (per Context),
  `KUBECONFIG` = the Context's kubeconfig, `KUBERC=off` (no user aliases or overrides),
  `LANG=C.UTF-8`, upstream's `AOF_CONTEXT`/`AOF_NAMESPACE`/`AOF_CLUSTER`, and the Context's
  declared `env`. Nothing is inherited, so `KUBECTL_EXTERNAL_DIFF`, `KUBE_EDITOR`, `LD_PRELOAD`
  and the daemon's own secrets never reach the child. A Context `env` that tries to set one of
  the variables aofd controls, or one that makes a program run another, is refused.
- **cwd** is the Context's `working_dir`, else a fresh private directory per command, removed
  afterwards: two commands never share a working directory by accident.
- **Output** is captured up to `max_output_bytes` per stream while the rest is still read and
  hashed (a command printing 1 GB costs CPU, not memory); the digest and byte count of stdout
  are kept whatever the cap.
- `check_kubeconfig` refuses kubeconfigs with exec credential plugins or auth providers that
  are not allow-listed; `check_executables` vets the pinned paths at startup.

The kubeconfig is not rewritten and `--kubeconfig` is not injected: `KUBECONFIG` in a scratch
environment is enough, and identity flags in the argv are refused by the policy.

**Commands die with the daemon** (RELIABILITY.md section 3.2): on Linux the child asks for
`SIGKILL` when the thread that forked it dies (`PR_SET_PDEATHSIG`, set between fork and exec;
asyncio forks from the event loop thread, which lives as long as the daemon), and while it
runs the command is listed in the `Ledger` (`<state_dir>/commands/<command id>.json`: pid,
process start time, boot id). A parent-death signal is not inherited by the command's own
children, so at the next start `reap_survivors` kills the process group of every listed
command that is still there, after checking the pid still names the same process (its start
time from `/proc/<pid>/stat`), and reports it for the audit log (`command.abandoned` with
`killed`). The entry stays, marked with what was killed, until the daemon has made that
record durable in the Context's audit log (whose directory the entry records), and is
removed only then (`Ledger.remove`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from aofd import errors, settings
from aofd.resources import documents
from aofd.specs import kubectl, policy

log = structlog.get_logger("aofd.runtime")

MAX_KUBECONFIG_BYTES = 1024 * 1024
MISSING_PATH = "/nonexistent/aofd-helpers"
"""The child's PATH when no helpers dir is configured (never empty: empty means ".")."""


def check_kubeconfig(path: str | None, allowed_plugins: Sequence[str]) -> str | None:
    """Why a kubeconfig may not be used, or None when it may.

    Refuses an unreadable or invalid file, and any `users[].user.exec` or `auth-provider`
    whose command (`exec.command`, `auth-provider.config.cmd-path`, else the provider's name)
    is not in `allowed_plugins` ("exec credential plugin not allowed"). A colon-separated
    list checks every file. None for no kubeconfig at all.
    """
    if not path:
        return None
    allowed = set(allowed_plugins)
    for one in path.split(os.pathsep):
        if not one:
            continue
        try:
            with open(one, "rb") as fh:
                content = fh.read(MAX_KUBECONFIG_BYTES + 1)
        except OSError as exc:
            return f"kubeconfig {one} cannot be read: {exc.strerror or exc}"
        if len(content) > MAX_KUBECONFIG_BYTES:
            return f"kubeconfig {one} is larger than {MAX_KUBECONFIG_BYTES} bytes"
        parsed = documents.parse(one, content)
        if not parsed.ok:
            return f"kubeconfig {one} is not valid: {parsed.issues[0].message}"
        for doc in parsed.documents:
            problem = _kubeconfig_users_problem(one, doc.data, allowed)
            if problem is not None:
                return problem
    return None


def _kubeconfig_users_problem(path: str, data: object, allowed: set[str]) -> str | None:
    if not isinstance(data, dict):
        return f"kubeconfig {path} is not a mapping"
    users = data.get("users") or []
    if not isinstance(users, list):
        return f"kubeconfig {path}: users is not a list"
    for entry in users:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name", "?")
        user = entry.get("user") or {}
        if not isinstance(user, dict):
            continue
        exec_cfg = user.get("exec")
        if exec_cfg is not None:
            command = exec_cfg.get("command") if isinstance(exec_cfg, dict) else None
            if not isinstance(command, str) or command not in allowed:
                return (
                    f"kubeconfig {path}: user {name!r} uses exec credential plugin {command!r}: "
                    "exec credential plugin not allowed (add it to executables.allowed_credential_plugins)"
                )
        provider = user.get("auth-provider")
        if provider is not None:
            config = provider.get("config") if isinstance(provider, dict) else None
            cmd_path = config.get("cmd-path") if isinstance(config, dict) else None
            what = cmd_path if cmd_path else (provider.get("name") if isinstance(provider, dict) else None)
            if not isinstance(what, str) or what not in allowed:
                return (
                    f"kubeconfig {path}: user {name!r} uses auth-provider {what!r}: "
                    "auth provider not allowed (add it to executables.allowed_credential_plugins)"
                )
    return None


def check_executables(spec: settings.ExecutablesSpec) -> list[str]:
    """Problems with the pinned executables (run at startup): relative, missing, not executable,
    a wrapper, or a symlink whose target is a wrapper."""
    problems: list[str] = []
    for name, path in sorted(spec.paths.items()):
        if "/" in name or policy.is_wrapper(name):
            problems.append(f"executables.paths: {name!r} may not be pinned (a path or a wrapper)")
            continue
        if not path.is_absolute():
            problems.append(f"executables.paths.{name}: {path} is not an absolute path")
            continue
        real = Path(os.path.realpath(path))
        if not real.is_file() or not os.access(real, os.X_OK):
            problems.append(f"executables.paths.{name}: {path} is not an executable file")
        elif policy.is_wrapper(real.name):
            problems.append(f"executables.paths.{name}: {path} resolves to {real}, a wrapper or interpreter")
    if spec.helpers_dir is not None and not spec.helpers_dir.is_absolute():
        problems.append(f"executables.helpers_dir: {spec.helpers_dir} is not an absolute path")
    return problems


# -- commands that outlive the daemon ---------------------------------------------------------

PR_SET_PDEATHSIG: Final = 1
_SIGKILL: Final = int(signal.SIGKILL)
_COMMAND_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"


def _load_prctl() -> Callable[[int, int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    prctl: Callable[[int, int, int, int, int], int] = fn
    return prctl


_PRCTL: Final = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when the forking thread dies (Linux).

    It runs in the child between fork and exec and does only a prebound `prctl` call and a
    `getppid` check (the daemon may have died before the `prctl`: then the child kills itself).
    None where there is no `prctl`.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), _SIGKILL)

    return preexec


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of `/proc/<pid>/stat` after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw.rpartition(b")")[2].decode("ascii", "replace").split()


def proc_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22), or None."""
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def boot_id() -> str:
    """This boot's id (a pid and a start time only mean something within one boot), or ""
    where it is hidden (systemd's `ProcSubset=pid` hides `/proc/sys`)."""
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def booted_at() -> float:
    """When this boot began (wall clock), from `CLOCK_BOOTTIME`: the fallback for `boot_id`."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


SAME_BOOT_TOLERANCE_S: Final = 120.0
"""How far two `booted_at` readings of one boot may differ (wall clock adjustments)."""


def _same_boot(entry: dict[str, Any], this_boot: str, this_booted_at: float) -> bool:
    recorded = entry.get("boot_id")
    if recorded and this_boot:
        return bool(recorded == this_boot)
    at = entry.get("booted_at")
    return isinstance(at, int | float) and abs(at - this_booted_at) < SAME_BOOT_TOLERANCE_S


@dataclasses.dataclass(frozen=True, slots=True)
class Reaped:
    """A command found in the ledger at start-up: was its process group still there and killed?"""

    command_id: str
    context: str
    run_id: str
    pid: int
    killed: bool
    reason: str
    processes: int = 0
    audit_dir: str = ""
    """Where the Context's audit log was when the command started ("" when not known)."""

    def audit_fields(self) -> dict[str, Any]:
        """What `command.abandoned` adds under `aofd.abandoned` (the run id also closes the run)."""
        return {
            "killed": self.killed,
            "pid": self.pid,
            "processes": self.processes,
            "kill_reason": self.reason,
            "run_id": self.run_id,
        }


class Ledger:
    """The commands running now, one small JSON file each under `directory` (the state dir's
    `commands/`): id, Context, run id, pid (= process group, the child leads its session),
    process start time, boot id and the directory of the Context's audit log (`log_dir`).
    Written after the spawn, removed once the group is ended. A write that fails is logged and
    the command still runs (the parent-death signal remains).

    At the next start `reap_survivors` marks what it found (`reaped`: what was killed) and
    keeps the entry; it is removed only once the closing record is durable in the audit log.
    """

    def __init__(self, directory: Path, *, log_dir: Callable[[str], Path | None] | None = None) -> None:
        self.directory = directory
        self._log_dir = log_dir

    def _path(self, command_id: str) -> Path | None:
        return self.directory / f"{command_id}.json" if _COMMAND_ID.match(command_id) else None

    def record(self, command_id: str, *, context: str, run_id: str, pid: int) -> None:
        path = self._path(command_id)
        if path is None:
            return
        entry = {
            "id": command_id,
            "context": context,
            "run_id": run_id,
            "pid": pid,
            "start_ticks": proc_start_ticks(pid),
            "boot_id": boot_id(),
            "booted_at": booted_at(),
            "recorded_at": time.time(),
        }
        where = self._log_dir(context) if self._log_dir is not None else None
        if where is not None:
            entry["audit_dir"] = str(where)
        try:
            self._write(path, entry)
        except OSError as exc:
            log.warning("command ledger not written", command_id=command_id, error=str(exc))

    def _write(self, path: Path, entry: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            data = memoryview(json.dumps(entry).encode())
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def mark_reaped(self, path: Path, entry: dict[str, Any], reaped: Reaped) -> None:
        """Record in the entry what the reaper found, so that a later start reports the same
        (and signals nothing again) if this one dies before the closing record is written."""
        marked = {
            **entry,
            "reaped": {"killed": reaped.killed, "reason": reaped.reason, "processes": reaped.processes},
        }
        try:
            self._write(path, marked)
        except OSError as exc:
            log.warning(
                "command ledger entry not marked as reaped", command_id=reaped.command_id, error=str(exc)
            )

    def remove(self, command_id: str) -> None:
        path = self._path(command_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def entries(self) -> list[tuple[Path, dict[str, Any] | None]]:
        """Every entry (None for one that cannot be read), leftover temporary files included."""
        try:
            paths = sorted(p for p in self.directory.iterdir() if p.suffix in (".json", ".tmp"))
        except FileNotFoundError:
            return []
        out: list[tuple[Path, dict[str, Any] | None]] = []
        for path in paths:
            try:
                data = json.loads(path.read_bytes()) if path.suffix == ".json" else None
            except (OSError, ValueError):
                data = None
            valid = (
                isinstance(data, dict)
                and isinstance(data.get("id"), str)
                and isinstance(data.get("pid"), int)
                and data["pid"] > 1
                and isinstance(data.get("start_ticks"), int)
            )
            out.append((path, data if valid else None))
        return out


def _process_groups() -> dict[int, list[tuple[int, int]]]:
    """Every process by process group: pgid -> [(pid, start ticks)]."""
    groups: dict[int, list[tuple[int, int]]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            fields = _proc_stat(int(name))
            if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
                continue
            groups.setdefault(int(fields[2]), []).append((int(name), int(fields[19])))
    return groups


def reap_survivors(ledger: Ledger) -> list[Reaped]:
    """Kill (SIGKILL to the group) what is left of every command in `ledger`; report each.

    A command's group is killed only if it is really that command's: same boot, and either the
    leader still runs with the recorded start time, or the leader is gone and processes started
    after it remain in its group (a pid still in use as a process group id is never reused).
    A pid that now names another process is left alone. Entries stay, marked `reaped` (an entry
    already marked is reported as recorded and nothing is signalled again): the caller removes
    each with `Ledger.remove` once its `command.abandoned` is durable. Unreadable entries are
    removed. Call it before anything starts new commands, holding the state dir lock.
    """
    entries = ledger.entries()
    if not entries:
        return []
    groups = _process_groups()
    this_boot, this_booted_at = boot_id(), booted_at()
    out: list[Reaped] = []
    for path, entry in entries:
        if entry is None:
            log.warning("command ledger entry unreadable; removed", file=path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        before = entry.get("reaped")
        if isinstance(before, dict):
            found = _reaped(
                entry,
                before.get("killed") is True,
                str(before.get("reason", "")),
                _int(before.get("processes")),
            )
        elif not _same_boot(entry, this_boot, this_booted_at):
            found = _reaped(entry, False, "recorded before a reboot")
        else:
            found = _reap_one(entry, groups)
        if not isinstance(before, dict):
            ledger.mark_reaped(path, entry, found)
        out.append(found)
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _reaped(entry: dict[str, Any], killed: bool, reason: str, processes: int = 0) -> Reaped:
    audit_dir = entry.get("audit_dir")
    return Reaped(
        command_id=str(entry["id"]),
        context=str(entry.get("context", "")),
        run_id=str(entry.get("run_id", "")),
        pid=int(entry["pid"]),
        killed=killed,
        reason=reason,
        processes=processes,
        audit_dir=audit_dir if isinstance(audit_dir, str) else "",
    )


def _reap_one(entry: dict[str, Any], groups: dict[int, list[tuple[int, int]]]) -> Reaped:
    pid, start = int(entry["pid"]), int(entry["start_ticks"])

    def result(killed: bool, reason: str, processes: int = 0) -> Reaped:
        return _reaped(entry, killed, reason, processes)

    members = groups.get(pid, [])
    leader = [ticks for member, ticks in members if member == pid]
    if leader and leader[0] != start:
        return result(False, "the pid now names another process")
    if not leader and proc_start_ticks(pid) not in (None, start):
        return result(False, "the pid now names another process")
    ours = [member for member, ticks in members if ticks >= start]
    if not ours:
        return result(False, "no process of the command was left")
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError) as exc:
        return result(False, f"could not kill the process group: {exc.strerror or exc}")
    return result(True, "still running at restart", len(ours))


@dataclasses.dataclass(frozen=True, slots=True)
class CommandResult:
    """What one command did.

    `stdout`/`stderr` hold at most `max_output_bytes` each (decoded, invalid UTF-8 replaced);
    `truncated` says a cap was hit; `output_sha256`/`output_bytes` describe the *whole* stdout,
    `stderr_bytes` the whole stderr. `exit_code` is negative when a signal ended the process.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_s: float
    output_sha256: str
    output_bytes: int
    stderr_bytes: int = 0
    cwd: str = ""


class StartFailed(errors.AofdError):
    """The command could not be started (exec failed, bad working directory)."""


class _Capture:
    """A capped buffer that still counts and hashes everything it is fed."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.total = 0
        self.digest = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.digest.update(chunk)
        room = self.cap - len(self.buf)
        if room > 0:
            self.buf += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.buf)


async def _drain(stream: asyncio.StreamReader | None, capture: _Capture) -> None:
    if stream is None:
        return
    while chunk := await stream.read(1 << 20):
        capture.feed(chunk)


def _safe_component(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "run"


class CommandRunner:
    """Runs vetted commands for every Context; one per daemon.

    Args:
        executables: pinned paths, helpers dir, output cap and default timeout.
        cache_dir: per-daemon cache; `HOME` and `KUBECACHEDIR` live under `<cache_dir>/<context>/`.
        work_dir: where per-command working directories are created (when a Context has no
            `working_dir`).
        kill_grace: seconds between SIGTERM and SIGKILL of a timed-out process group.
        ledger: where running commands are listed for `reap_survivors` (None: not listed).
    """

    def __init__(
        self,
        *,
        executables: settings.ExecutablesSpec,
        cache_dir: Path,
        work_dir: Path,
        kill_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        ledger: Ledger | None = None,
    ) -> None:
        self.executables = executables
        self._cache_dir = cache_dir
        self._work_dir = work_dir
        self._kill_grace = kill_grace
        self._clock = clock
        self._ledger = ledger

    def build_env(self, pol: policy.GuardPolicy) -> dict[str, str]:
        """The complete child environment for a Context (nothing inherited from the daemon).

        Raises:
            aofd.errors.PolicyDenied: the Context's env sets a reserved or dangerous variable.
        """
        declared = pol.env_map
        problems = policy.env_problems(declared)
        if problems:  # compiled policies never carry these; this guards hand-built ones
            raise errors.PolicyDenied(problems[0][1], rule="env")
        base = self._context_dir(pol.context)
        env = dict(declared)
        env.update(
            {
                "PATH": str(self.executables.helpers_dir) if self.executables.helpers_dir else MISSING_PATH,
                "HOME": str(base / "home"),
                "KUBECACHEDIR": str(base / "kube-cache"),
                "KUBERC": "off",
                "LANG": "C.UTF-8",
                "AOF_CONTEXT": pol.context,
            }
        )
        if pol.kubeconfig:
            env["KUBECONFIG"] = pol.kubeconfig
        if pol.namespace:
            env["AOF_NAMESPACE"] = pol.namespace
        if pol.cluster:
            env["AOF_CLUSTER"] = pol.cluster
        return env

    def _context_dir(self, context: str) -> Path:
        if not kubectl.DNS1123_LABEL.match(context) or len(context) > 63:
            raise errors.PolicyDenied(f"invalid Context name {context!r}", rule="context")
        return self._cache_dir / context

    def _prepare_dirs(self, context: str) -> None:
        base = self._context_dir(context)
        for sub in ("home", "kube-cache"):
            (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    async def run(
        self,
        argv: Sequence[str],
        *,
        executable: Path,
        pol: policy.GuardPolicy,
        run_id: str = "",
        time_limit: float | None = None,
        command_id: str = "",
    ) -> CommandResult:
        """Run `argv` (argv[0] is replaced by `executable`) under the Context `pol`.

        `command_id` (the audit's `event.id` of the command) names its ledger entry.

        Raises:
            aofd.errors.PolicyDenied: the Context's env is refused.
            StartFailed: the working directory is unusable or exec failed.
        """
        env = self.build_env(pol)
        limit = self.executables.command_timeout if time_limit is None else time_limit
        try:
            self._prepare_dirs(pol.context)
            cwd, owned = self._prepare_cwd(pol, run_id)
        except OSError as exc:
            raise StartFailed(f"cannot prepare directories for the command: {exc}") from exc
        try:
            return await self._spawn(
                argv,
                executable,
                env,
                cwd,
                limit,
                self.executables.max_output_bytes,
                owner=(command_id, pol.context, run_id),
            )
        finally:
            if owned:
                shutil.rmtree(cwd, ignore_errors=True)

    def _prepare_cwd(self, pol: policy.GuardPolicy, run_id: str) -> tuple[str, bool]:
        """The working directory, and whether it is a fresh one this command owns (and removes)."""
        if pol.working_dir:
            cwd = pol.working_dir
            if not os.path.isabs(cwd) or not os.path.isdir(cwd):
                raise StartFailed(f"working_dir {cwd} is not an existing absolute directory")
            return cwd, False
        self._work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        prefix = f"{pol.context}-{_safe_component(run_id)}-"
        return tempfile.mkdtemp(prefix=prefix, dir=self._work_dir), True

    async def _spawn(
        self,
        argv: Sequence[str],
        executable: Path,
        env: dict[str, str],
        cwd: str,
        limit: float,
        cap: int,
        owner: tuple[str, str, str] = ("", "", ""),
    ) -> CommandResult:
        started = self._clock()
        try:
            proc = await asyncio.create_subprocess_exec(
                str(executable),
                *argv[1:],
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(),
                limit=1 << 20,
            )
        except OSError as exc:
            raise StartFailed(f"cannot start {executable}: {exc.strerror or exc}") from exc
        command_id, context, run_id = owner
        listed = self._ledger is not None and bool(command_id)
        if listed:
            assert self._ledger is not None
            self._ledger.record(command_id, context=context, run_id=run_id, pid=proc.pid)
        out, err = _Capture(cap), _Capture(cap)
        drains = [
            asyncio.create_task(_drain(proc.stdout, out)),
            asyncio.create_task(_drain(proc.stderr, err)),
        ]
        timed_out = False
        try:
            try:
                async with asyncio.timeout(limit):
                    # asyncio.wait never cancels the drains: after a timeout they read to EOF.
                    await asyncio.wait(drains)
                    await proc.wait()
            except TimeoutError:
                timed_out = True
        finally:
            try:
                await self._end_group(proc)
            finally:
                if listed:
                    assert self._ledger is not None
                    self._ledger.remove(command_id)
            _, pending = await asyncio.wait(drains, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
        return CommandResult(
            exit_code=proc.returncode,
            stdout=bytes(out.buf).decode("utf-8", "replace"),
            stderr=bytes(err.buf).decode("utf-8", "replace"),
            truncated=out.truncated or err.truncated,
            timed_out=timed_out,
            duration_s=self._clock() - started,
            output_sha256=out.digest.hexdigest(),
            output_bytes=out.total,
            stderr_bytes=err.total,
            cwd=cwd,
        )

    async def _end_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the group if the leader still runs, wait `kill_grace`, then SIGKILL the group.

        The final SIGKILL also runs after a normal exit: background children left in the group
        must not outlive the command.
        """
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), self._kill_grace)
        finally:  # also when the run is cancelled during the grace period
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
