"""Row 7's memory at 1,000,000 customers with every key a customer holds.

``python -m lab.bench.memory_scale --sizes 10000,100000,1000000`` starts its own
Redis (the embedded one, configured as the worker's) and builds template customers
the way row 5 does: the same simulated backlog (``make_payloads``, about 40 days of
each customer's life), folded by an in-process :class:`~streams.engine.Engine` on
the event clock, its deadlines fired and its duplicate filters swept after every
batch, as the worker's deadline timer does. A template then holds what
a customer of row 5 holds: features (``cf``), segments (``cs``), history (``ch``),
a place in its segments' member sets and in its partition's deadlines. Each
template is cloned under new ids (``DUMP``/``RESTORE`` of its three keys, the same
set memberships in the clone's partition) up to each size, and the script reports
per customer:

- ``MEMORY USAGE`` of the three keys (row 7's measure, the <= 2 KiB target), over
  the templates: the clones are byte-for-byte copies;
- ``used_memory`` grown per clone: the three keys plus what a customer costs
  outside them (the keyspace's own entries, set and sorted-set members).

Row 7 scale (``scale_test`` in lab/bench/redis_rows.py) measures the per-event cost
at these sizes with the features key alone; this one measures what the whole
footprint costs there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import defaultdict
from typing import Any

from lab.bench.common import machine_facts, make_payloads, say

EVENTS_PER_TEMPLATE = 300  # make_payloads: about 300 events per customer
TAG = re.compile(r"\{[^}]*\}")


def build_templates(url: str, customers: int, partitions: int, batch: int = 500) -> list[str]:
    """Fold row 5's backlog for ``customers`` customers into Redis through an in-process engine."""
    from features.keys import partition_of
    from segmenter.assign import Segmenter
    from segmenter.config import default_config
    from streams.app import redis_client
    from streams.engine import Engine, InboundMessage
    from streams.settings import Settings

    settings = Settings(redis_url=url, clock="event", partitions=partitions)
    payloads = make_payloads(customers * EVENTS_PER_TEMPLATE)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    messages = []
    for family, key, value in payloads:
        topic, p = settings.topics.by_family[family], partition_of(key.decode(), partitions)
        messages.append(InboundMessage(topic, p, offsets[topic, p], key, value))
        offsets[topic, p] += 1

    async def run() -> None:
        engine = Engine(settings, redis_client(url), Segmenter.from_config(default_config()))
        await engine.start()
        engine.assign({(t, p) for t in settings.topics.by_family.values() for p in range(partitions)}, now=time.time())
        for i in range(0, len(messages), batch):
            await engine.process(messages[i : i + batch], now=time.time())
            while (await engine.fire_deadlines(1000)).changes:
                pass
            while await engine.sweep_filters(1000):  # as the worker's deadline timer does
                pass
            if i // batch % 50 == 0:
                say(f"  templates: {i + batch:,}/{len(messages):,} events folded")
        await engine.redis.aclose()

    asyncio.run(run())
    return sorted({key.decode() for _, key, _ in payloads})


def memberships(r, ids: set[str]) -> dict[str, list[tuple[str, str, float | None]]]:
    """Per customer, the sets and sorted sets that hold it as a member: (type, key, score)."""
    out: dict[str, list[tuple[str, str, float | None]]] = defaultdict(list)
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "set":
            for member in r.smembers(key):
                if member in ids:
                    out[member].append(("set", key, None))
        elif kind == "zset":
            for member, score in r.zrange(key, 0, -1, withscores=True):
                if member in ids:
                    out[member].append(("zset", key, score))
    return out


def template_dumps(r, layout, templates: list[str]) -> dict[str, list[tuple[str, bytes | None]]]:
    """Each template's three keys as ``DUMP`` blobs (None for a key it lacks), in template order."""
    return {
        t: [(kind, r.dump(key)) for kind, key in (("f", layout.customer_key(t)), ("s", layout.segments_key(t)), ("h", layout.history_key(t)))]
        for t in templates
    }


def clone(r, layout, dumps: dict[str, list[tuple[str, bytes | None]]], held: dict, start: int, stop: int) -> None:
    """Clones ``start`` .. ``stop - 1`` of the templates' :func:`template_dumps` (clone k copies template k mod their number)."""
    templates = list(dumps)
    pipe = r.pipeline(transaction=False)
    for k in range(start, stop):
        t = templates[k % len(templates)]
        cid = f"m{k}"
        tag = "{" + layout.tags[layout.partition(cid)] + "}"
        names = {"f": layout.customer_key(cid), "s": layout.segments_key(cid), "h": layout.history_key(cid)}
        for kind, blob in dumps[t]:
            if blob is not None:
                pipe.restore(names[kind], 0, blob, replace=True)
        for kind, key, score in held.get(t, ()):
            moved = TAG.sub(tag, key, count=1)
            if kind == "set":
                pipe.sadd(moved, cid)
            else:
                pipe.zadd(moved, {cid: score})
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="customer counts, comma-separated, ascending")
    parser.add_argument("--templates", type=int, default=300, help="customers built through the engine, then cloned")
    parser.add_argument("--partitions", type=int, default=4, help="as row 5's input topics")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    import redis as redis_lib

    from features.keys import Layout
    from lab.embedded import RedisServer

    layout = Layout(args.partitions)
    server = RedisServer().start()
    try:
        r = redis_lib.Redis.from_url(server.url, decode_responses=True)
        rb = redis_lib.Redis.from_url(server.url)
        say(f"building {args.templates} template customers from row 5's backlog (in-process engine, event clock)")
        templates = build_templates(server.url, args.templates, args.partitions)
        keys_bytes = {"cf": 0, "cs": 0, "ch": 0}
        for t in templates:
            keys_bytes["cf"] += r.memory_usage(layout.customer_key(t), samples=0) or 0
            keys_bytes["cs"] += r.memory_usage(layout.segments_key(t), samples=0) or 0
            keys_bytes["ch"] += r.memory_usage(layout.history_key(t), samples=0) or 0
        per_key = {k: round(v / len(templates)) for k, v in keys_bytes.items()}
        held = memberships(r, set(templates))
        members = sum(len(v) for v in held.values()) / len(templates)
        say(f"  three keys per template: {sum(per_key.values()):,} B {per_key}; {members:.1f} set members each")
        r.memory_purge()
        dumps = template_dumps(rb, layout, templates)
        baseline = int(r.info("memory")["used_memory"])
        rows = []
        done = 0
        for size in sizes:
            t0 = time.perf_counter()
            for start in range(done, size, 50_000):
                clone(rb, layout, dumps, held, start, min(size, start + 50_000))
                say(f"  cloned {min(size, start + 50_000):,}/{size:,}")
            done = size
            r.memory_purge()
            info = r.info("memory")
            row = {
                "customers": size,
                "clone_seconds": round(time.perf_counter() - t0, 1),
                "used_memory_per_customer": round((int(info["used_memory"]) - baseline) / size),
                "three_keys_per_customer": sum(per_key.values()),
                "keys": int(r.dbsize()),
                "fragmentation_ratio": float(info.get("mem_fragmentation_ratio", 0)),
            }
            say(f"  {size:,} customers: used_memory {row['used_memory_per_customer']:,} B per customer (three keys {row['three_keys_per_customer']:,} B)")
            rows.append(row)
        result = {
            "command": "python -m lab.bench.memory_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_facts(),
            "templates": len(templates),
            "partitions": args.partitions,
            "three_keys_by_key": per_key,
            "set_members_per_customer": round(members, 2),
            "sizes": rows,
        }
    finally:
        server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
