"""A flood of events for one customer through the real worker: the customer's
hash stays bounded (daily buckets within the 90-day window, 8 categories plus
``~other``, a duplicate filter of at most 64 entries, a history of at most
``history_cap`` changes) and stops growing once the window is full."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from features.codec import ring_entries
from features.state import BUCKET_DAYS, CATEGORY_CAP, DEDUPE_CAP
from streams.topic_reader import read_to_end
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import fresh_topics, send

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(days=250)
CID = "flood"


def click(i: int, when: datetime) -> tuple[bytes, bytes]:
    doc = {"event_id": f"click-{i}", "customer_id": CID, "occurred_at": when.isoformat(), "type": "page_view", "session_id": f"s{i // 20}", "page": "/"}
    return CID.encode(), json.dumps(doc).encode()


def purchase(i: int, when: datetime) -> tuple[bytes, bytes]:
    items = [{"product_id": f"p{i}", "category": f"cat-{i % 25}", "quantity": 1, "unit_price": "9.99"}]
    doc = {
        "event_id": f"order-{i}",
        "customer_id": CID,
        "occurred_at": when.isoformat(),
        "order_id": f"o{i}",
        "amount": "9.99",
        "currency": "USD",
        "items": items,
    }
    return CID.encode(), json.dumps(doc).encode()


def footprint(r) -> dict:
    h = r.hgetall(WORKER_LAYOUT.customer_key(CID))
    return {
        "events": int(h.get("n", 0)),
        "hlen": r.hlen(WORKER_LAYOUT.customer_key(CID)),
        "buckets": sum(1 for f in h if f.startswith("d:")),
        "categories": sum(1 for f in h if f.startswith("c:")),
        "ring": len(ring_entries(h.get("q", ""))),
        "memory": r.memory_usage(WORKER_LAYOUT.customer_key(CID)),
        "history": r.llen(WORKER_LAYOUT.history_key(CID)),
    }


def test_a_flood_for_one_customer_keeps_its_state_bounded(broker, redis_client, start_worker):
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_IDLE_PARTITION_SECONDS=2)

    def fed(total: int, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while (f := footprint(redis_client))["events"] < total:
            assert worker.proc.poll() is None, worker.log()[-3000:]
            assert time.monotonic() < deadline, f"{f['events']} of {total} applied\n{worker.log()[-2000:]}"
            time.sleep(0.3)
        return f

    # 300 orders over 100 days in 25 categories, then 3000 page views over the next 140 days.
    send(broker, topics.purchases, [purchase(i, START + timedelta(hours=8 * i)) for i in range(300)])
    fed(300)
    clicks = [click(i, START + timedelta(days=100) + timedelta(minutes=67 * i)) for i in range(3000)]
    send(broker, topics.clickstream, clicks)
    window_full = fed(3300)
    # Then a burst: 2000 page views within the last hour, all inside the lateness (6 h).
    burst_start = NOW - timedelta(hours=1)
    send(broker, topics.clickstream, [click(3000 + i, burst_start + timedelta(seconds=1.5 * i)) for i in range(2000)])
    after = fed(5300)
    print(f"after 3300 events: {window_full}; after 5300: {after}")

    for f in (window_full, after):
        assert f["buckets"] <= BUCKET_DAYS
        assert f["categories"] <= CATEGORY_CAP + 1  # + ~other
        assert f["ring"] <= DEDUPE_CAP
        assert f["history"] <= 50  # SEGFLOW_HISTORY_CAP default
        assert f["hlen"] <= BUCKET_DAYS + CATEGORY_CAP + 1 + 20  # + the fixed fields
    assert after["ring"] == DEDUPE_CAP  # the burst filled the filter to its cap, no further
    assert after["hlen"] <= window_full["hlen"] + 2
    assert after["memory"] <= window_full["memory"] * 1.25 + 1024, (window_full, after)
    assert after["memory"] < 16 * 1024
    h = redis_client.hgetall(WORKER_LAYOUT.customer_key(CID))
    assert int(h["np"]) == 300 and sum(int(v) for f, v in h.items() if f.startswith("c:")) == 300
    assert not read_to_end(broker.bootstrap, topics.dead_letter)


def test_a_flood_of_new_customer_ids_stops_at_the_limit_and_loses_nothing(broker, redis_client, start_worker):
    """A cardinality explosion (a producer bug sending made-up ids): past
    SEGFLOW_MAX_CUSTOMERS, events of customers not yet known are dead-lettered as
    ``customer_limit`` (with their bytes, so they can be replayed after raising
    the limit); customers already known keep being updated."""
    limit, flood = 40, 100
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_MAX_CUSTOMERS=limit, SEGFLOW_IDLE_PARTITION_SECONDS=2)

    def page_view(cid: str, i: int) -> tuple[bytes, bytes]:
        doc = {
            "event_id": f"{cid}-{i}",
            "customer_id": cid,
            "occurred_at": (NOW - timedelta(minutes=30 - i)).isoformat(),
            "type": "page_view",
            "session_id": f"{cid}-s",
            "page": "/",
        }
        return cid.encode(), json.dumps(doc).encode()

    known = [f"known-{i}" for i in range(10)]
    send(broker, topics.clickstream, [page_view(c, 0) for c in known])
    deadline = time.monotonic() + 60
    while sum(redis_client.exists(WORKER_LAYOUT.customer_key(c)) for c in known) < len(known):
        assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    # Then 100 made-up ids, two events each, and a second event for every known customer.
    made_up = [f"bot-{i}" for i in range(flood)]
    send(broker, topics.clickstream, [page_view(c, i) for i in (1, 2) for c in made_up] + [page_view(c, 3) for c in known])
    # The limit holds per input partition (its count is a key in the partition's slot): ceil(40 / 2) each.
    per_partition = -(-limit // WORKER_LAYOUT.partitions)
    admitted = 0
    for p in range(WORKER_LAYOUT.partitions):
        known_here = sum(WORKER_LAYOUT.partition(c) == p for c in known)
        admitted += min(sum(WORKER_LAYOUT.partition(c) == p for c in made_up), per_partition - known_here)
    expected_dead = 2 * (flood - admitted)
    deadline = time.monotonic() + 90
    while len(dead := read_to_end(broker.bootstrap, topics.dead_letter)) < expected_dead:
        assert worker.proc.poll() is None and time.monotonic() < deadline, f"{len(dead)} dead letters\n{worker.log()[-3000:]}"
        time.sleep(0.5)
    time.sleep(1)
    dead = read_to_end(broker.bootstrap, topics.dead_letter)
    assert len(dead) == expected_dead
    assert {dict(r.headers)["segflow.reason"] for r in dead} == {b"customer_limit"}
    assert [int(redis_client.get(WORKER_LAYOUT.customers(p))) for p in range(WORKER_LAYOUT.partitions)] == [per_partition] * WORKER_LAYOUT.partitions
    stored = {c for c in made_up if redis_client.exists(WORKER_LAYOUT.customer_key(c))}
    assert len(stored) == admitted
    assert all(int(redis_client.hget(WORKER_LAYOUT.customer_key(c), "n")) == 2 for c in stored)  # admitted ones keep all their events
    assert {json.loads(r.value)["customer_id"] for r in dead} == set(made_up) - stored
    assert all(int(redis_client.hget(WORKER_LAYOUT.customer_key(c), "n")) == 2 for c in known)
