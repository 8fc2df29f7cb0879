"""Where a deadline evaluation goes inside the engine, in µs per evaluation.

``python -m lab.bench.deadline_breakdown --customers 5000`` starts its own
Redis and runs an in-process :class:`~streams.engine.Engine` (no broker, no
Faust, no publishing) on the wall clock: ``customers`` never-seen customers log
in at once, the dormancy rule shortened as row 8 shortens it, and once they
are all due the engine's deadline turns drain them, ``--claim`` at a time.
Each phase is timed by wrapping it: the claim, the read of features and
segments (one pipeline), feature computation, evaluation (of which the
segmenter, and of that the lifecycle's next deadline), and the commit (of
which the Redis pipeline). What this measures is one worker's ceiling for
row 8 before any Kafka record is published.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lab.bench.fresh_breakdown import _wrap, login_messages, started_engine

PHASES = (
    "claim",
    "read (Redis pipeline)",
    "feature computation",
    "evaluation",
    "  of which the segmenter",
    "    of which the lifecycle's next deadline",
    "commit",
    "  of which the Redis pipeline",
)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--claim", type=int, default=200, help="customers per deadline turn (SEGFLOW_DEADLINE_CLAIM's default)")
    parser.add_argument("--silence", type=float, default=8.0, help="seconds from the logins to their deadline")
    args = parser.parse_args(argv)

    import streams.engine as engine_module
    import streams.segment_store as store_module
    from lab.bench.deadlines import deadline_config
    from lab.embedded import RedisServer
    from segmenter.assign import Segmenter
    from segmenter.config import load_config
    from streams.settings import Settings

    config = load_config(deadline_config(Path(tempfile.mkdtemp(prefix="segflow-deadline-breakdown-")), args.silence))
    server = RedisServer().start()
    settings = Settings(redis_url=server.url, clock="wall", partitions=4)
    totals: dict[str, float] = defaultdict(float)

    async def run() -> tuple[int, float]:
        engine = await started_engine(settings, Segmenter.from_config(config))
        logged_in = time.time()
        messages = login_messages(settings, args.customers, "d")
        for i in range(0, args.customers, 500):
            await engine.process(messages[i : i + 500], now=time.time())
        await asyncio.sleep(max(0.0, logged_in + args.silence + 1 - time.time()))
        _wrap(engine.segments, "claim_due", "claim", totals)
        _wrap(engine.features, "read", "read (Redis pipeline)", totals)
        _wrap(engine_module, "compute", "feature computation", totals)
        _wrap(engine, "_evaluate", "evaluation", totals)
        _wrap(engine.segmenter, "evaluate", "  of which the segmenter", totals)
        _wrap(engine.segmenter.lifecycle, "next_deadline_ms", "    of which the lifecycle's next deadline", totals)
        _wrap(engine.segments, "write", "commit", totals)
        _wrap(store_module, "run_pipeline", "  of which the Redis pipeline", totals)
        t0 = time.perf_counter()
        while (await engine.fire_deadlines(args.claim)).changes:
            pass
        elapsed = time.perf_counter() - t0
        await engine.redis.aclose()
        return engine.counters.deadline_evaluations, elapsed

    try:
        evaluations, elapsed = asyncio.run(run())
    finally:
        server.stop()
    if not evaluations:
        raise SystemExit("no deadline fell due: nothing measured")
    per = {"evaluations": evaluations, "evaluations_per_s": evaluations / elapsed, "total": elapsed / evaluations * 1e6}
    per.update({k: v / evaluations * 1e6 for k, v in totals.items()})
    print(f"{evaluations:,} deadline evaluations, claims of {args.claim}: {per['evaluations_per_s']:,.0f} per second; µs per evaluation")
    for label in ("total", *PHASES):
        print(f"  {label:44} {per.get(label, 0.0):7.1f}")
    return per


if __name__ == "__main__":
    main()
