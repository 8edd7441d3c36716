"""Who can approve, worked out from the files alone; pure (no I/O, no clock).

This module owns the approver arithmetic that both the compile stage and the runtime need:

- `split`: an `allowed_users` entry as (platform prefix or None, user id): `slack:U1` is
  (`slack`, `U1`), `U1` is (None, `U1`); only `slack`, `telegram`, `discord` and `admin` are
  prefixes (`PLATFORM_PREFIXES`), anything else is part of the id;
- `narrow_approvers`: an Approval node's `approvers` narrowed by its Context's `allowed_users`
  (a flow may name fewer approvers than its Context, never others);
- `distinct_approvers`: how many different people a list can name at most, counted by user id
  (`slack:U1` and `U1` are one person; `slack:U1` and `telegram:U1` are two);
- `context_problems` and `node_problems`: approval settings that cannot all hold, as warnings
  (`aofctl validate` shows them; the daemon applies the revision and logs them).

The runtime's approval store (`aofd.runtime.approvals`) decides clicks with the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence

from aofd.resources.kinds import context as context_kind
from aofd.specs.problems import Problem

PLATFORM_PREFIXES: tuple[str, ...] = ("slack", "telegram", "discord", "admin")
"""Prefixes an `allowed_users` entry may carry; an entry with one only matches that platform's user."""

ADMIN = "admin"
"""The platform of an operator deciding through the admin API (`aofctl approve`) with a named
token: `UserRef(id="admin:<name>", domain="admin")`, an approver only where `allowed_users` lists
`admin:<name>` (a bare entry never matches an admin user)."""

Loc = tuple[str | int, ...]
APPROVAL_LOC: Loc = ("spec", "approval")


def split(entry: str) -> tuple[str | None, str]:
    """(platform prefix or None, user id) of an `allowed_users` entry."""
    head, sep, tail = entry.partition(":")
    if sep and head.lower() in PLATFORM_PREFIXES:
        return head.lower(), tail
    return None, entry


def narrow_approvers(requested: Sequence[str], allowed_users: Sequence[str]) -> tuple[str, ...]:
    """The entries of `requested` that are also approvers in `allowed_users` (the Context's).

    A flow may name fewer approvers than its Context, never others: an entry counts when its id
    matches an allowed entry's id and their platform prefixes (when both have one) agree; the
    more specific of the two spellings is kept.
    """
    kept = []
    for entry in requested:
        prefix, wanted = split(entry)
        for allowed in allowed_users:
            allowed_prefix, allowed_id = split(allowed)
            if prefix == ADMIN and allowed_prefix != ADMIN:
                continue  # an operator approves only where the Context names `admin:<name>` itself
            if wanted and wanted == allowed_id and (prefix is None or allowed_prefix in (None, prefix)):
                # The narrower of the two: `U1` named by the flow stays `slack:U1` if the Context says so.
                kept.append(entry if prefix is not None else allowed)
                break
    return tuple(kept)


def distinct_approvers(entries: Sequence[str]) -> int:
    """How many different people `entries` can name at most, counted by user id.

    Entries with the same id are one person, except that explicit different platforms
    (`slack:U1`, `telegram:U1`) are different people, and an operator's token (`admin:U1`) is
    always someone of its own (as the runtime counts them: a bare `U1` never matches it); an entry
    with an empty id names nobody.
    """
    platforms: dict[str, set[str | None]] = {}
    operators = set()
    for entry in entries:
        prefix, user_id = split(entry)
        if user_id and prefix == ADMIN:
            operators.add(user_id)
        elif user_id:
            platforms.setdefault(user_id, set()).add(prefix)
    return len(operators) + sum(max(1, len(found - {None})) for found in platforms.values())


def _people(count: int) -> str:
    return f"{count} approver" if count == 1 else f"{count} approvers"


def context_problems(approval: context_kind.Approval | None) -> list[Problem]:
    """Warnings about a Context's `spec.approval` settings that cannot all hold.

    - `required: true` with no `allowed_users`: nobody can approve (aofd fails closed);
    - `require_for` without `required: true`: no command needs approval (upstream's rule);
    - `min_approvers` above the distinct approvers (when the plain count allows it: more than
      the entries is an error of the resource's own checks);
    - `min_approvers` equal to the distinct approvers without `allow_self_approval`: a request
      made by one of them can never gather enough approvals.
    """
    if approval is None:
        return []
    found: list[Problem] = []
    users = approval.allowed_users
    if approval.required and not users:
        found.append(
            Problem(
                (*APPROVAL_LOC, "required"),
                "approval.required is true but approval.allowed_users is empty: nobody can approve, so "
                "every command that needs approval is refused; list the approvers' user ids in "
                "approval.allowed_users",
                "warning",
                "approval-unreachable",
            )
        )
    if approval.require_for and not approval.required:
        found.append(
            Problem(
                (*APPROVAL_LOC, "require_for"),
                "approval.require_for is set but approval.required is false, so no command waits for "
                "approval; set approval.required: true to ask for approval for these commands",
                "warning",
                "approval-unused",
            )
        )
    if not users or approval.min_approvers > len(users):
        return found
    distinct = distinct_approvers(users)
    # At min_approvers when it is written, else at the approvers (min_approvers defaults to 1).
    count_loc = "min_approvers" if "min_approvers" in approval.model_fields_set else "allowed_users"
    if approval.min_approvers > distinct:
        found.append(
            Problem(
                (*APPROVAL_LOC, count_loc),
                f"approval.min_approvers is {approval.min_approvers} but approval.allowed_users names "
                f"only {_people(distinct)} (counted by user id: slack:U1 and U1 are one person), so no "
                "approval can ever be granted; "
                + ("lower min_approvers or add approvers" if approval.min_approvers > 1 else "add approvers"),
                "warning",
                "approval-unreachable",
            )
        )
    elif approval.min_approvers == distinct and not approval.allow_self_approval:
        found.append(
            Problem(
                (*APPROVAL_LOC, count_loc),
                f"approval.min_approvers is {approval.min_approvers} and approval.allowed_users names "
                f"{_people(distinct)}, and allow_self_approval is false: requests made by one of the "
                "approvers cannot be granted; add an approver, "
                + ("lower min_approvers or set " if approval.min_approvers > 1 else "or set ")
                + "allow_self_approval: true",
                "warning",
                "approval-self",
            )
        )
    return found


def node_problems(
    node_id: str,
    requested: Sequence[str],
    approval: context_kind.Approval | None,
    *,
    context: str,
    where: str,
) -> list[str]:
    """Why an Approval node can never be granted under its Context (messages), or nothing.

    `requested` is the node's `config.approvers` (empty: the Context's `allowed_users`);
    `approval` the Context's `spec.approval`; `context` its name and `where` its file:line
    (both for the messages).
    """
    rules = approval or context_kind.Approval()
    users = rules.allowed_users
    ctx = f"Context {context} ({where})"
    if not requested:
        if users:
            return []  # the Context's own approvers: `context_problems` speaks about those
        return [
            f"Approval node {node_id!r} names no approvers and {ctx} has no approval.allowed_users: "
            "nobody can approve it, so the run always stops there; list approvers in the Context's "
            "approval.allowed_users"
        ]
    narrowed = narrow_approvers(requested, users)
    if not narrowed:
        return [
            f"Approval node {node_id!r}: none of its approvers ({', '.join(requested)}) is an approver "
            f"of {ctx}, so the node always fails; a flow may only narrow its Context's "
            "approval.allowed_users: name some of them"
        ]
    distinct = distinct_approvers(narrowed)
    if rules.min_approvers > distinct:
        return [
            f"Approval node {node_id!r}: its approvers that {ctx} allows ({', '.join(narrowed)}) are "
            f"{_people(distinct)}, fewer than the Context's approval.min_approvers "
            f"({rules.min_approvers}), so it can never be granted; name more of the Context's approvers"
        ]
    if rules.min_approvers == distinct and not rules.allow_self_approval:
        return [
            f"Approval node {node_id!r}: its approvers that {ctx} allows ({', '.join(narrowed)}) are "
            f"exactly the Context's approval.min_approvers ({rules.min_approvers}) and "
            "allow_self_approval is false: requests made by one of the approvers cannot be granted; "
            "name more of the Context's approvers"
        ]
    return []
