"""A worker that dies between claiming a due customer and committing its
evaluation must not lose the customer's deadline: a claim is a lease that runs
out (``segflow_claim_due``), after which another worker claims the customer
again. Before, the claim removed the deadline, and a customer silent since then
stayed in its segment until its next event."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streams.engine import InboundMessage
from streams.segment_store import DEADLINE_LEASE_MS, StoredAssignment
from streams.settings import Settings
from tests.integration.reliability_helpers import DAY_MS, purchase_json, two_engines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0_MS = (int(time.time() * 1000) // DAY_MS - 60) * DAY_MS + 12 * 3_600_000


def test_a_claimed_deadline_survives_a_worker_that_dies_before_committing(redis_server, redis_client):
    settings = Settings(redis_url=redis_server.url, clock="event", lateness_seconds=0)
    topic = settings.topics.purchases

    async def scenario():
        a, b = await two_engines(settings)
        await a.process([InboundMessage(topic, 0, 0, b"lease", purchase_json("lease", 1, T0_MS))], now=time.time())
        due_at = redis_client.zscore(settings.layout.deadlines_key(settings.layout.partition("lease")), "lease")
        assert due_at is not None
        # The event-time clock passes the deadline, and the customer's two weeks of being
        # `new`, so the re-evaluation moves them; worker A claims the customer and dies.
        await b.features.advance_watermark(max(int(due_at), T0_MS + 15 * DAY_MS) + 1000)
        now_ms = await b.clock_ms()
        assert await a.segments.claim_due(now_ms) == ["lease"]
        before = StoredAssignment.decode(redis_client.hget(settings.layout.segments_key("lease"), "lifecycle")).segment
        leased_until = redis_client.zscore(settings.layout.deadlines_key(settings.layout.partition("lease")), "lease")
        # Within the lease nobody else takes it ...
        early = await b.fire_deadlines()
        # ... after it, worker B does, and the customer moves.
        await b.features.advance_watermark(int(leased_until) + 1000)
        late = await b.fire_deadlines()
        for e in (a, b):
            await e.redis.aclose()
        return now_ms, before, leased_until, early, late

    now_ms, before, leased_until, early, late = asyncio.run(scenario())
    assert leased_until == now_ms + DEADLINE_LEASE_MS
    assert early.changes == []
    lifecycle = [c for c in (json.loads(p) for _, p in late.changes) if c["segmentation"] == "lifecycle"]
    assert [c["from"] for c in lifecycle] == [before] and lifecycle[0]["to"] != before
    held = StoredAssignment.decode(redis_client.hget(settings.layout.segments_key("lease"), "lifecycle")).segment
    assert held == lifecycle[-1]["to"]
