"""Every upstream example: what upstream parses, aofd loads; what aofd rejects, it says where and why.

The corpus is `shared/conformance/aof-examples` (101 upstream files, copied byte for byte) and
`UPSTREAM-PARSE-RESULTS.json` (what upstream's Rust types made of each document). Files are
enumerated, never hand-picked. One deliberate divergence is checked explicitly: aofd rejects
duplicate mapping keys, which upstream's serde_yaml 0.8 silently resolves (last one wins).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from aofd.resources import documents, validation

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CORPUS = SHARED / "conformance" / "aof-examples"
RESULTS = CORPUS / "UPSTREAM-PARSE-RESULTS.json"

pytestmark = pytest.mark.skipif(not RESULTS.is_file(), reason=f"conformance corpus not found at {CORPUS}")


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    found = {p for pattern in ("*.yaml", "*.yml") for p in CORPUS.rglob(pattern) if p.is_file()}
    return sorted(str(p.relative_to(CORPUS)) for p in found)


@functools.cache
def upstream() -> dict[tuple[str, int], dict[str, Any]]:
    data = json.loads(RESULTS.read_text(encoding="utf-8"))
    return {(d["file"], d["doc_index"]): d for d in data["documents"]}


def upstream_ok(rel: str, index: int) -> bool:
    return upstream().get((rel, index), {}).get("upstream_parse") == "ok"


@pytest.mark.parametrize("rel", corpus_files())
def test_example_file_conforms(rel: str) -> None:
    """Upstream-parsable documents load without errors; rejected ones have a positioned reason."""
    parsed = documents.parse(rel, (CORPUS / rel).read_bytes())
    if parsed.issues:
        # aofd refuses the whole file; only duplicate keys may make it refuse an upstream-ok document.
        indexes = {index for (file, index) in upstream() if file == rel}
        if any(upstream_ok(rel, index) for index in indexes):
            assert {"yaml-duplicate-key"} == {i.code for i in parsed.issues}
        assert all(i.line > 0 and i.message for i in parsed.issues)
        return
    for doc in parsed.documents:
        assert (rel, doc.index) in upstream(), f"document {doc.index} of {rel} is not in the upstream results"
        result = validation.validate_document(doc)
        found = [i for i in result.issues if i.is_error]
        if upstream_ok(rel, doc.index):
            assert [] == [i.format() for i in found]
            assert result.resource is not None or upstream()[(rel, doc.index)]["kind"] == "DaemonConfig"
        elif found:
            assert all(i.line > 0 and i.message and i.path == rel for i in found)


def test_corpus_is_complete() -> None:
    """Every file named in the upstream results is found by the walk, so nothing is skipped silently."""
    named = {file for (file, _index) in upstream()}
    assert named == set(corpus_files())


def test_aofd_accepts_at_least_what_upstream_accepts() -> None:
    """Over the whole corpus aofd loads at least as many documents as upstream parses."""
    accepted = upstream_accepted = 0
    for rel in corpus_files():
        parsed = documents.parse(rel, (CORPUS / rel).read_bytes())
        for doc in parsed.documents:
            upstream_accepted += upstream_ok(rel, doc.index)
            accepted += validation.validate_document(doc).ok
    assert accepted >= upstream_accepted > 0
