"""The command policy of a Context (pure: no I/O, no clock, no asyncio).

This module owns the decision "may this argv run under this Context, and does it need an
approval?" (RELIABILITY.md section 3.2):

- **One parse.** A tool call is an argv list. A string is split once with
  `shlex.split(s, comments=False, posix=True)`, and that same list is checked and run.
- **Reject, don't sanitize.** Tokens with control characters (newline, NUL, DEL, C1), bidi
  or zero-width characters, tokens over 4 KiB and shell operators (`;`, `&&`, `|`, `>`, `$(`,
  backticks, also glued as in `pods;`) are refused with a reason.
- **argv[0] is a bare name** with a pinned absolute path in `ExecutablesSpec.paths`. Paths
  (`/usr/bin/kubectl`, `./kubectl`) and unknown names (`KUBECTL`) are refused, and wrappers and
  interpreters (`sh`, `env`, `xargs`, `timeout`, `python3`, ...) are refused *even if pinned*:
  they would run a second command that no rule has seen.
- **Patterns are command shapes**, parsed like commands: `kubectl delete` is tool `kubectl`,
  verb `delete`, and matches `kubectl -n prod delete pod x`; further positional tokens must
  lead the command's (allow rules) or appear in order (block and approval rules), as in
  `kubectl rollout restart`; resource aliases are folded (`po` = `pods`),
  flags must be present (`kubectl scale --replicas=0` matches `--replicas 0`), and `-n ns` in a
  pattern restricts it to that namespace. `blocked_commands` wins over `allowed_commands`; a
  non-empty `allowed_commands` means default deny (upstream: whitelist mode when non-empty).
- **Legacy patterns.** A pattern whose first token is not a known tool, or with tokens that are
  not plain words/flags (`rm -rf /`, `delete`, `kubectl (delete|scale)`), keeps upstream's
  semantics: a regular expression searched in the space-joined argv, or a substring when it is
  not a valid regex. Loose matching may only make the policy *stricter*, so legacy patterns
  count in `blocked_commands` and `approval.require_for`, and never in `allowed_commands`
  (there they match nothing and `validate_patterns` reports them).
- **Escapes** (`exec`, `cp`, `proxy`, `-f -`, `-f <URL>`, `-k`, `--raw`, ...) need an allowed
  pattern that names them (`kubectl exec`, `kubectl apply -k`); a bare `kubectl` does not.
- **Approval** follows upstream's `requires_approval`: none unless `approval.required`; with an
  empty `require_for` every command needs one, else any matching pattern does.

`GuardPolicy` is the guard's own frozen view of a Context, built by `policy_from_context`,
so nothing here depends on the pydantic model's details.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aofd import errors
from aofd.runtime import kubectl

MAX_TOKEN_BYTES = 4096
MAX_TOKENS = 256

SHELL_OPERATORS: tuple[str, ...] = (";", "&&", "||", "|", ">>", ">", "<", "&", "$(", "`")
"""Refused as tokens and inside tokens: under `shell=False` they are inert, but they mean the
caller believes a shell is involved, and a clear error beats a confusing kubectl one."""

_EMBEDDED_OPERATORS: tuple[str, ...] = (";", "|", "&", ">", "<", "$(", "`")

BIDI_CHARS = frozenset(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x061C])
ZERO_WIDTH_CHARS = frozenset(chr(c) for c in [*range(0x200B, 0x2010), 0xFEFF, *range(0x2060, 0x2065)])

WRAPPERS: frozenset[str] = frozenset(
    {
        "sh", "bash", "zsh", "dash", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox",
        "env", "xargs", "find", "timeout", "nohup", "nice", "ionice", "chrt", "taskset",
        "sudo", "su", "doas", "runuser", "pkexec", "ssh", "scp", "setsid", "stdbuf", "flock",
        "time", "watch", "script", "strace", "ltrace", "gdb", "chroot", "unshare", "nsenter",
        "systemd-run", "at", "batch", "crontab", "parallel", "make", "expect", "eval", "exec",
        "command", "builtin", "awk", "gawk", "mawk", "nawk", "sed", "perl", "ruby", "node",
        "nodejs", "deno", "bun", "php", "lua", "luajit", "tclsh", "wish", "java", "jshell",
        "julia", "guile", "pwsh", "powershell", "osascript", "vim", "vi", "emacs", "less", "more",
    }
)  # fmt: skip
"""Programs whose job is to run another program (or a script): never argv[0], pinned or not."""

_INTERPRETER = re.compile(r"^(python|pypy|perl|ruby|php|lua|node|tclsh|pip|uv|npx|ipython)[0-9.]*$")

HELM_VERBS: frozenset[str] = frozenset(
    {
        "completion", "create", "dependency", "dep", "env", "get", "history", "hist", "install",
        "lint", "list", "ls", "package", "pull", "fetch", "push", "registry", "repo", "rollback",
        "search", "show", "inspect", "status", "template", "test", "uninstall", "delete", "del",
        "un", "upgrade", "verify", "version", "help",
    }
)  # fmt: skip
HELM_IDENTITY_FLAGS: frozenset[str] = frozenset(
    {
        "--kubeconfig", "--kube-context", "--kube-token", "--kube-as-user", "--kube-as-group",
        "--kube-apiserver", "--kube-ca-file", "--kube-tls-server-name",
        "--kube-insecure-skip-tls-verify", "--registry-config", "--repository-config",
        "--repository-cache",
    }
)  # fmt: skip
_HELM_VALUE_FLAGS: frozenset[str] = frozenset(
    {
        "--values", "--set", "--set-string", "--set-file", "--set-json", "--set-literal",
        "--version", "--output", "--timeout", "--repo", "--description", "--max", "--revision",
        "--post-renderer", "--post-renderer-args", "--history-max", "--ca-file", "--cert-file",
        "--key-file", "--username", "--password", "--name-template", "--selector",
    }
)  # fmt: skip
_HELM_SHORT_VALUE: dict[str, str] = {"f": "--values", "o": "--output", "l": "--selector"}

_HELM_FILE_FLAGS: frozenset[str] = frozenset(
    {"--values", "--set-file", "--ca-file", "--cert-file", "--key-file"}
)
"""helm flags that read a local file (`--values` also a URL): outside the working directory that is a
host-file read (`--set-file k=/etc/shadow` puts the file into the release), an escape."""

NAMESPACED_TOOLS: frozenset[str] = frozenset({"kubectl", "helm"})
"""The tools aofd parses semantically (verbs, identity flags, escapes, namespaces)."""
# Every other pinned tool (git, docker, terraform, curl ...) is parsed only generically and can
# act as an interpreter (`git -c alias.x='!sh'`, `docker run -v /:/host`), so it runs only when
# the Context's allowed_commands names it: default deny, whatever else the Context says.
"""Tools with a `--namespace` flag: aofd injects the Context's namespace and checks it."""

_SHAPE_TOKEN = re.compile(r"^-{0,2}[A-Za-z0-9][A-Za-z0-9_./:=,@+-]*$")
_TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_INT = re.compile(r"^[+-]?[0-9]+$")


# --------------------------------------------------------------------------- the policy view


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """`spec.approval` as the guard needs it."""

    required: bool = False
    allowed_users: tuple[str, ...] = ()
    require_for: tuple[str, ...] = ()
    timeout_seconds: float = 300
    allow_self_approval: bool = False
    min_approvers: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class LimitsPolicy:
    """`spec.limits` as the guard needs it; None means "no limit"."""

    max_requests_per_hour: int | None = None
    max_requests_per_minute: int | None = None
    max_concurrent: int | None = None
    max_tokens_per_request: int | None = None
    max_tokens_per_day: int | None = None
    max_execution_time_seconds: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Everything the command guard reads from one Context, as a frozen value."""

    context: str
    kubeconfig: str | None = None
    namespace: str | None = None
    cluster: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    allowed_commands: tuple[str, ...] = ()
    blocked_commands: tuple[str, ...] = ()
    allowed_namespaces: tuple[str, ...] = ()
    approval: ApprovalPolicy | None = None
    limits: LimitsPolicy = LimitsPolicy()
    log_responses: bool = False

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)


def _opt_int(obj: object, name: str) -> int | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _strs(obj: object, name: str) -> tuple[str, ...]:
    value = getattr(obj, name, None) or ()
    return tuple(str(v) for v in value)


def policy_from_context(ctx: Any) -> GuardPolicy:
    """Build the guard's view of a Context model (`aofd.resources.kinds.context.Context`).

    Reads attributes with getattr, so any object of the same shape works (tests, older models).
    `max_concurrent` and `max_concurrent_requests` both cap concurrency: the smaller wins.
    Responses are logged when `audit.log_responses` or upstream's `audit.include_payload` is set.
    """
    spec = ctx.spec
    approval = getattr(spec, "approval", None)
    limits = getattr(spec, "limits", None)
    security = getattr(spec, "security", None)
    audit = getattr(spec, "audit", None)
    caps = [c for c in (_opt_int(limits, "max_concurrent"), _opt_int(limits, "max_concurrent_requests")) if c]
    env = getattr(spec, "env", None) or {}
    return GuardPolicy(
        context=str(ctx.metadata.name),
        kubeconfig=getattr(spec, "kubeconfig", None),
        namespace=getattr(spec, "namespace", None),
        cluster=getattr(spec, "cluster", None),
        env=tuple(sorted((str(k), str(v)) for k, v in dict(env).items())),
        working_dir=getattr(spec, "working_dir", None),
        allowed_commands=_strs(security, "allowed_commands"),
        blocked_commands=_strs(security, "blocked_commands"),
        allowed_namespaces=_strs(security, "allowed_namespaces"),
        approval=None
        if approval is None
        else ApprovalPolicy(
            required=bool(getattr(approval, "required", False)),
            allowed_users=_strs(approval, "allowed_users"),
            require_for=_strs(approval, "require_for"),
            timeout_seconds=_opt_int(approval, "timeout_seconds") or 300,
            allow_self_approval=bool(getattr(approval, "allow_self_approval", False)),
            min_approvers=max(1, _opt_int(approval, "min_approvers") or 1),
        ),
        limits=LimitsPolicy(
            max_requests_per_hour=_opt_int(limits, "max_requests_per_hour"),
            max_requests_per_minute=_opt_int(limits, "max_requests_per_minute"),
            max_concurrent=min(caps) if caps else None,
            max_tokens_per_request=_opt_int(limits, "max_tokens_per_request"),
            max_tokens_per_day=_opt_int(limits, "max_tokens_per_day"),
            max_execution_time_seconds=_opt_int(limits, "max_execution_time_seconds"),
        ),
        log_responses=bool(
            getattr(audit, "log_responses", False) or getattr(audit, "include_payload", False)
        ),
    )


# --------------------------------------------------------------------------- tokens


def _deny(reason: str, rule: str) -> errors.PolicyDenied:
    return errors.PolicyDenied(reason, rule=rule)


def bad_character(text: str) -> str | None:
    """Describe the first control, bidi or zero-width character in `text`, or None."""
    for ch in text:
        code = ord(ch)
        if ch == "\n" or ch == "\r":
            return f"newline U+{code:04X} (a shell command separator)"
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            return f"control character U+{code:04X}"
        if ch in BIDI_CHARS:
            return f"bidi control character U+{code:04X}"
        if ch in ZERO_WIDTH_CHARS:
            return f"zero-width character U+{code:04X}"
    return None


def tokenize(command: str | Sequence[str]) -> tuple[str, ...]:
    """The argv that will be checked and run: a list as given, a string split once by shlex.

    Raises:
        aofd.errors.PolicyDenied: unparsable quoting, empty commands, or any token refused by
            `check_tokens` (for a string, control characters are refused *before* splitting,
            because shlex would turn a newline into plain whitespace).
    """
    if isinstance(command, str):
        bad = bad_character(command)
        if bad is not None:
            raise _deny(f"{bad} in command: shell operators not allowed", "syntax")
        try:
            argv = tuple(shlex.split(command, comments=False, posix=True))
        except ValueError as exc:
            raise _deny(f"cannot parse command: {exc}", "syntax") from None
    else:
        argv = tuple(command)
        if not all(isinstance(tok, str) for tok in argv):
            raise _deny("every argv element must be a string", "syntax")
    check_tokens(argv)
    return argv


def check_tokens(argv: Sequence[str]) -> None:
    """Refuse empty argv, too many or too long tokens, bad characters and shell operators."""
    if not argv:
        raise _deny("empty command", "syntax")
    if len(argv) > MAX_TOKENS:
        raise _deny(f"command has more than {MAX_TOKENS} arguments", "syntax")
    for index, tok in enumerate(argv):
        shown = json.dumps(tok[:60], ensure_ascii=True)
        if len(tok.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
            raise _deny(f"argument {index} is longer than {MAX_TOKEN_BYTES} bytes", "syntax")
        bad = bad_character(tok)
        if bad is not None:
            raise _deny(f"{bad} in argument {index} {shown}: shell operators not allowed", "syntax")
        if tok in SHELL_OPERATORS or any(op in tok for op in _EMBEDDED_OPERATORS):
            op = tok if tok in SHELL_OPERATORS else next(o for o in _EMBEDDED_OPERATORS if o in tok)
            raise _deny(
                f"shell operators not allowed: {op!r} in argument {index} {shown}; "
                "aofd runs exactly one program, without a shell",
                "shell-operator",
            )


def render_argv(argv: Sequence[str]) -> str:
    """argv as a JSON array with non-ASCII escaped: what approvers and audit readers see."""
    return json.dumps(list(argv), ensure_ascii=True)


def is_wrapper(name: str) -> bool:
    """True for shells, wrappers and interpreters (`sh`, `env`, `timeout`, `python3.11`, ...)."""
    return name in WRAPPERS or bool(_INTERPRETER.match(name))


def resolve_executable(name: str, paths: Mapping[str, Path]) -> Path:
    """The pinned absolute path for argv[0].

    Raises:
        aofd.errors.PolicyDenied: a path instead of a bare name, a wrapper or interpreter, or a
            name the daemon config does not pin.
    """
    if "/" in name or "\\" in name:
        raise _deny(
            f"argv[0] {name!r} must be a bare command name such as 'kubectl', not a path", "executable"
        )
    if is_wrapper(name):
        raise _deny(f"{name!r} runs other commands (wrapper or interpreter): not allowed", "wrapper")
    path = paths.get(name)
    if path is None:
        known = ", ".join(sorted(paths)) or "none"
        raise _deny(f"unknown command {name!r}: not in the daemon's executables ({known})", "executable")
    return path


# --------------------------------------------------------------------------- parsed commands


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A command (or a pattern) in the form rules are matched against.

    `positionals` are the non-flag tokens after the verb; `flags` are `(long name, value)`
    with decimal integers normalised (`00` -> `0`); `namespace` is the effective namespace for
    namespaced tools (else None) and `namespace_flag` says the tokens named it.
    """

    tool: str
    verb: str | None
    positionals: tuple[str, ...]
    flags: tuple[tuple[str, str | None], ...]
    namespace: str | None = None
    namespace_flag: bool = False
    all_namespaces: bool = False
    escapes: tuple[str, ...] = ()
    resource: str | None = None
    names: tuple[str, ...] = ()
    kube: kubectl.KubectlCommand | None = None


def _norm_value(value: str | None) -> str | None:
    if value is not None and _INT.match(value):
        return str(int(value))
    return value


def parse_command(
    argv: Sequence[str], *, default_namespace: str | None = None, pattern: bool = False
) -> ParsedCommand:
    """Parse an argv (already tokenized) by its tool: kubectl and helm semantically, others generically.

    Raises:
        aofd.errors.PolicyDenied: what `kubectl.parse` refuses, and the helm equivalents.
    """
    tool, args = argv[0], argv[1:]
    if tool == "kubectl":
        kc = kubectl.parse(args, default_namespace=default_namespace, pattern=pattern)
        return ParsedCommand(
            tool=tool,
            verb=kc.verb,
            positionals=kc.positionals,
            flags=tuple((k, _norm_value(v)) for k, v in kc.flags),
            namespace=kc.namespace,
            namespace_flag=kc.namespace_flag,
            all_namespaces=kc.all_namespaces,
            escapes=kc.escapes,
            resource=kc.resource,
            names=kc.names,
            kube=kc,
        )
    return _parse_generic(tool, args, default_namespace=default_namespace, pattern=pattern)


def _parse_generic(
    tool: str, args: Sequence[str], *, default_namespace: str | None, pattern: bool
) -> ParsedCommand:
    helm = tool == "helm"
    verb: str | None = None
    positionals: list[str] = []
    flags: list[tuple[str, str | None]] = []
    namespaces: list[str] = []
    all_ns = False
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            positionals.extend(args[i + 1 :])
            break
        if tok.startswith("-") and len(tok) > 1:
            name, eq, value = tok.partition("=") if tok.startswith("--") else (tok[:2], "", tok[2:])
            if not tok.startswith("--") and value.startswith("="):
                value, eq = value[1:], "="
            if helm:
                if name in HELM_IDENTITY_FLAGS:
                    raise _deny(
                        f"helm flag {name} is not allowed: aofd sets the cluster identity", "identity-flag"
                    )
                long = {"-n": "--namespace", "-A": "--all-namespaces"}.get(name) or _HELM_SHORT_VALUE.get(
                    name[1:], name
                )
                if long == "--all-namespaces":
                    all_ns = True
                elif long == "--namespace" or long in _HELM_VALUE_FLAGS:
                    given: str | None = value
                    if not eq and not value:
                        if i + 1 < len(args):
                            i += 1
                            given = args[i]
                        elif pattern and long != "--namespace":
                            given = None
                        else:
                            raise _deny(f"helm flag {name} needs a value", "syntax")
                    if long == "--namespace" and given is not None:
                        namespaces.append(given)
                    else:
                        flags.append((long, _norm_value(given)))
                elif verb is None:
                    raise _deny(f"unknown helm flag {name} before the verb", "syntax")
                else:
                    flags.append((long, _norm_value(value) if (eq or value) else None))
            else:
                flags.append((name, _norm_value(value) if (eq or value) else None))
        elif verb is None:
            if helm and tok not in HELM_VERBS:
                raise _deny(f"unknown helm command {tok!r}: plugins are not allowed", "unknown-verb")
            verb = tok
        else:
            positionals.append(tok)
        i += 1
    if verb is None and not pattern and helm:
        raise _deny("helm command has no verb", "syntax")
    distinct = sorted(set(namespaces))
    if len(distinct) > 1:
        raise _deny(f"conflicting namespaces {distinct}", "namespace")
    for ns in distinct:
        if not kubectl.DNS1123_LABEL.match(ns) or len(ns) > 63:
            raise _deny(f"invalid namespace name {ns!r}", "namespace")
    escapes = _helm_escapes(flags) if helm else ()
    return ParsedCommand(
        tool=tool,
        verb=verb,
        positionals=tuple(positionals),
        flags=tuple(flags),
        namespace=(distinct[0] if distinct else (default_namespace or "default")) if helm else None,
        namespace_flag=bool(distinct),
        all_namespaces=all_ns,
        escapes=escapes,
        resource=positionals[0] if positionals else None,
        names=tuple(positionals[1:]),
    )


# --------------------------------------------------------------------------- patterns


@dataclasses.dataclass(frozen=True, slots=True)
class Pattern:
    """One rule of `allowed_commands`, `blocked_commands` or `require_for`.

    `shape` is set for command-shaped patterns; a legacy pattern has `shape=None` and is
    matched with `regex` (searched) or, when the text is not a valid regex, as a substring.
    """

    text: str
    shape: ParsedCommand | None
    regex: re.Pattern[str] | None = None

    @property
    def is_shape(self) -> bool:
        return self.shape is not None


def _helm_escapes(flags: Sequence[tuple[str, str | None]]) -> tuple[str, ...]:
    """`--post-renderer` (runs a host program) and file flags that read outside the working directory."""
    found: list[str] = []
    for name, value in flags:
        if name == "--post-renderer":
            found.append(name)
        elif name in _HELM_FILE_FLAGS and value is not None:
            items = [
                part.rsplit("=", 1)[-1] if name == "--set-file" else part
                for part in kubectl.list_items(value)
            ]
            if name == "--values" and any("://" in item for item in items):
                found.append("--values=url")
            if any(kubectl.host_path(item) for item in items):
                found.append(f"{name}=host-path")
    return tuple(dict.fromkeys(found))


def parse_pattern(text: str, *, tools: frozenset[str]) -> Pattern:
    """Classify and parse a pattern (see the module docstring for shape vs legacy).

    Raises:
        aofd.errors.PolicyDenied: bad characters, or a command-shaped pattern that does not
            parse (an unknown kubectl verb, an identity flag).
    """
    bad = bad_character(text)
    if bad is not None:
        raise _deny(f"{bad} in pattern", "invalid-pattern")
    try:
        tokens = shlex.split(text, comments=False, posix=True)
    except ValueError:
        tokens = []
    if (
        tokens
        and tokens[0] in tools
        and _TOOL_NAME.match(tokens[0])
        and all(_SHAPE_TOKEN.match(t) for t in tokens)
    ):
        shape = parse_command(tokens, pattern=True)
        return Pattern(text=text, shape=shape)
    try:
        regex: re.Pattern[str] | None = re.compile(text)
    except re.error:
        regex = None
    return Pattern(text=text, shape=None, regex=regex)


def known_tools(executables: Mapping[str, Path]) -> frozenset[str]:
    """Names a pattern may start with to be a command shape: the pinned tools, kubectl and helm."""
    return frozenset(executables) | NAMESPACED_TOOLS


def validate_patterns(patterns: Sequence[str], *, field: str, tools: frozenset[str]) -> list[str]:
    """Problems with a list of patterns, for the loader and planner to report; [] when fine.

    `field` is `allowed_commands`, `blocked_commands` or `require_for`: in `allowed_commands`
    a legacy (regex or substring) pattern is a problem, because it would match nothing.
    """
    problems: list[str] = []
    for index, text in enumerate(patterns):
        where = f"{field}[{index}] {json.dumps(text, ensure_ascii=True)}"
        if not text.strip():
            problems.append(f"{where}: empty pattern")
            continue
        try:
            pattern = parse_pattern(text, tools=tools)
        except errors.PolicyDenied as exc:
            problems.append(f"{where}: {exc.reason}")
            continue
        if field == "allowed_commands" and not pattern.is_shape:
            problems.append(
                f"{where}: not a command shape (tool, verb, flags such as 'kubectl get'); "
                "regular expressions are not accepted in allowed_commands"
            )
    return problems


def policy_problems(policy: GuardPolicy, *, tools: frozenset[str]) -> list[str]:
    """Every pattern problem in a policy (`validate_patterns` over its three lists)."""
    problems = validate_patterns(policy.allowed_commands, field="allowed_commands", tools=tools)
    problems += validate_patterns(policy.blocked_commands, field="blocked_commands", tools=tools)
    if policy.approval is not None:
        problems += validate_patterns(policy.approval.require_for, field="require_for", tools=tools)
    for ns in policy.allowed_namespaces:
        if not kubectl.DNS1123_LABEL.match(ns):
            problems.append(
                f"allowed_namespaces: {json.dumps(ns, ensure_ascii=True)} is not a namespace name"
            )
    return problems


def _token_matches(want: str, got: str, *, strict: bool) -> bool:
    if want == got:
        return True
    if "/" in want:
        w_kind, _, w_name = want.partition("/")
        g_kind, _, g_name = got.partition("/")
        return w_name == g_name and kubectl.canonical_resources(w_kind) == kubectl.canonical_resources(g_kind)
    wanted = set(kubectl.canonical_resources(want))
    got_kinds = set(kubectl.canonical_resources(got))
    if not wanted or not got_kinds:
        return False
    return got_kinds <= wanted if strict else bool(got_kinds & wanted)


def _subsequence(want: Sequence[str], got: Sequence[str], *, strict: bool) -> bool:
    pos = 0
    for w in want:
        while pos < len(got) and not _token_matches(w, got[pos], strict=strict):
            pos += 1
        if pos == len(got):
            return False
        pos += 1
    return True


def shape_matches(pattern: ParsedCommand, cmd: ParsedCommand, *, strict: bool) -> bool:
    """Does a command-shaped pattern match a parsed command?

    `strict` (allow rules): the pattern's positional tokens must be the command's first ones, and
    a resource token must name only the pattern's types (`pods,secrets` and `secrets pods` are
    not covered by `kubectl get pods`); loose (block and approval rules): the tokens may appear
    anywhere in order and one shared resource type is enough.
    """
    if pattern.tool != cmd.tool:
        return False
    if pattern.namespace_flag and (cmd.all_namespaces or cmd.namespace != pattern.namespace):
        return False
    if pattern.all_namespaces and not cmd.all_namespaces:
        return False
    if pattern.verb is None:
        return True
    if pattern.verb != cmd.verb:
        return False
    if strict:
        # Allow rules are anchored: `kubectl get pods` must not cover `kubectl get secrets pods`
        # (the secret named "pods"). Block and approval rules look anywhere (a subsequence).
        wanted, got = pattern.positionals, cmd.positionals
        if len(got) < len(wanted) or not all(
            _token_matches(w, g, strict=True) for w, g in zip(wanted, got, strict=False)
        ):
            return False
    elif not _subsequence(pattern.positionals, cmd.positionals, strict=False):
        return False
    return all(
        any(name == c_name and (value is None or value == c_value) for c_name, c_value in cmd.flags)
        for name, value in pattern.flags
    )


def pattern_matches(pattern: Pattern, cmd: ParsedCommand, argv: Sequence[str], *, strict: bool) -> bool:
    """Match one pattern: by shape, or (legacy) regex search / substring over the joined argv."""
    if pattern.shape is not None:
        return shape_matches(pattern.shape, cmd, strict=strict)
    if strict:
        return False  # legacy patterns never allow anything
    line = " ".join(argv)
    if pattern.regex is not None:
        return pattern.regex.search(line) is not None
    return pattern.text in line


def _names_escape(pattern: ParsedCommand, escape: str) -> bool:
    if pattern.verb is None:
        return False
    flag_names = {name for name, _ in pattern.flags}
    if escape.startswith("--"):  # --raw, --kustomize, --filename=-, --from-file=host-path, ...
        return escape.split("=", 1)[0] in flag_names
    if " " in escape:  # "create token", "apply edit-last-applied"
        return escape.split(" ", 1)[1] in pattern.positionals
    return pattern.verb == escape


# --------------------------------------------------------------------------- the decision


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The policy decision for one argv under one Context.

    `exec_argv` is what runs (argv with `--namespace <ctx ns>` injected after the tool when the
    command named none); `rule` names the deciding rule or check; `approval_rule` the
    `require_for` pattern that asked for approval ("*" when `require_for` is empty).
    """

    allowed: bool
    reason: str
    rule: str | None
    argv: tuple[str, ...]
    exec_argv: tuple[str, ...] = ()
    executable: Path | None = None
    command: ParsedCommand | None = None
    needs_approval: bool = False
    approval_rule: str | None = None


def _patterns(texts: Sequence[str], tools: frozenset[str]) -> list[Pattern]:
    return [parse_pattern(t, tools=tools) for t in texts]


def evaluate(argv: Sequence[str], *, policy: GuardPolicy, executables: Mapping[str, Path]) -> Verdict:
    """Decide whether an already tokenized argv may run under `policy`, and with approval or not.

    Never raises for any argv; every refusal is a `Verdict(allowed=False, reason=...)`.
    """
    argv = tuple(argv)

    def deny(reason: str, rule: str | None, command: ParsedCommand | None = None) -> Verdict:
        return Verdict(False, reason, rule, argv, command=command)

    try:
        check_tokens(argv)
        executable = resolve_executable(argv[0], executables)
        cmd = parse_command(argv, default_namespace=policy.namespace)
    except errors.PolicyDenied as exc:
        return deny(exc.reason, exc.rule)

    tools = known_tools(executables)
    problems = policy_problems(policy, tools=tools)
    if problems:
        return deny(f"the Context's command policy is invalid: {problems[0]}", "invalid-policy", cmd)
    blocked = _patterns(policy.blocked_commands, tools)
    allowed = _patterns(policy.allowed_commands, tools)

    for pattern in blocked:
        if pattern_matches(pattern, cmd, argv, strict=False):
            return deny(f"blocked by blocked_commands rule {pattern.text!r}", f"blocked:{pattern.text}", cmd)

    matching_allowed = [p for p in allowed if pattern_matches(p, cmd, argv, strict=True)]
    if cmd.tool not in NAMESPACED_TOOLS and not matching_allowed:
        return deny(
            f"{cmd.tool!r} runs only when the Context's allowed_commands names it "
            "(aofd has no semantic policy for it)",
            "allowed_commands",
            cmd,
        )
    if allowed and not matching_allowed:
        what = f"{cmd.tool} {cmd.verb}" if cmd.verb else cmd.tool
        return deny(f"{what!r} is not in the Context's allowed_commands", "allowed_commands", cmd)
    for escape in cmd.escapes:
        if not any(p.shape is not None and _names_escape(p.shape, escape) for p in matching_allowed):
            return deny(
                f"{escape!r} is not allowed unless the Context's allowed_commands names it explicitly",
                f"escape:{escape}",
                cmd,
            )

    if cmd.tool in NAMESPACED_TOOLS and policy.allowed_namespaces:
        permitted = set(policy.allowed_namespaces)
        if cmd.all_namespaces:
            return deny(
                "all namespaces (-A) is not allowed: the Context restricts namespaces", "namespace", cmd
            )
        if cmd.namespace not in permitted:
            return deny(
                f"namespace {cmd.namespace!r} is not in the Context's allowed_namespaces", "namespace", cmd
            )
        if cmd.kube is not None and "namespaces" in cmd.kube.resource_types():
            targets = [n.split("/", 1)[-1] for n in cmd.names]
            targets += [r.split("/", 1)[1] for r in (cmd.resource or "").split(",") if "/" in r]
            outside = [t for t in targets if t not in permitted]
            if outside:
                return deny(
                    f"namespace {outside[0]!r} is not in the Context's allowed_namespaces", "namespace", cmd
                )

    exec_argv = argv
    if (
        cmd.tool in NAMESPACED_TOOLS
        and (policy.namespace or policy.allowed_namespaces)
        and not cmd.namespace_flag
        and not cmd.all_namespaces
        and cmd.verb is not None
        and cmd.namespace is not None
    ):
        # With allowed_namespaces the checked namespace must be the one that runs: without the
        # flag kubectl would use the kubeconfig context's namespace, which nobody checked.
        exec_argv = (argv[0], "--namespace", cmd.namespace, *argv[1:])

    needs, approval_rule = False, None
    approval = policy.approval
    if approval is not None and approval.required:
        if not approval.require_for:
            needs, approval_rule = True, "*"
        else:
            for pattern in _patterns(approval.require_for, tools):
                if pattern_matches(pattern, cmd, argv, strict=False):
                    needs, approval_rule = True, pattern.text
                    break
    rule = matching_allowed[0].text if matching_allowed else None
    reason = f"allowed by allowed_commands rule {rule!r}" if rule else "allowed (no allowed_commands list)"
    return Verdict(
        True,
        reason,
        rule,
        argv,
        exec_argv=exec_argv,
        executable=executable,
        command=cmd,
        needs_approval=needs,
        approval_rule=approval_rule,
    )
