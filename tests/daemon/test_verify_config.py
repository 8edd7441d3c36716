"""`sources[].git.verify` in the daemon config: loads (key paths relative to the config file),
and its mistakes are errors at their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd import errors
from aofd.daemon import config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aofd.yaml"
    path.write_text(text)
    return path


def test_issue_example_loads_with_relative_key_files(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
sources:
  - name: main
    git:
      url: ssh://git@git.example.com/ops/agents.git
      ref: {branch: main}
      verify:
        mode: head
        ssh_allowed_signers_file: keys/allowed_signers
        openpgp_keys_file: /etc/aofd/trusted.asc
        signers: [alice@example.com, bob@example.com]
""",
    )
    cfg = config.load(path)
    verify = cfg.sources[0].git.verify if cfg.sources[0].git is not None else None
    assert verify is not None
    assert tmp_path / "keys" / "allowed_signers" == verify.ssh_allowed_signers_file
    assert Path("/etc/aofd/trusted.asc") == verify.openpgp_keys_file
    assert ("alice@example.com", "bob@example.com") == verify.signers


@pytest.mark.parametrize(
    ("verify", "message"),
    [
        ("{mode: head}", "verify needs a key file"),
        ("{mode: tag, openpgp_keys_file: k.asc}", "verify.mode tag checks the signature of the tracked tag"),
        ("{mode: sometimes, openpgp_keys_file: k.asc}", "mode"),
        ("{openpgp_keys_file: k.asc, signers: ['']}", "signers must be non-empty"),
        ("{openpgp_keys_file: k.asc, keyring: x}", "unknown setting"),
    ],
)
def test_mistakes_are_errors_at_their_line(tmp_path: Path, verify: str, message: str) -> None:
    path = write(
        tmp_path,
        f"sources:\n  - name: main\n    git:\n      url: file:///r\n      verify: {verify}\n",
    )
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)
    (issue,) = caught.value.issues
    assert message in issue.message
    assert 2 <= issue.line <= 5  # the source, its git: block or the verify: line
