"""The runtime's HTTP client: the one adapter over aiohttp's client, with its errors translated.

This module owns outbound HTTP for HTTP nodes, the Telegram and WhatsApp repliers and Telegram
long polling: one `HttpClient` per owner (a connection pool, opened lazily and closed by
`aclose`), requests with a total timeout, redirects never followed, response bodies read up to
a cap (`read_capped`: `read(n)` returns what has arrived so far, so it reads on until EOF or
the cap), and every transport failure raised as `HttpError` (an `aofd.errors.Temporary`),
never as an aiohttp exception.

It does not decide what may be reached: callers check URLs first (`aofd.specs.http_policy`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp

from aofd import errors


class HttpError(errors.Temporary):
    """A request failed before an answer arrived (connection, TLS, timeout); `str()` says why.

    The message never holds the URL (Telegram's carries the bot token): callers that may show
    their URL add it themselves.
    """


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """A whole (capped) answer: status, content type and body bytes."""

    status: int
    content_type: str
    body: bytes
    truncated: bool = False

    def json(self) -> Any:
        """The body parsed as JSON. Raises ValueError when it is not JSON."""
        return json.loads(self.body)


class HttpClient:
    """A pool of connections for one owner; `timeout` bounds each request as a whole."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: str | bytes | None = None,
        params: Mapping[str, str] | None = None,
        max_body: int = 1024 * 1024,
    ) -> Response:
        """One request; the body is read up to `max_body` bytes. Raises `HttpError`."""
        kwargs: dict[str, Any] = {"headers": dict(headers or {}), "allow_redirects": False}
        if json_body is not None:
            kwargs["json"] = json_body
        elif data is not None:
            kwargs["data"] = data
        if params is not None:
            kwargs["params"] = dict(params)
        try:
            async with self._open().request(method, url, **kwargs) as answer:
                body, truncated = await _read_capped(answer.content, max_body)
                return Response(answer.status, answer.headers.get("Content-Type", ""), body, truncated)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # `from None`: the cause's message and traceback may hold the URL, and it must not reach a log.
            raise HttpError(_describe(exc, url)) from None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _describe(exc: BaseException, url: str) -> str:
    """What went wrong, without the URL or its path (some carry a token: Telegram's `/bot<token>/`)."""
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{type(exc).__name__}: the URL is not valid"
    said = str(exc) or type(exc).__name__
    text = said
    try:
        path = urllib.parse.urlsplit(url).path if "://" in url else url
    except ValueError:
        path = url
    for part in (url, path, urllib.parse.quote(path)):
        if len(part) > 1:
            text = text.replace(part, "<url>")
    text = _ANY_URL.sub("<url>", text)  # aiohttp may print the URL in its own spelling
    return text if text == said else f"{type(exc).__name__}: {text}"


_ANY_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\")]+")


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    raw = bytearray()
    while len(raw) < limit:
        chunk = await stream.read(limit - len(raw))
        if not chunk:
            return bytes(raw), False
        raw += chunk
    return bytes(raw), not stream.at_eof()
