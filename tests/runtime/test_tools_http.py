"""The `http` tool: the model's request becomes a fixed curl argv, under the same URL policy as HTTP nodes."""

from __future__ import annotations

import pytest

from aofd import errors
from aofd.runtime import tools


def http_tool() -> tools.Tool:
    tool = tools.builtin("http")
    assert tool is not None
    return tool


def test_a_public_url_becomes_a_curl_argv_without_globbing() -> None:
    """A plain GET turns into curl with globbing off and the URL after `--`."""
    argv = tools.argv_for(http_tool(), {"url": "https://status.example.com/api?x=[1-9]"})

    assert "curl" == argv[0]
    assert "--globoff" in argv
    assert ("--", "https://status.example.com/api?x=[1-9]") == argv[-2:]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://127.0.0.1:8081/api/v1/status",
        "http://localhost/",
        "http://0.0.0.0:8080/",
        "https://user:pass@example.com/",
        "file:///etc/shadow",
    ],
)
def test_urls_an_http_node_may_not_reach_are_refused(url: str) -> None:
    """Metadata, loopback, credentials in the URL and other schemes are refused before curl runs."""
    with pytest.raises(errors.PolicyDenied):
        tools.argv_for(http_tool(), {"url": url})


def test_a_header_name_that_would_read_a_file_is_refused() -> None:
    """`@/etc/shadow` as a header name would make curl read a host file; it is refused."""
    with pytest.raises(errors.PolicyDenied, match="not a header name"):
        tools.argv_for(http_tool(), {"url": "https://example.com/", "headers": {"@/etc/shadow": "x"}})
