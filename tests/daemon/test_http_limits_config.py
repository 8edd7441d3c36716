"""The `http:` section of the daemon config: durations, defaults, file:line errors, the limits
each listener gets, and the `/metrics` families the listeners' counters are exported as."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.daemon import config, metrics, wiring
from aofd.runtime import httpserver


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aofd.yaml"
    path.write_text(text)
    return path


def test_http_limits_load_with_durations(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "http:\n  header_timeout: 5s\n  body_timeout: 1m\n  keepalive_timeout: 500ms\n"
        "  max_header_bytes: 16384\n  max_connections: 300\n  admin_max_connections: 4\n",
    )
    spec = config.load(path).http
    webhook, admin = wiring.http_limits(spec), wiring.http_limits(spec, admin=True)
    assert httpserver.Limits(5.0, 60.0, 0.5, 16384, 300) == webhook
    assert 4 == admin.max_connections
    assert (5.0, 60.0, 0.5, 16384) == (
        admin.header_timeout,
        admin.body_timeout,
        admin.keepalive_timeout,
        admin.max_header_bytes,
    )


def test_http_defaults_derive_the_caps_from_the_open_file_limit() -> None:
    spec = settings.DaemonConfig().http
    assert (10.0, 30.0, 75.0, 32 * 1024) == (
        spec.header_timeout,
        spec.body_timeout,
        spec.keepalive_timeout,
        spec.max_header_bytes,
    )
    assert httpserver.default_max_connections() == wiring.http_limits(spec).max_connections
    assert (
        httpserver.default_max_connections(admin=True) == wiring.http_limits(spec, admin=True).max_connections
    )


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("http:\n  header_timeout: 0s\n", 2, "http.header_timeout"),
        ("http:\n  body_timeout: soon\n", 2, "expected a duration"),
        ("http:\n  max_connections: 0\n", 2, "http.max_connections"),
        ("listen: 127.0.0.1:0\nhttp:\n  max_header_bytes: 100\n", 3, "http.max_header_bytes"),
        ("http:\n  header_timout: 1s\n", 2, "unknown setting 'http.header_timout'"),
    ],
)
def test_bad_http_settings_are_errors_at_their_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)
    (issue,) = caught.value.issues
    assert (line, True) == (issue.line, words in issue.message), issue.format()


def test_listener_counters_are_exported() -> None:
    registry = metrics.Metrics(
        lambda: metrics.Samples(
            http_connections={"webhook": 7, "admin": 1},
            http_closed={("webhook", "header_timeout"): 3, ("admin", "evicted"): 1},
            http_accept_errors={("webhook", "EMFILE"): 2},
        )
    )
    text = registry.render()[0].decode()
    assert 'aofd_http_connections{listener="webhook"} 7.0' in text
    assert 'aofd_http_connections_closed_total{listener="webhook",reason="header_timeout"} 3.0' in text
    assert 'aofd_http_connections_closed_total{listener="admin",reason="evicted"} 1.0' in text
    assert 'aofd_http_accept_errors_total{error="EMFILE",listener="webhook"} 2.0' in text


def test_the_write_timeout_loads_as_a_duration_and_reaches_both_listeners(tmp_path: Path) -> None:
    assert 30.0 == settings.DaemonConfig().http.write_timeout
    spec = config.load(write(tmp_path, "http:\n  write_timeout: 2m\n")).http
    assert (120.0, 120.0) == (
        wiring.http_limits(spec).write_timeout,
        wiring.http_limits(spec, admin=True).write_timeout,
    )
    with pytest.raises(errors.ConfigError) as caught:
        config.load(write(tmp_path, "http:\n  write_timeout: 0s\n"))
    (issue,) = caught.value.issues
    assert (2, True) == (issue.line, "http.write_timeout" in issue.message), issue.format()
