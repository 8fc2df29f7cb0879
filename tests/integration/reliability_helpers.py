"""Shared by the fault and fuzz tests: a simulated population, its clean
reference state (the pure fold, features.state.apply_delta), and readers for
what the worker left in Redis and on Kafka."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

from features import keys
from features.codec import state_from_hash, state_to_hash
from features.extract import delta_of
from features.keys import Layout
from features.state import CustomerState, apply_delta
from lab.simulate import Simulation, event_to_json
from segmenter.changes import read_history_entry
from streams.events import decode
from streams.producer import produce_events
from streams.segment_store import StoredAssignment

# Fields of the customer hash that legitimately depend on delivery, not on the
# events: the duplicate filter (trimmed by the lateness horizon, which moves
# with wall-clock batching; "df"/"df:<family>" and "lf", the newest times it had to forget) and the newest applied (partition, offset).
VOLATILE = ("q", "r", "df", "lf")
WORKER_LAYOUT = Layout(2)  # the test workers' SEGFLOW_PARTITIONS (tests/conftest.py)


def population(customers: int = 150, days: float = 20, seed: int = 3) -> list[tuple[str, bytes, bytes]]:
    """A simulated population, ending two days ago (nothing is 'in the future'), as (family, key, value)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days + 2)
    sim = Simulation(customers=customers, days=days, seed=seed, start=start)
    return [(family, event.customer_id.encode(), event_to_json(event)) for family, event in sim.events()]


def reference(items) -> dict[str, CustomerState]:
    """The clean run: every event folded once, in produced order, with no lateness horizon."""
    states: dict[str, CustomerState] = {}
    for family, _key, value in items:
        event = decode(family, value)
        status = apply_delta(states.setdefault(event.customer_id, CustomerState()), delta_of(event), None)
        assert status in ("applied", "duplicate")
    return states


def comparable(h: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in h.items() if k not in VOLATILE and not k.startswith(("o:", "df:"))}


def expected_hashes(states: dict[str, CustomerState]) -> dict[str, dict[str, str]]:
    return {cid: comparable(state_to_hash(s)) for cid, s in states.items()}


def redis_hashes(client, layout: Layout, customer_ids) -> dict[str, dict[str, str]]:
    pipe = client.pipeline(transaction=False)
    for cid in customer_ids:
        pipe.hgetall(layout.customer_key(cid))
    # Round trip through the codec so both sides are spelled the same way.
    return {cid: comparable(state_to_hash(state_from_hash(h))) for cid, h in zip(customer_ids, pipe.execute(), strict=False)}


def applied_total(client, layout: Layout, customer_ids) -> int:
    pipe = client.pipeline(transaction=False)
    for cid in customer_ids:
        pipe.hget(layout.customer_key(cid), "n")
    return sum(int(n or 0) for n in pipe.execute())


def wait_for_total(client, layout: Layout, customer_ids, expected: int, timeout: float, worker_logs=(), refused=lambda: 0) -> None:
    """Until ``expected`` events are applied, or applied + ``refused()`` (dead letters) account for all of them."""
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = applied_total(client, layout, customer_ids)
        if got >= expected or got + refused() >= expected:
            return
        time.sleep(0.5)
    tails = "\n".join(w.log()[-1200:] for w in worker_logs)
    raise AssertionError(f"{got} of {expected} events applied after {timeout}s\n{tails}")


def assert_features_equal(client, layout: Layout, states: dict[str, CustomerState]) -> None:
    want = expected_hashes(states)
    got = redis_hashes(client, layout, list(want))
    diff = {cid: (got[cid], want[cid]) for cid in want if got[cid] != want[cid]}
    assert not diff, f"{len(diff)} of {len(want)} customers differ from the clean run, e.g. {next(iter(diff.items()))}"


def check_changes(client, layout: Layout, records) -> dict:
    """No change lost: each customer's segment in Redis is the ``to`` of its last
    change on the topic (topic order, per customer key); re-sent duplicates share
    their change_id and content. Returns counts for the report."""
    changes = [json.loads(r.value) for r in records]
    by_id: dict[str, dict] = {}
    duplicates = 0
    rederived: list = []
    last: dict[tuple[str, str], dict] = {}
    for c in changes:
        if c["change_id"] in by_id:
            duplicates += 1
            first = by_id[c["change_id"]]
            identity = ("customer_id", "segmentation", "from", "to", "occurred_at")
            assert [c[k] for k in identity] == [first[k] for k in identity], (first, c)
            # Re-derived rather than re-sent (another worker evaluated the same cause): same move, other details.
            differ = sorted(k for k in c if k != "emitted_at" and c[k] != first[k])
            if differ:
                rederived.append((c["customer_id"], c["segmentation"], differ))
            continue
        by_id[c["change_id"]] = c
        last[(c["customer_id"], c["segmentation"])] = c
    pipe = client.pipeline(transaction=False)
    customers = sorted({cid for cid, _ in last})
    for cid in customers:
        pipe.hgetall(layout.segments_key(cid))
    stored = dict(zip(customers, pipe.execute(), strict=False))
    mismatches = []
    for (cid, segmentation), c in last.items():
        held = StoredAssignment.decode(stored[cid][segmentation]).segment if segmentation in stored[cid] else None
        if held != c["to"]:
            mismatches.append((cid, segmentation, held, c["to"]))
    # And the other way round: every segment Redis holds was announced.
    unannounced = [(cid, name) for cid, h in stored.items() for name in h if not name.startswith("_") and (cid, name) not in last]
    # Every change Redis recorded (the capped per-customer history, written in the
    # same MULTI/EXEC as the outbox entry) reached the topic.
    historied = sorted({keys.customer_id_of(k) for k in client.scan_iter(f"{keys.HISTORY_PREFIX}{{*", count=1000)})
    pipe = client.pipeline(transaction=False)
    for cid in historied:
        pipe.lrange(layout.history_key(cid), 0, -1)
    recorded = [read_history_entry(entry) for entries in pipe.execute() for entry in entries]
    lost = [c for c in recorded if c["change_id"] not in by_id]
    assert not lost, f"{len(lost)} of {len(recorded)} changes in Redis histories never reached the topic, e.g. {lost[:2]}"
    assert not mismatches, f"{len(mismatches)} segments in Redis differ from the last change on the topic: {mismatches[:5]}"
    assert not unannounced, f"segments in Redis never announced on the topic: {unannounced[:5]}"
    # Chains are unbroken: each distinct change leaves the segment the previous one
    # (in topic order) entered. A break is "reordered" when the missing move is on
    # the topic later, "forked" when two changes left the same segment (two
    # evaluations from the same stale state), else "missing".
    chains: dict[tuple[str, str], str | None] = {}
    broken = []
    moves = {(c["customer_id"], c["segmentation"], c["from"], c["to"]) for c in by_id.values()}
    leaves: dict[tuple, int] = {}
    for c in by_id.values():
        k = (c["customer_id"], c["segmentation"], c["from"])
        leaves[k] = leaves.get(k, 0) + 1
    for c in by_id.values():
        k = (c["customer_id"], c["segmentation"])
        prev = chains.get(k)
        if prev != c["from"]:
            if (*k, prev, c["from"]) in moves:
                kind = "reordered"
            elif leaves.get((*k, prev), 0) > 1 or leaves.get((*k, c["from"]), 0) > 1:
                kind = "forked"
            else:
                kind = "missing"
            broken.append((kind, k, prev, c["from"], c["to"]))
        chains[k] = c["to"]
    return {
        "records": len(changes),
        "distinct": len(by_id),
        "duplicates": duplicates,
        "in_redis_histories": len(recorded),
        "rederived": rederived,
        "broken_chains": broken,
    }


def all_segmented_customers(client) -> set[str]:
    return {keys.customer_id_of(k) for k in client.scan_iter(f"{keys.SEGMENTS_PREFIX}{{*", count=1000)}


class Background:
    """Produce ``items`` at ``rate`` ev/s on a thread (the kafka-python producer of streams.producer)."""

    def __init__(self, bootstrap: str, items, topics, rate: float):
        self.stats = None
        self.error: BaseException | None = None

        def run():
            try:
                self.stats = produce_events(bootstrap, items, topics, rate)
            except BaseException as exc:  # reported by join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "producer did not finish"
        if self.error:
            raise self.error
        assert self.stats.failed == 0, self.stats.first_error


DAY_MS = 86_400_000


def purchase_json(customer_id: str, n: int, ts_ms: int) -> bytes:
    """A purchase event of 40 USD at ``ts_ms``, event id ``<customer_id>-<n>``."""
    when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat()
    return json.dumps(
        {"event_id": f"{customer_id}-{n}", "customer_id": customer_id, "occurred_at": when, "order_id": f"o{n}", "amount": "40", "currency": "USD"}
    ).encode()


async def two_engines(settings):
    """Two started engines on one Redis, as two workers would have; the first owns
    partition 0 of the purchases topic."""
    from segmenter.assign import Segmenter
    from segmenter.config import default_config
    from streams.app import redis_client as async_redis
    from streams.engine import Engine

    engines = [Engine(settings, async_redis(settings.redis_url.get_secret_value()), Segmenter.from_config(default_config())) for _ in range(2)]
    for e in engines:
        await e.start()
    engines[0].assign({(settings.topics.purchases, 0)}, now=time.time())
    return engines
