"""Where a fresh customer's first event goes inside the engine, in µs per event.

``python -m lab.bench.fresh_breakdown --events 6000 --batch 200`` starts its own
Redis, runs an in-process :class:`~streams.engine.Engine` (no broker, no Faust,
no publishing) on the wall clock over logins of never-seen customers, in
batches, and times each phase by wrapping it: decoding, the feature apply
(one Redis pipeline), feature computation, evaluation (of which the segmenter
itself), and the segment commit (of which the Redis pipeline). What is not
listed is the rest of the batch's Python (learning, bookkeeping).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any


def _wrap(owner: Any, name: str, label: str, totals: dict[str, float]) -> None:
    original = getattr(owner, name)
    if asyncio.iscoroutinefunction(original):

        async def timed_async(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t0

        setattr(owner, name, timed_async)
    else:

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t0

        setattr(owner, name, timed)


def login_messages(settings: Any, n: int, prefix: str) -> list:
    """``n`` never-seen customers' logins (ids ``prefix0`` ..), stamped now, as the
    engine receives them: round-robin over the login topic's partitions."""
    from streams.engine import InboundMessage

    topic, stamp = settings.topics.logins, datetime.now(UTC).isoformat()

    def login(cid: str) -> bytes:
        return json.dumps({"event_id": f"e{cid}", "customer_id": cid, "occurred_at": stamp, "type": "login", "channel": "web", "success": True}).encode()

    parts = settings.partitions
    return [InboundMessage(topic, i % parts, i // parts, f"{prefix}{i}".encode(), login(f"{prefix}{i}")) for i in range(n)]


async def started_engine(settings: Any, segmenter: Any) -> Any:
    """An in-process :class:`~streams.engine.Engine` on ``settings``' Redis, owning every login partition."""
    from streams.app import redis_client
    from streams.engine import Engine

    engine = Engine(settings, redis_client(settings.redis_url.get_secret_value()), segmenter)
    await engine.start()
    engine.assign({(settings.topics.logins, p) for p in range(settings.partitions)}, now=time.time())
    return engine


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args(argv)

    import streams.engine as engine_module
    import streams.segment_store as store_module
    from lab.embedded import RedisServer
    from segmenter.assign import Segmenter
    from segmenter.config import default_config
    from streams.settings import Settings

    server = RedisServer().start()
    settings = Settings(redis_url=server.url, clock="wall", partitions=4)
    totals: dict[str, float] = defaultdict(float)

    async def run() -> float:
        engine = await started_engine(settings, Segmenter.from_config(default_config()))
        _wrap(engine, "_decode", "decode", totals)
        _wrap(engine.features, "apply_batch", "feature apply (Redis pipeline)", totals)
        _wrap(engine_module, "compute", "feature computation", totals)
        _wrap(engine, "_evaluate", "evaluation", totals)
        _wrap(engine.segmenter, "evaluate", "  of which the segmenter", totals)
        _wrap(engine.segments, "write", "segment commit", totals)
        _wrap(store_module, "run_pipeline", "  of which the Redis pipeline", totals)
        messages = login_messages(settings, args.events, "f")
        t0 = time.perf_counter()
        for i in range(0, args.events, args.batch):
            await engine.process(messages[i : i + args.batch], now=time.time())
        elapsed = time.perf_counter() - t0
        await engine.redis.aclose()
        return elapsed

    try:
        elapsed = asyncio.run(run())
    finally:
        server.stop()
    per_event = {"total": elapsed / args.events * 1e6, **{k: v / args.events * 1e6 for k, v in totals.items()}}
    print(f"{args.events:,} fresh customers' first events, batches of {args.batch}: µs per event")
    for label in (
        "total",
        "decode",
        "feature apply (Redis pipeline)",
        "feature computation",
        "evaluation",
        "  of which the segmenter",
        "segment commit",
        "  of which the Redis pipeline",
    ):
        print(f"  {label:34} {per_event.get(label, 0.0):7.1f}")
    return per_event


if __name__ == "__main__":
    main()
