"""Redis key names: the one place they are spelled (docs/OPERATIONS.md lists them).

Keys are laid out by input partition so that every server-side call touches one
Redis Cluster slot. A customer's events all land on one input partition
(:func:`partition_of`); the customer's keys carry that partition's hash tag, and
so does that partition's share of every population structure (outbox,
deadlines, membership sets, flows, customer count, applied/duplicates counters).
A worker that owns a partition therefore owns one slot's worth of keys, and a
cluster spreads partitions over its shards.

>>> layout = Layout(4)
>>> layout.tags
('p0.1', 'p1.10', 'p2.1', 'p3.10')
>>> p = layout.partition("c42")
>>> layout.customer_key("c42") == f"cf:{{{layout.tags[p]}}}:c42"
True
>>> layout.member_set(0, "lifecycle", "at_risk"), layout.outbox(2)
('seg:{p0.1}:lifecycle:at_risk', 'segflow:{p2.1}:outbox')
>>> customer_id_of(layout.segments_key("c42"))
'c42'
"""

from __future__ import annotations

from functools import lru_cache

from kafka.partitioner.default import murmur2
from redis.crc import key_slot

SLOTS = 16384

# Keys that are not per partition. Several keys written in one transaction share a
# hash tag ({model}, {drift}) so that the transaction stays in one slot.
WATERMARK = "segflow:watermark"
SIZES_HISTORY = "segflow:sizes"
STATS = "segflow:stats"  # worker counters (changes, deadline evaluations, ...)
MODEL = "segflow:{model}:behaviour"
CHURN_MODEL = "segflow:{model}:churn"  # JSON: the churn model's parameters, version and horizon
DRIFT = "segflow:{drift}"
RESEED = "segflow:{drift}:reseed"

# The key prefixes of one customer; the partition tag follows in braces, then the id.
FEATURES_PREFIX = "cf:"
SEGMENTS_PREFIX = "cs:"
HISTORY_PREFIX = "ch:"


def partition_of(customer_id: str, partitions: int) -> int:
    """The input partition a customer's events land on: Kafka's default partitioner
    (murmur2 of the key, as the Java client, kafka-python and aiokafka compute it).

    >>> partition_of("c000042", 4) == partition_of("c000042", 4), 0 <= partition_of("x", 6) < 6
    (True, True)
    """
    return int((murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions)


@lru_cache(maxsize=64)
def partition_tags(partitions: int) -> tuple[str, ...]:
    """One hash tag per partition, ``p<n>.<k>``, whose slot lies in the middle half of
    partition n's even share of the 16,384 slots: a cluster whose shards split the
    slots evenly (as ``valkey-cli --cluster create`` and ``segflow up`` do) then holds
    an even share of the partitions, whatever its shard count divides.

    >>> [key_slot(t.encode()) * 4 // SLOTS for t in partition_tags(4)]
    [0, 1, 2, 3]
    """
    if not 1 <= partitions <= SLOTS // 4:
        raise ValueError(f"partitions must be between 1 and {SLOTS // 4}, got {partitions}")
    tags = []
    for p in range(partitions):
        lo, hi = p * SLOTS / partitions, (p + 1) * SLOTS / partitions
        quarter = (hi - lo) / 4
        k = 0
        while not lo + quarter <= key_slot(f"p{p}.{k}".encode()) < hi - quarter:
            k += 1
        tags.append(f"p{p}.{k}")
    return tuple(tags)


def customer_id_of(key: str) -> str:
    """The customer id of a customer key (features, segments or history).

    >>> customer_id_of("cs:{p0.1}:a:b}")
    'a:b}'
    """
    return key[key.index("}:") + 2 :]


class Layout:
    """Key names for a deployment whose input topics have ``partitions`` partitions.

    The partition count is part of the layout: changing it moves customers to other
    keys (``segflow migrate-layout`` re-lays existing data).
    """

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = partitions
        self.tags = partition_tags(partitions)
        self.partition = lru_cache(maxsize=1 << 16)(self._partition)

    def __repr__(self) -> str:
        return f"Layout({self.partitions})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other.partitions == self.partitions

    def __hash__(self) -> int:
        return hash(self.partitions)

    def _partition(self, customer_id: str) -> int:
        return partition_of(customer_id, self.partitions)

    # One customer's keys
    def customer_key(self, customer_id: str) -> str:
        """The customer's features hash."""
        return self.customer_key_prefix(self.partition(customer_id)) + customer_id

    def customer_key_prefix(self, partition: int) -> str:
        """What the features hash of each of a partition's customers starts with."""
        return f"{FEATURES_PREFIX}{{{self.tags[partition]}}}:"

    def segments_key(self, customer_id: str) -> str:
        return f"{SEGMENTS_PREFIX}{{{self.tags[self.partition(customer_id)]}}}:{customer_id}"

    def history_key(self, customer_id: str) -> str:
        return f"{HISTORY_PREFIX}{{{self.tags[self.partition(customer_id)]}}}:{customer_id}"

    # One partition's share of the population structures
    def _of(self, partition: int, name: str) -> str:
        return f"segflow:{{{self.tags[partition]}}}:{name}"

    def outbox(self, partition: int) -> str:
        """Stream of changes committed but not yet confirmed on the changes topic."""
        return self._of(partition, "outbox")

    def deadlines_key(self, partition: int) -> str:
        """Sorted set: customer -> time of its next re-evaluation without an event."""
        return self._of(partition, "deadlines")

    def filters_key(self, partition: int) -> str:
        """Sorted set: customer -> event time by which its duplicate filter is swept
        (``segflow_sweep_filters``: what the lateness rules out goes without waiting for the
        customer's next event)."""
        return self._of(partition, "filters")

    def customers(self, partition: int) -> str:
        """Count of the partition's customers with state (the max_customers limit)."""
        return self._of(partition, "customers")

    def stats(self, partition: int) -> str:
        """Hash: events applied and duplicates, counted in the same atomic call."""
        return self._of(partition, "stats")

    def flows(self, partition: int, hour: int) -> str:
        """Hash: transition counts of one hour (epoch hours), ``segmentation|from|to``."""
        return self._of(partition, f"flows:{hour}")

    def member_set(self, partition: int, segmentation: str, segment: str) -> str:
        """Set of the partition's customers in one segment (SSCAN it)."""
        return f"seg:{{{self.tags[partition]}}}:{segmentation}:{segment}"

    def member_sets(self, segmentation: str, segment: str) -> list[str]:
        """One segment's member sets over all partitions."""
        return [self.member_set(p, segmentation, segment) for p in range(self.partitions)]
