"""The key layout: every key one server-side call touches is in one cluster slot, and
partitions spread evenly over the shards of an evenly split cluster."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from features.keys import SLOTS, Layout, customer_id_of, partition_tags


def slot(key: str) -> int:
    return key_slot(key.encode())


@given(st.text(min_size=1, max_size=64), st.integers(1, 64))
def test_a_customers_keys_share_the_slot_of_its_partitions_structures(customer_id, partitions):
    layout = Layout(partitions)
    p = layout.partition(customer_id)
    keys = [
        layout.customer_key(customer_id),
        layout.segments_key(customer_id),
        layout.history_key(customer_id),
        layout.outbox(p),
        layout.deadlines_key(p),
        layout.customers(p),
        layout.stats(p),
        layout.flows(p, 490_000),
        layout.member_set(p, "lifecycle", "at_risk"),
    ]
    assert len({slot(k) for k in keys}) == 1
    assert all(customer_id_of(k) == customer_id for k in keys[:3])


@given(st.integers(1, 256))
def test_partition_tags_are_distinct_and_in_their_share_of_the_slots(partitions):
    tags = partition_tags(partitions)
    assert len(set(tags)) == partitions
    assert [slot(t) * partitions // SLOTS for t in tags] == list(range(partitions))


def test_partitions_spread_evenly_over_an_evenly_split_cluster():
    for shards in (1, 2, 3, 4, 6):
        for partitions in (shards, 2 * shards, 4 * shards, 12):
            if partitions % shards:
                continue
            # as valkey-cli --cluster create and segflow up split the slots: contiguous, even
            bounds = [round(i * SLOTS / shards) for i in range(shards + 1)]
            per_shard = [sum(bounds[s] <= slot(t) < bounds[s + 1] for t in partition_tags(partitions)) for s in range(shards)]
            assert per_shard == [partitions // shards] * shards, (shards, partitions, per_shard)


def test_partition_counts_the_tags_cannot_serve_are_refused():
    for bad in (0, SLOTS):
        try:
            partition_tags(bad)
        except ValueError as exc:
            assert "partitions" in str(exc)
        else:
            raise AssertionError(bad)
