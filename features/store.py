"""The Redis feature store: applies events with one server-side call each.

A thin shell over :mod:`features.codec` and ``segflow.lua``: a batch of
events is one pipeline of ``FCALL segflow_apply`` (atomic and idempotent per
event, no read-modify-write from Python), answered with each customer's new
raw state and current segments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import NamedTuple

import redis as sync_redis
from redis.asyncio import Redis

from features import keys
from features.codec import delta_args, pairs, state_from_hash
from features.keys import Layout
from features.pipeline import Command, run_pipeline
from features.state import CustomerState, EventDelta

LIBRARY = resources.files("features").joinpath("segflow.lua").read_text()


class Applied(NamedTuple):
    """Outcome of one event: ``status`` applied/duplicate/too_late/unverifiable/over_capacity.

    ``state``/``segments``: the customer's hashes after the event, present only
    on the customer's last event of a batch (whatever its status); ``state``
    without the duplicate filter (features do not read it).
    """

    customer_id: str
    status: str
    state: CustomerState | None = None
    segments: dict[str, str] | None = None


def apply_call(layout: Layout, customer_id: str, delta: EventDelta, late_before_ms: int | None, want_state: bool = True, max_customers: int = 0) -> Command:
    """One ``FCALL segflow_apply`` command (KEYS and ARGV, see segflow.lua), for
    ``redis.execute_command(*apply_call(...))`` or :func:`features.pipeline.run_pipeline`.
    Its keys are in the customer's partition's slot. ``max_customers`` > 0 refuses
    customers not yet known once that many have state in the customer's partition
    (status ``over_capacity``)."""
    p = layout.partition(customer_id)
    return (
        "FCALL",
        "segflow_apply",
        5,
        layout.customer_key(customer_id),
        layout.segments_key(customer_id),
        layout.customers(p),
        layout.stats(p),
        layout.filters_key(p),
        *delta_args(delta, late_before_ms, want_state),
        max_customers,
        customer_id,
    )


async def load_library(redis: Redis) -> None:
    """(Re)load the function library; safe to call on every start."""
    await redis.function_load(LIBRARY, replace=True)


def load_library_sync(redis: sync_redis.Redis) -> None:
    redis.function_load(LIBRARY, replace=True)


class FeatureStore:
    """Applies event deltas and reads customer state (redis.asyncio client)."""

    def __init__(self, redis: Redis, layout: Layout, max_customers: int = 0) -> None:
        self.redis = redis
        self.layout = layout
        self.max_customers = max_customers
        # The limit holds per partition (the count is a partition's key, kept in its slot).
        self.max_per_partition = -(-max_customers // layout.partitions) if max_customers else 0

    async def apply_batch(self, items: Sequence[tuple[str, EventDelta]], late_before_ms: int | None, watermark_ms: int | None) -> list[Applied]:
        """Apply ``items`` in one pipeline; events older than ``late_before_ms`` are refused.

        ``watermark_ms``, the worker's event-time low watermark, is published
        for the deadline clock in the same round trip.
        """
        if not items:
            return []
        last = {customer_id: i for i, (customer_id, _) in enumerate(items)}
        commands: list[Command] = [
            apply_call(self.layout, customer_id, delta, late_before_ms, last[customer_id] == i, self.max_per_partition)
            for i, (customer_id, delta) in enumerate(items)
        ]
        if watermark_ms is not None:
            commands.append(("FCALL", "segflow_advance_watermark", 1, keys.WATERMARK, watermark_ms))
        replies = await run_pipeline(self.redis, commands)
        out = []
        for (customer_id, _), reply in zip(items, replies, strict=False):
            status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if len(reply) > 1:
                out.append(Applied(customer_id, status, state_from_hash(pairs(reply[1]), dedupe=False), pairs(reply[2])))
            else:
                out.append(Applied(customer_id, status))
        return out

    async def sweep_filters(self, late_before_ms: int, partitions: Iterable[int], limit: int = 1000) -> int:
        """Forget from the duplicate filters of up to ``limit`` customers per partition
        what ``late_before_ms`` rules out, as their next event would (``segflow_sweep_filters``),
        one round trip; returns how many customers were swept."""
        commands: list[Command] = [
            ("FCALL", "segflow_sweep_filters", 1, self.layout.filters_key(p), late_before_ms, limit, self.layout.customer_key_prefix(p)) for p in partitions
        ]
        return sum(int(n) for n in await run_pipeline(self.redis, commands))

    async def advance_watermark(self, ts_ms: int) -> int:
        """Publish a worker's low watermark; returns the shared (largest) one."""
        return int(await self.redis.fcall("segflow_advance_watermark", 1, keys.WATERMARK, ts_ms))

    async def watermark_ms(self) -> int | None:
        value = await self.redis.get(keys.WATERMARK)
        return None if value is None else int(value)

    async def read(self, customer_ids: Sequence[str]) -> list[tuple[CustomerState, dict[str, str]]]:
        """Raw state (without the duplicate filter) and segments of several customers, one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for cid in customer_ids:
            pipe.hgetall(self.layout.customer_key(cid))
            pipe.hgetall(self.layout.segments_key(cid))
        replies = await pipe.execute()
        out = []
        for i in range(0, len(replies), 2):
            out.append((state_from_hash(_decode(replies[i]), dedupe=False), _decode(replies[i + 1])))
        return out


def _decode(h: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in h.items()}
