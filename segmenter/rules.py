"""Ordered first-match rules, and when time alone will change their outcome.

A silent customer's features keep changing without any event from them:
every ``days_since_*`` feature and ``tenure_days`` grow by one per day. So a
rule such as ``days_since_last_activity >= 30`` will start to hold at a time
we can compute now, and the engine re-evaluates the customer then (a Redis
sorted set of deadlines), not on their next event, which may never come.

:meth:`RuleBook.next_deadline_ms` is the earliest time at which any condition
of any rule could change its truth value, given the features at ``now_ms``:

- a condition on a clock feature (``days_since_*``, ``tenure_days``) with
  current value ``v`` and threshold ``N > v`` flips at ``now + (N - v)`` days;
  nothing pending when ``v >= N`` (these features only grow), or ``v`` is None;
- a condition on ``churn_propensity`` (the purchase-rhythm model,
  :mod:`segmenter.churn`) is found by bisection over :func:`project_silence`,
  which ages the features as if the customer stayed silent (the propensity
  only grows with silence); the RFM recency score has its own closed form
  (:mod:`segmenter.value`);
- a model's score (``churn_propensity``, ``p_active``) flips at a time forecast
  under the model's parameters of now; a refit can bring it closer, so such a
  deadline is a re-check halfway to the forecast (:func:`recheck_ms`), not the
  forecast itself: a few more evaluations per silence, and a flip a refit
  brought closer is seen within half the remaining time or a week;
- other features (windowed counts, ratios) are treated as constant: they only
  change on the customer's next event or as old daily buckets expire, and the
  re-evaluation at the deadline recomputes everything anyway.

Since the outcome of an ordered rule list can only change when some
condition flips, no re-evaluation is missed; an early one simply changes
nothing and schedules the next deadline.

>>> from segmenter.config import default_config
>>> rules = LifecycleRules(default_config())
>>> f = {"days_since_last_activity": 2.0, "tenure_days": 100.0, "purchase_days_total": 0.0}
>>> rules.assign(f)
('active', 'default')
>>> rules.next_deadline_ms(f, now_ms=0) / DAY_MS  # a condition flips at 7 days of silence (rhythm_at_risk's)
5.0
>>> rules.assign({**f, "days_since_last_activity": 30.0})
('dormant', 'silent_30d')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from features.catalogue import CATALOGUE
from features.state import DAY_MS
from segmenter.churn import INPUTS as CHURN_INPUTS
from segmenter.churn import VISIT_INPUTS, ChurnModel
from segmenter.config import ACTIVE_FEATURE, CHURN_FEATURE, ENGAGEMENT_FEATURE, Condition, Rule, RuleSet, SegmentationConfig
from segmenter.engagement import ENGAGEMENT_INPUTS, engagement_risk

Features = dict[str, float | None]
Derive = Callable[[Features], Features]
# A derived feature that changes with silence alone: how it is computed, and the
# features it reads (the deadline search projects only those).
TimeDerived = Mapping[str, tuple[Callable[[Features], float | None], frozenset[str]]]

# Features that grow by exactly one per day of wall/event time, whatever happens.
CLOCK_FEATURES: frozenset[str] = frozenset(f.name for f in CATALOGUE if f.unit == "days" and f.family == "recency")
# Engagement_trend compares the last 7 days with the 30 before; after 7 silent days it is 0.
TREND_FADE_DAYS = 7.0
HORIZON_DAYS = 400.0  # derived scores still below a threshold after this: nothing pending
BISECT_TOLERANCE_MS = 60_000
# A model's forecast flip is re-checked halfway, within these bounds (recheck_ms).
RECHECK_MIN_MS = 2 * DAY_MS  # a forecast this close is kept: a refit rarely moves it by more
RECHECK_MAX_MS = 7 * DAY_MS  # a far one is re-checked weekly: a silent customer costs ~1.7e-6 evaluations/s
FORECAST_TOLERANCE_MS = 3_600_000  # a re-check need not be to the minute: a shorter bisection on the event path
DEFAULT_REASON = "default"


def project_silence(features: Features, days: float) -> Features:
    """``features`` as they will be after ``days`` more days without any event.

    Clock features grow by ``days``; ``engagement_trend`` fades linearly to 0
    over a week (an estimate: the exact value needs the daily buckets);
    everything else is kept.

    >>> project_silence({"days_since_last_login": 3.0, "engagement_trend": 1.0, "purchases_90d": 2.0}, 3.5)
    {'days_since_last_login': 6.5, 'engagement_trend': 0.5, 'purchases_90d': 2.0}
    """
    out = dict(features)
    for name in CLOCK_FEATURES:
        v = out.get(name)
        if v is not None:
            out[name] = v + days
    trend = out.get("engagement_trend")
    if trend is not None:
        out["engagement_trend"] = trend * max(0.0, 1.0 - days / TREND_FADE_DAYS)
    return out


def recheck_ms(forecast_ms: int) -> int:
    """When to look again at a flip a refitted model forecasts ``forecast_ms`` ahead.

    Halfway there, but not sooner than :data:`RECHECK_MIN_MS` (nor later than
    the forecast) and not later than :data:`RECHECK_MAX_MS`: a refit that
    brings the flip closer is seen within half the remaining time or a week.
    Without it, a customer who went silent while the model was young kept the
    late deadline of that day's parameters: on the simulator (800 x 90 days,
    seed 1), 0.81 instead of 0.92 of silenced customers flagged within 21 days,
    for 26% more deadline evaluations (docs/SEGMENTS.md).

    >>> [recheck_ms(d * DAY_MS) / DAY_MS for d in (1.5, 3, 10, 40)]
    [1.5, 2.0, 5.0, 7.0]
    """
    return forecast_ms if forecast_ms <= RECHECK_MIN_MS else min(RECHECK_MAX_MS, max(RECHECK_MIN_MS, forecast_ms // 2))


def unchanged(features: Features) -> Features:
    return features


def clock_flip_days(condition: Condition, value: float | None) -> float | None:
    """Days until a condition on a clock feature changes truth, or None.

    >>> c = Condition(feature="days_since_last_activity", op=">=", value=30)
    >>> clock_flip_days(c, 12.5), clock_flip_days(c, 31.0), clock_flip_days(c, None)
    (17.5, None, None)
    """
    threshold = condition.number
    if value is None or threshold is None:
        return None
    if value < threshold:
        return threshold - value
    if value == threshold and condition.op in ("==", "!="):
        return 0.0  # true exactly now, false from the next instant on (or vice versa)
    return None


class RuleBook:
    """Ordered rules of one segmentation; the first that matches wins.

    ``derive`` adds derived features (churn score, RFM scores) to a feature
    vector; it is also applied to projected features to time their flips.
    """

    def __init__(self, rules: RuleSet, derive: Derive = unchanged, time_derived: TimeDerived | None = None, refitted: frozenset[str] = frozenset()):
        self.rules: tuple[Rule, ...] = tuple(rules.rules)
        self.default: str = rules.default
        self.segments: tuple[str, ...] = tuple(rules.segments)
        self.derive = derive
        # Derived features that change with silence alone (see TIME_DERIVED); the
        # others (RFM frequency, monetary) are constant between events.
        self.time_derived = dict(time_derived or {})
        # Of those, the ones a refitted model computes: their flips are forecasts (recheck_ms).
        self.refitted = refitted
        # Split once: collecting them per evaluation (hashing pydantic models)
        # was most of the cost of next_deadline_ms.
        unique = tuple(self.conditions())
        self._clock_conditions = tuple(c for c in unique if c.feature in CLOCK_FEATURES)
        self._derived_conditions = tuple(c for c in unique if c.feature not in CLOCK_FEATURES and c.feature in self.time_derived)

    def assign(self, features: Features, held_by: str | None = None, traits: Mapping[str, float | str | None] | None = None) -> tuple[str, str]:
        """``(segment, rule id)``; ``(default, 'default')`` when no rule matches.

        ``held_by``: the rule that placed the customer in its current segment;
        its ``stay`` conditions keep the customer there unless an earlier rule matches.
        ``traits``: what the rules see of the profile (features.traits.trait_features).
        """
        seen: Mapping[str, float | str | None] = self.derive(features)
        if traits:
            seen = {**seen, **traits}
        for rule in self.rules:
            if rule.matches(seen) or (rule.id == held_by and rule.stays(seen)):
                return rule.segment, rule.id
        return self.default, DEFAULT_REASON

    def conditions(self) -> Iterable[Condition]:
        """Every distinct condition of every rule."""
        seen = set()
        for rule in self.rules:
            for cond in rule.conditions():
                if cond not in seen:
                    seen.add(cond)
                    yield cond

    def next_deadline_ms(self, features: Features, now_ms: int) -> int | None:
        """Earliest time after ``now_ms`` at which time alone could change a
        condition's truth; None if no condition is pending (see module docs)."""
        best: int | None = None
        for cond in self._clock_conditions:
            days = clock_flip_days(cond, features.get(cond.feature))
            if days is None:
                continue
            at = now_ms + math.ceil(days * DAY_MS) + (1 if days == 0 or cond.op in (">", "<=") else 0)
            if at > now_ms and (best is None or at < best):
                best = at
        horizon_ms = int(HORIZON_DAYS * DAY_MS)
        for cond in self._derived_conditions:
            flipped = self._flip_test(cond, features)
            # Only a flip before the best deadline so far matters: a short search.
            limit_ms = horizon_ms if best is None else min(horizon_ms, best - now_ms)
            if cond.feature not in self.refitted:
                after = _first_flip_ms(flipped, limit_ms)
                if after is not None:
                    best = now_ms + after
                continue
            # A forecast is re-checked at half its flip, at most RECHECK_MAX_MS ahead:
            # search twice as far, and beyond only whether it flips at all.
            after = _first_flip_ms(flipped, min(2 * limit_ms, 2 * RECHECK_MAX_MS, horizon_ms), FORECAST_TOLERANCE_MS)
            if after is not None and after <= RECHECK_MIN_MS + FORECAST_TOLERANCE_MS:
                after = _first_flip_ms(flipped, after)  # near: kept as the deadline, so to the minute
            if after is not None:
                at = now_ms + recheck_ms(after)
            elif limit_ms > RECHECK_MAX_MS and flipped(horizon_ms):
                at = now_ms + RECHECK_MAX_MS
            else:
                continue
            if best is None or at < best:
                best = at
        return best

    def _flip_test(self, cond: Condition, features: Features) -> Callable[[int], bool]:
        """Whether ``cond`` on a derived feature has changed truth after so many ms of silence."""
        derive_one, inputs = self.time_derived[cond.feature]
        # Only what the derived feature reads, from the catalogue values (a derived
        # value passed in with the features would be stale once projected).
        base = {name: features.get(name) for name in inputs}
        now_truth = cond.holds({cond.feature: derive_one(base)})

        def flipped(ms: int) -> bool:
            return cond.holds({cond.feature: derive_one(project_silence(base, ms / DAY_MS))}) != now_truth

        return flipped


def _first_flip_ms(flipped: Callable[[int], bool], limit_ms: int, tolerance_ms: int = BISECT_TOLERANCE_MS) -> int | None:
    """Milliseconds until ``flipped`` turns true, if within ``limit_ms`` (to
    ``tolerance_ms``, rounded up). Derived scores are monotone in silence, so
    their truth flips at most once along the projection: bisect."""
    hi = limit_ms
    if hi <= 0 or not flipped(hi):
        return None
    lo = 0
    while hi - lo > tolerance_ms:
        mid = (lo + hi) // 2
        if flipped(mid):
            hi = mid
        else:
            lo = mid
    return hi


class LifecycleRules(RuleBook):
    """The lifecycle segmentation: new, active, at_risk, dormant, churned."""

    def __init__(self, config: SegmentationConfig, churn: ChurnModel | None = None, visits: ChurnModel | None = None):
        self.churn = churn or ChurnModel(horizon_days=config.churn.horizon_days)
        self.visits = visits or ChurnModel(horizon_days=config.churn.horizon_days, inputs=VISIT_INPUTS)
        super().__init__(
            config.lifecycle,
            self._with_churn,
            {
                CHURN_FEATURE: (self.churn.propensity, CHURN_INPUTS),
                ACTIVE_FEATURE: (self.visits.alive, frozenset(VISIT_INPUTS)),
                ENGAGEMENT_FEATURE: (engagement_risk, ENGAGEMENT_INPUTS),
            },
            refitted=frozenset({CHURN_FEATURE, ACTIVE_FEATURE}),
        )
        self._churn_rules = frozenset(r.id for r in self.rules if any(c.feature == CHURN_FEATURE for c in r.conditions()))

    def uses_churn(self, rule_id: str) -> bool:
        """Whether the rule ``rule_id`` tests ``churn_propensity`` (its reason then names the model)."""
        return rule_id in self._churn_rules

    def _with_churn(self, features: Features) -> Features:
        """``features`` plus ``churn_propensity`` and ``engagement_risk`` (computed unless already there)."""
        out = dict(features)
        if CHURN_FEATURE not in out:
            out[CHURN_FEATURE] = self.churn.propensity(features)
        if ENGAGEMENT_FEATURE not in out:
            out[ENGAGEMENT_FEATURE] = engagement_risk(features)
        if ACTIVE_FEATURE not in out:
            out[ACTIVE_FEATURE] = self.visits.alive(features)
        return out
