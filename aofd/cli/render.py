"""aofctl's rendering of validation results (text and JSON); pure string building.

Plans and issue lines are rendered by `aofd.plan.render` (shared with the daemon's admin
API); this module adds what only the offline commands print: the `aofctl validate` report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aofd import errors
from aofd.plan import render as plan_render


def validate_text(*, issues: Sequence[errors.Issue], resources: int, files: int) -> str:
    """Issue lines (`FILE:LINE:COL: error: MESSAGE`), then `N resources in M files: X errors, Y warnings`."""
    return (
        plan_render.issues_text(issues)
        + plan_render.count_line(resources=resources, files=files, issues=issues)
        + "\n"
    )


def validate_json(*, issues: Sequence[errors.Issue], resources: int, files: int, revision: str) -> str:
    """The machine-readable report: validity, counts and every issue."""
    n_errors = sum(1 for i in issues if i.is_error)
    report = {
        "valid": n_errors == 0,
        "revision": revision,
        "resources": resources,
        "files": files,
        "errors": n_errors,
        "warnings": len(issues) - n_errors,
        "issues": [i.as_dict() for i in issues],
    }
    return json.dumps(report, indent=2) + "\n"
