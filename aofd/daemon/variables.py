"""Where `${VAR}` values come from: the daemon's environment and systemd credentials.

Only names the substitution allow-list permits are ever read (DESIGN.md section 2); the
planner receives this already-filtered mapping and never looks at `os.environ` itself.
A systemd credential `slack-bot-token` (from `LoadCredential=`, in `$CREDENTIALS_DIRECTORY`)
is offered as `SLACK_BOT_TOKEN`; a credential wins over an environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from aofd.plan import substitute

_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
MAX_CREDENTIAL_BYTES = 64 * 1024


def allowed(name: str, allow: Sequence[str]) -> bool:
    return bool(_NAME.match(name)) and substitute.allowed(name, allow)


def credential_name(filename: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", filename.upper())


def collect(
    allow: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    credentials_dir: Path | None = None,
) -> dict[str, str]:
    """The variables substitution may use: allowed env vars, then allowed credentials on top."""
    env = os.environ if environ is None else environ
    out = {k: v for k, v in env.items() if allowed(k, allow)}
    cred_dir = credentials_dir
    if cred_dir is None and env.get("CREDENTIALS_DIRECTORY"):
        cred_dir = Path(env["CREDENTIALS_DIRECTORY"])
    if cred_dir is not None and cred_dir.is_dir():
        for entry in sorted(cred_dir.iterdir()):
            name = credential_name(entry.name)
            if not allowed(name, allow) or not entry.is_file():
                continue
            try:
                with entry.open("rb") as fh:
                    raw = fh.read(MAX_CREDENTIAL_BYTES + 1)
            except OSError:
                continue
            if len(raw) <= MAX_CREDENTIAL_BYTES:
                out[name] = raw.decode("utf-8", "replace").rstrip("\r\n")
    return out
