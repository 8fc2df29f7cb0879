"""How customer state and event deltas are laid out in Redis (pure, no I/O).

A customer's features hash (``cf:{<partition tag>}:<id>``) holds short fields (see docs/OPERATIONS.md):
``fs``/``ls`` first/last event ms, ``fp``/``lp``/``pp`` first/last/previous
purchase ms, ``lv`` last visit ms, ``ll`` last login ms, ``n`` events,
``np`` purchases, ``pd`` distinct purchase days, ``ad`` distinct active days, ``rv`` revenue cents, ``dc`` discount cents, ``d:<day>``
daily bucket (comma-separated counters in :data:`features.state.METRICS`
order, trailing zeros trimmed), ``c:<category>`` items bought, ``nc`` number
of categories, ``q`` duplicate filter (:func:`ring_entries`; ``r`` in older
versions), ``df:<family>`` its floors, ``o:<family>``
``partition:offset`` of the newest applied message; ``t`` profile traits
(:mod:`features.traits`); ``x`` (:data:`TOMBSTONE`) the time
an erased customer was forgotten, the only field of an erased customer's hash.

>>> from features.state import CustomerState, EventDelta, apply_delta, PAGE_VIEWS
>>> s = CustomerState()
>>> _ = apply_delta(s, EventDelta(86_400_000, "t1", "clickstream", {PAGE_VIEWS: 1}, visit=True), None)
>>> h = state_to_hash(s)
>>> h["d:1"], state_from_hash(h) == s
(',1', True)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from features import traits as trait_codec
from features.state import METRICS, CustomerState, EventDelta
from features.traits import base36
from streams.events import TRAIT_FAMILIES

_INT_FIELDS = {
    "fs": "first_seen_ms",
    "ls": "last_seen_ms",
    "fp": "first_purchase_ms",
    "lp": "last_purchase_ms",
    "pp": "prev_purchase_ms",
    "lv": "last_visit_ms",
    "ll": "last_login_ms",
    "lf": "late_floor_ms",
}
_COUNTERS = {
    "n": "events_total",
    "np": "purchases_total",
    "pd": "purchase_days",
    "ad": "active_days",
    "rv": "revenue_total_cents",
    "dc": "discount_total_cents",
}
_CONTROL = re.compile(r"[\x00-\x1f]")
# The tombstone of an erased customer: segflow_apply reads it with the fields it reads
# anyway (one HMGET), and drops the event as suppressed.
TOMBSTONE = "x"


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def pairs(flat: Sequence[bytes | str]) -> dict[str, str]:
    """A Redis HGETALL reply given as a flat list -> dict of str."""
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def ring_entries(value: str) -> list[tuple[str, int]]:
    """The duplicate filter ``q`` -> [(token, ms)], oldest first: times in base 36, the
    first absolute, each next one the difference to the one before.

    >>> ring_entries("cA.mubbs7i8;pB.0;lC.rs")
    [('cA', 1790000000000), ('pB', 1790000000000), ('lC', 1790000001000)]
    """
    out, at = [], None
    for entry in filter(None, value.split(";")):
        token, _, diff = entry.rpartition(".")
        at = int(diff, 36) if at is None else at + int(diff, 36)
        out.append((token, at))
    return out


def ring_value(recent: Mapping[str, int]) -> str:
    """Inverse of :func:`ring_entries`, sorted by (time, token) as ``segflow.lua`` keeps it.

    >>> ring_value({"lC": 1790000001000, "pB": 1790000000000, "cA": 1790000000000})
    'cA.mubbs7i8;pB.0;lC.rs'
    """
    parts, prev = [], None
    for token, at in sorted(recent.items(), key=lambda kv: (kv[1], kv[0])):
        parts.append(f"{token}.{base36(at if prev is None else at - prev)}")
        prev = at
    return ";".join(parts)


def state_from_hash(h: Mapping[str, str], dedupe: bool = True) -> CustomerState:
    """Parse a customer hash (as returned by HGETALL, decoded) into state.

    ``dedupe=False`` leaves the duplicate filter out (``recent`` empty): features
    never read it, and parsing it was a third of this function's time.
    """
    s = CustomerState()
    for field, value in h.items():
        if field in _INT_FIELDS:
            setattr(s, _INT_FIELDS[field], int(value))
        elif field in _COUNTERS:
            setattr(s, _COUNTERS[field], int(value))
        elif field.startswith("d:"):
            counts = [int(v) if v else 0 for v in value.split(",")]
            s.buckets[int(field[2:])] = counts + [0] * (len(METRICS) - len(counts))
        elif field.startswith("c:"):
            s.categories[field[2:]] = int(value)
        elif field == "q":
            if dedupe:
                s.recent.update(ring_entries(value))
        elif field == "r":  # the filter as older versions wrote it
            if dedupe:
                for entry in filter(None, value.split(";")):
                    sep = "." if "." in entry else ":"  # token:<decimal ms> from older still
                    token, _, at = entry.rpartition(sep)
                    s.recent[token] = int(at, 36 if sep == "." else 10)
        elif field.startswith("df:"):
            s.dedupe_floor[field[3:]] = int(value)
        elif field.startswith("o:"):
            partition, _, offset = value.partition(":")
            s.offsets[field[2:]] = (int(partition), int(offset))
        elif field == TOMBSTONE:
            s.erased_at_ms = int(value)
        elif field == trait_codec.FIELD:
            s.traits = trait_codec.unpack(value)
    return s


def state_to_hash(s: CustomerState) -> dict[str, str]:
    """The hash the Lua function would hold for ``s`` (used to compare both)."""
    h: dict[str, str] = {}
    for field, attr in _INT_FIELDS.items():
        if getattr(s, attr) is not None:
            h[field] = str(getattr(s, attr))
    for field, attr in _COUNTERS.items():
        if getattr(s, attr):
            h[field] = str(getattr(s, attr))
    for day, counts in s.buckets.items():
        last = max((i + 1 for i, v in enumerate(counts) if v), default=0)
        h[f"d:{day}"] = ",".join(str(v) if v else "" for v in counts[:last])
    for cat, qty in s.categories.items():
        h[f"c:{cat}"] = str(qty)
    if s.recent:
        h["q"] = ring_value(s.recent)
    for initial, at in s.dedupe_floor.items():
        h[f"df:{initial}"] = str(at)
    for family, (p, o) in s.offsets.items():
        h[f"o:{family}"] = f"{p}:{o}"
    if s.erased_at_ms is not None:
        h[TOMBSTONE] = str(s.erased_at_ms)
    if s.traits:
        h[trait_codec.FIELD] = trait_codec.pack(s.traits)
    return h


def delta_args(delta: EventDelta, late_before_ms: int | None, want_state: bool = True) -> list[str | int]:
    """ARGV for ``FCALL segflow_apply`` (see features/segflow.lua). A profile update's
    traits go where a purchase's categories do (:func:`features.traits.update_arg`)."""
    flags = ("p" if delta.purchase else "") + ("v" if delta.visit else "") + ("l" if delta.login else "")
    partition, offset = ("", 0) if delta.offset is None else delta.offset
    increments = ",".join(f"{i}:{n}" for i, n in delta.increments.items())
    if delta.family in TRAIT_FAMILIES:
        categories = trait_codec.update_arg({name: _CONTROL.sub("", v) for name, v in delta.traits.items()})
    else:
        categories = "\x1e".join(f"{_CONTROL.sub('', c)}\x1f{q}" for c, q in delta.categories.items())
    horizon = "" if late_before_ms is None else late_before_ms
    return [delta.ts_ms, delta.token, delta.family, partition, offset, horizon, flags, increments, categories, "1" if want_state else "0"]
