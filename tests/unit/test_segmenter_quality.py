"""Segment quality on a small simulated population (a quick `segflow evaluate`).

One deterministic in-process replay (300 customers x 45 days, a few seconds)
shared by the tests; thresholds sit well below what it measures (see
docs/SEGMENTS.md) so they catch regressions, not noise.
"""

from __future__ import annotations

import pytest
from river import metrics

from lab.evaluate import quality_report, replay
from lab.simulate import Simulation
from segmenter.config import SEGMENTATIONS, default_config
from segmenter.evaluation import adjusted_rand_index, contingency
from segmenter.flaps import flaps

CONFIG = default_config()
DAY = 86_400_000


# -- the adjusted Rand index itself -----------------------------------------------------


@pytest.mark.parametrize(
    "truth, predicted, expected",
    [
        ([0, 0, 1, 2], [0, 0, 1, 1], 4 / 7),  # scikit-learn's documented example
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),  # same partition, other names
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        (["a", "a", "a"], ["x", "x", "x"], 1.0),
    ],
)
def test_adjusted_rand_index_known_values(truth, predicted, expected):
    assert adjusted_rand_index(truth, predicted) == pytest.approx(expected)


def test_adjusted_rand_index_matches_river():
    truth = [i % 5 for i in range(200)]
    predicted = [(i * 7 + i // 13) % 4 for i in range(200)]
    river_ari = metrics.AdjustedRand()
    for t, p in zip(truth, predicted, strict=False):
        river_ari.update(t, p)
    assert adjusted_rand_index(truth, predicted) == pytest.approx(river_ari.get())


def test_contingency_counts_every_item_once():
    table = contingency(["a", "b", "a", "c"], ["x", "x", "y", "y"])
    assert sum(sum(row.values()) for row in table.values()) == 4
    assert table["a"] == {"x": 1, "y": 1}


# -- a replay of a small population ---------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    return replay(Simulation(customers=300, days=45, seed=11), CONFIG)


@pytest.fixture(scope="module")
def report(run):
    return quality_report(run, settle_days=15, detect_within_days=21, revert_days=7)


def test_models_learn_during_a_backlog_replay(run):
    # The engine evaluates once per customer per 2000-event batch: the models
    # must still see about one point per customer and active day.
    assert run.segmenter.n_learned > 300 * 45 * 0.2


def test_every_customer_in_exactly_one_segment_of_each_segmentation(run):
    for cid, assignments in run.assignments.items():
        assert set(assignments) == set(SEGMENTATIONS)
        for name, a in assignments.items():
            assert a.segment in CONFIG.segments_of(name), (cid, name, a.segment)
    # and the replayed moves agree with the final assignments
    last: dict[tuple[str, str], str] = {}
    for m in sorted(run.moves, key=lambda m: m.occurred_at_ms):
        assert last.get((m.customer_id, m.segmentation)) == m.from_segment
        last[(m.customer_id, m.segmentation)] = m.to_segment
    assert last == {(c, n): a.segment for c, asg in run.assignments.items() for n, a in asg.items()}


def test_behaviour_clusters_follow_the_personas(report):
    b = report["behaviour"]
    assert b["ari_final"] > 0.3
    assert b["ari_settled_mean"] > 0.3
    assert b["renames"] == 0  # segment names stayed put
    table = b["contingency_final"]
    # the personas with a distinct habit end up mostly in their own segment
    assert table["power_user"]["power_users"] >= 0.7 * sum(table["power_user"].values())
    assert table["explorer"]["explorers"] >= 0.7 * sum(table["explorer"].values())
    assert table["dormant"]["dormant"] >= 0.7 * sum(table["dormant"].values())


def test_at_risk_flags_are_right_and_find_the_silent(report):
    """at_risk flags customers who really went silent (precision), and by the end
    finds most of them; it waits for the customer's own rhythm to say so, which
    takes about two to three weeks of silence here (docs/SEGMENTS.md)."""
    at_risk = report["silence"]["at_risk"]
    assert at_risk["silenced_eligible"] >= 10
    assert at_risk["precision_of_flags"] >= 0.8
    assert at_risk["median_delay_days"] <= 21
    worse = report["silence"]["at_risk_or_worse"]
    assert worse["recall_at_end"] >= 0.8
    assert worse["precision_at_end"] >= 0.8


def test_no_move_is_undone_within_the_minimum_dwell(run, report):
    for name in SEGMENTATIONS:
        dwell = getattr(CONFIG.hysteresis, name).min_dwell_ms
        moves = [m for m in run.moves if m.segmentation == name]
        if dwell:
            assert flaps(moves, dwell)[0] == 0, name
        assert report["flapping"][name]["reverts_within_dwell"] == 0


def test_changes_stay_few(report):
    for name, stats in report["flapping"].items():
        assert stats["changes_per_customer_30d"] < 2.0, name
        assert stats["revert_share"] < 0.4, name
    assert report["flapping"]["lifecycle"]["revert_share"] < 0.1


# -- the visit model's cold start (lab.cold_start) ----------------------------------------


def test_cold_start_pins_the_visit_model_to_its_final_fit_and_splits_the_churners():
    from lab.cold_start import cold_start

    report = cold_start(300, 45, 11, CONFIG, say=lambda _: None)
    fits = report["visit_model_fits"]
    assert fits, "the visit model fitted during the run"
    assert [f["day"] for f in fits] == sorted(f["day"] for f in fits)
    assert fits[-1]["dropout"] == report["final_dropout"]
    assert fits[0]["day"] <= report["informed_day"] <= fits[-1]["day"]
    for run in report["runs"].values():
        parts = [run["silenced_before_informed"]["silenced_eligible"], run["silenced_after_informed"]["silenced_eligible"]]
        assert sum(parts) == run["all"]["silenced_eligible"] > 0
