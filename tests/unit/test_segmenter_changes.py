"""The segment-change contract: deterministic ids, wire names, schema, flap rate."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from segmenter.changes import SegmentChange, change_id_of, history_entry, read_history_entry, segment_change_json_schema
from segmenter.flaps import flap_rate, flaps

DAY = 86_400_000
texts = st.text(min_size=1, max_size=20)
identity = st.tuples(texts, st.sampled_from(["lifecycle", "behaviour", "value"]), st.none() | texts, texts, st.integers(0, 2**45), texts)


def make(customer="c1", segmentation="lifecycle", a=None, b="active", t=0, cause="e", **kw) -> SegmentChange:
    return SegmentChange.create(
        customer_id=customer,
        segmentation=segmentation,
        from_segment=a,
        to_segment=b,
        reason=kw.get("reason", "r"),
        model_version=kw.get("model_version", 1),
        occurred_at_ms=t,
        cause=cause,
        features=kw.get("features", {"x": 1.0}),
        emitted_at_ms=kw.get("emitted_at_ms"),
    )


@given(identity)
def test_change_id_is_deterministic(ident):
    assert change_id_of(*ident) == change_id_of(*ident)
    assert len(change_id_of(*ident)) == 32


@given(identity, identity)
def test_different_changes_get_different_ids(a, b):
    if a != b:
        assert change_id_of(*a) != change_id_of(*b)


@given(identity)
def test_id_ignores_what_does_not_identify_a_change(ident):
    customer, segmentation, a, b, t, cause = ident
    one = make(customer, segmentation, a, b, t, cause, reason="x", model_version=1, emitted_at_ms=t)
    two = make(customer, segmentation, a, b, t, cause, reason="y", model_version=7, features={}, emitted_at_ms=t + 5000)
    assert one.change_id == two.change_id


def test_field_boundaries_are_unambiguous():
    assert change_id_of("a|b", "lifecycle", None, "x", 0, "c") != change_id_of("a", "b|lifecycle", None, "x", 0, "c")
    assert change_id_of("c", "lifecycle", None, "x", 0, "e") != change_id_of("c", "lifecycle", "None", "x", 0, "e")


def test_wire_format_uses_from_and_to():
    change = make(a=None, b="active", t=1_767_600_000_123)
    wire = json.loads(change.model_dump_json())
    assert wire["from"] is None and wire["to"] == "active"
    assert "from_segment" not in wire
    assert wire["occurred_at"].startswith("2026-01-05T08:00:00.123") and wire["occurred_at"].endswith("Z")
    assert wire["schema_version"] == 1
    assert SegmentChange.model_validate(wire) == change
    assert change.occurred_at_ms == 1_767_600_000_123


def test_json_schema_describes_the_wire_names():
    schema = segment_change_json_schema()
    assert {"from", "to", "change_id", "occurred_at", "features"} <= set(schema["properties"])
    assert "from" in schema["required"] and "from_segment" not in schema["properties"]


def test_flap_rate():
    seq = [make(a=None, b="a", t=0), make(a="a", b="b", t=DAY), make(a="b", b="a", t=2 * DAY), make(a="a", b="c", t=30 * DAY)]
    assert flaps(seq) == (1, 2)
    assert flap_rate(list(reversed(seq))) == 0.5
    assert flap_rate(seq, window_ms=DAY // 2) == 0.0
    other = [make(customer="c2", a=None, b="a", t=0), make(customer="c2", segmentation="value", a="b", b="a", t=DAY)]
    assert flap_rate(other) == 0.0
    assert flap_rate([]) == 0.0


@given(identity, st.none() | st.integers(0, 10_000), texts)
def test_a_history_entry_keeps_the_move(ident, model_version, reason):
    customer, segmentation, a, b, t, cause = ident
    change = make(customer, segmentation, a, b, t, cause, reason=reason, model_version=model_version)
    entry = read_history_entry(history_entry(change).encode())
    assert (entry["change_id"], entry["segmentation"], entry["from"], entry["to"], entry["reason"], entry["model_version"]) == (
        change.change_id,
        segmentation,
        a,
        b,
        reason,
        model_version,
    )
    assert entry["occurred_at_ms"] == t and entry["occurred_at"] == change.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")
