"""kubectl's flag table and the built-in resource table, as `aofd.specs.k8s_tables` reads them."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from aofd.specs import k8s_tables as tables


def test_logs_prefix_is_a_bool_and_container_takes_a_value() -> None:
    """`kubectl logs --prefix vault-0`: --prefix is a bool, so `vault-0` is the pod."""
    logs = tables.command_flags("logs")
    assert logs is not None
    assert logs["--prefix"] == tables.FlagSpec("--prefix", None, takes_value=False, is_bool=True)
    assert logs["--container"].takes_value
    assert logs["--container"].short == "c"


@pytest.mark.parametrize(
    ("path", "flag"),
    [("delete", "--cascade"), ("delete", "--dry-run"), ("apply", "--validate"), ("apply", "--dry-run")],
)
def test_no_option_default_flags_take_a_value_only_with_equals(path: str, flag: str) -> None:
    """`--dry-run`, `--cascade`, `--validate` are not bools, yet `--flag X` leaves X alone."""
    spec = (tables.command_flags(path) or {})[flag]
    assert (spec.takes_value, spec.is_bool) == (False, False)


def test_shorthands_are_per_command() -> None:
    """`logs -f` is --follow, `get -f` is --filename; `-n` is the global --namespace."""
    assert tables.shorthand("logs", "f") == tables.FlagSpec("--follow", "f", takes_value=False, is_bool=True)
    follow_or_file = tables.shorthand("get", "f")
    assert follow_or_file is not None
    assert follow_or_file.long == "--filename"
    assert follow_or_file.takes_value
    namespace = tables.shorthand("get", "n")
    assert namespace is not None
    assert namespace.long == "--namespace"
    assert tables.shorthand("get", "Q") is None


def test_global_flags() -> None:
    flags = tables.global_flags()
    assert flags["--namespace"] == tables.FlagSpec("--namespace", "n", takes_value=True)
    assert flags["--v"].short == "v"
    assert flags["--v"].takes_value
    assert not flags["--match-server-version"].takes_value
    assert "--all-namespaces" not in flags  # -A belongs to get, describe, ... not to kubectl
    assert tables.kubectl_version().startswith("v1.")


def test_hidden_flags_that_kubectl_still_accepts_are_listed() -> None:
    """`autoscale --cpu-percent` is deprecated and missing from --help, but kubectl takes it."""
    autoscale = tables.command_flags("autoscale") or {}
    assert autoscale["--cpu-percent"].takes_value


def test_commands_and_subcommands() -> None:
    assert tables.subcommands("rollout") == {"history", "pause", "restart", "resume", "status", "undo"}
    assert {"get", "logs", "rollout", "create", "options", "help"} <= tables.subcommands("")
    assert "generic" in tables.subcommands("create secret")
    assert tables.subcommands("get") == frozenset()
    assert tables.command_flags("rollout restart") is not None
    assert tables.command_flags("create secret generic") is not None
    assert tables.command_flags("nosuch") is None
    assert tables.command_flags("rollout nosuch") is None
    assert tables.aliases("create deployment") == {"deploy"}
    assert tables.aliases("top node") == {"no", "nodes"}
    assert tables.aliases("get") == frozenset()


def test_every_command_path_is_reachable_from_the_root() -> None:
    """The table is one tree: each command path is a chain of sub-commands from `""`."""
    raw = json.loads(resources.files("aofd.specs").joinpath("kubectl_flags.json").read_text())
    for path in raw["commands"]:
        words = path.split(" ")
        for depth, word in enumerate(words):
            assert word in tables.subcommands(" ".join(words[:depth])), path


@pytest.mark.parametrize(
    ("token", "group", "name"),
    [
        ("pods", "", "pods"),
        ("pod", "", "pods"),
        ("po", "", "pods"),
        ("PODS", "", "pods"),  # the REST mapper lower-cases plural and singular names
        ("Pod", "", "pods"),
        ("pods.", "", "pods"),
        ("pods.v1.", "", "pods"),
        ("deploy", "apps", "deployments"),
        ("deployments.apps", "apps", "deployments"),
        ("deploy.apps", "apps", "deployments"),
        ("deploy.app", "apps", "deployments"),  # group prefix
        ("deployment.v1.apps", "apps", "deployments"),
        ("Deployment.apps", "apps", "deployments"),
        ("Deployment.v1.apps", "apps", "deployments"),
        ("storageclass.storage", "storage.k8s.io", "storageclasses"),
        ("ev", "", "events"),  # core wins over events.k8s.io, as in discovery order
        ("events.events.k8s.io", "events.k8s.io", "events"),
        ("hpa", "autoscaling", "horizontalpodautoscalers"),
        ("hpa.v1.autoscaling", "autoscaling", "horizontalpodautoscalers"),
        ("crds", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("no", "", "nodes"),
        ("pv", "", "persistentvolumes"),
        ("Endpoints", "", "endpoints"),
    ],
)
def test_resolve_resource(token: str, group: str, name: str) -> None:
    found = tables.resolve_resource(token)
    assert found is not None, token
    assert (found.group, found.name) == (group, name)


@pytest.mark.parametrize(
    "token",
    ["", "PO", "DePloy", "pods.v1", "deployment.v1beta1.apps", "all", "widgets.example.com", "nosuch"],
)
def test_resolve_resource_unknown(token: str) -> None:
    """Short names match as written; a version is not a group; `all` is a category."""
    assert tables.resolve_resource(token) is None


def test_resource_entries() -> None:
    pods = tables.resolve_resource("pods")
    assert pods is not None
    assert pods.namespaced
    assert pods.kind == "Pod"
    assert pods.version == "v1"
    assert {"log", "exec", "eviction", "status"} <= set(pods.subresources)
    deployments = tables.resolve_resource("deployments")
    assert deployments is not None
    assert "scale" in deployments.subresources
    assert deployments.short_names == ("deploy",)
    nodes = tables.resolve_resource("nodes")
    assert nodes is not None
    assert not nodes.namespaced
    everything = tables.all_resources()
    assert everything[0].group == ""  # core first: it wins name clashes
    assert len({(r.group, r.name) for r in everything}) == len(everything)
    assert all(r.version == r.versions[0] for r in everything)
    assert "kubernetes/kubernetes" in tables.resources_source()


def test_tables_are_read_once() -> None:
    assert tables.all_resources() is tables.all_resources()
    assert tables.global_flags() is tables.global_flags()
