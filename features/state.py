"""Per-customer raw state and the pure rule that folds one event into it.

This is the reference semantics of the Redis function in ``segflow.lua``:
the Lua code does the same thing atomically next to the data, and the tests
check both agree. Everything derived (windows, ratios, scores) is computed
from this state by :mod:`features.catalogue`, at a chosen time.

State is bounded: daily buckets cover the last ``BUCKET_DAYS`` days of the
customer's own event time, categories are capped, and the duplicate filter
only remembers events not yet behind the lateness horizon (and at most
``DEDUPE_CAP`` of them).

>>> state = CustomerState()
>>> delta = EventDelta(ts_ms=DAY_MS * 20000 + 5, token="a1", family="purchase",
...                    increments={PURCHASES: 1, REVENUE_CENTS: 1250}, purchase=True)
>>> apply_delta(state, delta, late_before_ms=None)
'applied'
>>> apply_delta(state, delta, late_before_ms=None)
'duplicate'
>>> state.purchases_total, state.revenue_total_cents
(1, 1250)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from features.traits import merge
from streams.events import TRAIT_FAMILIES

DAY_MS = 86_400_000

# Daily bucket layout: the position of each counter in a bucket. One list,
# read by the Lua encoder, the catalogue and the tests.
METRICS = (
    "sessions",
    "page_views",
    "searches",
    "add_to_carts",
    "remove_from_carts",
    "checkouts",
    "purchases",
    "revenue_cents",
    "discount_cents",
    "logins",
    "failed_logins",
)
(
    SESSIONS,
    PAGE_VIEWS,
    SEARCHES,
    ADD_TO_CARTS,
    REMOVE_FROM_CARTS,
    CHECKOUTS,
    PURCHASES,
    REVENUE_CENTS,
    DISCOUNT_CENTS,
    LOGINS,
    FAILED_LOGINS,
) = range(len(METRICS))

BUCKET_DAYS = 90  # the longest window; older buckets are dropped
CATEGORY_CAP = 8  # distinct categories kept per customer; the rest pool in OTHER
OTHER_CATEGORY = "~other"
DEDUPE_CAP = 64  # event ids remembered per customer, at most


class EventDelta(NamedTuple):
    """What one event contributes, independent of any state.

    ``offset`` is (partition, offset) of the source message, or None for
    events not read from Kafka; ``token`` identifies the event for duplicate
    detection (see :func:`streams.events.dedupe_token`). A named tuple, not a
    frozen dataclass: one is built per event, and the dataclass's ``__init__``
    cost 1.7 µs against 0.3 here.
    """

    ts_ms: int
    token: str
    family: str
    increments: Mapping[int, int]
    categories: Mapping[str, int] = MappingProxyType({})
    purchase: bool = False
    visit: bool = False
    login: bool = False
    offset: tuple[int, int] | None = None
    # A profile update (family "profile"): trait name -> value as stored (features.traits).
    traits: Mapping[str, str] = MappingProxyType({})


@dataclass
class CustomerState:
    """Raw, bounded state of one customer, exactly what Redis holds."""

    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    first_purchase_ms: int | None = None
    last_purchase_ms: int | None = None
    prev_purchase_ms: int | None = None
    last_visit_ms: int | None = None
    last_login_ms: int | None = None
    events_total: int = 0
    purchases_total: int = 0
    # Distinct UTC days with a purchase: the buy-till-you-die models count repeat
    # purchases on distinct days (several orders on one day are one purchase occasion).
    purchase_days: int = 0
    # Distinct UTC days with any event: the visit rhythm (segmenter/churn.py, VISIT_INPUTS).
    active_days: int = 0
    revenue_total_cents: int = 0
    discount_total_cents: int = 0
    buckets: dict[int, list[int]] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)  # dedupe token -> ts_ms
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # family -> (partition, offset)
    # Per token class (a token's first character: its family, see
    # features.extract), the newest event time the duplicate filter had to
    # forget while still within the lateness (a burst of more than DEDUPE_CAP
    # events): older unknown events of that family can no longer be told apart
    # from duplicates. Per family, because the topics of one customer are
    # legitimately skewed against each other; one topic's partition is ordered.
    dedupe_floor: dict[str, int] = field(default_factory=dict)
    # The newest event time the lateness made the duplicate filter forget: an event not
    # newer is too late, even for a worker that does not know the watermark yet (just
    # started, or handed the partition in a rebalance), which would otherwise apply a
    # copy of a forgotten event a second time.
    late_floor_ms: int | None = None
    # Set when the customer was erased (``segflow forget``): the tombstone left in place of
    # their state, so that events still in flight or replayed do not bring them back
    # while it lasts (Redis expires it after SEGFLOW_ERASURE_SUPPRESS_DAYS).
    erased_at_ms: int | None = None
    # Profile traits: name -> (value, event time ms it was set at); features.traits.
    traits: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        """Whether the customer has behaviour (an event of a behaviour family)."""
        return self.first_seen_ms is not None

    @property
    def known(self) -> bool:
        """Whether the customer has any state: behaviour or traits."""
        return self.first_seen_ms is not None or bool(self.traits)

    @property
    def traits_updated_ms(self) -> int | None:
        """Event time of the newest profile update that set a trait (None: no traits)."""
        return max((at for _, at in self.traits.values()), default=None)


def forgotten(erased_at_ms: int) -> CustomerState:
    """What an erased customer's state becomes: nothing but the tombstone
    (the reference of ``segflow_forget`` in segflow.lua, for the features hash).

    >>> s = forgotten(5)
    >>> s.exists, apply_delta(s, EventDelta(DAY_MS, "t", "login", {LOGINS: 1}), None), s == forgotten(5)
    (False, 'suppressed', True)
    """
    return CustomerState(erased_at_ms=erased_at_ms)


def _max(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _new_purchase_day(state: CustomerState, ts: int, newest_before: int | None) -> bool:
    """Whether purchases at ``ts`` are the first of their UTC day for this customer.

    Within the bucket window the day's bucket says so; a purchase on an older day
    (possible only with a lateness over :data:`BUCKET_DAYS`) is new unless it falls on
    the day of the first, last or previous purchase, the ones still remembered.
    """
    day = ts // DAY_MS
    newest_day = max(ts, newest_before or ts) // DAY_MS
    if day > newest_day - BUCKET_DAYS:
        bucket = state.buckets.get(day)
        return bucket is None or bucket[PURCHASES] == 0
    known = (state.first_purchase_ms, state.last_purchase_ms, state.prev_purchase_ms)
    return all(t is None or t // DAY_MS != day for t in known)


def _new_active_day(state: CustomerState, ts: int, first_before: int | None, newest_before: int | None) -> bool:
    """Whether an event at ``ts`` is the customer's first of its UTC day: within the
    bucket window, its day has no bucket yet; older, unless it is the day of the first
    or the newest event."""
    day = ts // DAY_MS
    newest_day = max(ts, newest_before or ts) // DAY_MS
    if day > newest_day - BUCKET_DAYS:
        return day not in state.buckets
    return all(t is None or t // DAY_MS != day for t in (first_before, newest_before))


def apply_delta(state: CustomerState, delta: EventDelta, late_before_ms: int | None) -> str:
    """Fold ``delta`` into ``state`` in place; return what happened.

    ``late_before_ms`` is the lateness horizon: the event-time low watermark
    minus the allowed lateness (None while the watermark is unknown).

    ``'duplicate'``: the message offset or the event id was already applied.
    ``'too_late'``: older than the horizon (so never applied twice either).
    ``'unverifiable'``: not older than the horizon, but not newer than an event
    of its family the capped duplicate filter had to forget: it might be a
    duplicate, so it is refused (dead-lettered) rather than risk counting it twice.
    ``'suppressed'``: the customer was erased; the event is dropped (the tombstone
    is checked first, so nothing of an erased customer is ever stored again).
    ``'applied'``: otherwise.
    """
    if state.erased_at_ms is not None:
        return "suppressed"
    if delta.offset is not None:
        seen = state.offsets.get(delta.family)
        if seen is not None and seen[0] == delta.offset[0] and delta.offset[1] <= seen[1]:
            return "duplicate"
    if delta.family in TRAIT_FAMILIES:
        # Traits are last-writer-wins registers in event time (features.traits): applying
        # an update twice, late or out of order changes nothing more, so neither the
        # duplicate filter nor the lateness applies, and no behaviour field moves.
        if delta.offset is not None:
            state.offsets[delta.family] = delta.offset
        state.traits = merge(state.traits, delta.traits, delta.ts_ms)
        return "applied"
    if delta.token in state.recent:
        return "duplicate"
    if late_before_ms is not None and delta.ts_ms < late_before_ms:
        return "too_late"
    if state.late_floor_ms is not None and delta.ts_ms <= state.late_floor_ms:
        return "too_late"
    floor = state.dedupe_floor.get(delta.token[:1])
    if floor is not None and delta.ts_ms <= floor:
        return "unverifiable"

    ts = delta.ts_ms
    newest_before, first_before = state.last_seen_ms, state.first_seen_ms
    state.first_seen_ms = _min(state.first_seen_ms, ts)
    state.last_seen_ms = _max(state.last_seen_ms, ts)
    state.events_total += 1
    if delta.offset is not None:
        state.offsets[delta.family] = delta.offset
    if delta.visit:
        state.last_visit_ms = _max(state.last_visit_ms, ts)
    if delta.login:
        state.last_login_ms = _max(state.last_login_ms, ts)
    if delta.increments.get(PURCHASES, 0) > 0 and _new_purchase_day(state, ts, newest_before):
        state.purchase_days += 1
    if _new_active_day(state, ts, first_before, newest_before):
        state.active_days += 1
    if delta.purchase:
        state.first_purchase_ms = _min(state.first_purchase_ms, ts)
        # Keep the two latest purchase times: order-independent, gives the last gap.
        if state.last_purchase_ms is None or ts >= state.last_purchase_ms:
            state.prev_purchase_ms, state.last_purchase_ms = state.last_purchase_ms, ts
        elif state.prev_purchase_ms is None or ts > state.prev_purchase_ms:
            state.prev_purchase_ms = ts
        state.purchases_total += delta.increments.get(PURCHASES, 0)
        state.revenue_total_cents += delta.increments.get(REVENUE_CENTS, 0)
        state.discount_total_cents += delta.increments.get(DISCOUNT_CENTS, 0)

    day = ts // DAY_MS
    newest_day = state.last_seen_ms // DAY_MS
    if day > newest_day - BUCKET_DAYS:
        bucket = state.buckets.setdefault(day, [0] * len(METRICS))
        for metric, amount in delta.increments.items():
            bucket[metric] += amount
    for old in [d for d in state.buckets if d <= newest_day - BUCKET_DAYS]:
        del state.buckets[old]

    for category, qty in delta.categories.items():
        if category not in state.categories and len(state.categories) >= CATEGORY_CAP:
            category = OTHER_CATEGORY
        state.categories[category] = state.categories.get(category, 0) + qty

    state.recent[delta.token] = ts
    if late_before_ms is not None:
        sweep_filter(state, late_before_ms)
    while len(state.recent) > DEDUPE_CAP:
        oldest = min(state.recent, key=lambda t: (state.recent[t], t))
        forgotten = state.recent.pop(oldest)
        state.dedupe_floor[oldest[:1]] = _max(state.dedupe_floor.get(oldest[:1]), forgotten)
    return "applied"


def sweep_filter(state: CustomerState, late_before_ms: int) -> None:
    """Forget from the duplicate filter what the lateness horizon rules out, keeping
    the newest time forgotten as the customer's lateness floor: an event not newer is
    refused as too late before the filter is asked, whatever the watermark.
    Every applied event does this; the worker's sweep (``segflow_sweep_filters``) does
    it for customers with no next event, so an idle customer's filter does not stay.

    >>> state = CustomerState(recent={"a": 10, "b": 20})
    >>> sweep_filter(state, 15)
    >>> state.recent, state.late_floor_ms
    ({'b': 20}, 10)
    """
    for token in [t for t, t_ms in state.recent.items() if t_ms < late_before_ms]:
        state.late_floor_ms = _max(state.late_floor_ms, state.recent.pop(token))


def weekday(day: int) -> int:
    """Monday=0 .. Sunday=6 for a day number counted from 1970-01-01 (a Thursday)."""
    return (day + 3) % 7
