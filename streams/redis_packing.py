"""Pack Redis commands with hiredis's C packer instead of redis-py's Python one,
and take pipeline replies that are already buffered without a timer each.

redis.asyncio packs every command in Python (``Connection.pack_command``): for
the worker's pipelines of ~2000 ``FCALL segflow_apply`` of 17 arguments that
was 3.5 % of its CPU (py-spy, docs/PERFORMANCE.md). hiredis, already the reply
parser, packs the same bytes in C: 13.6 -> 1.9 µs per such command here.
Commands with arguments hiredis may format differently (floats, memoryviews,
a command name with a space) keep redis-py's packer.

redis.asyncio also wraps the read of every reply in its own ``asyncio.timeout``
(a timer scheduled and cancelled per reply): for a pipeline's ~800 replies,
which arrive together, that was 12 % of the engine's CPU (pyinstrument,
docs/PERFORMANCE.md). A reply already complete in hiredis's buffer is returned
at once; only a read that has to wait for the socket goes through redis-py's
``read_response``, with its timeout, error handling and disconnects.

>>> import redis.asyncio as aioredis
>>> client = use_hiredis_packer(aioredis.Redis())
>>> conn = client.connection_pool.connection_class()
>>> args = ("FCALL", "segflow_apply", 3, "cust:{c1}", b"\\x00", "é")
>>> conn.pack_command(*args) == [b"".join(aioredis.Connection().pack_command(*args))]
True
>>> conn.pack_command("ZADD", "k", 1.5, "m") == aioredis.Connection().pack_command("ZADD", "k", 1.5, "m")
True
"""

from __future__ import annotations

import asyncio

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ConnectionError, ResponseError

_PLAIN = frozenset((str, bytes, int))


def _packs_the_same(args: tuple) -> bool:
    first = args[0]
    if isinstance(first, str):
        if " " in first:
            return False
    elif not isinstance(first, bytes) or b" " in first:
        return False
    return _PLAIN.issuperset(map(type, args))  # not bool or float: redis-py's encoder formats those itself


def _with_hiredis_packing(base: type) -> type:
    if getattr(base, "_segflow_hiredis_packing", False):
        return base

    class HiredisPacking(base):
        _segflow_hiredis_packing = True

        def pack_command(self, *args):
            if _packs_the_same(args):
                return [hiredis.pack_command(args)]
            return super().pack_command(*args)

        async def read_response(self, disable_decoding=False, timeout=None, *, disconnect_on_error=True, push_request=False):
            parser = self._parser
            if type(parser) is _AsyncHiredisParser and parser._connected and not push_request:
                reader = parser._reader
                assert reader is not None  # made by on_connect, which _connected says ran
                response = reader.gets(False) if disable_decoding else reader.gets()
                push = parser._hiredis_PushNotificationType
                if push is not None and isinstance(response, push):
                    await parser.handle_push_response(response)  # then the reply itself, below
                elif response is not NOT_ENOUGH_DATA:
                    # What redis-py's parser and read_response do with a reply, minus the timer.
                    if isinstance(response, list) and response and isinstance(response[0], ConnectionError):
                        response = response[0]
                    if isinstance(response, ConnectionError):
                        if disconnect_on_error:
                            await self.disconnect(nowait=True)
                        raise response
                    if self.health_check_interval:
                        self.next_health_check = asyncio.get_running_loop().time() + self.health_check_interval
                    if isinstance(response, ResponseError):
                        raise response from None
                    return response
            return await super().read_response(disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request)

    HiredisPacking.__name__ = HiredisPacking.__qualname__ = f"HiredisPacking{base.__name__}"
    return HiredisPacking


def use_hiredis_packer(client):
    """``client`` (redis.asyncio.Redis), its future connections packing with hiredis
    and reading buffered replies without a timer each."""
    pool = client.connection_pool
    pool.connection_class = _with_hiredis_packing(pool.connection_class)
    return client
