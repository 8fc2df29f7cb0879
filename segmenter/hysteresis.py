"""Hysteresis: whether a customer may move from their segment to a new one now.

Three brakes against flapping, per segmentation (config ``hysteresis``):

- minimum dwell: after a move, no other move for ``min_dwell_seconds``;
  the blocked move is retried when the dwell ends (``retry_at_ms``);
- ``urgent`` segments skip the dwell (campaigns must hear about churn now);
- ``margin`` (behaviour): the new cluster's centroid must be closer than the
  current one's by that fraction of the current distance, or no move at all.

The first assignment of a segmentation is never held back.

>>> from segmenter.config import HysteresisPolicy
>>> policy = HysteresisPolicy(min_dwell_seconds=86400, urgent=("churned",))
>>> now = 10 * 86_400_000
>>> just_moved = Assignment("active", since_ms=now - 3_600_000, reason="default")
>>> decide(just_moved, "at_risk", "buyer_silent_14d", now, policy)
Decision(assignment=Assignment(segment='active', ...), moved=False, retry_at_ms=946800000)
>>> decide(just_moved, "churned", "silent_60d", now, policy).moved
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from segmenter.config import HysteresisPolicy


class AssignmentLike(Protocol):
    """Anything with the current segment and since when (e.g. the shell's stored form)."""

    @property
    def segment(self) -> str: ...
    @property
    def since_ms(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def seq(self) -> int: ...


@dataclass(frozen=True)
class Assignment:
    """A customer's segment in one segmentation, since when and why.

    ``seq`` counts the customer's changes in this segmentation: 1 on the first
    assignment, +1 per move (subscribers drop a change whose seq is not newer).
    Persist it as :meth:`to_json` (``{"segment", "since_ms", "reason", "seq"}``, plus
    whatever the store adds, e.g. ``model_version``); read it back with
    :meth:`from_json`, which ignores unknown keys.
    """

    segment: str
    since_ms: int
    reason: str
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps({"segment": self.segment, "since_ms": self.since_ms, "reason": self.reason, "seq": self.seq}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Assignment:
        d = json.loads(text)
        return cls(str(d["segment"]), int(d["since_ms"]), str(d.get("reason", "")), int(d.get("seq", 0)))

    @classmethod
    def of(cls, other: AssignmentLike) -> Assignment:
        return other if isinstance(other, cls) else cls(other.segment, int(other.since_ms), other.reason, int(getattr(other, "seq", 0)))


@dataclass(frozen=True)
class Decision:
    assignment: Assignment
    moved: bool  # True: a change to publish (including a first assignment)
    retry_at_ms: int | None = None  # a move held back by the dwell: re-evaluate then


def decide(
    current: AssignmentLike | None,
    target: str,
    reason: str,
    now_ms: int,
    policy: HysteresisPolicy,
    margin_ok: bool = True,
) -> Decision:
    """Keep ``current`` or move to ``target``, as ``policy`` allows.

    ``margin_ok`` is the caller's verdict on the distance margin (behaviour);
    a move failing it is not retried by time, only by new features.
    """
    if current is None:
        return Decision(Assignment(target, now_ms, reason, 1), moved=True)
    held = Assignment.of(current)
    if held.segment == target:
        return Decision(held, moved=False)
    if target in policy.urgent:
        return Decision(Assignment(target, now_ms, reason, held.seq + 1), moved=True)
    if not margin_ok:
        return Decision(held, moved=False)
    dwell_ends = held.since_ms + policy.min_dwell_ms
    if now_ms < dwell_ends:
        return Decision(held, moved=False, retry_at_ms=dwell_ends)
    return Decision(Assignment(target, now_ms, reason, held.seq + 1), moved=True)


def margin_ok(distances: dict[str, float], current: str, target: str, margin: float) -> bool:
    """Is ``target``'s centroid closer than ``current``'s by the relative ``margin``?

    A current segment that no longer exists (renamed in the config) never holds.

    >>> margin_ok({"steady": 1.0, "explorers": 0.9}, "steady", "explorers", 0.15)
    False
    >>> margin_ok({"steady": 1.0, "explorers": 0.8}, "steady", "explorers", 0.15)
    True
    """
    if current not in distances:
        return True
    return distances[target] < (1.0 - margin) * distances[current]
