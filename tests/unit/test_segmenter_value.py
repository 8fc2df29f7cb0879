"""RFM value segments: streaming quintiles, scores 1..5, rules."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from features.state import DAY_MS
from segmenter.config import default_config
from segmenter.value import RFMScorer, ValueSegmentation

CONFIG = default_config().value


def population(n: int, seed: int = 1):
    rng = random.Random(seed)
    for _ in range(n):
        purchases = float(rng.randint(1, 20))
        yield {
            "days_since_last_purchase": rng.uniform(0, 100),
            "purchases_total": purchases,
            "revenue_total": purchases * rng.uniform(10, 50),
        }


def test_cold_start_boundaries_until_min_population():
    scorer = RFMScorer(CONFIG)
    for f in population(CONFIG.min_population - 1):
        scorer.learn_one(f)
    assert scorer.boundaries("frequency") == CONFIG.cold_start_boundaries.frequency
    scorer.learn_one(next(population(1, seed=5)))
    assert scorer.boundaries("frequency") != CONFIG.cold_start_boundaries.frequency
    # recency keeps its configured day boundaries (learned at purchase time it would collapse to 0)
    assert scorer.boundaries("recency") == CONFIG.cold_start_boundaries.recency


def test_learned_quintiles_split_the_population_evenly():
    scorer = RFMScorer(CONFIG)
    people = list(population(3000))
    for f in people:
        scorer.learn_one(f)
    # purchases are uniform on 1..20: each frequency score holds about a fifth
    counts = [0] * 6
    for f in people:
        counts[scorer.score("frequency", f["purchases_total"])] += 1
    assert all(abs(c / len(people) - 0.2) < 0.05 for c in counts[1:]), counts


def test_never_buyers_are_not_learned_and_score_lowest():
    scorer = RFMScorer(CONFIG)
    scorer.learn_one({"purchases_total": 0.0, "revenue_total": 0.0})
    assert scorer.n_learned == 0
    assert scorer.scores({"purchases_total": 0.0, "revenue_total": 0.0}) == {"recency_score": 1, "frequency_score": 1, "monetary_score": 1}


@given(st.floats(0, 1000, allow_nan=False), st.floats(0, 1000, allow_nan=False))
def test_scores_are_monotone(a, b):
    scorer = RFMScorer(CONFIG)
    lo, hi = sorted((a, b))
    assert 1 <= scorer.score("recency", hi) <= scorer.score("recency", lo) <= 5
    assert 1 <= scorer.score("frequency", lo) <= scorer.score("frequency", hi) <= 5
    assert 1 <= scorer.score("monetary", lo) <= scorer.score("monetary", hi) <= 5


def test_value_segments():
    value = ValueSegmentation(CONFIG)
    assert value.assign({"days_since_last_purchase": 3.0, "purchases_total": 12.0, "revenue_total": 900.0})[0] == "champions"
    assert value.assign({"days_since_last_purchase": 20.0, "purchases_total": 3.0, "revenue_total": 100.0})[0] == "loyal"
    assert value.assign({"days_since_last_purchase": 100.0, "purchases_total": 9.0, "revenue_total": 500.0})[0] == "at_risk"
    assert value.assign({"days_since_last_purchase": 5.0, "purchases_total": 1.0, "revenue_total": 10.0})[0] == "need_attention"
    assert value.assign({"days_since_last_purchase": 200.0, "purchases_total": 1.0, "revenue_total": 10.0})[0] == "lost"
    assert value.reason({"days_since_last_purchase": 3.0, "purchases_total": 12.0, "revenue_total": 900.0}, "x") == "x R5F5M5"


def test_recency_deadline_is_the_next_boundary():
    value = ValueSegmentation(CONFIG)
    f = {"days_since_last_purchase": 20.0, "purchases_total": 3.0, "revenue_total": 100.0, "days_since_last_activity": 2.0}
    # boundaries 14, 30, 60, 120: the score drops just after 30 days (in 10 days)
    deadline = value.next_deadline_ms(f, 0)
    assert deadline == 10 * DAY_MS + 1
    assert value.scorer.scores({**f, "days_since_last_purchase": 30.0 + 1e-6})["recency_score"] == 3
    assert value.scorer.scores(f)["recency_score"] == 4
