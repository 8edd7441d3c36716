"""Semantic parse of a kubectl argv (pure: no I/O, no clock, no asyncio).

This module owns what kubectl would make of an argument list, so that policy is checked
against the verb kubectl will really run rather than against a string prefix
(RELIABILITY.md section 3.1, "kubectl-specific traps"):

- global flags anywhere, as cobra/pflag parse them: `-n x`, `-nx`, `-n=x`, `--namespace x`,
  `--namespace=x`, `-A`/`--all-namespaces`, shorthand clusters (`-itn prod`); parsing stops
  at `--`; `_` in a long flag's name is read as `-`, as kubectl does (`--as_group`);
- the verb comes from a closed list of built-ins; an unknown verb would make kubectl look for a
  `kubectl-<verb>` plugin, so it is refused, as is a case variant (`GET`: kubectl is case-sensitive);
- identity and target flags (`--kubeconfig`, `--context`, `--server`, `--token`, `--as*`, ...)
  are refused, because aofd sets the identity from the Context;
- an unknown flag *before* the verb is refused: whether it takes a value decides which token
  cobra sees as the verb, and guessing wrong would let a plugin run;
- constructs that escape the read/write model (`exec`, `cp`, `proxy`, `-f -`, `-f <URL>`,
  `-k`, `--raw`, `create token`, host-file reads such as `--from-file=/etc/shadow`,
  `-f /abs/path` or `-o jsonpath-file=...`) are *reported* in `KubectlCommand.escapes`; the
  policy decides whether the Context explicitly allows them.

Refusals raise `aofd.errors.PolicyDenied` with a reason that is safe to show the user.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from aofd import errors

VERBS: frozenset[str] = frozenset(
    {
        "get", "describe", "logs", "top", "explain", "api-resources", "api-versions", "version",
        "cluster-info", "events", "create", "apply", "delete", "patch", "replace", "scale",
        "rollout", "label", "annotate", "set", "expose", "autoscale", "cordon", "uncordon",
        "drain", "taint", "edit", "exec", "attach", "cp", "debug", "port-forward", "proxy",
        "auth", "certificate", "config", "diff", "wait", "kustomize", "run", "plugin",
        "completion", "alpha", "help", "options",
    }
)  # fmt: skip
"""kubectl's built-in commands; anything else would be looked up as a plugin."""

ESCAPE_VERBS: frozenset[str] = frozenset(
    {
        "exec", "attach", "cp", "debug", "port-forward", "proxy", "edit", "plugin", "auth",
        "certificate", "config", "kustomize", "alpha",
    }
)  # fmt: skip
"""Verbs that leave the get/apply/delete model (shells, tunnels, file copy, editors, config)."""

SUBCOMMAND_VERBS: frozenset[str] = frozenset(
    {"rollout", "set", "config", "auth", "certificate", "alpha", "plugin", "create"}
)
"""Verbs whose first positional argument is a sub-command (`rollout restart`, `create token`)."""

IDENTITY_FLAGS: frozenset[str] = frozenset(
    {
        "--kubeconfig", "--context", "--cluster", "--user", "--token", "--server", "--as",
        "--as-group", "--as-uid", "--insecure-skip-tls-verify", "--certificate-authority",
        "--client-key", "--client-certificate", "--cache-dir", "--username", "--password",
        "--tls-server-name", "--kuberc",
    }
)  # fmt: skip
"""Global flags that change who kubectl is or which cluster it talks to: aofd sets these."""

FILE_WRITING_FLAGS: frozenset[str] = frozenset({"--profile-output", "--log-file", "--log-dir"})
"""Global flags that make kubectl write files at a path of the caller's choosing."""

_GLOBAL_VALUE_FLAGS: frozenset[str] = frozenset(
    {"--request-timeout", "--v", "--vmodule", "--log-flush-frequency", "--profile"}
)
_GLOBAL_BOOL_FLAGS: frozenset[str] = frozenset(
    {"--match-server-version", "--warnings-as-errors", "--disable-compression"}
)

_VALUE_FLAGS: frozenset[str] = frozenset(
    {
        "--filename", "--selector", "--output", "--container", "--kustomize", "--raw",
        "--field-selector", "--sort-by", "--template", "--replicas", "--current-replicas",
        "--resource-version", "--timeout", "--grace-period", "--patch", "--patch-file", "--type",
        "--image", "--port", "--target-port", "--name", "--for", "--since", "--since-time", "--tail",
        "--limit-bytes", "--to-revision", "--revision", "--field-manager", "--label-columns",
        "--chunk-size", "--min", "--max", "--cpu-percent", "--overrides", "--env", "--labels",
        "--requests", "--limits", "--schedule", "--protocol", "--external-ip", "--load-balancer-ip",
        "--session-affinity", "--max-log-requests", "--pod-running-timeout", "--prefix",
        "--subresource", "--from", "--from-file", "--from-literal", "--from-env-file",
        "--docker-server", "--docker-username", "--docker-password", "--docker-email", "--cert",
        "--key", "--duration", "--audience", "--bound-object-kind", "--bound-object-name",
        "--bound-object-uid", "--profile", "--target", "--copy-to", "--image-pull-policy",
        "--address", "--accept-hosts", "--accept-paths", "--reject-paths", "--reject-methods",
        "--api-prefix", "--www", "--www-prefix", "--unix-socket", "--output-directory",
        "--api-group", "--serviceaccount", "--service-account", "--hostport", "--restart",
    }
)  # fmt: skip
"""Local flags that take the next token as their value when written `--flag value`.

Every other long flag is treated as a bool: kubectl's bools and no-option-default flags
(`--dry-run`, `--cascade`, `--validate`, `--force`) take a value only with `=`. An unknown
value flag written `--flag value` thus leaves its value among the positionals, which can only
make blocked and approval patterns match *more* (they look for tokens, extra tokens don't hide them).
"""

_BOOL_BY_VERB: dict[str, frozenset[str]] = {"config": frozenset({"--raw"})}
"""Exceptions to `_VALUE_FLAGS` (`config view --raw` is a bool, `get --raw /path` is not)."""

_SHORT_DEFAULT: dict[str, str] = {
    "f": "--filename", "o": "--output", "l": "--selector", "L": "--label-columns",
    "k": "--kustomize", "c": "--container", "p": "--patch", "e": "--env", "R": "--recursive",
    "w": "--watch", "i": "--stdin", "t": "--tty", "q": "--quiet",
}  # fmt: skip
_SHORT_BY_VERB: dict[str, dict[str, str]] = {
    "logs": {"c": "--container", "f": "--follow", "p": "--previous", "l": "--selector"},
    "exec": {"c": "--container", "i": "--stdin", "t": "--tty", "q": "--quiet", "f": "--filename"},
    "attach": {"c": "--container", "i": "--stdin", "t": "--tty", "q": "--quiet"},
}
_SHORT_VALUE: frozenset[str] = frozenset(
    {"--filename", "--output", "--selector", "--label-columns", "--kustomize", "--container", "--patch"}
    | {"--env"}
)

_PARSE_BOOL = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True}
_PARSE_BOOL.update({"0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False})

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

RESOURCE_ALIASES: dict[str, str] = {}
for _canonical, _names in {
    "pods": ("po", "pod"),
    "services": ("svc", "service"),
    "deployments": ("deploy", "deployment"),
    "namespaces": ("ns", "namespace"),
    "nodes": ("no", "node"),
    "configmaps": ("cm", "configmap"),
    "secrets": ("secret",),
    "replicasets": ("rs", "replicaset"),
    "statefulsets": ("sts", "statefulset"),
    "daemonsets": ("ds", "daemonset"),
    "jobs": ("job",),
    "cronjobs": ("cj", "cronjob"),
    "ingresses": ("ing", "ingress"),
    "persistentvolumes": ("pv", "persistentvolume"),
    "persistentvolumeclaims": ("pvc", "persistentvolumeclaim"),
    "serviceaccounts": ("sa", "serviceaccount"),
    "events": ("ev", "event"),
    "endpoints": ("ep",),
    "horizontalpodautoscalers": ("hpa", "horizontalpodautoscaler"),
    "customresourcedefinitions": ("crd", "crds", "customresourcedefinition"),
    "networkpolicies": ("netpol", "networkpolicy"),
    "poddisruptionbudgets": ("pdb", "poddisruptionbudget"),
    "replicationcontrollers": ("rc", "replicationcontroller"),
    "roles": ("role",),
    "rolebindings": ("rolebinding",),
    "clusterroles": ("clusterrole",),
    "clusterrolebindings": ("clusterrolebinding",),
}.items():
    RESOURCE_ALIASES[_canonical] = _canonical
    for _alias in _names:
        RESOURCE_ALIASES[_alias] = _canonical
del _canonical, _names, _alias


def canonical_resources(token: str) -> tuple[str, ...]:
    """`po,svc/x` -> `("pods", "services")`: resource types named by one positional token.

    A group suffix (`deployments.apps`) is dropped; unknown types are kept lower-cased.
    """
    kinds: list[str] = []
    for part in token.split(","):
        kind = part.split("/", 1)[0].split(".", 1)[0].lower()
        if kind:
            kinds.append(RESOURCE_ALIASES.get(kind, kind))
    return tuple(kinds)


@dataclasses.dataclass(frozen=True, slots=True)
class KubectlCommand:
    """What kubectl would do with an argv: the verb, its target and the flags.

    `namespace` is the effective namespace (flag, else the Context's, else `default`);
    `namespace_flag` is True when the command named one itself. `flags` are `(long name, value)`
    pairs, shorthands expanded, bool flags with value None. `positionals` are the non-flag tokens
    after the verb; `after_dashdash` the tokens after `--` (for `exec`, the remote command).
    `escapes` names every construct that leaves the read/write model, e.g. `exec`, `--raw`,
    `--filename=-`, `--filename=url`, `--kustomize`, `create token`.
    """

    verb: str | None
    resource: str | None
    names: tuple[str, ...]
    namespace: str
    all_namespaces: bool
    flags: tuple[tuple[str, str | None], ...]
    subcommand: str | None = None
    positionals: tuple[str, ...] = ()
    namespace_flag: bool = False
    after_dashdash: tuple[str, ...] = ()
    escapes: tuple[str, ...] = ()

    def flag_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.flags)

    def resource_types(self) -> tuple[str, ...]:
        return canonical_resources(self.resource) if self.resource else ()


def _deny(reason: str, rule: str = "kubectl") -> errors.PolicyDenied:
    return errors.PolicyDenied(reason, rule=rule)


def _refuse_global(name: str) -> None:
    if name in IDENTITY_FLAGS:
        raise _deny(
            f"kubectl flag {name} is not allowed: aofd sets the cluster and identity from the Context",
            "identity-flag",
        )
    if name in FILE_WRITING_FLAGS:
        raise _deny(f"kubectl flag {name} is not allowed: it writes files on the ops host", "identity-flag")


def parse(
    args: Sequence[str],
    *,
    default_namespace: str | None = None,
    pattern: bool = False,
) -> KubectlCommand:
    """Parse kubectl's arguments (argv without `kubectl` itself), as kubectl would.

    Args:
        args: the tokens after argv[0].
        default_namespace: the Context's namespace, used when the command names none.
        pattern: parse a policy pattern: the verb is optional (plain `kubectl`) and a value flag
            at the very end may go without its value (`kubectl apply -k` = `-k` with any value).

    Raises:
        aofd.errors.PolicyDenied: identity flags, unknown verbs, unknown flags before the verb,
            a flag missing its value, conflicting namespaces, an invalid namespace name.
    """
    verb: str | None = None
    positionals: list[str] = []
    flags: list[tuple[str, str | None]] = []
    namespaces: list[str] = []
    all_namespaces = False
    after: tuple[str, ...] = ()
    i = 0
    n = len(args)

    def take_value(name: str) -> str | None:
        nonlocal i
        if i + 1 >= n:
            if pattern:
                return None
            raise _deny(f"kubectl flag {name} needs a value", "syntax")
        i += 1
        return args[i]

    def add_namespace(value: str | None) -> None:
        if value is None:
            raise _deny("kubectl flag --namespace needs a value", "syntax")
        namespaces.append(value)

    while i < n:
        tok = args[i]
        if tok == "--":
            after = tuple(args[i + 1 :])
            break
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            # kubectl normalises "_" to "-" in every flag name (`--as_group` is `--as-group`).
            name = name.replace("_", "-")
            _refuse_global(name)
            if name == "--namespace":
                add_namespace(value if eq else take_value(name))
            elif name == "--all-namespaces":
                if eq and value not in _PARSE_BOOL:
                    raise _deny(f"invalid value for --all-namespaces: {value!r}", "syntax")
                all_namespaces = _PARSE_BOOL[value] if eq else True
            elif name in _GLOBAL_VALUE_FLAGS:
                flags.append((name, value if eq else take_value(name)))
            elif name in _GLOBAL_BOOL_FLAGS:
                flags.append((name, value if eq else None))
            elif verb is None:
                raise _deny(
                    f"unknown kubectl flag {name} before the verb: put local flags after the verb",
                    "syntax",
                )
            elif eq:
                flags.append((name, value))
            elif name in _VALUE_FLAGS and name not in _BOOL_BY_VERB.get(verb, ()):
                flags.append((name, take_value(name)))
            else:
                flags.append((name, None))
        elif tok.startswith("-") and len(tok) > 1:
            j = 1
            while j < len(tok):
                c = tok[j]
                rest = tok[j + 1 :]
                if rest.startswith("=") and len(rest) > 1:  # pflag: `-n=x` is x, but `-n=` is "="
                    rest = rest[1:]
                if c == "n":
                    add_namespace(rest if rest else take_value("-n"))
                    break
                if c == "s":
                    _refuse_global("--server")
                if c == "v":
                    flags.append(("--v", rest if rest else take_value("-v")))
                    break
                if c == "A":
                    all_namespaces = True
                    j += 1
                    continue
                if verb is None:
                    raise _deny(f"unknown kubectl flag -{c} before the verb", "syntax")
                long = _SHORT_BY_VERB.get(verb, _SHORT_DEFAULT).get(c)
                if long is None:
                    flags.append((f"-{c}", None))
                    j += 1
                    continue
                if long in _SHORT_VALUE:
                    flags.append((long, rest if rest else take_value(f"-{c}")))
                    break
                flags.append((long, None))
                j += 1
        elif verb is None:
            if tok not in VERBS:
                raise _deny(
                    f"unknown kubectl verb {tok!r}: only built-in commands run (plugins are not allowed)",
                    "unknown-verb",
                )
            verb = tok
        else:
            positionals.append(tok)
        i += 1

    if verb is None and not pattern:
        raise _deny("kubectl command has no verb", "syntax")
    distinct = sorted(set(namespaces))
    if len(distinct) > 1:
        raise _deny(f"conflicting namespaces {distinct}", "namespace")
    for ns in distinct:
        if not DNS1123_LABEL.match(ns) or len(ns) > 63:
            raise _deny(f"invalid namespace name {ns!r}", "namespace")
    namespace = distinct[0] if distinct else (default_namespace or "default")

    subcommand: str | None = None
    rest_pos = list(positionals)
    if verb in SUBCOMMAND_VERBS and rest_pos:
        subcommand = rest_pos[0]
        if verb != "create":  # `create deployment x`: the sub-command is also the kind
            rest_pos = rest_pos[1:]
    elif verb == "apply" and rest_pos and rest_pos[0].endswith("-last-applied"):
        subcommand = rest_pos.pop(0)
    resource = rest_pos[0] if rest_pos else None
    names = tuple(rest_pos[1:])

    cmd = KubectlCommand(
        verb=verb,
        resource=resource,
        names=names,
        namespace=namespace,
        all_namespaces=all_namespaces,
        flags=tuple(flags),
        subcommand=subcommand,
        positionals=tuple(positionals),
        namespace_flag=bool(distinct),
        after_dashdash=after,
    )
    return dataclasses.replace(cmd, escapes=_escapes(cmd))


def _escapes(cmd: KubectlCommand) -> tuple[str, ...]:
    found: list[str] = []
    if cmd.verb in ESCAPE_VERBS:
        found.append(cmd.verb)
    if cmd.verb == "create" and cmd.subcommand == "token":
        found.append("create token")
    if cmd.verb == "apply" and cmd.subcommand == "edit-last-applied":
        found.append("apply edit-last-applied")
    for name, value in cmd.flags:
        if name == "--raw":
            found.append("--raw")
        elif name == "--kustomize":
            found.append("--kustomize")
        elif name == "--filename" and value is not None:
            if value == "-":
                found.append("--filename=-")
            elif "://" in value or value.startswith(("http:", "https:")):
                found.append("--filename=url")
            elif any(host_path(part) for part in list_items(value)):
                found.append("--filename=host-path")
        elif (
            name in _FILE_FLAGS
            and value is not None
            and any(host_path(part.rsplit("=", 1)[-1]) for part in list_items(value))
        ):
            found.append(f"{name}=host-path")
        elif name == "--output" and value is not None and value.split("=", 1)[0].endswith("file"):
            # go-template-file, jsonpath-file, custom-columns-file and `templatefile`
            found.append("--output=file")
    return tuple(dict.fromkeys(found))


_FILE_FLAGS = frozenset({"--from-file", "--from-env-file", "--patch-file", "--template", "--cert", "--key"})
"""Flags that read a local file: outside the command's own directory that is a host-file read."""


def list_items(value: str) -> list[str]:
    """The items kubectl may read from a (string-slice) flag value: `a,/etc/x` and `"/etc/x"`
    (pflag reads slices as CSV) each name a file. Splitting a plain string flag too only makes
    the check stricter."""
    return [part.strip().strip("\"'") for part in value.split(",")]


def host_path(value: str) -> bool:
    """An absolute path, or one climbing out of the working directory (`../x`, `~/x`)."""
    parts = value.replace("\\", "/").split("/")
    return value.startswith(("/", "~")) or ".." in parts
