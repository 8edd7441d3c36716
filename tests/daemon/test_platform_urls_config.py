"""Platform API base URLs (`platforms.*`): settable in the config file or the environment (the file
wins), and checked the same way wherever they come from: https, or http to a loopback address."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.daemon import config

ENV = {
    "AOFD_SLACK_API_URL": "https://slack-proxy.internal/api/",
    "AOFD_SLACK_RESPONSE_URL_BASE": "http://127.0.0.1:8099/",
    "AOFD_TELEGRAM_API_URL": "http://localhost:8098",
    "AOFD_WHATSAPP_API_URL": "http://[::1]:8097/v19.0",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aofd.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file_values_or_environment(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "listen: 127.0.0.1:8080\n"), environ={})
    assert cfg.platforms == settings.PlatformsSpec()
    assert cfg.platforms.slack_api_url == "https://slack.com/api/"


def test_the_environment_fills_what_the_file_leaves_out(tmp_path: Path) -> None:
    path = write(tmp_path, "platforms:\n  slack_api_url: https://slack-eu.example.com/api/\n")
    cfg = config.load(path, environ=ENV)
    assert (
        cfg.platforms.slack_api_url,
        cfg.platforms.slack_response_url_base,
        cfg.platforms.telegram_api_url,
        cfg.platforms.whatsapp_api_url,
    ) == (
        "https://slack-eu.example.com/api/",  # the file wins
        "http://127.0.0.1:8099/",
        "http://localhost:8098",
        "http://[::1]:8097/v19.0",
    )


@pytest.mark.parametrize("text", ["listen: 127.0.0.1:8080\n", "platforms:\n"])
def test_the_environment_alone_sets_every_url(tmp_path: Path, text: str) -> None:
    cfg = config.load(write(tmp_path, text), environ=ENV)
    assert cfg.platforms.telegram_api_url == "http://localhost:8098"
    zero = config.zero_config(tmp_path, environ=ENV)
    assert zero.platforms == cfg.platforms


BAD = [
    ("http://slack-proxy.internal/api/", "must use https://"),
    ("https://user:pw@slack.example.com/api/", "must not hold user info"),
    ("https://slack.example.com/api/?token=x", "must not have a query"),
    ("ftp://slack.example.com/", "absolute https:// URL"),
    ("slack.com/api", "absolute https:// URL"),
    ("https://slack.example.com:port/", "is not a URL"),
]


@pytest.mark.parametrize(("url", "words"), BAD)
def test_a_bad_url_in_the_file_is_an_error_at_its_line(tmp_path: Path, url: str, words: str) -> None:
    path = write(tmp_path, f"listen: 127.0.0.1:8080\nplatforms:\n  telegram_api_url: '{url}'\n")
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path, environ={})
    (issue,) = caught.value.issues
    assert (issue.path, issue.line) == (str(path), 3)
    assert issue.message.startswith("platforms.telegram_api_url: ")
    assert words in issue.message
    assert "pw@" not in issue.message, "the value is never echoed"
    assert "token=x" not in issue.message


@pytest.mark.parametrize(("url", "words"), BAD)
def test_a_bad_url_in_the_environment_names_the_variable(tmp_path: Path, url: str, words: str) -> None:
    env = {"AOFD_TELEGRAM_API_URL": url}
    with pytest.raises(errors.ConfigError) as caught:
        config.load(write(tmp_path, "listen: 127.0.0.1:8080\n"), environ=env)
    (issue,) = caught.value.issues
    assert issue.path == config.ENVIRONMENT
    assert issue.message.startswith("AOFD_TELEGRAM_API_URL (for platforms.telegram_api_url): ")
    assert words in issue.message
    with pytest.raises(errors.ConfigError) as zero:
        config.zero_config(tmp_path, environ=env)
    assert [i.message for i in zero.value.issues] == [issue.message]


def test_a_file_value_is_not_overridden_by_a_bad_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "platforms:\n  slack_api_url: https://slack.com/api/\n")
    cfg = config.load(path, environ={"AOFD_SLACK_API_URL": "http://evil.example.com/"})
    assert cfg.platforms.slack_api_url == "https://slack.com/api/"


def test_an_empty_variable_is_unset(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "listen: 127.0.0.1:8080\n"), environ={"AOFD_SLACK_API_URL": ""})
    assert cfg.platforms.slack_api_url == "https://slack.com/api/"
