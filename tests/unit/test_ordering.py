"""The turnstile publishes in ticket order, whatever order the publishers arrive in."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from streams.ordering import Turnstile


@given(st.permutations(range(12)), st.sets(st.integers(0, 11), max_size=4), st.lists(st.floats(0, 0.002), min_size=12, max_size=12))
def test_sends_follow_tickets_whatever_the_arrival_order(arrival, abandoned, delays):
    async def run() -> list[int]:
        gate, sent = Turnstile(), []
        tickets = [gate.take() for _ in range(12)]

        async def publish(t: int) -> None:
            await asyncio.sleep(delays[t])
            if t in abandoned:
                gate.abandon(t)
                return
            async with gate.turn(t):
                await asyncio.sleep(0)
                sent.append(t)

        await asyncio.wait_for(asyncio.gather(*(publish(tickets[i]) for i in arrival)), timeout=5)
        assert gate.waiting == 0
        return sent

    assert asyncio.run(run()) == [t for t in range(12) if t not in abandoned]


def test_a_failed_send_lets_the_next_one_through():
    async def run() -> list[str]:
        gate, sent = Turnstile(), []
        first, second = gate.take(), gate.take()

        async def failing() -> None:
            async with gate.turn(first):
                raise RuntimeError("broker said no")

        async def fine() -> None:
            async with gate.turn(second):
                sent.append("second")

        results = await asyncio.wait_for(asyncio.gather(failing(), fine(), return_exceptions=True), timeout=5)
        assert isinstance(results[0], RuntimeError)
        return sent

    assert asyncio.run(run()) == ["second"]
