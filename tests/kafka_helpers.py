"""Producing to and reading back from the real test broker (kafka-python, no groups)."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.admin import ensure_topics
from streams.topics import Topics


def fresh_topics(broker, partitions: int = 2) -> Topics:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}-")
    ensure_topics(broker.bootstrap, topics, partitions)
    return topics


def send(broker, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def read_until(broker, topic: str, predicate, timeout: float = 60.0, **client_config):
    """Read ``topic`` from the beginning until ``predicate(records)`` holds; return the records.

    ``client_config``: more KafkaConsumer arguments (TLS, SASL: streams.kafka_security.kafka_python_config)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, **client_config)
    records = []
    try:
        deadline = time.monotonic() + timeout
        tps: list[TopicPartition] = []
        while not tps and time.monotonic() < deadline:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            if not tps:
                time.sleep(0.2)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            if predicate(records):
                return records
        tail = [r.value[:160] for r in records[-8:]]
        raise AssertionError(f"timed out after {timeout}s reading {topic}: {len(records)} records, predicate never held; last: {tail}")
    finally:
        consumer.close()
