"""Churn propensity: bounded, monotone in every risk signal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from segmenter.churn import churn_propensity, churn_signals
from segmenter.rules import project_silence

days = st.floats(0, 3650, allow_nan=False)
maybe_days = st.none() | days
features = st.fixed_dictionaries(
    {
        "days_since_last_activity": days,
        "days_since_last_login": maybe_days,
        "purchase_interval_mean_days": st.none() | st.floats(0, 400, allow_nan=False),
        "engagement_trend": st.none() | st.floats(0, 50, allow_nan=False),
        "failed_logins_7d": st.floats(0, 100, allow_nan=False),
    }
)
more = st.floats(0, 1000, allow_nan=False)


@given(features)
def test_score_is_a_probability(f):
    assert 0.0 <= churn_propensity(f) <= 1.0
    assert all(0.0 <= v <= 1.0 for v in churn_signals(f).values())


@given(features, more)
def test_more_silence_never_lowers_the_score(f, extra):
    longer = {**f, "days_since_last_activity": f["days_since_last_activity"] + extra}
    assert churn_propensity(longer) >= churn_propensity(f)


@given(features, more)
def test_longer_without_login_never_lowers_the_score(f, extra):
    if f["days_since_last_login"] is None:
        return
    longer = {**f, "days_since_last_login": f["days_since_last_login"] + extra}
    assert churn_propensity(longer) >= churn_propensity(f)


@given(features, st.floats(0, 20, allow_nan=False))
def test_more_failed_logins_never_lower_the_score(f, extra):
    assert churn_propensity({**f, "failed_logins_7d": f["failed_logins_7d"] + extra}) >= churn_propensity(f)


@given(features, st.floats(0, 10, allow_nan=False))
def test_a_rising_trend_never_raises_the_score(f, up):
    if f["engagement_trend"] is None:
        return
    assert churn_propensity({**f, "engagement_trend": f["engagement_trend"] + up}) <= churn_propensity(f)


@given(features, more, more)
@settings(max_examples=200)
def test_time_passing_in_silence_never_lowers_the_score(f, t1, t2):
    # What the deadline bisection relies on: the score along a silent future is monotone.
    early, late = sorted((t1, t2))
    assert churn_propensity(project_silence(f, late)) >= churn_propensity(project_silence(f, early))


def test_silence_is_judged_against_the_customers_own_habit():
    weekly = {"days_since_last_activity": 20.0, "purchase_interval_mean_days": 7.0}
    monthly = {"days_since_last_activity": 20.0, "purchase_interval_mean_days": 30.0}
    assert churn_propensity(weekly) > 0.4
    assert churn_propensity(monthly) == 0.0


def test_an_engaged_customer_scores_zero():
    assert churn_propensity({"days_since_last_activity": 0.5, "engagement_trend": 1.5, "days_since_last_login": 1.0}) == 0.0


def test_missing_features_mean_no_signal():
    assert churn_propensity({}) == 0.0


class _Recording(dict):
    """A feature dict that remembers which names were read."""

    def __init__(self, *a):
        super().__init__(*a)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@given(features)
def test_churn_reads_only_its_declared_inputs(f):
    """The deadline search projects only CHURN_INPUTS forward (segmenter.rules.TIME_DERIVED):
    a signal reading another feature must be declared there too."""
    from features.catalogue import FEATURE_NAMES
    from segmenter.churn import CHURN_INPUTS

    every = _Recording({name: 1.0 for name in FEATURE_NAMES})
    every.update(f)
    churn_propensity(every)
    assert every.read <= CHURN_INPUTS
    assert churn_propensity(every) == churn_propensity({k: f.get(k) for k in CHURN_INPUTS})
