"""Batches from a Faust stream that keep filling while the caller works on the last one.

Faust's ``Stream.take_events`` stops accepting events while its caller handles
a batch: the drainer task blocks on the first event after the batch was
yielded. A segflow batch spends most of its time waiting for Redis (a
pipelined round trip, then the commit), and during that wait the event loop
had nothing to do; Faust's delivery and the engine ran strictly one after the
other. :func:`take_overlapped` keeps a second buffer that Faust fills during
that wait, so delivery overlaps the Redis round trips (docs/PERFORMANCE.md).

What stays as with ``take_events``:

* a batch holds at most ``max_`` events and is handed out at the latest
  ``within`` seconds after its first event arrived;
* events are acknowledged only once the caller asks for the next batch, so an
  offset is never committed for an event whose batch was not handled; if the
  caller raises, nothing of that batch is acknowledged and it is redelivered;
* batches come in arrival order, and one is handed out only after the caller
  is done with the previous one (per-partition order holds);
* at most ``max_`` events wait while a batch is handled: a full buffer stops
  Faust's delivery (back-pressure).

Under a backlog, batches grow: each batch would otherwise hold only what
arrived while the previous one was handled (~150 events in the bench), and
small batches pay the per-batch costs (round trips, one evaluation per
customer per batch) more often. When a batch is due but not full and the
partitions it reads hold at least enough unread events to fill it (their high
watermark minus what was delivered, from ``highwater``), it waits up to
``backlog_within`` to fill. Those events are there already: the wait is spent
delivering them, which costs the same now as later, and no event waits for
traffic that has not arrived. With no backlog, nothing changes. If such a wait
brings in less than a tenth of what it waited for, the promised events are not
arriving (a slow fetch; a high watermark that counts events still in flight),
and batches stop waiting for a backlog for ten windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from faust.types import TP, EventT, StreamT

# After a backlog wait that brought less than a tenth of the room, no backlog
# wait for this many backlog windows (1 s at the default 0.1 s).
BACKLOG_PAUSE_WAITS = 10


def take_overlapped(
    stream: StreamT, max_: int, within: float, highwater: Callable[[TP], int | None] | None = None, backlog_within: float = 0.0
) -> AsyncIterator[list[EventT]]:
    """Lists of up to ``max_`` events of ``stream``, each out within ``within`` seconds of its first
    (``within + backlog_within`` when ``highwater(tp)``, the offset after a partition's last
    message, says enough events are waiting to fill the batch)."""
    if max_ < 1 or within <= 0 or backlog_within < 0:
        raise ValueError(f"need max_ >= 1, within > 0 and backlog_within >= 0, got {max_!r}, {within!r} and {backlog_within!r}")
    batches = _take_overlapped(stream, max_, within, highwater if backlog_within else None, backlog_within)
    # Stream.on_stop closes it, as it does take_events' (a faust.Stream attribute StreamT does not declare).
    stream._active_agens.add(batches)  # type: ignore[attr-defined]
    return batches


async def _take_overlapped(stream: Any, max_: int, within: float, highwater, backlog_within: float) -> AsyncIterator[list[EventT]]:
    loop = asyncio.get_running_loop()
    pending: list[EventT] = []
    delivered: dict[TP, int] = {}  # last offset delivered per partition
    first_at = 0.0  # loop time the oldest pending event arrived
    backlog_off_until = 0.0  # loop time before which a due batch does not wait for a backlog
    full = asyncio.Event()  # pending holds max_ events
    has_room = asyncio.Event()
    has_room.set()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal first_at
        while len(pending) >= max_:
            has_room.clear()
            await stream.wait(has_room)
            if stream.should_stop:
                return value
        if not pending:
            first_at = loop.time()
        event = stream.current_event
        pending.append(event)
        if highwater is not None:
            delivered[event.message.tp] = event.message.offset
        if len(pending) >= max_:
            full.set()
        return value

    def unread() -> int:
        total = 0
        for tp, offset in delivered.items():
            end = highwater(tp)
            if end is not None and end > offset + 1:
                total += end - offset - 1
        return total

    enabled_acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged below, once the caller is done with a batch
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not full.is_set():
                left = within - (loop.time() - first_at) if pending else within
                if left > 0:
                    # (mode reports a timeout as "stopped": should_stop is what tells)
                    await stream.wait(full, timeout=left)
            if not pending or (not full.is_set() and loop.time() - first_at < within):
                continue
            if highwater is not None and not full.is_set() and loop.time() >= backlog_off_until and unread() >= max_ - len(pending):
                before = len(pending)
                await stream.wait(full, timeout=backlog_within)
                if len(pending) - before < (max_ - before) / 10:
                    # The events the high watermarks promise are not coming in (a slow
                    # fetch, a stale watermark): every batch would pay the whole wait.
                    backlog_off_until = loop.time() + BACKLOG_PAUSE_WAITS * backlog_within
            batch = pending[:]
            pending.clear()
            full.clear()
            has_room.set()
            yield batch
            for event in batch:
                await stream.ack(event)
    finally:
        stream.enable_acks = enabled_acks
        stream._processors.remove(add_to_buffer)
