"""`aofctl approvals`, `aofctl approve ID` and `aofctl deny ID`: pending approval requests, decided
through the admin API.

`approvals` lists the pending requests (a short id, the Context, the argv as the audit log shows
it, the requester, age and time left); `-o json|yaml` prints the admin API's items whole.
`approve`/`deny` take a full request id or a unique prefix of at least 8 hex digits of a
pending one. The daemon decides as the operator whose named admin token (`admin_api.tokens`)
was sent, `admin:<name>`, under the Context's rules (`approval.allowed_users`, no
self-approval, `min_approvers`).

Exit codes of `approve`/`deny`: 0 the decision counted (granted, denied, or an approval that
still needs more approvers), 1 refused (not an approver, the requester, not a named token) or
the daemon could not be asked, 2 an ambiguous prefix, 3 the request is no longer pending
(decided, expired, or already voted on by this operator), 4 no such request.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from aofd.cli import admin_cmds, output
from aofd.cli import client as client_mod

SHORT_ID = 12
ARGV_WIDTH = 60
EXIT_REFUSED, EXIT_AMBIGUOUS, EXIT_NOT_PENDING, EXIT_UNKNOWN = 1, 2, 3, 4
_EXIT_BY_STATUS = {400: EXIT_AMBIGUOUS, 403: EXIT_REFUSED, 404: EXIT_UNKNOWN, 409: EXIT_NOT_PENDING}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("approvals", help="list the commands waiting for approval")
    p.add_argument("-o", "--output", choices=("wide", "json", "yaml"), default=None)
    admin_cmds.add_admin_flags(p)
    p.set_defaults(func=cmd_approvals)

    for verb, help_text in (
        ("approve", "approve a pending command (needs your named admin token)"),
        ("deny", "deny a pending command (needs your named admin token)"),
    ):
        p = sub.add_parser(verb, help=help_text)
        p.add_argument("id", help="the request id, or a unique prefix of at least 8 hex digits")
        p.add_argument("-o", "--output", choices=("text", "json"), default="text")
        admin_cmds.add_admin_flags(p)
        p.set_defaults(func=cmd_decide, approve=verb == "approve")


def span(seconds: float) -> str:
    """`45s`, `3m45s`, `2h5m`, `3d4h`: a duration for a table."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _requester(item: dict[str, Any]) -> str:
    who = item.get("requester") or {}
    return f"{who.get('platform')}:{who.get('id')}" if who.get("platform") else str(who.get("id", "-"))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_approvals(args: argparse.Namespace) -> int:
    try:
        data = admin_cmds.admin_client(args).get("/api/v1/approvals")
    except client_mod.AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    items: list[dict[str, Any]] = data.get("items", []) if isinstance(data, dict) else []
    if args.output == "json":
        print(json.dumps(items, indent=2))
        return 0
    if args.output == "yaml":
        print(output.to_yaml(items))
        return 0
    if not items:
        print("No pending approvals.")
        return 0
    wide = args.output == "wide"
    headers = ["ID", "CONTEXT", "ARGV", "REQUESTER", "AGE", "EXPIRES IN"]
    if wide:
        headers += ["APPROVALS", "AGENT", "RUN"]
    rows = []
    for item in items:
        row = [
            str(item["id"]) if wide else str(item["id"])[:SHORT_ID],
            str(item.get("context", "-")),
            str(item.get("command", "")) if wide else _clip(str(item.get("command", "")), ARGV_WIDTH),
            _requester(item),
            span(float(item.get("ageSeconds", 0))),
            span(float(item.get("expiresInSeconds", 0))),
        ]
        if wide:
            row += [
                f"{item.get('approvals', 0)}/{item.get('minApprovers', 1)}",
                str(item.get("agent") or "-"),
                str(item.get("runId") or "-"),
            ]
        rows.append(row)
    print(output.table(headers, rows))
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    verb = "approve" if args.approve else "deny"
    ref = urllib.parse.quote(args.id.strip(), safe="")
    try:
        status, data = admin_cmds.admin_client(args).request("POST", f"/api/v1/approvals/{ref}/{verb}")
    except client_mod.AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    body: dict[str, Any] = data if isinstance(data, dict) else {"error": str(data).strip()}
    if args.output == "json":
        print(json.dumps(body, indent=2))
    if status < 300:
        if args.output != "json":
            print(f"{body.get('id', args.id)}: {body.get('message', body.get('decision', 'done'))}")
        return 0
    if args.output != "json":
        message = body.get("message") or body.get("error") or f"HTTP {status}"
        print(f"error: {args.id}: {message} (HTTP {status})", file=sys.stderr)
        for candidate in body.get("candidates", []):
            print(f"  {candidate}", file=sys.stderr)
    return _EXIT_BY_STATUS.get(status, 1)
