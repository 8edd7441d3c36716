"""A Context whose kubeconfig is set from a variable never shows the value: the stall message
names the field (and the variable), since the value may be a credential."""

from __future__ import annotations

from pathlib import Path

from aofd.plan import compiler, desired
from aofd.runtime import applier
from aofd.testing import resources as res
from tests.plan.conftest import WriteTree, context, view
from tests.plan.conftest import write_tree as write_tree  # the fixture
from tests.runtime.fakes import harness

SECRET = "xoxb-secret-1234567890"


async def test_the_kubeconfig_stall_message_does_not_contain_the_value() -> None:
    ctx = res.context("prod", kubeconfig=SECRET)
    bound = res.bind("b-prod", ctx=ctx, trigger_res=res.trigger("hook", "HTTP"))
    async with harness.Rig() as rig:
        outcome = await rig.apply([bound])
        assert outcome.reasons[ctx.key] == "KubeconfigUnusable"
        message = outcome.stalled[ctx.key]
        assert SECRET not in message
        assert "spec.kubeconfig" in message
        assert all(SECRET not in text for text in outcome.stalled.values())


def test_the_message_names_the_variable_the_kubeconfig_was_set_from(write_tree: WriteTree) -> None:
    snap = write_tree({"c.yaml": context("prod", "namespace: default\nkubeconfig: ${SLACK_BOT_TOKEN}")})
    state = desired.build([view(snap)], variables={"SLACK_BOT_TOKEN": SECRET})
    compiled = compiler.build(state)
    spec = compiled.contexts["prod"]
    problem = f"kubeconfig {SECRET} cannot be read: No such file or directory"
    message = applier.kubeconfig_message(compiled, spec, problem)
    assert (
        message == "kubeconfig spec.kubeconfig (set from ${SLACK_BOT_TOKEN}) cannot be read: "
        "No such file or directory"
    )


def test_a_literal_kubeconfig_path_is_still_shown(write_tree: WriteTree, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    snap = write_tree({"c.yaml": context("prod", f"namespace: default\nkubeconfig: {missing}")})
    compiled = compiler.build(desired.build([view(snap)], variables={}))
    problem = f"kubeconfig {missing} cannot be read: No such file or directory"
    assert applier.kubeconfig_message(compiled, compiled.contexts["prod"], problem) == problem
