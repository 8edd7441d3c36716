"""kubectl argv parsing: flags anywhere, namespaces in every spelling, the closed verb list."""

from __future__ import annotations

import pytest

from aofd import errors
from aofd.specs import kubectl


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "prod", "delete", "pod", "x"],
        ["delete", "-n", "prod", "pod", "x"],
        ["delete", "pod", "x", "--namespace=prod"],
        ["delete", "pod", "x", "--namespace", "prod"],
        ["-nprod", "delete", "pod", "x"],
        ["-n=prod", "delete", "pod", "x"],
        ["delete", "pod", "x", "-n", "prod"],
    ],
)
def test_namespace_and_verb_found_in_every_position(args: list[str]) -> None:
    """Interspersed and glued namespace flags all yield verb `delete` in namespace `prod`."""
    cmd = kubectl.parse(args, default_namespace="ops")
    assert (cmd.verb, cmd.targets, cmd.namespace, cmd.namespace_flag) == (
        "delete",
        (kubectl.Target("pods", "", ("x",)),),
        "prod",
        True,
    )


def test_default_namespace_and_all_namespaces() -> None:
    """Without a flag the Context's namespace applies, else `default`; `-A` means all."""
    assert kubectl.parse(["get", "pods"], default_namespace="ops").namespace == "ops"
    assert kubectl.parse(["get", "pods"]).namespace == "default"
    assert kubectl.parse(["get", "pods", "-A"]).all_namespaces
    with pytest.raises(errors.PolicyDenied):  # kubectl: "flags cannot be placed before plugin name"
        kubectl.parse(["--all-namespaces", "get", "pods"])
    assert not kubectl.parse(["get", "pods", "--all-namespaces=false"]).all_namespaces


def test_shorthand_cluster_with_namespace() -> None:
    """`exec -itn prod pod -- sh` is stdin+tty with namespace prod; tokens after `--` are kept apart."""
    cmd = kubectl.parse(["exec", "-itn", "prod", "web", "--", "sh", "-c", "id"])
    assert cmd.namespace == "prod"
    assert ("--stdin", "true") in cmd.flags  # a bare bool flag reads as `true`
    assert ("--tty", "true") in cmd.flags
    assert cmd.positionals == ("web",)
    assert cmd.after_dashdash == ("sh", "-c", "id")
    assert cmd.escapes == ("exec",)


@pytest.mark.parametrize(
    "args",
    [
        ["--kubeconfig=/tmp/evil", "get", "pods"],
        ["--kubeconfig", "/tmp/evil", "get", "pods"],
        ["get", "pods", "--context", "other"],
        ["--as", "system:admin", "get", "pods"],
        ["--as-group=system:masters", "get", "pods"],
        ["-s", "https://x", "get", "pods"],
        ["get", "pods", "-shttps://x"],
        ["get", "pods", "--server=https://x"],
        ["get", "pods", "--token", "abc"],
        ["get", "pods", "--insecure-skip-tls-verify"],
        ["get", "pods", "--user=admin"],
        ["get", "pods", "--cluster=other"],
        ["get", "pods", "--certificate-authority=/tmp/ca"],
        ["get", "pods", "--client-key=/tmp/k"],
        ["get", "pods", "--cache-dir=/tmp/c"],
        ["get", "pods", "--username=a", "--password=b"],
        ["get", "pods", "--kuberc=/tmp/rc"],
    ],
)
def test_identity_flags_refused(args: list[str]) -> None:
    """Flags that change identity or target are refused wherever they appear."""
    with pytest.raises(errors.PolicyDenied) as info:
        kubectl.parse(args)
    assert info.value.rule == "identity-flag"


@pytest.mark.parametrize("verb", ["foo", "GET", "Delete", "krew", "ctx"])
def test_unknown_verbs_refused(verb: str) -> None:
    """Any verb outside the built-in list (a plugin, a case variant) is refused."""
    with pytest.raises(errors.PolicyDenied, match="unknown kubectl verb"):
        kubectl.parse([verb, "pods"])


def test_unknown_flag_before_verb_refused() -> None:
    """An unknown flag before the verb could shift which token kubectl takes as the verb."""
    with pytest.raises(errors.PolicyDenied, match="before the verb"):
        kubectl.parse(["--foo", "get", "pods"])


def test_missing_value_and_conflicting_namespaces() -> None:
    """A trailing `-n` and two different namespaces are refused; a bad namespace name too."""
    with pytest.raises(errors.PolicyDenied, match="needs a value"):
        kubectl.parse(["get", "pods", "-n"])
    with pytest.raises(errors.PolicyDenied, match="conflicting namespaces"):
        kubectl.parse(["-n", "a", "get", "pods", "--namespace=b"])
    with pytest.raises(errors.PolicyDenied, match="invalid namespace"):
        kubectl.parse(["-n", "Prod_EU", "get", "pods"])


@pytest.mark.parametrize(
    ("args", "escape"),
    [
        (["apply", "-f", "https://evil.example/x.yaml"], "--filename=url"),
        (["apply", "--filename=http://evil/x.yaml"], "--filename=url"),
        (["apply", "-f", "-"], "--filename=-"),
        (["apply", "-k", "dir"], "--kustomize"),
        (["get", "--raw", "/api/v1/secrets"], "--raw"),
        (["cp", "a", "b"], "cp"),
        (["port-forward", "pod/x", "8080"], "port-forward"),
        (["proxy"], "proxy"),
        (["debug", "node/x", "--image=busybox"], "debug"),
        (["edit", "deploy", "x"], "edit"),
        (["config", "view", "--raw"], "config"),
        (["create", "token", "admin"], "create token"),
        (["create", "secret", "generic", "x", "--from-file=/etc/shadow"], "--from-file=host-path"),
        (["create", "configmap", "x", "--from-file", "k=../../etc/passwd"], "--from-file=host-path"),
        (["apply", "-f", "/etc/aofd/secrets.yaml"], "--filename=host-path"),
        (["get", "pods", "-o", "jsonpath-file=/etc/shadow"], "--output=file"),
        (["auth", "can-i", "get", "pods"], "auth"),
    ],
)
def test_escapes_reported(args: list[str], escape: str) -> None:
    """Constructs that leave the read/write model are named in `escapes`."""
    assert escape in kubectl.parse(args).escapes


def test_plain_commands_have_no_escapes_and_flags_are_expanded() -> None:
    """`get -o yaml -l app=x` has no escape, and short flags are stored under their long names."""
    cmd = kubectl.parse(["get", "pods", "-o", "yaml", "-lapp=x", "--show-labels"])
    assert cmd.escapes == ()
    assert ("--output", "yaml") in cmd.flags
    assert ("--selector", "app=x") in cmd.flags
    assert ("--show-labels", "true") in cmd.flags
    assert kubectl.parse(["logs", "-f", "web", "-c", "app"]).flags == (
        ("--follow", "true"),
        ("--container", "app"),
    )


def test_subcommands_and_resource_types() -> None:
    """`rollout restart deploy/x` has sub-command `restart`; aliases and lists are folded."""
    cmd = kubectl.parse(["rollout", "restart", "deploy/web"])
    assert (cmd.subcommand, cmd.resource_types()) == ("restart", ("deployments.apps",))
    cmd = kubectl.parse(["get", "po,svc,deployments.apps"])
    assert cmd.resource_types() == ("pods", "services", "deployments.apps")
    assert kubectl.parse(["create", "deploy", "web", "--image=x"]).path == "create deployment"
    assert kubectl.parse(["top", "no"]).targets == (kubectl.Target("nodes", "", (), namespaced=False),)


@pytest.mark.parametrize(
    ("args", "flags", "names"),
    [
        (["logs", "--prefix", "vault-0"], (("--prefix", "true"),), ("vault-0",)),
        (["delete", "pod", "--cascade", "x"], (("--cascade", None),), ("x",)),
        (["delete", "pod", "--dry-run", "x"], (("--dry-run", None),), ("x",)),
        (["get", "pod", "-ojson", "x"], (("--output", "json"),), ("x",)),
        (["get", "pod", "-o=json", "x"], (("--output", "json"),), ("x",)),
        (["get", "pod", "-w", "x"], (("--watch", "true"),), ("x",)),
        (["logs", "-fp", "x"], (("--follow", "true"), ("--previous", "true")), ("x",)),
    ],
)
def test_which_flags_take_a_value_is_kubectls_per_command(
    args: list[str], flags: tuple[tuple[str, str | None], ...], names: tuple[str, ...]
) -> None:
    """Bools and optional-value flags never swallow the next token; value flags do, glued or not."""
    cmd = kubectl.parse(args)
    assert cmd.flags == flags
    assert cmd.targets[0].names == names


@pytest.mark.parametrize(
    "args",
    [
        ["get", "pod", "x", "--nope"],
        ["logs", "x", "-Z"],
        ["get", "pod", "x", "--prefix"],  # a logs flag, not a get flag
        ["--v", "3", "--nope", "get", "pods"],
        ["-vn", "x", "get", "pods"],  # cobra and pflag disagree on the verb
        [
            "rollout",
            "--watch",
            "restart",
            "deploy/x",
        ],  # not a rollout flag: cobra would take `restart` as its value
    ],
)
def test_flags_kubectl_does_not_define_there_are_refused(args: list[str]) -> None:
    with pytest.raises(errors.PolicyDenied):
        kubectl.parse(args)


@pytest.mark.parametrize(
    "args",
    [
        ["get", "pods", "--as_group=system:masters"],
        ["get", "pods", "--as_uid", "0"],
        ["get", "pods", "--insecure_skip_tls_verify"],
        ["get", "pods", "--client_key=/tmp/k"],
        ["get", "pods", "--cache_dir=/tmp/c"],
        ["get", "pods", "--tls_server_name=evil"],
        ["get", "pods", "--profile_output=/tmp/p"],
    ],
)
def test_underscore_spellings_of_refused_flags_refused(args: list[str]) -> None:
    """kubectl normalises `_` to `-` in flag names: `--as_group` is `--as-group` and is refused too."""
    with pytest.raises(errors.PolicyDenied) as info:
        kubectl.parse(args)
    assert info.value.rule == "identity-flag"


def test_underscore_all_namespaces_and_flags_normalised() -> None:
    """`--all_namespaces` means all namespaces; other flags are reported under their `-` name."""
    assert kubectl.parse(["get", "secrets", "--all_namespaces"]).all_namespaces
    cmd = kubectl.parse(["drain", "node-1", "--delete_emptydir_data", "--dry_run=client"])
    assert cmd.flag_names() == {"--delete-emptydir-data", "--dry-run"}


@pytest.mark.parametrize(
    ("args", "escape"),
    [
        (["apply", "-f", "ok.yaml,/etc/shadow"], "--filename=host-path"),
        (["apply", "-f", "ok.yaml,https://evil.example/x.yaml"], "--filename=url"),
        (["apply", "-f", '"/etc/shadow"'], "--filename=host-path"),
        (["create", "secret", "generic", "x", "--from-file=a,/etc/shadow"], "--from-file=host-path"),
        (["create", "secret", "generic", "x", "--from-file=k=ok,k2=/etc/shadow"], "--from-file=host-path"),
        (["create", "secret", "generic", "x", '--from-file="/etc/shadow"'], "--from-file=host-path"),
        (["create", "secret", "generic", "x", "--from_file=/etc/shadow"], "--from-file=host-path"),
        (["create", "secret", "tls", "x", "--cert=/etc/ssl/c.pem", "--key=ok"], "--cert=host-path"),
        (["create", "secret", "tls", "x", "--cert=ok", "--key", "/root/.ssh/id_rsa"], "--key=host-path"),
        (["get", "pods", "-o", "templatefile=/etc/shadow"], "--output=file"),
        (["get", "pods", "-o=templatefile", "--template=x"], "--output=file"),
    ],
)
def test_host_file_reads_in_lists_quotes_and_other_flags_reported(args: list[str], escape: str) -> None:
    """String-slice flags are CSV (`a,/etc/x`, `"/etc/x"`), `--cert`/`--key` read files, and
    `-o templatefile` reads its template from a file: all are host-file reads."""
    assert escape in kubectl.parse(args).escapes


def test_shorthand_equals_alone_is_the_value() -> None:
    """pflag reads `-n=` as the namespace "=" (not as `-n` taking the next token)."""
    with pytest.raises(errors.PolicyDenied, match="invalid namespace name '='"):
        kubectl.parse(["get", "pods", "-n=", "prod"])
