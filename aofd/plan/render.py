"""Text and JSON renderings of plans and issues; pure string building.

This module owns how a `Plan` reads to a human, in the style of `terraform plan` and
`kubectl diff`:

    Plan for main@3f2a9c1+secrets@9b71e02 (running: main@1b2c3d4+secrets@9b71e02)
      + create  Context/prod-eu-west          contexts/prod-eu-west.yaml
      ~ update  Agent/k8s-ops                 agents/k8s-ops.yaml  (spec changed)
      ~ update  FlowBinding/slack-prod-bot    bindings/prod/slack.yaml  (uses Agent/k8s-ops (changed))
      - delete  FlowBinding/old-bot                                      (no longer in the desired state)
    Plan: 1 to create, 2 to update, 1 to delete, 12 unchanged.

It lives in `plan` (not `cli`) so that the daemon's admin API and `aofctl` print the same
thing. No I/O: callers print the strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from aofd import errors
from aofd.plan import actions, diff


def plan_text(plan: diff.Plan, *, show_unchanged: bool = False) -> str:
    """The plan as aligned lines with +/~/- marks and a closing summary line."""
    head = f"Plan for {plan.revision or '(no revision)'}"
    if plan.previous:
        head += f" (running: {plan.previous})"
    lines = [head]
    shown = list(plan.changes)
    if show_unchanged:
        shown += list(plan.of_op("unchanged"))
    if not shown:
        lines.append("  No changes. The running state matches the desired state.")
    width = max((len(str(a.key)) for a in shown), default=0)
    path_width = max((len(a.path) for a in shown), default=0)
    for action in shown:
        mark = actions.SYMBOLS[action.op]
        line = f"  {mark} {action.op:<9} {action.key!s:<{width}}  {action.path:<{path_width}}"
        if action.reason and action.op != "create":
            line += f"  ({action.reason})"
        lines.append(line.rstrip())
    lines.append(summary(plan))
    return "\n".join(lines) + "\n"


def summary(plan: diff.Plan) -> str:
    """`Plan: 1 to create, 2 to update, 0 to delete, 12 unchanged.`"""
    c = plan.counts()
    return (
        f"Plan: {c['create']} to create, {c['update']} to update, "
        f"{c['delete']} to delete, {c['unchanged']} unchanged."
    )


def plan_json(plan: diff.Plan, *, include_unchanged: bool = False) -> str:
    """The plan as indented JSON (`Plan.as_dict`)."""
    return json.dumps(plan.as_dict(include_unchanged=include_unchanged), indent=2, sort_keys=False) + "\n"


def issues_text(issues: Iterable[errors.Issue]) -> str:
    """One `FILE:LINE:COL: severity: MESSAGE` line per issue (the compiler convention)."""
    return "".join(issue.format() + "\n" for issue in issues)


def count_line(*, resources: int, files: int, issues: Sequence[errors.Issue]) -> str:
    """`12 resources in 10 files: 0 errors, 2 warnings`."""
    n_errors = sum(1 for i in issues if i.is_error)
    n_warnings = len(issues) - n_errors
    return (
        f"{resources} {_plural(resources, 'resource')} in {files} {_plural(files, 'file')}: "
        f"{n_errors} {_plural(n_errors, 'error')}, {n_warnings} {_plural(n_warnings, 'warning')}"
    )


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"
