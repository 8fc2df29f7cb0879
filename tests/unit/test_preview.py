"""segflow preview's pure half: candidate outcomes and the tally of sizes and flows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from segmenter.assign import Segmenter
from segmenter.config import SEGMENTATIONS, default_config, default_config_text, parse_config
from segmenter.preview import NONE, CandidateSegment, PreviewTally, candidate_outcome, format_preview
from tests.unit.test_segmenter_assign import ACTIVE, DAY, T0

CONFIG = default_config()
SEGMENTS = st.sampled_from(["a", "b", "c"])
CUSTOMERS = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(["x", "y"]), SEGMENTS),
        st.dictionaries(st.sampled_from(["x", "y"]), st.builds(CandidateSegment, SEGMENTS, st.booleans())),
    ),
    max_size=60,
)


@given(CUSTOMERS, st.integers(0, 3))
def test_flow_matrix_sums_to_the_sizes(customers, examples):
    tally = PreviewTally(("x", "y"), examples=examples)
    for i, (now, candidate) in enumerate(customers):
        tally.add(f"c{i}", now, candidate)
    view = tally.as_dict()
    assert view["customers"] == len(customers)
    for name, s in view["segmentations"].items():
        for seg, size in s["sizes"].items():
            assert sum(s["matrix"].get(seg, {}).values()) == size["now"]  # rows: where they are now
            assert sum(row.get(seg, 0) for row in s["matrix"].values()) == size["candidate"]  # columns: where they would be
        assert sum(n["now"] for n in s["sizes"].values()) == len(customers)
        assert s["moved"] == sum(f["customers"] for f in s["flows"]) == sum(n for a, row in s["matrix"].items() for b, n in row.items() if a != b)
        assert s["held"] == sum(1 for _, c in customers if name in c and c[name].held)
        for f in s["flows"]:
            assert f["from"] != f["to"] and len(f["examples"]) == min(examples, f["customers"])
            for cid in f["examples"]:
                now, candidate = customers[int(cid[1:])]
                assert now.get(name, NONE) == f["from"] and (candidate[name].segment if name in candidate else NONE) == f["to"]
    assert "would move now" in format_preview(view)


def test_the_live_config_moves_nobody():
    live = Segmenter.from_config(CONFIG)
    current = live.evaluate("c1", ACTIVE, {}, T0, "event:e1").assignments
    outcome = candidate_outcome(Segmenter.from_config(CONFIG), "c1", ACTIVE, current, T0 + DAY)
    assert {n: o.segment for n, o in outcome.items()} == {n: a.segment for n, a in current.items()}
    assert not any(o.held for o in outcome.values())


def _longer_new(days: int) -> str:
    text = default_config_text()
    old = '        - {feature: tenure_days, op: "<", value: 14}'
    assert old in text
    return text.replace(old, f'        - {{feature: tenure_days, op: "<", value: {days}}}')


def test_a_longer_new_period_moves_a_three_week_customer_back_to_new():
    three_weeks = {**ACTIVE, "tenure_days": 21.0}
    live = Segmenter.from_config(CONFIG)
    current = live.evaluate("c1", three_weeks, {}, T0, "event:e1").assignments
    assert current["lifecycle"].segment == "active"
    candidate = Segmenter.from_config(parse_config(_longer_new(30), "new.yaml"))
    moved = candidate_outcome(candidate, "c1", three_weeks, current, T0 + 2 * DAY)
    assert moved["lifecycle"] == CandidateSegment("new", held=False)
    held = candidate_outcome(candidate, "c1", three_weeks, current, T0 + DAY // 2)  # inside the 1-day dwell
    assert held["lifecycle"] == CandidateSegment("active", held=True)


def test_preview_evaluation_makes_no_changes_and_no_deadline():
    ev = Segmenter.from_config(CONFIG).evaluate("c1", ACTIVE, {}, T0, "preview", assignments_only=True)
    assert ev.changes == [] and ev.next_deadline_ms is None
    assert {n: a.segment for n, a in ev.assignments.items()} == {
        n: a.segment for n, a in Segmenter.from_config(CONFIG).evaluate("c1", ACTIVE, {}, T0, "e").assignments.items()
    }
    assert set(ev.assignments) == set(SEGMENTATIONS)
