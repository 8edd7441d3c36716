"""The `http` tool: the model's request becomes a fixed curl argv, under the same URL policy as HTTP nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors
from aofd.runtime import ports, tools
from aofd.specs import policy
from tests.runtime.test_guard_flow import REQUESTER, Harness


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


async def test_query_ampersands_and_header_parameters_reach_curl(tmp_path: Path) -> None:
    """`&` in a query and `; charset=` in a header are data, not shell operators: the request runs.

    Before, the guard refused both as shell operators (a false positive users hit at once).
    """
    h = Harness(tmp_path)
    h.add("ops", allowed=policy.patterns(["curl"], tools=frozenset({"curl"}), allow=True))
    box = tools.Toolbox(runner=h.guard)
    call = tools.CallContext("run-1", "ops", "agent", REQUESTER, ports.ReplyTarget("cli", "t", "c"))
    url = "https://status.example.com/api/search?q=db&limit=5"
    out = await box.call(http_tool(), {"url": url, "headers": {"Accept": "text/html; charset=utf-8"}}, call)
    assert not out.is_error, out.text
    (ran,) = h.runs("ops")
    assert ran["argv"][-1] == url
    assert "Accept: text/html; charset=utf-8" in ran["argv"]


async def test_a_model_command_string_with_operators_is_still_refused(tmp_path: Path) -> None:
    """The relaxation is for argvs aofd builds; the kubectl tool's tokens are still checked."""
    h = Harness(tmp_path)
    h.add("ops")
    box = tools.Toolbox(runner=h.guard)
    call = tools.CallContext("run-1", "ops", "agent", REQUESTER, ports.ReplyTarget("cli", "t", "c"))
    kubectl = tools.builtin("kubectl")
    assert kubectl is not None
    out = await box.call(kubectl, {"args": ["get", "pods", ";", "id"]}, call)
    assert out.is_error
    assert "shell operators" in out.text
    assert h.runs("ops") == []
