"""A real `aofd serve --config`: the `repo_limits:` caps reach the running daemon's sources. A tree
over `max_files` is rejected whole, its status naming the cap and the setting that raises it; the
same tree under a raised cap is applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration import fakes, harness

pytestmark = pytest.mark.slow

CONTEXT = """\
apiVersion: aof.dev/v1
kind: Context
metadata:
  name: ctx-{i}
spec:
  namespace: ns-{i}
"""


def serve(tmp_path: Path, repo: Path, max_files: int, model_url: str) -> tuple[Path, dict[str, Any]]:
    config = tmp_path / f"aofd-{max_files}.yaml"
    state = tmp_path / f"state-{max_files}"
    config.write_text(
        json.dumps(
            {
                "sources": [{"name": "main", "directory": {"path": str(repo), "watch": False}}],
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "state_dir": str(state),
                "audit_dir": str(tmp_path / f"audit-{max_files}"),
                "models": {"anthropic_base_url": model_url},
                "repo_limits": {"max_files": max_files},
            }
        )
    )
    return config, {"ANTHROPIC_API_KEY": "test-key"}


def test_the_file_cap_is_configurable_and_named_when_exceeded(tmp_path: Path) -> None:
    repo = harness.write_tree(
        tmp_path / "repo", {f"contexts/ctx-{i}.yaml": CONTEXT.format(i=i) for i in range(4)}
    )
    with fakes.anthropic_server() as model:
        config, env = serve(tmp_path, repo, 3, fakes.url(model))
        with harness.run_daemon(
            "--config", str(config), cwd=tmp_path, state_dir=tmp_path / "state-3", env=env
        ) as d:
            rejected = d.wait_for(
                lambda: d.get("/api/v1/status")[1].get("lastRejected"), what="the rejected revision"
            )
            (error,) = rejected["errors"]
            assert "more than 3 resource files" in error
            assert "raise repo_limits.max_files in the daemon config" in error
            assert "" == d.get("/api/v1/status")[1]["appliedRevision"]

        config, env = serve(tmp_path, repo, 4, fakes.url(model))
        with harness.run_daemon(
            "--config", str(config), cwd=tmp_path, state_dir=tmp_path / "state-4", env=env
        ) as d:
            d.wait_ready()
            status = d.get("/api/v1/status")[1]
            assert (None, True) == (status["lastRejected"], bool(status["appliedRevision"]))
