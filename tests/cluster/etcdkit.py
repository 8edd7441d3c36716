"""Throwaway etcd servers on loopback for the cluster tests (Debian's `etcd-server`).

`EtcdCluster.start(n)` runs `n` members (1 or 3) on free loopback ports with their data in
`/dev/shm` (no fsync cost) and fast raft timers (heartbeat 50 ms, election 500 ms), and waits
until each answers `/health`. Members can be killed, paused (SIGSTOP), resumed and restarted on
the same ports and data. Optional TLS (a throwaway CA, a server certificate for 127.0.0.1 and a
client certificate, made with `openssl`) with client-certificate auth. `close()` kills every
member and removes the data. Tests skip (with a reason) when `etcd` is not installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ETCD = shutil.which("etcd")
SKIP_REASON = "etcd is not installed (Debian: apt-get install etcd-server; .ci/run installs it)"
requires_etcd = pytest.mark.skipif(ETCD is None, reason=SKIP_REASON)


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports: every socket stays bound until all are chosen (a port
    released early could be handed out twice)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


@dataclasses.dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, root: Path) -> Pki:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("openssl is not installed: no certificates for the etcd TLS test")
        root.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], cwd=root, check=True, capture_output=True)

        def key(name: str) -> None:
            run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name)

        key("ca.key")
        run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=test-ca", "-days", "2", "-out", "ca.pem")
        (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        (root / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        for name, cn in (("server", "127.0.0.1"), ("client", "aofd")):
            key(f"{name}.key")
            run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr")
            run(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            )  # fmt: skip
        return cls(
            root / "ca.pem",
            root / "server.pem",
            root / "server.key",
            root / "client.pem",
            root / "client.key",
        )


@dataclasses.dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    args: list[str]
    log: Path
    pki: Pki | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.pki else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def healthy(self) -> bool:
        context: ssl.SSLContext | None = None
        if self.pki is not None:
            context = ssl.create_default_context(cafile=str(self.pki.ca))
            context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5, context=context) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Healthy *and* still running: a port taken by another server in between free_ports()
            # and etcd's bind must not pass for this member.
            if self.healthy() and self.proc is not None and self.proc.poll() is None:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {self.name} exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            time.sleep(0.02)
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill, then start again on the same ports and data (raft state and keys survive)."""
        self.kill()
        self.spawn()


class EtcdCluster:
    """`n` etcd members on loopback (see the module docstring); use as a context manager."""

    def __init__(self, root: Path, members: list[Member], pki: Pki | None) -> None:
        self.root = root
        self.members = members
        self.pki = pki

    @classmethod
    def start(cls, n: int = 1, *, tls: bool = False) -> EtcdCluster:
        if ETCD is None:
            pytest.skip(SKIP_REASON)
        shm = Path("/dev/shm")
        root = Path(tempfile.mkdtemp(prefix="aofd-etcd-", dir=shm if shm.is_dir() else None))
        pki = Pki.make(root / "pki") if tls else None
        chosen = free_ports(2 * n)
        ports = [(chosen[2 * i], chosen[2 * i + 1]) for i in range(n)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        members = []
        for i, (client, peer) in enumerate(ports):
            scheme = "https" if pki else "http"
            args = [
                ETCD, "--name", f"m{i}", "--data-dir", str(root / f"m{i}"),
                "--listen-client-urls", f"{scheme}://127.0.0.1:{client}",
                "--advertise-client-urls", f"{scheme}://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", root.name,
                "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error",
            ]  # fmt: skip
            if pki is not None:
                args += [
                    "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
                    "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
                ]  # fmt: skip
            members.append(Member(f"m{i}", client, peer, root / f"m{i}", args, root / f"m{i}.log", pki))
        cluster = cls(root, members, pki)
        try:
            for m in members:
                m.spawn()
            for m in members:
                m.wait_healthy()
        except BaseException:
            cluster.close()
            raise
        return cluster

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.url for m in self.members)

    def raft_leader(self) -> Member:
        """The member that is the raft leader now (asks each member's `/v3/maintenance/status`)."""
        for m in self.members:
            if m.proc is None or self.pki is not None:
                continue
            request = urllib.request.Request(f"{m.url}/v3/maintenance/status", data=b"{}", method="POST")
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(request, timeout=1) as answer,
            ):
                status = json.load(answer)
                if status["header"]["member_id"] == status["leader"]:
                    return m
        raise RuntimeError("no raft leader found")

    def close(self) -> None:
        for m in self.members:
            m.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def environ_has_no_proxy() -> None:
    """gRPC honours http_proxy; loopback etcd must never go through one."""
    os.environ.setdefault("no_grpc_proxy", "127.0.0.1,localhost")
