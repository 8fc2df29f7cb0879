"""Rows 2 and 3, the consumer ceilings on the backlog: a raw aiokafka consumer, and a
bare Faust agent with the worker's settings (a subprocess: ``python -m lab.bench
bare-faust MODE``) in its two shapes, ``async for`` and ``take_events``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lab.bench.common import (
    BENCH_PREFIX,
    Procs,
    _rate,
    cpu_seconds,
    worker_env,
)

# -- row 2: raw consumer --------------------------------------------------------


async def _raw_consume(bootstrap: str, topic_names, expected: int, timeout: float) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topic_names for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await consumer.position(tps[0])
        # Timed from the first fetch request (unlike the Faust rows, which start
        # at the first delivery): the whole backlog can come in one getmany.
        count = 0
        first = time.monotonic()
        last = None
        deadline = first + timeout
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            n = sum(len(b) for b in batches.values())
            if n:
                count += n
                last = time.monotonic()
        return _rate(count, 0, first, last, expected)
    finally:
        await consumer.stop()


# -- row 3: bare Faust ------------------------------------------------------------


def faust_app_kwargs(settings) -> dict:
    """The Faust settings of :func:`streams.app.create_app` that matter for throughput.

    Copied (the bench must not build the real app); tests/integration/test_bench_smoke.py
    checks they still equal the real app's configuration.
    """
    from streams.app import PRODUCER_MAX_BATCH_BYTES

    return dict(
        store="memory://",
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=settings.session_timeout_seconds,
        producer_acks=-1,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        stream_buffer_maxsize=32768,
        broker_max_poll_records=10000,
        consumer_max_fetch_size=8 * 1024 * 1024,
    )


def bare_faust_app(settings):
    """A Faust app with the worker's settings (:func:`faust_app_kwargs`) and its input topics, as raw bytes."""
    import faust

    app = faust.App(settings.app_id, broker=settings.kafka_url, datadir=str(settings.data_dir), web_enabled=False, **faust_app_kwargs(settings))
    return app, app.topic(*settings.topics.inputs, key_serializer="raw", value_serializer="raw")


def bare_faust_main(mode: str) -> None:
    """Subprocess entry: a Faust agent that only counts events; reports to Redis ``bench:faust:<mode>``."""
    import faust
    import redis.asyncio as aioredis

    from streams.gc_tuning import settle_heap
    from streams.settings import load_settings

    settings = load_settings()
    app, inputs = bare_faust_app(settings)
    state = {"n": 0, "first": 0.0, "first_n": 0, "last": 0.0}
    r = aioredis.Redis.from_url(settings.redis_url.get_secret_value())

    if mode == "take":

        @app.agent(inputs)
        async def bare(stream):
            settle_heap(settings.gc_young_threshold)  # as the worker does once started
            async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
                now = time.time()
                if not state["n"]:
                    state["first"], state["first_n"] = now, len(events)
                state["n"] += len(events)
                state["last"] = now
    else:

        @app.agent(inputs)
        async def bare(stream):
            settle_heap(settings.gc_young_threshold)
            async for _value in stream:
                now = time.time()
                if not state["n"]:
                    state["first"], state["first_n"] = now, 1
                state["n"] += 1
                state["last"] = now

    @app.timer(0.25)
    async def report():
        await r.hset(f"bench:faust:{mode}", mapping={k: str(v) for k, v in state.items()})

    worker = faust.Worker(app, loglevel="warning", quiet=True, override_logging=False)
    worker.execute_from_commandline()


def run_bare_faust(stack, procs: Procs, work: Path, mode: str, expected: int, timeout: float) -> dict:
    import redis as redis_lib

    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    key = f"bench:faust:{mode}"
    r.delete(key)
    env = worker_env(stack, BENCH_PREFIX, f"bench-faust-{mode}", work, "event")
    p = procs.start([sys.executable, "-m", "lab.bench", "bare-faust", mode], env, work / f"faust-{mode}.log")
    try:
        deadline = time.monotonic() + timeout
        h: dict = {}
        cpu_first: tuple[int, float] | None = None  # (events so far, CPU seconds) once events flow
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"bare Faust ({mode}) exited with {p.returncode}; see {work / f'faust-{mode}.log'}")
            h = r.hgetall(key)
            if h and cpu_first is None and int(h["n"]) > 0:
                cpu_first = (int(h["n"]), cpu_seconds(p.pid))
            if h and int(h["n"]) >= expected:
                break
            time.sleep(0.25 if cpu_first is not None else 0.02)  # catch the first events early: --quick's run lasts about a second
        cpu_end = cpu_seconds(p.pid)
        if not h:
            h = {"n": 0, "first_n": 0, "first": 0, "last": 0}
        out = _rate(int(h["n"]), int(h["first_n"]), float(h["first"]) or None, float(h["last"]) or None, expected)
        # /proc counts CPU in clock ticks (10 ms): fewer than a few ticks is no measurement.
        if cpu_first is not None and int(h["n"]) > cpu_first[0] and cpu_end - cpu_first[1] >= 5 / os.sysconf("SC_CLK_TCK"):
            out["cpu_us_per_event"] = round((cpu_end - cpu_first[1]) / (int(h["n"]) - cpu_first[0]) * 1e6, 2)
        return out
    finally:
        procs.stop(p)
        r.close()
