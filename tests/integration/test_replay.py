"""Idempotent under redelivery and replay, through the real broker and worker.

A simulated population is published with some events sent twice (a producer
retry: same event id, new offset). Features must equal the pure reference fold
of the distinct events. Then a second worker in a new consumer group replays
every topic from the beginning: no feature may change in Redis, and every
replayed event must be refused: as a duplicate, or, a producer retry whose id the
duplicate filter forgot once the lateness passed it, as too late (the new group's
worker does not know the watermark yet; CI on 2026-12-07 saw it apply one twice).
"""

from __future__ import annotations

import random
import time

import pytest

from features.catalogue import compute
from features.codec import state_from_hash
from features.extract import delta_of
from features.state import CustomerState, apply_delta
from lab.simulate import Simulation, event_to_json
from streams.status import read_totals
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import fresh_topics, send

pytestmark = pytest.mark.integration


def wait_stat(redis_client, field: str, expected: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    stats: dict = {}
    while time.monotonic() < deadline:
        stats = read_totals(redis_client, WORKER_LAYOUT)
        if stats.get(field, 0) >= expected:
            return stats
        time.sleep(0.3)
    raise AssertionError(f"{field} did not reach {expected} in {timeout}s: {stats}")


def wait_settled(redis_client, quiet: float = 3.0, timeout: float = 60) -> None:
    """Until ``changes`` has not moved for ``quiet`` seconds: the deadline timer (every
    0.25 s) has fired what the last batch's watermark made due. Stopping a worker
    right after its last batch left those to the next worker (a flaky +3 changes)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = redis_client.hget("segflow:stats", "changes")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)
    raise AssertionError(f"changes still moving after {timeout}s")


def customer_hashes(redis_client, customer_ids) -> dict[str, dict]:
    pipe = redis_client.pipeline(transaction=False)
    for cid in customer_ids:
        pipe.hgetall(WORKER_LAYOUT.customer_key(cid))
    return dict(zip(customer_ids, pipe.execute(), strict=False))


def without_filter(hashes: dict[str, dict]) -> dict[str, dict]:
    return {cid: {k: v for k, v in h.items() if k not in ("q", "lf")} for cid, h in hashes.items()}


def test_duplicates_and_a_full_replay_change_nothing(broker, redis_client, start_worker):
    sim = Simulation(customers=40, days=20, seed=11)
    events = list(sim.events())
    # Producer retries: the same event sent again right after the first send (new offset).
    retried = set(random.Random(5).sample(range(len(events)), 60))
    topics = fresh_topics(broker)
    by_family: dict[str, list] = {}
    for i, (family, event) in enumerate(events):
        message = (event.customer_id.encode(), event_to_json(event))
        by_family.setdefault(family, []).extend([message, message] if i in retried else [message])
    sent = sum(len(m) for m in by_family.values())

    first = start_worker(topics.prefix, app_id=f"{topics.prefix}first")
    for family, messages in by_family.items():
        send(broker, topics.by_family[family], messages)
    stats = wait_stat(redis_client, "received", sent)
    assert int(stats["applied"]) == len(events), stats
    assert int(stats["duplicates"]) == len(retried), stats
    assert int(stats.get("dead_lettered", 0)) == 0, stats

    # Equal to the pure fold of the distinct events, feature by feature.
    reference: dict[str, CustomerState] = {}
    for _, event in events:
        apply_delta(reference.setdefault(event.customer_id, CustomerState()), delta_of(event), None)
    end_ms = int(sim.end.timestamp() * 1000)
    stored = customer_hashes(redis_client, list(reference))
    for cid, state in reference.items():
        assert compute(state_from_hash(stored[cid]), end_ms) == compute(state, end_ms), cid

    # A replay of every topic by a new consumer group: nothing changes.
    wait_settled(redis_client)
    first.stop()
    changes_before = int(redis_client.hget("segflow:stats", "changes") or 0)
    start_worker(topics.prefix, app_id=f"{topics.prefix}replay")
    stats = wait_stat(redis_client, "received", 2 * sent)
    wait_settled(redis_client)
    stats = read_totals(redis_client, WORKER_LAYOUT)
    assert int(stats["applied"]) == len(events), stats
    late = int(stats.get("dead_lettered:too_late", 0))
    assert int(stats["duplicates"]) + late == len(retried) + sent, stats
    assert late <= len(retried) and int(stats.get("dead_lettered", 0)) == late, stats
    # The duplicate filter and its lateness floor move with the sweep; nothing else may.
    assert without_filter(customer_hashes(redis_client, list(reference))) == without_filter(stored)
    # Replayed customers are re-evaluated (a crash may have hit before their
    # segment commit) but the same state gives the same segments: no new change.
    assert int(stats.get("changes", 0)) == changes_before, stats
