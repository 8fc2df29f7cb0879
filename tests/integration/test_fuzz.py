"""~200 fuzzed messages through the real worker: each is applied, dropped as a
duplicate or dead-lettered (received = applied + duplicates + dead_lettered in
``segflow:stats``, the dead-letter topic holds exactly the dead-lettered ones,
Redis counts exactly the applied ones), and the worker still takes a good event
afterwards. The pure decode path is fuzzed harder in tests/unit/test_fuzz_decode.py."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from features import keys
from streams.status import read_totals
from streams.topic_reader import read_to_end
from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SEED = int(os.environ.get("SEGFLOW_FUZZ_SEED", "20261123"))
NOW = datetime.now(UTC).replace(microsecond=0)
FAMILIES = ("clickstream", "purchase", "login")
JUNK = [
    None,
    True,
    0,
    -1,
    10**20,
    1.5e308,
    "",
    " ",
    "x" * 300,
    "NaN",
    "2026-02-30T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    [],
    {},
    [1, "a"],
    {"a": {"b": None}},
    "\u0000",
    "🙂" * 10,
    "-5",
    "1e3",
]


def valid(rng: random.Random, family: str, i: int) -> dict:
    customer = rng.choice(["fz1", "fz2", "fz3", "ünï", "x" * 256])
    when = (NOW - timedelta(minutes=rng.randrange(0, 300))).isoformat()
    base = {"event_id": f"fz-{i}", "customer_id": customer, "occurred_at": when}
    if rng.random() < 0.1:
        base["event_id"] = f"fz-{rng.randrange(0, max(i, 1))}"  # a possible duplicate of an earlier one
    if family == "login":
        return {**base, "type": "login", "success": rng.random() < 0.8, "channel": rng.choice(["web", "ios", "android", "api"])}
    if family == "clickstream":
        return {**base, "type": rng.choice(["session_start", "page_view", "search", "add_to_cart"]), "session_id": "s", "category": "books", "price": "3.50"}
    return {
        **base,
        "order_id": f"o{i}",
        "amount": "19.99",
        "currency": "USD",
        "discount": "1",
        "items": [{"product_id": "p", "category": rng.choice(["books", "toys", "a\x1eb\x1fc"]), "quantity": 2, "unit_price": "10.49"}],
    }


SENT_VALID: dict[str, list] = {f: [] for f in FAMILIES}


def mutate(rng: random.Random, family: str, i: int) -> tuple[bytes | None, bytes | None]:
    if SENT_VALID[family] and rng.random() < 0.1:
        return rng.choice(SENT_VALID[family])  # a verbatim re-send: a duplicate at a new offset
    doc = valid(rng, family, i)
    key = doc["customer_id"].encode()
    kind = rng.randrange(8)
    if kind == 0:
        return key, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))  # noise
    if kind == 1:
        doc.pop(rng.choice(sorted(doc)))
    elif kind == 2:
        doc[rng.choice(sorted(doc))] = rng.choice(JUNK)
    elif kind == 3:
        doc[rng.choice(["extra", "", "schema_version", "type"])] = rng.choice(JUNK)
    raw = json.dumps(doc).encode()
    if kind == 4:
        raw = raw[: rng.randrange(len(raw))]  # truncated
    elif kind == 5:
        pos = rng.randrange(len(raw))
        raw = raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1 :]  # one byte flipped
    elif kind == 6:
        key = rng.choice([None, b"", b"someone-else", key])
    if kind == 7:  # valid as it is
        SENT_VALID[family].append((key, raw))
    return key, raw


def test_fuzzed_messages_are_each_applied_dropped_or_dead_lettered(broker, redis_client, start_worker):
    rng = random.Random(SEED)
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    sent = 0
    for family in FAMILIES:
        batch = [mutate(rng, family, 1000 * FAMILIES.index(family) + i) for i in range(67)]
        send(broker, topics.by_family[family], batch)
        sent += len(batch)
    good = json.dumps({"event_id": "after-fuzz", "customer_id": "sentinel", "occurred_at": NOW.isoformat(), "type": "login", "success": True, "channel": "web"})
    send(broker, topics.logins, [(b"sentinel", good.encode())])
    sent += 1

    deadline = time.monotonic() + 90
    while redis_client.hget(worker.layout.customer_key("sentinel"), "n") != "1":
        assert worker.proc.poll() is None, f"worker died on fuzzed input (seed {SEED}):\n{worker.log()[-4000:]}"
        assert time.monotonic() < deadline, f"good event after the fuzz never applied:\n{worker.log()[-3000:]}"
        time.sleep(0.3)

    def counts():
        stats = read_totals(redis_client, worker.layout)  # HINCRBY'd as the worker goes; absent fields are 0
        return stats, [int(stats.get(k, 0)) for k in ("received", "applied", "duplicates", "dead_lettered")]

    while (c := counts()[1])[0] < sent or c[0] != sum(c[1:]):
        assert time.monotonic() < deadline, f"stats never settled: {counts()[0]}"
        time.sleep(0.5)
    stats, (received, applied, duplicates, dead) = counts()
    print(f"seed {SEED}: received={received} applied={applied} duplicates={duplicates} dead_lettered={dead}")
    assert received == sent
    assert received == applied + duplicates + dead
    assert 0 < applied < sent and dead > sent // 3 and duplicates > 0
    # The counters are published when the batch is decided, the dead letters
    # sent right after: wait for them, then check there are exactly as many.
    read_until(broker, topics.dead_letter, lambda rs: len(rs) >= dead, timeout=30)
    letters = read_to_end(broker.bootstrap, topics.dead_letter)
    assert len(letters) == dead
    reasons = {}
    for r in letters:
        reason = dict(r.headers)["segflow.reason"].decode()
        reasons[reason] = reasons.get(reason, 0) + 1
    assert sum(reasons.values()) == dead
    assert {k.removeprefix("dead_lettered:"): int(v) for k, v in stats.items() if k.startswith("dead_lettered:")} == reasons
    # Redis counted exactly the applied events, no more.
    customers = {keys.customer_id_of(k) for k in redis_client.scan_iter(f"{keys.FEATURES_PREFIX}{{*")}
    in_redis = sum(int(redis_client.hget(worker.layout.customer_key(c), "n") or 0) for c in customers)
    assert in_redis == applied
    assert worker.proc.poll() is None
