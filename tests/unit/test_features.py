"""Properties of the pure feature math: order, duplicates and windows."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from features.catalogue import _WINDOWED, ACTIVITY_METRICS, ENGAGEMENT_HALFLIFE_DAYS, ENGAGEMENT_WEIGHTS, FEATURE_NAMES, WINDOWS, compute, window_sums
from features.state import (
    BUCKET_DAYS,
    DAY_MS,
    DEDUPE_CAP,
    METRICS,
    PURCHASES,
    REVENUE_CENTS,
    CustomerState,
    EventDelta,
    apply_delta,
)

LATENESS = 3 * DAY_MS
BASE = 19_000 * DAY_MS


def make_deltas(span_ms: int, max_size: int = 30, categories: int = 6):
    def build(i_ts, increments, cats, kind):
        i, ts = i_ts
        purchase = kind == "purchase"
        if purchase:
            increments = {**increments, PURCHASES: 1}
        return EventDelta(ts, f"tok{i}", kind, increments, cats if purchase else {}, purchase=purchase, visit=kind == "clickstream", login=kind == "login")

    one = st.builds(
        build,
        st.tuples(st.integers(0, 10**9), st.integers(BASE, BASE + span_ms)),
        st.dictionaries(st.integers(0, len(METRICS) - 1), st.integers(1, 10_000), max_size=3),
        st.dictionaries(st.sampled_from([f"cat{i}" for i in range(categories)]), st.integers(1, 4), max_size=2),
        st.sampled_from(["clickstream", "purchase", "login"]),
    )
    return st.lists(one, max_size=max_size, unique_by=lambda d: d.token)


def fold(deltas, late_before=None) -> CustomerState:
    s = CustomerState()
    for d in deltas:
        apply_delta(s, d, late_before)
    return s


@settings(max_examples=300, deadline=None)
@given(deltas=make_deltas(span_ms=LATENESS), data=st.data())
def test_any_permutation_within_the_lateness_gives_the_same_features(deltas, data):
    # Within the lateness nothing is refused: the horizon is before every event.
    shuffled = data.draw(st.permutations(deltas))
    a, b = fold(deltas, BASE - 1), fold(shuffled, BASE - 1)
    assert a == b
    now = BASE + LATENESS + data.draw(st.integers(0, 120 * DAY_MS))
    assert compute(a, now) == compute(b, now)


@settings(max_examples=300, deadline=None)
@given(deltas=make_deltas(span_ms=40 * DAY_MS), data=st.data())
def test_duplicates_never_change_the_state(deltas, data):
    state = fold(deltas)
    before = copy.deepcopy(state)
    again = data.draw(st.lists(st.sampled_from(deltas), max_size=10)) if deltas else []
    for d in again:
        assert apply_delta(state, d, None) == "duplicate"
    assert state == before


@settings(max_examples=200, deadline=None)
@given(deltas=make_deltas(span_ms=200 * DAY_MS, max_size=60), cutoff_offset=st.integers(0, 260 * DAY_MS))
def test_windows_equal_a_batch_recomputation_from_raw_events(deltas, cutoff_offset):
    cutoff = BASE + cutoff_offset
    upto = sorted((d for d in deltas if d.ts_ms <= cutoff), key=lambda d: d.ts_ms)
    state = fold(upto)
    today = cutoff // DAY_MS
    for days in WINDOWS:
        expected = [0] * len(METRICS)
        for d in upto:
            if today - days < d.ts_ms // DAY_MS <= today:
                for metric, n in d.increments.items():
                    expected[metric] += n
        assert window_sums(state, cutoff, days) == expected
    feats = compute(state, cutoff)
    for days in WINDOWS:  # compute sums all windows in one pass: the same sums
        sums = window_sums(state, cutoff, days)
        for metric, stem, _, _ in _WINDOWED:
            assert feats[f"{stem}_{days}d"] == (sums[metric] / 100 if metric == REVENUE_CENTS else float(sums[metric]))
    # engagement from the raw events, day by day (oldest first, as compute sums floats)
    per_day: dict[int, list[int]] = {}
    for d in upto:
        day = per_day.setdefault(d.ts_ms // DAY_MS, [0] * len(METRICS))
        for metric, n in d.increments.items():
            day[metric] += n
    in_buckets = {day: v for day, v in per_day.items() if day in state.buckets}  # older days were dropped from the state
    score = sum(
        sum(v[m] * w for m, w in ENGAGEMENT_WEIGHTS.items()) * 0.5 ** ((today - day) / ENGAGEMENT_HALFLIFE_DAYS) for day, v in sorted(in_buckets.items())
    )
    assert feats["engagement_score"] == round(score, 6)
    recent7 = sum(sum(v[m] for m in ACTIVITY_METRICS) for day, v in in_buckets.items() if today - day < 7)
    prior30 = sum(sum(v[m] for m in ACTIVITY_METRICS) for day, v in in_buckets.items() if 7 <= today - day < 37)
    assert feats["engagement_trend"] == (None if prior30 == 0 else (recent7 / 7) / (prior30 / 30))
    assert feats["purchases_total"] == sum(d.increments.get(PURCHASES, 0) for d in upto if d.purchase)
    assert round(feats["revenue_total"] * 100) == sum(d.increments.get(REVENUE_CENTS, 0) for d in upto if d.purchase)


@given(deltas=make_deltas(span_ms=400 * DAY_MS, max_size=80, categories=20))
def test_state_stays_bounded(deltas):
    state = CustomerState()
    for d in sorted(deltas, key=lambda d: d.ts_ms):
        apply_delta(state, d, d.ts_ms - DAY_MS)  # a watermark right behind the stream
    assert len(state.buckets) <= BUCKET_DAYS
    assert len(state.categories) <= 9
    assert len(state.recent) <= DEDUPE_CAP
    assert all(state.last_seen_ms - at <= DAY_MS for at in state.recent.values())


@given(n=st.integers(1, 300))
def test_duplicate_filter_is_capped_without_a_watermark(n):
    state = fold([EventDelta(BASE + i, f"t{i}", "login", {9: 1}) for i in range(n)])
    assert len(state.recent) == min(n, DEDUPE_CAP)


@given(burst=st.integers(DEDUPE_CAP + 1, 200), retried=st.integers(0, 200))
def test_a_retry_is_never_counted_twice_even_after_a_burst_overflows_the_filter(burst, retried):
    """A producer retry arriving after more than DEDUPE_CAP newer events (all within
    the lateness) cannot be recognised by the filter: it must be refused, not applied."""
    deltas = [EventDelta(BASE + i, f"t{i}", "login", {9: 1}) for i in range(burst)]
    state = fold(deltas, late_before=BASE - LATENESS)
    before = copy.deepcopy(state)
    again = deltas[min(retried, burst - 1)]
    assert apply_delta(state, again, BASE - LATENESS) in ("duplicate", "unverifiable")
    assert state == before


def test_too_late_events_are_refused_and_change_nothing():
    state = fold([EventDelta(BASE + 10 * DAY_MS, "a", "login", {9: 1}, login=True)])
    before = copy.deepcopy(state)
    assert apply_delta(state, EventDelta(BASE, "b", "login", {9: 1}, login=True), BASE + 10 * DAY_MS - LATENESS) == "too_late"
    assert state == before


def test_redelivered_offsets_are_duplicates_even_with_new_event_ids():
    state = CustomerState()
    assert apply_delta(state, EventDelta(BASE, "a", "login", {9: 1}, offset=(0, 5)), None) == "applied"
    assert apply_delta(state, EventDelta(BASE, "b", "login", {9: 1}, offset=(0, 5)), None) == "duplicate"
    assert apply_delta(state, EventDelta(BASE, "c", "login", {9: 1}, offset=(0, 6)), None) == "applied"


def test_compute_returns_exactly_the_catalogue():
    assert tuple(compute(CustomerState(), BASE)) == FEATURE_NAMES


def test_silence_empties_windows_and_decays_engagement():
    state = fold([EventDelta(BASE, "a", "clickstream", {0: 1, 1: 5}, visit=True)])
    fresh, later = compute(state, BASE), compute(state, BASE + 31 * DAY_MS)
    assert fresh["page_views_30d"] == 5 and later["page_views_30d"] == 0
    assert later["engagement_score"] < fresh["engagement_score"] / 8
    assert later["days_since_last_visit"] == 31
