"""What a candidate segment config would do to today's customers, before it goes live.

The pure half of ``segflow preview``: :func:`candidate_outcome` evaluates one
customer under a candidate :class:`~segmenter.assign.Segmenter` (hysteresis
included, as activation would), and :class:`PreviewTally` sums the outcomes per
segmentation: segment sizes now and under the candidate, the flow matrix
between them, a few example customers per flow, and how many customers the
candidate's hysteresis would hold where they are for now. Reading customers
out of Redis is :mod:`streams.preview`'s job.

>>> tally = PreviewTally(("value",), examples=1)
>>> tally.add("c1", {"value": "low"}, {"value": CandidateSegment("high", held=False)})
>>> tally.add("c2", {"value": "low"}, {"value": CandidateSegment("low", held=False)})
>>> tally.add("c3", {}, {"value": CandidateSegment("low", held=True)})
>>> v = tally.as_dict()["segmentations"]["value"]
>>> v["sizes"]
{'(none)': {'now': 1, 'candidate': 0}, 'high': {'now': 0, 'candidate': 1}, 'low': {'now': 2, 'candidate': 2}}
>>> v["flows"][0]["from"], v["flows"][0]["to"], v["flows"][0]["examples"], v["moved"], v["held"]
('(none)', 'low', ['c3'], 2, 1)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from segmenter.assign import Segmenter
from segmenter.hysteresis import AssignmentLike

NONE = "(none)"  # a customer with no segment in a segmentation (never evaluated in it)


@dataclass(frozen=True)
class CandidateSegment:
    """A customer's segment under the candidate config in one segmentation.

    ``held``: the candidate would put them elsewhere, but its hysteresis keeps
    them here for now (minimum dwell or distance margin): a move for later.
    """

    segment: str
    held: bool


def candidate_outcome(
    segmenter: Segmenter,
    customer_id: str,
    features: Mapping[str, Any],
    current: Mapping[str, AssignmentLike],
    now_ms: int,
    traits: Mapping[str, float | str | None] | None = None,
) -> dict[str, CandidateSegment]:
    """Each segmentation's segment for ``customer_id`` if ``segmenter``'s config went
    live at ``now_ms``, given the customer's ``current`` assignments and profile
    ``traits`` (:func:`features.traits.trait_features`). Pure: the segmenter does
    not learn, nothing is written."""
    evaluation = segmenter.evaluate(customer_id, dict(features), current, now_ms, "preview", traits=traits, assignments_only=True)
    return {name: CandidateSegment(a.segment, held=a.segment != evaluation.targets.get(name, a.segment)) for name, a in evaluation.assignments.items()}


@dataclass
class _Segmentation:
    now: Counter[str] = field(default_factory=Counter)
    candidate: Counter[str] = field(default_factory=Counter)
    flows: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    held: int = 0


class PreviewTally:
    """Sizes, flows and examples of a preview, per segmentation; memory bounded by
    the number of segments (``examples`` customer ids per flow), not customers."""

    def __init__(self, segmentations: Iterable[str], examples: int = 3) -> None:
        self.examples = examples
        self.customers = 0
        self._by_name = {name: _Segmentation() for name in segmentations}

    def add(self, customer_id: str, now: Mapping[str, str], candidate: Mapping[str, CandidateSegment]) -> None:
        """Count one customer: ``now`` their stored segments, ``candidate`` their outcome."""
        self.customers += 1
        for name, s in self._by_name.items():
            before = now.get(name, NONE)
            outcome = candidate.get(name)
            after = NONE if outcome is None else outcome.segment
            s.now[before] += 1
            s.candidate[after] += 1
            s.held += bool(outcome and outcome.held)
            s.flows[before, after] += 1
            if before != after:
                shown = s.examples.setdefault((before, after), [])
                if len(shown) < self.examples:
                    shown.append(customer_id)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: per segmentation ``sizes`` (segment -> now, candidate), ``matrix``
        (from -> to -> customers, stayers included), ``flows`` (the moves, largest
        first, with examples), ``moved`` and ``held``."""
        out: dict[str, Any] = {}
        for name, s in self._by_name.items():
            segments = sorted(set(s.now) | set(s.candidate))
            moves = sorted(((k, n) for k, n in s.flows.items() if k[0] != k[1]), key=lambda kn: (-kn[1], kn[0]))
            matrix: dict[str, dict[str, int]] = {}
            for (a, b), n in sorted(s.flows.items()):
                matrix.setdefault(a, {})[b] = n
            out[name] = {
                "sizes": {seg: {"now": s.now[seg], "candidate": s.candidate[seg]} for seg in segments},
                "matrix": matrix,
                "flows": [{"from": a, "to": b, "customers": n, "examples": s.examples.get((a, b), [])} for (a, b), n in moves],
                "moved": sum(n for _, n in moves),
                "held": s.held,
            }
        return {"customers": self.customers, "segmentations": out}


def format_preview(view: Mapping[str, Any]) -> str:
    """The text report of :meth:`PreviewTally.as_dict` (plus the shell's ``as_of``/``model`` lines)."""
    lines = [
        f"preview of {view.get('candidate', 'the candidate config')} on {view['customers']:,} customers"
        + (f" as of {view['as_of']}" if "as_of" in view else "")
    ]
    if "model" in view:
        lines.append(f"models: {view['model']}")
    for name, s in view["segmentations"].items():
        total = max(view["customers"], 1)
        lines += ["", f"{name}: {s['moved']:,} would move now ({100 * s['moved'] / total:.1f}%), {s['held']:,} held by hysteresis (would move later)"]
        lines.append(f"  {'segment':<20} {'now':>9} {'candidate':>10} {'change':>8}")
        for seg, n in s["sizes"].items():
            lines.append(f"  {seg:<20} {n['now']:>9,} {n['candidate']:>10,} {n['candidate'] - n['now']:>+8,}")
        if s["flows"]:
            lines.append("  flows (now -> candidate):")
            for f in s["flows"]:
                lines.append(f"    {f['from'] + ' -> ' + f['to']:<34} {f['customers']:>8,}   e.g. {', '.join(f['examples'])}")
    return "\n".join(lines)
