"""The change stream as a campaign system reads it: per customer, in order, ending where Redis is.

CDNOW (1 customer in 10, the whole log) replayed in event time through a real
worker: the event-time watermark moves with the replay, so absence deadlines fire
between event batches for the same customers (a change decided by a deadline and
one decided by a purchase, for one customer, within milliseconds). Then
``segment-changes`` is read from the beginning in offset order, changes whose seq
is not newer are dropped, and for every customer and segmentation:

- the changes form a chain (each ``from`` is the previous ``to``) without seq gaps;
- the chain ends at the segment Redis holds;
- the compacted ``segment-state`` topic alone gives the same segments.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from features import keys
from lab.datasets import cdnow_events
from streams.change_audit import EngineQuiet, check_subscriber_view
from streams.events import event_to_json
from streams.status import read_totals
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.kafka_helpers import fresh_topics, send

pytestmark = pytest.mark.integration

WORKER_ENV = {"SEGFLOW_LATENESS_SECONDS": 0, "SEGFLOW_PARTITIONS": 2, "SEGFLOW_IDLE_PARTITION_SECONDS": 2}


def cdnow_sample(every: int = 10) -> list:
    events = [e for _, e in cdnow_events() if int(e.customer_id.rsplit("-", 1)[1]) % every == 0]
    return sorted(events, key=lambda e: (e.occurred_at, e.event_id))


def wait_for(what: str, ok, timeout: float, worker) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited while waiting for {what}:\n{worker.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.3)


def applied(redis_client) -> int:
    return read_totals(redis_client, WORKER_LAYOUT).get("applied", 0)


def wait_quiet(redis_client, worker, quiet: float = 6.0, timeout: float = 240) -> None:
    """Until changes, deadline evaluations and the outbox stop moving: every absence move is out."""
    wait_for("the engine to go quiet", EngineQuiet(redis_client, WORKER_LAYOUT, quiet), timeout, worker)


@pytest.mark.timeout(600)
def test_changes_of_events_and_deadlines_reach_the_topic_in_order(broker, redis_client, start_worker):
    topics = fresh_topics(broker, partitions=2)
    worker = start_worker(topics.prefix, **WORKER_ENV)
    events = cdnow_sample()
    send(broker, topics.purchases, [(e.customer_id.encode(), event_to_json(e)) for e in events])
    wait_for("every event applied", lambda: applied(redis_client) >= len(events), 300, worker)
    wait_quiet(redis_client, worker)
    check = check_subscriber_view(broker.bootstrap, topics, redis_client)
    assert int(redis_client.hget(keys.STATS, "deadline_evaluations") or 0) > 1000  # deadlines did interleave
    assert check.follower.applied > 5000
    assert check.follower.chain_breaks == 0 and check.follower.seq_gaps == 0, check.line()
    assert check.mismatches == [], check.mismatches[:5]
    assert check.state_mismatches == [], check.state_mismatches[:5]
    # The example subscriber (`segflow subscribe --changes`) applies the same changes, in a consumer group.
    done = subprocess.run(
        [sys.executable, "-m", "segflow.cli", "subscribe", "--changes", "--from-beginning", "--idle-timeout", "10"],
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == check.follower.applied
    assert f"{check.follower.applied} changes applied" in done.stderr and "0 chain breaks, 0 seq gaps" in done.stderr


@pytest.mark.timeout(600)
def test_order_holds_across_worker_kills(broker, redis_client, start_worker):
    topics = fresh_topics(broker, partitions=2)
    worker = start_worker(topics.prefix, **WORKER_ENV)
    events = cdnow_sample()
    send(broker, topics.purchases, [(e.customer_id.encode(), event_to_json(e)) for e in events])
    for share in (0.3, 0.65):
        wait_for(f"{share:.0%} applied", lambda s=share: applied(redis_client) >= s * len(events), 300, worker)
        worker.stop(signal.SIGKILL)
        worker.start()
    wait_for("every event applied", lambda: applied(redis_client) >= len(events), 300, worker)
    wait_quiet(redis_client, worker)
    check = check_subscriber_view(broker.bootstrap, topics, redis_client)
    assert check.follower.chain_breaks == 0 and check.follower.seq_gaps == 0, check.line()
    assert check.mismatches == [], check.mismatches[:5]
    assert check.state_mismatches == [], check.state_mismatches[:5]


@pytest.mark.timeout(600)
def test_order_holds_with_two_workers_and_a_rebalance(broker, redis_client, start_worker, tmp_path):
    """A second worker joins mid-replay: each customer's events and deadlines move with its
    partition to one worker, so one worker decides, and publishes, for a customer at a time."""
    topics = fresh_topics(broker, partitions=2)
    first = start_worker(topics.prefix, **WORKER_ENV)
    events = cdnow_sample()
    half = len(events) // 2
    send(broker, topics.purchases, [(e.customer_id.encode(), event_to_json(e)) for e in events[:half]])
    wait_for("the first half applied", lambda: applied(redis_client) >= half, 300, first)
    second = start_worker(topics.prefix, app_id=f"{topics.prefix}app", SEGFLOW_DATA_DIR=tmp_path / "second", **WORKER_ENV)
    send(broker, topics.purchases, [(e.customer_id.encode(), event_to_json(e)) for e in events[half:]])
    wait_for("every event applied", lambda: applied(redis_client) >= len(events), 300, first)
    wait_quiet(redis_client, first)
    assert second.proc.poll() is None, second.log()[-2000:]
    check = check_subscriber_view(broker.bootstrap, topics, redis_client)
    assert check.follower.chain_breaks == 0 and check.follower.seq_gaps == 0, check.line()
    assert check.mismatches == [], check.mismatches[:5]
    assert check.state_mismatches == [], check.state_mismatches[:5]
