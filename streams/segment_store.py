"""Redis persistence of segment state: the imperative shell of the segmenter.

Per customer: ``cust:{id}:seg`` (hash, one JSON field per segmentation plus
``_churn``), ``cust:{id}:hist`` (capped stream of changes). Population:
``seg:<segmentation>:<segment>`` membership sets, ``segflow:deadlines``
(time-based re-evaluations), ``segflow:outbox`` (changes not yet confirmed
on Kafka), ``segflow:flows:<hour>`` (transition counts) and the behaviour
model snapshots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from features import keys

FLOWS_TTL_SECONDS = 8 * 86_400


@dataclass(frozen=True)
class StoredAssignment:
    segment: str
    since_ms: int
    reason: str
    model_version: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"segment": self.segment, "since_ms": self.since_ms, "reason": self.reason, "model_version": self.model_version},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "StoredAssignment":
        d = json.loads(text)
        return cls(d["segment"], int(d["since_ms"]), d["reason"], d.get("model_version"))


def parse_segments(h: dict[str, str]) -> dict[str, StoredAssignment]:
    """The ``cust:{id}:seg`` hash -> segmentation -> assignment (ignores ``_*`` fields)."""
    return {k: StoredAssignment.from_json(v) for k, v in h.items() if not k.startswith("_")}


@dataclass(frozen=True)
class CustomerUpdate:
    """Everything to persist for one evaluated customer."""

    customer_id: str
    assignments: dict[str, StoredAssignment]  # only the ones that changed (or are new)
    previous: dict[str, StoredAssignment]
    changes: Sequence  # SegmentChange models
    churn_propensity: float | None
    next_deadline_ms: int | None


class SegmentStore:
    """Writes evaluation outcomes; one MULTI/EXEC pipeline per batch of customers."""

    def __init__(self, redis, history_cap: int = 50):
        self.redis = redis
        self.history_cap = history_cap

    async def write(self, updates: Iterable[CustomerUpdate]) -> list[tuple[str, str]]:
        """Persist updates atomically with their outbox entries; return (outbox id, change json)."""
        pipe = self.redis.pipeline(transaction=True)
        outbox: list[tuple[int, str]] = []  # (position in the pipeline, payload)
        flow_keys: set[str] = set()
        for u in updates:
            seg_key = keys.segments_key(u.customer_id)
            fields = {name: a.to_json() for name, a in u.assignments.items()}
            if u.churn_propensity is not None:
                fields["_churn"] = f"{u.churn_propensity:.4f}"
            if fields:
                pipe.hset(seg_key, mapping=fields)
            for name, a in u.assignments.items():
                old = u.previous.get(name)
                if old is not None and old.segment == a.segment:
                    continue
                if old is not None:
                    pipe.srem(keys.member_set(name, old.segment), u.customer_id)
                pipe.sadd(keys.member_set(name, a.segment), u.customer_id)
            for change in u.changes:
                payload = change.model_dump_json(by_alias=True)
                pipe.xadd(keys.history_key(u.customer_id), {"change": payload}, maxlen=self.history_cap, approximate=False)
                outbox.append((len(pipe), payload))
                pipe.xadd(keys.OUTBOX, {"change": payload})
                flow_key = f"{keys.FLOWS}:{int(change.emitted_at.timestamp()) // 3600}"
                pipe.hincrby(flow_key, f"{change.segmentation}|{change.from_segment or ''}|{change.to_segment}", 1)
                flow_keys.add(flow_key)
            if u.next_deadline_ms is None:
                pipe.zrem(keys.DEADLINES, u.customer_id)
            else:
                pipe.zadd(keys.DEADLINES, {u.customer_id: u.next_deadline_ms})
        for flow_key in flow_keys:
            pipe.expire(flow_key, FLOWS_TTL_SECONDS)
        if not len(pipe):
            return []
        replies = await pipe.execute()
        return [(_text(replies[pos]), payload) for pos, payload in outbox]

    async def confirm_sent(self, outbox_ids: Sequence[str]) -> None:
        if outbox_ids:
            await self.redis.xdel(keys.OUTBOX, *outbox_ids)

    async def pending_outbox(self, count: int = 1000) -> list[tuple[str, str]]:
        entries = await self.redis.xrange(keys.OUTBOX, count=count)
        return [(_text(i), _text(fields.get(b"change", fields.get("change")))) for i, fields in entries]

    async def claim_due(self, now_ms: int, limit: int = 1000) -> list[str]:
        due = await self.redis.fcall("segflow_claim_due", 1, keys.DEADLINES, now_ms, limit)
        return [_text(c) for c in due]

    async def save_model(self, version: int, blob: bytes) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{keys.MODEL}:v{version}", blob)
        pipe.set(f"{keys.MODEL}:current", version)
        pipe.execute_command("DEL", f"{keys.MODEL}:v{version - 3}")  # keep the last three
        await pipe.execute()

    async def load_model(self) -> tuple[int, bytes] | None:
        version = await self.redis.get(f"{keys.MODEL}:current")
        if version is None:
            return None
        blob = await self.redis.get(f"{keys.MODEL}:v{int(version)}")
        return None if blob is None else (int(version), blob)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v
