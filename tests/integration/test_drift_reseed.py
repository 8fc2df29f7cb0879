"""Drift events and re-seeding through the engine shell, against a real Redis (no broker)."""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner

from features import keys
from segflow.cli import cli
from segmenter.assign import Segmenter
from segmenter.config import SEGMENTATIONS, default_config
from segmenter.drift import DriftEvent
from streams.app import redis_client as async_redis
from streams.engine import Engine, InboundMessage
from streams.settings import Settings
from tests.integration.test_engine_batches import DAY_MS, T0_MS, purchase

pytestmark = pytest.mark.integration


def batch(settings: Settings, customers: int, day: int) -> list[InboundMessage]:
    topic = settings.topics.purchases
    return [InboundMessage(topic, 0, day * customers + i, f"c{i}".encode(), purchase(f"c{i}", day, T0_MS + day * DAY_MS + i)) for i in range(customers)]


def test_a_reseed_request_makes_a_new_model_version_and_is_recorded(redis_server, redis_client):
    settings = Settings(redis_url=redis_server.url, clock="event")

    async def scenario():
        engine = Engine(settings, async_redis(redis_server.url), Segmenter.from_config(default_config()))
        await engine.start()
        engine.assign({(settings.topics.purchases, 0)}, now=time.time())
        for day in range(3):
            await engine.process(batch(settings, 40, day), now=time.time())
        before = await engine.snapshot_model()
        assert await engine.reseed_if_requested() is None  # nothing requested
        result = CliRunner().invoke(cli, ["reseed", "--reason", "campaign season changed the population"], env={"SEGFLOW_REDIS_URL": redis_server.url})
        assert result.exit_code == 0, result.output
        requested = int(redis_client.hget(keys.RESEED, "requested_at_ms"))
        after = await engine.reseed_if_requested()
        again = await engine.reseed_if_requested()
        learned = engine.segmenter.behaviour.n_learned
        await engine.redis.aclose()
        return before, after, again, learned, requested

    before, after, again, learned, requested = asyncio.run(scenario())
    assert before is not None and after == before + 1 and again is None
    assert learned == 0
    assert redis_client.get(f"{keys.MODEL}:current") == str(after)
    assert not redis_client.exists(keys.RESEED)
    entries = redis_client.xrange(keys.DRIFT)
    assert [(f["kind"], f["detail"], f["model_version"], f["requested_at_ms"]) for _, f in entries] == [
        ("reseed", "campaign season changed the population", str(after), str(requested))
    ]
    assert redis_client.hget(keys.STATS, "reseeds") == "1"

    # A restarted worker restores the re-seeded model.
    async def restart():
        engine = Engine(settings, async_redis(redis_server.url), Segmenter.from_config(default_config()))
        await engine.start()
        await engine.redis.aclose()
        return engine.segmenter.model_version, engine.segmenter.behaviour.n_learned

    assert asyncio.run(restart()) == (after, 0)


def test_drift_events_go_to_the_capped_stream_and_the_counters(redis_server, redis_client):
    settings = Settings(redis_url=redis_server.url, clock="event")
    fed = []

    class Shifted:
        """Stands in for the DriftMonitor: reports one drift on the 5th evaluation."""

        def update(self, at_ms, *, segments=None, distance=None):
            fed.append((set(segments), distance))
            return [DriftEvent("share:lifecycle:active", "mean 0.4 -> 0.6", at_ms)] if len(fed) == 5 else []

    async def scenario():
        engine = Engine(settings, async_redis(redis_server.url), Segmenter.from_config(default_config()))
        await engine.start()
        engine.drift = Shifted()
        engine.assign({(settings.topics.purchases, 0)}, now=time.time())
        await engine.process(batch(settings, 10, 0), now=time.time())
        await engine.redis.aclose()
        return engine.counters.drift_detected

    assert asyncio.run(scenario()) == 1
    assert len(fed) == 10 and fed[0][0] == set(SEGMENTATIONS)
    [(_, fields)] = redis_client.xrange(keys.DRIFT)
    assert (fields["kind"], fields["signal"], fields["detail"]) == ("drift", "share:lifecycle:active", "mean 0.4 -> 0.6")
    assert redis_client.hget(keys.STATS, "drift_detected") == "1"
