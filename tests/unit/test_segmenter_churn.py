"""The purchase-rhythm churn model: probabilities, monotone in silence, own rhythm, bounded sample."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from segmenter import bgnbd
from segmenter.churn import CDNOW_PRIOR, ChurnModel, CustomerSample, p_alive, p_no_purchase
from segmenter.rules import project_silence

DAY_MS = 86_400_000
buyers = st.builds(
    lambda days, span, extra: {"purchase_days_total": float(days), "purchase_span_days": span, "days_since_first_purchase": span + extra},
    st.integers(1, 200),
    st.floats(0, 700, allow_nan=False),
    st.floats(0, 700, allow_nan=False),
)
params = st.builds(
    bgnbd.BGNBDParams,
    r=st.floats(0.05, 5),
    alpha=st.floats(1, 200),
    a=st.floats(0.05, 5),
    b=st.floats(0.05, 10),
)


@given(buyers, st.floats(0, 1000, allow_nan=False), st.floats(0, 1000, allow_nan=False))
def test_propensity_is_a_probability_that_only_grows_with_silence(f, early, late):
    model = ChurnModel()
    early, late = sorted((early, late))
    p_early = model.propensity(project_silence(f, early))
    p_late = model.propensity(project_silence(f, late))
    assert p_early is not None and p_late is not None
    assert 0.0 <= p_early <= p_late + 1e-12 <= 1.0 + 1e-12


@given(params, st.integers(0, 60), st.floats(0, 500), st.floats(0, 500), st.floats(1, 400))
@settings(max_examples=200)
def test_the_scalar_formulas_agree_with_the_fitted_module(p, x, t_x, extra, horizon):
    T = t_x + extra
    x = float(x)
    assert abs(p_alive(p, x, t_x, T) - float(bgnbd.p_alive(p, x, t_x, T))) < 1e-9
    assert abs(p_no_purchase(p, horizon, x, t_x, T) - float(bgnbd.p_no_purchase(p, horizon, x, t_x, T))) < 1e-9


def test_no_purchase_no_propensity():
    model = ChurnModel()
    assert model.propensity({"purchase_days_total": 0.0, "days_since_first_purchase": None}) is None
    assert model.predict_one({})["churn_propensity"] is None


def test_a_monthly_buyers_pause_is_not_a_weekly_buyers_silence():
    """The same 45 days of silence: a weekly buyer is likely gone, a monthly buyer less so."""
    model = ChurnModel(horizon_days=90)
    weekly = {"purchase_days_total": 13.0, "purchase_span_days": 84.0, "days_since_first_purchase": 129.0}
    monthly = {"purchase_days_total": 4.0, "purchase_span_days": 90.0, "days_since_first_purchase": 135.0}
    w, m = model.predict_one(weekly), model.predict_one(monthly)
    assert w["p_alive"] < 0.5 < m["p_alive"]
    assert w["churn_propensity"] > m["churn_propensity"]
    # the weekly buyer who just bought is the safest of all
    assert model.propensity({**weekly, "days_since_first_purchase": 84.0}) < m["churn_propensity"]


def test_sample_is_bounded_and_independent_of_order():
    rows = [(f"c{i}", float(i % 5), 1.0, 10.0) for i in range(3000)]
    a, b = CustomerSample(capacity=500), CustomerSample(capacity=500)
    for r in rows:
        a.add(*r)
    for r in reversed(rows):
        b.add(*r)
    assert len(a.rows) <= 500 and set(a.rows) == set(b.rows) and a.rate == b.rate
    assert len(a.rows) > 100  # halving keeps a useful sample


def test_refit_learns_the_population_and_snapshots_round_trip():
    rng = np.random.default_rng(7)
    truth = bgnbd.BGNBDParams(r=1.5, alpha=20.0, a=0.5, b=3.0)
    model = ChurnModel(min_customers=200)
    assert not model.refit() and model.params == CDNOW_PRIOR  # cold start: the prior holds
    now_day = 400.0
    for i in range(1500):
        # simulate a BG/NBD customer from the true parameters over 400 days
        lam, p = rng.gamma(truth.r, 1 / truth.alpha), rng.beta(truth.a, truth.b)
        start = float(rng.uniform(0, 300))
        t, last, x = start, start, 0
        while True:
            t += rng.exponential(1 / lam)
            if t > now_day:
                break
            x, last = x + 1, t
            if rng.random() < p:
                break
        feats = {"purchase_days_total": x + 1.0, "purchase_span_days": last - start, "days_since_first_purchase": now_day - start}
        model.learn_one(f"c{i}", feats, int(now_day * DAY_MS))
    assert model.refit() and model.version == 1
    assert abs(model.params.r - truth.r) / truth.r < 0.5 and abs(model.params.alpha - truth.alpha) / truth.alpha < 0.5
    copy = ChurnModel()
    copy.restore(model.to_dict())
    assert copy.params == model.params and copy.version == 1 and copy.sample.rows == model.sample.rows
