"""Publishing in commit order: a turnstile that lets outcomes through one at a time, by ticket.

The engine commits a batch's changes and a deadline round's changes under one
lock, so the order of commits is the order of tickets taken there; the sends
then happen on different tasks (the agent, the deadline timer, the relays). A
publisher waits for its ticket's turn, so a customer's changes reach the topic
in the order they were committed, which is their ``seq`` order.

>>> import asyncio
>>> async def demo():
...     gate, sent = Turnstile(), []
...     first, second = gate.take(), gate.take()
...     async def send(ticket, name):
...         async with gate.turn(ticket):
...             sent.append(name)
...     await asyncio.gather(send(second, "later"), send(first, "earlier"))
...     return sent
>>> asyncio.run(demo())
['earlier', 'later']

A ticket whose publisher gave up (cancelled, or failed before its turn) does not
hold the ones after it:

>>> async def abandoned():
...     gate, sent = Turnstile(), []
...     lost, kept = gate.take(), gate.take()
...     gate.abandon(lost)
...     async with gate.turn(kept):
...         sent.append("kept")
...     return sent, gate.waiting
>>> asyncio.run(abandoned())
(['kept'], 0)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Turnstile:
    """Tickets in order; :meth:`turn` waits until every earlier ticket is through.

    A ticket whose outcome will never be published (its batch failed after the
    commit) is :meth:`abandon`-ed, so the ones after it are not held forever; what
    it committed stays in the outbox for the relay.
    """

    def __init__(self) -> None:
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        self._turns: dict[int, asyncio.Event] = {}

    def take(self) -> int:
        """The next ticket (synchronous: take it in the same step as the commit it orders)."""
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket

    @property
    def waiting(self) -> int:
        """Tickets taken and not through yet."""
        return self._next_ticket - self._serving

    def _event(self, ticket: int) -> asyncio.Event:
        return self._turns.setdefault(ticket, asyncio.Event())

    def _advance(self) -> None:
        self._turns.pop(self._serving, None)
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._turns.pop(self._serving, None)
            self._serving += 1
        self._event(self._serving).set()

    def abandon(self, ticket: int) -> None:
        """Let ``ticket`` pass without a turn."""
        if ticket == self._serving:
            self._advance()
        elif ticket > self._serving:
            self._abandoned.add(ticket)

    @asynccontextmanager
    async def turn(self, ticket: int) -> AsyncIterator[None]:
        """Wait for ``ticket``'s turn, hold it for the block, then let the next one through
        (also when the block raises: a failed send must not stop every later one; what it
        did not send stays in the outbox)."""
        if ticket != self._serving:
            try:
                await self._event(ticket).wait()
            except BaseException:  # cancelled while waiting: do not hold the tickets after it
                self.abandon(ticket)
                raise
        try:
            yield
        finally:
            self._advance()
