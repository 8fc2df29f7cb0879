"""Follow ``segment-changes`` as a campaign system does, and audit what it saw.

A subscriber reads each partition in offset order and, per customer and
segmentation, applies a change only when its ``seq`` is above the last one it
applied: a repeat (same ``change_id`` again) or a stale re-send is dropped with
one comparison. :class:`ChangeFollower` does exactly that and counts what a
subscriber would trip over:

- ``repeats``: changes dropped because their seq was not newer;
- ``chain_breaks``: applied changes whose ``from`` is not the segment the
  subscriber holds (the first change of a key must come ``from`` null, or from
  the state it started with);
- ``seq_gaps``: applied changes whose seq skips numbers.

An erasure (``to`` null, reason ``erasure``) leaves the key held as no segment, with
its seq: repeats of it are still dropped, and a first assignment (``from`` null, seq
1) after it starts the customer over (one who came back after the suppression).

:func:`compare_with_redis` then checks the subscriber's end state against
the segments Redis holds. ``segflow soak`` and ``segflow bench`` end with this
audit; the integration tests assert 0 chain breaks, 0 gaps and 0 mismatches.

>>> f = ChangeFollower()
>>> change = lambda seq, frm, to, cid="c1": {"customer_id": cid, "segmentation": "lifecycle", "seq": seq, "from": frm, "to": to, "change_id": f"{cid}-{seq}"}
>>> [f.apply(c) for c in (change(1, None, "new"), change(2, "new", "active"), change(2, "new", "active"), change(4, "at_risk", "dormant"))]
['applied', 'applied', 'repeat', 'applied']
>>> f.repeats, f.chain_breaks, f.seq_gaps, f.state[("c1", "lifecycle")]
(1, 1, 1, ('dormant', 4))
>>> [f.apply(c) for c in (change(5, "dormant", None), change(5, "dormant", None), change(1, None, "new"))]
['applied', 'repeat', 'applied']
>>> f.chain_breaks, f.seq_gaps, f.state[("c1", "lifecycle")]
(1, 1, ('new', 1))
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChangeFollower:
    """The current segment per (customer, segmentation) as a subscriber holds it."""

    state: dict[tuple[str, str], tuple[str | None, int]] = field(default_factory=dict)  # segment None: erased
    applied: int = 0
    repeats: int = 0
    chain_breaks: int = 0
    seq_gaps: int = 0

    def seed(self, states: Iterable[Mapping[str, Any] | tuple[str, str]]) -> None:
        """Start from the compacted state topic's records (the last per key wins); a
        ``(customer_id, segmentation)`` pair is a tombstone (an erased customer's key)."""
        for s in states:
            if isinstance(s, tuple):
                self.state.pop(s, None)
                continue
            key = (s["customer_id"], s["segmentation"])
            if key not in self.state or s["seq"] >= self.state[key][1]:
                self.state[key] = (s["segment"], s["seq"])

    def apply(self, change: Mapping[str, Any]) -> str:
        """``'applied'`` or ``'repeat'`` (not newer than what is held)."""
        key = (change["customer_id"], change["segmentation"])
        held = self.state.get(key)
        seq = int(change["seq"])
        if held is not None and held[0] is None and seq == 1 and change.get("from") is None:
            held = None  # back after an erasure: a new customer
        if held is not None and seq <= held[1]:
            self.repeats += 1
            return "repeat"
        last_segment, last_seq = held if held is not None else (None, 0)
        if change.get("from") != last_segment:
            self.chain_breaks += 1
        if seq != last_seq + 1:
            self.seq_gaps += 1
        self.state[key] = (change["to"], seq)
        self.applied += 1
        return "applied"

    def summary(self) -> dict[str, int]:
        return {"applied": self.applied, "repeats": self.repeats, "chain_breaks": self.chain_breaks, "seq_gaps": self.seq_gaps}


def follow(values: Iterable[bytes | str]) -> ChangeFollower:
    """A follower fed the change messages' values, in the order given (offset order per partition)."""
    follower = ChangeFollower()
    for value in values:
        follower.apply(json.loads(value))
    return follower


def compare_with_redis(held: Mapping[tuple[str, str], tuple[str | None, int]], redis_segments: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Differences between a subscriber's state and Redis (``customer -> segmentation ->
    StoredAssignment``): a customer segmentation missing on either side, or another segment.

    >>> class A:  # a stored assignment
    ...     def __init__(self, segment): self.segment = segment
    >>> compare_with_redis({("c1", "lifecycle"): ("active", 2)}, {"c1": {"lifecycle": A("at_risk"), "value": A("loyal")}})
    ['c1/lifecycle: subscriber active, Redis at_risk', 'c1/value: subscriber -, Redis loyal']
    """
    out = []
    keys = set(held) | {(cid, name) for cid, segs in redis_segments.items() for name in segs}
    for cid, name in sorted(keys):
        mine = held.get((cid, name))
        theirs = redis_segments.get(cid, {}).get(name)
        if (mine[0] if mine else None) != (theirs.segment if theirs is not None else None):
            out.append(f"{cid}/{name}: subscriber {mine[0] if mine else '-'}, Redis {theirs.segment if theirs is not None else '-'}")
    return out


@dataclass
class SubscriberCheck:
    """What a subscriber that read both topics from the beginning would hold, against Redis."""

    follower: ChangeFollower
    mismatches: list[str]
    state_mismatches: list[str]
    records: int
    distinct_change_ids: int

    @property
    def ok(self) -> bool:
        return self.follower.chain_breaks == 0 and self.follower.seq_gaps == 0 and not self.mismatches and not self.state_mismatches

    def line(self) -> str:
        f = self.follower
        return (
            f"subscriber check: {self.records} change records, {f.applied} applied, {f.repeats} repeats dropped, "
            f"{f.chain_breaks} chain breaks, {f.seq_gaps} seq gaps, {len(self.mismatches)} end-state mismatches with Redis, "
            f"{len(self.state_mismatches)} segment-state mismatches  {'OK' if self.ok else 'NOT OK'}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            **self.follower.summary(),
            "mismatches": len(self.mismatches),
            "state_mismatches": len(self.state_mismatches),
            "examples": (self.mismatches + self.state_mismatches)[:5],
            "ok": self.ok,
        }


class EngineQuiet:
    """A predicate to poll: true once the workers' counts of changes and deadline
    evaluations (``segflow:stats``) have not moved for ``quiet_s`` and the outbox is
    empty, so every absence move is out. Take a subscriber's view only then."""

    def __init__(self, redis_client: Any, layout: Any, quiet_s: float = 5.0) -> None:
        self.redis, self.layout, self.quiet_s = redis_client, layout, quiet_s
        self._last: tuple[Any, ...] | None = None
        self._since = time.monotonic()

    def __call__(self) -> bool:
        from features import keys
        from streams.status import outbox_length

        now = (self.redis.hget(keys.STATS, "changes"), self.redis.hget(keys.STATS, "deadline_evaluations"), outbox_length(self.redis, self.layout))
        if now != self._last:
            self._last, self._since = now, time.monotonic()
        return now[2] == 0 and time.monotonic() - self._since >= self.quiet_s


def redis_segments(redis_client: Any) -> dict[str, dict[str, Any]]:
    """Every customer's segments in Redis (SCAN over the segment hashes; sync client, decoded)."""
    from features import keys
    from streams.segment_store import parse_segments

    out = {}
    for key in redis_client.scan_iter(match=f"{keys.SEGMENTS_PREFIX}{{*", count=1000):
        segs = parse_segments(redis_client.hgetall(key))
        if segs:
            out[keys.customer_id_of(key)] = segs
    return out


def _state_of(record: Any) -> Mapping[str, Any] | tuple[str, str]:
    """A state topic record as :meth:`ChangeFollower.seed` takes it: its value, or for a
    tombstone (an erasure) its key."""
    if record.value is None:
        customer_id, segmentation = json.loads(record.key)
        return (customer_id, segmentation)
    return json.loads(record.value)


def check_subscriber_view(bootstrap: str, topics: Any, redis_client: Any, **consumer_config: Any) -> SubscriberCheck:
    """Read ``segment-changes`` and ``segment-state`` to their ends as a subscriber does and compare with Redis."""
    from streams.topic_reader import read_to_end

    records = read_to_end(bootstrap, topics.segment_changes, **consumer_config)
    follower = follow(r.value for r in records)
    distinct = len({json.loads(r.value)["change_id"] for r in records})
    segments = redis_segments(redis_client)
    from_state = ChangeFollower()
    from_state.seed(_state_of(r) for r in read_to_end(bootstrap, topics.segment_state, **consumer_config))
    return SubscriberCheck(follower, compare_with_redis(follower.state, segments), compare_with_redis(from_state.state, segments), len(records), distinct)
