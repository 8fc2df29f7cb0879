"""The per-customer history in Redis: a capped list of compact entries, newest
first, each naming a change that is on the topic; a history left as a stream by
an older version is replaced, not a reason to fail the commit."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from segmenter.assign import Segmenter
from segmenter.changes import read_history_entry
from segmenter.config import default_config
from streams.app import redis_client as async_redis
from streams.engine import Engine, InboundMessage
from streams.settings import Settings
from tests.integration.reliability_helpers import DAY_MS, purchase_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0_MS = (int(time.time() * 1000) // DAY_MS - 60) * DAY_MS + 12 * 3_600_000


def test_history_is_a_capped_list_of_the_changes_on_the_topic_and_replaces_an_old_stream(redis_server, redis_client):
    settings = Settings(redis_url=redis_server.url, clock="event", lateness_seconds=0, history_cap=3)
    redis_client.xadd(settings.layout.history_key("hist"), {"change": "{}"})  # as an older segflow wrote it
    topic = settings.topics.purchases

    async def run():
        engine = Engine(settings, async_redis(redis_server.url), Segmenter.from_config(default_config()))
        await engine.start()
        engine.assign({(topic, 0)}, now=time.time())
        changes = []
        # Purchases 25 days apart: every gap lets deadlines move the customer, every purchase back.
        for n in range(8):
            ts = T0_MS + n * 25 * DAY_MS // 4
            out = await engine.process([InboundMessage(topic, 0, n, b"hist", purchase_json("hist", n, ts))], now=time.time())
            changes += [json.loads(p) for _, p in out.changes]
            await engine.features.advance_watermark(ts + 20 * DAY_MS)
            while (fired := await engine.fire_deadlines()).changes:
                changes += [json.loads(p) for _, p in fired.changes]
        await engine.redis.aclose()
        return changes

    changes = asyncio.run(run())
    assert len(changes) > 3, changes
    assert redis_client.type(settings.layout.history_key("hist")) == "list"
    entries = [read_history_entry(e) for e in redis_client.lrange(settings.layout.history_key("hist"), 0, -1)]
    newest = list(reversed(changes))[:3]
    assert [e["change_id"] for e in entries] == [c["change_id"] for c in newest]
    assert [(e["segmentation"], e["from"], e["to"], e["reason"], e["occurred_at"]) for e in entries] == [
        (c["segmentation"], c["from"], c["to"], c["reason"], c["occurred_at"]) for c in newest
    ]
