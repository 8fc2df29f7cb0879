"""Pack Redis commands with hiredis's C packer instead of redis-py's Python one.

redis.asyncio packs every command in Python (``Connection.pack_command``): for
the worker's pipelines of ~2000 ``FCALL segflow_apply`` of 17 arguments that
was 3.5 % of its CPU (py-spy, docs/PERFORMANCE.md). hiredis, already the reply
parser, packs the same bytes in C: 13.6 -> 1.9 µs per such command here.
Commands with arguments hiredis may format differently (floats, memoryviews,
a command name with a space) keep redis-py's packer.

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

import hiredis

_PLAIN = (str, bytes, int)


def _packs_the_same(args: tuple) -> bool:
    first = args[0]
    if isinstance(first, str):
        if " " in first:
            return False
    elif not isinstance(first, bytes) or b" " in first:
        return False
    return all(type(a) in _PLAIN for a in args)  # not bool or float: redis-py's encoder formats those itself


def _with_hiredis_packing(base: type) -> type:
    if getattr(base, "_segflow_hiredis_packing", False):
        return base

    class HiredisPacking(base):
        _segflow_hiredis_packing = True

        def pack_command(self, *args):
            if _packs_the_same(args):
                return [hiredis.pack_command(args)]
            return super().pack_command(*args)

    HiredisPacking.__name__ = HiredisPacking.__qualname__ = f"HiredisPacking{base.__name__}"
    return HiredisPacking


def use_hiredis_packer(client):
    """``client`` (redis.asyncio.Redis), its future connections packing with hiredis."""
    pool = client.connection_pool
    pool.connection_class = _with_hiredis_packing(pool.connection_class)
    return client
