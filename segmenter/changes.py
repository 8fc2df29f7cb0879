"""The segment-change event: what campaign systems receive on ``segment-changes``.

JSON on the wire with ``from`` / ``to`` (Python names ``from_segment`` /
``to_segment``, since ``from`` is a keyword). ``change_id`` is a hash of what
makes a change unique, so a change re-sent after a crash (outbox relay) or
re-derived in a replay has the same id and subscribers can drop duplicates.

>>> change = SegmentChange.create(customer_id="c1", segmentation="lifecycle", from_segment="active",
...                               to_segment="at_risk", reason="buyer_silent_14d", model_version=3,
...                               occurred_at_ms=1_767_600_000_000, cause="deadline:1767600000000",
...                               features={"days_since_last_activity": 14.0})
>>> change.change_id == change_id_of("c1", "lifecycle", "active", "at_risk", 1_767_600_000_000, "deadline:1767600000000")
True
>>> wire = change.model_dump_json()
>>> '"from":"active"' in wire and '"to":"at_risk"' in wire
True
>>> SegmentChange.model_validate_json(wire) == change
True
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from features.traits import base36
from segmenter.config import SEGMENTATIONS

SCHEMA_VERSION: Final = 1
ERASURE_REASON: Final = "erasure"  # the reason of the final change of an erased customer (to: null)
RETENTION_REASON: Final = "retention"  # the same, for a customer forgotten after SEGFLOW_RETENTION_DAYS of silence


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def change_id_of(customer_id: str, segmentation: str, from_segment: str | None, to_segment: str | None, occurred_at_ms: int, cause: str) -> str:
    """Deterministic id of a change: 32 hex chars of BLAKE2b over its identity.

    ``cause`` tells apart two changes at the same millisecond (the event id
    that triggered the evaluation, or the deadline that fired).
    """
    identity = json.dumps([customer_id, segmentation, from_segment, to_segment, int(occurred_at_ms), cause], separators=(",", ":"))
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()


class SegmentChange(BaseModel):
    """One customer moved from one segment to another in one segmentation."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        serialize_by_alias=True,
        title="SegmentChange",
        json_schema_serialization_defaults_required=True,  # always present on the wire
    )

    change_id: str = Field(description="Deterministic: the same change always has the same id; de-duplicate on it.")
    customer_id: str
    segmentation: str = Field(description=f"The segmentation: one of {', '.join(SEGMENTATIONS)}.")
    from_segment: str | None = Field(alias="from", description="The segment left; null on the customer's first assignment.")
    to_segment: str | None = Field(
        alias="to",
        description='The segment entered; null when the customer was erased (reason "erasure"): drop the customer, and start over if a first assignment (from null, seq 1) follows.',
    )
    seq: int = Field(
        ge=1,
        description=(
            "This customer's change number in this segmentation: 1 on the first assignment, +1 per change. "
            "Changes of one customer are published in seq order; a subscriber drops any change whose seq is not "
            "above the last it applied (a repeat, or a stale re-send)."
        ),
    )
    reason: str = Field(description="The rule id, cluster or RFM scores that put the customer there.")
    explanation: str | None = Field(default=None, description="The numbers behind the decision, e.g. the churn model's, in words.")
    model_version: int | None = Field(description="Snapshot version of the learned models (clusters, quintiles) used.")
    occurred_at: AwareDatetime = Field(description="Event time of the evaluation that moved the customer.")
    emitted_at: AwareDatetime = Field(description="When the change was decided (the engine's clock).")
    features: dict[str, float | None] = Field(default_factory=dict, description="The features the decision saw.")
    schema_version: Literal[1] = SCHEMA_VERSION

    @classmethod
    def create(
        cls,
        *,
        customer_id: str,
        segmentation: str,
        from_segment: str | None,
        to_segment: str | None,
        reason: str,
        model_version: int | None,
        occurred_at_ms: int,
        cause: str,
        features: dict[str, float | None],
        seq: int = 1,
        emitted_at_ms: int | None = None,
        explanation: str | None = None,
    ) -> SegmentChange:
        """Build a change with its deterministic ``change_id``."""
        return cls(
            change_id=change_id_of(customer_id, segmentation, from_segment, to_segment, occurred_at_ms, cause),
            customer_id=customer_id,
            segmentation=segmentation,
            from_segment=from_segment,
            to_segment=to_segment,
            seq=seq,
            reason=reason,
            explanation=explanation,
            model_version=model_version,
            occurred_at=ms_to_datetime(occurred_at_ms),
            emitted_at=ms_to_datetime(occurred_at_ms if emitted_at_ms is None else emitted_at_ms),
            features=dict(features),
        )

    @property
    def occurred_at_ms(self) -> int:
        return datetime_to_ms(self.occurred_at)

    @property
    def erased(self) -> bool:
        """The final change of an erased customer: no segment any more."""
        return self.to_segment is None


class SegmentState(BaseModel):
    """A customer's current segment in one segmentation: the value on the compacted
    ``segment-state`` topic, keyed by :func:`state_key`. A new subscriber reads that
    topic from the beginning (the last record per key wins) and then follows
    ``segment-changes``, dropping changes whose ``seq`` is not above the state's."""

    model_config = ConfigDict(frozen=True)

    customer_id: str
    segmentation: str
    segment: str
    seq: int = Field(ge=1, description="The seq of the change that put the customer there.")
    since: AwareDatetime
    reason: str
    change_id: str
    schema_version: Literal[1] = SCHEMA_VERSION

    @classmethod
    def of(cls, change: SegmentChange) -> SegmentState:
        """The state a change leaves behind (an erasure leaves none: a tombstone on the topic).

        >>> c = SegmentChange.create(customer_id="c1", segmentation="lifecycle", from_segment="active", to_segment="at_risk",
        ...                          reason="rhythm_at_risk", model_version=1, occurred_at_ms=0, cause="deadline:0", features={}, seq=4)
        >>> s = SegmentState.of(c)
        >>> s.segment, s.seq, state_key(s.customer_id, s.segmentation)
        ('at_risk', 4, b'["c1","lifecycle"]')
        """
        assert change.to_segment is not None, "an erasure leaves no state"
        return cls(
            customer_id=change.customer_id,
            segmentation=change.segmentation,
            segment=change.to_segment,
            seq=change.seq,
            since=change.occurred_at,
            reason=change.reason,
            change_id=change.change_id,
        )


def state_key(customer_id: str, segmentation: str) -> bytes:
    """The compacted topic's key: ``["<customer_id>","<segmentation>"]`` (JSON: any id is safe)."""
    return json.dumps([customer_id, segmentation], separators=(",", ":")).encode()


def state_record(change: dict[str, Any]) -> tuple[bytes, bytes | None]:
    """(key, value) on the state topic for a change as published (its JSON, parsed):
    :class:`SegmentState`'s fields, without building the models on the hot path; for an
    erasure (``to`` null) a tombstone (value None), so compaction forgets the customer.

    >>> c = SegmentChange.create(customer_id="c1", segmentation="value", from_segment=None, to_segment="loyal",
    ...                          reason="r", model_version=None, occurred_at_ms=0, cause="event:e", features={})
    >>> key, value = state_record(json.loads(c.model_dump_json(by_alias=True)))
    >>> SegmentState.model_validate_json(value) == SegmentState.of(c)
    True
    >>> state_record({"customer_id": "c1", "segmentation": "value", "to": None})
    (b'["c1","value"]', None)
    """
    if change["to"] is None:
        return state_key(change["customer_id"], change["segmentation"]), None
    value = {
        "customer_id": change["customer_id"],
        "segmentation": change["segmentation"],
        "segment": change["to"],
        "seq": change["seq"],
        "since": change["occurred_at"],
        "reason": change["reason"],
        "change_id": change["change_id"],
        "schema_version": SCHEMA_VERSION,
    }
    return state_key(change["customer_id"], change["segmentation"]), json.dumps(value, separators=(",", ":")).encode()


def segment_change_json_schema() -> dict[str, Any]:
    """JSON Schema of the change message as it is on the wire (``from`` / ``to``)."""
    return SegmentChange.model_json_schema(by_alias=True, mode="serialization")


# Per-customer history in Redis keeps each move in a compact form: the full
# change (with its feature snapshot) is on the segment-changes topic, by
# change_id. As a capped Redis LIST of these; as a stream of the change JSON
# they took 8.3 KB per customer (a stream node alone reserves ~4 KB), as JSON
# arrays ~100 bytes an entry, as unit-separated text ~82 (docs/PERFORMANCE.md).
HISTORY_FIELDS = ("change_id", "occurred_at_ms", "segmentation", "from", "to", "reason", "model_version")
FIELD_SEP = "\x1f"  # ASCII unit separator: never in segment names or rule ids; also used by streams.segment_store


def history_entry(change: SegmentChange) -> str:
    """One history entry: :data:`HISTORY_FIELDS` joined by ``\\x1f`` (the change id in
    base64, the time in base 36, "" for no ``from`` or ``model_version``); a JSON array
    instead when a text holds that separator or ``from`` is the empty string.

    >>> c = SegmentChange.create(customer_id="c1", segmentation="lifecycle", from_segment="active", to_segment="at_risk",
    ...     reason="buyer_silent_14d", model_version=3, occurred_at_ms=1_790_000_000_000, cause="deadline", features={})
    >>> entry = history_entry(c)
    >>> entry.split("\x1f")[1:]
    ['mubbs7i8', 'lifecycle', 'active', 'at_risk', 'buyer_silent_14d', '3']
    >>> read_history_entry(entry)["to"], read_history_entry(entry)["occurred_at"]
    ('at_risk', '2026-09-21T14:13:20Z')
    >>> read_history_entry(entry)["change_id"] == c.change_id
    True
    """
    # The id as 22 base64 characters instead of 32 hex ones: same bits, 10 bytes less per entry.
    short_id = base64.urlsafe_b64encode(bytes.fromhex(change.change_id)).decode().rstrip("=")
    # (an erasure's change, to null, is never in a history: the history goes with the customer)
    texts = (change.segmentation, change.from_segment or "", change.to_segment or "", change.reason)
    if change.from_segment == "" or any(FIELD_SEP in t for t in texts):
        values = [short_id, change.occurred_at_ms, change.segmentation, change.from_segment, change.to_segment, change.reason, change.model_version]
        return json.dumps(values, separators=(",", ":"))
    version = "" if change.model_version is None else str(change.model_version)
    return FIELD_SEP.join((short_id, base36(change.occurred_at_ms), *texts, version))


def read_history_entry(entry: str | bytes) -> dict[str, Any]:
    """An entry (either form, or a JSON array as older versions wrote) as a dict of
    :data:`HISTORY_FIELDS`, plus ``occurred_at`` as ISO 8601 (UTC)."""
    if isinstance(entry, bytes):
        entry = entry.decode()
    if entry.startswith("["):
        out = dict(zip(HISTORY_FIELDS, json.loads(entry), strict=False))
    else:
        short_id, at, segmentation, from_segment, to_segment, reason, version = entry.split(FIELD_SEP)
        out = {
            "change_id": short_id,
            "occurred_at_ms": int(at, 36),
            "segmentation": segmentation,
            "from": from_segment or None,
            "to": to_segment,
            "reason": reason,
            "model_version": int(version) if version else None,
        }
    out["change_id"] = base64.urlsafe_b64decode(out["change_id"] + "==").hex()
    out["occurred_at"] = ms_to_datetime(out["occurred_at_ms"]).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out
