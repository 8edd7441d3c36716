"""`POST /hooks/git/<source>`: a signed push notification wakes one source (fetch now).

The hook is mounted on the trigger server (`TriggerServer.add_hook`). A request is answered
404 for an unknown source, 413 past `MAX_GIT_HOOK_BYTES` (checked on `Content-Length` before
`Expect: 100-continue` is answered, and while reading), 403 when the source has no
`webhook_secret_file`, 401 when the signature does not verify (`aofd.source.hooks`), and 202
when the source was woken. The secret file is read on every request, so it can be rotated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from aofd import settings
from aofd.runtime import ports, verify
from aofd.source import hooks

log = structlog.get_logger("aofd.daemon")

MAX_GIT_HOOK_BYTES = 1024 * 1024
_SHORT = {413: "too large\n", 417: "expectation failed\n"}


class GitHook:
    """The handler: `await hook(request, source_name)`."""

    def __init__(self, *, sources: Mapping[str, settings.SourceSpec], wake: Callable[[str], bool]) -> None:
        self._sources = sources
        self._wake = wake

    async def __call__(self, request: ports.HttpRequest, name: str) -> ports.HttpResponse:
        spec = self._sources.get(name)
        if spec is None:
            return ports.HttpResponse.text(404, "not found\n")
        try:
            body = await request.body(MAX_GIT_HOOK_BYTES)
        except verify.Rejected as exc:
            return ports.HttpResponse.text(exc.status, _SHORT.get(exc.status, "bad request\n"))
        secret = read_secret(spec.webhook_secret_file)
        if not secret:
            log.warning("git push hook refused: the source has no webhook_secret_file", source=name)
            return ports.HttpResponse.text(403, "forbidden\n")
        verdict = hooks.verify(
            secret=secret.strip(), headers=dict(request.headers), body=body, now=time.time()
        )
        if verdict is not hooks.Verdict.OK:
            log.info("git push hook rejected", source=name, reason=verdict.value)
            return ports.HttpResponse.text(401, "unauthorized\n")
        if not self._wake(name):
            return ports.HttpResponse.text(404, "not found\n")
        return ports.HttpResponse.text(202, "accepted\n")


def read_secret(path: Path | None) -> bytes | None:
    """A secret file's bytes, or None (logged) when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot read a secret file", path=str(path), error=exc.strerror)
        return None
