"""The Redis rows: row 4 (the ceiling: pipelined ``FCALL segflow_apply`` in batches
like the worker's), row 7a (memory per customer the worker built) and row 7b
(scale: memory and per-event cost with state populated directly).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from features.keys import Layout
from lab.bench.common import (
    LAYOUT,
    say,
)

# -- row 4: Redis ceiling ---------------------------------------------------------


def _deltas(payloads) -> list[tuple[str, Any]]:
    from features.extract import delta_of
    from streams.events import decode

    out = []
    for i, (family, _key, value) in enumerate(payloads):
        event = decode(family, value)
        out.append((event.customer_id, delta_of(event, (0, i))))
    return out


def _batch_calls(items, late_before_ms=None, layout: Layout = LAYOUT):
    """FCALL arguments of one batch, asking for state on each customer's last event (as the worker does)."""
    from features.store import apply_call

    last = {cid: i for i, (cid, _) in enumerate(items)}
    return [apply_call(layout, cid, d, late_before_ms, last[cid] == i) for i, (cid, d) in enumerate(items)]


def worker_like_batches(deltas, batch: int, lateness_ms: int = 6 * 3600 * 1000, layout: Layout = LAYOUT) -> list:
    """Batches of FCALL arguments as the worker builds them: each batch's lateness horizon
    is the newest event time of the batches before it minus the default lateness."""
    out, newest = [], None
    for i in range(0, len(deltas), batch):
        chunk = deltas[i : i + batch]
        out.append(_batch_calls(chunk, None if newest is None else newest - lateness_ms, layout))
        top = max(d.ts_ms for _, d in chunk)
        newest = top if newest is None else max(newest, top)
    return out


async def _apply_batches(r, batches) -> float:
    from features.pipeline import run_pipeline  # as FeatureStore.apply_batch sends them

    t0 = time.perf_counter()
    for calls in batches:
        await run_pipeline(r, calls)
    return time.perf_counter() - t0


def fcall_server_usec(r) -> dict:
    """Server-side cost of FCALL since the last CONFIG RESETSTAT (sync client)."""
    all_stats = r.info("commandstats")
    stats = all_stats.get("cmdstat_fcall") or {}
    calls = int(stats.get("calls", 0))
    # Commands the functions ran (Redis counts them too): work per call, whatever the machine's speed.
    inner = sum(int(v.get("calls", 0)) for k, v in all_stats.items() if k != "cmdstat_fcall" and k.startswith("cmdstat_"))
    return {"calls": calls, "usec_per_call": float(stats.get("usec_per_call", 0.0)), "inner_commands_per_call": round(inner / calls, 2) if calls else None}


def redis_ceiling(url: str, payloads, batch: int = 2000) -> dict:
    import redis as redis_lib
    import redis.asyncio as aioredis

    from features.store import load_library_sync
    from streams.redis_packing import use_hiredis_packer

    sync = redis_lib.Redis.from_url(url)
    sync.flushdb()
    load_library_sync(sync)
    deltas = _deltas(payloads)
    batches = worker_like_batches(deltas, batch)
    sync.config_resetstat()

    async def go() -> float:
        r = use_hiredis_packer(aioredis.Redis.from_url(url))  # packs as the worker's client does
        try:
            return await _apply_batches(r, batches)
        finally:
            await r.aclose()

    seconds = asyncio.run(go())
    server = fcall_server_usec(sync)
    sync.flushdb()
    sync.close()
    return {
        "events": len(deltas),
        "seconds": round(seconds, 3),
        "rate": round(len(deltas) / seconds, 1),
        "batch": batch,
        "server_usec_per_call": server["usec_per_call"],
    }


# -- row 7a: memory of the customers the worker built ---------------------------------


def memory_per_customer(r, sample: int = 2000, layout: Layout = LAYOUT) -> dict:
    """MEMORY USAGE of a customer's features, segments and history keys over a sample, and used_memory per customer."""
    from features import keys

    ids: list[str] = []
    total_customers = 0
    for k in r.scan_iter(match=f"{keys.FEATURES_PREFIX}{{*", count=1000):
        total_customers += 1
        if len(ids) < sample:
            ids.append(keys.customer_id_of(k))
    if not ids:
        return {"customers": 0}
    parts = {"cust": 0, "seg": 0, "hist": 0}
    fields = 0
    for cid in ids:
        parts["cust"] += r.memory_usage(layout.customer_key(cid), samples=0) or 0
        parts["seg"] += r.memory_usage(layout.segments_key(cid), samples=0) or 0
        parts["hist"] += r.memory_usage(layout.history_key(cid), samples=0) or 0
        fields += r.hlen(layout.customer_key(cid))
    info = r.info("memory")
    # A cluster client answers per node ({node: info}); the dataset is their sum.
    nodes = list(info.values()) if info and all(isinstance(v, dict) for v in info.values()) else [info]
    dataset = sum(int(n.get("used_memory_dataset", 0)) for n in nodes)
    per = {k: round(v / len(ids)) for k, v in parts.items()}
    return {
        "customers": total_customers,
        "sampled": len(ids),
        "bytes_per_customer_keys": sum(per.values()),
        "by_key": per,
        "avg_fields_in_cust_hash": round(fields / len(ids), 1),
        "used_memory_dataset_per_customer": round(dataset / total_customers),
    }


# -- row 7b: scale --------------------------------------------------------------------


def scale_test(
    url: str,
    payloads,
    sizes: tuple[int, ...],
    probe_events: int,
    events_per_customer: int = 4,
    batch: int = 2000,
    probe_rounds: int = 5,
    hot: int | None = None,
    ballast: tuple[int, int] = (0, 0),
) -> list[dict]:
    """Populate ``sizes`` customers by calling ``segflow_apply`` directly; at each size measure memory and
    per-event cost (the median of ``probe_rounds`` probes) on random customers, or with ``hot`` on the
    first ``hot`` of them only (the same customers at every size: what the probes touch stays the same).
    ``ballast`` = (keys, bytes each): strings written first and never touched again, to tell what a
    larger keyspace costs from what a larger heap costs (memory is then counted without them)."""
    import redis as redis_lib
    import redis.asyncio as aioredis

    from features.store import load_library_sync
    from streams.redis_packing import use_hiredis_packer

    templates = [d for _, d in _deltas(payloads[: min(len(payloads), 5000)])]
    day = 86_400_000
    base = templates[0].ts_ms

    def deltas_for(cid_index: int, j: int, tag: str):
        t = templates[(cid_index * 7 + j) % len(templates)]
        return f"s{cid_index}", t._replace(ts_ms=base + j * day + (cid_index % 86_400) * 1000, token=f"{tag}{cid_index}.{j}", offset=None)

    sync = redis_lib.Redis.from_url(url, decode_responses=True)
    sync.execute_command("FLUSHALL", "SYNC")  # plain FLUSHALL may free lazily, after the baseline
    load_library_sync(sync)
    ballast_keys, ballast_bytes = ballast
    for start in range(0, ballast_keys, 10_000):
        pipe = sync.pipeline(transaction=False)
        for i in range(start, min(ballast_keys, start + 10_000)):
            pipe.set(f"ballast:{i}", "x" * ballast_bytes)
        pipe.execute()
    sync.memory_purge()
    baseline = int(sync.info("memory")["used_memory"])
    results = []

    async def run_all():
        r = use_hiredis_packer(aioredis.Redis.from_url(url))
        try:
            populated = 0
            last_day: dict[int, int] = {}  # across sizes: a customer probed at a smaller size goes on from its last day
            for size in sizes:
                t0 = time.perf_counter()
                pending: list = []
                for i in range(populated, size):
                    for j in range(events_per_customer):
                        pending.append(deltas_for(i, j, "p"))
                    if len(pending) >= 5000:
                        await _apply_batches(r, [_batch_calls(pending)])
                        pending = []
                    if i and i % 100_000 == 0:
                        say(f"  populated {i:,} customers")
                if pending:
                    await _apply_batches(r, [_batch_calls(pending)])
                populate_s = time.perf_counter() - t0
                populated = size
                # Probe: events of random existing customers, a later day, batches like the worker's.
                # Several rounds, the median reported: one round of ~1 s moved by up to 70%
                # between rounds at the same size on this machine. Every probe event is its
                # customer's next day (customers drawn without replacement within a block of
                # ``size`` events), so at every size each event clears the same day buckets
                # and the work per event is the same.
                rng = random.Random(size)
                # Memory first: the probes add events (and duplicate-filter entries) to the customers.
                info = sync.info("memory")
                sample_ids = [f"s{rng.randrange(size)}" for _ in range(min(500, size))]
                usage = [sync.memory_usage(LAYOUT.customer_key(c), samples=0) or 0 for c in sample_ids]
                rounds = []
                for round_no in range(probe_rounds):
                    probe = []
                    drawn = size if hot is None else min(size, hot)
                    for start in range(0, probe_events, drawn):
                        for k, c in enumerate(rng.sample(range(drawn), min(drawn, probe_events - start))):
                            last_day[c] = last_day.get(c, events_per_customer - 1) + 1
                            probe.append(deltas_for(c, last_day[c], f"q{size}.{round_no}.{start + k}."))
                    batches = [_batch_calls(probe[i : i + batch]) for i in range(0, len(probe), batch)]
                    sync.config_resetstat()
                    seconds = await _apply_batches(r, batches)
                    server = fcall_server_usec(sync)
                    rounds.append((server["usec_per_call"], seconds / probe_events * 1e6))
                server_rounds = sorted(u for u, _ in rounds)
                client_rounds = sorted(c for _, c in rounds)
                row = {
                    "customers": size,
                    "probed_customers": drawn,
                    "events_per_customer": events_per_customer,
                    "populate_seconds": round(populate_s, 1),
                    "probe_events": probe_events,
                    "probe_rounds": probe_rounds,
                    "usec_per_event_client": round(client_rounds[len(client_rounds) // 2], 2),
                    "usec_per_call_server": server_rounds[len(server_rounds) // 2],
                    "usec_per_call_server_rounds": [round(u, 2) for u, _ in rounds],
                    "redis_commands_per_event": server["inner_commands_per_call"],  # of the last round
                    "used_memory_per_customer": round((int(info["used_memory"]) - baseline) / size),
                    "cust_key_bytes_sampled": round(sum(usage) / len(usage)),
                }
                say(
                    f"  {size:,} customers: {row['usec_per_event_client']} µs/event (server {row['usec_per_call_server']} µs), "
                    f"{row['used_memory_per_customer']} B/customer"
                )
                results.append(row)
        finally:
            await r.aclose()

    try:
        asyncio.run(run_all())
    finally:
        sync.flushall()
        sync.close()
    return results


# -- row 9: shards ---------------------------------------------------------------------


def shards_row(payloads, shard_counts: tuple[int, ...] = (1, 3), batch: int = 2000, partitions: int = 12) -> list[dict]:
    """Row 4's FCALL batches against a local Redis Cluster of 1 and of 3 primaries, through
    the worker's cluster client: aggregate events/s, and per node the server µs and Redis
    commands per call and the keys it holds (their balance). On a 2-core machine more
    shards cannot run faster; the per-node costs feed the capacity model (docs/PERFORMANCE.md).
    Keys are laid out for ``partitions`` input partitions (12: 4 per shard of 3)."""
    from features.store import LIBRARY
    from lab.embedded import RedisCluster
    from streams.redis_clients import async_client, sync_client

    deltas = _deltas(payloads)
    batches = worker_like_batches(deltas, batch, layout=Layout(partitions))
    out = []
    for shards in shard_counts:
        with RedisCluster(shards=shards) as cluster:
            sync: Any = sync_client(cluster.url, cluster=True)
            sync.function_load(LIBRARY, replace=True)
            nodes = [node.redis_connection for node in sync.get_primaries()]
            for node in nodes:
                node.config_resetstat()

            async def go(url: str = cluster.url) -> float:
                r: Any = async_client(url, cluster=True)
                try:
                    return await _apply_batches(r, batches)
                finally:
                    await r.aclose()

            seconds = asyncio.run(go())
            per_node = []
            for node in nodes:
                server = fcall_server_usec(node)
                per_node.append({**server, "keys": int(node.dbsize())})
            calls = sum(n["calls"] for n in per_node)
            usec = sum(n["calls"] * n["usec_per_call"] for n in per_node)
            keys = [n["keys"] for n in per_node]
            row = {
                "shards": shards,
                "partitions": partitions,
                "events": len(deltas),
                "seconds": round(seconds, 3),
                "rate": round(len(deltas) / seconds, 1),
                "server_usec_per_event": round(usec / calls, 2) if calls else None,
                "redis_commands_per_event": round(sum(n["calls"] * (n["inner_commands_per_call"] or 0) for n in per_node) / calls, 2) if calls else None,
                "keys_balance": round(max(keys) / min(keys), 3) if min(keys) else None,
                "calls_balance": round(max(n["calls"] for n in per_node) / max(1, min(n["calls"] for n in per_node)), 3),
                "per_node": per_node,
            }
            say(
                f"  {shards} shard(s): {row['rate']:,.0f} ev/s, server {row['server_usec_per_event']} µs and "
                f"{row['redis_commands_per_event']} commands per event, keys per node {keys}"
            )
            out.append(row)
            sync.close()
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    """``python -m lab.bench.redis_rows --sizes 10000,1000000 [--hot 10000]``: row 7 scale alone, on its own Redis."""
    import argparse
    import json

    from lab.bench.common import make_payloads
    from lab.embedded import RedisServer

    parser = argparse.ArgumentParser(description="Row 7 scale alone: server µs per segflow_apply call at each population size")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="customer counts, comma-separated, ascending")
    parser.add_argument("--probe-events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hot", type=int, help="probe only the first HOT customers at every size (default: all, at random)")
    parser.add_argument("--ballast", default="0x0", help="KEYSxBYTES: strings written first and never touched (default none)")
    args = parser.parse_args(argv)
    keys, size = (int(x) for x in args.ballast.split("x"))
    server = RedisServer().start()
    try:
        rows = scale_test(
            server.url,
            make_payloads(5000),
            tuple(int(x) for x in args.sizes.split(",")),
            args.probe_events,
            probe_rounds=args.rounds,
            hot=args.hot,
            ballast=(keys, size),
        )
    finally:
        server.stop()
    print(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
