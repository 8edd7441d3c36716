"""Git sources over real loopback servers: git daemon, git http-backend with a token, sshd
with known_hosts, and a remote that never answers (timeout)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import gitkit
import pytest
import structlog
from gitkit import Remote

from aofd.errors import SourceError
from aofd.settings import GitAuth, GitSourceSpec, SourceSpec
from aofd.source import runner

pytestmark = pytest.mark.slow

TOKEN = "tok-7f3a9c2e-d41d-4e2b-9a77-s3cr3t"


def _source(
    url: str, state_dir: Path, *, auth: GitAuth | None = None, timeout: float = 20.0
) -> runner.GitSource:
    spec = SourceSpec(name="main", git=GitSourceSpec(url=url, auth=auth, timeout=timeout))
    return runner.GitSource(spec, state_dir)


def _everything_said(
    source: runner.GitSource, error: BaseException | None, logs: list[dict[str, object]]
) -> str:
    """Every string a user or a log shipper could see about this source."""
    parts = [repr(source.status()), str(source.status())]
    while error is not None:
        parts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    parts += [repr(entry) for entry in logs]
    return "\n".join(parts)


async def test_git_daemon(remote: Remote, state_dir: Path) -> None:
    """Over git://: a shallow fetch; unchanged remote costs one ls-remote; a new commit one fetch."""
    with gitkit.git_daemon(remote.bare.parent) as base:
        source = _source(f"{base}/{remote.bare.name}", state_dir)
        first = await source.fetch()
        assert remote.head() == first.revision
        assert (state_dir / "sources" / "main.git" / "shallow").exists()
        assert first is await source.fetch()
        assert (2, 1) == (source.mirror.stats.ls_remotes, source.mirror.stats.fetches)
        remote.write("agent.yaml", "kind: Agent\nmetadata: {name: b}\n")
        remote.commit("second")
        second = await source.fetch()
        assert remote.head() == second.revision
        assert second.files["flows/flow.yaml"] is first.files["flows/flow.yaml"]
        assert 2 == source.mirror.stats.fetches


async def test_http_token(remote: Remote, state_dir: Path, tmp_path: Path) -> None:
    """Over smart HTTP with Basic auth, the token from the file is sent and the fetch works."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with gitkit.git_http(remote.bare.parent, user="x-access-token", token=TOKEN) as (base, log):
        source = _source(f"{base}/{remote.bare.name}", state_dir, auth=GitAuth(token_file=token_file))
        snap = await source.fetch()
    assert remote.head() == snap.revision
    expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert expected in log.authorizations


async def test_http_wrong_token_never_leaks(remote: Remote, state_dir: Path, tmp_path: Path) -> None:
    """A wrong token fails with an auth error; neither token appears in errors, status or logs."""
    wrong = "wrong-" + TOKEN[::-1]
    token_file = tmp_path / "token"
    token_file.write_text(wrong)
    url_secret = "urlpass-91ab3c"
    with gitkit.git_http(remote.bare.parent, user="x-access-token", token=TOKEN) as (base, _log):
        url = base.replace("http://", f"http://someone:{url_secret}@") + f"/{remote.bare.name}"
        source = _source(url, state_dir, auth=GitAuth(token_file=token_file))
        with structlog.testing.capture_logs() as logs, pytest.raises(SourceError) as caught:
            await source.fetch()
    said = _everything_said(source, caught.value, logs)
    assert "authentication failed" in str(caught.value)
    for secret in (wrong, TOKEN, url_secret, "someone"):
        assert secret not in said
    assert "http://***@127.0.0.1" in said
    assert logs
    assert logs[0]["event"] == "source.fetch_failed"


async def test_http_token_rotation(remote: Remote, state_dir: Path, tmp_path: Path) -> None:
    """The token file is re-read on every fetch: after rotation the new token is used."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    rotated = TOKEN + "-rotated"
    with gitkit.git_http(remote.bare.parent, user="x-access-token", token=rotated) as (base, _log):
        source = _source(f"{base}/{remote.bare.name}", state_dir, auth=GitAuth(token_file=token_file))
        with pytest.raises(SourceError, match="authentication failed"):
            await source.fetch()
        token_file.write_text(rotated)
        assert remote.head() == (await source.fetch()).revision


async def test_unreachable_http_redacted(state_dir: Path) -> None:
    """A refused connection is a SourceError whose text has no URL credentials."""
    port = gitkit.free_port()
    source = _source(f"http://user:{TOKEN}@127.0.0.1:{port}/r.git", state_dir)
    with structlog.testing.capture_logs() as logs, pytest.raises(SourceError) as caught:
        await source.fetch()
    assert TOKEN not in _everything_said(source, caught.value, logs)
    assert source.last_good is None
    assert 1 == source.status().consecutive_failures


async def test_timeout_abandons_hung_remote(state_dir: Path) -> None:
    """A remote that accepts and never answers times out after `timeout`; the source reports it."""
    with gitkit.silent_server() as port:
        source = _source(f"git://127.0.0.1:{port}/r.git", state_dir, timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SourceError, match=r"timed out after 0\.5s"):
            await source.fetch()
        assert loop.time() - started < 3.0
        with pytest.raises(SourceError, match=r"still running|timed out"):
            await source.fetch()  # the abandoned call still holds the mirror
    # closing the server lets the abandoned libgit2 call return; the thread check in conftest waits for it


needs_sshd = pytest.mark.skipif(not gitkit.sshd_available(), reason="sshd is not installed")


@needs_sshd
async def test_ssh_known_host(remote: Remote, state_dir: Path, tmp_path: Path) -> None:
    """Over ssh with a key, a host listed in known_hosts (plain or hashed by ssh-keygen) is accepted."""
    with gitkit.sshd(tmp_path / "sshd") as server:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
        auth = GitAuth(ssh_key_file=server.client_key, known_hosts_file=known)
        source = _source(f"{server.url_prefix}{remote.bare}", state_dir, auth=auth)
        assert remote.head() == (await source.fetch()).revision
        gitkit.subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
        assert "|1|" in known.read_text()
        remote.write("x.yaml", "k: v\n")
        remote.commit("x")
        assert remote.head() == (await source.fetch()).revision


@needs_sshd
@pytest.mark.parametrize("case", ["unknown", "mismatch", "revoked", "no-file"])
async def test_ssh_untrusted_host_refused(remote: Remote, state_dir: Path, tmp_path: Path, case: str) -> None:
    """An unknown host, a different key, a revoked key or no known_hosts file is refused, never accepted."""
    with gitkit.sshd(tmp_path / "sshd") as server:
        other = tmp_path / "other"
        gitkit.subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        other_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
        known = tmp_path / "known_hosts"
        known.write_text(
            {
                "unknown": f"[127.0.0.2]:{server.port} {server.host_public_key}\n",
                "mismatch": f"[127.0.0.1]:{server.port} {other_key}\n",
                "revoked": f"[127.0.0.1]:{server.port} {server.host_public_key}\n"
                f"@revoked * {server.host_public_key}\n",
                "no-file": "",
            }[case]
        )
        auth = GitAuth(ssh_key_file=server.client_key, known_hosts_file=None if case == "no-file" else known)
        source = _source(f"{server.url_prefix}{remote.bare}", state_dir, auth=auth)
        with pytest.raises(SourceError) as caught:
            await source.fetch()
    expected = {
        "unknown": "not in the known_hosts file",
        "mismatch": "does not match",
        "revoked": "revoked",
        "no-file": "need auth.known_hosts_file",
    }[case]
    assert expected in str(caught.value)
    assert not (state_dir / "sources" / "main.git" / "refs" / "aofd").exists()


@needs_sshd
async def test_ssh_wrong_key_is_auth_failure(remote: Remote, state_dir: Path, tmp_path: Path) -> None:
    """A key the server does not accept is an authentication failure, reported once (no retry loop)."""
    with gitkit.sshd(tmp_path / "sshd") as server:
        other = tmp_path / "other"
        gitkit.subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
        auth = GitAuth(ssh_key_file=other, known_hosts_file=known)
        source = _source(f"{server.url_prefix}{remote.bare}", state_dir, auth=auth)
        with pytest.raises(SourceError, match="authentication failed"):
            await source.fetch()
