"""Named admin tokens (`admin_api.tokens`): read from files or systemd credentials with the rules of
the unnamed token, one token per operator, each one good for the whole admin API over real
loopback HTTP, and never shown in an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors, settings
from aofd.daemon import admin, config
from tests.daemon.test_admin_auth import TOKEN, FakeView, call, serving

ALICE = "alice-0123456789-token-abcdef"
BOB = "bob-0123456789-token-abcdefgh"


def named(*entries: tuple[str, Path | None], token_file: Path | None = None) -> settings.AdminApiSpec:
    return settings.AdminApiSpec(
        token_file=token_file,
        tokens=tuple(settings.AdminTokenSpec(name=n, token_file=f) for n, f in entries),
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_named_tokens_are_read_from_the_config_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "aofd.yaml").write_text(
        "admin_api:\n"
        "  token_file: creds/admin-token\n"
        "  tokens:\n"
        "    - {name: alice, token_file: creds/alice}\n"
        "    - name: bob.smith_2\n"
        "      token_file: /etc/aofd/admin-tokens/bob\n"
        "    - {name: carol}\n"
    )
    cfg = config.load(tmp_path / "aofd.yaml")
    assert cfg.admin_api.tokens == (
        settings.AdminTokenSpec(name="alice", token_file=tmp_path / "creds" / "alice"),
        settings.AdminTokenSpec(name="bob.smith_2", token_file=Path("/etc/aofd/admin-tokens/bob")),
        settings.AdminTokenSpec(name="carol"),
    )


@pytest.mark.parametrize(
    ("entries", "line", "needle"),
    [
        ("    - {name: Alice, token_file: a}\n", 3, "tokens.0.name"),
        ("    - {name: alice, token_file: a}\n    - {name: 'bo b', token_file: b}\n", 4, "tokens.1.name"),
        ("    - {name: alice, token_file: a}\n    - {name: alice, token_file: b}\n", 3, "alice"),
        ("    - {name: alice, tokenfile: a}\n", 3, "tokenfile"),
    ],
)
def test_a_bad_or_repeated_name_is_an_error_at_its_line(
    tmp_path: Path, entries: str, line: int, needle: str
) -> None:
    (tmp_path / "aofd.yaml").write_text("admin_api:\n  tokens:\n" + entries)
    with pytest.raises(errors.ConfigError) as caught:
        config.load(tmp_path / "aofd.yaml")
    [issue] = caught.value.issues
    assert issue.line == line, issue.format()
    assert needle in issue.message


def test_each_named_token_is_read_from_its_file_or_its_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "admin-token-bob", BOB)
    spec = named(("alice", write(tmp_path / "alice", ALICE)), ("bob", None))
    got = admin.load_named_tokens(spec, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert got == {"alice": ALICE, "bob": BOB}
    assert admin.load_named_tokens(settings.AdminApiSpec(), environ={}) == {}


def test_a_named_token_without_a_file_or_credential_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=r"admin_api\.tokens\[bob\].*admin-token-bob"):
        admin.load_named_tokens(named(("bob", None)), environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    with pytest.raises(errors.ConfigError, match=r"admin_api\.tokens\[bob\].*cannot read"):
        admin.load_named_tokens(named(("bob", tmp_path / "nope")), environ={})


@pytest.mark.parametrize("content", ["", "short", "two words-0123456789"])
def test_a_named_token_file_follows_the_rules_of_the_unnamed_one(tmp_path: Path, content: str) -> None:
    spec = named(("alice", write(tmp_path / "alice", content)))
    with pytest.raises(errors.ConfigError, match=r"admin_api\.tokens\[alice\]") as caught:
        admin.load_named_tokens(spec, environ={})
    assert not content or content not in str(caught.value)


def test_one_token_may_not_belong_to_two_names_or_be_the_unnamed_one(tmp_path: Path) -> None:
    spec = named(("alice", write(tmp_path / "a", ALICE)), ("bob", write(tmp_path / "b", ALICE)))
    with pytest.raises(errors.ConfigError, match="alice and bob") as caught:
        admin.load_named_tokens(spec, environ={})
    assert ALICE not in str(caught.value)
    spec = named(("alice", write(tmp_path / "a", TOKEN)))
    with pytest.raises(errors.ConfigError, match=r"alice.*admin_api\.token_file") as caught:
        admin.load_named_tokens(spec, environ={}, unnamed=TOKEN)
    assert TOKEN not in str(caught.value)


def test_named_tokens_alone_guard_a_bind_other_hosts_can_reach() -> None:
    with pytest.raises(errors.ConfigError):
        admin.check_exposure("0.0.0.0:8081", token=None)
    admin.check_exposure("0.0.0.0:8081", token=None, named_tokens=1)


async def test_every_token_authenticates_for_the_whole_api_and_nothing_else_does() -> None:
    view = FakeView()
    api = admin.AdminApi(view, token=TOKEN, named_tokens={"alice": ALICE, "bob": BOB})
    async with serving(api) as bound:
        for token in (TOKEN, ALICE, BOB):
            assert (await call(bound, "GET", "/api/v1/status", token=token))[0] == 200
            assert (await call(bound, "POST", "/api/v1/reconcile", token=token))[0] == 202
        for token in (None, "", ALICE + "x", ALICE[:-1], "alice", f"{ALICE} {BOB}"):
            status, text, _ = await call(bound, "GET", "/api/v1/status", token=token)
            assert status == 401
            assert ALICE not in text
            assert BOB not in text
    assert view.reconciles == [None, None, None]


async def test_named_tokens_without_an_unnamed_one_still_close_the_api() -> None:
    async with serving(admin.AdminApi(FakeView(), named_tokens={"alice": ALICE})) as bound:
        assert (await call(bound, "GET", "/api/v1/status"))[0] == 401
        assert (await call(bound, "GET", "/api/v1/status", token=ALICE))[0] == 200
        assert (await call(bound, "GET", "/healthz"))[0] == 200
