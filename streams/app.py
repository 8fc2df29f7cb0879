"""The Faust app: agents, timers and web views around :class:`streams.engine.Engine`.

Kept thin on purpose: it moves bytes between Kafka and the engine and
publishes what the engine decides. Built by :func:`create_app` from
:class:`~streams.settings.Settings` so tests and the CLI configure it the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import faust
import redis.asyncio as aioredis
from faust.types import TP
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from segmenter.changes import state_record
from streams.batching import take_overlapped
from streams.campaign_router import CampaignRouter, campaigns_for, trigger_message
from streams.engine import BatchOutcome, Counters, Engine, InboundMessage
from streams.gc_tuning import settle_heap
from streams.kafka_security import faust_credentials
from streams.metrics import WorkerMetrics
from streams.redis_clients import async_client
from streams.redis_packing import use_hiredis_packer
from streams.settings import Settings

log = logging.getLogger("segflow.worker")


def redis_client(url: str, cluster: bool = False) -> aioredis.Redis:
    """An asyncio Redis client that waits and retries with backoff while Redis is away
    (and packs commands with hiredis, :mod:`streams.redis_packing`); with ``cluster``, a
    cluster client seeded by ``url`` (:mod:`streams.redis_clients`), which also retries
    while a shard is down (CLUSTERDOWN) and follows the slot map."""
    options: dict = dict(
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.05), retries=60),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
        health_check_interval=10,
        socket_connect_timeout=5,
    )
    if cluster:
        return async_client(url, cluster=True, **options)  # type: ignore[return-value]  # used through the commands both share
    return use_hiredis_packer(aioredis.Redis.from_url(url, **options))


def broker_credentials(settings: Settings):
    """Faust's ``broker_credentials`` for these settings (:func:`streams.kafka_security.faust_credentials`)."""
    return faust_credentials(settings)


def _shorten_fetch_wait(max_wait_ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer, and
    the embedded broker answers a waiting fetch only when that wait runs out:
    every quiet-time event waited up to 1.5 s (measured p50 521 ms at 100 ev/s,
    docs/PERFORMANCE.md). Set the wait on the consumer Faust builds."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread_cls, "_segflow_original_create_worker_consumer", thread_cls._create_worker_consumer)

    def create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by AIOKafkaConsumer.start() when it builds its Fetcher
        return consumer

    # Patching faust's class: the marker attribute is ours, the method is replaced on purpose.
    thread_cls._segflow_original_create_worker_consumer = original  # type: ignore[attr-defined]
    thread_cls._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


# aiokafka sends one request per broker at a time: with Faust's 16 KiB batches (about
# ten changes with their feature snapshots) producing was bound by round trips, and a
# 10,000-customer deadline drain published ~1,100 changes/s; 256 KiB gave ~2,100
# (lab/bench/mass_silence.py).
PRODUCER_MAX_BATCH_BYTES = 256 * 1024


def create_app(settings: Settings, segmenter_factory) -> faust.App:
    _shorten_fetch_wait(settings.fetch_max_wait_ms)
    topics = settings.topics
    app = faust.App(
        settings.app_id,
        broker=settings.kafka_url,
        broker_credentials=broker_credentials(settings),
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_allow_declare=False,  # segflow creates its topics itself (streams.admin)
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=settings.session_timeout_seconds,
        producer_acks=-1,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        # Fetch and buffer sizes measured on the embedded broker: with Faust's
        # defaults a bare agent idled on fetches (~11.8k ev/s); these gave ~13.6k
        # (docs/PERFORMANCE.md).
        stream_buffer_maxsize=32768,
        broker_max_poll_records=10000,
        consumer_max_fetch_size=8 * 1024 * 1024,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
    inputs = app.topic(*topics.inputs, key_serializer="raw", value_serializer="raw")
    dead_letter_topic = app.topic(topics.dead_letter, key_serializer="raw", value_serializer="raw")
    campaigns = campaigns_for(settings)

    holder: dict = {}
    ready = asyncio.Lock()
    metrics = WorkerMetrics()
    metrics.attach(lambda: holder["engine"].counters if "engine" in holder else Counters(), lambda: holder["engine"].status if "engine" in holder else None)

    async def engine() -> Engine:
        async with ready:
            if "engine" not in holder:
                e = Engine(settings, redis_client(settings.redis_url.get_secret_value(), settings.redis_cluster), segmenter_factory())
                e.backlog_probe = backlog
                e.observe = lambda call, seconds: metrics.batch_seconds.observe(seconds) if call == "batch" else metrics.observe_redis(call, seconds)
                await e.start()
                holder["engine"] = e
                holder["router"] = CampaignRouter(campaigns, e.redis)
                holder["started"] = time.monotonic()
                await relay_outbox(e)
                # Everything built so far (Faust, the models, imports) lives as long as the worker.
                settle_heap(settings.gc_young_threshold)
        return holder["engine"]

    def highwater(tp: TP) -> int | None:
        try:
            return app.consumer.highwater(tp)
        except Exception:  # not assigned any more, or no fetch yet
            return None

    async def backlog(partitions: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of these (topic, partition)s still have messages this worker has not processed."""
        e = holder["engine"]
        pending = set()
        for topic, partition in partitions:
            tp = TP(topic, partition)
            high = highwater(tp)
            last = e.last_offsets.get((topic, partition))
            if last is not None:
                caught_up = high is not None and last + 1 >= high
            else:
                # Nothing processed from it yet. The consumer's position cannot tell: it
                # moves when Faust buffers fetched messages, before the agent has them
                # (a CDNOW replay dead-lettered ~3,000 first-day purchases as too_late:
                # partitions whose first batch was still buffered counted as idle and the
                # watermark jumped to another's newest). Caught up only when nothing lies
                # at or after the group's committed offset (Faust's copy of it).
                committed = getattr(app.consumer, "_committed_offset", {}).get(tp)
                caught_up = high is not None and (high == 0 or (committed is not None and committed >= high))
            if not caught_up:
                pending.add((topic, partition))
        return pending

    async def publish(e: Engine, outcome: BatchOutcome) -> None:
        if outcome.dead_letters:
            await asyncio.gather(
                *[await dead_letter_topic.send(key=dl.message.key, value=dl.message.value or b"", headers=dl.headers()) for dl in outcome.dead_letters]
            )
        if not outcome.changes:
            return
        relayed = outcome.ticket is None
        if outcome.ticket is None:  # a relay: its turn comes after everything committed so far
            outcome.ticket = e.turnstile.take()
        # In commit order (streams.ordering): one customer's changes reach the topic in seq order.
        async with e.turnstile.turn(outcome.ticket):
            await send_changes(e, outcome.changes, relayed)

    async def send_raw(topic: str, key: bytes, value: bytes | None):
        """Hand one record to the producer; the returned future completes on the broker's ack.

        Straight to Faust's producer, not ``Topic.send``: the channel machinery cost about
        100 us per record here, and a change is sent twice (changes and state topics)."""
        return await app.producer.send(topic, key, value, None, None, None)

    async def send_changes(e: Engine, changes: list[tuple[str, str]], relayed: bool) -> None:
        sent_ids = [outbox_id for outbox_id, _ in changes]
        # In flight until done (the engine marked its own at commit): the stale relay
        # skips them, however long Redis keeps this publish from deleting them.
        e.publishing.update(sent_ids)
        try:
            futures = []
            for _, payload in changes:
                change = json.loads(payload)
                futures.append(await send_raw(topics.segment_changes, change["customer_id"].encode(), payload.encode()))
                key, value = state_record(change)  # an erasure: a tombstone (value None)
                futures.append(await send_raw(topics.segment_state, key, value))
            await asyncio.gather(*futures)
            e.counters.changes_sent += len(changes)
            if relayed:
                e.counters.changes_resent += len(changes)
            # Campaign triggers for changes the broker has, sent before the outbox
            # entries go: a crash re-sends them (same trigger ids) rather than loses them.
            triggers = await holder["router"].route(payload for _, payload in changes)
            if triggers:
                await asyncio.gather(*[await send_raw(topics.campaign_triggers, k, v) for k, v in map(trigger_message, triggers)])
            # Only once the broker has the changes do they leave the outbox.
            await e.confirm_sent(sent_ids)
        finally:
            e.publishing.difference_update(sent_ids)

    async def relay_outbox(e: Engine) -> None:
        """Send every change a previous run wrote to Redis but did not confirm on Kafka,
        oldest first, before this worker commits anything new: a newer change of the
        same customer must not overtake them (it did when only the first 1,000 went)."""
        relayed = 0
        while pending := await e.pending_outbox():
            await publish(e, BatchOutcome(changes=pending))
            relayed += len(pending)
        if relayed:
            log.warning("relayed %d segment changes left in the outbox", relayed)

    @app.agent(inputs)
    async def ingest(stream):
        e = await engine()
        # Faust keeps delivering while a batch waits on Redis; under a backlog batches grow (streams.batching).
        async for events in take_overlapped(
            stream, settings.batch_size, settings.batch_within, highwater=highwater, backlog_within=settings.batch_backlog_within
        ):
            e.assign({(tp.topic, tp.partition) for tp in app.consumer.assignment()})
            batch = [
                InboundMessage(ev.message.topic, ev.message.partition, ev.message.offset, ev.message.key, ev.message.value, int(ev.message.timestamp * 1000))
                for ev in events
            ]
            await publish(e, await e.process(batch))

    @app.timer(settings.deadline_interval_seconds)
    async def deadlines():
        e = await engine()
        e.assign({(tp.topic, tp.partition) for tp in app.consumer.assignment()})
        while True:
            outcome = await e.fire_deadlines(settings.deadline_claim)
            await publish(e, outcome)
            if not outcome.changes and not outcome.dead_letters:
                break
        await e.sweep_filters(settings.deadline_claim)

    @app.timer(settings.snapshot_interval_seconds)
    async def snapshot():
        e = await engine()
        await e.reseed_if_requested()  # a `segflow reseed` request: logged, recorded in segflow:{drift}, saved as a new version
        version = await e.snapshot_model()
        if version is not None:
            log.info("behaviour model snapshot v%d saved", version)

    @app.timer(5.0)
    async def relay_stale_outbox():
        """Changes committed but never sent, found while running: a commit pipeline
        that Redis executed but whose replies a Redis restart cut off is retried, the
        retry loses its compare-and-set, and the first attempt's outbox entries are
        left behind. Entries older than 10 s are re-sent (same change ids), except those
        this worker is publishing itself (Engine.stale_outbox)."""
        e = await engine()
        stale = await e.stale_outbox(int(time.time() * 1000))
        if stale:
            log.warning("relaying %d segment changes left in the outbox for over 10 s", len(stale))
            await publish(e, BatchOutcome(changes=stale))

    async def lag_of_assigned() -> dict[str, int]:
        """Messages not yet processed per input partition this worker owns."""
        e = holder["engine"]
        inputs = set(topics.inputs)
        lag = {}
        for tp in app.consumer.assignment():
            if tp.topic not in inputs:
                continue
            high = highwater(tp)
            last = e.last_offsets.get((tp.topic, tp.partition))
            if last is not None:
                done = last + 1
            else:
                try:
                    done = await app.consumer.position(tp)
                except Exception:  # not fetched from yet
                    done = None
            if high is not None and done is not None:
                lag[f"{tp.topic}[{tp.partition}]"] = max(0, high - done)
        return lag

    # Two timers: lag needs no Redis, so it stays current while Redis stalls.
    @app.timer(settings.status_interval_seconds)
    async def measure_lag():
        e = await engine()
        e.note_lag(await lag_of_assigned())

    @app.timer(settings.status_interval_seconds)
    async def measure_backlog():
        e = await engine()
        try:
            await e.refresh_backlog()
        except RedisError as exc:  # Redis away: the last numbers stay, the next tick tries again
            log.warning("could not measure the deadline backlog: %s", exc)

    @app.timer(5.0)
    async def progress():
        e = await engine()
        c = e.counters
        elapsed = time.monotonic() - holder["started"]
        log.warning(
            "progress (this worker): received=%d in %d batches, applied=%d duplicates=%d dead_lettered=%d changes=%d deadline_evals=%d (%.0f ev/s avg)",
            c.received,
            c.batches,
            c.applied,
            c.duplicates,
            c.dead_lettered,
            c.changes,
            c.deadline_evaluations,
            c.received / max(elapsed, 1e-9),
        )

    from streams.web import add_sizes_recorder, add_status_views, add_web_views

    add_web_views(app, settings)
    add_status_views(app, metrics, lambda: holder["engine"].status if "engine" in holder else None)
    add_sizes_recorder(app, settings)
    app.segflow_engine = engine  # type: ignore[attr-defined]  # for tests; faust.App does not declare it
    return app
