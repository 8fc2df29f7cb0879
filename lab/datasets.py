"""Real data for replays: the CDNOW master file (23,570 customers, 69,659 purchases, 1997-1998).

It ships inside the ``lifetimes`` wheel (a test extra). Each line becomes a
purchase event at 00:00 UTC of its date; ``number_of_cds`` becomes the item
quantity in category ``cds``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from streams.events import PurchaseEvent, PurchaseItem


def cdnow_path() -> Path:
    import lifetimes

    return Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt"


def cdnow_rows(path: Path | None = None) -> Iterator[tuple[int, str, datetime, int, Decimal]]:
    """(line number, customer id, date, number of CDs, dollar value) per purchase line."""
    with open(path or cdnow_path()) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 4 or not parts[0].isdigit():
                continue
            cid, date, cds, value = parts
            when = datetime.strptime(date, "%Y%m%d").replace(tzinfo=UTC)
            yield n, f"cdnow-{cid}", when, int(cds), Decimal(value)


def cdnow_events(path: Path | None = None) -> Iterator[tuple[str, PurchaseEvent]]:
    """The file as (family, event), in file order (by customer, then date)."""
    for n, cid, when, cds, value in cdnow_rows(path):
        items = [PurchaseItem(product_id="cd", category="cds", quantity=cds, unit_price=(value / cds).quantize(Decimal("0.0001")))] if cds > 0 else []
        yield (
            "purchase",
            PurchaseEvent(
                event_id=f"cdnow-line-{n}",
                customer_id=cid,
                occurred_at=when,
                order_id=f"cdnow-{n}",
                amount=value,
                currency="USD",
                items=items,
            ),
        )
