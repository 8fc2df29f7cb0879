"""Scores for a churn signal against what happened next (pure; numpy and scipy).

Used by ``segflow evaluate --dataset cdnow`` (:mod:`lab.cdnow`): each signal is
a number per customer, higher meaning "more likely gone", scored against the
outcome "no purchase in the holdout".

>>> roc_auc([0.9, 0.8, 0.3, 0.1], [True, True, False, False])
1.0
>>> roc_auc([0.5, 0.5], [True, False])
0.5
>>> round(brier([0.9, 0.2], [True, False]), 3)
0.025
>>> precision_recall([True, True, False, False], [True, False, True, False])
(0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import mannwhitneyu


def roc_auc(scores: Sequence[float], outcomes: Sequence[bool]) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties half."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(outcomes, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("roc_auc needs both outcomes")
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    return float(u) / (int(y.sum()) * int((~y).sum()))


def brier(probabilities: Sequence[float], outcomes: Sequence[bool]) -> float:
    """Mean squared difference between the probability and the outcome (0 is perfect)."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    return float(np.mean((p - y) ** 2))


def reliability(probabilities: Sequence[float], outcomes: Sequence[bool], bins: int = 10) -> list[dict[str, float]]:
    """Customers in ``bins`` equal-count groups by probability: mean predicted vs observed rate.

    >>> [round(r["observed"], 2) for r in reliability([0.1, 0.2, 0.8, 0.9], [False, False, True, True], bins=2)]
    [0.0, 1.0]
    """
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(outcomes, dtype=float)
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append({"customers": float(len(chunk)), "predicted": float(p[chunk].mean()), "observed": float(y[chunk].mean())})
    return out


def precision_recall(flagged: Sequence[bool], outcomes: Sequence[bool]) -> tuple[float, float]:
    """Precision and recall of a yes/no flag for the positive outcome."""
    f = np.asarray(flagged, dtype=bool)
    y = np.asarray(outcomes, dtype=bool)
    hits = int((f & y).sum())
    return (hits / int(f.sum()) if f.any() else 0.0), (hits / int(y.sum()) if y.any() else 0.0)
