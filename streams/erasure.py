"""Erasure: forget a customer everywhere segflow keeps them (``segflow forget``).

The CLI publishes an :class:`~streams.events.ErasureRequest` to the erasure topic,
keyed by the customer on the partition of their events, so the worker that owns
that partition meets it in order with the customer's events. The worker then
calls ``segflow_forget`` (features/segflow.lua) once per customer: features,
segments, history, memberships, deadline and pending outbox entries go in one
atomic call over the partition's slot, and a tombstone stays in the features
hash for ``SEGFLOW_ERASURE_SUPPRESS_DAYS`` so that later events of the customer
(in flight, or replayed) are dropped as ``suppressed`` by ``segflow_apply``.

Pure: :func:`erasure_request`, :func:`erasure_changes` (one final change per
segmentation the customer is in: ``to`` null, reason ``erasure``) and
:func:`forget_call`. Shell: :class:`Eraser`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pydantic_core

from features.codec import pairs
from features.keys import Layout, partition_of
from features.pipeline import Command, run_pipeline
from segmenter.changes import ERASURE_REASON, RETENTION_REASON, SegmentChange, datetime_to_ms
from streams.events import ErasureRequest
from streams.segment_store import StoredAssignment, outbox_id, parse_segments, version_of
from streams.topics import Topics

# A compare-and-set lost this often in a row means something keeps committing for the
# customer; the batch fails (and is redelivered) rather than loop.
MAX_ATTEMPTS = 5


def erasure_request(customer_id: str, reason: str | None, now: datetime, request_id: str | None = None) -> ErasureRequest:
    """The request ``segflow forget`` publishes (a fresh UUID unless given).

    >>> from datetime import UTC
    >>> r = erasure_request("c1", "ticket 7", datetime(2026, 1, 5, tzinfo=UTC), request_id="r1")
    >>> r.model_dump_json()
    '{"type":"erasure","request_id":"r1","customer_id":"c1","requested_at":"2026-01-05T00:00:00Z","reason":"ticket 7","schema_version":1}'
    """
    return ErasureRequest(request_id=request_id or uuid.uuid4().hex, customer_id=customer_id, requested_at=now, reason=reason)


def erasure_changes(request: ErasureRequest, segments: Mapping[str, StoredAssignment], emitted_at_ms: int, reason: str = ERASURE_REASON) -> list[SegmentChange]:
    """The customer's final change in each segmentation they are in: from the segment
    held, to null, the next seq, reason ``erasure``, no features (nothing about them
    leaves with it). Ids derive from the request: a replayed request gives the same.

    >>> from datetime import UTC
    >>> r = erasure_request("c1", None, datetime(2026, 1, 5, tzinfo=UTC), request_id="r1")
    >>> [c] = erasure_changes(r, {"value": StoredAssignment("loyal", 0, "rfm", 3, 4)}, emitted_at_ms=0)
    >>> c.from_segment, c.to_segment, c.seq, c.reason, c.features, c.erased
    ('loyal', None, 5, 'erasure', {}, True)
    """
    occurred_ms = datetime_to_ms(request.requested_at)
    return [
        SegmentChange.create(
            customer_id=request.customer_id,
            segmentation=name,
            from_segment=held.segment,
            to_segment=None,
            reason=reason,
            model_version=held.model_version,
            occurred_at_ms=occurred_ms,
            cause=f"erasure:{request.request_id}",
            features={},
            seq=held.seq + 1,
            emitted_at_ms=emitted_at_ms,
        )
        for name, held in sorted(segments.items())
    ]


def outbox_needle(customer_id: str) -> str:
    """How a change payload spells its customer (pydantic's JSON), for ``segflow_forget``
    to find the customer's pending outbox entries without decoding each.

    >>> outbox_needle('c"1')
    '"customer_id":"c\\\\"1"'
    """
    return '"customer_id":' + pydantic_core.to_json(customer_id).decode()


def forget_call(layout: Layout, customer_id: str, version: int, changes: Sequence[SegmentChange], erased_at_ms: int, suppress_ms: int) -> Command:
    """One ``FCALL segflow_forget`` (KEYS and ARGV, see segflow.lua): every key in the
    customer's partition's slot; one member set and one payload per final change.

    >>> call = forget_call(Layout(1), "c1", 2, [], erased_at_ms=9, suppress_ms=0)
    >>> call[:3], call[3:11], call[11:]
    (('FCALL', 'segflow_forget', 8), ('cf:{p0.0}:c1', 'cs:{p0.0}:c1', 'ch:{p0.0}:c1', 'segflow:{p0.0}:outbox', 'segflow:{p0.0}:deadlines', 'segflow:{p0.0}:customers', 'segflow:{p0.0}:stats', 'segflow:{p0.0}:filters'), ('c1', 2, 9, 0, '"customer_id":"c1"'))
    """
    p = layout.partition(customer_id)
    key_list = [
        layout.customer_key(customer_id),
        layout.segments_key(customer_id),
        layout.history_key(customer_id),
        layout.outbox(p),
        layout.deadlines_key(p),
        layout.customers(p),
        layout.stats(p),
        layout.filters_key(p),
    ]
    members = [layout.member_set(p, c.segmentation, c.from_segment) for c in changes if c.from_segment is not None]
    payloads = [c.model_dump_json(by_alias=True) for c in changes]
    return (
        "FCALL",
        "segflow_forget",
        len(key_list) + len(members),
        *key_list,
        *members,
        customer_id,
        version,
        erased_at_ms,
        suppress_ms,
        outbox_needle(customer_id),
        *payloads,
    )


def retention_request(customer_id: str, last_seen_ms: int, now: datetime) -> ErasureRequest:
    """The request the deadline timer makes for a customer silent past the retention;
    its id names the customer's last event, so a re-run makes the same change ids.

    >>> from datetime import UTC
    >>> retention_request("c1", 5, datetime(2026, 1, 5, tzinfo=UTC)).request_id
    'retention:c1:5'
    """
    return erasure_request(customer_id, RETENTION_REASON, now, request_id=f"retention:{customer_id}:{last_seen_ms}")


def retention_deadline(rule_deadline_ms: int | None, last_seen_ms: int | None, retention_ms: int) -> int | None:
    """A customer's next deadline: the rules', or the end of their retention if sooner
    (``retention_ms`` 0: no retention).

    >>> retention_deadline(None, 1_000, 0) is None
    True
    >>> retention_deadline(None, 1_000, 500), retention_deadline(1_200, 1_000, 500), retention_deadline(1_800, 1_000, 500)
    (1500, 1200, 1500)
    """
    if not retention_ms or last_seen_ms is None:
        return rule_deadline_ms
    end = last_seen_ms + retention_ms
    return end if rule_deadline_ms is None else min(rule_deadline_ms, end)


def retained(last_seen_ms: int | None, now_ms: int, retention_ms: int) -> bool:
    """Whether a customer is still within the retention at ``now_ms``.

    >>> retained(1_000, 1_499, 500), retained(1_000, 1_500, 500), retained(1_000, 10**9, 0)
    (True, False, True)
    """
    return not retention_ms or last_seen_ms is None or now_ms - last_seen_ms < retention_ms


@dataclass
class Forgotten:
    """What a run of erasures did: the final changes, in the outbox, to publish."""

    changes: list[tuple[str, str]] = field(default_factory=list)  # (outbox id, change json)
    customers: list[str] = field(default_factory=list)
    dropped: int = 0  # pending outbox entries of theirs that will never be sent


class Eraser:
    """Forgets customers: reads their segments, then one ``segflow_forget`` each,
    pipelined; a lost compare-and-set (another worker committed for the customer
    in between, during a rebalance) reads again and retries."""

    def __init__(self, redis, layout: Layout, suppress_ms: int) -> None:
        self.redis = redis
        self.layout = layout
        self.suppress_ms = suppress_ms

    async def forget(self, requests: Sequence[ErasureRequest], now_ms: int, reason: str = ERASURE_REASON, suppress_ms: int | None = None) -> Forgotten:
        """``suppress_ms``: the tombstone's life (default: the eraser's); -1 leaves none (retention:
        a customer who comes back is a new customer)."""
        suppress = self.suppress_ms if suppress_ms is None else suppress_ms
        pending = {r.customer_id: r for r in requests}  # one call per customer suffices
        out = Forgotten()
        for _ in range(MAX_ATTEMPTS):
            if not pending:
                return out
            batch = list(pending.values())
            segment_hashes = await self._segments_of([r.customer_id for r in batch])
            calls, payloads = [], []
            for request, seg_hash in zip(batch, segment_hashes, strict=True):
                changes = erasure_changes(request, parse_segments(seg_hash), now_ms, reason)
                calls.append(forget_call(self.layout, request.customer_id, version_of(seg_hash), changes, now_ms, suppress))
                payloads.append([c.model_dump_json(by_alias=True) for c in changes])
            for request, reply, sent in zip(batch, await run_pipeline(self.redis, calls), payloads, strict=True):
                if _text(reply[0]) == "conflict":
                    continue
                p = self.layout.partition(request.customer_id)
                out.changes.extend(zip((outbox_id(p, _text(i)) for i in reply[2:]), sent, strict=True))
                out.dropped += int(reply[1])
                out.customers.append(request.customer_id)
                del pending[request.customer_id]
        raise RuntimeError(f"could not forget {sorted(pending)}: their segments kept changing ({MAX_ATTEMPTS} attempts)")

    async def _segments_of(self, customer_ids: Sequence[str]) -> list[dict[str, str]]:
        replies = await run_pipeline(self.redis, [("HGETALL", self.layout.segments_key(c)) for c in customer_ids])
        return [_as_dict(r) for r in replies]


def _as_dict(reply) -> dict[str, str]:
    """An HGETALL reply: a flat list from the plain pipeline, a dict on a cluster."""
    if isinstance(reply, Mapping):
        return {_text(k): _text(v) for k, v in reply.items()}
    return pairs(reply)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def publish_request(bootstrap: str, topics: Topics, partitions: int, request: ErasureRequest, producer_config: dict | None = None) -> int:
    """Publish ``request`` to the erasure topic and wait for the broker's ack; returns the
    partition: the one the customer's events land on (:func:`features.keys.partition_of`,
    Kafka's default partitioner over ``SEGFLOW_PARTITIONS``), named explicitly so that a
    producer with another partitioner cannot put it elsewhere."""
    from kafka import KafkaProducer

    partition = partition_of(request.customer_id, partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **(producer_config or {}))
    try:
        value = request.model_dump_json(exclude_none=True).encode()
        producer.send(topics.erasure, key=request.customer_id.encode(), value=value, partition=partition).get(timeout=30)
    finally:
        producer.close()
    return partition
