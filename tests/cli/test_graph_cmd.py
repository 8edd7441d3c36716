"""`aofctl graph PATH --format mermaid|dot` run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from aofd.cli import aofctl_main, graph_cmd, schema_cmd, validate_cmd

FILES = {
    "c.yaml": "apiVersion: aof.dev/v1\nkind: Context\nmetadata:\n  name: prod\nspec:\n  namespace: x\n",
    "a.yaml": "apiVersion: aof.dev/v1\nkind: Agent\nmetadata:\n  name: k8s-ops\nspec:\n  model: m\n",
    "f.yaml": "apiVersion: aof.dev/v1\nkind: AgentFlow\nmetadata:\n  name: flow\nspec:\n"
    "  agents: [{name: k8s-ops}]\n",
    "t.yaml": "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: hook\nspec:\n  type: HTTP\n"
    "  config: {webhook_secret: s}\n",
    "b.yaml": "apiVersion: aof.dev/v1\nkind: FlowBinding\nmetadata:\n  name: bot\nspec:\n"
    "  flow: flow\n  context: prod\n  trigger: hook\n",
}

MERMAID = """flowchart TD
  subgraph L5["Layer 5: Bindings"]
    n0["FlowBinding: bot"]
  end
  subgraph L4["Layer 4: Triggers"]
    n1["Trigger: hook"]
  end
  subgraph L3["Layer 3: Flows"]
    n2["AgentFlow: flow"]
  end
  subgraph L1["Layer 1: Agents"]
    n3["Agent: k8s-ops"]
  end
  subgraph L0["Layer 0: Contexts"]
    n4["Context: prod"]
  end
  n0 -->|flow| n2
  n0 -->|context| n4
  n0 -->|trigger| n1
  n2 -->|agent| n3
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for rel, text in FILES.items():
        (tmp_path / rel).write_text(text, encoding="utf-8")
    modules = tuple(aofctl_main.COMMAND_MODULES)
    for module in (validate_cmd, graph_cmd, schema_cmd):
        if module not in modules:
            modules += (module,)
    monkeypatch.setattr(aofctl_main, "COMMAND_MODULES", modules)
    return tmp_path


def test_mermaid(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The mermaid graph groups resources by layer and labels each reference."""
    code = aofctl_main.main(["graph", str(repo), "--format", "mermaid"])
    assert (0, MERMAID) == (code, capsys.readouterr().out)


def test_dot(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The dot graph has one cluster per layer and one labelled edge per reference."""
    code = aofctl_main.main(["graph", str(repo), "--format", "dot"])
    out = capsys.readouterr().out
    assert (0, True, 5, 4) == (
        code,
        out.startswith("digraph aof {"),
        out.count("subgraph cluster_layer"),
        out.count(" -> "),
    )


def test_graph_with_errors_exits_one(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dangling reference is printed to stderr and the exit code is 1."""
    (repo / "a.yaml").unlink()
    code = aofctl_main.main(["graph", str(repo)])
    assert (1, "ref-missing") == (
        code,
        "ref-missing" if "refers to Agent 'k8s-ops'" in capsys.readouterr().err else "",
    )
