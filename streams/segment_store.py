"""Redis persistence of segment state: the imperative shell of the segmenter.

Per customer (features.keys.Layout names the keys): the segments hash (one
field per segmentation plus ``_churn``) and the history (capped list of compact
changes, newest first). Per input partition, in the slot of its customers:
membership sets, deadlines (time-based re-evaluations), the outbox (changes not
yet confirmed on Kafka) and flows (transition counts). Global: the behaviour
model snapshots.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from features import keys
from features.keys import Layout
from features.pipeline import run_pipeline
from features.traits import base36
from segmenter.changes import FIELD_SEP, history_entry

FLOWS_TTL_SECONDS = 8 * 86_400
DEADLINE_LEASE_MS = 30_000  # of the deadline clock (wall, or event time in replays)


@dataclass(frozen=True)
class StoredAssignment:
    segment: str
    since_ms: int
    reason: str
    model_version: int | None = None
    seq: int = 0

    def encode(self) -> str:
        """``segment``, ``since_ms`` (base 36), ``reason``, ``model_version``, ``seq`` (base 36) joined by the
        unit separator ``\\x1f``: no key names, no quotes (a JSON object's key names were
        a third of a customer's segment hash, docs/PERFORMANCE.md). A JSON array when a
        text holds the separator.

        >>> a = StoredAssignment("at_risk", 1790000000000, "rhythm_at_risk", 3, 12)
        >>> a.encode().split("\x1f")
        ['at_risk', 'mubbs7i8', 'rhythm_at_risk', '3', 'c']
        >>> StoredAssignment.decode(a.encode()) == a
        True
        >>> StoredAssignment.decode('["at_risk",1790000000000,"rhythm_at_risk",3]').seq  # as older versions wrote: no seq
        0
        """
        if FIELD_SEP in self.segment or FIELD_SEP in self.reason:
            return json.dumps([self.segment, self.since_ms, self.reason, self.model_version, self.seq], separators=(",", ":"))
        version = "" if self.model_version is None else str(self.model_version)
        return FIELD_SEP.join((self.segment, base36(self.since_ms), self.reason, version, base36(self.seq)))

    @classmethod
    def decode(cls, text: str) -> StoredAssignment:
        if not text.startswith(("[", "{")):
            segment, since, reason, version, *seq = text.split(FIELD_SEP)
            return cls(segment, int(since, 36), reason, int(version) if version else None, int(seq[0], 36) if seq else 0)
        d = json.loads(text)
        if isinstance(d, dict):  # written by an older segflow
            return cls(d["segment"], int(d["since_ms"]), d["reason"], d.get("model_version"), int(d.get("seq", 0)))
        segment, since_ms, reason, model_version, *rest = d
        return cls(segment, int(since_ms), reason, model_version, int(rest[0]) if rest else 0)


def commit_token(changes: Sequence[Any]) -> str:
    """A short fingerprint of a commit's changes ('' without changes).

    >>> commit_token([]), len(commit_token([type("C", (), {"change_id": "x1"})()]))
    ('', 10)
    """
    if not changes:
        return ""
    ids = "|".join(c.change_id for c in changes)
    return hashlib.blake2b(ids.encode(), digest_size=5).hexdigest()


def parse_segments(h: dict[str, str]) -> dict[str, StoredAssignment]:
    """The segments hash -> segmentation -> assignment (ignores ``_*`` fields)."""
    return {k: StoredAssignment.decode(v) for k, v in h.items() if not k.startswith("_")}


@dataclass(frozen=True)
class CustomerUpdate:
    """Everything to persist for one evaluated customer."""

    customer_id: str
    assignments: dict[str, StoredAssignment]  # only the ones that changed (or are new)
    previous: dict[str, StoredAssignment]
    changes: Sequence  # SegmentChange models
    churn_propensity: float | None
    next_deadline_ms: int | None
    version: int = 0  # the ``_v`` of the segments the evaluation read
    evaluated_at_ms: int = 0  # when a conflict re-queues the customer
    seen_ms: int | None = None  # newest event time evaluated (event path), stored as ``_e``


def evaluated_upto(h: dict[str, str]) -> int | None:
    """Newest event time whose state was evaluated and committed (``_e``)."""
    return int(h["_e"]) if "_e" in h else None


def version_of(h: dict[str, str]) -> int:
    """The compare-and-set version of a customer's segments hash."""
    return int(h.get("_v", 0))


@dataclass
class WriteOutcome:
    changes: list[tuple[str, str]]  # (outbox id, change json) of committed changes
    conflicts: list[str]  # customers re-queued: another evaluation committed first


def outbox_id(partition: int, stream_id: str) -> str:
    """An outbox entry's id across partitions: ``<partition>/<stream entry id>``.

    >>> outbox_id(3, "1000-0"), split_outbox_id("3/1000-0")
    ('3/1000-0', (3, '1000-0'))
    """
    return f"{partition}/{stream_id}"


def split_outbox_id(entry_id: str) -> tuple[int, str]:
    p, _, stream_id = entry_id.partition("/")
    return int(p), stream_id


def _stream_order(entry_id: str) -> tuple[int, ...]:
    return tuple(int(x) for x in split_outbox_id(entry_id)[1].split("-"))


def stale_outbox(pending: Iterable[tuple[str, str]], now_ms: int, in_flight: Collection[str], older_than_ms: int = 10_000) -> list[tuple[str, str]]:
    """Outbox entries (id, change) to send again: committed over ``older_than_ms`` ago and
    not being published by this worker right now (``in_flight``). Those may be old
    because Redis was away while their publish waited to delete them; sending them
    from here too would put each change on the topic twice.

    >>> stale_outbox([("0/1000-0", "a"), ("1/1000-1", "b"), ("0/9500-0", "c")], now_ms=12_000, in_flight={"1/1000-1"})
    [('0/1000-0', 'a')]
    """
    cutoff_ms = now_ms - older_than_ms
    return [(i, p) for i, p in pending if _stream_order(i)[0] < cutoff_ms and i not in in_flight]


class SegmentStore:
    """Writes evaluation outcomes: one ``segflow_commit`` call per customer, pipelined."""

    def __init__(self, redis, layout: Layout, history_cap: int = 10):
        self.redis = redis
        self.layout = layout
        self.history_cap = history_cap

    def deadlines_of(self, customer_id: str) -> str:
        return self.layout.deadlines_key(self.layout.partition(customer_id))

    async def write(self, updates: Iterable[CustomerUpdate]) -> WriteOutcome:
        """Commit each customer's update atomically with its outbox entries, unless
        its segments changed since they were read (then it is re-queued)."""
        commands = []
        batch: list[tuple[CustomerUpdate, list[str]]] = []
        for u in updates:
            p = self.layout.partition(u.customer_id)
            key_list = [self.layout.segments_key(u.customer_id), self.layout.history_key(u.customer_id), self.layout.outbox(p), self.layout.deadlines_key(p)]

            def key_no(k: str, key_list: list[str] = key_list) -> int:
                key_list.append(k)
                return len(key_list)

            argv: list = [
                u.customer_id,
                u.version,
                "" if u.churn_propensity is None else f"{u.churn_propensity:.4f}",
                "" if u.next_deadline_ms is None else u.next_deadline_ms,
                self.history_cap,
                FLOWS_TTL_SECONDS,
                u.evaluated_at_ms,
                "" if u.seen_ms is None else u.seen_ms,
                commit_token(u.changes),
            ]
            moved = [(name, a) for name, a in u.assignments.items() if u.previous.get(name) is None or u.previous[name].segment != a.segment]
            argv.append(len(u.assignments))
            for name, a in u.assignments.items():
                old = u.previous.get(name)
                old_no = key_no(self.layout.member_set(p, name, old.segment)) if old is not None and (name, a) in moved else 0
                argv += [name, a.encode(), old_no, key_no(self.layout.member_set(p, name, a.segment))]
            payloads = []
            argv.append(len(u.changes))
            for change in u.changes:
                payload = change.model_dump_json(by_alias=True)
                payloads.append(payload)
                entry = history_entry(change)  # the move only; the snapshot is on the topic
                flow_key = self.layout.flows(p, int(change.emitted_at.timestamp()) // 3600)
                argv += [payload, entry, key_no(flow_key), f"{change.segmentation}|{change.from_segment or ''}|{change.to_segment}"]
            commands.append(("FCALL", "segflow_commit", len(key_list), *key_list, *argv))
            batch.append((u, payloads))
        if not batch:
            return WriteOutcome([], [])
        # A resend after a lost connection is safe: a commit that did land makes the
        # resent one lose its compare-and-set (a conflict, re-queued).
        replies = await run_pipeline(self.redis, commands)
        out = WriteOutcome([], [])
        landed: list[tuple[CustomerUpdate, list[str]]] = []
        for (u, payloads), reply in zip(batch, replies, strict=False):
            status = _text(reply[0])
            if status == "conflict":
                out.conflicts.append(u.customer_id)
            elif status == "landed":
                landed.append((u, payloads))
            else:
                p = self.layout.partition(u.customer_id)
                out.changes.extend(zip((outbox_id(p, _text(i)) for i in reply[1:]), payloads, strict=False))
        if landed:
            out.changes.extend(await self._outbox_entries_of([(self.layout.partition(u.customer_id), p) for u, payloads in landed for p in payloads]))
        return out

    async def _outbox_entries_of(self, payloads: Sequence[tuple[int, str]], scan: int = 10_000) -> list[tuple[str, str]]:
        """The outbox entries (id, payload) holding these (partition, payload) pairs, in outbox
        order: a commit retried after its reply was lost had landed, and its entries are still to send."""
        found = []
        for p in sorted({p for p, _ in payloads}):
            wanted = {payload for q, payload in payloads if q == p}
            for i, fields in await self.redis.xrevrange(self.layout.outbox(p), count=scan):
                payload = _text(fields.get(b"change", fields.get("change")))
                if payload in wanted:
                    found.append((outbox_id(p, _text(i)), payload))
        return sorted(found, key=lambda e: _stream_order(e[0]))

    async def confirm_sent(self, outbox_ids: Sequence[str]) -> None:
        by_partition: dict[int, list[str]] = {}
        for i in outbox_ids:
            p, stream_id = split_outbox_id(i)
            by_partition.setdefault(p, []).append(stream_id)
        if by_partition:
            await run_pipeline(self.redis, [("XDEL", self.layout.outbox(p), *ids) for p, ids in by_partition.items()])

    async def pending_outbox(self, count: int = 1000, partitions: Iterable[int] | None = None) -> list[tuple[str, str]]:
        """Up to ``count`` outbox entries of ``partitions`` (default: all), oldest first per
        partition (one customer's changes are in one partition, so in order)."""
        out: list[tuple[str, str]] = []
        for p in range(self.layout.partitions) if partitions is None else sorted(partitions):
            if len(out) >= count:
                break
            for i, fields in await self.redis.xrange(self.layout.outbox(p), count=count - len(out)):
                out.append((outbox_id(p, _text(i)), _text(fields.get(b"change", fields.get("change")))))
        return out

    async def claim_due(self, now_ms: int, limit: int = 1000, lease_ms: int = DEADLINE_LEASE_MS, partitions: Iterable[int] | None = None) -> list[str]:
        """Customers of ``partitions`` (default: all) whose deadline is due, leased until
        ``now_ms + lease_ms`` (the commit of their evaluation sets the next deadline; a
        crash before it lets the lease run out and the customer be claimed again)."""
        claimed: list[str] = []
        for p in range(self.layout.partitions) if partitions is None else sorted(partitions):
            if len(claimed) >= limit:
                break
            due = await self.redis.fcall("segflow_claim_due", 1, self.layout.deadlines_key(p), now_ms, limit - len(claimed), now_ms + lease_ms)
            claimed += [_text(c) for c in due]
        return claimed

    async def drop_deadlines(self, customer_ids: Sequence[str]) -> None:
        if customer_ids:
            await run_pipeline(self.redis, [("ZREM", self.deadlines_of(c), c) for c in customer_ids])

    async def save_model(self, version: int, blob: bytes, churn: str | None = None, keep_older: bool = True) -> None:
        """Store a model snapshot (the last three are kept; only this one with
        ``keep_older=False``: after an erasure, older ones may hold the customer) and, as
        JSON for readers that do not unpickle (``segflow customer``, HTTP), the churn
        model's parameters."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{keys.MODEL}:v{version}", blob)
        if churn is not None:
            pipe.set(keys.CHURN_MODEL, churn)
        pipe.set(f"{keys.MODEL}:current", version)
        older = [version - 3] if keep_older else [version - 1, version - 2, version - 3]
        pipe.execute_command("DEL", *(f"{keys.MODEL}:v{v}" for v in older))
        await pipe.execute()

    async def load_model(self) -> tuple[int, bytes] | None:
        version = await self.redis.get(f"{keys.MODEL}:current")
        if version is None:
            return None
        blob = await self.redis.get(f"{keys.MODEL}:v{int(version)}")
        return None if blob is None else (int(version), blob)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v
