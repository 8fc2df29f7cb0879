"""Faults against the real broker and Redis: worker SIGKILLs, a Redis restart,
a rebalance. After each, every customer's features equal a clean run's (the
pure fold, features.state.apply_delta, over the same events) and no segment
change is lost. docs/RELIABILITY.md lists what these tests show."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import time

import pytest
import redis as redis_lib

from lab.embedded import RedisServer
from streams.status import outbox_length
from streams.topic_reader import read_to_end
from tests.conftest import WorkerProcess
from tests.integration.reliability_helpers import (
    WORKER_LAYOUT,
    Background,
    applied_total,
    assert_features_equal,
    check_changes,
    population,
    reference,
    wait_for_total,
)
from tests.kafka_helpers import fresh_topics, read_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Printed on failure (pytest shows captured stdout); SEGFLOW_FAULT_SEED=<n> replays a run.
SEED = int(os.environ.get("SEGFLOW_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))


@functools.cache
def traffic():
    """The simulated population (~22k events) and its clean reference, built once, when first needed."""
    items = population(customers=150, days=20, seed=3)
    states = reference(items)
    return items, states, sum(s.events_total for s in states.values())


def wait_started(client, customer_ids, worker: WorkerProcess, above: int, timeout: float = 60.0) -> int:
    """Wait until the worker has applied more than ``above`` events (it joined and consumes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = applied_total(client, WORKER_LAYOUT, customer_ids)
        if n > above:
            return n
        assert worker.proc.poll() is None, f"worker exited: {worker.log()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"worker applied nothing new after {timeout}s:\n{worker.log()[-3000:]}")


def wait_all_applied(client, workers, broker, topics, timeout: float = 90.0) -> None:
    """Every event applied, none dead-lettered (else: why, with the dead letters' reasons)."""
    try:
        _, states, expected = traffic()
        wait_for_total(client, WORKER_LAYOUT, list(states), expected, timeout, workers, lambda: len(read_to_end(broker.bootstrap, topics.dead_letter)))
        dead = read_to_end(broker.bootstrap, topics.dead_letter)
        assert not dead, f"{len(dead)} events dead-lettered"
    except AssertionError as exc:
        dead = read_to_end(broker.bootstrap, topics.dead_letter)
        reasons = [(dict(r.headers).get("segflow.reason"), dict(r.headers).get("segflow.detail"), r.value[:200]) for r in dead[:5]]
        ends = {t: [len(read_to_end(broker.bootstrap, t))] for t in topics.inputs}
        counts = {}
        for r in dead:
            reason = dict(r.headers).get("segflow.reason", b"?").decode()
            counts[reason] = counts.get(reason, 0) + 1
        raise AssertionError(f"{str(exc)[:600]}\ninput records {ends}; {len(dead)} dead letters {counts}, e.g. {reasons}") from None


def finish(client, worker: WorkerProcess, broker, topics, timeout: float = 90.0) -> dict:
    """Wait for all events, let deadlines and the outbox settle, stop cleanly, check the changes."""
    wait_all_applied(client, [worker], broker, topics, timeout)
    assert_features_equal(client, WORKER_LAYOUT, traffic()[1])
    quiet_since, last = time.monotonic(), None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the deadline timer and outbox are quiet for 3 s
        deadlines = sum(client.zcard(WORKER_LAYOUT.deadlines_key(p)) for p in range(WORKER_LAYOUT.partitions))
        now = (outbox_length(client, WORKER_LAYOUT), deadlines, len(read_to_end(broker.bootstrap, topics.segment_changes)))
        if now != last:
            quiet_since, last = time.monotonic(), now
        elif time.monotonic() - quiet_since > 3:
            break
        time.sleep(0.5)
    worker.stop()
    assert outbox_length(client, WORKER_LAYOUT) == 0, "changes left unsent in the outbox after a clean stop"
    report = check_changes(client, WORKER_LAYOUT, read_to_end(broker.bootstrap, topics.segment_changes))
    dead = read_to_end(broker.bootstrap, topics.dead_letter)
    assert not dead, f"{len(dead)} events dead-lettered, e.g. {dict(dead[0].headers)}"
    return report


def test_worker_sigkilled_three_times_mid_stream_loses_and_double_counts_nothing(broker, redis_client, start_worker, capsys):
    rng = random.Random(SEED)
    print(f"SEGFLOW_FAULT_SEED={SEED}")
    topics = fresh_topics(broker)
    producer = Background(broker.bootstrap, traffic()[0], topics, rate=900)
    worker = start_worker(topics.prefix, app_id=f"{topics.prefix}app")
    customers = list(traffic()[1])
    applied = 0
    kills = []
    for _i in range(3):
        applied = wait_started(redis_client, customers, worker, applied)
        time.sleep(rng.uniform(0.5, 4.0))
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
        applied = applied_total(redis_client, WORKER_LAYOUT, customers)
        kills.append(applied)
        # Same app id = same consumer group: the new member waits for the old one's session (4 s) to expire.
        worker = start_worker(topics.prefix, app_id=f"{topics.prefix}app")
    producer.join(120)
    report = finish(redis_client, worker, broker, topics)
    print(f"kills at applied={kills}; segment-changes: {report}")
    assert not report["broken_chains"], report["broken_chains"][:5]


def test_redis_restarted_mid_stream_worker_waits_and_resumes(broker, redis_server, tmp_path):
    """A dedicated Redis with the append-only file on: stopped (SIGTERM) for ~5 s and started again on the same port and data dir."""
    server = RedisServer(data_dir=tmp_path / "redis-aof", persistent=True).start()
    client = redis_lib.Redis.from_url(server.url, decode_responses=True)
    topics = fresh_topics(broker)
    worker = WorkerProcess(broker, server, tmp_path, topics.prefix, f"{topics.prefix}app").start()
    try:
        producer = Background(broker.bootstrap, traffic()[0], topics, rate=1200)
        customers = list(traffic()[1])
        wait_started(client, customers, worker, 2000)
        server.stop()
        down = time.monotonic()
        time.sleep(5)
        server.start()
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        assert worker.proc.poll() is None, f"worker died while Redis was down:\n{worker.log()[-3000:]}"
        print(f"redis down for {time.monotonic() - down:.1f}s")
        producer.join(120)
        report = finish(client, worker, broker, topics)
        print(f"segment-changes: {report}")
        assert not report["broken_chains"], report["broken_chains"][:5]
    finally:
        worker.stop()
        client.close()
        server.stop()


def loaded(client, timeout: float = 30.0):
    """The client, once Redis has finished loading its append-only file."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return client
        except redis_lib.BusyLoadingError:
            assert time.monotonic() < deadline, "Redis still loading its data"
            time.sleep(0.1)


def test_redis_sigkilled_mid_stream_loses_nothing(broker, redis_server, tmp_path):
    """Redis killed without warning (SIGKILL) twice mid-stream and started again on its
    append-only file. Whatever Redis had acknowledged but not yet written to disk is gone;
    the worker must not have let Kafka commit those events' offsets (it waits for the
    fsync, WAITAOF, before a batch counts as done), so redelivery fills the gap."""
    server = RedisServer(data_dir=tmp_path / "redis-aof", persistent=True).start()
    client = redis_lib.Redis.from_url(server.url, decode_responses=True)
    topics = fresh_topics(broker)
    worker = WorkerProcess(broker, server, tmp_path, topics.prefix, f"{topics.prefix}app").start()
    rng = random.Random(SEED)
    print(f"SEGFLOW_FAULT_SEED={SEED}")
    try:
        producer = Background(broker.bootstrap, traffic()[0], topics, rate=1200)
        customers = list(traffic()[1])
        applied = 2000
        for _ in range(2):
            applied = wait_started(client, customers, worker, applied)
            time.sleep(rng.uniform(0.5, 3.0))
            server.proc.kill()
            server.proc.wait()
            time.sleep(1)
            server.start()
            client = loaded(redis_lib.Redis.from_url(server.url, decode_responses=True))
            assert worker.proc.poll() is None, f"worker died while Redis was down:\n{worker.log()[-3000:]}"
            applied = applied_total(client, WORKER_LAYOUT, customers)
        producer.join(120)
        report = finish(client, worker, broker, topics)
        print(f"segment-changes: {report}")
        assert not [b for b in report["broken_chains"] if b[0] == "missing"], report["broken_chains"][:5]
    finally:
        worker.stop()
        client.close()
        server.stop()


def test_two_workers_one_stopped_and_restarted_gives_the_state_of_one_worker(broker, redis_client, start_worker):
    topics = fresh_topics(broker)
    app_id = f"{topics.prefix}app"
    a = start_worker(topics.prefix, app_id=app_id)
    b = start_worker(topics.prefix, app_id=app_id)
    producer = Background(broker.bootstrap, traffic()[0], topics, rate=900)
    customers = list(traffic()[1])
    applied = wait_started(redis_client, customers, a, 1000)
    time.sleep(2)
    assert b.stop(signal.SIGTERM) == 0, b.log()[-3000:]  # leaves the group cleanly: a takes every partition
    wait_started(redis_client, customers, a, applied + 500)
    b = start_worker(topics.prefix, app_id=app_id)  # joins again: a second rebalance
    producer.join(120)
    wait_all_applied(redis_client, [a, b], broker, topics)
    assert a.proc.poll() is None and b.proc.poll() is None
    b.stop()
    report = finish(redis_client, a, broker, topics)
    print(f"segment-changes: {report}")
    # Forks (two changes leaving the same segment) happen here now and then: a known
    # race between two workers' evaluations of one customer, reproduced
    # deterministically (and marked xfail) in test_concurrent_evaluation.py.
    assert not [b for b in report["broken_chains"] if b[0] == "missing"], report["broken_chains"][:5]


@pytest.mark.parametrize("seconds", [8, 45], ids=["8s", "45s"])
def test_broker_paused_mid_stream_worker_reconnects_and_resumes(broker, redis_client, start_worker, seconds):
    """The broker frozen (SIGSTOP), then resumed (SIGCONT): unreachable without losing its
    data (the embedded Tansu broker keeps topics in memory, so a restart would empty it).
    45 s outlasts the consumer group session (4 s here) but not Faust's 90 s request
    timeout; Tansu, frozen too, does not evict the member (one join in the runs seen)."""
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, app_id=f"{topics.prefix}app")
    producer = Background(broker.bootstrap, traffic()[0], topics, rate=1200)
    customers = list(traffic()[1])
    wait_started(redis_client, customers, worker, 3000)
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
        assert worker.proc.poll() is None, f"worker died while the broker was away:\n{worker.log()[-3000:]}"
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    producer.join(120)
    report = finish(redis_client, worker, broker, topics)
    log = worker.log()
    print(
        f"segment-changes: {report}; consumer group joins: {log.count('Joined group')}; "
        f"log lines on timeouts: {sum(1 for line in log.splitlines() if 'imeout' in line or 'imed out' in line)}"
    )
    assert not report["broken_chains"], report["broken_chains"][:5]


def test_changes_left_in_the_outbox_by_a_crash_are_relayed_on_start(broker, redis_client, start_worker):
    """The window the SIGKILL test rarely hits, forced: a change written to Redis with
    its outbox entry, the worker dead before the Kafka send. The next worker sends it."""
    from segmenter.changes import SegmentChange

    topics = fresh_topics(broker)
    change = SegmentChange.create(
        customer_id="olivia",
        segmentation="lifecycle",
        from_segment="active",
        to_segment="at_risk",
        reason="buyer_silent_14d",
        model_version=None,
        occurred_at_ms=1_790_000_000_000,
        cause="deadline:1790000000000",
        features={"days_since_last_activity": 14.0},
    )
    payload = change.model_dump_json(by_alias=True)
    outbox = WORKER_LAYOUT.outbox(WORKER_LAYOUT.partition("olivia"))
    redis_client.xadd(outbox, {"change": payload})
    worker = start_worker(topics.prefix)
    records = read_until(broker, topics.segment_changes, lambda rs: any(json.loads(r.value)["change_id"] == change.change_id for r in rs), timeout=60)
    assert [r.key for r in records if json.loads(r.value)["change_id"] == change.change_id] == [b"olivia"]
    deadline = time.monotonic() + 10
    while redis_client.xlen(outbox):
        assert time.monotonic() < deadline, "relayed change never left the outbox"
        time.sleep(0.2)
    assert "relayed 1 segment changes" in worker.log()
