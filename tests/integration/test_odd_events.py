"""Odd but possible input through the real worker: duplicates at new offsets,
out-of-order events within the lateness, far too late, far in the future, and
customer ids with odd characters. Each is handled as documented
(docs/ARCHITECTURE.md "Time" and "Idempotency", streams/events.py id rules:
1 to 256 characters, anything else is dead-lettered as ``invalid``)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from features import keys
from features.codec import state_from_hash
from features.state import PAGE_VIEWS
from streams.status import read_totals
from streams.topic_reader import read_to_end
from tests.kafka_helpers import fresh_topics, send

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = datetime.now(UTC).replace(microsecond=0)

ODD_IDS = ["ünïcødé-客户-🙂", "a}b{c", "{x}", "x:y;z", " ", "tab\there", "nul\x00byte", "Ω" * 256, "x" * 256, "'; DROP TABLE--"]


def doc(family: str, event_id: str, customer: str, when: datetime) -> dict:
    base = {"event_id": event_id, "customer_id": customer, "occurred_at": when.isoformat()}
    if family == "login":
        return {**base, "type": "login", "success": True, "channel": "web"}
    if family == "clickstream":
        return {**base, "type": "page_view", "session_id": "s1", "page": "/"}
    return {**base, "order_id": f"o-{event_id}", "amount": "10.00", "currency": "EUR"}


def msg(family: str, event_id: str, customer: str, when: datetime, key: str | None = None) -> tuple[str, bytes, bytes]:
    return family, (customer if key is None else key).encode(), json.dumps(doc(family, event_id, customer, when)).encode()


def publish(broker, topics, messages) -> None:
    for family in ("clickstream", "purchase", "login"):
        batch = [(k, v) for f, k, v in messages if f == family]
        if batch:
            send(broker, topics.by_family[family], batch)


def wait(predicate, what: str, worker, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert worker.proc.poll() is None, f"worker exited:\n{worker.log()[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{what} after {timeout}s\n{worker.log()[-3000:]}")


def test_odd_events_are_each_handled_as_documented(broker, redis_client, start_worker):
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    h1, h3 = NOW - timedelta(hours=1), NOW - timedelta(hours=3)
    first = [
        # The same login twice (a producer retry): two offsets, one event id.
        msg("login", "dup-1", "dana", h1),
        msg("login", "dup-1", "dana", h1),
        # Out of order within the 6 h lateness: the newer first, both count, each in its own day.
        msg("clickstream", "ooo-2", "olga", h1),
        msg("clickstream", "ooo-1", "olga", h3),
        # A little in the future (clock skew within the hour allowed) and far in the future.
        msg("login", "fut-1", "fred", NOW + timedelta(minutes=10)),
        msg("login", "fut-2", "fred", NOW + timedelta(days=2)),
        # Ids out of the rules: empty, longer than 256 characters; and a key that is not the id.
        msg("login", "bad-1", "", h1),
        msg("login", "bad-2", "y" * 1000, h1),
        msg("login", "bad-3", "mallory", h1, key="eve"),
        # Keep every input family moving the event-time watermark to about now.
        msg("purchase", "wm-1", "walt", h1),
    ]
    first += [msg("purchase", f"odd-{i}", cid, h1) for i, cid in enumerate(ODD_IDS)]
    publish(broker, topics, first)

    def n(cid):
        return int(redis_client.hget(worker.layout.customer_key(cid), "n") or 0)

    wait(lambda: all(n(c) == 1 for c in ["dana", "fred", "walt", *ODD_IDS]) and n("olga") == 2, "good events not applied", worker)
    # Far too late can only be judged once the worker has an event-time watermark.
    wait(lambda: int(redis_client.get(keys.WATERMARK) or 0) >= (NOW - timedelta(hours=2)).timestamp() * 1000, "no watermark", worker)
    second = [
        msg("clickstream", "late-1", "olga", NOW - timedelta(days=2)),
        msg("login", "dup-1", "dana", h1),  # the retry again, now after the watermark moved
    ]
    publish(broker, topics, second)
    sent = len(first) + len(second)

    expected_dead = {"fut-2": "absurd_timestamp", "bad-1": "invalid", "bad-2": "invalid", "bad-3": "key_mismatch", "late-1": "too_late"}
    dead = wait(lambda: (rs := read_to_end(broker.bootstrap, topics.dead_letter)) and len(rs) >= len(expected_dead) and rs, "dead letters missing", worker)
    got = {json.loads(r.value)["event_id"]: dict(r.headers)["segflow.reason"].decode() for r in dead}
    assert got == expected_dead

    stats = wait(
        lambda: (s := read_totals(redis_client, worker.layout)) and s.get("received", 0) == sent and s,
        "segflow:stats never counted every message",
        worker,
        timeout=30,
    )
    assert int(stats.get("duplicates", 0)) == 2  # dana's retries: dropped, not dead-lettered
    assert int(stats.get("dead_lettered", 0)) == len(expected_dead)
    assert int(stats.get("applied", 0)) == sent - 2 - len(expected_dead)

    olga = state_from_hash(redis_client.hgetall(worker.layout.customer_key("olga")))
    assert olga.events_total == 2 and olga.first_seen_ms == int(h3.timestamp() * 1000) and olga.last_seen_ms == int(h1.timestamp() * 1000)
    assert sum(b[PAGE_VIEWS] for b in olga.buckets.values()) == 2
    assert set(olga.buckets) == {int(h1.timestamp() * 1000) // 86_400_000, int(h3.timestamp() * 1000) // 86_400_000}
    dana = state_from_hash(redis_client.hgetall(worker.layout.customer_key("dana")))
    assert dana.events_total == 1 and sum(b[9] for b in dana.buckets.values()) == 1  # one login
    assert not redis_client.exists(worker.layout.customer_key("")) and not redis_client.exists(worker.layout.customer_key("y" * 1000))

    # Every odd id got its own keys and its segments announced under exactly that id.
    for cid in ODD_IDS:
        state = state_from_hash(redis_client.hgetall(worker.layout.customer_key(cid)))
        assert state.purchases_total == 1 and state.revenue_total_cents == 1000, cid
        assert redis_client.hexists(worker.layout.segments_key(cid), "lifecycle"), cid
    announced = wait(
        lambda: (ids := {json.loads(r.value)["customer_id"] for r in read_to_end(broker.bootstrap, topics.segment_changes)}) >= set(ODD_IDS) and ids,
        "odd ids never announced",
        worker,
    )
    assert set(ODD_IDS) <= announced
    assert keys.customer_id_of(worker.layout.segments_key("a}b{c")) == "a}b{c"
    assert worker.proc.poll() is None
