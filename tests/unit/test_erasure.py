"""Erasure, the pure parts: the request contract, the final changes, the forget call's
keys (one slot), suppression in the reference fold, and what the change consumers do
with a change to no segment."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from features.codec import TOMBSTONE, state_from_hash, state_to_hash
from features.keys import Layout
from features.state import DAY_MS, LOGINS, PURCHASES, CustomerState, EventDelta, apply_delta, forgotten
from segmenter.campaigns import parse_campaigns
from segmenter.changes import SegmentChange, state_record
from streams.change_audit import ChangeFollower
from streams.engine import BatchOutcome, Engine, ErasureRun, EventRun, InboundMessage
from streams.erasure import erasure_changes, erasure_request, forget_call, outbox_needle
from streams.events import InvalidEvent, decode_erasure
from streams.segment_store import StoredAssignment
from streams.settings import Settings
from streams.topics import Topics

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
HELD = {
    "lifecycle": StoredAssignment("active", 1, "rule_active", 2, 3),
    "value": StoredAssignment("loyal", 1, "rfm 4-4-4", 2, 1),
}


def request_bytes(**fields) -> bytes:
    doc = {"request_id": "r1", "customer_id": "c1", "requested_at": "2026-12-05T12:00:00Z", **fields}
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


# -- the request ----------------------------------------------------------------------


def test_a_request_from_the_cli_decodes_as_the_worker_reads_it():
    request = erasure_request("c 42/é", "ticket 7", NOW)
    assert decode_erasure(request.model_dump_json(exclude_none=True).encode()) == request
    assert len(request.request_id) == 32 and erasure_request("c", None, NOW).request_id != request.request_id


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (b"not json", "bad_json"),
        (request_bytes(customer_id=""), "invalid"),
        (request_bytes(request_id=None), "invalid"),
        (request_bytes(requested_at="2026-12-05T12:00:00"), "invalid"),  # no time zone
        (request_bytes(extra="x"), "invalid"),
        (request_bytes(reason="x" * 1001), "invalid"),
        (request_bytes(type="purchase"), "unknown_event_type"),
        (request_bytes(requested_at="1970-01-01T00:00:00Z"), "absurd_timestamp"),
    ],
)
def test_a_malformed_request_is_refused_with_a_dead_letter_reason(raw, reason):
    with pytest.raises(InvalidEvent) as exc:
        decode_erasure(raw)
    assert exc.value.reason == reason


# -- the final changes and the call --------------------------------------------------------


def test_one_final_change_per_segmentation_held_to_no_segment():
    request = erasure_request("c1", None, NOW, request_id="r1")
    changes = erasure_changes(request, HELD, emitted_at_ms=5)
    assert [(c.segmentation, c.from_segment, c.to_segment, c.seq, c.reason) for c in changes] == [
        ("lifecycle", "active", None, 4, "erasure"),
        ("value", "loyal", None, 2, "erasure"),
    ]
    assert all(c.features == {} and c.occurred_at == NOW and c.model_version == 2 for c in changes)
    # Deterministic: the same request gives the same ids (a replayed request, a retry).
    assert [c.change_id for c in changes] == [c.change_id for c in erasure_changes(request, HELD, emitted_at_ms=99)]
    assert erasure_changes(request, {}, emitted_at_ms=5) == []
    wire = json.loads(changes[0].model_dump_json(by_alias=True))
    assert wire["to"] is None and wire["from"] == "active"
    assert SegmentChange.model_validate_json(changes[0].model_dump_json(by_alias=True)) == changes[0]


@given(customer_id=st.text(min_size=1, max_size=40), partitions=st.integers(1, 64))
def test_every_key_of_a_forget_call_is_in_the_customer_partitions_slot(customer_id, partitions):
    layout = Layout(partitions)
    changes = erasure_changes(erasure_request(customer_id, None, NOW, request_id="r"), HELD, emitted_at_ms=0)
    call = forget_call(layout, customer_id, 3, changes, erased_at_ms=1, suppress_ms=2)
    numkeys = call[2]
    assert isinstance(numkeys, int)
    call_keys = [str(k) for k in call[3 : 3 + numkeys]]
    assert len({key_slot(k.encode()) for k in call_keys}) == 1
    p = layout.partition(customer_id)
    assert call_keys[:3] == [layout.customer_key(customer_id), layout.segments_key(customer_id), layout.history_key(customer_id)]
    assert call_keys[7:] == [layout.filters_key(p), layout.member_set(p, "lifecycle", "active"), layout.member_set(p, "value", "loyal")]
    args = call[3 + numkeys :]
    assert args[:5] == (customer_id, 3, 1, 2, outbox_needle(customer_id))
    assert [json.loads(str(a))["segmentation"] for a in args[5:]] == ["lifecycle", "value"]  # one payload per member set, same order


@given(customer_id=st.text(min_size=1, max_size=30))
def test_the_needle_is_how_a_change_payload_spells_its_customer(customer_id):
    [change] = erasure_changes(erasure_request(customer_id, None, NOW, request_id="r"), {"value": HELD["value"]}, emitted_at_ms=0)
    assert outbox_needle(customer_id) in change.model_dump_json(by_alias=True)
    other = erasure_changes(erasure_request(customer_id + "x", None, NOW, request_id="r"), {"value": HELD["value"]}, emitted_at_ms=0)[0]
    assert outbox_needle(customer_id) not in other.model_dump_json(by_alias=True)


# -- suppression, the reference ------------------------------------------------------------


@given(ts=st.integers(20_000 * DAY_MS, 20_400 * DAY_MS), purchase=st.booleans(), offset=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 99)))
def test_an_erased_customers_events_are_suppressed_and_change_nothing(ts, purchase, offset):
    state = forgotten(7)
    delta = EventDelta(ts, "pX", "purchase" if purchase else "login", {PURCHASES if purchase else LOGINS: 1}, purchase=purchase, offset=offset)
    assert apply_delta(state, delta, late_before_ms=None) == "suppressed"
    assert state == forgotten(7) and not state.exists


def test_the_tombstone_is_the_only_field_of_an_erased_customers_hash():
    assert state_to_hash(forgotten(123)) == {TOMBSTONE: "123"}
    assert state_from_hash({TOMBSTONE: "123"}) == forgotten(123)
    assert state_from_hash({TOMBSTONE: "123"}) != CustomerState()


# -- consumers of a change to no segment -----------------------------------------------------


CAMPAIGNS = """
campaigns:
  - {name: bye, segmentation: value, leave: [loyal]}
  - {name: hi, segmentation: lifecycle, enter: [active]}
"""


def change(cid: str, segmentation: str, frm: str | None, to: str | None, seq: int) -> SegmentChange:
    return SegmentChange.create(
        customer_id=cid,
        segmentation=segmentation,
        from_segment=frm,
        to_segment=to,
        reason="r",
        model_version=1,
        occurred_at_ms=0,
        cause="c",
        features={},
        seq=seq,
    )


def test_an_erasure_fires_no_campaign_even_one_that_leaving_its_segment_would():
    campaigns = parse_campaigns(CAMPAIGNS)
    assert [d.trigger.campaign for d in campaigns.route(change("c1", "value", "loyal", "lost", 2))] == ["bye"]
    assert campaigns.route(change("c1", "value", "loyal", None, 2)) == []


def test_the_router_fires_nothing_for_a_customer_erased_in_the_same_batch():
    from streams.campaign_router import CampaignRouter

    router = CampaignRouter(parse_campaigns(CAMPAIGNS), redis=None)
    payloads = [
        change("c1", "lifecycle", "new", "active", 2).model_dump_json(by_alias=True),  # before the erasure, same batch
        change("c2", "lifecycle", "new", "active", 2).model_dump_json(by_alias=True),
        change("c1", "lifecycle", "active", None, 3).model_dump_json(by_alias=True),
    ]
    assert [d.trigger.customer_id for d in router.decide(payloads)] == ["c2"]


def test_the_state_topic_gets_a_tombstone_and_a_subscriber_drops_the_customer():
    erased = json.loads(change("c1", "value", "loyal", None, 3).model_dump_json(by_alias=True))
    assert state_record(erased) == (b'["c1","value"]', None)
    follower = ChangeFollower()
    follower.seed([{"customer_id": "c1", "segmentation": "value", "segment": "loyal", "seq": 2}, ("c1", "value")])
    assert follower.state == {}
    for c in (change("c1", "value", None, "new", 1), change("c1", "value", "new", "loyal", 2)):
        follower.apply(json.loads(c.model_dump_json(by_alias=True)))
    assert follower.apply(erased) == "applied" and follower.state[("c1", "value")] == (None, 3)
    assert follower.apply(erased) == "repeat"  # a re-send after a crash
    assert follower.chain_breaks == follower.seq_gaps == 0


# -- the worker's side ----------------------------------------------------------------------


def test_the_erasure_topic_is_consumed_with_the_inputs_but_is_no_event_family():
    topics = Topics("x-")
    assert topics.erasure == "x-segflow-erasure" and topics.erasure in topics.inputs
    assert topics.family_of(topics.erasure) is None and topics.erasure not in topics.by_family.values()
    assert topics.erasure in dict(topics.describe())


def test_the_suppression_lasts_the_setting():
    assert Settings().erasure_suppress_ms == 30 * DAY_MS
    assert Settings(erasure_suppress_days=0).erasure_suppress_ms == 0


def test_a_batch_is_cut_into_runs_at_erasures_and_bad_requests_are_dead_lettered():
    from segmenter.assign import Segmenter
    from segmenter.config import default_config

    settings = Settings(partitions=2)
    engine = Engine(settings, None, Segmenter.from_config(default_config()))
    t = settings.topics

    def login(n: int) -> InboundMessage:
        doc = {"event_id": f"e{n}", "customer_id": "c1", "occurred_at": "2026-12-05T11:00:00Z", "type": "login", "success": True, "channel": "web"}
        return InboundMessage(t.logins, 0, n, b"c1", json.dumps(doc).encode())

    messages = [
        login(1),
        login(2),
        InboundMessage(t.erasure, 0, 0, b"c1", request_bytes()),
        InboundMessage(t.erasure, 0, 1, b"c1", request_bytes(customer_id="c2")),  # key mismatch
        InboundMessage(t.erasure, 0, 2, b"c3", request_bytes(customer_id="c3", request_id="r3")),
        InboundMessage(t.erasure, 0, 3, b"c4", b"{}"),
        login(3),
    ]
    out = BatchOutcome()
    runs = engine._decode(messages, NOW.timestamp(), out)
    assert [type(r) for r in runs] == [EventRun, ErasureRun, EventRun]
    assert [len(r.items) if isinstance(r, EventRun) else [q.customer_id for q in r.requests] for r in runs] == [2, ["c1", "c3"], 1]
    assert [(d.message.offset, d.reason) for d in out.dead_letters] == [(1, "key_mismatch"), (3, "invalid")]
    assert engine.last_offsets[(t.erasure, 0)] == 3


def test_the_models_forget_a_customer_and_the_next_snapshot_is_without_them():
    from segmenter.assign import Segmenter
    from segmenter.config import default_config

    seg = Segmenter.from_config(default_config())
    buyer = {"purchase_days_total": 2.0, "purchase_span_days": 3.0, "days_since_first_purchase": 9.0, "active_days_total": 4.0, "active_span_days": 5.0}
    seg.learn_one({**dict.fromkeys(seg.churn.inputs, 1.0), **buyer}, "gone-customer", 20_000 * DAY_MS)
    snap = seg.snapshot_model()
    assert snap is not None and b"gone-customer" in snap[1]
    assert seg.forget("gone-customer") and not seg.forget("gone-customer")
    after = seg.snapshot_model()  # forgetting counts as learning: a snapshot is due
    assert after is not None and after[0] > snap[0] and b"gone-customer" not in after[1]
