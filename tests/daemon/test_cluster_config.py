"""The `cluster:` section of the daemon config: defaults, durations, relative file paths, and
errors at file:line for what cannot work; a single host never loads the etcd client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.daemon import config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aofd.yaml"
    path.write_text(text)
    return path


def test_cluster_loads_with_defaults_durations_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cluster:\n"
        "  name: ops-prod\n"
        "  member: host-a\n"
        "  etcd:\n"
        "    endpoints:\n"
        "      - https://etcd-1:2379\n"
        "      - https://etcd-2:2379\n"
        "    ca_file: pki/ca.pem\n"
        "    cert_file: pki/client.pem\n"
        "    key_file: /etc/aofd/client.key\n"
        "    user: aofd\n"
        "    password_file: etcd-password\n"
        "    tls_server_name: etcd.internal\n"
        "    request_timeout: 500ms\n"
        "  lease_ttl: 15s\n"
        "  claim_ttl: 2h\n",
    )
    spec = config.load(path).cluster
    assert spec is not None
    assert ("ops-prod", "host-a", 15.0, 30.0, 7200.0) == (
        spec.name,
        spec.member,
        spec.lease_ttl,
        spec.misfire_grace,
        spec.claim_ttl,
    )
    assert tmp_path / "pki/ca.pem" == spec.etcd.ca_file
    assert tmp_path / "pki/client.pem" == spec.etcd.cert_file
    assert Path("/etc/aofd/client.key") == spec.etcd.key_file
    assert tmp_path / "etcd-password" == spec.etcd.password_file
    assert (0.5, 5.0) == (spec.etcd.request_timeout, spec.etcd.dial_timeout)
    assert (("etcd-1", 2379), ("etcd-2", 2379)) == spec.etcd.host_ports()
    assert spec.etcd.tls


def test_without_cluster_there_is_none_and_the_member_defaults_to_the_host_name(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "listen: 127.0.0.1:0\n")).cluster is None
    spec = settings.ClusterSpec(name="a", etcd=settings.EtcdSpec(endpoints=("http://127.0.0.1:2379",)))
    assert spec.member == settings.default_member_name()
    assert spec.member
    assert spec.member == spec.member.lower()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("name: ops\n  etcd: {endpoints: []}\n", 3, "cluster.etcd.endpoints"),
        (
            'name: ops\n  etcd:\n    endpoints: ["etcd-1:2379"]\n',
            4,
            "must be http://HOST:PORT or https://HOST:PORT",
        ),
        (
            'name: ops\n  etcd:\n    endpoints: ["https://a:2379", "http://b:2379"]\n',
            4,
            "all be https:// or all be http://",
        ),
        ('name: ops\n  etcd:\n    endpoints: ["https://u:p@a:2379"]\n', 4, "must not hold user info"),
        (
            'name: ops\n  etcd:\n    endpoints: ["https://a:2379", "https://b:2379"]\n',
            5,
            "several https:// endpoints need tls_server_name",
        ),
        (
            'name: ops\n  etcd:\n    endpoints: ["https://a:2379"]\n    cert_file: c.pem\n',
            5,
            "cert_file and key_file go together",
        ),
        (
            'name: ops\n  etcd:\n    endpoints: ["https://a:2379"]\n    user: aofd\n',
            5,
            "user and password_file go together",
        ),
        (
            'name: ops\n  etcd:\n    endpoints: ["http://a:2379"]\n    ca_file: ca.pem\n',
            5,
            "need https:// endpoints",
        ),
        ('name: ops\n  etcd: {endpoints: ["http://a:2379"]}\n  lease_ttl: 2s\n', 4, "from 3s to 5m"),
        ('name: ops\n  etcd: {endpoints: ["http://a:2379"]}\n  lease_ttl: soon\n', 4, "expected a duration"),
        ('name: ops\n  etcd: {endpoints: ["http://a:2379"]}\n  claim_ttl: 1m\n', 4, "claim_ttl must be"),
        ('name: Ops_Prod\n  etcd: {endpoints: ["http://a:2379"]}\n', 2, "cluster.name"),
        ('name: ops\n  member: Host A\n  etcd: {endpoints: ["http://a:2379"]}\n', 3, "cluster.member"),
        (
            'name: ops\n  etcd: {endpoints: ["http://a:2379"], timeout: 1s}\n',
            3,
            "unknown setting 'cluster.etcd.timeout'",
        ),
        ('etcd: {endpoints: ["http://a:2379"]}\n', 3, "cluster.name"),
        (
            'name: ops\n  etcd: {endpoints: ["http://a:2379"], request_timeout: 5m}\n  lease_ttl: 3s\n',
            2,
            "request_timeout (300s) must be at most a third of lease_ttl (3s)",
        ),
        (
            'name: ops\n  etcd: {endpoints: ["http://a:2379"]}\n  lease_ttl: 60s\n',
            2,
            "misfire_grace (30s) must be at least 74s with lease_ttl 60s",
        ),
    ],
)
def test_bad_cluster_settings_say_where_and_why(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:0\ncluster:\n  " + text)
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)
    issues = caught.value.issues
    assert any(words in i.message for i in issues), [i.format() for i in issues]
    assert any(i.line in (line, line + 1) for i in issues), [i.format() for i in issues]


def test_a_single_host_never_imports_the_etcd_client() -> None:
    code = (
        "import sys\n"
        "import aofd.daemon.config, aofd.runtime.cluster, aofd.runtime.claims\n"
        "import aofd.runtime.listeners.factory\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('etcd3aio', 'grpc')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "[]" == out.stdout.strip()


def test_the_etcd_client_is_loaded_with_grpc_fork_support_off() -> None:
    code = (
        "import os, sys\n"
        "os.environ.pop('GRPC_ENABLE_FORK_SUPPORT', None)\n"
        "from aofd.runtime import cluster\n"
        "cluster._load_client()\n"
        "print(os.environ['GRPC_ENABLE_FORK_SUPPORT'], 'grpc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "0 True" == out.stdout.strip()
