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

**MCP tools** have a policy of their own (`evaluate_tool`), decided over `<server>/<tool>` with
the server's own tool name: `security.blocked_tools` globs first, then `security.allowed_tools`
globs (`*` allows every tool); with no `allowed_tools` only tools whose annotations say
`readOnlyHint: true` are allowed. `approval.require_for` entries that start with `mcp:` are
globs over `<server>/<tool>` (`mcp:git/git_commit`) or the classes `mcp:write` (any tool not
read-only) and `mcp:destructive` (not read-only and `destructiveHint` true or absent); command
patterns never match a tool call and `mcp:` entries never match an argv.

`GuardPolicy` is the guard's compiled view of a Context, built once per Context version by
`compile_context` in the compile stage (`aofd.plan.compile`): every pattern is parsed there,
and a pattern that does not compile is a `Problem` that keeps the revision from applying, so
`evaluate` never parses a rule and never meets an invalid one. The Context's `env` is vetted
there too (`env_problems`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from aofd import errors
from aofd.resources.kinds import context as context_kind
from aofd.specs import kubectl
from aofd.specs import regex as regex_mod
from aofd.specs.problems import Problem

MAX_TOKEN_BYTES = 4096
MAX_TOKENS = 256

SHELL_OPERATORS: tuple[str, ...] = (";", "&&", "||", "|", ">>", ">", "<", "&", "$(", "`")
"""Refused as tokens and inside tokens: under `shell=False` they are inert, but they mean the
caller believes a shell is involved, and a clear error beats a confusing kubectl one."""

_EMBEDDED_OPERATORS: tuple[str, ...] = (";", "&&", "||", "$(", "`")
"""Refused anywhere inside a token (`pods;rm`, `x$(id)`)."""
_EDGE_OPERATORS: tuple[str, ...] = ("|", "&", ">", "<")
"""Refused at either end of a token (`pods|`, `>out`), but not inside one: a jsonpath filter
such as `{.items[?(@.status.restartCount>0)]}` is an ordinary kubectl argument."""

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
        "npm", "pnpm", "yarn", "bunx", "corepack",
    }
)  # fmt: skip
"""Programs whose job is to run another program (or a script): never argv[0], pinned or not."""

_INTERPRETER = re.compile(r"^(python|pypy|perl|ruby|php|lua|node|tclsh|pip|pipx|uv|uvx|npx|ipython)[0-9.]*$")

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

_SHAPE_TOKEN = re.compile(r"^(-{0,2}[A-Za-z0-9][A-Za-z0-9_./:=,@+~-]*|-)$")
"""A word of a command-shaped pattern: a flag, a name, a `key=value`, or `-` (stdin, `-f -`)."""
_RAW_NAMESPACED = re.compile(
    r"^/(?:api/v1|apis/[a-z0-9.-]+/[a-z0-9]+)/namespaces/([a-z0-9-]+)(?:/[^?#]*)?(?:\?.*)?$"
)
"""A `kubectl get --raw` path inside one namespace: `/api/v1/namespaces/dev/pods`."""
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
_TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_INT = re.compile(r"^[+-]?[0-9]+$")


# --------------------------------------------------------------------------- the policy view


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """`spec.approval` as the guard needs it; `require_for` is compiled (`Pattern`s)."""

    required: bool = False
    allowed_users: tuple[str, ...] = ()
    require_for: tuple[Pattern, ...] = ()
    timeout_seconds: float = 300
    allow_self_approval: bool = False
    min_approvers: int = 1
    require_for_tools: tuple[str, ...] = ()
    """The `mcp:` entries of `require_for`, prefix removed: globs, `write` and `destructive`."""

    @property
    def require_for_any(self) -> bool:
        """Whether `require_for` names anything (empty: every command and tool call needs approval)."""
        return bool(self.require_for or self.require_for_tools)


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
    """Everything the command guard reads from one Context, compiled: every pattern parsed once.

    Built by `compile_context` (which reports every pattern it cannot compile as a `Problem`);
    a `GuardPolicy` never holds an invalid pattern, so `evaluate` parses none.
    """

    context: str
    kubeconfig: str | None = None
    namespace: str | None = None
    cluster: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    allowed: tuple[Pattern, ...] = ()
    blocked: tuple[Pattern, ...] = ()
    allowed_namespaces: tuple[str, ...] = ()
    cluster_resources: tuple[str, ...] = ()
    approval: ApprovalPolicy | None = None
    limits: LimitsPolicy = LimitsPolicy()
    log_responses: bool = False
    allowed_tools: tuple[str, ...] = ()
    blocked_tools: tuple[str, ...] = ()

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)


def compile_context(
    ctx: context_kind.Context, *, tools: frozenset[str]
) -> tuple[GuardPolicy, tuple[Problem, ...]]:
    """The guard's compiled view of a Context, and every problem that makes it unusable.

    Every pattern of `allowed_commands`, `blocked_commands` and `approval.require_for` is parsed
    here, once (`tools` decides which first words make a command shape: `known_tools`);
    `allowed_namespaces` must be namespace names and `env` must be passable to commands
    (`env_problems`). A Context with any problem must not run: the caller reports the problems
    and keeps the policy out of service. `max_concurrent` and `max_concurrent_requests` both cap
    concurrency (the smaller wins); responses are logged when `audit.log_responses` or upstream's
    `audit.include_payload` is set.
    """
    spec = ctx.spec
    security = spec.security or context_kind.Security()
    problems: list[Problem] = []
    allowed = _compile_list(
        security.allowed_commands, ("spec", "security", "allowed_commands"), tools, problems, allow=True
    )
    blocked = _compile_list(
        security.blocked_commands, ("spec", "security", "blocked_commands"), tools, problems, allow=False
    )
    for index, ns in enumerate(security.allowed_namespaces):
        if not kubectl.DNS1123_LABEL.match(ns):
            problems.append(
                Problem(
                    ("spec", "security", "allowed_namespaces", index),
                    f"allowed_namespaces: {json.dumps(ns, ensure_ascii=True)} is not a namespace name",
                )
            )
    cluster_resources: list[str] = []
    for index, kind in enumerate(security.allowed_cluster_resources):
        if not _RESOURCE_NAME.match(kind):
            problems.append(
                Problem(
                    ("spec", "security", "allowed_cluster_resources", index),
                    f"allowed_cluster_resources: {json.dumps(kind, ensure_ascii=True)} "
                    "is not a resource type",
                )
            )
            continue
        cluster_resources.append(kubectl.resolve(kind).type_key)
    for name, message in env_problems(spec.env):
        problems.append(Problem(("spec", "env", name), message))
    allowed_tools = _tool_globs(security.allowed_tools, ("spec", "security", "allowed_tools"), problems)
    blocked_tools = _tool_globs(security.blocked_tools, ("spec", "security", "blocked_tools"), problems)
    approval: ApprovalPolicy | None = None
    if spec.approval is not None:
        rules = spec.approval
        command_rules = [text for text in rules.require_for if not _is_tool_rule(text)]
        tool_rules = [
            (index, text.strip()[len(TOOL_RULE_PREFIX) :].strip())
            for index, text in enumerate(rules.require_for)
            if _is_tool_rule(text)
        ]
        approval = ApprovalPolicy(
            required=rules.required,
            allowed_users=rules.allowed_users,
            require_for=_compile_list(
                command_rules, ("spec", "approval", "require_for"), tools, problems, allow=False
            ),
            require_for_tools=tuple(
                rule
                for index, rule in tool_rules
                if rule in TOOL_CLASSES
                or _tool_glob_ok(rule, ("spec", "approval", "require_for", index), problems)
            ),
            timeout_seconds=rules.timeout_seconds,
            allow_self_approval=rules.allow_self_approval,
            min_approvers=rules.min_approvers,
        )
    limits = spec.limits or context_kind.Limits()
    audit = spec.audit or context_kind.Audit()
    policy = GuardPolicy(
        context=ctx.metadata.name,
        kubeconfig=spec.kubeconfig,
        namespace=spec.namespace,
        cluster=spec.cluster,
        env=tuple(sorted(spec.env.items())),
        working_dir=spec.working_dir,
        allowed=allowed,
        blocked=blocked,
        allowed_namespaces=security.allowed_namespaces,
        cluster_resources=tuple(cluster_resources),
        approval=approval,
        limits=LimitsPolicy(
            max_requests_per_hour=limits.max_requests_per_hour,
            max_requests_per_minute=limits.max_requests_per_minute,
            max_concurrent=limits.concurrency,
            max_tokens_per_request=limits.max_tokens_per_request,
            max_tokens_per_day=limits.max_tokens_per_day,
            max_execution_time_seconds=limits.max_execution_time_seconds,
        ),
        log_responses=audit.log_responses or audit.include_payload,
        allowed_tools=allowed_tools,
        blocked_tools=blocked_tools,
    )
    return policy, tuple(problems)


TOOL_RULE_PREFIX = "mcp:"
TOOL_CLASSES = frozenset({"write", "destructive"})
"""`require_for` classes of MCP tools: `mcp:write` (not read-only), `mcp:destructive`."""


def _is_tool_rule(text: str) -> bool:
    return text.strip().lower().startswith(TOOL_RULE_PREFIX)


def _tool_globs(texts: Sequence[str], loc: tuple[str, ...], problems: list[Problem]) -> tuple[str, ...]:
    return tuple(text for index, text in enumerate(texts) if _tool_glob_ok(text, (*loc, index), problems))


def _tool_glob_ok(text: str, loc: tuple[str | int, ...], problems: list[Problem]) -> bool:
    """Whether `text` is a `<server>/<tool>` glob (or `*`); a problem at `loc` says why not."""
    field = str(loc[-2]) if isinstance(loc[-1], int) else str(loc[-1])
    bad = bad_character(text)
    if bad is not None:
        problems.append(Problem(loc, f"{field}: {json.dumps(text, ensure_ascii=True)} {bad}"))
        return False
    if text != "*" and ("/" not in text or text.startswith("/") or text.endswith("/") or " " in text):
        problems.append(
            Problem(
                loc,
                f"{field}: {json.dumps(text, ensure_ascii=True)} must be '<server>/<tool>' "
                "(globs allowed, e.g. 'git/git_status', 'time/*') or '*'",
            )
        )
        return False
    return True


def _compile_list(
    texts: Sequence[str],
    loc: tuple[str, ...],
    tools: frozenset[str],
    problems: list[Problem],
    *,
    allow: bool,
) -> tuple[Pattern, ...]:
    compiled: list[Pattern] = []
    for index, text in enumerate(texts):
        pattern, problem = compile_pattern(text, field=loc[-1], tools=tools, allow=allow)
        if problem is not None:
            problems.append(Problem((*loc, index), f"{loc[-1]}[{index}] {problem}"))
        elif pattern is not None:
            compiled.append(pattern)
    return tuple(compiled)


def patterns(
    texts: Sequence[str], *, tools: frozenset[str] = NAMESPACED_TOOLS, allow: bool = False
) -> tuple[Pattern, ...]:
    """Compile a list of pattern texts (for code that writes rules rather than reading a Context).

    Raises:
        ValueError: the first pattern that does not compile, and why.
    """
    out: list[Pattern] = []
    for text in texts:
        pattern, problem = compile_pattern(text, field="pattern", tools=tools, allow=allow)
        if problem is not None or pattern is None:
            raise ValueError(f"pattern {text!r}: {problem}")
        out.append(pattern)
    return tuple(out)


# --------------------------------------------------------------------------- environment

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "KUBECONFIG",
        "KUBECACHEDIR",
        "KUBERC",
        "LANG",
        "AOF_CONTEXT",
        "AOF_NAMESPACE",
        "AOF_CLUSTER",
    }
)
"""Variables aofd sets itself for every command; a Context may not override them."""

FORBIDDEN_ENV: frozenset[str] = frozenset(
    {
        "KUBE_EDITOR", "KUBECTL_EXTERNAL_DIFF", "KUBECTL_PLUGINS_PATH", "KUBECTL_ENABLE_CMD_SHADOW",
        "EDITOR", "VISUAL", "PAGER", "BASH_ENV", "ENV", "SHELL", "IFS", "CDPATH",
        "GCONV_PATH", "NODE_OPTIONS", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS",
        "GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL", "HELM_PLUGINS", "HELM_POST_RENDERER", "PROMPT_COMMAND",
        "TMPDIR",
    }
)  # fmt: skip
"""Variables that make a program run another program or load code."""

# Not "KUBECTL_": the seed's own Contexts set KUBECTL_READONLY, which kubectl ignores; the
# kubectl variables that run programs are listed by name above.
FORBIDDEN_ENV_PREFIXES: tuple[str, ...] = ("LD_", "DYLD_", "PYTHON", "PERL5", "RUBY", "LUA_", "MALLOC_")


def env_problems(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """`(name, problem)` for each variable of a Context's `env` that may not be passed to commands."""
    problems: list[tuple[str, str]] = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            problems.append((name, f"env: {name!r} is not a valid variable name"))
        elif name in RESERVED_ENV:
            problems.append((name, f"env: {name} is set by aofd for every command and cannot be overridden"))
        elif name in FORBIDDEN_ENV or name.startswith(FORBIDDEN_ENV_PREFIXES):
            problems.append(
                (name, f"env: {name} can make a command run other programs; not passed to commands")
            )
        elif "\x00" in value:
            problems.append((name, f"env: the value of {name} contains a NUL byte"))
    return problems


SERVER_FORBIDDEN_ENV: frozenset[str] = frozenset(
    {
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "GLIBC_TUNABLES", "SSLKEYLOGFILE",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "BROWSER",
        "PERLLIB", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CONFIG_DIRS", "XDG_DATA_DIRS",
        "XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "HISTFILE", "INPUTRC", "TERMINFO", "LOCPATH", "NLSPATH",
        "RES_OPTIONS", "HOSTALIASES", "LOCALDOMAIN", "TZDIR", "MANPAGER", "LESSOPEN", "LESSCLOSE",
    }
)  # fmt: skip
"""More variables an MCP server's own `env` may not set (besides `env_problems`' refusals):
ones that make a program load code or configuration, trust other certificates or send its
traffic elsewhere."""

SERVER_FORBIDDEN_ENV_PREFIXES: tuple[str, ...] = (
    "GIT_", "NODE_", "NPM_CONFIG_", "YARN_", "PNPM_", "BUN_", "DENO_", "OPENSSL_", "JAVA_", "JDK_",
    "UV_", "PIP_", "CONDA", "VIRTUAL_ENV", "GEM_", "BUNDLE_", "CARGO_", "RUSTC", "RUSTFLAGS",
    "GOFLAGS", "GOENV", "GOTOOLCHAIN", "DOTNET_", "COMPLUS_", "CORECLR_", "KUBECTL_", "HELM_",
    "SSH_", "GPG", "GNUPG", "XDG_",
)  # fmt: skip
"""Prefixes of variable families an MCP server's `env` may not set (`GIT_CONFIG_*` runs any
command through git's config, `NODE_*` and `NPM_CONFIG_*` load modules, `OPENSSL_*` loads
engines, ...)."""


def server_env_problems(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """`(name, problem)` for each variable of an MCP server's `env` that may not be set: what
    `env_problems` refuses, the families in `SERVER_FORBIDDEN_ENV_PREFIXES`, the names in
    `SERVER_FORBIDDEN_ENV` and every proxy variable (`*_PROXY`, any case)."""
    problems = env_problems(env)
    refused = {name for name, _ in problems}
    for name in env:
        if name in refused:
            continue
        upper = name.upper()
        if (
            upper in SERVER_FORBIDDEN_ENV
            or upper in FORBIDDEN_ENV
            or upper in RESERVED_ENV
            or upper.startswith(SERVER_FORBIDDEN_ENV_PREFIXES)
            or upper.startswith(FORBIDDEN_ENV_PREFIXES)
            or upper.endswith("_PROXY")
        ):
            problems.append(
                (
                    name,
                    f"env: {name} can make an MCP server run other code, load other configuration "
                    "or send its traffic elsewhere; not allowed in an MCP server's env",
                )
            )
    return problems


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


def tokenize(command: str | Sequence[str], *, operators: bool = True) -> tuple[str, ...]:
    """The argv that will be checked and run: a list as given, a string split once by shlex.

    Raises:
        aofd.errors.PolicyDenied: unparsable quoting, empty commands, or any token refused by
            `check_tokens` (for a string, control characters are refused *before* splitting,
            because shlex would turn a newline into plain whitespace). `operators=False` is
            for argvs aofd builds itself from structured fields (`check_tokens`).
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
    check_tokens(argv, operators=operators)
    return argv


def check_tokens(argv: Sequence[str], *, operators: bool = True) -> None:
    """Refuse empty argv, too many or too long tokens, bad characters and shell operators.

    `operators=False` skips the shell-operator check, for an argv whose tokens are data that
    aofd placed itself (a URL's query, a header value), never a model's command line.
    """
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
        op = _operator_in(tok) if operators else None
        if op is not None:
            raise _deny(
                f"shell operators not allowed: {op!r} in argument {index} {shown}; "
                "aofd runs exactly one program, without a shell",
                "shell-operator",
            )


def _operator_in(tok: str) -> str | None:
    if tok in SHELL_OPERATORS:
        return tok
    for op in _EMBEDDED_OPERATORS:
        if op in tok:
            return op
    for op in _EDGE_OPERATORS:
        if tok.startswith(op) or tok.endswith(op):
            return op
    return None


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
            flags=kc.flags,
            namespace=kc.namespace,
            namespace_flag=kc.namespace_flag,
            all_namespaces=kc.all_namespaces,
            escapes=kc.escapes,
            resource=",".join(kc.resource_types()) or None,
            names=tuple(dict.fromkeys(name for target in kc.targets for name in target.names)),
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
    regex, _ = regex_mod.compile_user(text)
    return Pattern(text=text, shape=None, regex=regex)


def known_tools(executables: Mapping[str, Path]) -> frozenset[str]:
    """Names a pattern may start with to be a command shape: the pinned tools, kubectl and helm."""
    return frozenset(executables) | NAMESPACED_TOOLS


def compile_pattern(
    text: str, *, field: str, tools: frozenset[str], allow: bool
) -> tuple[Pattern | None, str | None]:
    """One rule compiled, or the problem that keeps it out (`(None, why)`).

    In `allowed_commands` (`allow=True`) a legacy (regex or substring) pattern is a problem,
    because it would match nothing.
    """
    shown = json.dumps(text if len(text) <= 80 else text[:79] + "…", ensure_ascii=True)
    if not text.strip():
        return None, f"{shown}: empty pattern"
    try:
        pattern = parse_pattern(text, tools=tools)
    except errors.PolicyDenied as exc:
        return None, f"{shown}: {exc.reason}"
    if allow and not pattern.is_shape:
        # A standalone operator token, or one that never belongs to a regex (`|` and `>` may).
        standalone = (t for t in text.split() if t in SHELL_OPERATORS)
        embedded = (op for op in (";", "&&", "$(", "`") if op in text)
        operator = next(standalone, None) or next(embedded, None)
        if operator is not None:
            return None, (
                f"{shown}: shell operator {operator!r} in a pattern; a pattern is one command shape "
                "(tool, verb, flags such as 'kubectl get'), and aofd runs no shell"
            )
        return None, (
            f"{shown}: not a command shape (tool, verb, flags such as 'kubectl get'); "
            f"regular expressions are not accepted in {field}"
        )
    return pattern, None


def _subsequence(want: Sequence[str], got: Sequence[str]) -> bool:
    pos = 0
    for w in want:
        while pos < len(got) and w != got[pos]:
            pos += 1
        if pos == len(got):
            return False
        pos += 1
    return True


def _path_within(want: str, got: str) -> bool:
    """`rollout` covers `rollout restart`; `create secret` covers `create secret generic`."""
    return got == want or got.startswith(want + " ")


def _overlaps(rule: kubectl.Target, target: kubectl.Target) -> bool:
    """Could `target` reach an object `rule` names? (block and approval rules)."""
    if not rule.same_type(target):
        return False
    if not rule.names or not target.names:
        return True  # a list, selector or `--all` reaches every object, named ones included
    if target.prefix:
        return any(name.startswith(prefix) for name in rule.names for prefix in target.names)
    return bool(set(rule.names) & set(target.names))


def _covers(rule: kubectl.Target, target: kubectl.Target) -> bool:
    """Does `rule` allow every object `target` reaches? (allow rules)."""
    if not rule.same_type(target):
        return False
    return not rule.names or (bool(target.names) and set(target.names) <= set(rule.names))


def _kube_matches(rule: kubectl.KubectlCommand, cmd: kubectl.KubectlCommand, *, strict: bool) -> bool:
    if not _path_within(rule.path, cmd.path):
        return False
    if strict:
        if rule.targets:
            if cmd.open_targets or not cmd.targets:
                return False
            if not all(any(_covers(r, t) for r in rule.targets) for t in cmd.targets):
                return False
        return tuple(cmd.extras[: len(rule.extras)]) == rule.extras
    if rule.targets and not cmd.open_targets:
        reached = (*cmd.targets, *cmd.indirect)
        if not any(_overlaps(r, t) for r in rule.targets for t in reached):
            return False
    return _subsequence(rule.extras, cmd.extras)


def shape_matches(pattern: ParsedCommand, cmd: ParsedCommand, *, strict: bool) -> bool:
    """Does a command-shaped pattern match a parsed command?

    For kubectl both sides are compared on what kubectl acts on: the command path, and each
    target's canonical type and names, however they are written (`pod/x`, `po x`, `pods/x`).
    `strict` (allow rules): every object the command reaches must be one the rule names (a rule
    without names covers its whole type; a list, selector, `-f` or `--all` is covered only by
    such a rule), and the rule's other arguments must lead the command's. Loose (block and
    approval rules): one object the command may reach is enough, so a rule naming `secret
    db-creds` also matches `get secrets` (the list includes it), `delete -f x.yaml` (the file may
    name it) and `logs deploy/x` matches a rule on pods; other arguments may appear anywhere in
    order. Other tools compare positional tokens (strict: as a prefix; loose: in order).
    """
    if pattern.tool != cmd.tool:
        return False
    if pattern.namespace_flag:
        if cmd.all_namespaces:
            if strict:  # `-n dev get pods` does not allow every namespace ...
                return False
        elif cmd.namespace != pattern.namespace:  # ... but `-n prod delete` blocks `-A delete`
            return False
    if pattern.all_namespaces and not cmd.all_namespaces:
        return False
    if pattern.verb is None:
        return True
    if pattern.verb != cmd.verb:
        return False
    if pattern.kube is not None and cmd.kube is not None:
        if not _kube_matches(pattern.kube, cmd.kube, strict=strict):
            return False
    elif strict:
        if tuple(cmd.positionals[: len(pattern.positionals)]) != pattern.positionals:
            return False
    elif not _subsequence(pattern.positionals, cmd.positionals):
        return False
    return _flags_match(pattern.flags, cmd.flags, strict=strict)


def _flags_match(
    wanted: Sequence[tuple[str, str | None]], given: Sequence[tuple[str, str | None]], *, strict: bool
) -> bool:
    """Every flag of the rule is present; one the rule gives a value must have it.

    A flag may be written more than once: kubectl keeps the last of a plain flag and every one of
    a repeatable one (`-f a -f b`). So an allow rule (`strict`) covers the command only when every
    occurrence has one of the values the rule gives for that flag (`--dry-run=server
    --dry-run=none` is not a dry run; `-f ok.yaml -f /etc/shadow` is not `-f ok.yaml`); for a block
    or approval rule one occurrence with its value is enough.
    """
    values: dict[str, set[str | None]] = {}
    for name, value in wanted:
        values.setdefault(name, set()).add(value)
    for name, accepted in values.items():
        seen = [value for flag, value in given if flag == name]
        if not seen:
            return False
        if None in accepted:
            continue  # presence is all the rule asks
        if strict and not all(value in accepted for value in seen):
            return False
        if not strict and not any(value in accepted for value in seen):
            return False
    return True


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
    """Does an allowed rule name this escape? A flag escape (`--raw`, `--kustomize`) by the flag;
    one that is about the flag's value (`--filename=-`, `=url`, `--from-file=host-path`,
    `--output=file`) only by a rule that gives the value itself: a rule that matched (strictly)
    gives every value the command has for that flag (`_flags_match`), so the escaping one is
    among them. `kubectl apply -f` does not allow `-f /etc/shadow`, `-f -` or a URL."""
    if pattern.verb is None:
        return False
    if escape.startswith("--"):
        flag, _, about_value = escape.partition("=")
        values = [value for name, value in pattern.flags if name == flag]
        return any(value is not None for value in values) if about_value else bool(values)
    if " " in escape:  # "create token", "apply edit-last-applied"
        return pattern.kube is not None and _path_within(escape, pattern.kube.path)
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


def _namespace_refusal(cmd: ParsedCommand, policy: GuardPolicy) -> str | None:
    """Why a command reaches beyond the Context's `allowed_namespaces`, or None.

    The namespace it runs in must be listed, `-A` is refused, and for kubectl every object it
    reaches is checked: a namespace object only by a listed name (a list, `-l` or
    `--field-selector` over namespaces reads the others); a cluster-scoped type (`nodes`,
    `persistentvolumes`, `clusterrolebindings`, ...) and a type aofd cannot place (a custom
    resource) only when `security.allowed_cluster_resources` names it; commands that reach
    other namespaces whatever `--namespace` says (`drain`, `cluster-info`) only with an
    allowance for what they touch.
    """
    permitted = set(policy.allowed_namespaces)
    if cmd.all_namespaces:
        return "all namespaces (-A) is not allowed: the Context restricts namespaces"
    if cmd.namespace not in permitted:
        return f"namespace {cmd.namespace!r} is not in the Context's allowed_namespaces"
    kube = cmd.kube
    if kube is None:
        return None
    allowance = set(policy.cluster_resources)
    for target in (*kube.targets, *kube.indirect):
        if target.resource == "namespaces" and target.group == "" and "namespaces" not in allowance:
            if not target.names:
                return (
                    "reading every namespace (a list, -l or --field-selector over namespaces) is not "
                    "allowed: the Context restricts namespaces"
                )
            outside = [name for name in target.names if name not in permitted]
            if outside:
                return f"namespace {outside[0]!r} is not in the Context's allowed_namespaces"
            continue
        if target.type_key in allowance or target.resource in allowance:
            continue
        if not target.known:
            return (
                f"resource type {target.type_key!r} is not built into Kubernetes, so aofd cannot tell "
                "whether it stays inside allowed_namespaces; list it in "
                "security.allowed_cluster_resources to allow it"
            )
        if not target.namespaced:
            return (
                f"{target.type_key!r} is cluster-scoped (outside every namespace); list it in "
                "security.allowed_cluster_resources to allow it"
            )
    raw = kube.flag_value("--raw")
    if raw is not None:
        match = _RAW_NAMESPACED.match(raw)
        segments = raw.split("?", 1)[0].split("/")
        if match is None or match.group(1) not in permitted or {".", ".."} & set(segments) or "%" in raw:
            return f"--raw {raw[:60]!r} reaches outside the Context's allowed_namespaces"
    if "--prune" in kube.escapes:
        return "apply --prune can delete objects outside allowed_namespaces (cluster-scoped types too)"
    if kube.cross_namespace and kube.verb == "cluster-info":
        return (
            "'kubectl cluster-info' reads kube-system and other namespaces: the Context restricts namespaces"
        )
    return None


def evaluate(
    argv: Sequence[str],
    *,
    policy: GuardPolicy,
    executables: Mapping[str, Path],
    operators: bool = True,
) -> Verdict:
    """Decide whether an already tokenized argv may run under `policy`, and with approval or not.

    Never raises for any argv; every refusal is a `Verdict(allowed=False, reason=...)`.
    `operators=False`: see `check_tokens`.
    """
    argv = tuple(argv)

    def deny(reason: str, rule: str | None, command: ParsedCommand | None = None) -> Verdict:
        return Verdict(False, reason, rule, argv, command=command)

    try:
        check_tokens(argv, operators=operators)
        executable = resolve_executable(argv[0], executables)
        cmd = parse_command(argv, default_namespace=policy.namespace)
    except errors.PolicyDenied as exc:
        return deny(exc.reason, exc.rule)

    for pattern in policy.blocked:
        if pattern_matches(pattern, cmd, argv, strict=False):
            return deny(f"blocked by blocked_commands rule {pattern.text!r}", f"blocked:{pattern.text}", cmd)

    matching_allowed = [p for p in policy.allowed if pattern_matches(p, cmd, argv, strict=True)]
    if cmd.tool not in NAMESPACED_TOOLS and not matching_allowed:
        return deny(
            f"{cmd.tool!r} runs only when the Context's allowed_commands names it "
            "(aofd has no semantic policy for it)",
            "allowed_commands",
            cmd,
        )
    if policy.allowed and not matching_allowed:
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
        refusal = _namespace_refusal(cmd, policy)
        if refusal is not None:
            return deny(refusal, "namespace", cmd)

    exec_argv = argv
    if (
        cmd.tool in NAMESPACED_TOOLS
        and not cmd.namespace_flag
        and not cmd.all_namespaces
        and cmd.verb is not None
        and cmd.namespace is not None
    ):
        # The checked namespace must be the one that runs: without the flag kubectl would use the
        # kubeconfig context's namespace, which no rule saw (`-n prod delete` would miss it).
        exec_argv = (argv[0], "--namespace", cmd.namespace, *argv[1:])

    needs, approval_rule = False, None
    approval = policy.approval
    if approval is not None and approval.required:
        if not approval.require_for_any:
            needs, approval_rule = True, "*"
        else:
            for pattern in approval.require_for:
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


# --------------------------------------------------------------------------- MCP tools


@dataclasses.dataclass(frozen=True, slots=True)
class ToolHints:
    """What an MCP server says of a tool (its annotations); None when it says nothing."""

    read_only: bool | None = None
    destructive: bool | None = None

    @property
    def label(self) -> str:
        """`read-only`, `write` or `destructive` (an absent destructiveHint counts as destructive)."""
        if self.read_only is True:
            return "read-only"
        return "write" if self.destructive is False else "destructive"


@dataclasses.dataclass(frozen=True, slots=True)
class ToolVerdict:
    """The policy decision for one MCP tool call under one Context; `rule` names what decided."""

    allowed: bool
    reason: str
    rule: str | None
    needs_approval: bool = False
    approval_rule: str | None = None


def _tool_match(globs: Sequence[str], subject: str) -> str | None:
    return next((glob for glob in globs if fnmatch.fnmatchcase(subject, glob)), None)


def evaluate_tool(server: str, tool: str, hints: ToolHints, policy: GuardPolicy) -> ToolVerdict:
    """Decide whether `<server>/<tool>` may be called under `policy`, and with approval or not.

    Never raises. The order: `blocked_tools`, then `allowed_tools` (or, without them, the
    tool's own `readOnlyHint`), then `approval.require_for` (see the module docstring).
    """
    subject = f"{server}/{tool}"
    blocked = _tool_match(policy.blocked_tools, subject)
    if blocked is not None:
        return ToolVerdict(False, f"blocked by blocked_tools rule {blocked!r}", f"blocked_tools:{blocked}")
    if policy.allowed_tools:
        allowed = _tool_match(policy.allowed_tools, subject)
        if allowed is None:
            return ToolVerdict(False, f"{subject!r} is not in the Context's allowed_tools", "allowed_tools")
        reason, rule = f"allowed by allowed_tools rule {allowed!r}", allowed
    elif hints.read_only is True:
        reason, rule = "allowed: the server marks it read-only (no allowed_tools)", "read_only"
    else:
        return ToolVerdict(
            False,
            f"{subject!r} is not marked read-only by its server and the Context has no allowed_tools "
            "(only read-only tools run without one)",
            "allowed_tools",
        )
    needs, approval_rule = False, None
    approval = policy.approval
    if approval is not None and approval.required:
        if not approval.require_for_any:
            needs, approval_rule = True, "*"
        else:
            for rule_text in approval.require_for_tools:
                if rule_text == "write":
                    hit = hints.read_only is not True
                elif rule_text == "destructive":
                    hit = hints.read_only is not True and hints.destructive is not False
                else:
                    hit = fnmatch.fnmatchcase(subject, rule_text)
                if hit:
                    needs, approval_rule = True, TOOL_RULE_PREFIX + rule_text
                    break
    return ToolVerdict(True, reason, rule, needs_approval=needs, approval_rule=approval_rule)
