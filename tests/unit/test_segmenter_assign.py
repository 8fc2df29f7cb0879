"""Segmenter.evaluate: assignments, changes, hysteresis, deadlines, snapshots."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from segmenter.assign import Segmenter, first_event_of_day
from segmenter.config import SegmentationConfig, default_config
from segmenter.hysteresis import Assignment
from streams.segment_store import StoredAssignment

CONFIG = default_config()
DAY = 86_400_000
T0 = 20_000 * DAY

ACTIVE = {
    "tenure_days": 200.0,
    "days_since_last_activity": 0.0,
    "days_since_last_purchase": 2.0,
    "days_since_last_login": 0.0,
    "purchases_total": 6.0,
    "revenue_total": 300.0,
    "purchases_90d": 4.0,
    "revenue_90d": 200.0,
    "sessions_30d": 9.0,
    "page_views_30d": 54.0,
    "searches_30d": 9.0,
    "add_to_carts_30d": 11.0,
    "engagement_trend": 1.0,
    "purchase_days_total": 6.0,
    "purchase_span_days": 150.0,
    "days_since_first_purchase": 152.0,
}
NEVER_BOUGHT = {**ACTIVE, "purchases_total": 0.0, "purchase_days_total": 0.0, "purchase_span_days": None, "days_since_first_purchase": None}


def segments(ev) -> dict[str, str]:
    return {name: a.segment for name, a in ev.assignments.items()}


def test_first_evaluation_assigns_every_segmentation():
    ev = Segmenter.from_config(CONFIG).evaluate("c1", ACTIVE, {}, T0, "event:e1")
    assert segments(ev) == {"lifecycle": "active", "behaviour": "steady", "value": "champions", "persona": "unprofiled"}
    assert [(c.segmentation, c.from_segment) for c in ev.changes] == [("lifecycle", None), ("behaviour", None), ("value", None), ("persona", None)]
    assert all(a.since_ms == T0 for a in ev.assignments.values())
    assert ev.changes[0].features["churn_propensity"] == ev.churn_propensity
    assert 0.0 < ev.churn_propensity < 0.5  # a buyer every month who bought two days ago
    assert Segmenter.from_config(CONFIG).evaluate("c2", NEVER_BOUGHT, {}, T0, "event:e1").churn_propensity is None
    assert ev.changes[0].reason == "default"
    assert ev.model_version == 0


def test_same_inputs_same_evaluation():
    a = Segmenter.from_config(CONFIG).evaluate("c1", ACTIVE, {}, T0, "event:e1")
    b = Segmenter.from_config(CONFIG).evaluate("c1", ACTIVE, {}, T0, "event:e1")
    assert a == b
    assert [c.change_id for c in a.changes] == [c.change_id for c in b.changes]


def test_nothing_changes_when_nothing_changed():
    seg = Segmenter.from_config(CONFIG)
    first = seg.evaluate("c1", ACTIVE, {}, T0, "event:e1")
    again = seg.evaluate("c1", ACTIVE, first.assignments, T0 + 5 * DAY, "event:e2")
    assert again.changes == []
    assert again.assignments == first.assignments  # since_ms kept


def test_accepts_the_shells_stored_assignments():
    stored = {"lifecycle": StoredAssignment("active", T0 - 30 * DAY, "default", 3)}
    ev = Segmenter.from_config(CONFIG).evaluate("c1", {**NEVER_BOUGHT, "days_since_last_activity": 31.0}, stored, T0, "deadline:1")
    assert next((c.segmentation, c.from_segment, c.to_segment) for c in ev.changes) == ("lifecycle", "active", "dormant")


def test_a_blocked_move_is_retried_when_the_dwell_ends():
    seg = Segmenter.from_config(CONFIG)
    current = {"lifecycle": Assignment("active", T0 - 3_600_000, "default")}  # moved an hour ago
    lapsing = {**NEVER_BOUGHT, "days_since_last_activity": 30.5}
    ev = seg.evaluate("c1", lapsing, current, T0, "deadline:a")
    assert ev.assignments["lifecycle"] == current["lifecycle"]
    assert ev.targets["lifecycle"] == "dormant"
    dwell_ends = T0 - 3_600_000 + DAY
    assert ev.next_deadline_ms == dwell_ends
    later = {**lapsing, "days_since_last_activity": 30.5 + 23 / 24}
    ev2 = seg.evaluate("c1", later, ev.assignments, dwell_ends, "deadline:b")
    assert ev2.assignments["lifecycle"] == Assignment("dormant", dwell_ends, "silent_30d", current["lifecycle"].seq + 1)


def test_urgent_segment_skips_the_dwell():
    current = {"lifecycle": Assignment("dormant", T0 - 60_000, "silent_30d")}
    ev = Segmenter.from_config(CONFIG).evaluate("c1", {**NEVER_BOUGHT, "days_since_last_activity": 60.0}, current, T0, "deadline:x")
    assert ev.assignments["lifecycle"].segment == "churned"


def test_behaviour_moves_only_past_the_margin():
    seg = Segmenter.from_config(CONFIG)
    d = seg.behaviour.distances(ACTIVE)
    nearest = min(d, key=d.get)
    runner_up = sorted(d, key=d.get)[1]
    old = T0 - 30 * DAY
    # currently in the runner-up, which is almost as close: stay
    if d[nearest] >= (1 - CONFIG.hysteresis.behaviour.margin) * d[runner_up]:
        ev = seg.evaluate("c1", ACTIVE, {"behaviour": Assignment(runner_up, old, "x")}, T0, "e")
        assert ev.assignments["behaviour"].segment == runner_up
    # currently in the farthest cluster: clearly worse, move
    farthest = max(d, key=d.get)
    ev = seg.evaluate("c1", ACTIVE, {"behaviour": Assignment(farthest, old, "x")}, T0, "e")
    assert ev.assignments["behaviour"].segment == nearest


def test_a_segment_removed_from_the_config_is_left_at_once():
    ev = Segmenter.from_config(CONFIG).evaluate("c1", ACTIVE, {"lifecycle": Assignment("vip", T0 - 1, "old rule")}, T0, "e")
    assert ev.assignments["lifecycle"].segment == "active"


def test_deadline_for_a_silent_active_buyer_is_the_next_threshold():
    ev = Segmenter.from_config(CONFIG).evaluate("c1", {**ACTIVE, "days_since_last_purchase": 10.0}, {}, T0, "e")
    # value: recency boundary 14 days since the purchase comes first (in 4 days)
    assert ev.next_deadline_ms == T0 + 4 * DAY + 1


# -- hysteresis as a property ----------------------------------------------------------------

steps = st.lists(
    st.tuples(
        st.integers(1, 3 * DAY),  # time to the next evaluation
        st.floats(0, 90, allow_nan=False),  # days since last activity
        st.sampled_from([0.0, 2.0, 30.0]),  # purchases_90d
        st.floats(0, 400, allow_nan=False),  # sessions_30d
        st.floats(0, 2, allow_nan=False),  # engagement_trend
    ),
    min_size=1,
    max_size=25,
)


@given(steps)
@settings(max_examples=80, deadline=None)
def test_never_moves_before_min_dwell_except_into_urgent(seq):
    seg = Segmenter.from_config(CONFIG)
    now, current, changes = T0, {}, []
    for i, (dt, silent, p90, sessions, trend) in enumerate(seq):
        now += dt
        f = {
            **ACTIVE,
            "days_since_last_activity": silent,
            "days_since_last_purchase": silent,
            "purchases_90d": p90,
            "sessions_30d": sessions,
            "page_views_30d": sessions * 6,
            "engagement_trend": trend,
        }
        ev = seg.evaluate("c1", f, current, now, f"event:{i}")
        changes += ev.changes
        assert ev.next_deadline_ms is None or ev.next_deadline_ms > now
        current = ev.assignments
    for name in ("lifecycle", "behaviour", "value"):
        policy = getattr(CONFIG.hysteresis, name)
        track = [c for c in changes if c.segmentation == name]
        assert track[0].from_segment is None
        for prev, nxt in itertools.pairwise(track):
            assert nxt.from_segment == prev.to_segment
            if nxt.to_segment not in policy.urgent:
                assert nxt.occurred_at_ms - prev.occurred_at_ms >= policy.min_dwell_ms


# -- learning and snapshots ---------------------------------------------------------------------


def test_learns_from_the_first_session_of_a_day_only():
    assert first_event_of_day({"sessions_1d": 1.0})
    assert not first_event_of_day({"sessions_1d": 1.0, "logins_1d": 1.0})
    seg = Segmenter.from_config(CONFIG)
    assert seg.learn_one({**ACTIVE, "sessions_1d": 1.0}) is True
    # a whole first session folded in one batch (a backlog replay) still counts
    assert seg.learn_one({**ACTIVE, "sessions_1d": 1.0, "page_views_1d": 3.0}) is True
    assert seg.learn_one({**ACTIVE, "sessions_1d": 2.0, "page_views_1d": 9.0}) is False
    assert seg.n_learned == 2


def test_snapshot_and_restore():
    seg = Segmenter.from_config(CONFIG)
    assert seg.snapshot_model() is None  # nothing learned yet
    for i in range(300):
        seg.learn_one({**ACTIVE, "sessions_30d": float(i % 40), "purchases_total": float(1 + i % 9)})
    version, blob = seg.snapshot_model()
    assert version == 1 == seg.model_version
    assert seg.snapshot_model() is None  # nothing new since

    fresh = Segmenter.from_config(CONFIG)
    assert fresh.restore_model(version, blob) is True
    assert fresh.model_version == 1
    assert fresh.evaluate("c", ACTIVE, {}, T0, "e") == seg.evaluate("c", ACTIVE, {}, T0, "e")
    fresh.learn_one({**ACTIVE})
    assert fresh.snapshot_model()[0] == 2


def test_a_snapshot_from_another_setup_is_not_restored():
    seg = Segmenter.from_config(CONFIG)
    seg.learn_one(ACTIVE)
    version, blob = seg.snapshot_model()
    data = CONFIG.model_dump(by_alias=True)
    dropped = data["behaviour"]["features"][-1]
    data["behaviour"]["features"] = list(data["behaviour"]["features"][:-1])
    for profile in data["behaviour"]["prototypes"].values():
        profile.pop(dropped)
    other = Segmenter.from_config(SegmentationConfig.model_validate(data))
    assert other.restore_model(version, blob) is False
    assert other.model_version == version  # versions keep increasing
    assert other.restore_model(7, b"garbage") is False


def test_seq_counts_each_segmentations_changes():
    seg = Segmenter.from_config(CONFIG)
    first = seg.evaluate("c1", NEVER_BOUGHT, {}, T0, "event:e1")
    assert {c.segmentation: c.seq for c in first.changes} == {"lifecycle": 1, "behaviour": 1, "value": 1, "persona": 1}
    later = seg.evaluate("c1", {**NEVER_BOUGHT, "days_since_last_activity": 31.0}, first.assignments, T0 + 31 * DAY, "deadline:1")
    moved = {c.segmentation: c.seq for c in later.changes}
    assert moved.get("lifecycle") == 2
    assert all(later.assignments[name].seq == first.assignments[name].seq + (name in moved) for name in first.assignments)
