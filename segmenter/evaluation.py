"""Quality measures of a segmentation run against ground truth: pure, no I/O.

Used by ``segflow evaluate`` (:mod:`lab.evaluate`), which replays a
simulated population through the segmenter and scores it here:

- :func:`adjusted_rand_index` / :func:`contingency`: clusters vs hidden personas;
- :func:`flap_stats`: changes per customer per 30 days and how many undo the
  previous move soon after (A -> B -> A);
- :func:`silence_detection`: precision / recall of ``at_risk`` (and worse)
  against customers the simulator made go silent.

The adjusted Rand index is 1 for identical partitions (up to renaming), about
0 for independent ones (it corrects the Rand index for chance), and can be
negative. Same convention as scikit-learn's ``adjusted_rand_score``:

>>> round(adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]), 6)
0.571429
>>> adjusted_rand_index(["a", "a", "b", "b"], ["y", "y", "x", "x"])
1.0
>>> round(adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]), 6)
-0.5
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segmenter.flaps import flapping_pairs, flaps

DAY_MS = 86_400_000


def _pairs(n: int) -> float:
    return n * (n - 1) / 2


def adjusted_rand_index(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Hubert & Arabie's adjusted Rand index of two labelings of the same items."""
    if len(truth) != len(predicted):
        raise ValueError("both labelings must cover the same items")
    n = len(truth)
    if n < 2:
        return 1.0
    index = sum(_pairs(c) for c in Counter(zip(truth, predicted, strict=False)).values())
    rows = sum(_pairs(c) for c in Counter(truth).values())
    cols = sum(_pairs(c) for c in Counter(predicted).values())
    expected = rows * cols / _pairs(n)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one cluster, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)


def contingency(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{truth label: {predicted label: count}}``, every predicted label in every row.

    >>> contingency(["a", "a", "b"], ["x", "y", "y"])
    {'a': {'x': 1, 'y': 1}, 'b': {'x': 0, 'y': 1}}
    """
    cols = sorted(set(predicted))
    table = {t: {c: 0 for c in cols} for t in sorted(set(truth))}
    for t, p in zip(truth, predicted, strict=False):
        table[t][p] += 1
    return table


@dataclass(frozen=True)
class Move:
    """A segment change, kept small (a replay records tens of thousands).

    Has the attributes :func:`segmenter.flaps.flaps` reads, so the flap
    definition is the product's own.
    """

    customer_id: str
    segmentation: str
    from_segment: str | None
    to_segment: str
    occurred_at_ms: int
    reason: str
    change_id: str


def flap_stats(
    moves: Iterable[Move],
    observed_days: float,
    revert_window_ms: int,
    min_dwell_ms: int = 0,
) -> dict[str, Any]:
    """Change counts and flapping of one segmentation's ``moves``.

    ``observed_days``: customer-days the moves come from (the sum over
    customers of the time from their first assignment to the end), so the
    rate is per customer per 30 days even when customers join late.

    - ``first_assignments``: moves from nothing (not changes of mind);
    - ``changes``: all other moves; ``changes_per_customer_30d`` = changes /
      observed_days * 30;
    - ``reverts``: changes back to the segment the previous change left,
      within ``revert_window_ms`` of it (A -> B -> A); ``revert_share`` =
      reverts / changes that had a previous change to undo;
    - ``reverts_within_dwell``: the same within ``min_dwell_ms`` (hysteresis
      should make it 0);
    - ``transitions``: ``"from -> to"`` counts, most frequent first;
    - ``revert_paths``: ``"A -> B (the rule that moved it) -> A"`` counts, so a
      revert rate says which rule flaps.

    >>> day = DAY_MS
    >>> ms = [Move("c1", "lifecycle", None, "active", 0, "default", "1"),
    ...       Move("c1", "lifecycle", "active", "at_risk", 20 * day, "r", "2"),
    ...       Move("c1", "lifecycle", "at_risk", "active", 22 * day, "default", "3")]
    >>> s = flap_stats(ms, observed_days=60, revert_window_ms=7 * day, min_dwell_ms=day)
    >>> s["changes"], s["changes_per_customer_30d"], s["reverts"], s["revert_share"], s["reverts_within_dwell"]
    (2, 1.0, 1, 1.0, 0)
    """
    moves = list(moves)
    changes = [m for m in moves if m.from_segment is not None]
    pairs, eligible = flapping_pairs(moves, revert_window_ms)
    reverts = len(pairs)
    paths = Counter(f"{a.from_segment} -> {a.to_segment} ({a.reason}) -> {b.to_segment}" for a, b in pairs)
    in_dwell = flaps(moves, min_dwell_ms)[0] if min_dwell_ms > 0 else 0
    transitions = Counter(f"{m.from_segment} -> {m.to_segment}" for m in changes)
    return {
        "first_assignments": len(moves) - len(changes),
        "changes": len(changes),
        "changes_per_customer_30d": round(len(changes) / observed_days * 30, 4) if observed_days > 0 else 0.0,
        "reverts": reverts,
        "revert_candidates": eligible,
        "revert_share": round(reverts / eligible, 4) if eligible else 0.0,
        "reverts_within_dwell": in_dwell,
        "transitions": dict(transitions.most_common()),
        "revert_paths": dict(paths.most_common()),
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def silence_detection(
    lifecycle_moves: Iterable[Move],
    silenced_at_ms: Mapping[str, int],
    final_segment: Mapping[str, str],
    end_ms: int,
    flagged: frozenset[str] | set[str],
    within_ms: int,
    personas: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """How well moves into ``flagged`` lifecycle segments find silenced customers.

    Ground truth: ``silenced_at_ms`` (customer -> when their last event was
    followed by nothing until the end of the run).

    - *timely* (per silenced customer): among customers silenced at least
      ``within_ms`` before ``end_ms``, the share that moved into ``flagged``
      within ``within_ms`` after going silent (``recall_within``), and the
      delay from silence to that move (days: median, p90).
    - *flags* (per move): every move into ``flagged`` from outside it; it is
      right when the customer was already silent then. ``precision_of_flags``
      = right moves / moves; wrong ones are counted by persona.
    - *at end*: customers in ``flagged`` at ``end_ms`` vs customers silent then
      (``precision_at_end``, ``recall_at_end``).

    >>> day = DAY_MS
    >>> ms = [Move("a", "lifecycle", None, "active", 0, "default", "1"),
    ...       Move("a", "lifecycle", "active", "at_risk", 20 * day, "r", "2"),
    ...       Move("b", "lifecycle", None, "active", 0, "default", "3"),
    ...       Move("b", "lifecycle", "active", "at_risk", 30 * day, "r", "4")]
    >>> r = silence_detection(ms, {"a": 5 * day}, {"a": "at_risk", "b": "at_risk"}, 60 * day,
    ...                       {"at_risk"}, within_ms=21 * day)
    >>> r["recall_within"], r["median_delay_days"], r["precision_of_flags"], r["precision_at_end"], r["recall_at_end"]
    (1.0, 15.0, 0.5, 0.5, 1.0)
    """
    by_customer: dict[str, list[Move]] = defaultdict(list)
    for m in lifecycle_moves:
        by_customer[m.customer_id].append(m)
    for ms in by_customer.values():
        ms.sort(key=lambda m: m.occurred_at_ms)

    def entered(m: Move) -> bool:
        return m.to_segment in flagged and m.from_segment not in flagged

    eligible = detected = 0
    delays: list[float] = []
    for cid, t_silent in silenced_at_ms.items():
        if t_silent + within_ms > end_ms:
            continue
        eligible += 1
        first = next((m for m in by_customer.get(cid, ()) if entered(m) and m.occurred_at_ms >= t_silent), None)
        if first is not None and first.occurred_at_ms - t_silent <= within_ms:
            detected += 1
            delays.append((first.occurred_at_ms - t_silent) / DAY_MS)

    flags = right = 0
    wrong_by_persona: Counter[str] = Counter()
    for cid, ms in by_customer.items():
        for m in ms:
            if not entered(m):
                continue
            flags += 1
            silent_since = silenced_at_ms.get(cid)
            if silent_since is not None and silent_since <= m.occurred_at_ms:
                right += 1
            else:
                wrong_by_persona[(personas or {}).get(cid, "?")] += 1

    silent_now = {cid for cid, t in silenced_at_ms.items() if t <= end_ms}
    predicted = {cid for cid, seg in final_segment.items() if seg in flagged}
    hits = len(predicted & silent_now)
    predicted_by_persona = Counter((personas or {}).get(cid, "?") for cid in predicted)

    def q(xs: list[float], p: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2)

    return {
        "flagged_segments": sorted(flagged),
        "within_days": within_ms / DAY_MS,
        "silenced_eligible": eligible,
        "detected_within": detected,
        "recall_within": _ratio(detected, eligible),
        "median_delay_days": round(statistics.median(delays), 2) if delays else None,
        "p90_delay_days": q(delays, 0.9),
        "flags": flags,
        "flags_right": right,
        "precision_of_flags": _ratio(right, flags),
        "wrong_flags_by_persona": dict(wrong_by_persona.most_common()),
        "flagged_at_end": len(predicted),
        "silent_at_end": len(silent_now),
        "precision_at_end": _ratio(hits, len(predicted)),
        "recall_at_end": _ratio(hits, len(silent_now)),
        "flagged_at_end_by_persona": dict(predicted_by_persona.most_common()),
    }
