"""Read a whole topic, from the beginning to its end at the time of reading.

The end is the high watermark that fetch responses carry, not ListOffsets:
the embedded broker (Tansu 0.6.0, memory storage) answers ListOffsets
``latest`` with the base offset of a partition's last record batch plus one,
short by the rest of that batch (docs/RELIABILITY.md), so a reader that
stopped there could miss the newest records.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def read_to_end(bootstrap: str, topic: str, timeout: float = 120.0, **consumer_config) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to each partition's high watermark as the first
    fetch of that partition reported it (a topic still being written is not chased),
    partition by partition in offset order; raises ``TimeoutError`` if the topic has
    no partitions or is not read within ``timeout`` seconds."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20, **consumer_config)
    try:
        deadline = time.monotonic() + timeout
        tps: list[TopicPartition] = []
        while not tps:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not tps:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} has no partitions")
                time.sleep(0.2)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        ends: dict[TopicPartition, int] = {}

        def behind(tp: TopicPartition) -> bool:
            if tp not in ends:
                high = consumer.highwater(tp)  # None until a fetch for tp came back
                if high is None:
                    return True
                ends[tp] = high
            return consumer.position(tp) < ends[tp]

        records: list[ConsumerRecord] = []
        while any(behind(tp) for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out reading {topic}")
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
