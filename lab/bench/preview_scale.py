"""How long ``segflow preview`` takes on N customers, and whether its memory stays flat.

``python -m lab.bench.preview_scale --customers 100000`` starts its own Redis,
populates N customers directly (``segflow_apply``, ``--events-per-customer`` each, 4 by
default as row 7 does, one day apart)
plus a stored segments hash each, then runs the preview of a changed lifecycle
rule (customers stay ``new`` for 30 days instead of 14) and prints one JSON
line: seconds, customers per second, and the process's resident memory at each
quarter of the scan (flat: no growth with the customers read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from lab.bench.common import LAYOUT, make_payloads, say
from lab.bench.redis_rows import _apply_batches, _batch_calls, _deltas


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def populate(url: str, customers: int, events_per_customer: int = 4) -> float:
    """``customers`` customers with features (via the Lua apply) and segments; seconds taken."""
    import redis as redis_lib
    import redis.asyncio as aioredis

    from features.store import load_library_sync
    from streams.redis_packing import use_hiredis_packer
    from streams.segment_store import StoredAssignment

    templates = [d for _, d in _deltas(make_payloads(5000))]
    base, day = templates[0].ts_ms, 86_400_000
    sync = redis_lib.Redis.from_url(url, decode_responses=True)
    load_library_sync(sync)
    segments: dict[Any, Any] = {
        "lifecycle": StoredAssignment("active", base, "default", 1, 1).encode(),
        "behaviour": StoredAssignment("steady", base, "nearest_centroid", 1, 1).encode(),
        "value": StoredAssignment("need_attention", base, "default", 1, 1).encode(),
    }
    t0 = time.perf_counter()

    async def run() -> None:
        r = use_hiredis_packer(aioredis.Redis.from_url(url))
        try:
            pending: list = []
            for i in range(customers):
                for j in range(events_per_customer):
                    t = templates[(i * 7 + j) % len(templates)]
                    pending.append((f"s{i}", t._replace(ts_ms=base + j * day + (i % 86_400) * 1000, token=f"p{i}.{j}", offset=None)))
                if len(pending) >= 5000 or i == customers - 1:
                    await _apply_batches(r, [_batch_calls(pending)])
                    pipe = sync.pipeline(transaction=False)
                    for cid in {c for c, _ in pending}:
                        pipe.hset(LAYOUT.segments_key(cid), mapping=segments)
                    pipe.execute()
                    pending = []
                if i and i % 20_000 == 0:
                    say(f"  populated {i:,} customers")
        finally:
            await r.aclose()

    asyncio.run(run())
    sync.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events-per-customer", type=int, default=4, help="Events applied per customer, each on its own day")
    args = parser.parse_args(argv)

    import redis as redis_lib

    from lab.embedded import RedisServer
    from segmenter.config import default_config_text, parse_config
    from streams.preview import live_snapshot, run_preview
    from streams.settings import Settings

    server = RedisServer().start()
    try:
        populate_s = populate(server.url, args.customers, args.events_per_customer)
        say(f"populated {args.customers:,} customers in {populate_s:.1f} s; previewing")
        text = default_config_text()
        rule = '        - {feature: tenure_days, op: "<", value: 14}'
        candidate = parse_config(text.replace(rule, rule.replace("14", "30")), "candidate.yaml")
        settings = Settings(redis_url=server.url, partitions=LAYOUT.partitions)
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        seen, marks, rss = 0, [args.customers * q // 4 for q in (1, 2, 3, 4)], [round(rss_mib(), 1)]

        def progress(n: int) -> None:
            nonlocal seen
            seen += n
            while marks and seen >= marks[0]:
                marks.pop(0)
                rss.append(round(rss_mib(), 1))
                say(f"  {seen:,} customers previewed, RSS {rss[-1]} MiB")

        t0 = time.perf_counter()
        view = run_preview(client, settings, candidate, live_snapshot(settings), progress=progress)
        seconds = time.perf_counter() - t0
        result = {
            "customers": view["customers"],
            "seconds": round(seconds, 1),
            "customers_per_s": round(view["customers"] / seconds),
            "rss_mib_at_0_25_50_75_100pct": rss,
            "lifecycle_moved": view["segmentations"]["lifecycle"]["moved"],
            "events_per_customer": args.events_per_customer,
            "populate_seconds": round(populate_s, 1),
        }
        print(json.dumps(result))
        return result
    finally:
        server.stop()


if __name__ == "__main__":
    main()
