"""`aofctl memory show` and `aofctl memory clear`: one conversation an agent remembers, through the
admin API (`GET`/`DELETE /api/v1/memory?context=C&binding=B&thread=T`).

A conversation is named by its Context, its binding and its thread, as the listener gave it: a
Slack `<channel>/<thread ts>`, a Telegram `<chat>/<first message id>`, a WhatsApp sender's
number, an HTTP request's `thread`. `show` prints its turns (what was asked, what was answered,
which tools were used; tool output is never kept); `clear` forgets it in every store, as the
operator whose named admin token was sent (audited `memory.cleared` in the Context's log).

Exit codes: 0 done, 1 refused or the daemon could not be asked, 4 no such conversation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import urllib.parse
from typing import Any

from aofd.cli import admin_cmds
from aofd.cli import client as client_mod

EXIT_UNKNOWN = 4


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("memory", help="show or clear a conversation an agent remembers")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for verb, help_text in (
        ("show", "print a conversation's stored turns"),
        ("clear", "forget a conversation (needs your named admin token)"),
    ):
        v = verbs.add_parser(verb, help=help_text)
        v.add_argument("--context", required=True, help="the Context the conversation is under")
        v.add_argument("--binding", required=True, help="the binding (FlowBinding) that answered it")
        v.add_argument(
            "--thread", required=True, help="the conversation: <channel>/<thread ts> (Slack), <chat>/<id> ..."
        )
        v.add_argument("-o", "--output", choices=("text", "json"), default="text")
        admin_cmds.add_admin_flags(v)
        v.set_defaults(func=cmd_memory, clear=verb == "clear")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "?"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_turns(stores: list[dict[str, Any]]) -> None:
    for found in stores:
        turns = found.get("turns") or []
        print(f"# store {found.get('store', '?')}: {len(turns)} turn(s)")
        for turn in turns:
            print(f"[{_when(turn.get('at'))}] user: {turn.get('user_text', '')}")
            tools = turn.get("tools") or []
            if tools:
                used = ", ".join(f"{t.get('name')} {'ok' if t.get('ok') else 'failed'}" for t in tools)
                print(f"  tools used: {used}")
            print(f"  answer: {turn.get('answer_text', '')}")


def cmd_memory(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"context": args.context, "binding": args.binding, "thread": args.thread})
    method = "DELETE" if args.clear else "GET"
    try:
        status, data = admin_cmds.admin_client(args).request(method, f"/api/v1/memory?{query}")
    except client_mod.AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    body: dict[str, Any] = data if isinstance(data, dict) else {"error": str(data).strip()}
    if args.output == "json":
        print(json.dumps(body, indent=2))
    elif status < 300 and args.clear:
        print(f"cleared {args.thread} ({body.get('removed', 0)} stored copies)")
    elif status < 300:
        _print_turns(body.get("stores") or [])
    else:
        print(f"error: {body.get('error') or f'HTTP {status}'} (HTTP {status})", file=sys.stderr)
    if status < 300:
        return 0
    return EXIT_UNKNOWN if status == 404 else 1
