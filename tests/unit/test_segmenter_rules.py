"""Lifecycle rules: first match wins, and the time-driven re-evaluation deadline."""

from __future__ import annotations

import operator

from hypothesis import given, settings
from hypothesis import strategies as st

from features.state import DAY_MS
from segmenter.config import Condition, Rule, RuleSet, default_config
from segmenter.rules import BISECT_TOLERANCE_MS, CLOCK_FEATURES, HORIZON_DAYS, RECHECK_MAX_MS, LifecycleRules, RuleBook, project_silence, recheck_ms

CONFIG = default_config()
LIFECYCLE = LifecycleRules(CONFIG)
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne}

FEATURES = ("days_since_last_activity", "tenure_days", "purchases_90d", "engagement_score")
values = st.none() | st.integers(0, 100).map(float)


@st.composite
def conditions(draw, features=FEATURES):
    op = draw(st.sampled_from((*tuple(OPS), "is_null", "not_null")))
    value = None if op in ("is_null", "not_null") else float(draw(st.integers(0, 100)))
    return Condition(feature=draw(st.sampled_from(features)), op=op, value=value)


@st.composite
def rulebooks(draw, features=FEATURES):
    segments = ("a", "b", "c", "d")
    rules = tuple(
        Rule(id=f"r{i}", segment=draw(st.sampled_from(segments)), when=tuple(draw(st.lists(conditions(features), min_size=1, max_size=3))))
        for i in range(draw(st.integers(0, 6)))
    )
    return RuleSet(segments=segments, default="d", rules=rules)


feature_vectors = st.fixed_dictionaries({f: values for f in FEATURES})


def test_condition_semantics_match_python_with_none_false():
    for op, fn in OPS.items():
        for v in (None, 1.0, 2.0, 3.0):
            expected = False if v is None else fn(v, 2.0)
            assert Condition(feature="tenure_days", op=op, value=2).holds({"tenure_days": v}) is expected
    assert Condition(feature="tenure_days", op="is_null").holds({}) is True
    assert Condition(feature="tenure_days", op="not_null").holds({"tenure_days": 0.0}) is True


@given(rulebooks(), feature_vectors)
def test_first_matching_rule_wins(rules, f):
    book = RuleBook(rules)
    segment, rule_id = book.assign(f)
    matching = [r for r in rules.rules if r.matches(f)]
    if matching:
        assert (segment, rule_id) == (matching[0].segment, matching[0].id)
    else:
        assert (segment, rule_id) == ("d", "default")


@given(rulebooks(), feature_vectors, st.integers(0, 6))
def test_a_rule_never_overrides_an_earlier_match(rules, f, at):
    """Inserting a rule after the winning one never changes the outcome."""
    before = RuleBook(rules).assign(f)
    if before[1] == "default":
        return
    winner = [r.id for r in rules.rules].index(before[1])
    at = max(at, winner + 1)
    catch_all = Rule(id="zz", segment="c", when=(Condition(feature="tenure_days", op="is_null"),), any=(Condition(feature="tenure_days", op="not_null"),))
    extended = rules.model_copy(update={"rules": (*rules.rules[:at], catch_all, *rules.rules[at:])})
    assert RuleBook(extended).assign(f) == before


def test_default_lifecycle_priorities():
    never_bought = {"tenure_days": 5.0, "days_since_last_activity": 1.0, "purchase_days_total": 0.0}
    assert LIFECYCLE.assign(never_bought) == ("new", "first_two_weeks")
    assert LIFECYCLE.assign({**never_bought, "tenure_days": 40.0}) == ("active", "default")
    assert LIFECYCLE.assign({**never_bought, "tenure_days": 40.0, "days_since_last_activity": 31.0}) == ("dormant", "silent_30d")
    assert LIFECYCLE.assign({**never_bought, "tenure_days": 90.0, "days_since_last_activity": 61.0}) == ("churned", "silent_60d")
    # a buyer: their own rhythm, not a fixed silence
    weekly = {"tenure_days": 100.0, "purchase_days_total": 13.0, "purchase_span_days": 84.0, "days_since_first_purchase": 84.0}
    assert LIFECYCLE.assign({**weekly, "days_since_last_activity": 0.0}) == ("active", "default")
    # with the CDNOW prior (no fitted population yet) a weekly buyer's propensity passes 0.85 after ~9 silent weeks
    assert LIFECYCLE.assign({**weekly, "days_since_last_activity": 60.0, "days_since_first_purchase": 144.0})[0] == "active"
    assert LIFECYCLE.assign({**weekly, "days_since_last_activity": 70.0, "days_since_first_purchase": 154.0})[0] in ("at_risk", "dormant", "churned")
    # a given churn score is used as is; otherwise it is computed
    assert LIFECYCLE.assign({**weekly, "days_since_last_activity": 8.0, "churn_propensity": 0.86}) == ("at_risk", "rhythm_at_risk")


# -- deadlines ----------------------------------------------------------------------

clock_vectors = st.fixed_dictionaries(
    {
        "days_since_last_activity": st.floats(0, 120, allow_nan=False),
        "days_since_last_login": st.none() | st.floats(0, 120, allow_nan=False),
        "tenure_days": st.floats(0, 400, allow_nan=False),
        "days_since_first_purchase": st.none() | st.floats(0, 400, allow_nan=False),
        "purchase_days_total": st.sampled_from([0.0, 1.0, 3.0, 20.0]),
        "purchase_span_days": st.floats(0, 300, allow_nan=False),
    }
)


def truths(book: RuleBook, f: dict) -> list[bool]:
    d = book.derive(f)
    return [c.holds(d) for c in book.conditions()]


@given(clock_vectors, st.integers(0, 10**13), st.floats(0, 1, exclude_max=True))
@settings(max_examples=150, deadline=None)
def test_nothing_changes_before_the_deadline_and_something_at_it(f, now_ms, fraction):
    """Following the deadlines of a silent customer, as the engine does: nothing
    flips between two of them, and a flip comes within a few (a model's
    forecast is re-checked halfway or weekly, recheck_ms), never a deadline after it."""
    now_truths = truths(LIFECYCLE, f)
    at_ms, features = now_ms, f
    for _ in range(int(HORIZON_DAYS * DAY_MS / RECHECK_MAX_MS) + 12):  # weekly re-checks of a forecast, and the clock flips
        deadline = LIFECYCLE.next_deadline_ms(features, at_ms)
        if deadline is None:
            for days in (1.0, 10.0, 100.0, 399.0):
                assert truths(LIFECYCLE, project_silence(features, days)) == now_truths
            return
        assert deadline > at_ms
        # strictly before (minus the bisection tolerance), every condition is as now
        before = at_ms + int((deadline - at_ms - BISECT_TOLERANCE_MS) * fraction)
        if before > at_ms:
            assert truths(LIFECYCLE, project_silence(features, (before - at_ms) / DAY_MS)) == now_truths
        at_ms, features = deadline, project_silence(features, (deadline - at_ms) / DAY_MS)
        if truths(LIFECYCLE, features) != now_truths:
            return  # something flipped at the deadline
    raise AssertionError("no flip within the horizon's deadlines")


def test_a_model_forecast_is_rechecked_halfway():
    """A weekly buyer's propensity passes 0.85 weeks from now: the deadline is a
    re-check halfway there (a refit may bring the flip closer), not the forecast."""
    weekly = {"purchase_days_total": 13.0, "purchase_span_days": 84.0, "days_since_first_purchase": 91.0}
    rules = RuleSet(
        segments=("at_risk", "active"),
        default="active",
        rules=(Rule(id="r", segment="at_risk", when=(Condition(feature="churn_propensity", op=">=", value=0.85),)),),
    )

    def book(refitted: frozenset[str]) -> RuleBook:
        return RuleBook(rules, LIFECYCLE.derive, LIFECYCLE.time_derived, refitted=refitted)

    forecast = book(frozenset()).next_deadline_ms(weekly, 0)
    assert forecast is not None and forecast > 20 * DAY_MS
    assert book(frozenset({"churn_propensity"})).next_deadline_ms(weekly, 0) == recheck_ms(forecast) < forecast


@given(
    rulebooks(features=tuple(sorted(CLOCK_FEATURES))),
    st.fixed_dictionaries({f: st.none() | st.floats(0, 200, allow_nan=False) for f in sorted(CLOCK_FEATURES)}),
)
@settings(max_examples=150, deadline=None)
def test_clock_deadline_is_exact(rules, f):
    """Clock features grow one per day: the deadline is the exact crossing."""
    book = RuleBook(rules, derive=lambda x: x, time_derived={})
    deadline = book.next_deadline_ms(f, 0)
    expected = []  # in days
    for c in book.conditions():
        v = f.get(c.feature)
        if v is not None and c.value is not None and v < c.value:
            expected.append(c.value - v)
        elif v is not None and v == c.value and c.op in ("==", "!="):
            expected.append(1 / DAY_MS)  # true exactly now, false a millisecond later
    if not expected:
        assert deadline is None
        return
    assert abs(deadline - min(expected) * DAY_MS) <= 2  # ms: rounding up, +1 for strict crossings


def test_no_deadline_when_everything_has_already_happened():
    gone = {"days_since_last_activity": 90.0, "tenure_days": 400.0, "purchase_days_total": 0.0}
    assert LIFECYCLE.assign(gone) == ("churned", "silent_60d")
    assert LIFECYCLE.next_deadline_ms(gone, 1_000) is None


def test_churn_deadline_found_by_bisection():
    """A buyer every 7 days for 12 weeks goes silent: following the deadlines alone
    (no event), the customer leaves `active` for `at_risk` exactly at one of them,
    after a few re-checks of the model's forecast (recheck_ms)."""
    f = {"days_since_last_activity": 0.0, "tenure_days": 90.0, "purchase_days_total": 13.0, "purchase_span_days": 84.0, "days_since_first_purchase": 84.0}
    now, seen = 0, []
    while LIFECYCLE.assign(project_silence(f, now / DAY_MS))[0] == "active":
        deadline = LIFECYCLE.next_deadline_ms(project_silence(f, now / DAY_MS), now)
        assert deadline is not None and deadline > now
        seen.append(deadline)
        now = deadline
    days = now / DAY_MS
    assert 7 <= days < 90 and len(seen) <= days * DAY_MS / RECHECK_MAX_MS + 8  # weekly re-checks, then halving
    assert LIFECYCLE.assign(project_silence(f, days))[0] == "at_risk"
    # without a visit habit the engagement rule fires; the purchase rhythm alone also gets there
    rhythm_only = {**f, "engagement_risk": 0.0}
    assert LIFECYCLE.assign(project_silence(rhythm_only, 70.0)) == ("at_risk", "rhythm_at_risk")
    assert LIFECYCLE.assign(project_silence(f, days - 2 * BISECT_TOLERANCE_MS / DAY_MS))[0] == "active"
