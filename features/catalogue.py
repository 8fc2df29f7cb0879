"""The feature catalogue: every feature segflow computes, in one list.

Docs, ``segflow customer``, ``segflow features`` and the segmenter read
:data:`CATALOGUE`; nothing keeps its own list. :data:`STATE_FEATURES` are
computed here from the state; :data:`MODEL_FEATURES` are what the segmenter's
purchase-rhythm model derives from them at each evaluation. Values are computed from the
raw :class:`~features.state.CustomerState` at a given time ``now`` (event time
in replays, wall-clock time live), so a silent customer's windows empty as
time passes without any event from them.

Windows are day-aligned in UTC: ``purchases_7d`` at ``now`` counts purchases
on the 7 calendar days ending with ``now``'s day.

>>> from features.state import CustomerState, DAY_MS
>>> s = CustomerState(first_seen_ms=0, last_seen_ms=DAY_MS, buckets={1: [1, 4] + [0] * 9})
>>> f = compute(s, now_ms=3 * DAY_MS)
>>> f["page_views_7d"], f["page_views_1d"], f["days_since_last_activity"]
(4.0, 0.0, 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import add, mul

from features.state import (
    ADD_TO_CARTS,
    CHECKOUTS,
    DAY_MS,
    DISCOUNT_CENTS,
    FAILED_LOGINS,
    LOGINS,
    METRICS,
    PAGE_VIEWS,
    PURCHASES,
    REVENUE_CENTS,
    SEARCHES,
    SESSIONS,
    CustomerState,
    weekday,
)

WINDOWS = (1, 7, 30, 90)
ENGAGEMENT_HALFLIFE_DAYS = 7.0
# How much one event of each kind says about engagement (a purchase says most).
ENGAGEMENT_WEIGHTS = {
    SESSIONS: 1.0,
    PAGE_VIEWS: 0.2,
    SEARCHES: 0.3,
    ADD_TO_CARTS: 1.0,
    CHECKOUTS: 2.0,
    PURCHASES: 5.0,
    LOGINS: 0.5,
}
ACTIVITY_METRICS = (SESSIONS, PAGE_VIEWS, SEARCHES, ADD_TO_CARTS, CHECKOUTS, PURCHASES, LOGINS)


@dataclass(frozen=True)
class Feature:
    """One named feature. ``window`` in days (None: lifetime or point-in-time)."""

    name: str
    description: str
    unit: str
    window: int | None
    family: str  # recency, frequency, monetary, window, ratio, engagement


# (metric, feature stem, unit, description) for the windowed counters.
_WINDOWED = (
    (SESSIONS, "sessions", "count", "sessions started"),
    (PAGE_VIEWS, "page_views", "count", "page views"),
    (SEARCHES, "searches", "count", "searches"),
    (ADD_TO_CARTS, "add_to_carts", "count", "add-to-cart actions"),
    (CHECKOUTS, "checkouts", "count", "checkouts started"),
    (PURCHASES, "purchases", "count", "completed purchases"),
    (REVENUE_CENTS, "revenue", "currency", "revenue paid"),
    (LOGINS, "logins", "count", "successful logins"),
    (FAILED_LOGINS, "failed_logins", "count", "failed login attempts"),
)


def _catalogue() -> tuple[Feature, ...]:
    f = [
        Feature("days_since_last_purchase", "Days from the last purchase to now (recency).", "days", None, "recency"),
        Feature("days_since_last_visit", "Days from the last clickstream event to now.", "days", None, "recency"),
        Feature("days_since_last_login", "Days from the last successful login to now.", "days", None, "recency"),
        Feature("days_since_last_activity", "Days from the customer's newest event of any kind to now.", "days", None, "recency"),
        Feature("tenure_days", "Days from the first event ever seen to now.", "days", None, "recency"),
        Feature("days_since_first_purchase", "Days from the first purchase to now (the buy-till-you-die age T).", "days", None, "recency"),
        Feature("purchases_total", "Purchases over the customer's lifetime (frequency).", "count", None, "frequency"),
        Feature("purchase_days_total", "Distinct days (UTC) with a purchase; repeat purchases are these minus one.", "count", None, "frequency"),
        Feature("purchase_span_days", "Whole days (UTC) from the first to the last purchase day (the buy-till-you-die t_x).", "days", None, "frequency"),
        Feature("revenue_total", "Revenue over the customer's lifetime (monetary).", "currency", None, "monetary"),
        Feature("avg_order_value", "Lifetime revenue divided by lifetime purchases.", "currency", None, "monetary"),
    ]
    for days in WINDOWS:
        for _, stem, unit, what in _WINDOWED:
            f.append(Feature(f"{stem}_{days}d", f"{what.capitalize()} in the last {days} day(s).", unit, days, "window"))
        f.append(Feature(f"discount_share_{days}d", f"Discount given as a share of gross revenue in the last {days} day(s).", "ratio", days, "window"))
    f += [
        Feature("cart_abandonment_rate_30d", "1 - purchases / add-to-carts over 30 days (None without carts).", "ratio", 30, "ratio"),
        Feature("checkout_conversion_30d", "Purchases / checkouts started over 30 days, capped at 1.", "ratio", 30, "ratio"),
        Feature("purchase_interval_mean_days", "Mean days between purchases over the lifetime.", "days", None, "ratio"),
        Feature("purchase_interval_last_days", "Days between the last two purchases.", "days", None, "ratio"),
        Feature("active_days_total", "Distinct days (UTC) with any event over the customer's lifetime (the visit rhythm).", "count", None, "engagement"),
        Feature("active_span_days", "Whole days (UTC) from the first to the newest active day.", "days", None, "engagement"),
        Feature("active_days_90d", "Days (UTC) with any activity in the last 90 days: the customer's visit rhythm.", "count", 90, "engagement"),
        Feature("weekend_share_90d", "Share of activity on Saturdays and Sundays (UTC), last 90 days.", "ratio", 90, "ratio"),
        Feature("top_category_share", "Share of purchased items in the customer's top category.", "ratio", None, "ratio"),
        Feature("engagement_score", f"Weighted activity, decaying with a {ENGAGEMENT_HALFLIFE_DAYS:g}-day half-life.", "score", None, "engagement"),
        Feature("engagement_trend", "Daily activity in the last 7 days / daily activity in the 30 days before.", "ratio", 37, "engagement"),
    ]
    return tuple(f)


# What the segmenter's purchase- and visit-rhythm models (segmenter/churn.py) and its
# engagement score add to the features above at each evaluation; rules can test them.
MODEL_FEATURES: tuple[Feature, ...] = (
    Feature("p_alive", "Probability the customer is still a customer (BG/NBD); 1 for buyers with no repeat purchase yet.", "probability", None, "model"),
    Feature("expected_purchases_30d", "Expected purchase days in the next 30 days (BG/NBD).", "count", 30, "model"),
    Feature("expected_purchases_90d", "Expected purchase days in the next 90 days (BG/NBD).", "count", 90, "model"),
    Feature(
        "churn_propensity",
        "Probability of no purchase in the next churn horizon (BG/NBD; `churn.horizon_days` in the segments config); None without a purchase.",
        "probability",
        None,
        "model",
    ),
    Feature(
        "p_active",
        "Probability the customer still comes at all (BG/NBD over active days: any event counts as a visit).",
        "probability",
        None,
        "model",
    ),
    Feature(
        "engagement_risk",
        "0..1: silence against the customer's own gap, fading activity, login silence, failed logins (segmenter/engagement.py).",
        "score",
        None,
        "model",
    ),
)

STATE_FEATURES: tuple[Feature, ...] = _catalogue()
CATALOGUE: tuple[Feature, ...] = STATE_FEATURES + MODEL_FEATURES
FEATURE_NAMES: tuple[str, ...] = tuple(feat.name for feat in STATE_FEATURES)
MODEL_FEATURE_NAMES: tuple[str, ...] = tuple(feat.name for feat in MODEL_FEATURES)
BY_NAME: dict[str, Feature] = {feat.name: feat for feat in CATALOGUE}


def _days(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else max(0.0, (now_ms - then_ms) / DAY_MS)


def _ratio(num: float, den: float) -> float | None:
    return None if den <= 0 else num / den


def window_sums(state: CustomerState, now_ms: int, days: int) -> list[int]:
    """Counters summed over the ``days`` calendar days ending with ``now``'s day."""
    today = now_ms // DAY_MS
    sums = [0] * len(METRICS)
    for day, bucket in state.buckets.items():
        if today - days < day <= today:
            for i, v in enumerate(bucket):
                sums[i] += v
    return sums


# Built once: names per window, and the engagement decay per day of age.
_WINDOW_FEATURES = tuple(
    (days, tuple((f"{stem}_{days}d", metric, metric == REVENUE_CENTS) for metric, stem, _, _ in _WINDOWED), f"discount_share_{days}d") for days in WINDOWS
)
# Per-metric vectors (0 elsewhere), so a bucket's activity and weighted engagement are
# one C-level sum each; the terms and their order are those of the dicts above.
_ACTIVITY_MASK = tuple(1 if m in ACTIVITY_METRICS else 0 for m in range(len(METRICS)))
_ENGAGEMENT_VECTOR = tuple(ENGAGEMENT_WEIGHTS.get(m, 0.0) for m in range(len(METRICS)))
_DECAY = tuple(0.5 ** (age / ENGAGEMENT_HALFLIFE_DAYS) for age in range(2 * max(WINDOWS)))


def compute(state: CustomerState, now_ms: int) -> dict[str, float | None]:
    """Every catalogue feature of ``state`` as of ``now_ms`` (None: undefined)."""
    out: dict[str, float | None] = {
        "days_since_last_purchase": _days(now_ms, state.last_purchase_ms),
        "days_since_last_visit": _days(now_ms, state.last_visit_ms),
        "days_since_last_login": _days(now_ms, state.last_login_ms),
        "days_since_last_activity": _days(now_ms, state.last_seen_ms),
        "tenure_days": _days(now_ms, state.first_seen_ms),
        "days_since_first_purchase": _days(now_ms, state.first_purchase_ms),
        "purchases_total": float(state.purchases_total),
        # A state written before distinct purchase days were counted ('pd' missing) uses its purchases.
        "purchase_days_total": float(state.purchase_days or state.purchases_total),
        # Whole days, as repeat purchases are counted on distinct days: one day of purchases spans 0.
        "purchase_span_days": (
            None
            if state.first_purchase_ms is None or state.last_purchase_ms is None
            else float(state.last_purchase_ms // DAY_MS - state.first_purchase_ms // DAY_MS)
        ),
        "revenue_total": state.revenue_total_cents / 100,
        "avg_order_value": _ratio(state.revenue_total_cents / 100, state.purchases_total),
    }
    today = now_ms // DAY_MS
    # One pass over the buckets, oldest first (float sums independent of arrival
    # order): each adds to the band of ages between two windows; a window's sums
    # are the bands inside it (what window_sums computes one window at a time).
    bands = [[0] * len(METRICS) for _ in WINDOWS]
    weekend = total = active_days = 0
    score = recent7 = prior30 = 0.0
    buckets = state.buckets
    for day in sorted(buckets):
        age = today - day
        if age < 0:
            continue  # a bucket after `now` (evaluating the past) does not count yet
        bucket = buckets[day]
        for band, days in enumerate(WINDOWS):
            if age < days:
                bands[band] = list(map(add, bands[band], bucket))
                break
        activity = sum(map(mul, bucket, _ACTIVITY_MASK))
        if age < 90:
            total += activity
            active_days += activity > 0
            if weekday(day) >= 5:
                weekend += activity
        decay = _DECAY[age] if age < len(_DECAY) else 0.5 ** (age / ENGAGEMENT_HALFLIFE_DAYS)
        score += sum(map(mul, bucket, _ENGAGEMENT_VECTOR)) * decay
        if age < 7:
            recent7 += activity
        elif age < 37:
            prior30 += activity
    running = [0] * len(METRICS)
    per_window: dict[int, list[int]] = {}
    for band, (days, names, gross_name) in enumerate(_WINDOW_FEATURES):
        running = list(map(add, running, bands[band]))
        per_window[days] = running
        for name, metric, money in names:
            value = running[metric]
            out[name] = value / 100 if money else float(value)
        out[gross_name] = _ratio(running[DISCOUNT_CENTS], running[REVENUE_CENTS] + running[DISCOUNT_CENTS])

    m30 = per_window[30]
    abandonment = _ratio(m30[PURCHASES], m30[ADD_TO_CARTS])
    out["cart_abandonment_rate_30d"] = None if abandonment is None else max(0.0, 1.0 - abandonment)
    conversion = _ratio(m30[PURCHASES], m30[CHECKOUTS])
    out["checkout_conversion_30d"] = None if conversion is None else min(1.0, conversion)

    if state.purchases_total >= 2 and state.first_purchase_ms is not None and state.last_purchase_ms is not None:
        out["purchase_interval_mean_days"] = (state.last_purchase_ms - state.first_purchase_ms) / DAY_MS / (state.purchases_total - 1)
    else:
        out["purchase_interval_mean_days"] = None
    out["purchase_interval_last_days"] = (
        None if state.prev_purchase_ms is None or state.last_purchase_ms is None else (state.last_purchase_ms - state.prev_purchase_ms) / DAY_MS
    )
    # A state written before active days were counted ('ad' missing) uses its buckets' days.
    out["active_days_total"] = float(state.active_days or len(state.buckets))
    out["active_span_days"] = (
        None if state.first_seen_ms is None or state.last_seen_ms is None else float(state.last_seen_ms // DAY_MS - state.first_seen_ms // DAY_MS)
    )
    out["active_days_90d"] = float(active_days)
    out["weekend_share_90d"] = _ratio(weekend, total)
    item_total = sum(state.categories.values())
    out["top_category_share"] = _ratio(max(state.categories.values(), default=0), item_total)
    out["engagement_score"] = round(score, 6)
    out["engagement_trend"] = _ratio(recent7 / 7, prior30 / 30)
    return out


def top_categories(state: CustomerState, n: int = 3) -> list[tuple[str, float]]:
    """The customer's ``n`` most purchased categories with their item shares."""
    total = sum(state.categories.values())
    if not total:
        return []
    ranked = sorted(state.categories.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [(cat, qty / total) for cat, qty in ranked]
