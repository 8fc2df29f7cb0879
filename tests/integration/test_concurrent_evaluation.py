"""Two workers evaluating one customer at once (found by the two-worker fault
test, reproduced here deterministically): worker B's deadline timer claims a
customer whose partition worker A owns, reads its state, and writes its
decision after A has applied and evaluated a fresh event. Before segment
commits became compare-and-set (``segflow_commit`` checks the ``_v`` version
of the segments an evaluation read), B's stale decision won: a customer who had
just bought was left at_risk."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streams.engine import InboundMessage
from streams.segment_store import StoredAssignment
from streams.settings import Settings
from tests.integration.reliability_helpers import DAY_MS, purchase_json, two_engines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0_MS = (int(time.time() * 1000) // DAY_MS - 40) * DAY_MS + 12 * 3_600_000


def test_a_deadline_evaluation_in_another_worker_does_not_overwrite_a_fresher_event_evaluation(redis_server, redis_client):
    settings = Settings(redis_url=redis_server.url, clock="event", lateness_seconds=0)
    topic = settings.topics.purchases

    async def scenario():
        a, b = await two_engines(settings)
        first = await a.process([InboundMessage(topic, 0, 0, b"race", purchase_json("race", 1, T0_MS))], now=time.time())
        # The event-time watermark moves 20 days on (other customers' events): race is due.
        await a.features.advance_watermark(T0_MS + 20 * DAY_MS)
        b_has_read, a_done = asyncio.Event(), asyncio.Event()
        read = b.features.read

        async def read_then_wait(ids):
            rows = await read(ids)
            b_has_read.set()
            await a_done.wait()
            return rows

        b.features.read = read_then_wait
        deadline = asyncio.create_task(b.fire_deadlines())
        await b_has_read.wait()
        # Meanwhile race buys again, 20 days on: A applies and evaluates the fresh state.
        fresh = await a.process([InboundMessage(topic, 0, 1, b"race", purchase_json("race", 2, T0_MS + 20 * DAY_MS))], now=time.time())
        a_done.set()
        stale = await deadline
        for e in (a, b):
            await e.redis.aclose()
        return first, fresh, stale

    first, fresh, stale = asyncio.run(scenario())
    moves = [json.loads(p) for _, p in first.changes + fresh.changes + stale.changes]
    lifecycle = [(c["from"], c["to"], c["reason"]) for c in moves if c["segmentation"] == "lifecycle"]
    print(lifecycle)
    held = StoredAssignment.decode(redis_client.hget(settings.layout.segments_key("race"), "lifecycle")).segment
    fresh_to = [c["to"] for c in (json.loads(p) for _, p in fresh.changes) if c["segmentation"] == "lifecycle"]
    # Redis must hold what the freshest state says; and no two changes may leave the same segment.
    assert not fresh_to or held == fresh_to[-1], (held, lifecycle)
    froms = [f for f, _, _ in lifecycle]
    assert len(froms) == len(set(froms)), f"forked: {lifecycle}"
    # The stale evaluation lost the compare-and-set: it was re-queued, not written.
    assert stale.changes == [] and redis_client.zscore(settings.layout.deadlines_key(settings.layout.partition("race")), "race") is not None
