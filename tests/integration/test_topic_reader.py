"""read_to_end reads up to the fetch high watermark: on the embedded broker,
ListOffsets ``latest`` stops at the base offset of a partition's last batch + 1."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from streams.topic_reader import read_to_end
from tests.kafka_helpers import fresh_topics

pytestmark = pytest.mark.integration


def test_reads_every_record_of_the_last_batch_and_skips_empty_partitions(broker):
    topic = fresh_topics(broker, partitions=3).dead_letter
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=200)
    try:
        for batch in range(2):  # two batches on partition 0, one on partition 1, none on partition 2
            for i in range(25):
                producer.send(topic, value=f"p0-{batch}-{i}".encode(), partition=0)
            producer.flush()
        for i in range(10):
            producer.send(topic, value=f"p1-{i}".encode(), partition=1)
        producer.flush()
    finally:
        producer.close()

    # Small polls, so the last batch of a partition spans several (as big batches do):
    # a reader stopping at ListOffsets' end (26 on partition 0 here) stops inside the
    # last batch and misses the rest of it.
    records = read_to_end(broker.bootstrap, topic, timeout=30, max_poll_records=5)

    by_partition = {p: [r.value.decode() for r in records if r.partition == p] for p in range(3)}
    assert by_partition[0] == [f"p0-{b}-{i}" for b in range(2) for i in range(25)]
    assert by_partition[1] == [f"p1-{i}" for i in range(10)]
    assert by_partition[2] == []
