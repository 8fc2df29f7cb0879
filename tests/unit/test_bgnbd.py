"""BG/NBD against lifetimes 0.11.3 on CDNOW, the paper's numbers, and its properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from segmenter.bgnbd import (
    CDNOW_DAILY,
    CDNOW_WEEKLY,
    DEFAULT_PRIOR,
    BGNBDParams,
    expected_purchases,
    expected_purchases_new,
    fit,
    log_likelihood,
    p_alive,
    p_no_purchase,
    silence_until,
)

with warnings.catch_warnings():  # lifetimes 0.11.3 sets, at import, a pandas option pandas 3 deprecates
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter
    from lifetimes.datasets import load_cdnow_summary, load_dataset
    from lifetimes.utils import summary_data_from_transaction_data

PAPER_SAMPLE = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)  # Fader, Hardie & Lee (2005), CDNOW 1/10 sample, weeks


def _lifetimes_params(fitter: BetaGeoFitter) -> BGNBDParams:
    return BGNBDParams.from_dict({name: float(fitter.params_[name]) for name in ("r", "alpha", "a", "b")})


def _lifetimes_ll(params: BGNBDParams, x, t_x, T) -> float:
    """lifetimes' own (mean, negative) log-likelihood, back to a total, in the caller's time unit."""
    log_params = np.log([params.r, params.alpha, params.a, params.b])
    weights = np.ones(len(x))
    return -float(BetaGeoFitter._negative_log_likelihood(log_params, x, t_x, T, weights, 0.0)) * len(x)


@pytest.fixture(scope="module")
def cdnow():
    """CDNOW summaries with lifetimes' fits: weekly to 1997-09-30 (calibration) and 1998-06-30 (full log), daily to 1998-06-30."""
    # The file has a header row; dates are YYYYMMDD.
    tx = load_dataset("CDNOW_master.txt", sep=r"\s+", header=0, names=["customer_id", "date", "quantity", "amount"], dtype={"customer_id": str, "date": str})
    tx["date"] = pd.to_datetime(tx["date"], format="%Y%m%d")
    out = {}
    for name, end, freq in (("calibration", "1997-09-30", "W"), ("full", "1998-06-30", "W"), ("full_daily", "1998-06-30", "D")):
        s = summary_data_from_transaction_data(tx, "customer_id", "date", observation_period_end=end, freq=freq)
        x, t_x, T = (s[c].to_numpy(dtype=np.float64) for c in ("frequency", "recency", "T"))
        fitter = BetaGeoFitter(penalizer_coef=0.0).fit(x, t_x, T)
        out[name] = (x, t_x, T, fitter)
    return out


@pytest.fixture(scope="module")
def fitted(cdnow):
    return {name: fit(x, t_x, T) for name, (x, t_x, T, _) in cdnow.items()}


@pytest.mark.parametrize("name", ["calibration", "full", "full_daily"])
def test_fit_matches_lifetimes_on_cdnow(cdnow, fitted, name):
    x, t_x, T, fitter = cdnow[name]
    theirs = _lifetimes_params(fitter)
    for key, value in theirs.as_dict().items():
        assert fitted[name].as_dict()[key] == pytest.approx(value, rel=1e-3), key
    # Ours is at least as likely as theirs.
    assert log_likelihood(fitted[name], x, t_x, T) >= log_likelihood(theirs, x, t_x, T) - 1e-6


@pytest.mark.parametrize("name", ["calibration", "full", "full_daily"])
def test_log_likelihood_matches_lifetimes(cdnow, name):
    x, t_x, T, fitter = cdnow[name]
    theirs = _lifetimes_params(fitter)
    ours = log_likelihood(theirs, x, t_x, T)
    assert ours == pytest.approx(_lifetimes_ll(theirs, x, t_x, T), rel=1e-6)
    # lifetimes' stored optimum is in its internal time unit (largest T = 1): a
    # time scale s shifts the log-likelihood by -sum(x) log(s).
    scale = 1.0 / T.max()
    assert ours - x.sum() * math.log(scale) == pytest.approx(-fitter._negative_log_likelihood_ * len(x), rel=1e-6)


@pytest.mark.parametrize("name", ["calibration", "full", "full_daily"])
def test_predictions_match_lifetimes_on_every_customer(cdnow, name):
    x, t_x, T, fitter = cdnow[name]
    params = _lifetimes_params(fitter)
    np.testing.assert_allclose(p_alive(params, x, t_x, T), fitter.conditional_probability_alive(x, t_x, T), rtol=1e-6, atol=1e-12)
    for t in (1.0, 10.0, 39.0, 52.0):
        theirs = fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        np.testing.assert_allclose(expected_purchases(params, t, x, t_x, T), theirs, rtol=1e-6, atol=1e-12)
    horizons = np.array([1.0, 10.0, 39.0, 78.0])
    np.testing.assert_allclose(expected_purchases_new(params, horizons), fitter.expected_number_of_purchases_up_to_time(horizons), rtol=1e-6)


def test_the_cdnow_constants_are_the_full_log_fits(fitted):
    for name, constant in (("full", CDNOW_WEEKLY), ("full_daily", CDNOW_DAILY)):
        for key, value in fitted[name].as_dict().items():
            assert constant.as_dict()[key] == pytest.approx(value, rel=1e-5), (name, key)
    assert DEFAULT_PRIOR == CDNOW_DAILY


def test_paper_sample_parameters():
    """The paper's 1/10 sample (2,357 customers, exact weeks) gives its Table 1 values."""
    s = load_cdnow_summary()
    x, t_x, T = (s[c].to_numpy(dtype=np.float64) for c in ("frequency", "recency", "T"))
    ours = fit(x, t_x, T)
    for key, value in PAPER_SAMPLE.as_dict().items():
        assert ours.as_dict()[key] == pytest.approx(value, abs=5e-4), key
    assert log_likelihood(ours, x, t_x, T) == pytest.approx(-9582.4, abs=0.05)  # the paper's LL


def test_the_cdnow_evaluations_paper_sample_reference_refits_the_paper():
    """lab.cdnow's reference row: the paper's sample from its raw transactions, in days
    with the evaluation's calendar cut, gives the paper's parameters (alpha in days)."""
    from lab.cdnow import paper_sample_holdout

    ref = paper_sample_holdout()
    assert ref["customers"] == 2357
    for key, value in PAPER_SAMPLE.scaled(7.0).as_dict().items():
        assert ref["params"][key] == pytest.approx(value, rel=2e-3), key
    assert ref["actual_total"] > 0 and ref["gap"] == pytest.approx(ref["expected_total"] / ref["actual_total"] - 1)


def test_p_no_purchase_is_the_likelihood_ratio_of_a_longer_silence(cdnow):
    """P(no purchase in (T, T+t]) = L(x, t_x, T+t) / L(x, t_x, T), with lifetimes' likelihood."""
    x, t_x, T, fitter = cdnow["calibration"]
    params = _lifetimes_params(fitter)
    rows = np.unique(np.stack([x, t_x, T], axis=1), axis=0)[::25]
    for xi, ti, Ti in rows:
        for t in (1.0, 13.0, 52.0):
            ratio = math.exp(
                _lifetimes_ll(params, np.array([xi]), np.array([ti]), np.array([Ti + t]))
                - _lifetimes_ll(params, np.array([xi]), np.array([ti]), np.array([Ti]))
            )
            assert p_no_purchase(params, t, xi, ti, Ti) == pytest.approx(ratio, rel=1e-9)


def test_p_no_purchase_of_a_new_customer_is_eq_8_at_zero(cdnow):
    fitter = cdnow["full"][3]
    params = _lifetimes_params(fitter)
    for t in (1.0, 10.0, 52.0):
        assert p_no_purchase(params, t, 0, 0.0, 0.0) == pytest.approx(float(fitter.probability_of_n_purchases_up_to_time(t, 0)), rel=1e-9)


def test_weights_equal_uncompressed_rows(cdnow):
    x, t_x, T, _ = cdnow["calibration"]
    rows, counts = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
    assert len(rows) < len(x) / 10
    compressed = fit(rows[:, 0], rows[:, 1], rows[:, 2], weights=counts)
    full = fit(x, t_x, T)
    for key, value in full.as_dict().items():
        assert compressed.as_dict()[key] == pytest.approx(value, rel=1e-9), key
    assert log_likelihood(full, rows[:, 0], rows[:, 1], rows[:, 2], weights=counts) == pytest.approx(log_likelihood(full, x, t_x, T), rel=1e-12)


def test_scaled_parameters_give_the_same_predictions():
    days = PAPER_SAMPLE.scaled(7.0)
    assert days.alpha == pytest.approx(7 * PAPER_SAMPLE.alpha) and (days.r, days.a, days.b) == (PAPER_SAMPLE.r, PAPER_SAMPLE.a, PAPER_SAMPLE.b)
    assert p_alive(days, 3, 70.0, 140.0) == pytest.approx(p_alive(PAPER_SAMPLE, 3, 10.0, 20.0))
    assert expected_purchases(days, 91.0, 3, 70.0, 140.0) == pytest.approx(expected_purchases(PAPER_SAMPLE, 13.0, 3, 10.0, 20.0))
    assert p_no_purchase(days, 91.0, 3, 70.0, 140.0) == pytest.approx(p_no_purchase(PAPER_SAMPLE, 13.0, 3, 10.0, 20.0))


def test_scalars_in_floats_out():
    assert isinstance(p_alive(PAPER_SAMPLE, 1, 2.0, 3.0), float)
    assert isinstance(expected_purchases(PAPER_SAMPLE, 5.0, 1, 2.0, 3.0), float)
    assert isinstance(p_no_purchase(PAPER_SAMPLE, 5.0, 1, 2.0, 3.0), float)
    assert isinstance(expected_purchases_new(PAPER_SAMPLE, 5.0), float)


@pytest.mark.parametrize(
    ("x", "t_x", "T", "message"),
    [
        ([], [], [], "empty"),
        ([1, 2], [1.0], [2.0, 3.0], "one length"),
        ([-1], [0.0], [1.0], "non-negative integers"),
        ([1.5], [1.0], [2.0], "non-negative integers"),
        ([1], [3.0], [2.0], "t_x <= T"),
        ([0], [1.0], [2.0], "t_x must be 0"),
        ([1], [math.nan], [2.0], "finite"),
        ([0, 0], [0.0, 0.0], [5.0, 6.0], "repeat purchase"),
    ],
)
def test_fit_rejects_invalid_input(x, t_x, T, message):
    with pytest.raises(ValueError, match=message):
        fit(x, t_x, T)


def test_fit_rejects_bad_weights_and_penalizer():
    with pytest.raises(ValueError, match="weights"):
        fit([1, 0], [1.0, 0.0], [2.0, 2.0], weights=[1, -1])
    with pytest.raises(ValueError, match="penalizer"):
        fit([1, 0], [1.0, 0.0], [2.0, 2.0], penalizer=-1.0)


# Properties -----------------------------------------------------------------

params_st = st.builds(
    BGNBDParams,
    r=st.floats(0.01, 20.0),
    alpha=st.floats(0.01, 1000.0),
    a=st.floats(0.01, 20.0),
    b=st.floats(0.01, 20.0),
)


@st.composite
def histories(draw):
    x = draw(st.integers(0, 200))
    T = draw(st.floats(0.0, 3650.0))
    t_x = 0.0 if x == 0 else draw(st.floats(0.0, 1.0)) * T
    return x, t_x, T


times = st.floats(0.0, 3650.0)


@given(params_st, histories(), times)
def test_p_no_purchase_is_a_probability(params, history, t):
    assert 0.0 <= p_no_purchase(params, t, *history) <= 1.0


@given(params_st, histories(), times, times)
def test_p_no_purchase_never_falls_with_silence(params, history, t, more):
    x, t_x, T = history
    assert p_no_purchase(params, t, x, t_x, T + more) >= p_no_purchase(params, t, x, t_x, T) - 1e-12


@given(params_st, histories(), times, times)
def test_p_no_purchase_never_rises_with_a_longer_horizon(params, history, t, more):
    # A longer window holds every purchase of the shorter one: fewer chances of none.
    assert p_no_purchase(params, t + more, *history) <= p_no_purchase(params, t, *history) + 1e-12


@given(params_st, st.floats(0.0, 3650.0))
def test_p_alive_is_one_without_repeat_purchase(params, T):
    assert p_alive(params, 0, 0.0, T) == 1.0


@given(params_st, histories(), st.floats(0.0, 1.0), st.floats(0.1, 365.0), st.floats(0.0, 3650.0))
@settings(max_examples=200)
def test_silence_until_is_the_first_time_the_threshold_holds(params, history, threshold, horizon, max_wait):
    x, t_x, T = history
    tol = 1e-6 * max(1.0, max_wait)
    s = silence_until(params, threshold, horizon, x, t_x, T, max_wait, tol=tol)
    if s is None:
        assert p_no_purchase(params, horizon, x, t_x, T + max_wait) < threshold
        return
    assert 0.0 <= s <= max_wait
    assert p_no_purchase(params, horizon, x, t_x, T + s) >= threshold
    if s > 0:
        assert p_no_purchase(params, horizon, x, t_x, T + max(0.0, s - tol)) < threshold


@given(params_st, histories(), times)
def test_expected_purchases_are_finite_and_not_negative(params, history, t):
    assume(abs(params.a - 1.0) > 1e-3)
    value = expected_purchases(params, t, *history)
    assert math.isfinite(value) and value >= 0.0


def test_expected_purchases_near_a_equal_one_is_continuous():
    values = [expected_purchases(BGNBDParams(r=0.5, alpha=10.0, a=a, b=2.0), 30.0, 3, 20.0, 40.0) for a in (1 - 1e-4, 1.0, 1 + 1e-4)]
    assert values[1] == pytest.approx(values[0], rel=1e-3) and values[1] == pytest.approx(values[2], rel=1e-3)
