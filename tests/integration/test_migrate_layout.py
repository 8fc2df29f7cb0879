"""``segflow migrate-layout`` on data an older version left (tests/fixtures/redis_layout_v1.json,
written by tests/fixtures/make_redis_layout_v1.py at 7978e8a): a worker refuses the old
layout, the command moves every key, a second run moves nothing, and an engine then
continues the migrated customers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from features import keys
from features.keys import Layout
from streams.migrate_layout import OlderLayoutError, migrate
from streams.segment_store import parse_segments
from streams.settings import Settings
from streams.status import outbox_length, read_totals
from tests.integration.reliability_helpers import DAY_MS, purchase_json

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parents[1] / "fixtures" / "redis_layout_v1.json"


def load_v1(url: str) -> dict[str, dict]:
    """Write the fixture's keys into Redis; returns them decoded (key -> type and value)."""
    raw = redis_lib.Redis.from_url(url)
    dumped = json.loads(FIXTURE.read_text())["keys"]

    def d(v: str) -> bytes:
        return base64.b64decode(v)

    out = {}
    for k64, entry in dumped.items():
        key, kind, value = d(k64), entry["type"], entry["value"]
        if kind == "string":
            raw.set(key, d(value))
        elif kind == "hash":
            raw.hset(key, mapping={d(f): d(v) for f, v in value.items()})
        elif kind == "list":
            raw.rpush(key, *[d(v) for v in value])
        elif kind == "set":
            raw.sadd(key, *[d(v) for v in value])
        elif kind == "zset":
            raw.zadd(key, {d(m): s for m, s in value})
        elif kind == "stream":
            for fields in value:
                raw.xadd(key, {d(f): d(v) for f, v in fields.items()})
        if entry["ttl_s"] > 0:
            raw.expire(key, entry["ttl_s"])
        out[key.decode()] = {"type": kind, "value": value}
    raw.close()
    return out


def text(v: str) -> str:
    return base64.b64decode(v).decode()


def test_a_worker_refuses_the_older_layout_and_migrate_layout_moves_everything(redis_server, redis_client):
    old = load_v1(redis_server.url)
    layout = Layout(4)
    customers = sorted({keys.customer_id_of(k.replace("cust:{", "x:{q}:").rsplit("}", 1)[0]) for k in old if k.startswith("cust:{")})
    assert len(customers) == 11

    # The worker refuses to start, naming the command.
    settings = Settings(redis_url=redis_server.url, clock="event", partitions=4)
    with pytest.raises(OlderLayoutError, match="segflow migrate-layout"):
        asyncio.run(start_engine(settings))

    env = {**os.environ, "SEGFLOW_REDIS_URL": redis_server.url, "SEGFLOW_PARTITIONS": "4"}
    done = subprocess.run([sys.executable, "-m", "segflow.cli", "migrate-layout"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "done: 11 customers (33 keys)" in done.stderr + done.stdout

    # Every customer's three keys, with the same contents, under the partition's tag.
    for cid in customers:
        assert redis_client.hgetall(layout.customer_key(cid)) == {text(f): text(v) for f, v in old[f"cust:{{{cid}}}"]["value"].items()}
        assert redis_client.hgetall(layout.segments_key(cid)) == {text(f): text(v) for f, v in old[f"cust:{{{cid}}}:seg"]["value"].items()}
        assert redis_client.lrange(layout.history_key(cid), 0, -1) == [text(v) for v in old[f"cust:{{{cid}}}:hist"]["value"]]
    assert not [k for k in redis_client.scan_iter("cust:*")]
    # Member sets, split by partition, hold the same members.
    for key, entry in old.items():
        if key.startswith("seg:"):
            _, segmentation, segment = key.split(":", 2)
            split = [set(redis_client.smembers(k)) for k in layout.member_sets(segmentation, segment)]
            assert set().union(*split) == {text(m) for m in entry["value"]}
            assert all(layout.partition(m) == p for p, members in enumerate(split) for m in members)
    # Deadlines and unsent changes are in their customer's partition; counters and the model moved.
    old_deadlines = {text(m): s for k, e in old.items() if k.startswith("segflow:deadlines") for m, s in e["value"]}
    assert old_deadlines
    for cid, score in old_deadlines.items():
        assert redis_client.zscore(layout.deadlines_key(layout.partition(cid)), cid) == score
    old_outbox = [text(f["Y2hhbmdl"]) for f in old["segflow:outbox"]["value"]]  # field "change"
    assert outbox_length(redis_client, layout) == len(old_outbox) > 0
    for p in range(4):
        moved = [fields["change"] for _, fields in redis_client.xrange(layout.outbox(p))]
        assert all(layout.partition(json.loads(c)["customer_id"]) == p for c in moved)
        assert moved == [c for c in old_outbox if layout.partition(json.loads(c)["customer_id"]) == p]  # order kept
    old_stats = {text(f): int(text(v)) for f, v in old["segflow:stats"]["value"].items()}
    totals = read_totals(redis_client, layout)
    assert totals["applied"] == old_stats["applied"] and totals["duplicates"] == old_stats["duplicates"] == 1
    assert sum(int(redis_client.get(layout.customers(p))) for p in range(4)) == 11
    assert redis_client.get(f"{keys.MODEL}:current") == "1" and redis_client.exists(keys.CHURN_MODEL)
    assert not redis_client.exists("segflow:customers", "segflow:outbox", "segflow:model:behaviour:current")

    # A second run moves nothing.
    again = migrate(redis_client, layout)
    assert (again.keys_moved, again.members_moved, again.deadlines_moved, again.outbox_moved) == (0, 0, 0, 0)

    # An engine continues a migrated customer: its features and its segments' version.
    cid = customers[0]
    before_n = int(redis_client.hget(layout.customer_key(cid), "n"))
    version = int(redis_client.hget(layout.segments_key(cid), "_v"))
    newest = int(redis_client.hget(layout.customer_key(cid), "ls"))
    outcome = asyncio.run(start_engine(settings, event=(cid, newest + DAY_MS)))
    assert outcome.dead_letters == []
    assert int(redis_client.hget(layout.customer_key(cid), "n")) == before_n + 1
    assert int(redis_client.hget(layout.segments_key(cid), "_v")) >= version
    assert parse_segments(redis_client.hgetall(layout.segments_key(cid)))


def test_migrate_layout_re_lays_data_for_another_partition_count(redis_server, redis_client):
    load_v1(redis_server.url)
    migrate(redis_client, Layout(4))
    four = {cid: redis_client.hgetall(Layout(4).customer_key(cid)) for cid in (keys.customer_id_of(k) for k in redis_client.scan_iter("cf:*"))}
    for cid, h in four.items():  # as segflow_apply leaves them: in the duplicate-filter sweep
        redis_client.zadd(Layout(4).filters_key(Layout(4).partition(cid)), {cid: int(h["ls"])})
    settings = Settings(redis_url=redis_server.url, clock="event", partitions=2)
    with pytest.raises(OlderLayoutError, match="laid out for 4 input partitions"):
        asyncio.run(start_engine(settings))
    report = migrate(redis_client, Layout(2))
    assert report.customers == 11
    assert {cid: redis_client.hgetall(Layout(2).customer_key(cid)) for cid in four} == four
    assert {cid: redis_client.zscore(Layout(2).filters_key(Layout(2).partition(cid)), cid) for cid in four} == {cid: int(h["ls"]) for cid, h in four.items()}
    assert sum(report.per_partition.values()) == 11 and set(report.per_partition) == {0, 1}
    assert not [k for k in redis_client.scan_iter("*") if "{p" in k and k[k.index("{") + 1 : k.index("}")] not in Layout(2).tags]
    asyncio.run(start_engine(settings))  # no longer refused


async def start_engine(settings: Settings, event: tuple[str, int] | None = None):
    from segmenter.assign import Segmenter
    from segmenter.config import default_config
    from streams.app import redis_client as async_redis
    from streams.engine import Engine, InboundMessage

    engine = Engine(settings, async_redis(settings.redis_url.get_secret_value(), settings.redis_cluster), Segmenter.from_config(default_config()))
    try:
        await engine.start()
        if event is None:
            return None
        cid, ts = event
        topic = settings.topics.purchases
        return await engine.process([InboundMessage(topic, settings.layout.partition(cid), 10_000, cid.encode(), purchase_json(cid, 999, ts))], now=time.time())
    finally:
        await engine.redis.aclose()


def test_a_migrated_single_redis_imported_into_a_cluster_serves_the_same_customers(redis_server, redis_client, redis_cluster, redis_cluster_client):
    """The documented path from one Redis to a cluster: migrate-layout on the single Redis,
    then ``redis-cli --cluster import --cluster-copy`` (valkey-cli takes the same
    arguments); a worker's engine on the cluster then continues a customer."""
    load_v1(redis_server.url)
    layout = Layout(4)
    migrate(redis_client, layout)
    single = {k: redis_client.type(k) for k in redis_client.scan_iter("*")}
    cli = shutil.which("valkey-cli") or shutil.which("redis-cli")
    assert cli, "no valkey-cli or redis-cli: `apt-get install redis-tools` (make system-deps does)"
    target, source = redis_cluster.url.removeprefix("redis://"), redis_server.url.removeprefix("redis://").split("/")[0]
    done = subprocess.run([cli, "--cluster", "import", target, "--cluster-from", source, "--cluster-copy"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    on_cluster = {k: redis_cluster_client.type(k) for k in redis_cluster_client.scan_iter("*")}
    assert on_cluster == single
    for k, kind in single.items():
        if kind == "hash":
            assert redis_cluster_client.hgetall(k) == redis_client.hgetall(k)
        elif kind == "stream":
            assert redis_cluster_client.xrange(k) == redis_client.xrange(k)
    # Every partition's keys sit on one node: the layout holds on the cluster.
    for p in range(layout.partitions):
        tagged = [k for k in on_cluster if f"{{{layout.tags[p]}}}" in k]
        assert tagged and len({redis_cluster_client.keyslot(k) for k in tagged}) == 1

    cid = sorted(keys.customer_id_of(k) for k in single if k.startswith("cf:"))[0]
    before_n = int(redis_cluster_client.hget(layout.customer_key(cid), "n"))
    newest = int(redis_cluster_client.hget(layout.customer_key(cid), "ls"))
    settings = Settings(redis_url=redis_cluster.url, redis_cluster=True, clock="event", partitions=4)
    outcome = asyncio.run(start_engine(settings, event=(cid, newest + DAY_MS)))
    assert outcome.dead_letters == []
    assert int(redis_cluster_client.hget(layout.customer_key(cid), "n")) == before_n + 1
