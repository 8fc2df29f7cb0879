"""Row 6's floor: the same traffic at the same rate read by consumers that do nothing
(a raw aiokafka consumer, a bare Faust agent; subprocesses: ``python -m lab.bench
floor-consumer KIND``): what the broker and client add before segflow sees an event.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from lab.bench.ceilings import bare_faust_app
from lab.bench.common import (
    PARTITIONS,
    Procs,
    _per_5s,
    _pick,
    make_payloads,
    worker_env,
)

FLOOR_PREFIX = "benchfloor-"  # row 6's transport floor, own topics per consumer kind
FLOOR_CONSUMERS = ("raw", "faust")


def floor_consumer_main(kind: str) -> None:
    """Subprocess entry: read the floor topics and append each message's (producer
    timestamp, delivery time) pairs to ``SEGFLOW_BENCH_FLOOR_OUT``, twice a second,
    one JSON list per line of the pairs since the last line (the cost of a write must
    not grow with the run: it runs on the consumer's own loop, inside what it measures).

    ``raw``: an aiokafka consumer with the worker's fetch wait; ``faust``: a Faust
    agent with the worker's settings (fetch wait patched as the worker's) taking
    ``take_events(batch size, within=SEGFLOW_BATCH_WITHIN)`` batches and doing nothing.
    """
    from streams.settings import load_settings

    settings = load_settings()
    out = Path(os.environ["SEGFLOW_BENCH_FLOOR_OUT"])
    seen: list[tuple[float, float]] = []  # since the last line written
    last_dump = [0.0]

    def dump(now: float) -> None:
        if seen and now - last_dump[0] >= 0.5:
            last_dump[0] = now
            with out.open("a") as f:
                f.write(json.dumps(seen) + "\n")
            seen.clear()

    if kind == "raw":
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.admin import bootstrap_of

        async def consume() -> None:
            c = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(settings.kafka_url), enable_auto_commit=False, fetch_max_wait_ms=settings.fetch_max_wait_ms)
            await c.start()
            try:
                c.assign([TopicPartition(t, p) for t in settings.topics.inputs for p in range(settings.partitions)])
                await c.seek_to_beginning()
                while True:
                    batches = await c.getmany(timeout_ms=100, max_records=settings.batch_size)
                    now = time.time()
                    seen.extend((rec.timestamp / 1000, now) for records in batches.values() for rec in records)
                    dump(now)
            finally:
                await c.stop()

        asyncio.run(consume())
        return

    import faust

    from streams.app import _shorten_fetch_wait
    from streams.gc_tuning import settle_heap

    _shorten_fetch_wait(settings.fetch_max_wait_ms)
    app, inputs = bare_faust_app(settings)

    @app.agent(inputs)
    async def floor(stream):
        settle_heap(settings.gc_young_threshold)
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            now = time.time()
            seen.extend((event.message.timestamp, now) for event in events)
            dump(now)

    @app.timer(0.5)
    async def flush_tail():
        dump(time.time())

    sys.argv = [sys.argv[0], "worker"]
    faust.Worker(app, loglevel="warning", quiet=True, override_logging=False).execute_from_commandline()


def run_latency_floor(stack, procs: Procs, work: Path, kind: str, rate: float, seconds: float) -> dict:
    """Row 6's floor: the same traffic at the same rate, read by a consumer that does nothing
    (``kind``: a raw aiokafka consumer, or a bare Faust agent). Latency = delivery to that
    consumer minus the producer timestamp: what the broker and client add before segflow
    sees an event, measured in the same run."""
    from streams.admin import ensure_topics
    from streams.producer import produce_events
    from streams.topics import Topics

    topics = Topics(f"{FLOOR_PREFIX}{kind}-")
    ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)
    out = work / f"floor-{kind}.jsonl"
    out.unlink(missing_ok=True)
    env = worker_env(stack, topics.prefix, f"bench-floor-{kind}", work, "event", SEGFLOW_BENCH_FLOOR_OUT=str(out))
    payloads = make_payloads(max(2_000, int(rate * seconds)), seed=29, id_prefix="m")

    def delivered() -> list[list[float]]:
        try:
            with out.open() as f:
                return [pair for line in f if line.endswith("\n") for pair in json.loads(line)]  # a line being written is skipped
        except FileNotFoundError:
            return []

    p = procs.start([sys.executable, "-m", "lab.bench", "floor-consumer", kind], env, work / f"floor-{kind}.log")
    try:
        produce_events(stack.broker.bootstrap, payloads[:1], topics)
        until = time.monotonic() + 60
        while not delivered() and time.monotonic() < until:
            if p.poll() is not None:
                raise RuntimeError(f"floor consumer ({kind}) exited with {p.returncode}; see {work / f'floor-{kind}.log'}")
            time.sleep(0.2)
        warm = len(delivered())
        if not warm:
            raise RuntimeError(f"floor consumer ({kind}) read nothing in 60 s; see {work / f'floor-{kind}.log'}")
        start = time.time()
        stats = produce_events(stack.broker.bootstrap, payloads[1:], topics, rate=rate)
        until = time.monotonic() + 30
        while len(delivered()) < warm + stats.sent and time.monotonic() < until:
            time.sleep(0.25)
    finally:
        procs.stop(p)
    pairs = [(ts, now) for ts, now in delivered()[warm:] if ts >= start - 1]
    lat = sorted((now - ts) * 1000 for ts, now in pairs)
    return {
        "consumer": kind,
        "offered_rate": round(rate, 1),
        "achieved_rate": round(stats.rate, 1),
        "sent": stats.sent,
        "delivered": len(pairs),
        "p50_ms": _pick(lat, 0.50),
        "p90_ms": _pick(lat, 0.90),
        "p99_ms": _pick(lat, 0.99),
        "max_ms": round(lat[-1], 1) if lat else None,
        "timeline": _per_5s(((ts - start, (now - ts) * 1000) for ts, now in pairs), "events"),
    }
