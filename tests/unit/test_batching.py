"""streams.batching.take_overlapped on a Faust agent's test context (a real
Faust stream on an in-memory channel; no broker is contacted)."""

from __future__ import annotations

import asyncio
import functools
import operator
import time

import faust
import pytest

from streams.batching import take_overlapped


def run_agent(max_: int, within: float, handle_batch, feed, **backlog) -> None:
    """An agent iterating ``take_overlapped`` calls ``handle_batch(batch)``; ``feed(agent)`` puts values."""
    app = faust.App(f"t-batching-{time.monotonic_ns()}", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    channel = app.channel()

    @app.agent(channel)
    async def handle(stream):
        async for batch in take_overlapped(stream, max_, within, **backlog):
            await handle_batch(batch)

    async def main():
        async with handle.test_context() as agent:
            await feed(agent)

    asyncio.run(main())


def test_events_keep_arriving_while_a_batch_is_handled_and_are_acked_only_after():
    handled = []

    async def handle_batch(batch):
        handled.append(([e.value for e in batch], [e.message.acked for e in batch], [e.message.acked for e in handled[-1][3]] if handled else None, batch))
        await asyncio.sleep(0.5)  # stands for the Redis round trips

    put_during_handling = {}

    async def feed(agent):
        await agent.put(0)
        await asyncio.sleep(0.05)  # batch [0] is being handled now
        started = time.monotonic()
        for i in range(1, 11):
            await agent.put(i)
        put_during_handling["seconds"] = time.monotonic() - started
        await asyncio.sleep(1.2)

    run_agent(50, 0.01, handle_batch, feed)
    # Faust's own take_events blocks these puts until the batch is done (~0.45 s).
    assert put_during_handling["seconds"] < 0.25
    assert [h[0] for h in handled] == [[0], list(range(1, 11))]
    assert handled[0][1] == [False] and handled[1][1] == [False] * 10  # not acked while handled
    assert handled[1][2] == [True]  # the first batch was acked once its handler returned


def test_batches_keep_order_and_size_and_lose_nothing_under_back_pressure():
    sizes, seen = [], []

    async def handle_batch(batch):
        sizes.append(len(batch))
        await asyncio.sleep(0.01)
        seen.extend(e.value for e in batch)

    async def feed(agent):
        for i in range(300):
            await agent.put(i)
        for _ in range(200):
            if len(seen) == 300:
                break
            await asyncio.sleep(0.02)

    run_agent(7, 0.005, handle_batch, feed)
    assert seen == list(range(300))
    assert max(sizes) == 7


def test_a_batch_whose_handler_raises_is_not_acked():
    batches = []

    async def handle_batch(batch):
        batches.append(batch)
        if len(batches) == 2:
            raise RuntimeError("Redis went away")
        await asyncio.sleep(0.05)

    async def feed(agent):
        await agent.put("a")
        await asyncio.sleep(0.02)
        await agent.put("b")
        await asyncio.sleep(0.3)

    run_agent(10, 0.005, handle_batch, feed)
    assert [[e.value for e in b] for b in batches] == [["a"], ["b"]]
    assert batches[0][0].message.acked
    assert not batches[1][0].message.acked  # redelivered after a restart, not committed


@pytest.mark.parametrize("end_offset, first_batch", [(10**6, list(range(10))), (None, [0, 1, 2])], ids=["backlog", "no-backlog"])
def test_a_due_batch_waits_to_fill_only_when_enough_unread_events_are_there(end_offset, first_batch):
    batches = []

    async def handle_batch(batch):
        batches.append([e.value for e in batch])

    async def feed(agent):
        for i in range(3):
            await agent.put(i)
        await asyncio.sleep(0.2)  # twenty windows: the batch is due
        for i in range(3, 10):
            await agent.put(i)
        await asyncio.sleep(0.3)

    run_agent(10, 0.01, handle_batch, feed, highwater=lambda tp: end_offset, backlog_within=2.0)
    assert batches[0] == first_batch  # with a backlog, filled to the batch size (before the 2 s cap)
    assert functools.reduce(operator.iadd, batches, []) == list(range(10))


def test_a_backlog_that_does_not_arrive_stops_delaying_batches():
    put_at, delays = {}, {}

    async def handle_batch(batch):
        now = time.monotonic()
        delays.update((e.value, now - put_at[e.value]) for e in batch)

    async def feed(agent):
        for i in range(30):  # a trickle, while the high watermark promises a backlog
            put_at[i] = time.monotonic()
            await agent.put(i)
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.5)

    run_agent(100, 0.01, handle_batch, feed, highwater=lambda tp: 10**6, backlog_within=0.2)
    assert sorted(delays) == list(range(30))
    # the first due batch waits the backlog window and brings in ~7 events of the 99 it waited for ...
    assert max(delays[i] for i in range(3)) > 0.15
    # ... then for ten windows (2 s, past the end of the trickle) no batch waits for it
    late = [delays[i] for i in range(12, 30)]
    assert max(late) < 0.15, late  # each would be over 0.2 s if they waited (slack for a busy machine)


def test_refuses_a_batch_size_or_window_that_cannot_work():
    with pytest.raises(ValueError):
        take_overlapped(None, 0, 0.01)
    with pytest.raises(ValueError):
        take_overlapped(None, 10, 0)
    with pytest.raises(ValueError):
        take_overlapped(None, 10, 0.01, backlog_within=-1)
