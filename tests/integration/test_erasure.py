"""Erasure on the real stack: `segflow forget` -> erasure topic -> worker -> segflow_forget.

The customer disappears from Redis but for the tombstone, the others are untouched, a
subscriber of segment-changes ends with the customer's erasure changes, and neither
new events nor a full replay bring the customer back (suppressed, counted)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib

from features.codec import TOMBSTONE, state_from_hash
from features.keys import Layout
from features.state import DAY_MS, LOGINS, EventDelta
from features.store import apply_call, load_library_sync
from segmenter.changes import SegmentChange
from streams.change_audit import EngineQuiet, check_subscriber_view, follow
from streams.erasure import Eraser, erasure_changes, erasure_request, forget_call
from streams.redis_clients import async_client
from streams.segment_store import StoredAssignment, parse_segments
from streams.status import read_totals
from streams.topic_reader import read_to_end
from tests.integration.test_pipeline import T0, publish, segflow_cli, shopping_session
from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = pytest.mark.integration

SUPPRESS_MS = 30 * DAY_MS
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


def wait_for(predicate, timeout: float = 90, what: str = "", worker=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if worker is not None:
            assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{worker.log()[-3000:]}" if worker is not None else ""))


def mentions(raw: redis_lib.Redis, needle: str) -> dict[str, str]:
    """Every key whose name or content mentions ``needle`` -> where (a raw client: model
    snapshots are pickles). What an auditor looking for a forgotten customer would run."""
    n = needle.encode()
    found = {}
    for key in raw.scan_iter(count=1000):
        kind = raw.type(key).decode()
        if kind == "string":
            content = [raw.get(key) or b""]
        elif kind == "hash":
            content = [x for kv in raw.hgetall(key).items() for x in kv]
        elif kind == "set":
            content = list(raw.smembers(key))
        elif kind == "zset":
            content = raw.zrange(key, 0, -1)
        elif kind == "list":
            content = raw.lrange(key, 0, -1)
        else:  # stream
            content = [x for _, fields in raw.xrange(key) for kv in fields.items() for x in kv]
        if n in key:
            found[key.decode()] = "name"
        elif any(n in c for c in content):
            found[key.decode()] = kind
    return found


# -- segflow_forget itself, on one Redis ----------------------------------------------------


def same_partition_ids(layout: Layout, n: int) -> list[str]:
    by_partition: dict[int, list[str]] = {}
    for i in range(1000):
        cid = f"cust{i}x"  # no id inside another
        by_partition.setdefault(layout.partition(cid), []).append(cid)
        if len(by_partition[layout.partition(cid)]) == n:
            return by_partition[layout.partition(cid)]
    raise AssertionError("unreachable")


def seed_customer(client, layout: Layout, cid: str, segment: str) -> None:
    """A customer as a worker leaves one: features, segments (version 2), history,
    memberships, a deadline and a change not yet sent."""
    p = layout.partition(cid)
    day = 20_000 * DAY_MS
    for i in range(3):
        assert client.execute_command(*apply_call(layout, cid, EventDelta(day + i, f"l{cid}{i}", "login", {LOGINS: 1}, login=True), None))[0] == "applied"
    profile = EventDelta(day, f"f{cid}", "profile", {}, traits={"country": "DE", "marketing_consent": "1"})
    assert client.execute_command(*apply_call(layout, cid, profile, None))[0] == "applied"
    held = {"lifecycle": StoredAssignment(segment, day, "rule", 1, 2), "value": StoredAssignment("loyal", day, "rfm", 1, 1)}
    client.hset(layout.segments_key(cid), mapping={**{k: a.encode() for k, a in held.items()}, "_v": 2, "_e": day + 2})
    for name, a in held.items():
        client.sadd(layout.member_set(p, name, a.segment), cid)
    client.lpush(layout.history_key(cid), "entry")
    client.zadd(layout.deadlines_key(p), {cid: day + DAY_MS})
    pending = SegmentChange.create(
        customer_id=cid,
        segmentation="lifecycle",
        from_segment="new",
        to_segment=segment,
        reason="rule",
        model_version=1,
        occurred_at_ms=day,
        cause="x",
        features={},
        seq=2,
    )
    client.xadd(layout.outbox(p), {"change": pending.model_dump_json(by_alias=True)})


def test_forget_leaves_only_the_tombstone_and_touches_no_other_customer(redis_server, redis_client):
    load_library_sync(redis_client)
    raw = redis_lib.Redis.from_url(redis_server.url)
    layout = Layout(2)
    gone, kept = same_partition_ids(layout, 2)
    p = layout.partition(gone)
    for cid in (gone, kept):
        seed_customer(redis_client, layout, cid, "active")
    before = {k: raw.dump(k) for k in raw.scan_iter() if gone.encode() not in k and not k.startswith(b"seg:") and b"outbox" not in k}
    request = erasure_request(gone, None, NOW, request_id="r1")
    changes = erasure_changes(request, parse_segments(redis_client.hgetall(layout.segments_key(gone))), emitted_at_ms=5)

    # A stale read (another commit came first) changes nothing.
    assert redis_client.execute_command(*forget_call(layout, gone, 1, changes, 7, SUPPRESS_MS)) == ["conflict"]
    assert redis_client.exists(layout.segments_key(gone), layout.history_key(gone)) == 2

    assert state_from_hash(redis_client.hgetall(layout.customer_key(gone))).traits["country"] == ("DE", 20_000 * DAY_MS)
    reply = redis_client.execute_command(*forget_call(layout, gone, 2, changes, 7, SUPPRESS_MS))
    assert reply[:2] == ["ok", 1] and len(reply) == 4  # one unsent change dropped, two final changes
    assert state_from_hash(redis_client.hgetall(layout.customer_key(gone))).traits == {}  # the profile traits went with the features
    assert mentions(raw, gone) == {layout.customer_key(gone): "name", layout.outbox(p): "stream"}  # the outbox: the final changes
    assert redis_client.hgetall(layout.customer_key(gone)) == {TOMBSTONE: "7"}
    assert SUPPRESS_MS - 60_000 < redis_client.pttl(layout.customer_key(gone)) <= SUPPRESS_MS
    outbox = [json.loads(fields["change"]) for _, fields in redis_client.xrange(layout.outbox(p))]
    assert [(c["customer_id"], c["to"]) for c in outbox] == [(kept, "active"), (gone, None), (gone, None)]
    assert [c["change_id"] for c in outbox[1:]] == [c.change_id for c in changes]
    assert redis_client.smembers(layout.member_set(p, "lifecycle", "active")) == {kept}
    assert redis_client.smembers(layout.member_set(p, "value", "loyal")) == {kept}
    assert redis_client.zrange(layout.deadlines_key(p), 0, -1) == [kept]
    assert redis_client.zrange(layout.filters_key(p), 0, -1) == [kept]  # its duplicate filter's sweep
    assert redis_client.get(layout.customers(p)) == "1"
    assert redis_client.hget(layout.stats(p), "erased") == "1"
    # The other customer and the partition's other keys are as they were (but the counts, the deadline and the sweep).
    after = {k: raw.dump(k) for k in before}
    assert {k.decode() for k in before if after[k] != before[k]} == {layout.customers(p), layout.stats(p), layout.deadlines_key(p), layout.filters_key(p)}

    # The customer's next event is suppressed: counted, nothing stored, not counted as a customer.
    late = EventDelta(20_001 * DAY_MS, "lnew", "login", {LOGINS: 1}, login=True, offset=(p, 99))
    assert redis_client.execute_command(*apply_call(layout, gone, late, None))[0] == "suppressed"
    assert redis_client.hgetall(layout.customer_key(gone)) == {TOMBSTONE: "7"}
    assert redis_client.hget(layout.stats(p), "suppressed") == "1" and redis_client.get(layout.customers(p)) == "1"
    # So is a profile update: no trait comes back.
    update = EventDelta(20_001 * DAY_MS, "fnew", "profile", {}, traits={"plan": "pro"}, offset=(p, 100))
    assert redis_client.execute_command(*apply_call(layout, gone, update, None))[0] == "suppressed"
    assert redis_client.hgetall(layout.customer_key(gone)) == {TOMBSTONE: "7"}
    assert redis_client.hget(layout.stats(p), "suppressed") == "2"

    # Forgetting again (a replayed request) finds nothing more, and leaves the first erasure's
    # final changes to be sent; with suppress_ms 0 the tombstone stays.
    assert redis_client.execute_command(*forget_call(layout, gone, 0, [], 8, 0)) == ["ok", 0]
    assert redis_client.xlen(layout.outbox(p)) == 3
    assert redis_client.pttl(layout.customer_key(gone)) == -1 and redis_client.get(layout.customers(p)) == "1"


def test_forget_on_a_redis_cluster(redis_cluster, redis_cluster_client):
    """Every key of a call in one slot: customers of every partition, spread over three
    shards, forgotten through the worker's shell (async cluster client, cluster pipeline)."""
    client = redis_cluster_client
    load_library_sync(client)
    layout = Layout(6)
    by_partition: dict[int, list[str]] = {}
    for i in range(200):
        by_partition.setdefault(layout.partition(f"c{i}x"), []).append(f"c{i}x")
    customers = [cid for p in range(6) for cid in by_partition[p][:2]]  # two of every partition, on all three shards
    for cid in customers:
        seed_customer(client, layout, cid, "new")
    gone = customers[::2]

    async def forget():
        aclient = async_client(redis_cluster.url, cluster=True)
        try:
            return await Eraser(aclient, layout, SUPPRESS_MS).forget([erasure_request(c, None, NOW) for c in gone], now_ms=1)
        finally:
            await aclient.aclose()

    done = asyncio.run(forget())
    assert sorted(done.customers) == sorted(gone) and done.dropped == len(gone) and len(done.changes) == 2 * len(gone)
    for cid in customers:
        p = layout.partition(cid)
        erased = cid in gone
        assert client.exists(layout.segments_key(cid), layout.history_key(cid)) == (0 if erased else 2)
        assert (client.hgetall(layout.customer_key(cid)) == {TOMBSTONE: "1"}) == erased
        assert (client.zscore(layout.deadlines_key(p), cid) is None) == erased
        assert bool(client.sismember(layout.member_set(p, "lifecycle", "new"), cid)) != erased
        assert client.execute_command(*apply_call(layout, cid, EventDelta(20_001 * DAY_MS, "lz", "login", {LOGINS: 1}), None))[0] == (
            "suppressed" if erased else "applied"
        )
    assert read_totals(client, layout)["suppressed"] == len(gone) == read_totals(client, layout)["erased"]


# -- with the worker running ----------------------------------------------------------------

CAMPAIGNS = """
version: 1
campaigns:
  - name: hello
    segmentation: lifecycle
    enter: [new, active]
    control_share: 0.0
    cap: {max: 1, period: 90d}
"""
CUSTOMERS = ["alice", "bob", "carol", "dave"]
GONE = "carol"
OTHERS = [c for c in CUSTOMERS if c != GONE]


def customer_keys(client, layout, customer_ids) -> dict[str, tuple]:
    return {
        c: (client.hgetall(layout.customer_key(c)), client.hgetall(layout.segments_key(c)), client.lrange(layout.history_key(c), 0, -1)) for c in customer_ids
    }


def changes_of(bootstrap: str, topic: str, customer_id: str) -> list[dict]:
    return [c for c in (json.loads(r.value) for r in read_to_end(bootstrap, topic)) if c["customer_id"] == customer_id]


def test_a_forgotten_customer_disappears_and_stays_gone_through_new_events_and_a_replay(broker, redis_server, redis_client, start_worker, tmp_path):
    topics = fresh_topics(broker)
    campaigns_file = tmp_path / "campaigns.yaml"
    campaigns_file.write_text(CAMPAIGNS)
    env = dict(SEGFLOW_CAMPAIGNS_FILE=campaigns_file, SEGFLOW_IDLE_PARTITION_SECONDS=2, SEGFLOW_SNAPSHOT_INTERVAL_SECONDS=1)
    worker = start_worker(topics.prefix, app_id=f"{topics.prefix}first", **env)
    layout = worker.layout
    raw = redis_lib.Redis.from_url(redis_server.url)
    for i, customer in enumerate(CUSTOMERS):
        publish(broker, topics, shopping_session(customer, T0 + timedelta(minutes=10 * i), base=100 * i))
    read_until(broker, topics.campaign_triggers, lambda rs: {json.loads(r.value)["customer_id"] for r in rs} >= set(CUSTOMERS), timeout=90)
    wait_for(EngineQuiet(redis_client, layout, quiet_s=3), what="the worker to settle", worker=worker)
    assert redis_client.exists(f"cust:{{{GONE}}}:camp:hello") and GONE.encode() in raw.get(
        f"segflow:{{model}}:behaviour:v{redis_client.get('segflow:{model}:behaviour:current')}"
    )
    others_before = customer_keys(redis_client, layout, OTHERS)
    held = set(parse_segments(redis_client.hgetall(layout.segments_key(GONE))))
    triggers_before = read_to_end(broker.bootstrap, topics.campaign_triggers)
    model_before = int(redis_client.get("segflow:{model}:behaviour:current"))

    done = segflow_cli(worker, "forget", GONE, "--reason", "ticket 1")
    assert done.returncode == 0 and "erasure requested" in done.stderr, done.stderr
    wait_for(lambda: read_totals(redis_client, layout).get("erased", 0) == 1, what="the erasure", worker=worker)
    wait_for(EngineQuiet(redis_client, layout, quiet_s=3), what="the worker to settle", worker=worker)
    wait_for(lambda: int(redis_client.get("segflow:{model}:behaviour:current")) > model_before, what="a model snapshot", worker=worker)

    # Redis: nothing of carol but the tombstone (key names, members, outbox, cap keys, model snapshots).
    assert mentions(raw, GONE) == {layout.customer_key(GONE): "name"}
    assert set(redis_client.hgetall(layout.customer_key(GONE))) == {TOMBSTONE}
    assert 29 * DAY_MS < redis_client.pttl(layout.customer_key(GONE)) <= SUPPRESS_MS
    assert segflow_cli(worker, "customer", GONE).returncode == 1  # unknown
    assert customer_keys(redis_client, layout, OTHERS) == others_before
    assert "erasure request" in worker.log() and GONE not in worker.log()

    # A subscriber: carol's changes end with one erasure per segmentation she was in, in a chain.
    changes = changes_of(broker.bootstrap, topics.segment_changes, GONE)
    erasures = [c for c in changes if c["reason"] == "erasure"]
    assert {c["segmentation"] for c in erasures} == held and all(c["to"] is None and c["features"] == {} for c in erasures)
    assert changes[-len(erasures) :] == erasures
    follower = follow(json.dumps(c) for c in changes)
    assert follower.chain_breaks == follower.seq_gaps == 0
    assert all(follower.state[(GONE, s)][0] is None for s in held)
    view = check_subscriber_view(broker.bootstrap, topics, redis_client)
    assert view.ok, view.line()
    assert len(read_to_end(broker.bootstrap, topics.campaign_triggers)) == len(triggers_before)  # nothing fired for the erasure

    # New events of carol (a late arrival) and then a full replay by a new consumer group.
    publish(broker, topics, shopping_session(GONE, T0 + timedelta(minutes=40), base=900))
    wait_for(lambda: read_totals(redis_client, layout).get("suppressed", 0) == 7, what="7 suppressed", worker=worker)
    worker.stop()
    replay = start_worker(topics.prefix, app_id=f"{topics.prefix}replay", **env)
    # Carol's 14 events meet the tombstone again; the replayed request forgets nothing more.
    wait_for(lambda: read_totals(redis_client, layout).get("suppressed", 0) == 21, what="the replay's suppressed events", worker=replay)
    wait_for(lambda: read_totals(redis_client, layout).get("erased", 0) == 2, what="the replayed request", worker=replay)
    wait_for(EngineQuiet(redis_client, layout, quiet_s=3), what="the replay to settle", worker=replay)
    totals = read_totals(redis_client, layout)
    assert totals["applied"] == 7 * len(OTHERS) + 7 and totals.get("dead_lettered", 0) == 0, totals
    assert mentions(raw, GONE) == {layout.customer_key(GONE): "name"}
    assert changes_of(broker.bootstrap, topics.segment_changes, GONE) == changes  # no new change for carol
    assert [json.loads(r.value)["customer_id"] for r in read_to_end(broker.bootstrap, topics.campaign_triggers)].count(GONE) == 1
    assert customer_keys(redis_client, layout, OTHERS) == others_before


def test_retention_forgets_a_silent_customer_by_the_deadline_timer_and_a_return_starts_anew(broker, redis_client, start_worker):
    """SEGFLOW_RETENTION_DAYS: a customer silent for longer is forgotten by the deadline
    timer (no event from them), with a final change per segmentation (reason retention)
    and no tombstone; an active customer stays; the forgotten one, back, is a new customer."""
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_RETENTION_DAYS=30, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    layout = worker.layout
    publish(broker, topics, shopping_session("alice", T0))
    # Dora is known by a profile alone: no segments, but a retention deadline from it.
    dora = {"event_id": "d1", "customer_id": "dora", "occurred_at": T0.isoformat(), "type": "profile", "plan": "pro"}
    send(broker, topics.profiles, [(b"dora", json.dumps(dora).encode())])
    wait_for(lambda: redis_client.exists(layout.segments_key("alice")), what="alice's segments", worker=worker)
    wait_for(lambda: redis_client.zscore(layout.deadlines_key(layout.partition("dora")), "dora") is not None, what="dora's deadline", worker=worker)
    assert int(redis_client.zscore(layout.deadlines_key(layout.partition("alice")), "alice")) <= int((T0 + timedelta(days=30, minutes=5)).timestamp() * 1000)
    held = set(parse_segments(redis_client.hgetall(layout.segments_key("alice"))))
    # Bob, 40 days on: the event-time clock passes alice's 30 days of silence.
    publish(broker, topics, shopping_session("bob", T0 + timedelta(days=40), base=100))
    wait_for(lambda: not redis_client.exists(layout.customer_key("alice")), what="alice forgotten", worker=worker)
    wait_for(lambda: not redis_client.exists(layout.customer_key("dora")), what="dora forgotten", worker=worker)
    wait_for(EngineQuiet(redis_client, layout, quiet_s=3), what="the worker to settle", worker=worker)
    assert not redis_client.exists(layout.segments_key("alice"), layout.history_key("alice"))
    assert redis_client.zscore(layout.deadlines_key(layout.partition("alice")), "alice") is None
    assert redis_client.exists(layout.customer_key("bob"), layout.segments_key("bob")) == 2
    alice = changes_of(broker.bootstrap, topics.segment_changes, "alice")
    final = [c for c in alice if c["reason"] == "retention"]
    assert {c["segmentation"] for c in final} == held and all(c["to"] is None for c in final) and alice[-len(final) :] == final
    assert read_totals(redis_client, layout).get("expired") == 2  # alice and dora
    assert redis_client.zscore(layout.deadlines_key(layout.partition("dora")), "dora") is None
    # Alice comes back: no suppression, a new customer (her first event again).
    publish(broker, topics, shopping_session("alice", T0 + timedelta(days=41), base=200))
    wait_for(lambda: redis_client.hget(layout.customer_key("alice"), "n") == "7", what="alice anew", worker=worker)
    assert read_totals(redis_client, layout).get("suppressed", 0) == 0
    wait_for(lambda: changes_of(broker.bootstrap, topics.segment_changes, "alice")[-1]["reason"] != "retention", what="alice's new segments")
    back = changes_of(broker.bootstrap, topics.segment_changes, "alice")[len(alice) :]
    assert any(c["segmentation"] == "lifecycle" and c["from"] is None and c["seq"] == 1 for c in back), back
