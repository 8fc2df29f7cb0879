"""Flap rate: how often a move is undone soon after, a measure of hysteresis.

A change *flaps* when it takes the customer back, in the same segmentation,
to the segment their previous change took them out of, within ``window_ms``
of that previous change (A -> B, then B -> A soon after). The flap rate is
flapping changes / changes that had a previous one to undo (first
assignments and first moves cannot flap).

>>> from segmenter.changes import SegmentChange
>>> def ch(t, a, b):
...     return SegmentChange.create(customer_id="c1", segmentation="lifecycle", from_segment=a, to_segment=b,
...                                 reason="r", model_version=0, occurred_at_ms=t, cause="x", features={})
>>> day = 86_400_000
>>> flap_rate([ch(0, None, "active"), ch(1 * day, "active", "at_risk"), ch(2 * day, "at_risk", "active")])
1.0
>>> flap_rate([ch(0, None, "active"), ch(1 * day, "active", "at_risk"), ch(30 * day, "at_risk", "active")])
0.0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

DEFAULT_WINDOW_MS = 7 * 86_400_000


class ChangeLike(Protocol):
    """What a flap is judged on: a :class:`~segmenter.changes.SegmentChange` or an
    evaluation :class:`~segmenter.evaluation.Move`."""

    @property
    def customer_id(self) -> str: ...
    @property
    def segmentation(self) -> str: ...
    @property
    def from_segment(self) -> str | None: ...
    @property
    def to_segment(self) -> str: ...
    @property
    def occurred_at_ms(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def change_id(self) -> str: ...


def flapping_pairs(changes: Iterable[ChangeLike], window_ms: int = DEFAULT_WINDOW_MS) -> tuple[list[tuple[ChangeLike, ChangeLike]], int]:
    """``([(move, the move that undid it), ...], changes that could flap)``; input order does not matter."""
    ordered = sorted(changes, key=lambda c: (c.customer_id, c.segmentation, c.occurred_at_ms, c.change_id))
    pairs: list[tuple[ChangeLike, ChangeLike]] = []
    eligible = 0
    previous: ChangeLike | None = None
    for c in ordered:
        same_track = previous is not None and (previous.customer_id, previous.segmentation) == (c.customer_id, c.segmentation)
        if previous is not None and same_track and previous.from_segment is not None and c.from_segment is not None:
            eligible += 1
            if c.to_segment == previous.from_segment and c.occurred_at_ms - previous.occurred_at_ms <= window_ms:
                pairs.append((previous, c))
        previous = c
    return pairs, eligible


def flaps(changes: Iterable[ChangeLike], window_ms: int = DEFAULT_WINDOW_MS) -> tuple[int, int]:
    """``(flapping changes, changes that could flap)``; input order does not matter."""
    pairs, eligible = flapping_pairs(changes, window_ms)
    return len(pairs), eligible


def flap_rate(changes: Iterable[ChangeLike], window_ms: int = DEFAULT_WINDOW_MS) -> float:
    """Share of changes that undo the previous move within ``window_ms`` (0.0 if none could)."""
    flapping, eligible = flaps(changes, window_ms)
    return flapping / eligible if eligible else 0.0
