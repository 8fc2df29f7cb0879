"""Every kind of bad message reaches the dead-letter topic with its reason; good ones still flow."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def login(event_id: str, customer: str = "erin", when: datetime = NOW, **extra) -> bytes:
    doc = {"event_id": event_id, "customer_id": customer, "occurred_at": when.isoformat(), "type": "login", "success": True, "channel": "web"}
    doc.update(extra)
    return json.dumps(doc).encode()


# (key, value, topic family, expected reason)
BAD = [
    (b"erin", b"{not json", "login", "bad_json"),
    (b"erin", b"", "login", "empty"),
    (b"erin", b"[1, 2, 3]", "login", "invalid"),
    (b"erin", login("w1", success="maybe"), "login", "invalid"),
    (b"erin", json.dumps({"event_id": "m1", "occurred_at": NOW.isoformat(), "type": "login", "success": True, "channel": "web"}).encode(), "login", "invalid"),
    (b"erin", login("u1", type="logout"), "login", "unknown_event_type"),
    (
        b"erin",
        json.dumps({"event_id": "u2", "customer_id": "erin", "occurred_at": NOW.isoformat(), "type": "teleport", "session_id": "s"}).encode(),
        "clickstream",
        "unknown_event_type",
    ),
    (b"erin", login("a1", when=datetime(1900, 1, 1, tzinfo=UTC)), "login", "absurd_timestamp"),
    (b"erin", login("a2", when=NOW + timedelta(days=400)), "login", "absurd_timestamp"),
    (b"erin", login("n1").replace(b'+00:00"', b'"'), "login", "invalid"),  # naive timestamp
    (b"mallory", login("k1"), "login", "key_mismatch"),
    (b"erin", b"\xff\xfe\x00garbage", "purchase", "bad_json"),
    (
        b"erin",
        json.dumps({"event_id": "p1", "customer_id": "erin", "occurred_at": NOW.isoformat(), "order_id": "o", "amount": "-5", "currency": "USD"}).encode(),
        "purchase",
        "invalid",
    ),
]


def test_each_bad_message_is_dead_lettered_with_its_reason_and_good_events_still_flow(broker, redis_server, start_worker, redis_client):
    topics = fresh_topics(broker)
    # Partitions that never receive an event hold the watermark back until they
    # count as idle; 2 s instead of the default 30 keeps this test short.
    start_worker(topics.prefix, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    for key, value, family, _ in BAD:
        send(broker, topics.by_family[family], [(key, value)])
    # A good event after all the bad ones; and once every input family has moved
    # the event-time watermark to about now, one too late for the allowed lateness (6 h by default).
    send(broker, topics.logins, [(b"erin", login("good-1", when=NOW - timedelta(minutes=1)))])
    recent = (NOW - timedelta(minutes=1)).isoformat()
    send(
        broker,
        topics.clickstream,
        [(b"frank", json.dumps({"event_id": "f1", "customer_id": "frank", "occurred_at": recent, "type": "page_view", "session_id": "s"}).encode())],
    )
    send(
        broker,
        topics.purchases,
        [(b"frank", json.dumps({"event_id": "f2", "customer_id": "frank", "occurred_at": recent, "order_id": "o", "amount": "5", "currency": "USD"}).encode())],
    )
    deadline = time.monotonic() + 60
    while redis_client.hget(WORKER_LAYOUT.customer_key("frank"), "n") != "2" or redis_client.hget(WORKER_LAYOUT.customer_key("erin"), "n") != "1":
        assert time.monotonic() < deadline, "good events were not applied"
        time.sleep(0.2)
    # The late event can only be judged once the worker has a watermark.
    while int(redis_client.get("segflow:watermark") or 0) < (NOW - timedelta(hours=1)).timestamp() * 1000:
        assert time.monotonic() < deadline, "the event-time watermark never advanced"
        time.sleep(0.2)
    send(broker, topics.logins, [(b"erin", login("late-1", when=NOW - timedelta(days=2)))])
    send(broker, topics.logins, [(b"erin", login("good-1", when=NOW - timedelta(minutes=1)))])  # a duplicate: dropped, not dead-lettered

    records = read_until(broker, topics.dead_letter, lambda rs: len(rs) >= len(BAD) + 1, timeout=90)
    got = [(r.value, dict(r.headers)) for r in records]
    for _key, value, family, reason in BAD:
        match = [h for v, h in got if v == value and h["segflow.source.topic"].decode() == topics.by_family[family]]
        assert match, f"{value!r} not dead-lettered"
        assert match[0]["segflow.reason"].decode() == reason, (value, match[0])
    too_late = [h for v, h in got if v == login("late-1", when=NOW - timedelta(days=2))]
    assert too_late and too_late[0]["segflow.reason"] == b"too_late"
    assert len(records) == len(BAD) + 1  # the duplicate was not dead-lettered

    changes = read_until(broker, topics.segment_changes, lambda rs: any(json.loads(r.value)["customer_id"] == "erin" for r in rs), timeout=60)
    assert changes
    assert redis_client.hget(WORKER_LAYOUT.customer_key("erin"), "n") == "1"  # the good login, once
