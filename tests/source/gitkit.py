"""Test helpers for aofd.source: real git repositories made with the `git` CLI, and loopback
git servers (git daemon, git http-backend behind a token-checking HTTP server, sshd).

Every server is started by a context manager that stops it and reaps its process/thread
on exit, so no test leaves a process or thread behind.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run git hermetically (no user or system config) and return stdout."""
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=30
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


@dataclasses.dataclass
class Remote:
    """A bare repository (`bare`) used as the remote, and a work clone (`work`) that pushes to it."""

    bare: Path
    work: Path
    branch: str = "main"

    @classmethod
    def create(cls, root: Path, name: str = "remote") -> Remote:
        bare = root / f"{name}.git"
        work = root / f"{name}-work"
        git("init", "-q", "--bare", "-b", "main", str(bare))
        git("init", "-q", "-b", "main", str(work))
        git("remote", "add", "origin", str(bare), cwd=work)
        return cls(bare, work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def write(self, path: str, content: str | bytes) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)

    def remove(self, path: str) -> None:
        git("rm", "-q", "-r", path, cwd=self.work)

    def commit(self, message: str = "change", *, push: bool = True, force: bool = False) -> str:
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        if push:
            self.push(force=force)
        return self.head()

    def push(self, *, force: bool = False, ref: str | None = None) -> None:
        args = ["push", "-q"] + (["--force"] if force else []) + ["origin", ref or self.branch]
        git(*args, cwd=self.work)

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def git(self, *args: str) -> str:
        return git(*args, cwd=self.work)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


@contextlib.contextmanager
def _process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, env={**os.environ, **GIT_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """`git daemon` on loopback serving every repo under `base`; yields `git://127.0.0.1:PORT`."""
    port = free_port()
    args = [
        "git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
        "--listen=127.0.0.1", f"--port={port}", "--informative-errors", str(base),
    ]  # fmt: skip
    with _process(args, port):
        yield f"git://127.0.0.1:{port}"


@dataclasses.dataclass
class HttpLog:
    """What the HTTP server saw: request lines and the Authorization header values."""

    requests: list[str] = dataclasses.field(default_factory=list)
    authorizations: list[str] = dataclasses.field(default_factory=list)


class _GitHttpHandler(http.server.BaseHTTPRequestHandler):
    """CGI bridge to `git http-backend`, behind HTTP Basic auth with a fixed password."""

    server: _GitHttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def _serve(self) -> None:
        log = self.server.log
        log.requests.append(f"{self.command} {self.path}")
        auth = self.headers.get("Authorization", "")
        log.authorizations.append(auth)
        body = self._body() if self.command == "POST" else b""
        expected = "Basic " + base64.b64encode(f"{self.server.user}:{self.server.token}".encode()).decode()
        if auth != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            **os.environ,
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.server.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.server.user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False, timeout=30
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, base: Path, user: str, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _GitHttpHandler)
        self.base = base
        self.user = user
        self.token = token
        self.log = HttpLog()


@contextlib.contextmanager
def git_http(base: Path, *, user: str, token: str) -> Iterator[tuple[str, HttpLog]]:
    """Smart HTTP (`git http-backend`) on loopback requiring Basic auth `user:token`.

    Yields (`http://127.0.0.1:PORT`, the request log).
    """
    server = _GitHttpServer(base, user, token)
    thread = threading.Thread(target=server.serve_forever, name="test-git-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclasses.dataclass
class Sshd:
    url_prefix: str
    port: int
    host_public_key: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    client_public_key: Path


def sshd_available() -> bool:
    return shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists()


@contextlib.contextmanager
def sshd(root: Path) -> Iterator[Sshd]:
    """An OpenSSH server on loopback accepting one generated client key for the current user."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = root / "host_ed25519"
    client_key = root / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
    authorized = root / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        f"SetEnv GIT_CONFIG_GLOBAL=/dev/null\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    user = os.environ.get("USER") or "root"
    with _process([sshd_bin, "-D", "-e", "-f", str(config)], port):
        yield Sshd(
            url_prefix=f"ssh://{user}@127.0.0.1:{port}",
            port=port,
            host_public_key=" ".join(host_key.with_suffix(".pub").read_text().split()[:2]),
            client_key=client_key,
            client_public_key=client_key.with_suffix(".pub"),
        )


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung remote)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, name="test-silent-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()
