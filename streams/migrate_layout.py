"""Re-lay existing Redis data in the current key layout (``segflow migrate-layout``).

Two kinds of older data are moved: the layout of versions before keys were laid out
by input partition (``cust:{<id>}``, ``seg:<segmentation>:<segment>``,
``segflow:outbox``, ...), and data laid out for another partition count. Moves are
per key (RENAME, or a read-and-write that deletes the source last), so an interrupted
run loses nothing and a second run finishes the job. It runs against a single Redis;
to go to a cluster, migrate there first, then import (docs/OPERATIONS.md).

A worker refuses to start on older data (:func:`refuse_older_layout`): it would read
none of it and start everyone afresh.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from features import keys
from features.keys import Layout

LAYOUT_KEY = "segflow:layout"  # the partition count the data is laid out for
# Keys of the layout before partition tags: their presence means data to migrate.
V1_MARKERS = ("segflow:customers", "segflow:outbox", "segflow:model:behaviour:current")
V1_RENAMES = {
    "segflow:model:churn": keys.CHURN_MODEL,
    "segflow:model:behaviour:current": f"{keys.MODEL}:current",
    "segflow:drift": keys.DRIFT,
    "segflow:reseed": keys.RESEED,
}
V1_COUNTERS = ("applied", "duplicates", "suppressed", "erased")  # moved from segflow:stats to the per-partition stats (and between partitions)


class OlderLayoutError(RuntimeError):
    """Redis holds data in another key layout; the message names the command that moves it."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _problem(v1: bool, laid_out_for: Any, layout: Layout) -> str | None:
    if v1:
        return "Redis holds segflow data in the key layout of an older version; run `segflow migrate-layout` first (docs/OPERATIONS.md)"
    if laid_out_for is not None and int(laid_out_for) != layout.partitions:
        return (
            f"Redis holds segflow data laid out for {int(laid_out_for)} input partitions, and SEGFLOW_PARTITIONS={layout.partitions}: "
            "set it back, or run `segflow migrate-layout` to re-lay the data"
        )
    return None


async def refuse_older_layout(redis: Any, layout: Layout) -> None:
    """Raise :class:`OlderLayoutError` if Redis holds data this layout would not read;
    otherwise record the layout (one key per marker: they are in different cluster slots)."""
    v1 = False
    for marker in V1_MARKERS:
        v1 = v1 or bool(await redis.exists(marker))
    problem = _problem(v1, await redis.get(LAYOUT_KEY), layout)
    if problem:
        raise OlderLayoutError(problem)
    await redis.set(LAYOUT_KEY, layout.partitions)


@dataclass
class MigrationReport:
    customers: int = 0  # customers whose keys moved
    keys_moved: int = 0
    members_moved: int = 0
    deadlines_moved: int = 0
    outbox_moved: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)  # customers with state per partition, after


def _tag_of(key: str) -> str | None:
    if "{" not in key:
        return None
    return key[key.index("{") + 1 : key.index("}")]


def migrate(redis: Any, layout: Layout, progress: Callable[[str], None] = lambda _: None) -> MigrationReport:
    """Move every key not in ``layout`` into it (a sync single-Redis client, decode_responses=True)."""
    report = MigrationReport()
    tags = set(layout.tags)

    # One customer's keys: RENAME to the customer's partition's tag.
    prefixes = {"": keys.FEATURES_PREFIX, ":seg": keys.SEGMENTS_PREFIX, ":hist": keys.HISTORY_PREFIX}
    for pattern in ("cust:{*", f"{keys.FEATURES_PREFIX}{{*", f"{keys.SEGMENTS_PREFIX}{{*", f"{keys.HISTORY_PREFIX}{{*"):
        for key in redis.scan_iter(match=pattern, count=1000):
            if key.startswith("cust:{"):
                close = key.rindex("}")
                suffix = key[close + 1 :]
                if suffix not in prefixes:
                    continue
                cid, prefix = key[len("cust:{") : close], prefixes[suffix]
            else:
                if _tag_of(key) in tags:
                    continue
                cid, prefix = keys.customer_id_of(key), key[: key.index("{")]
            target = f"{prefix}{{{layout.tags[layout.partition(cid)]}}}:{cid}"
            redis.rename(key, target)
            report.keys_moved += 1
            report.customers += prefix == keys.FEATURES_PREFIX
            if report.keys_moved % 10_000 == 0:
                progress(f"{report.keys_moved:,} customer keys moved")

    # Membership sets: members go to their own partition's set.
    for key in redis.scan_iter(match="seg:*", count=1000):
        if _tag_of(key) in tags:
            continue
        rest = key[len("seg:") :] if "{" not in key else key[key.index("}:") + 2 :]
        segmentation, _, segment = rest.partition(":")
        batch = []
        for member in redis.sscan_iter(key, count=1000):
            batch.append(member)
            if len(batch) >= 1000:
                _add_members(redis, layout, segmentation, segment, batch)
                report.members_moved += len(batch)
                batch = []
        _add_members(redis, layout, segmentation, segment, batch)
        report.members_moved += len(batch)
        redis.delete(key)

    # Deadlines, and the duplicate-filter sweep: the earlier of two times of a customer
    # wins (LT), as a commit (or segflow_apply) would.
    for pattern, key_of in (("segflow:*deadlines*", layout.deadlines_key), ("segflow:*filters*", layout.filters_key)):
        for key in [k for k in redis.scan_iter(match=pattern, count=1000) if _tag_of(k) not in tags]:
            if redis.type(key) != "zset":
                continue
            entries = redis.zrange(key, 0, -1, withscores=True)
            pipe = redis.pipeline(transaction=False)
            for cid, score in entries:
                pipe.zadd(key_of(layout.partition(cid)), {cid: score}, lt=True)
            pipe.delete(key)
            pipe.execute()
            if key_of == layout.deadlines_key:
                report.deadlines_moved += len(entries)

    # Outbox: changes not yet confirmed on Kafka, in order, to their customer's partition.
    import json

    for key in [k for k in redis.scan_iter(match="segflow:*outbox", count=1000) if _tag_of(k) not in tags]:
        while entries := redis.xrange(key, count=1000):
            pipe = redis.pipeline(transaction=True)
            for entry_id, fields in entries:
                cid = json.loads(fields["change"])["customer_id"]
                pipe.xadd(layout.outbox(layout.partition(cid)), {"change": fields["change"]})
                pipe.xdel(key, entry_id)
            pipe.execute()
            report.outbox_moved += len(entries)
        redis.delete(key)

    # Flows and counters are population sums: another partition's share adds to partition 0's.
    for key in redis.scan_iter(match="segflow:*flows:*", count=1000):
        if _tag_of(key) in tags:
            continue
        hour = int(key.rsplit(":", 1)[1])
        counts, ttl = redis.hgetall(key), redis.ttl(key)
        pipe = redis.pipeline(transaction=True)
        for name, n in counts.items():
            pipe.hincrby(layout.flows(0, hour), name, int(n))
        if ttl > 0:
            pipe.expire(layout.flows(0, hour), ttl)
        pipe.delete(key)
        pipe.execute()
    stats_keys = [k for k in redis.scan_iter(match="segflow:{*}:stats", count=1000) if _tag_of(k) not in tags]
    for key in [keys.STATS, *stats_keys]:
        counts = {c: int(redis.hget(key, c) or 0) for c in V1_COUNTERS}
        pipe = redis.pipeline(transaction=True)
        for name, n in counts.items():
            if n:
                pipe.hincrby(layout.stats(0), name, n)
        if key == keys.STATS:
            pipe.hdel(key, *V1_COUNTERS)
        else:
            pipe.delete(key)
        pipe.execute()

    # Global keys renamed; model snapshots keep their version numbers.
    for old, new in V1_RENAMES.items():
        if redis.exists(old):
            redis.rename(old, new)
    for key in redis.scan_iter(match="segflow:model:behaviour:v*", count=1000):
        redis.rename(key, f"{keys.MODEL}:{key.rsplit(':', 1)[1]}")

    # The customer counts (the max_customers limit), recounted per partition.
    # An erased customer's tombstone (a features hash without `fs` or traits `t`) is no customer.
    per_tag: Counter[str] = Counter()
    for chunk in _chunks(redis.scan_iter(match=f"{keys.FEATURES_PREFIX}{{*", count=1000), 1000):
        pipe = redis.pipeline(transaction=False)
        for key in chunk:
            pipe.hmget(key, "fs", "t")
        for key, has_state in zip(chunk, pipe.execute(), strict=True):
            per_tag[_tag_of(key) or ""] += any(has_state)
    pipe = redis.pipeline(transaction=False)
    for p, tag in enumerate(layout.tags):
        pipe.set(layout.customers(p), per_tag[tag])
        report.per_partition[p] = per_tag[tag]
    for key in redis.scan_iter(match="segflow:*customers", count=1000):
        if _tag_of(key) not in tags:
            pipe.delete(key)
    pipe.set(LAYOUT_KEY, layout.partitions)
    pipe.execute()
    return report


def _chunks(items: Any, size: int) -> Any:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _add_members(redis: Any, layout: Layout, segmentation: str, segment: str, members: list[str]) -> None:
    by_partition: dict[int, list[str]] = {}
    for m in members:
        by_partition.setdefault(layout.partition(m), []).append(m)
    pipe = redis.pipeline(transaction=False)
    for p, ms in by_partition.items():
        pipe.sadd(layout.member_set(p, segmentation, segment), *ms)
    pipe.execute()
