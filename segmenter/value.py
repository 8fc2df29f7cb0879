"""Value segments: RFM scores from streaming quintiles, then ordered rules.

Recency (days since the last purchase: fewer is better), frequency and
monetary value (more is better) are each scored 1..5 by where the customer
falls among the population's quintile boundaries (20/40/60/80 %). The
boundaries are learned online with River's P² ``stats.Quantile`` (O(1) per
update, a handful of floats of state) from purchasers only: RFM describes
buyers, and counting never-buyers would pin the frequency quintiles to 0.
Until ``min_population`` purchasers were seen, fixed ``cold_start_boundaries``
from the config stand in. Recency always uses its configured boundaries (days):
features are observed at the moment customers act, when their recency is 0.

>>> from segmenter.config import default_config
>>> value = ValueSegmentation(default_config().value)
>>> best = {"days_since_last_purchase": 2.0, "purchases_total": 12.0, "revenue_total": 900.0}
>>> value.scorer.scores(best)
{'recency_score': 5, 'frequency_score': 5, 'monetary_score': 5}
>>> value.assign(best)
('champions', 'best_on_all_three')
>>> value.assign({"purchases_total": 0.0, "revenue_total": 0.0, "days_since_last_activity": 3.0})
('need_attention', 'active_no_purchase')
"""

from __future__ import annotations

import math

from river import stats

from features.state import DAY_MS
from segmenter.config import ValueConfig
from segmenter.rules import Features, RuleBook

QUINTILES = (0.2, 0.4, 0.6, 0.8)
DIMENSIONS = ("recency", "frequency", "monetary")


class RFMScorer:
    """Streaming quintile boundaries per dimension; ``learn_one`` / ``scores``."""

    def __init__(self, config: ValueConfig):
        self.feature = {"recency": config.recency, "frequency": config.frequency, "monetary": config.monetary}
        self.min_population = config.min_population
        self.cold_start = {dim: tuple(getattr(config.cold_start_boundaries, dim)) for dim in DIMENSIONS}
        self.quantiles = {dim: [stats.Quantile(q) for q in QUINTILES] for dim in DIMENSIONS}
        self.n_learned = 0
        self._boundaries: dict[str, tuple[float, ...]] = {}  # cache, cleared by learn_one

    def is_purchaser(self, features: Features) -> bool:
        return (features.get(self.feature["frequency"]) or 0.0) >= 1

    def learn_one(self, features: Features) -> None:
        if not self.is_purchaser(features):
            return
        for dim in DIMENSIONS:
            v = features.get(self.feature[dim])
            if v is not None:
                for q in self.quantiles[dim]:
                    q.update(v)
        self.n_learned += 1
        self._boundaries.clear()

    def boundaries(self, dim: str) -> tuple[float, ...]:
        """The four ascending quintile boundaries now used for ``dim``."""
        # Recency keeps its configured day boundaries: the model learns when
        # customers act, and a purchase's own recency is 0 days, so learned
        # recency quintiles collapse to 0 and score every buyer "lost" a
        # millisecond after buying (seen on the CDNOW replay).
        if dim == "recency" or self.n_learned < self.min_population:
            return self.cold_start[dim]
        cached = self._boundaries.get(dim)
        if cached is None:
            learned = [b for q in self.quantiles[dim] if (b := q.get()) is not None]
            if len(learned) < len(QUINTILES):
                # No purchaser had a value for this dimension yet (e.g. a monetary
                # feature that can be None): nothing learned to replace the config.
                return self.cold_start[dim]
            # Four independent estimators can cross by a hair; scores need order.
            cached = self._boundaries[dim] = tuple(sorted(learned))
        return cached

    def score(self, dim: str, value: float | None) -> int:
        """1..5, 5 best; a missing value scores 1 (no purchase: worst recency)."""
        if value is None:
            return 1
        b = self.boundaries(dim)
        if dim == "recency":
            return 1 + sum(value < x for x in b)
        return 1 + sum(value > x for x in b)

    def scores(self, features: Features) -> dict[str, int]:
        return {f"{dim}_score": self.score(dim, features.get(self.feature[dim])) for dim in DIMENSIONS}

    def recency_change_days(self, features: Features) -> float | None:
        """Days until the recency score drops by silence alone (the next boundary)."""
        v = features.get(self.feature["recency"])
        if v is None:
            return None
        ahead = [b - v for b in self.boundaries("recency") if b > v]
        return min(ahead) if ahead else None


class ValueSegmentation:
    """RFM scores + the config's ordered value rules (``champions`` ... ``lost``)."""

    def __init__(self, config: ValueConfig, scorer: RFMScorer | None = None):
        self.config = config
        self.scorer = scorer or RFMScorer(config)
        self.rules = RuleBook(config, self.derive)

    @property
    def segments(self) -> tuple[str, ...]:
        return self.rules.segments

    def derive(self, features: Features) -> Features:
        return {**features, **self.scorer.scores(features)}

    def learn_one(self, features: Features) -> None:
        self.scorer.learn_one(features)

    def assign(self, features: Features) -> tuple[str, str]:
        """``(segment, rule id)``."""
        return self.rules.assign(features)

    def reason(self, features: Features, rule_id: str) -> str:
        s = self.scorer.scores(features)
        return f"{rule_id} R{s['recency_score']}F{s['frequency_score']}M{s['monetary_score']}"

    def next_deadline_ms(self, features: Features, now_ms: int) -> int | None:
        """Earliest time silence alone could change the value segment, or None."""
        candidates = [self.rules.next_deadline_ms(features, now_ms)]
        days = self.scorer.recency_change_days(features)
        if days is not None:
            # just past the boundary: the score counts `value < boundary`
            candidates.append(now_ms + math.ceil(days * DAY_MS) + 1)
        pending = [c for c in candidates if c is not None and c > now_ms]
        return min(pending) if pending else None
