"""The runtime's HTTP client: errors say what went wrong without the URL (Telegram's holds the bot
token), and carry no cause whose traceback would print it."""

from __future__ import annotations

import socket

import pytest

from aofd.runtime import httpclient

TOKEN = "123456:SECRET-token"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "url",
    [
        f"api.telegram.org/bot{TOKEN}/sendMessage",  # no scheme
        f"ftp://example.invalid/bot{TOKEN}/sendMessage",  # not http
        f"http://[::1/bot{TOKEN}/getUpdates",  # does not parse
        f"http://127.0.0.1:{closed_port()}/bot{TOKEN}/getUpdates",  # nothing listens
    ],
)
async def test_errors_never_hold_the_url(url: str) -> None:
    client = httpclient.HttpClient(timeout=5)
    try:
        with pytest.raises(httpclient.HttpError) as caught:
            await client.request("GET", url)
    finally:
        await client.aclose()
    assert "SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
