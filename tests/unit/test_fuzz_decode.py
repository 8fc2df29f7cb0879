"""Fuzz the pure decode path with hypothesis: whatever the bytes, only
InvalidEvent escapes, and whatever decodes can be turned into a delta and the
FCALL arguments without an error (the rest of the worker's per-message path)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.codec import delta_args
from features.extract import delta_of
from streams.events import FAMILIES, InvalidEvent, check_not_future, decode

NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()

VALID = {
    "clickstream": {
        "event_id": "e1",
        "customer_id": "c1",
        "occurred_at": "2026-05-30T10:00:00Z",
        "type": "add_to_cart",
        "session_id": "s1",
        "page": "/p/1",
        "product_id": "p1",
        "category": "books",
        "price": "12.50",
    },
    "purchase": {
        "event_id": "e2",
        "customer_id": "c1",
        "occurred_at": "2026-05-30T10:05:00+02:00",
        "order_id": "o1",
        "amount": "19.99",
        "currency": "USD",
        "discount": "5",
        "items": [{"product_id": "p1", "category": "books", "quantity": 2, "unit_price": "12.49"}],
    },
    "login": {"event_id": "e3", "customer_id": "c1", "occurred_at": "2026-05-30T09:59:00Z", "type": "login", "success": True, "channel": "web"},
    "profile": {
        "event_id": "e4",
        "customer_id": "c1",
        "occurred_at": "2026-05-30T09:00:00Z",
        "type": "profile",
        "birth_year": 1990,
        "country": "DE",
        "region": "Bayern",
        "plan": "pro",
        "signup_channel": "web",
        "marketing_consent": True,
    },
}

families = st.sampled_from([*sorted(FAMILIES), "unknown", ""])

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e400",
            "NaN",
            "2026-13-45T99:99:99Z",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "2026-05-30T10:00:00",
            "1989-12-31T23:59:59Z",
            "\u0000",
            "\ud7ff" * 3,
        ]
    ),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def worker_path(family: str, raw: bytes, key: bytes | None = None):
    """What Engine.process does with one message before Redis; only InvalidEvent may escape."""
    try:
        event = decode(family, raw)
        check_not_future(event, NOW, 3600)
        if key is not None and key.decode("utf-8", "replace") != event.customer_id:
            raise InvalidEvent("key_mismatch")
    except InvalidEvent as exc:
        assert exc.reason and isinstance(exc.reason, str)
        assert isinstance(exc.detail, str)
        return exc.reason
    delta = delta_of(event, (0, 1))
    args = delta_args(delta, None)
    assert all(isinstance(a, (str, int)) for a in args)
    assert delta.ts_ms >= 0 and all(isinstance(v, int) for v in delta.increments.values())
    return "ok"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=families, raw=st.binary(max_size=300))
@example(family="login", raw=b"")
@example(family="login", raw=b"\xff\xfe\x00")
@example(family="login", raw=b"[" * 5000)
@example(family="purchase", raw=b'{"amount": 1e99999}')
def test_arbitrary_bytes_only_raise_invalid_event(family, raw):
    assert worker_path(family, raw) != "ok" or family in FAMILIES


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(sorted(VALID)),
    data=st.data(),
)
def test_mutated_valid_events_only_raise_invalid_event(family, data):
    doc = dict(VALID[family])
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        op = data.draw(st.sampled_from(["drop", "replace", "add", "nest"]), label="op")
        field = data.draw(st.sampled_from(sorted(doc) or ["x"]), label="field")
        if op == "drop":
            doc.pop(field, None)
        elif op == "replace":
            doc[field] = data.draw(json_values, label="value")
        elif op == "add":
            doc[data.draw(st.text(max_size=12), label="new")] = data.draw(json_values, label="value")
        elif op == "nest" and family == "purchase":
            doc["items"] = [
                dict(
                    VALID["purchase"]["items"][0], **{data.draw(st.sampled_from(["quantity", "unit_price", "category", "product_id"])): data.draw(json_values)}
                )
            ]
    raw = json.dumps(doc, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode()
    # And byte-level damage to the serialised text.
    for _ in range(data.draw(st.integers(0, 2), label="byte edits")):
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="pos")
        raw = raw[:pos] + data.draw(st.binary(max_size=3), label="bytes") + raw[pos + 1 :]
    key = data.draw(st.one_of(st.none(), st.just(b"c1"), st.binary(max_size=8)), label="key")
    worker_path(family, raw, key)


@settings(max_examples=200, deadline=None)
@given(customer_id=st.text(min_size=1, max_size=256), family=st.sampled_from(sorted(VALID)))
def test_any_customer_id_of_1_to_256_characters_is_accepted(customer_id, family):
    doc = dict(VALID[family], customer_id=customer_id)
    raw = json.dumps(doc).encode()
    assert worker_path(family, raw, customer_id.encode()) == "ok"


def test_customer_id_rules():
    for cid, reason in [("", "invalid"), ("x" * 257, "invalid"), ("x" * 1000, "invalid")]:
        assert worker_path("login", json.dumps(dict(VALID["login"], customer_id=cid)).encode()) == reason
    assert worker_path("login", json.dumps(dict(VALID["login"], customer_id="x" * 256)).encode()) == "ok"
