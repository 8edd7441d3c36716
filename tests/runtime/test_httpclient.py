"""The runtime's HTTP client: errors say what went wrong without the URL (Telegram's holds the bot
token), and carry no cause whose traceback would print it."""

from __future__ import annotations

import asyncio
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
        f"http://127.0.0.1:CLOSED/bot{TOKEN}/getUpdates",  # nothing listens (a port chosen per run)
    ],
)
async def test_errors_never_hold_the_url(url: str) -> None:
    url = url.replace("CLOSED", str(closed_port()))  # not in the test's id: ids must not vary
    client = httpclient.HttpClient(timeout=5)
    try:
        with pytest.raises(httpclient.HttpError) as caught:
            await client.request("GET", url)
    finally:
        await client.aclose()
    assert "SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


async def test_an_error_on_a_malformed_answer_holds_neither_the_query_nor_the_path() -> None:
    """aiohttp prints the URL in its own spelling in some errors; none of it may remain."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = httpclient.HttpClient(timeout=5)
    try:
        with pytest.raises(httpclient.HttpError) as caught:
            await client.request("GET", f"http://127.0.0.1:{port}/bot{TOKEN}/x?token=s3cr3t value")
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert "SECRET" not in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_an_http_node_names_where_it_went_without_query_or_credentials() -> None:
    from aofd.runtime import nodes

    assert "https://api.example.com/v1/x" == nodes._where("https://u:pw@api.example.com/v1/x?token=s3cr3t")
    assert "<url>" == nodes._where("http://[::1/x")
