"""The local Redis Cluster (lab.embedded.RedisCluster) and the cluster clients
(streams.redis_clients): three primaries share the slots, hash tags pick the
node, multi-key commands across tags are refused, a killed primary takes the
cluster down until it is restarted with its data, and FCALL is routed without
asking the server for its keys."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_lib

from lab.embedded import CLUSTER_SLOTS, RedisServer, cluster_info, free_cluster_port
from streams.redis_clients import async_client, sync_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TAGS = [f"{{c{i}}}" for i in range(12)]  # CRC16 spreads these over all three primaries
LIBRARY = """#!lua name=cluster_test
server.register_function{function_name='cluster_test_get', flags={'no-writes'}, callback=function(keys, args) return redis.call('GET', keys[1]) end}"""


def node_of(client, key: str) -> int:
    return client.get_node_from_key(key).port


def test_three_primaries_cover_all_slots(redis_cluster, redis_cluster_client):
    assert len(redis_cluster_client.get_primaries()) == 3
    owned = 0
    for port in redis_cluster.ports:
        info = cluster_info(port)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(CLUSTER_SLOTS)
        assert info["cluster_known_nodes"] == "3" and info["cluster_size"] == "3"
    for lo, hi, *_ in redis_lib.Redis(port=redis_cluster.ports[0]).execute_command("CLUSTER SLOTS"):
        owned += hi - lo + 1
    assert owned == CLUSTER_SLOTS


def test_hash_tags_pick_the_node(redis_cluster, redis_cluster_client):
    for tag in TAGS:
        redis_cluster_client.set(f"{tag}:state", tag)
    assert {node_of(redis_cluster_client, f"{tag}:state") for tag in TAGS} == set(redis_cluster.ports)
    for tag in TAGS:
        # keys with one tag share a slot, and the key is stored on that slot's node
        assert redis_cluster_client.keyslot(f"{tag}:state") == redis_cluster_client.keyslot(f"{tag}:segments")
        assert redis_lib.Redis(port=node_of(redis_cluster_client, f"{tag}:state"), decode_responses=True).get(f"{tag}:state") == tag


def test_multi_key_command_across_tags_is_refused(redis_cluster, redis_cluster_client):
    a, b = next((x, y) for x in TAGS for y in TAGS if redis_cluster_client.keyslot(x) != redis_cluster_client.keyslot(y))
    node = redis_lib.Redis(port=node_of(redis_cluster_client, a), decode_responses=True)
    with pytest.raises(redis_lib.exceptions.ClusterCrossSlotError):  # the server's CROSSSLOT reply
        node.mset({f"{a}:x": 1, f"{b}:x": 2})
    with pytest.raises(redis_lib.exceptions.RedisClusterException, match="same key slot"):  # refused before it is sent
        redis_cluster_client.execute_command("MSET", f"{a}:x", 1, f"{b}:x", 2)
    assert redis_cluster_client.execute_command("MSET", f"{a}:x", 1, f"{a}:y", 2)  # one tag: fine


def test_a_killed_primary_restarts_with_its_data(redis_cluster, redis_cluster_client):
    for tag in TAGS:
        redis_cluster_client.hset(f"{tag}:state", mapping={"n": 1, "tag": tag})
    victim = 1
    port = redis_cluster.ports[victim]
    live = redis_cluster.ports[0]
    on_victim = [t for t in TAGS if node_of(redis_cluster_client, f"{t}:state") == port]
    on_live = next(t for t in TAGS if node_of(redis_cluster_client, f"{t}:state") == live)
    assert on_victim
    started = time.monotonic()
    redis_cluster.kill_node(victim)
    try:
        while cluster_info(live)["cluster_state"] != "fail":
            assert time.monotonic() - started < 30, "the cluster never noticed the dead primary"
            time.sleep(0.02)
        down_after = time.monotonic() - started
        # no replicas: with a primary gone, even keys on the live nodes are refused
        with pytest.raises(redis_lib.exceptions.ClusterDownError):
            redis_lib.Redis(port=live).hget(f"{on_live}:state", "n")
        started = time.monotonic()
        redis_cluster.restart_node(victim)
        ok_after = time.monotonic() - started
    finally:
        if redis_cluster.nodes[victim].proc is None:
            redis_cluster.restart_node(victim)
    print(f"kill -> cluster_state:fail {down_after:.2f} s, restart -> ok {ok_after:.2f} s")
    client = sync_client(redis_cluster.url, cluster=True, decode_responses=True)
    for tag in TAGS:
        assert client.hgetall(f"{tag}:state") == {"n": "1", "tag": tag}
    client.close()


def command_calls(ports) -> int:
    """COMMAND calls (COMMAND, COMMAND GETKEYS, ...) the nodes have served so far."""
    total = 0
    for port in ports:
        stats = redis_lib.Redis(port=port).info("commandstats")
        total += sum(v["calls"] for k, v in stats.items() if k == "cmdstat_command" or k.startswith("cmdstat_command|"))
    return total


def test_fcall_is_routed_without_command_getkeys(redis_cluster, redis_cluster_client):
    redis_cluster_client.function_load(LIBRARY, replace=True)  # FUNCTION LOAD goes to every primary
    for tag in TAGS:
        redis_cluster_client.set(f"{tag}:v", tag)

    before = command_calls(redis_cluster.ports)
    assert [redis_cluster_client.fcall("cluster_test_get", 1, f"{t}:v") for t in TAGS] == TAGS
    pipe = redis_cluster_client.pipeline()
    for tag in TAGS:
        pipe.fcall_ro("cluster_test_get", 1, f"{tag}:v")
    assert pipe.execute() == TAGS
    assert command_calls(redis_cluster.ports) == before

    async def through_asyncio() -> list:
        client = async_client(redis_cluster.url, cluster=True, decode_responses=True)
        await client.initialize()  # reads COMMAND once, as every client does at start
        start = command_calls(redis_cluster.ports)
        replies = [await client.fcall("cluster_test_get", 1, f"{t}:v") for t in TAGS]
        pipe = client.pipeline()
        for tag in TAGS:
            pipe.fcall("cluster_test_get", 1, f"{tag}:v")
        replies += await pipe.execute()
        await client.aclose()
        assert command_calls(redis_cluster.ports) == start
        return replies

    assert asyncio.run(through_asyncio()) == TAGS + TAGS

    # Why the subclasses exist: redis-py's own client asks COMMAND GETKEYS per FCALL.
    # If this starts failing, redis-py has learned FCALL's keys and they can go.
    plain = redis_lib.cluster.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    start = command_calls(redis_cluster.ports)
    plain.fcall("cluster_test_get", 1, f"{TAGS[0]}:v")
    assert command_calls(redis_cluster.ports) > start
    plain.close()


def test_the_compose_cluster_init_script_forms_a_cluster_and_can_run_again(tmp_path):
    """deploy/cluster-init.sh (docker-compose's cluster profile) against three bare
    cluster-enabled nodes, with redis-cli for valkey-cli: it creates the cluster, and
    a second run (volumes kept, containers restarted) leaves it ok."""
    cli = shutil.which("valkey-cli") or shutil.which("redis-cli")
    assert cli, "no valkey-cli or redis-cli: `apt-get install redis-tools` (make test does)"
    ports: list[int] = []
    for _ in range(3):
        ports.append(free_cluster_port(taken=ports))
    nodes = [
        RedisServer(port=p, data_dir=tmp_path / str(p), extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]).start() for p in ports
    ]
    script = Path(__file__).resolve().parents[2] / "deploy" / "cluster-init.sh"
    env = {**os.environ, "NODES": " ".join(f"localhost:{p}" for p in ports), "CLI": cli}
    try:
        for _ in range(2):
            run = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=90)
            assert run.returncode == 0, run.stdout + run.stderr
            for port in ports:
                info = cluster_info(port)
                assert info["cluster_state"] == "ok" and info["cluster_size"] == "3", info
    finally:
        for node in nodes:
            node.stop()


def test_run_pipeline_sends_each_node_its_commands_and_follows_a_stale_slot_map(redis_cluster, redis_cluster_client):
    """features.pipeline on a cluster: one packed round trip per node (raw replies: SET
    answers OK), replies in the commands' order; with a slot map that names
    the wrong node, the MOVED reply sends the batch through redis-py's cluster pipeline
    (its callbacks turn SET's OK into True), which refreshes the map."""
    from features.pipeline import run_pipeline

    commands = [("HSET", f"{tag}:h", "n", i) for i, tag in enumerate(TAGS)]
    commands += [("HINCRBY", f"{tag}:h", "n", 100) for tag in TAGS] + [("SET", f"{TAGS[0]}:s", "v")]

    async def go() -> tuple[list, list, int]:
        r = async_client(redis_cluster.url, cluster=True, decode_responses=True)
        try:
            await r.initialize()
            first = await run_pipeline(r, commands)
            key = f"{TAGS[0]}:h"
            slot = r.keyslot(key)
            right = r.nodes_manager.get_node_from_slot(slot)
            wrong = next(n for n in r.get_primaries() if n.name != right.name)
            r.nodes_manager.slots_cache[slot] = [wrong]
            second = await run_pipeline(r, [("HINCRBY", key, "n", 1), ("SET", f"{TAGS[0]}:s", "w")])
            return first, second, r.nodes_manager.get_node_from_slot(slot).port
        finally:
            await r.aclose()

    first, second, port_after = asyncio.run(go())
    assert first[: len(TAGS)] == [1] * len(TAGS)
    assert first[len(TAGS) : 2 * len(TAGS)] == [100 + i for i in range(len(TAGS))]
    assert first[-1] == "OK"  # raw: the fast path
    assert second == [101, True]  # through redis-py's pipeline after MOVED
    assert port_after == node_of(redis_cluster_client, f"{TAGS[0]}:h")
    assert {node_of(redis_cluster_client, f"{tag}:h") for tag in TAGS} == set(redis_cluster.ports)  # all three nodes took part


def test_the_duplicate_filter_sweep_runs_on_every_primary(redis_cluster, redis_cluster_client):
    """segflow_sweep_filters names only the partition's sweep set and reaches the
    customers' hashes by prefix: same hash tag, same slot, so a cluster runs it."""
    from features.keys import Layout
    from features.state import DAY_MS, EventDelta
    from features.store import FeatureStore, load_library_sync

    layout = Layout(6)  # two partitions per primary (features.keys.partition_tags)
    load_library_sync(redis_cluster_client)
    customers = [f"sweep{i}" for i in range(24)]
    day = 20_000 * DAY_MS

    async def go() -> tuple[int, int]:
        r = async_client(redis_cluster.url, cluster=True)
        try:
            await r.initialize()
            store = FeatureStore(r, layout)
            items = [(cid, EventDelta(day + i, f"l{cid}-{i}", "login", {9: 1})) for cid in customers for i in range(3)]
            assert {a.status for a in await store.apply_batch(items, None, None)} == {"applied"}
            return await store.sweep_filters(day + 1, range(6)), await store.sweep_filters(day + 3, range(6))
        finally:
            await r.aclose()

    assert asyncio.run(go()) == (len(customers), len(customers))  # trimmed, then dropped
    assert {layout.partition(c) for c in customers} == set(range(6))
    assert not any(redis_cluster_client.hexists(layout.customer_key(c), "q") for c in customers)
    assert sum(redis_cluster_client.zcard(layout.filters_key(p)) for p in range(6)) == 0
