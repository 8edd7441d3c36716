"""Audit records: the ECS-shaped dictionaries one audit line is made of (RELIABILITY.md §1.5).

This module owns the *shape* of a record and nothing else: the action vocabulary, the
ECS categorization of each action, where the seed's audit line fields live (every field is
an ECS field or under `aofd.*`: `timestamp` is `@timestamp`, `context` `aofd.context`, `agent`
`aofd.agent.name`, `user` `user.id`, `command` `process.command_line`, `approved_by`
`aofd.approval.approver.id`, `cluster` `orchestrator.cluster.name`, `namespace`
`orchestrator.namespace`, `status` `aofd.status`), secret argv values replaced by
`hmac-sha256:<hex>`, bodies (output excerpt, prompt text) carried with their
digest and length, and `encode_line`, which turns a record into at most `MAX_LINE_BYTES`
bytes by dropping bodies first and never dropping the record.

It is pure: no file I/O, no clock except the `now` a caller passes (or `time.time()` as a
default), no asyncio. The journal (`aofd.audit.segment`) fills `aofd.audit.{file_id, seq,
prev}`; callers pass everything else.

The seed's line had them flat at the top level; there `agent` would collide with ECS's
`agent.*` object (the shipper) and the others are not ECS fields, so a SIEM's ECS mapping
would reject or mis-type them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import hmac
import json
import os
import posixpath
import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from aofd import __version__
from aofd.audit import redact

ECS_VERSION: Final = "8.11.0"
SCHEMA: Final = "aofd.audit/v1"
DATASET: Final = "aofd.audit"
PROVIDER: Final = "aofd"
MAX_LINE_BYTES: Final = 16 * 1024
"""The cap on one line, newline included (Fluent Bit's 32k default and HTTP intakes stay safe)."""

DEFAULT_EXCERPT_BYTES: Final = 4 * 1024
"""How much command output a builder keeps as an excerpt before the journal's cap applies."""

Outcome = Literal["success", "failure", "unknown"]

# action -> (event.category, event.type): ECS allowed values only, and every type one that ECS
# expects with one of the categories (`expected_event_types`). Verdicts (`allowed`, `denied`) are
# expected with `api` only, so a decision on a command or an approval also carries `api`: the
# guard decides on a tool call the agent made through aofd's tool interface. An MCP tool call keeps
# the `command.*` actions but has no process: `build` gives its records the category `api` alone
# (every type above is one ECS expects with `api`).
ACTIONS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "daemon.started": (("process",), ("start",)),
    "daemon.stopping": (("process",), ("end",)),
    "config.applied": (("configuration",), ("change",)),
    "config.loaded": (("configuration",), ("change",)),
    "config.rejected": (("configuration",), ("change",)),
    "trigger.received": (("api",), ("access",)),
    "trigger.rejected": (("api",), ("access", "denied")),
    "agent.run.started": (("process",), ("start",)),
    "agent.run.finished": (("process",), ("end",)),
    "command.requested": (("process",), ("info",)),
    "command.denied": (("process", "api"), ("info", "denied")),
    "command.started": (("process", "api"), ("start", "allowed")),
    "command.finished": (("process",), ("end",)),
    "command.abandoned": (("process",), ("end",)),
    "approval.requested": (("iam",), ("info",)),
    "approval.granted": (("iam", "api"), ("info", "allowed")),
    "approval.denied": (("iam", "api"), ("info", "denied")),
    "approval.expired": (("iam", "api"), ("info", "denied")),
    "approval.cancelled": (("iam", "api"), ("info", "denied")),
    "approval.refused": (("iam", "api"), ("info", "denied")),
    "ratelimit.exceeded": (("api",), ("denied",)),
    "audit.file.opened": (("file",), ("creation",)),
    "audit.file.rotated": (("file",), ("change",)),
    "audit.recovered": (("file",), ("change",)),
    "audit.sealed": (("file",), ("info",)),
    "audit.pruned": (("file",), ("deletion",)),
    "memory.cleared": (("file",), ("deletion",)),
}

BODY_PATHS: Final[tuple[tuple[str, ...], ...]] = (
    ("aofd", "output", "excerpt"),
    ("aofd", "output", "stdout"),
    ("aofd", "output", "stderr"),
    ("aofd", "prompt", "text"),
    ("aofd", "trigger", "text"),
    ("aofd", "error", "text"),
)
"""Fields the journal drops first when a line is over the cap; each parent keeps sha256 + bytes."""

SECRET_FLAGS: Final[frozenset[str]] = frozenset(
    {
        "--token",
        "--password",
        "--passwd",
        "--secret",
        "--client-secret",
        "--api-key",
        "--apikey",
        "--auth-token",
        "--bearer-token",
        "--access-token",
        "--refresh-token",
        "--private-key-data",
        "--from-literal",
        "--docker-password",
        "--webhook-secret",
        "--signing-secret",
        "--client-key-data",
        "--client-certificate-data",
    }
)
"""Flags whose value is a secret; the value (next argv element or `=value`) is HMAC'd."""

TOOL_SECRET_FLAGS: Final[Mapping[str, frozenset[str]]] = {
    "curl": frozenset(
        {"-u", "--user", "-U", "--proxy-user", "--oauth2-bearer", "--pass", "--proxy-pass", "--aws-sigv4"}
    ),
    "wget": frozenset({"--http-password", "--ftp-password", "--proxy-password", "--user", "--http-user"}),
    "mysql": frozenset({"-p", "--password"}),
    "mysqladmin": frozenset({"-p", "--password"}),
    "mysqldump": frozenset({"-p", "--password"}),
    "psql": frozenset({"--password"}),
    "redis-cli": frozenset({"-a", "--pass", "--user"}),
    "sshpass": frozenset({"-p"}),
}
"""Flags whose value is a secret only for one tool (by argv[0]'s basename): `curl -u user:pass`,
`mysql -pSECRET` (a short flag's value may be attached), `redis-cli -a PASS`. Elsewhere `-u` or `-p`
mean something else (`sort -u`, `mkdir -p`), so they are not in `SECRET_FLAGS`."""

LOGIN_SECRET_FLAGS: Final[Mapping[str, frozenset[str]]] = {
    tool: frozenset({"-p", "--password"})
    for tool in ("docker", "podman", "nerdctl", "buildah", "skopeo", "helm", "oras", "crane")
}
"""Flags whose value is a secret when the argv has a `login` subcommand: `docker login -p X`,
`helm registry login -p X` (elsewhere `docker run -p 8080:80` publishes a port)."""

_SECRET_ENV_NAME = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(?:TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY)[A-Za-z0-9_]*=", re.I
)
_SECRET_ASSIGNMENT = re.compile(
    r"(?:^|[^A-Za-z0-9_])[A-Za-z0-9_]*(?:TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY)[A-Za-z0-9_]*=[^\s;&|]", re.I
)
"""`NAME_TOKEN=value` anywhere in an element (`sh -c "export API_TOKEN=...; ..."`)."""
_SECRET_NAME = re.compile(r"(?:TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|PRIVATE_?KEY)", re.I)
"""A bare setting name that names a secret: the value after `set <name>` is hidden."""
_TOKEN_LIKE = re.compile(
    r"(?:xox[abposr]-|xapp-|sk-ant-|sk-proj-|gh[pousr]_|github_pat_|glpat-|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.)"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Actor:
    """A user: the immutable platform id (never the display name), a name and a domain."""

    id: str
    name: str = ""
    domain: str = ""  # "slack:T0001", "telegram", "whatsapp:<waba>", "pagerduty", "cli"


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """Who writes the records: `service.*` and `host.hostname` of every line.

    A replica of a set (`cluster:`) also stamps `service.node.name` (ECS: the name of one
    instance of a service) with its member name and `aofd.cluster.name` with the set's name;
    `orchestrator.cluster.name` stays the Context's Kubernetes cluster."""

    service_version: str = __version__
    hostname: str = dataclasses.field(default_factory=socket.gethostname)
    service_name: str = "aofd"
    member: str | None = None
    cluster_name: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Process:
    """A command as audited: argv (already redacted), exit code, working directory."""

    args: tuple[str, ...]
    exit_code: int | None = None
    working_directory: str | None = None
    pid: int | None = None


class ArgvRedactor:
    """Replace secret argv values by `hmac-sha256:<hex>` (Vault's audit-hash convention).

    With no configured key the values are hashed with a random per-daemon key and written
    as `sha256:<hex>`: still not reversible, but not comparable across restarts either.
    `process.args_count` stays truthful because elements are replaced, never removed.
    Besides the values of `SECRET_FLAGS` (and of `TOOL_SECRET_FLAGS`/`LOGIN_SECRET_FLAGS` for their
    tools), `NAME_TOKEN=value` pairs (an element holding one elsewhere than at its start, as in
    `sh -c "export API_TOKEN=...; ..."`, is replaced whole), the value after `set <secret-named
    setting>` (`aws configure set aws_secret_access_key V`), the token of `vault login TOKEN` and
    openssl's `pass:VALUE`, any element that
    `aofd.audit.redact.redact_text` would change (`password=...`, `Authorization: Bearer ...`,
    URL userinfo, `?token=...`, vendor token formats) is replaced whole.
    """

    def __init__(self, *, key: bytes | None = None) -> None:
        self._key = key if key else secrets.token_bytes(32)
        self._prefix = "hmac-sha256:" if key else "sha256:"

    def digest(self, value: str) -> str:
        """The redacted form of one secret value (what `aofctl audit-hash` would print)."""
        mac = hmac.new(self._key, value.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return self._prefix + mac.hexdigest()

    def redact(self, argv: Sequence[str]) -> tuple[str, ...]:
        """Return argv with every secret value replaced; the length never changes."""
        out: list[str] = []
        hide_next = False
        tool = posixpath.basename(argv[0]) if argv else ""
        tool_flags = TOOL_SECRET_FLAGS.get(tool, frozenset())
        if "login" in argv[1:]:
            tool_flags = tool_flags | LOGIN_SECRET_FLAGS.get(tool, frozenset())
        secret_flags = SECRET_FLAGS | tool_flags if tool_flags else SECRET_FLAGS
        vault_login = tool == "vault" and "login" in argv[1:]
        for index, arg in enumerate(argv):
            previous = argv[index - 1] if index else ""
            if hide_next:
                out.append(self.digest(arg))
                hide_next = False
                continue
            flag, eq, value = arg.partition("=")
            if index >= 2 and previous == "set" and _SECRET_NAME.search(arg) and not arg.startswith("-"):
                out.append(
                    arg
                )  # `aws configure set aws_secret_access_key VALUE`, `npm config set _authToken V`
                hide_next = True
            elif vault_login and index >= 2 and not eq and arg not in ("login", "-") and arg[:1] != "-":
                out.append(self.digest(arg))  # `vault login TOKEN`: the positional argument is the token
            elif arg.startswith("pass:"):  # openssl's `-pass pass:SECRET` / `-passin pass:SECRET`
                out.append("pass:" + self.digest(arg[5:]))
            elif flag in secret_flags:
                if eq:
                    out.append(f"{flag}={self.digest(value)}")
                else:
                    out.append(arg)
                    hide_next = True
            elif arg[:2] in tool_flags:  # a short flag with its value attached: -uuser:pass, -pSECRET
                out.append(arg[:2] + self.digest(arg[2:]))
            elif _SECRET_ENV_NAME.match(arg):
                out.append(f"{flag}={self.digest(value)}")
            elif _TOKEN_LIKE.search(arg) or _SECRET_ASSIGNMENT.search(arg) or redact.redact_text(arg) != arg:
                out.append(self.digest(arg))
            else:
                out.append(arg)
        return tuple(out)


class _ShownRedactor(ArgvRedactor):
    """`ArgvRedactor`'s rules with `[REDACTED]` for a value (text for people, not a digest)."""

    def digest(self, value: str) -> str:
        return redact.REDACTED


_SHOWN = _ShownRedactor(key=b"shown")


def redact_argument(text: str) -> str:
    """One string of a tool call's arguments as approvers and the audit log see it: the secret
    patterns of `aofd.audit.redact.redact_text` (bearer tokens, URL userinfo, `sk-ant-` ...) and,
    when it reads as a command line, the values `ArgvRedactor` hides (`mysql -pSECRET`,
    `curl -u user:pass`, `--token X`) as `[REDACTED]` (then re-joined with `shlex.join`)."""
    text = redact.redact_text(text)
    if " -" not in text:
        return text
    try:
        argv = shlex.split(text)
    except ValueError:
        return text
    hidden = _SHOWN.redact(argv)
    return text if hidden == tuple(argv) else shlex.join(hidden)


def _mcp_arguments(record: Mapping[str, Any]) -> str | None:
    """`aofd.mcp.arguments` (JSON text) scrubbed value by value and re-encoded, so it stays JSON;
    None when the record has none or it is not JSON (cut: then it is scrubbed as free text)."""
    aofd = record.get("aofd")
    mcp = aofd.get("mcp") if isinstance(aofd, Mapping) else None
    text = mcp.get("arguments") if isinstance(mcp, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return json.dumps(redact.redact_value(parsed), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def rfc3339(ts: float) -> str:
    """`2025-06-01T12:00:03.412918Z`: RFC 3339, UTC, microseconds."""
    dt = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now: float | None = None) -> str:
    """A ULID: 26 characters, sortable by creation time, 80 random bits."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def body(text: str | bytes, *, limit: int = DEFAULT_EXCERPT_BYTES) -> dict[str, Any]:
    """`{excerpt, sha256, bytes}` for an output body: the digest and length cover all of it."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    excerpt = raw[:limit].decode("utf-8", "replace")
    result: dict[str, Any] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    result["excerpt"] = excerpt
    if len(raw) > limit:
        result["excerpt_truncated"] = True
    return result


def build(
    action: str,
    *,
    context: str,
    outcome: Outcome = "success",
    event_id: str | None = None,
    reason: str | None = None,
    duration_ns: int | None = None,
    now: float | None = None,
    origin: Origin | None = None,
    user: Actor | None = None,
    approver: Actor | None = None,
    agent: str | None = None,
    run_id: str | None = None,
    trigger: Mapping[str, Any] | None = None,
    decision: Mapping[str, Any] | None = None,
    approval: Mapping[str, Any] | None = None,
    process: Process | None = None,
    cluster: str | None = None,
    namespace: str | None = None,
    resource_type: str | None = None,
    revision: str | None = None,
    trace_id: str | None = None,
    output: str | bytes | None = None,
    prompt: str | None = None,
    extra: Mapping[str, Any] | None = None,
    command_line: str | None = None,
    related: Sequence[str] = (),
    source_ip: str | None = None,
    http_status: int | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Build one record for `action` (a name from `ACTIONS`); unknown actions raise ValueError.

    `process.args` must already be redacted (`ArgvRedactor.redact`). `extra` is merged into
    the `aofd` object (for action-specific fields such as `aofd.file`). `command_line` is the
    text of a command that never became an argv (used when there is no `process`; the journal
    redacts it); `related` are further user ids; `source_ip`, `http_status` and `message` are
    ECS's `source.ip`, `http.response.status_code` and `message`.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {sorted(ACTIONS)}")
    ts = time.time() if now is None else now
    stamp = rfc3339(ts)
    categories, types = ACTIONS[action]
    if (
        action.startswith("command.")
        and process is None
        and command_line is None
        and extra
        and "mcp" in extra
    ):
        categories = ("api",)  # an MCP tool call (`aofd.mcp`): no process, a call through an API
    if "denied" in types and outcome == "success":
        outcome = "failure"  # a refusal is never a success (ECS: the verdict is event.type)
    event: dict[str, Any] = {
        "kind": "event",
        "category": list(categories),
        "type": list(types),
        "action": action,
        "outcome": outcome,
        "id": event_id or new_id(ts),
        "dataset": DATASET,
        "provider": PROVIDER,
        "created": stamp,
    }
    if reason is not None:
        event["reason"] = reason
    if duration_ns is not None:
        event["duration"] = int(duration_ns)

    aofd: dict[str, Any] = {"schema": SCHEMA, "context": context, "truncated": False}
    if trigger is not None:
        aofd["trigger"] = dict(trigger)
    if decision is not None:
        aofd["decision"] = dict(decision)
    if approval is not None:
        aofd["approval"] = dict(approval)
    if agent is not None or run_id is not None:
        aofd["agent"] = _compact({"name": agent, "run_id": run_id})
    if revision is not None:
        aofd["revision"] = revision
    if output is not None:
        aofd["output"] = body(output)
    if prompt is not None:
        aofd["prompt"] = body(prompt)
    if extra:
        aofd.update(extra)
    who = origin or Origin()
    if who.cluster_name is not None:
        aofd["cluster"] = {"name": who.cluster_name}
    if approver is not None:  # the seed's `approved_by`, also when `extra` brings its own `approval`
        aofd["approval"] = {**(aofd.get("approval") or {}), "approver": _actor(approver)}
    aofd["status"] = "denied" if "denied" in types else outcome

    record: dict[str, Any] = {
        "@timestamp": stamp,
        "ecs": {"version": ECS_VERSION},
        "event": event,
        "aofd": aofd,
    }
    users: list[str] = []
    if user is not None:
        record["user"] = _actor(user)
        users.append(user.id)
    if approver is not None:
        users.append(approver.id)
    users.extend(related)
    if users:
        record["related"] = {"user": list(dict.fromkeys(u for u in users if u))}
    if process is not None:
        record["process"] = _process(process)
    elif command_line is not None:
        record["process"] = {"command_line": command_line}
    if source_ip is not None:
        record["source"] = {"ip": source_ip}
    if http_status is not None:
        record["http"] = {"response": {"status_code": http_status}}
    if message is not None:
        record["message"] = message
    if cluster is not None or namespace is not None or resource_type is not None:
        record["orchestrator"] = _compact(
            {
                "type": "kubernetes",
                "cluster": {"name": cluster} if cluster is not None else None,
                "namespace": namespace,
                "resource": {"type": resource_type} if resource_type is not None else None,
            }
        )
    record["service"] = _compact(
        {
            "name": who.service_name,
            "version": who.service_version or None,
            "node": {"name": who.member} if who.member else None,
        }
    )
    record["host"] = {"hostname": who.hostname}
    if trace_id is not None or run_id is not None:
        record["trace"] = {"id": trace_id or run_id}
    record["log"] = {"level": "warning" if outcome == "failure" or "denied" in types else "info"}

    return record


NOT_FREE_TEXT: Final[frozenset[str]] = frozenset({"@timestamp", "ecs", "process", "command"})
"""Top-level fields `scrub_secrets` leaves to other rules: the clock, the schema version,
`process` (its `args` went through `ArgvRedactor`, its `command_line` is rebuilt from them) and a
hand-built record's flat `command` (rebuilt the same way)."""


def scrub_secrets(record: Mapping[str, Any]) -> dict[str, Any]:
    """Keep secrets out of every line; the journal runs this on every record before encoding it.

    `process.args` is the redacted argv (`ArgvRedactor`), but a writer may also pass
    `process.command_line` (or, hand-built, the seed's flat `command`) rendered from the
    *unredacted* argv. When `process.args` is present both are rebuilt from it (`shlex.join`, as
    `build` does); without it, they go through `aofd.audit.redact.redact_text`.

    Every other field is treated as free text by default (so a new field is covered without
    being listed): each string under any top-level key but `NOT_FREE_TEXT` goes through
    `redact_text` (`message`, `event.reason`, `aofd.run.error`, `aofd.output.excerpt`,
    `aofd.errors`, `aofd.ratelimit.message` ...), and a value under a secret-sounding key
    (`password`, `token`, `api_key` ...) is replaced whole (`aofd.audit.redact.redact_value`).
    Identifiers, hashes and names do not look like secrets and pass unchanged. A body's
    `sha256` and `bytes` describe the output as it was, before redaction. An MCP call's
    `aofd.mcp.arguments` (JSON text) is scrubbed value by value and stays valid JSON.
    """
    out = dict(record)
    process = out.get("process")
    args = process.get("args") if isinstance(process, Mapping) else None
    joined = None
    if isinstance(args, list | tuple) and all(isinstance(a, str) for a in args):
        joined = shlex.join(args)
    if isinstance(process, Mapping) and isinstance(process.get("command_line"), str):
        proc = dict(process)
        proc["command_line"] = joined if joined is not None else redact.redact_text(proc["command_line"])
        out["process"] = proc
    if isinstance(out.get("command"), str):  # a hand-built record with the seed's flat `command`
        out["command"] = joined if joined is not None else redact.redact_text(out["command"])
    arguments = _mcp_arguments(out)
    for key, value in out.items():
        if key not in NOT_FREE_TEXT:
            out[key] = redact.redact_value(value)
    if arguments is not None:  # `out["aofd"]["mcp"]` is redact_value's fresh copy
        out["aofd"]["mcp"]["arguments"] = arguments
    return out


def _actor(actor: Actor) -> dict[str, str]:
    return {k: v for k, v in (("id", actor.id), ("name", actor.name), ("domain", actor.domain)) if v}


def _process(process: Process) -> dict[str, Any]:
    args = list(process.args)
    out: dict[str, Any] = {
        "executable": args[0] if args else "",
        "args": args,
        "args_count": len(args),
        "command_line": shlex.join(args),
    }
    if process.exit_code is not None:
        out["exit_code"] = process.exit_code
    if process.working_directory is not None:
        out["working_directory"] = process.working_directory
    if process.pid is not None:
        out["pid"] = process.pid
    return out


def _compact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


# -- encoding ---------------------------------------------------------------------------

_LONG_STRING = 512
_LONG_LIST = 128


def dumps(record: Mapping[str, Any]) -> bytes:
    """One JSON line (newline included): compact, ASCII only, so no byte can split a line."""
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    return text.encode("ascii") + b"\n"


def encode_line(record: Mapping[str, Any], *, max_bytes: int = MAX_LINE_BYTES) -> tuple[bytes, bool]:
    """Encode `record` into at most `max_bytes`; return the line and whether it was truncated.

    In order, until it fits: drop bodies (keeping their sha256 and length), shorten long
    strings and lists to a digest marker, and finally keep only the skeleton (`@timestamp`,
    `ecs`, `event`, `aofd.{schema, context, audit}`) plus the digest and length of the full line.
    The record itself is never dropped.
    """
    line = dumps(record)
    if len(line) <= max_bytes:
        return line, False
    original = hashlib.sha256(line).hexdigest(), len(line)
    slim: dict[str, Any] = copy.deepcopy(dict(record))
    slim.setdefault("aofd", {})["truncated"] = True
    for path in BODY_PATHS:
        _drop_body(slim, path)
    line = dumps(slim)
    if len(line) <= max_bytes:
        return line, True
    slim = _shorten(slim)
    line = dumps(slim)
    if len(line) <= max_bytes:
        return line, True
    aofd = slim.get("aofd", {})
    skeleton: dict[str, Any] = {key: slim[key] for key in ("@timestamp", "ecs", "event") if key in slim}
    skeleton["aofd"] = {key: aofd[key] for key in ("schema", "context", "audit") if key in aofd}
    skeleton["aofd"]["truncated"] = True
    skeleton["aofd"]["original"] = {"sha256": original[0], "bytes": original[1]}
    line = dumps(skeleton)
    if len(line) > max_bytes:  # only a pathological `event` can get here
        skeleton["event"] = {k: skeleton.get("event", {}).get(k) for k in ("action", "id", "outcome")}
        line = dumps(_shorten(skeleton))
    return line, True


def _drop_body(record: dict[str, Any], path: tuple[str, ...]) -> None:
    parent: Any = record
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
        if parent is None:
            return
    if not isinstance(parent, dict) or path[-1] not in parent:
        return
    value = parent.pop(path[-1])
    if "sha256" not in parent:
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else dumps(value)
        parent["sha256"] = hashlib.sha256(raw).hexdigest()
        parent["bytes"] = len(raw)
    parent["dropped"] = True


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _LONG_STRING:
        raw = value.encode("utf-8", "surrogateescape")
        return f"[truncated {len(raw)} bytes sha256:{hashlib.sha256(raw).hexdigest()}]"
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_shorten(v) for v in value[:_LONG_LIST]]
        if len(value) > _LONG_LIST:
            items.append(f"[truncated {len(value) - _LONG_LIST} more items]")
        return items
    return value


def action_of(record: Mapping[str, Any]) -> str:
    """`event.action` of a parsed record, or "" when absent."""
    event = record.get("event")
    return str(event.get("action", "")) if isinstance(event, Mapping) else ""


def event_id_of(record: Mapping[str, Any]) -> str:
    """`event.id` of a parsed record, or "" when absent."""
    event = record.get("event")
    return str(event.get("id", "")) if isinstance(event, Mapping) else ""


def unfinished_commands(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The `command.started` records with no later `command.finished`/`abandoned` of the same id."""
    open_starts: dict[str, Mapping[str, Any]] = {}
    for rec in lines:
        action = action_of(rec)
        if action == "command.started":
            open_starts[event_id_of(rec)] = rec
        elif action in ("command.finished", "command.abandoned"):
            open_starts.pop(event_id_of(rec), None)
    return list(open_starts.values())


def _nested(record: Mapping[str, Any], section: str, field: str) -> str:
    """`aofd.<section>.<field>` of a parsed record as text, or "" when absent."""
    aofd = record.get("aofd")
    part = aofd.get(section) if isinstance(aofd, Mapping) else None
    return str(part.get(field, "")) if isinstance(part, Mapping) else ""


def run_id_of(record: Mapping[str, Any]) -> str:
    """`aofd.agent.run_id` of a parsed record, or "" when absent."""
    return _nested(record, "agent", "run_id")


def _unclosed(
    lines: Iterable[Mapping[str, Any]],
    key_of: Callable[[Mapping[str, Any]], str],
    opens: str,
    closes: Callable[[str, Mapping[str, Any]], bool],
) -> list[Mapping[str, Any]]:
    """The `opens` records (by `key_of`) with no later record that `closes` the same key."""
    still_open: dict[str, Mapping[str, Any]] = {}
    for rec in lines:
        key = key_of(rec)
        if not key:
            continue
        action = action_of(rec)
        if action == opens:
            still_open[key] = rec
        elif closes(action, rec):
            still_open.pop(key, None)
    return list(still_open.values())


def unfinished_runs(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The `agent.run.started` records with no later `agent.run.finished` of the same run id."""
    return _unclosed(
        lines, run_id_of, "agent.run.started", lambda action, _rec: action == "agent.run.finished"
    )


APPROVAL_CLOSERS = frozenset(
    {"approval.granted", "approval.denied", "approval.expired", "approval.cancelled"}
)
"""Actions that close an approval request (`approval.granted` only with `final`, not a partial vote)."""


def approval_id_of(record: Mapping[str, Any]) -> str:
    """`aofd.approval.id` of a parsed record, or "" when absent."""
    return _nested(record, "approval", "id")


def _closes_approval(action: str, record: Mapping[str, Any]) -> bool:
    if action not in APPROVAL_CLOSERS:
        return False
    aofd = record.get("aofd")
    approval = aofd.get("approval") if isinstance(aofd, Mapping) else None
    # A partial vote (`approval.granted` with `final: false`) leaves the request open.
    return (
        action != "approval.granted" or not isinstance(approval, Mapping) or bool(approval.get("final", True))
    )


def unfinished_approvals(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The `approval.requested` records with no later closing record of the same request id."""
    return _unclosed(lines, approval_id_of, "approval.requested", _closes_approval)
