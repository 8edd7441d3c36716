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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aofd import errors, settings
from aofd.resources import documents
from aofd.specs import kubectl, policy

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
    """

    def __init__(
        self,
        *,
        executables: settings.ExecutablesSpec,
        cache_dir: Path,
        work_dir: Path,
        kill_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.executables = executables
        self._cache_dir = cache_dir
        self._work_dir = work_dir
        self._kill_grace = kill_grace
        self._clock = clock

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
    ) -> CommandResult:
        """Run `argv` (argv[0] is replaced by `executable`) under the Context `pol`.

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
            return await self._spawn(argv, executable, env, cwd, limit, self.executables.max_output_bytes)
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
                limit=1 << 20,
            )
        except OSError as exc:
            raise StartFailed(f"cannot start {executable}: {exc.strerror or exc}") from exc
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
            await self._end_group(proc)
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
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self._kill_grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
