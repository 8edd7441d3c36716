"""Deciding what a group of agents agreed on (pure: no I/O, no clock, no asyncio).

This module owns `decide(votes, config)`, for the algorithms majority, unanimous, weighted,
first_wins and human_review, with `min_votes`, `min_confidence` and `allow_partial` enforced
here (`timeout_ms` is enforced by the fleet runner, which turns a late agent into a vote
with `timed_out=True`: it does not vote).

Agreement is decided on normalized answers: trimmed, case-folded, whitespace collapsed,
trailing punctuation stripped. When an answer contains a structured verdict (a JSON object
with a `decision` field, anywhere in the text), the normalized `decision` is the key and
its `confidence` (0..1, or 0..100 read as percent) is the vote's confidence.

Rules (documented in docs/models.md):
- Without `allow_partial`, any agent that failed or timed out fails the consensus. With it,
  only answers count, and defaults are computed over the agents that answered.
- majority: the largest group needs at least `min_votes` votes (default: more than half).
- unanimous: every answer has the same key (and at least `min_votes`, if set).
- weighted: each vote weighs `consensus.weights[agent]`, else the member's `weight`, else 1;
  the heaviest group needs more than half of the total weight (and `min_votes`, if set).
- first_wins: the first answer to arrive (votes are given in arrival order).
- human_review: never decided automatically; the result carries the best suggestion (highest
  stated confidence, else the largest group) and `needs_human_review`.
- `min_confidence`: the result's confidence (the mean stated confidence of the winning
  votes, or the winning share when no vote states one) must reach it, else the consensus
  is not reached and needs human review.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from aofd.specs import flows

ALGORITHMS = ("majority", "unanimous", "weighted", "first_wins", "human_review")

_WS = re.compile(r"\s+")
_TRAILING = ".!?;:,\u3002"


@dataclasses.dataclass(frozen=True, slots=True)
class Vote:
    """One agent's contribution: its answer, or why it has none (failed, timed out)."""

    agent: str
    answer: str | None
    weight: float = 1.0
    error: str | None = None
    timed_out: bool = False

    @property
    def answered(self) -> bool:
        return self.answer is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    reached: bool
    answer: str | None
    key: str | None
    algorithm: str
    confidence: float
    votes_for: int
    answered: int
    expected: int
    needs_human_review: bool
    reason: str
    groups: Mapping[str, tuple[str, ...]]
    missing: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "reached": self.reached,
            "answer": self.answer,
            "decision": self.key,
            "algorithm": self.algorithm,
            "confidence": round(self.confidence, 4),
            "votes_for": self.votes_for,
            "answered": self.answered,
            "expected": self.expected,
            "needs_human_review": self.needs_human_review,
            "reason": self.reason,
            "groups": {k: list(v) for k, v in self.groups.items()},
            "missing": list(self.missing),
        }


def normalize(text: str) -> str:
    """The agreement key of a free-text answer: NFKC, trimmed, case-folded, whitespace collapsed,
    trailing punctuation stripped."""
    folded = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()
    return folded.rstrip(_TRAILING).strip()


def json_object(text: str, key: str) -> dict[str, Any] | None:
    """The first JSON object in `text` that has `key` (models wrap JSON in prose or code fences)."""
    decoder = json.JSONDecoder()
    index = text.find("{")
    while index != -1:
        try:
            obj, _end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index = text.find("{", index + 1)
            continue
        if isinstance(obj, dict) and key in obj:
            return obj
        index = text.find("{", index + 1)
    return None


def verdict(text: str) -> tuple[str | None, float | None]:
    """The `decision` and `confidence` of the first JSON object in `text` that has a `decision`."""
    obj = json_object(text, "decision")
    if obj is None:
        return None, None
    decision = obj.get("decision")
    conf = obj.get("confidence")
    confidence: float | None = None
    if isinstance(conf, int | float) and not isinstance(conf, bool):
        confidence = float(conf) / 100.0 if conf > 1 else float(conf)
    return (None if decision is None else str(decision)), confidence


def key_of(answer: str) -> tuple[str, float | None]:
    decision, confidence = verdict(answer)
    if decision is not None:
        return normalize(decision), confidence
    return normalize(answer), None


def decide(votes: Sequence[Vote], config: flows.Consensus) -> Result:
    """Decide the consensus of `votes` (in arrival order) under `config`; see the module docstring."""
    expected = len(votes)
    answered = [v for v in votes if v.answered]
    missing = tuple(v.agent for v in votes if not v.answered)
    algorithm = config.algorithm

    def result(reached: bool, winner: list[Vote], key: str | None, confidence: float, reason: str) -> Result:
        return Result(
            reached=reached,
            answer=winner[0].answer if winner else None,
            key=key,
            algorithm=algorithm,
            confidence=confidence,
            votes_for=len(winner),
            answered=len(answered),
            expected=expected,
            needs_human_review=not reached,
            reason=reason,
            groups={k: tuple(v.agent for v in g) for k, g in groups.items()},
            missing=missing,
        )

    groups: dict[str, list[Vote]] = {}
    stated: dict[str, float] = {}
    for vote in answered:
        assert vote.answer is not None
        key, confidence = key_of(vote.answer)
        groups.setdefault(key, []).append(vote)
        if confidence is not None:
            stated[vote.agent] = confidence

    if algorithm not in ALGORITHMS:
        return result(False, [], None, 0.0, f"unknown consensus algorithm {algorithm!r}")
    if missing and not config.allow_partial:
        why = ", ".join(
            f"{v.agent} ({'timed out' if v.timed_out else v.error or 'no answer'})"
            for v in votes
            if not v.answered
        )
        return result(False, [], None, 0.0, f"not every agent answered and allow_partial is off: {why}")
    if not answered:
        return result(False, [], None, 0.0, "no agent answered")

    def weight(vote: Vote) -> float:
        return float(config.weights.get(vote.agent, vote.weight))

    # The largest (or heaviest) group; ties go to the group that formed first (arrival order).
    order = list(groups)
    if algorithm == "weighted":
        best = max(order, key=lambda k: (sum(weight(v) for v in groups[k]), -order.index(k)))
    else:
        best = max(order, key=lambda k: (len(groups[k]), -order.index(k)))
    winner = groups[best]
    share = len(winner) / len(answered)

    def confidence_of(votes_: list[Vote], fallback: float) -> float:
        values = [stated[v.agent] for v in votes_ if v.agent in stated]
        return sum(values) / len(values) if values else fallback

    if algorithm == "first_wins":
        first = answered[0]
        key = key_of(first.answer or "")[0]
        return _with_confidence(
            result(True, [first], key, confidence_of([first], 1.0), "first answer wins"), config
        )
    if algorithm == "human_review":
        if stated:
            top = max(answered, key=lambda v: stated.get(v.agent, -1.0))
            suggestion, key = [top], key_of(top.answer or "")[0]
        else:
            suggestion, key = winner, best
        return result(False, suggestion, key, confidence_of(suggestion, share), "human review requested")
    if algorithm == "unanimous":
        if len(groups) != 1:
            return result(False, winner, best, share, f"not unanimous: {len(groups)} different answers")
        if config.min_votes and len(winner) < config.min_votes:
            return result(False, winner, best, share, f"{len(winner)} votes, min_votes is {config.min_votes}")
        return _with_confidence(result(True, winner, best, confidence_of(winner, 1.0), "unanimous"), config)
    if algorithm == "weighted":
        total = sum(weight(v) for v in answered)
        won = sum(weight(v) for v in winner)
        wshare = won / total if total > 0 else 0.0
        if config.min_votes and len(winner) < config.min_votes:
            return result(
                False, winner, best, wshare, f"{len(winner)} votes, min_votes is {config.min_votes}"
            )
        if wshare <= 0.5:
            return result(
                False,
                winner,
                best,
                wshare,
                f"heaviest answer has {wshare:.0%} of the weight, needs more than half",
            )
        return _with_confidence(
            result(True, winner, best, confidence_of(winner, wshare), f"{wshare:.0%} of the weight"), config
        )
    # majority
    base_count = expected if not config.allow_partial else len(answered)
    needed = config.min_votes or (base_count // 2 + 1)
    if len(winner) < needed:
        return result(
            False, winner, best, share, f"{len(winner)} of {base_count} votes agree, {needed} needed"
        )
    return _with_confidence(
        result(
            True, winner, best, confidence_of(winner, share), f"{len(winner)} of {base_count} votes agree"
        ),
        config,
    )


def _with_confidence(res: Result, config: flows.Consensus) -> Result:
    if config.min_confidence is not None and res.confidence < config.min_confidence:
        return dataclasses.replace(
            res,
            reached=False,
            needs_human_review=True,
            reason=(
                f"{res.reason}, but confidence {res.confidence:.2f} "
                f"is below min_confidence {config.min_confidence}"
            ),
        )
    return res
