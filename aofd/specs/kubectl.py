"""Semantic parse of a kubectl argv (pure: no I/O, no clock, no asyncio).

This module owns what kubectl would make of an argument list, so that policy is checked
against what kubectl will really act on rather than against a string prefix
(RELIABILITY.md section 3.1, "kubectl-specific traps"):

- **Flags as kubectl defines them.** Which flags a command has, their shorthands and which of
  them take the next token as a value come from kubectl's own definitions
  (`aofd/specs/kubectl_flags.json`, generated from the real binary by
  `scripts/kubectl_tables.py`), per command: `logs -f` is `--follow` but `get -f` is
  `--filename`, and `logs --prefix` is a bool. Flags are read anywhere, as cobra/pflag do:
  `-n x`, `-nx`, `-n=x`, `--namespace x`, `--namespace=x`, shorthand clusters (`-itn prod`);
  parsing stops at `--`; `_` in a long flag's name is read as `-` (`--as_group`). A flag the
  command does not have is refused, as kubectl refuses it.
- **The command path** (`rollout restart`, `create secret generic`, `top node`) comes from the
  same definitions, aliases included (`create deploy`, `top no`); an unknown verb would make
  kubectl look for a `kubectl-<verb>` plugin, so it is refused, as is a case variant (`GET`).
- **Targets**: the objects the command acts on, whatever way they are written (`pod x`,
  `pod/x`, `pods/x`, `po x`, `pod x y`, `pod/x pod/y`, `po,svc x`, `deployments.apps/x`,
  `Deployment.v1.apps/x`), as canonical resource types of the built-in API
  (`aofd/specs/k8s_resources.json`) with their names (none = every object a list, selector or
  `--all` reaches), and whether the type is namespaced. `describe`'s names are prefixes;
  `-f`/`-k`/`--raw` make the targets open (`open_targets`). Objects reached through others
  (a deployment's pods for `logs deploy/x`, the pods `drain` evicts) are in `indirect`.
- identity and target flags (`--kubeconfig`, `--context`, `--server`, `--token`, `--as*`, ...)
  are refused, because aofd sets the identity from the Context;
- constructs that escape the read/write model (`exec`, `cp`, `proxy`, `-f -`, `-f <URL>`,
  `-k`, `--raw`, `create token`, host-file reads such as `--from-file=/etc/shadow`,
  `-f /abs/path` or `-o jsonpath-file=...`) are *reported* in `KubectlCommand.escapes`; the
  policy decides whether the Context explicitly allows them.

Refusals raise `aofd.errors.PolicyDenied` with a reason that is safe to show the user.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from aofd import errors
from aofd.specs import k8s_tables as tables

ESCAPE_VERBS: frozenset[str] = frozenset(
    {
        "exec", "attach", "cp", "debug", "port-forward", "proxy", "edit", "plugin", "auth",
        "certificate", "config", "kustomize", "alpha",
    }
)  # fmt: skip
"""Verbs that leave the get/apply/delete model (shells, tunnels, file copy, editors, config)."""

IDENTITY_FLAGS: frozenset[str] = frozenset(
    {
        "--kubeconfig", "--context", "--cluster", "--user", "--token", "--server", "--as",
        "--as-group", "--as-uid", "--insecure-skip-tls-verify", "--certificate-authority",
        "--client-key", "--client-certificate", "--cache-dir", "--username", "--password",
        "--tls-server-name", "--kuberc", "--proxy-url", "--as-user-extra",
    }
)  # fmt: skip
"""Global flags that change who kubectl is, which cluster it talks to or how it gets there
(`--proxy-url` would open a connection to any host and port): aofd sets these."""

FILE_WRITING_FLAGS: frozenset[str] = frozenset({"--profile-output", "--log-file", "--log-dir"})
"""Global flags that make kubectl write files at a path of the caller's choosing."""

_PARSE_BOOL = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True}
_PARSE_BOOL.update({"0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False})

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One resource type a command acts on, and the objects of it.

    `resource` is the canonical plural (`deployments`), `group` the API group (`""` for the
    core group). `names` empty means every object that a list, selector or `--all` reaches.
    `known` is False for a type that is not built into Kubernetes (a custom resource): its
    scope cannot be told from here, and `namespaced` is then a guess (True). `prefix` marks
    `describe`'s names, which kubectl also reads as name prefixes.
    """

    resource: str
    group: str = ""
    names: tuple[str, ...] = ()
    namespaced: bool = True
    subresource: str | None = None
    known: bool = True
    prefix: bool = False

    @property
    def type_key(self) -> str:
        """`deployments.apps`, `pods`: the type as one string (kubectl's `resource.group`)."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def same_type(self, other: Target) -> bool:
        return self.resource == other.resource and self.group == other.group


@dataclasses.dataclass(frozen=True, slots=True)
class KubectlCommand:
    """What kubectl would do with an argv: the command, its targets and the flags.

    `verb` is the top-level command and `subcommand` the rest of the command path
    (`rollout restart` has verb `rollout`, subcommand `restart`; `path` joins them).
    `namespace` is the effective namespace (flag, else the Context's, else `default`);
    `namespace_flag` is True when the command named one itself. `flags` are `(long name, value)`
    pairs, shorthands expanded, flags written without a value (bools, optional values) with
    value None. `positionals` are the non-flag tokens after the command path, `extras` those of
    them that name no object (label changes, a container name, ports); `after_dashdash` the
    tokens after `--` (for `exec`, the remote command). `escapes` names every construct that
    leaves the read/write model, e.g. `exec`, `--raw`, `--filename=-`, `--kustomize`.
    `cross_namespace` marks commands that reach other namespaces whatever `--namespace` says
    (`drain` evicts pods everywhere, `cluster-info` reads kube-system).
    """

    verb: str | None
    namespace: str
    all_namespaces: bool
    flags: tuple[tuple[str, str | None], ...]
    subcommand: str | None = None
    positionals: tuple[str, ...] = ()
    namespace_flag: bool = False
    after_dashdash: tuple[str, ...] = ()
    escapes: tuple[str, ...] = ()
    targets: tuple[Target, ...] = ()
    indirect: tuple[Target, ...] = ()
    open_targets: bool = False
    extras: tuple[str, ...] = ()
    cross_namespace: bool = False

    @property
    def path(self) -> str:
        """The command path: `get`, `rollout restart`, `create secret generic`."""
        if self.verb is None:
            return ""
        return f"{self.verb} {self.subcommand}" if self.subcommand else self.verb

    def flag_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.flags)

    def flag_value(self, name: str) -> str | None:
        """The value of the last occurrence of a flag (pflag: the last one wins)."""
        found = None
        for flag, value in self.flags:
            if flag == name:
                found = value
        return found

    def resource_types(self) -> tuple[str, ...]:
        """The canonical types of the direct targets (`deployments.apps`, `pods`)."""
        return tuple(dict.fromkeys(t.type_key for t in self.targets))


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


_HELP = tables.FlagSpec(long="--help", short="h", takes_value=False)


class _FlagSet:
    """The flags one command accepts (its own and the global ones), by long name and shorthand.

    A command's own flag shadows a global one of the same name, as in cobra: `create
    rolebinding --user=alice` names the subject, not kubectl's identity (`local` tells them apart).
    """

    __slots__ = ("by_long", "by_short", "local")

    def __init__(self, *specs: Mapping[str, tables.FlagSpec]) -> None:
        self.by_long: dict[str, tables.FlagSpec] = {"--help": _HELP}
        for spec in specs:
            self.by_long.update(spec)
        self.local = frozenset(name for spec in specs[1:] for name in spec)
        self.by_short: dict[str, tables.FlagSpec] = {
            flag.short: flag for flag in self.by_long.values() if flag.short
        }

    def refuse_global(self, name: str) -> None:
        if name not in self.local:
            _refuse_global(name)


_FLAGSETS: dict[tuple[str, bool], _FlagSet] = {}


def _flagset(path: str, *, pattern: bool = False) -> _FlagSet:
    """The flags of a command path. A pattern may stop at a command that has sub-commands
    (`kubectl create secret --from-file`): it may then name a flag of any command below it."""
    key = (path, pattern and bool(path) and bool(tables.subcommands(path)))
    found = _FLAGSETS.get(key)
    if found is None:
        local = [tables.command_flags(path) or {}] if path else []
        if key[1]:
            local += [_descendant_flags(path)]
        found = _FLAGSETS[key] = _FlagSet(tables.global_flags(), *local)
    return found


def _descendant_flags(path: str) -> dict[str, tables.FlagSpec]:
    found: dict[str, tables.FlagSpec] = {}
    for name in sorted(tables.subcommands(path)):
        child = f"{path} {name}"
        found.update(_descendant_flags(child))
        found.update(tables.command_flags(child) or {})
    return found


def _child(path: str, token: str) -> str | None:
    """The sub-command `token` names under `path` (by name or alias), or None."""
    for name in tables.subcommands(path):
        child = f"{path} {name}"
        if token == name or token in tables.aliases(child):
            return child
    return None


def _find_path(args: Sequence[str], *, pattern: bool = False) -> tuple[str | None, int]:
    """Find the command path as cobra does: strip flags, follow sub-commands (and their aliases).

    Returns the path and how many non-flag tokens it used. Flags before a (sub)command must be
    ones that level knows: whether they take a value decides which token cobra sees next, and
    guessing wrong would let a plugin run.
    """
    path: str | None = None
    used = 0
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            break
        if tok.startswith("-") and len(tok) > 1:
            flags = _flagset(path or "", pattern=pattern)
            if tok.startswith("--"):
                name, eq, _ = tok.partition("=")
                name = name.replace("_", "-")
                _refuse_global(name)
                flag = flags.by_long.get(name)
                if flag is None:
                    where = f"before the {'sub-command' if path else 'verb'}"
                    raise _deny(f"unknown kubectl flag {name} {where}: put it after the command", "syntax")
                if flag.takes_value and not eq:
                    i += 1
            else:
                for j, c in enumerate(tok[1:], start=1):
                    if c == "s":
                        _refuse_global("--server")
                    short = flags.by_short.get(c)
                    if short is None:
                        where = f"before the {'sub-command' if path else 'verb'}"
                        raise _deny(f"unknown kubectl flag -{c} {where}: put it after the command", "syntax")
                    if not short.takes_value:
                        continue
                    if j + 1 == len(tok):
                        if j > 1:  # cobra and pflag disagree on `-vn x`: which token is the verb?
                            raise _deny(f"write -{c} apart from other flags before the command", "syntax")
                        i += 1
                    break
            i += 1
            continue
        if path is None:
            if tables.command_flags(tok) is None:
                raise _deny(
                    f"unknown kubectl verb {tok!r}: only built-in commands run (plugins are not allowed)",
                    "unknown-verb",
                )
            path, used = tok, used + 1
        else:
            child = _child(path, tok)
            if child is None:  # kubectl would look for a `kubectl-<path>-<tok>` plugin, or fail
                raise _deny(
                    f"unknown kubectl command {f'{path} {tok}'[:80]!r}: only built-in commands run",
                    "unknown-verb",
                )
            path, used = child, used + 1
        if not tables.subcommands(path):
            break  # a leaf: the rest is its own flags and arguments
        i += 1
    return path, used


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
        aofd.errors.PolicyDenied: identity flags, unknown verbs, flags the command does not
            have, a flag missing its value, conflicting namespaces, an invalid namespace name.
    """
    path, path_tokens = _find_path(args, pattern=pattern)
    if path is None and not pattern:
        raise _deny("kubectl command has no verb", "syntax")
    flagset = _flagset(path or "", pattern=pattern)
    positionals: list[str] = []
    flags: list[tuple[str, str | None]] = []
    namespaces: list[str] = []
    all_namespaces = False
    after: tuple[str, ...] = ()
    skip = path_tokens
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

    def record(flag: tables.FlagSpec, value: str | None) -> None:
        nonlocal all_namespaces
        flagset.refuse_global(flag.long)
        if flag.long == "--namespace" and flag.long not in flagset.local:
            if value is None:
                raise _deny("kubectl flag --namespace needs a value", "syntax")
            namespaces.append(value)
        elif flag.long == "--all-namespaces":
            if value is not None and value not in _PARSE_BOOL:
                raise _deny(f"invalid value for --all-namespaces: {value!r}", "syntax")
            all_namespaces = _PARSE_BOOL[value] if value is not None else True
        else:
            flags.append((flag.long, normal_value(flag, value, pattern=pattern)))

    while i < n:
        tok = args[i]
        if tok == "--":
            after = tuple(args[i + 1 :])
            break
        if tok.startswith(("---", "--=")):
            raise _deny(f"bad flag syntax: {tok[:40]!r}", "syntax")
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            name = name.replace("_", "-")
            flagset.refuse_global(name)
            flag = flagset.by_long.get(name)
            if flag is None:
                raise _deny(f"unknown flag {name} for 'kubectl {path}'", "unknown-flag")
            if eq:
                record(flag, value)
            elif flag.takes_value:
                record(flag, take_value(name))
            else:
                record(flag, None)
        elif tok.startswith("-") and len(tok) > 1:
            j = 1
            while j < len(tok):
                c = tok[j]
                rest = tok[j + 1 :]
                flag = flagset.by_short.get(c)
                if c == "s" and (flag is None or flag.long == "--server"):
                    _refuse_global("--server")
                if flag is None:
                    raise _deny(f"unknown shorthand flag -{c} for 'kubectl {path}'", "unknown-flag")
                if len(rest) > 1 and rest[0] == "=":  # pflag: `-n=x` is x (but `-n=` is "=")
                    record(flag, rest[1:])
                    break
                if not flag.takes_value:
                    record(flag, None)
                    j += 1
                    continue
                record(flag, rest if rest else take_value(f"-{c}"))
                break
        elif skip:
            skip -= 1  # a token of the command path (`rollout`, `restart`)
        else:
            positionals.append(tok)
        i += 1

    distinct = sorted(set(namespaces))
    if len(distinct) > 1:
        raise _deny(f"conflicting namespaces {distinct}", "namespace")
    for ns in distinct:
        if not DNS1123_LABEL.match(ns) or len(ns) > 63:
            raise _deny(f"invalid namespace name {ns!r}", "namespace")
    namespace = distinct[0] if distinct else (default_namespace or "default")
    if after and (path or "") not in _COMMAND_AFTER_DASHDASH:
        positionals += after  # `get pods -- x`: after `--` only the flags end, x is still a name
        after = ()
    verb, _, subcommand = (path or "").partition(" ")
    cmd = KubectlCommand(
        verb=verb or None,
        namespace=namespace,
        all_namespaces=all_namespaces,
        flags=tuple(flags),
        subcommand=subcommand or None,
        positionals=tuple(positionals),
        namespace_flag=bool(distinct),
        after_dashdash=after,
    )
    cmd = _with_targets(cmd)
    return dataclasses.replace(cmd, escapes=_escapes(cmd))


# --------------------------------------------------------------------------- targets

_VERSION = re.compile(r"^v[0-9]+((alpha|beta)[0-9]+)?$")


def resolve(token: str) -> Target:
    """A resource type as kubectl names it (`po`, `Deployment`, `deployments.v1.apps`) as a Target.

    A type that is not built in keeps its lower-cased name and group, version dropped.
    """
    found = tables.resolve_resource(token)
    if found is not None:
        return Target(found.name, found.group, namespaced=found.namespaced)
    parts = token.lower().split(".")
    if len(parts) > 2 and _VERSION.match(parts[1]):
        parts.pop(1)
    return Target(parts[0], ".".join(parts[1:]), known=False)


def _expand(kind: str) -> list[Target]:
    """One type, or a category's members (`all`, `api-extensions`): kubectl expands a category
    name before it maps resources. A custom resource's own categories are not known here."""
    if not kind:
        raise _deny("empty resource type in a resource list", "syntax")
    members = [r for r in tables.all_resources() if kind in r.categories]
    if members:
        return [Target(r.name, r.group, namespaced=r.namespaced) for r in members]
    return [resolve(kind)]


def _type_name_args(args: Sequence[str], *, prefix: bool = False) -> list[Target]:
    """kubectl's `ResourceTypeOrNameArgs`: `TYPE[,TYPE] [NAME...]` or `TYPE/NAME...`."""
    if not args:
        return []
    kinds = list(dict.fromkeys(args[0].split(",")))
    if len(args) >= 2 and len(kinds) > 1:  # `a,b x` is `a/x b/x`
        args = [f"{kind}/{name}" for kind in kinds for name in args[1:]]
    pairs: list[tuple[str, tuple[str, ...]]]
    if any("/" in arg for arg in args):
        if not all("/" in arg for arg in args):
            raise _deny(
                "there is no need to specify a resource type as a separate argument when passing "
                "arguments in resource/name form",
                "syntax",
            )
        pairs = []
        for arg in args:
            kind, _, name = arg.partition("/")
            if not kind or not name:
                raise _deny(f"{arg!r}: arguments in resource/name form need a resource and a name", "syntax")
            if "/" in name:
                raise _deny(
                    f"{arg!r}: arguments in resource/name form may not have more than one slash", "syntax"
                )
            pairs.append((kind, (name,)))
    else:
        pairs = [(kind, tuple(args[1:])) for kind in kinds]
    merged: dict[str, Target] = {}
    for kind, names in pairs:
        for target in _expand(kind):
            key = target.type_key
            if key in merged:
                names = tuple(dict.fromkeys((*merged[key].names, *names)))
            merged[key] = dataclasses.replace(target, names=names, prefix=prefix)
    return list(merged.values())


def _selects(cmd: KubectlCommand) -> bool:
    """Does the command pick objects by selector or `--all` (whatever names it also gives)?"""
    for name, value in cmd.flags:
        if name in ("--selector", "--field-selector") and value:
            return True
        if name in ("--all", "--all-namespaces") and _PARSE_BOOL.get(value or "true", True):
            return True
    return False


_GO_INT = re.compile(r"^[+-]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)$")


def go_int(text: str) -> int | None:
    """`text` as pflag's integer flags read it (Go's `strconv.ParseInt(s, 0, 64)`): `0x10`,
    `0o7`, `0b1`, `010` (octal), `1_000`; None when it is no integer literal."""
    if not _GO_INT.match(text):
        return None
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-").replace("_", "")
    base = {"0x": 16, "0o": 8, "0b": 2}.get(body[:2].lower())
    if base is not None:
        body = body[2:]
    elif len(body) > 1 and body.startswith("0"):
        base, body = 8, body[1:]
    try:
        return sign * int(body or "0", base or 10)
    except ValueError:  # `09`: not octal; kubectl refuses it
        return None


def normal_value(flag: tables.FlagSpec, value: str | None, *, pattern: bool = False) -> str | None:
    """A flag's value in one spelling, so rules compare what kubectl reads rather than text:
    bools as `true`/`false` (a bare bool flag is `true`, except in a pattern, where no value means
    any), integers in decimal (`0x0`, `0_0` and `00` are `0`), the `--output` format lower-cased."""
    if flag.is_bool:
        if value is None:
            return None if pattern else "true"
        parsed = _PARSE_BOOL.get(value)
        if parsed is None:
            raise _deny(f"invalid value {value[:40]!r} for the bool flag {flag.long}", "syntax")
        return "true" if parsed else "false"
    if value is None:
        return None
    number = go_int(value)
    if number is not None:
        return str(number)
    if flag.long == "--output":
        kind, eq, rest = value.partition("=")
        return kind.lower() + eq + rest
    return value


def _merge(targets: Sequence[Target]) -> list[Target]:
    merged: dict[str, Target] = {}
    for target in targets:
        seen = merged.get(target.type_key)
        names = target.names if seen is None else tuple(dict.fromkeys((*seen.names, *target.names)))
        merged[target.type_key] = dataclasses.replace(target, names=names)
    return list(merged.values())


def _object_arg(arg: str) -> Target:
    """`logs`, `exec`, `attach`, `port-forward`, `debug`: `TYPE/NAME`, or a pod's name."""
    if "/" in arg:
        return _type_name_args([arg])[0]
    return dataclasses.replace(resolve("pods"), names=(arg,))


def _is_pair(arg: str, path: str) -> bool:
    if path == "taint":
        return "=" in arg or ":" in arg or arg.endswith("-")
    if path == "set image":
        return "=" in arg
    return "=" in arg or arg.endswith("-")


_TYPE_NAME_VERBS = frozenset(
    {
        "get", "describe", "delete", "label", "annotate", "patch", "edit", "scale", "wait",
        "autoscale", "expose", "rollout", "set", "taint", "apply", "replace",
    }
)  # fmt: skip
_POD_VERBS = frozenset({"logs", "exec", "attach", "port-forward", "debug"})
_COMMAND_AFTER_DASHDASH = frozenset(
    {"exec", "run", "debug", "attach", "create job", "create cronjob", "create deployment"}
)
"""Commands for which the tokens after `--` are a program to run, not names."""
_NODE_VERBS = frozenset({"cordon", "uncordon", "drain"})
_SELECTING_VERBS = (_TYPE_NAME_VERBS | _NODE_VERBS) - {"expose", "autoscale"}
"""Commands whose `-l`/`--field-selector`/`--all` pick the objects acted on (for `create pdb`,
`expose` and `autoscale` a selector is part of what they create)."""


def _with_targets(cmd: KubectlCommand) -> KubectlCommand:
    """Fill `targets`, `indirect`, `extras`, `open_targets` and `cross_namespace` by command."""
    path, verb, args = cmd.path, cmd.verb or "", list(cmd.positionals)
    names_flag = cmd.flag_names()
    targets: list[Target] = []
    indirect: list[Target] = []
    extras: list[str] = []
    cross = False
    namespace, namespace_flag = cmd.namespace, cmd.namespace_flag
    if verb in _TYPE_NAME_VERBS:
        if path in ("set serviceaccount", "set selector") and args:
            extras = [args.pop()]
        if verb in ("label", "annotate", "taint") or path in ("set env", "set image"):
            extras += [a for a in args if _is_pair(a, path)]
            args = [a for a in args if not _is_pair(a, path)]
        targets = _type_name_args(args, prefix=verb == "describe")
        if verb == "expose":
            service = cmd.flag_value("--name")
            names = (service,) if service else tuple(n for t in targets for n in t.names)
            indirect.append(dataclasses.replace(resolve("services"), names=names))
        elif verb == "autoscale":
            hpa = cmd.flag_value("--name")
            names = (hpa,) if hpa else tuple(n for t in targets for n in t.names)
            indirect.append(dataclasses.replace(resolve("horizontalpodautoscalers"), names=names))
    elif verb in _POD_VERBS:
        if args:
            targets = [_object_arg(args[0])]
            extras = args[1:]
        elif "--selector" in names_flag:
            targets = [resolve("pods")]
        if targets and targets[0].resource != "pods":
            indirect.append(resolve("pods"))  # a controller's pod, chosen by kubectl
    elif verb == "cp":
        for arg in args:
            spec, colon, _ = arg.partition(":")
            if not colon or not spec:
                continue
            pod_ns, slash, pod = spec.rpartition("/")
            if slash:
                if namespace_flag and pod_ns != namespace:
                    raise _deny(f"conflicting namespaces {sorted({pod_ns, namespace})}", "namespace")
                if not DNS1123_LABEL.match(pod_ns):
                    raise _deny(f"invalid namespace name {pod_ns!r}", "namespace")
                namespace, namespace_flag = pod_ns, True
            targets.append(dataclasses.replace(resolve("pods"), names=(pod,)))
    elif verb == "run":
        if args:
            targets = [dataclasses.replace(resolve("pods"), names=(args[0],))]
            extras = args[1:]
    elif verb == "create" and cmd.subcommand:
        kind = cmd.subcommand.split(" ", 1)[0]
        target = resolve("serviceaccounts") if kind == "token" else resolve(kind)
        sub = "token" if kind == "token" else None
        targets = [dataclasses.replace(target, names=tuple(args[:1]), subresource=sub)]
        extras = args[1:]
        source = cmd.flag_value("--from")
        if source:
            targets += _type_name_args([source])
    elif verb in _NODE_VERBS:  # `cordon node-1`, also `cordon node/node-1`
        nodes = [
            _type_name_args([a])[0] if "/" in a else dataclasses.replace(resolve("nodes"), names=(a,))
            for a in args
        ]
        targets = _merge(nodes) if nodes else [resolve("nodes")]
        if verb == "drain":
            indirect.append(resolve("pods"))
            cross = True
    elif verb == "top" and cmd.subcommand:
        kind = "nodes" if cmd.subcommand == "node" else "pods"
        targets = [dataclasses.replace(resolve(kind), names=tuple(args[:1]))]
    elif path in ("certificate approve", "certificate deny"):
        targets = [dataclasses.replace(resolve("certificatesigningrequests"), names=tuple(args))]
    elif verb == "events":
        targets = [resolve("events")]
    elif verb == "cluster-info":
        cross = True
    else:
        extras = args
    if verb in _SELECTING_VERBS and _selects(cmd):  # `taint node a --all`: every object of the type
        targets = [dataclasses.replace(t, names=()) for t in targets]
    open_targets = bool(names_flag & {"--filename", "--kustomize", "--raw"}) or path == "cluster-info dump"
    return dataclasses.replace(
        cmd,
        targets=tuple(targets),
        indirect=tuple(indirect),
        extras=tuple(extras),
        open_targets=open_targets,
        cross_namespace=cross,
        namespace=namespace,
        namespace_flag=namespace_flag,
    )


# --------------------------------------------------------------------------- escapes


def _escapes(cmd: KubectlCommand) -> tuple[str, ...]:
    found: list[str] = []
    if cmd.verb in ESCAPE_VERBS:
        found.append(cmd.verb)
    if cmd.verb == "create" and cmd.subcommand == "token":
        found.append("create token")
    if cmd.verb == "apply" and cmd.subcommand == "edit-last-applied":
        found.append("apply edit-last-applied")
    for name, value in cmd.flags:
        if name == "--prune" and value != "false":
            found.append("--prune")  # deletes what the files leave out, cluster-scoped types too
        elif name == "--raw":
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
