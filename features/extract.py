"""From a validated event to the :class:`~features.state.EventDelta` it contributes."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from features.state import (
    ADD_TO_CARTS,
    CHECKOUTS,
    DISCOUNT_CENTS,
    FAILED_LOGINS,
    LOGINS,
    PAGE_VIEWS,
    PURCHASES,
    REMOVE_FROM_CARTS,
    REVENUE_CENTS,
    SEARCHES,
    SESSIONS,
    EventDelta,
)
from streams.events import ClickstreamEvent, Event, LoginEvent, ProfileEvent, PurchaseEvent, dedupe_token

_CLICK_METRIC = {
    "session_start": SESSIONS,
    "page_view": PAGE_VIEWS,
    "search": SEARCHES,
    "add_to_cart": ADD_TO_CARTS,
    "remove_from_cart": REMOVE_FROM_CARTS,
    "checkout_started": CHECKOUTS,
}


def cents(amount: Decimal) -> int:
    """Money as integer cents, so sums are exact and order-independent."""
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


_FAMILY_INITIAL = {ClickstreamEvent: "c", PurchaseEvent: "p", LoginEvent: "l", ProfileEvent: "f"}


def delta_of(event: Event, offset: tuple[int, int] | None = None) -> EventDelta:
    """What ``event`` adds to its customer's state.

    >>> from streams.events import decode
    >>> e = decode("purchase", b'{"event_id":"x","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z",'
    ...            b'"order_id":"o","amount":"19.99","currency":"USD","discount":"5",'
    ...            b'"items":[{"product_id":"p","category":"books","quantity":2,"unit_price":"12.49"}]}')
    >>> d = delta_of(e)
    >>> d.increments, d.categories
    ({6: 1, 7: 1999, 8: 500}, {'books': 2})
    """
    ts_ms = round(event.ts * 1000)
    # The first character names the family: the duplicate filter keeps its
    # overflow floor per family (features.state.apply_delta).
    token = _FAMILY_INITIAL[type(event)] + dedupe_token(event.event_id)
    if isinstance(event, ClickstreamEvent):
        return EventDelta(ts_ms, token, "clickstream", {_CLICK_METRIC[event.type]: 1}, visit=True, offset=offset)
    if isinstance(event, PurchaseEvent):
        categories: dict[str, int] = {}
        for item in event.items:
            categories[item.category] = categories.get(item.category, 0) + item.quantity
        increments = {PURCHASES: 1, REVENUE_CENTS: cents(event.amount)}
        if event.discount:
            increments[DISCOUNT_CENTS] = cents(event.discount)
        return EventDelta(ts_ms, token, "purchase", increments, categories, purchase=True, offset=offset)
    if isinstance(event, LoginEvent):
        metric = LOGINS if event.success else FAILED_LOGINS
        return EventDelta(ts_ms, token, "login", {metric: 1}, login=event.success, offset=offset)
    if isinstance(event, ProfileEvent):
        # Traits only: no counter, no flag (a profile update is not behaviour).
        return EventDelta(ts_ms, token, "profile", {}, offset=offset, traits=event.trait_values())
    raise TypeError(f"not an event: {type(event).__name__}")
