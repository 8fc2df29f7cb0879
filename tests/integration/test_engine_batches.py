"""The engine shell against a real Redis, without a broker: batch-level event-time rules."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC

import pytest

from features.codec import state_from_hash
from segmenter.assign import Segmenter
from segmenter.config import default_config
from streams.app import redis_client as async_redis
from streams.engine import Engine, InboundMessage
from streams.settings import Settings
from streams.status import read_totals

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
T0_MS = int(time.time() * 1000) - 30 * DAY_MS


def purchase(customer: str, n: int, ts_ms: int) -> bytes:
    from datetime import datetime

    when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat()
    return json.dumps(
        {"event_id": f"{customer}-{n}", "customer_id": customer, "occurred_at": when, "order_id": f"o{n}", "amount": "10", "currency": "USD"}
    ).encode()


def run(coro):
    return asyncio.run(coro)


async def started_engine(settings: Settings, partitions: set[tuple[str, int]]) -> Engine:
    engine = Engine(settings, async_redis(settings.redis_url.get_secret_value()), Segmenter.from_config(default_config()))
    await engine.start()
    engine.assign(partitions, now=time.time())
    return engine


def test_events_of_one_batch_are_judged_against_the_watermark_before_the_batch(redis_server, redis_client):
    """Two in-order partitions replayed in one batch, zero lateness: nothing is late.

    The batch's own newest events must not make its older ones too late
    (a replay of a backlog delivers days of event time per batch)."""
    settings = Settings(redis_url=redis_server.url, lateness_seconds=0, clock="event")
    topic = settings.topics.purchases

    async def scenario():
        engine = await started_engine(settings, {(topic, 0), (topic, 1)})
        batch = [InboundMessage(topic, p, day, b"c%d" % p, purchase(f"c{p}", day, T0_MS + day * DAY_MS)) for day in range(10) for p in (0, 1)]
        first = await engine.process(batch, now=time.time())
        # Then an event for partition 0 older than both partitions' newest: too late.
        late = await engine.process([InboundMessage(topic, 0, 10, b"c0", purchase("c0", 99, T0_MS + 5 * DAY_MS))], now=time.time())
        await engine.redis.aclose()
        return first, late

    first, late = run(scenario())
    assert [dl.reason for dl in first.dead_letters] == []
    assert redis_client.hget(settings.layout.customer_key("c0"), "n") == "10" and redis_client.hget(settings.layout.customer_key("c1"), "n") == "10"
    assert [dl.reason for dl in late.dead_letters] == ["too_late"]


def test_a_redelivery_after_a_crash_before_the_segment_commit_still_moves_the_customer(redis_server, redis_client):
    """Features applied, then the worker died before committing segments: the
    redelivered events are duplicates, yet the customer must get its segments."""
    settings = Settings(redis_url=redis_server.url, clock="event")
    topic = settings.topics.purchases

    async def scenario():
        engine = await started_engine(settings, {(topic, 0)})
        batch = [InboundMessage(topic, 0, n, b"crash", purchase("crash", n, T0_MS + n * 3_600_000)) for n in range(3)]
        commit = engine.segments.write

        async def die(updates):
            raise ConnectionError("worker killed before the segment commit")

        engine.segments.write = die
        with pytest.raises(ConnectionError):
            await engine.process(batch, now=time.time())
        engine.segments.write = commit
        again = await engine.process(batch, now=time.time())  # redelivered from the last committed offset
        await engine.redis.aclose()
        return again

    again = run(scenario())
    assert redis_client.hget(settings.layout.customer_key("crash"), "n") == "3"  # applied once
    assert {json.loads(p)["segmentation"] for _, p in again.changes} >= {"lifecycle"}
    assert redis_client.hget(settings.layout.segments_key("crash"), "lifecycle") is not None


def test_changes_being_published_are_not_stale_however_old(redis_server, redis_client):
    """The stale-outbox relay skips the entries this worker committed and has not yet
    finished publishing: a Redis outage that holds up their deletion must not put
    them on the topic a second time."""
    settings = Settings(redis_url=redis_server.url, clock="event")
    topic = settings.topics.purchases

    async def scenario():
        p = settings.layout.partition("s1")  # the worker owns the customer's partition, and relays its outbox
        engine = await started_engine(settings, {(topic, p)})
        out = await engine.process([InboundMessage(topic, p, 0, b"s1", purchase("s1", 0, T0_MS))], now=time.time())
        ids = {i for i, _ in out.changes}
        later_ms = int(time.time() * 1000) + 60_000  # every entry is "old" by then
        while_publishing = {i for i, _ in await engine.stale_outbox(later_ms)}
        engine.publishing.difference_update(ids)  # what the shell's publish does when it is done, sent or not
        after_publish = {i for i, _ in await engine.stale_outbox(later_ms)}
        await engine.redis.aclose()
        return ids, while_publishing, after_publish

    ids, while_publishing, after_publish = run(scenario())
    assert ids  # a new customer's first purchase moves it
    assert not ids & while_publishing
    assert ids <= after_publish  # not deleted: left to the relay


def test_received_is_never_published_ahead_of_the_batch_outcome(redis_server, redis_client):
    """``received`` in ``segflow:stats`` counts only batches whose outcome Redis has
    counted too: the deadline timer publishes the counters while a batch may be
    waiting for the engine lock, and a reader that waits for ``received`` to reach
    what was sent then expects ``applied`` to be complete."""
    settings = Settings(redis_url=redis_server.url, clock="event")
    topic = settings.topics.purchases

    async def scenario():
        engine = await started_engine(settings, {(topic, 0)})
        batch = [InboundMessage(topic, 0, n, b"wait", purchase("wait", n, T0_MS + n * 3_600_000)) for n in range(3)]
        await engine.lock.acquire()  # as a deadline evaluation in progress holds it
        batch_done = asyncio.create_task(engine.process(batch, now=time.time()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not batch_done.done()
        engine.lock.release()
        await engine._publish_counts()  # what fire_deadlines does after its lock (the timer)
        while_waiting = redis_client.hgetall("segflow:stats")
        await batch_done
        await engine.redis.aclose()
        return while_waiting

    while_waiting = run(scenario())
    assert int(while_waiting.get("received", 0)) == 0  # the batch had not been applied yet
    done = read_totals(redis_client, settings.layout)
    assert done["received"] == done["applied"] == 3


def test_an_idle_customers_duplicate_filter_is_swept_once_the_lateness_passes_it(redis_server, redis_client):
    """Without a next event, a customer's duplicate filter used to stay as its last event
    left it. The deadline timer's sweep forgets it once this worker's watermark, less the
    lateness, has passed it (not before), trims an active customer's to what is still
    within the lateness, and a producer's retry of a forgotten event is still refused."""
    settings = Settings(redis_url=redis_server.url, lateness_seconds=3600, clock="event", partitions=1)
    topic, layout = settings.topics.purchases, settings.layout
    hour = 3_600_000

    def msg(cid: str, n: int, offset: int, ts: int) -> InboundMessage:
        return InboundMessage(topic, 0, offset, cid.encode(), purchase(cid, n, ts))

    async def scenario():
        engine = await started_engine(settings, {(topic, 0)})
        await engine.process([msg("idle", n, n, T0_MS + n * 60_000) for n in range(3)] + [msg("busy", 0, 3, T0_MS + 30 * 60_000)], now=time.time())
        early = await engine.sweep_filters()
        filters_early = redis_client.hget(layout.customer_key("idle"), "q")
        for n in range(1, 7):  # busy buys every half hour: the watermark moves to T0 + 3.5 h
            await engine.process([msg("busy", n, 3 + n, T0_MS + (n + 1) * hour // 2)], now=time.time())
        swept = await engine.sweep_filters()
        retry = await engine.process([msg("idle", 0, 20, T0_MS)], now=time.time())
        counted = engine.counters.filters_swept
        await engine.redis.aclose()
        return early, filters_early, swept, retry, counted

    early, filters_early, swept, retry, counted = run(scenario())
    assert early == 0 and filters_early  # the watermark (T0 + 30 min) less an hour passes nothing
    assert swept == 2 == counted
    idle = redis_client.hgetall(layout.customer_key("idle"))
    assert "q" not in idle and idle["n"] == "3"
    assert redis_client.zscore(layout.filters_key(0), "idle") is None
    busy = state_from_hash(redis_client.hgetall(layout.customer_key("busy")))
    # Its last batch's horizon (T0 + 3 h less an hour) left 2 h .. 3.5 h; the sweep's (T0 + 3.5 h less an hour) leaves:
    assert sorted(busy.recent.values()) == [T0_MS + 5 * hour // 2, T0_MS + 3 * hour, T0_MS + 7 * hour // 2]
    assert redis_client.zscore(layout.filters_key(0), "busy") == T0_MS + 7 * hour // 2  # re-scored by its newest entry
    assert [dl.reason for dl in retry.dead_letters] == ["too_late"]
    assert redis_client.hget(layout.customer_key("idle"), "n") == "3"
