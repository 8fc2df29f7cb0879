"""Engagement risk: bounded, monotone in every risk signal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from segmenter.engagement import engagement_risk, engagement_signals
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
    assert 0.0 <= engagement_risk(f) <= 1.0
    assert all(0.0 <= v <= 1.0 for v in engagement_signals(f).values())


@given(features, more)
def test_more_silence_never_lowers_the_score(f, extra):
    longer = {**f, "days_since_last_activity": f["days_since_last_activity"] + extra}
    assert engagement_risk(longer) >= engagement_risk(f)


@given(features, more)
def test_longer_without_login_never_lowers_the_score(f, extra):
    if f["days_since_last_login"] is None:
        return
    longer = {**f, "days_since_last_login": f["days_since_last_login"] + extra}
    assert engagement_risk(longer) >= engagement_risk(f)


@given(features, st.floats(0, 20, allow_nan=False))
def test_more_failed_logins_never_lower_the_score(f, extra):
    assert engagement_risk({**f, "failed_logins_7d": f["failed_logins_7d"] + extra}) >= engagement_risk(f)


@given(features, st.floats(0, 10, allow_nan=False))
def test_a_rising_trend_never_raises_the_score(f, up):
    if f["engagement_trend"] is None:
        return
    assert engagement_risk({**f, "engagement_trend": f["engagement_trend"] + up}) <= engagement_risk(f)


@given(features, more, more)
@settings(max_examples=200)
def test_time_passing_in_silence_never_lowers_the_score(f, t1, t2):
    # What the deadline bisection relies on: the score along a silent future is monotone.
    early, late = sorted((t1, t2))
    assert engagement_risk(project_silence(f, late)) >= engagement_risk(project_silence(f, early))


def test_silence_is_judged_against_the_customers_own_habit():
    weekly = {"days_since_last_activity": 20.0, "purchase_interval_mean_days": 7.0}
    monthly = {"days_since_last_activity": 20.0, "purchase_interval_mean_days": 30.0}
    assert engagement_risk(weekly) > 0.4
    assert engagement_risk(monthly) == 0.0


def test_an_engaged_customer_scores_zero():
    assert engagement_risk({"days_since_last_activity": 0.5, "engagement_trend": 1.5, "days_since_last_login": 1.0}) == 0.0


def test_missing_features_mean_no_signal():
    assert engagement_risk({}) == 0.0


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
def test_risk_reads_only_its_declared_inputs(f):
    """The deadline search projects only ENGAGEMENT_INPUTS forward (segmenter.rules.TIME_DERIVED):
    a signal reading another feature must be declared there too."""
    from features.catalogue import FEATURE_NAMES
    from segmenter.engagement import ENGAGEMENT_INPUTS

    every = _Recording({name: 1.0 for name in FEATURE_NAMES})
    every.update(f)
    engagement_risk(every)
    assert every.read <= ENGAGEMENT_INPUTS
    assert engagement_risk(every) == engagement_risk({k: every.get(k) for k in ENGAGEMENT_INPUTS})
