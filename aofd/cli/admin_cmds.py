"""`aofctl get`, `describe`, `diff` and `reconcile`: commands that talk to a running aofd.

kubectl-style kinds (`ctx`, `ag`, `fl`, `fw`, `tr`, `fb`, plurals and full names) are
accepted. `diff PATH` sends the candidate tree to the daemon, which plans it against what
runs with the same pure planner it uses itself (other sources are the daemon's; no variable
is substituted and no secret-bearing value is compared), and prints the plan.

Each command sends the admin token from `--token-file`, `$AOFD_ADMIN_TOKEN` or
`/etc/aofd/credentials/admin-token` (`aofd.cli.client.resolve_token`).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

from aofd import errors
from aofd.cli import client as client_mod
from aofd.cli import output
from aofd.resources import ids
from aofd.source import directory


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", help="admin address HOST:PORT or unix:PATH (default: discovered)")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the admin API token (default: $AOFD_ADMIN_TOKEN, "
        "else /etc/aofd/credentials/admin-token when readable)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("get", help="list resources the daemon runs, with their status")
    p.add_argument("kind", help="context|agent|fleet|flow|trigger|binding (or ctx, ag, fl, fw, tr, fb)")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=("wide", "json", "yaml", "name"), default=None)
    add_admin_flags(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("describe", help="show one resource: status, revision, what it resolves to, runs")
    p.add_argument("kind")
    p.add_argument("name")
    add_admin_flags(p)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("diff", help="the plan PATH would cause against the running daemon")
    p.add_argument("path", type=Path)
    p.add_argument("--source", help="the daemon source PATH stands for (default: the only or first one)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_admin_flags(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("reconcile", help="fetch now and run a reconcile pass")
    p.add_argument("--source", help="wake only this source")
    add_admin_flags(p)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("status", help="the daemon's status: revisions, sources, last pass, errors")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_admin_flags(p)
    p.set_defaults(func=cmd_status)


def admin_client(args: argparse.Namespace) -> client_mod.AdminClient:
    endpoint = client_mod.resolve_endpoint(args.admin)
    available = client_mod.resolve_token(args.token_file)
    token = client_mod.token_for(endpoint, available)
    return client_mod.AdminClient(
        endpoint.address, token=token, held_back=available is not None and token is None
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _kind(text: str) -> ids.Kind | None:
    kind = ids.parse_kind_name(text)
    if kind is None:
        print(f"error: unknown kind {text!r}", file=sys.stderr)
    return kind


def cmd_get(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    if kind is None:
        return 2
    path = f"/api/v1/resources/{kind.value}" + (f"/{args.name}" if args.name else "")
    try:
        data = admin_client(args).get(path)
        status = admin_client(args).get("/api/v1/status")
    except client_mod.AdminError as exc:
        return _fail(str(exc))
    items: list[dict[str, Any]] = data.get("items", [])
    if args.output == "json":
        print(json.dumps(items if not args.name else items[0], indent=2))
        return 0
    if args.output == "yaml":
        print(output.to_yaml(items if not args.name else items[0]))
        return 0
    if args.output == "name":
        for item in items:
            print(f"{kind.value.lower()}/{item['name']}")
        return 0
    headers = ["NAME", "STATUS", "REASON", "REVISION", "AGE"]
    wide = args.output == "wide"
    if kind is ids.Kind.BINDING:
        headers[1:1] = ["FLOW", "CONTEXT", "TRIGGER"]
    elif kind is ids.Kind.TRIGGER:
        headers[1:1] = ["READY"]  # its bindings that are Ready, of all that name it
    if wide:
        headers += ["SOURCE", "FILE"]
    rows = []
    for item in items:
        st = item.get("status") or {}
        row = [
            item["name"],
            st.get("phase", "-"),
            st.get("reason", "-"),
            _short(st.get("observedRevision", "")),
            output.age(st.get("since")),
        ]
        if kind is ids.Kind.BINDING:
            res = item.get("resolves") or {}
            row[1:1] = [res.get("flow") or "-", res.get("context") or "-", res.get("trigger") or "-"]
        elif kind is ids.Kind.TRIGGER:
            counts = item.get("bindings") or {}
            row[1:1] = [f"{counts.get('ready', 0)}/{counts.get('total', 0)}" if counts else "-"]
        if wide:
            row += [item.get("source", "-"), f"{item.get('path', '-')}:{item.get('line', 0)}"]
        rows.append(row)
    if rows:
        print(output.table(headers, rows))
    else:
        print(f"No {kind.value} resources.")
    _print_rejection(status)
    return 0


def _short(revision: str) -> str:
    return revision if len(revision) <= 40 else revision[:37] + "..."


def _print_rejection(status: dict[str, Any], *, stream: TextIO = sys.stderr, limit: int | None = 20) -> None:
    """The rejected revision and its errors at file:line:col (on stderr beside other output, the
    first `limit`; `aofctl status` prints every one as part of the status)."""
    rejected = status.get("lastRejected")
    if not rejected:
        return
    print(
        f"\nWARNING: revision {rejected.get('revision')} was rejected; still running "
        f"{status.get('appliedRevision') or 'nothing'}:",
        file=stream,
    )
    errors = rejected.get("errors", [])
    for line in errors[:limit]:
        print(f"  {line}", file=stream)
    if limit is not None and len(errors) > limit:
        print(f"  ... and {len(errors) - limit} more (aofctl status shows every one)", file=stream)


def cmd_describe(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    if kind is None:
        return 2
    try:
        data = admin_client(args).get(f"/api/v1/resources/{kind.value}/{args.name}")
    except client_mod.AdminError as exc:
        return _fail(str(exc))
    item = data["items"][0]
    st = item.get("status") or {}
    print(f"Name:       {item['name']}")
    print(f"Kind:       {item['kind']}")
    print(f"Namespace:  {item.get('namespace', 'default')}")
    print(f"Source:     {item.get('source', '-')}  {item.get('path', '-')}:{item.get('line', 0)}")
    print(f"Digest:     {item.get('digest', '-')}")
    print("Status:")
    print(f"  Phase:     {st.get('phase', '-')}")
    print(f"  Reason:    {st.get('reason', '-')}")
    print(f"  Message:   {st.get('message', '-')}")
    print(f"  Revision:  {st.get('observedRevision', '-')}")
    print(f"  Since:     {output.moment(st.get('since'))}")
    if item.get("resolves"):
        print("Resolves to:")
        print(output.to_yaml(item["resolves"], 1))
    if item.get("usedBy"):
        print("Used by:")
        for name in item["usedBy"]:
            print(f"  - {name}")
    print("Spec:")
    print(output.to_yaml(item.get("spec", {}), 1))
    runs = item.get("runs") or []
    if runs:
        print("Recent runs:")
        print(textwrap.indent(output.runs_table(runs[:10]), "  "))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        print(f"error: {path}: no such file or directory", file=sys.stderr)
        return 2
    try:
        if path.is_dir():
            snap = directory.read_tree(path)
            files = {p: f.content for p, f in snap.files.items()}
        else:
            files = {path.name: path.read_bytes()}
    except (errors.AofdError, OSError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    body = {"source": args.source, "files": {p: base64.b64encode(c).decode() for p, c in files.items()}}
    try:
        status_code, data = admin_client(args).request("POST", "/api/v1/diff", body)
    except client_mod.AdminError as exc:
        return _fail(str(exc))
    if status_code >= 400:
        return _fail(str(data.get("error") if isinstance(data, dict) else data))
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        for line in data.get("errors", []):
            print(line)
        print(data.get("text", "").rstrip())
    return 1 if data.get("errors") else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    query = f"?source={urllib.parse.quote(args.source, safe='')}" if args.source else ""
    try:
        status_code, data = admin_client(args).request("POST", f"/api/v1/reconcile{query}")
    except client_mod.AdminError as exc:
        return _fail(str(exc))
    if status_code >= 400:
        return _fail(str(data.get("error") if isinstance(data, dict) else data))
    print(f"reconcile requested ({', '.join(data.get('sources', [])) or 'all sources'})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        data = admin_client(args).get("/api/v1/status")
    except client_mod.AdminError as exc:
        return _fail(str(exc))
    if args.output == "json":
        print(json.dumps(data, indent=2))
        return 0
    print(f"Ready:             {data.get('ready')}  {data.get('readyReason', '')}")
    print(f"Applied revision:  {data.get('appliedRevision') or '-'}")
    print(f"PID:               {data.get('pid')}")
    sealing = data.get("auditSealing") or {}
    if sealing.get("enabled"):
        print(
            f"Audit sealing:     on (chain {sealing.get('chain')}, epoch {sealing.get('epoch')}, "
            f"{sealing.get('interval')}s epochs)"
        )
    elif "auditSealing" in data:
        print("Audit sealing:     off (no sealing state: see aofctl audit setup-keys)")
    for src in data.get("sources", []):
        line = f"Source {src['name']}: applied {src.get('lastApplied') or '-'}"
        line += f", attempted {src.get('lastAttempted') or '-'}"
        if src.get("lastError"):
            line += f", error: {src['lastError']}"
        print(line)
        signature = src.get("signature")
        if signature and signature.get("verified"):
            # Restored from the state dir at start: no fetch has verified it in this process yet.
            print(f"  signature: {signature['verified']} (commit {signature.get('commit', '')[:12]})")
        elif signature:
            tag = f", tag {signature['tag']}" if signature.get("tag") else ""
            commit = signature.get("commit", "")[:12]
            print(
                f"  signed by {signature.get('signer')} (key {signature.get('fingerprint')}, "
                f"{signature.get('format')} {signature.get('signed')} {commit}{tag})"
            )
        refused = src.get("rejectedCommit")
        if refused:
            key = f" (key {refused['fingerprint']})" if refused.get("fingerprint") else ""
            print(f"  rejected commit {refused.get('commit')}: {refused.get('reason')}{key}")
    last = data.get("lastPass") or {}
    if last:
        print(
            f"Last pass:         {last.get('outcome')} {last.get('revision')} in {last.get('duration_ms')} ms"
        )
    _print_cluster(data.get("cluster"))
    _print_rejection(data, stream=sys.stdout, limit=None)
    return 0


def _print_cluster(cluster: dict[str, Any] | None) -> None:
    """The replica set as this member sees it: etcd, the leader, each member and the revision it
    serves (a member serving another revision than this one is flagged)."""
    if not cluster:
        return
    etcd = cluster.get("etcd") or {}
    state = "up" if etcd.get("up") else f"DOWN ({etcd.get('lastError') or 'no session'})"
    print(
        f"Cluster:           {cluster.get('name')} as {cluster.get('member')}; etcd {state}, "
        f"revision {etcd.get('revision', 0)}"
    )
    leader = cluster.get("leader") or "none"
    mine = " (this member)" if cluster.get("isLeader") else ""
    print(f"Leader:            {leader}{mine}; lease valid for {cluster.get('leaseValidFor', 0)}s")
    members = cluster.get("members") or []
    own = next((m.get("revision") for m in members if m.get("member") == cluster.get("member")), "")
    for m in members:
        revision = m.get("revision") or "-"
        tags = []
        if m.get("member") == cluster.get("leader"):
            tags.append("leader")
        if own and m.get("revision") and m.get("revision") != own:
            tags.append("serves another revision")
        tag = f"  [{', '.join(tags)}]" if tags else ""
        print(f"  member {m.get('member')}: revision {revision}, admin {m.get('admin') or '-'}{tag}")
