"""hiredis packs exactly the bytes redis-py would, for any command segflow can send."""

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from streams.redis_packing import use_hiredis_packer

arg = st.text() | st.binary() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.booleans()
name = st.sampled_from(["FCALL", "HSET", b"EVALSHA", "CONFIG GET", "ZADD"])


@given(name, st.lists(arg, max_size=20))
def test_hiredis_packing_sends_the_same_bytes_as_redis_py(command, args):
    fast = use_hiredis_packer(aioredis.Redis()).connection_pool.connection_class()
    plain = aioredis.Connection()
    try:
        expected = b"".join(plain.pack_command(command, *args))
    except Exception as exc:  # what redis-py refuses (e.g. bools), the fast path must refuse too
        try:
            fast.pack_command(command, *args)
        except type(exc):
            return
        raise AssertionError(f"redis-py raised {exc!r}, the hiredis path did not") from exc
    assert b"".join(fast.pack_command(command, *args)) == expected


@pytest.mark.integration
def test_buffered_replies_come_back_as_redis_py_gives_them(redis_server):
    """A pipeline through the fast reply path returns what plain redis-py returns,
    errors included, and most replies skip redis-py's per-reply read."""
    import asyncio

    async def run(client):
        await client.delete("k", "h", "n")
        pipe = client.pipeline(transaction=False)
        pipe.set("k", "v").get("k").hset("h", mapping={"a": "1", "b": "2"}).hgetall("h").incr("k").lrange("nope", 0, -1)
        for i in range(200):
            pipe.incrby("n", i)
        try:
            return await pipe.execute(raise_on_error=False)
        finally:
            await client.aclose()

    def normal(replies):
        return [type(r).__name__ + str(r) if isinstance(r, Exception) else r for r in replies]

    fast_client = use_hiredis_packer(aioredis.Redis.from_url(redis_server.url, decode_responses=True))
    slow_reads = []
    base = fast_client.connection_pool.connection_class.__mro__[1]
    original = base.read_response

    async def counting(self, *a, **kw):
        slow_reads.append(1)
        return await original(self, *a, **kw)

    base.read_response = counting
    try:
        fast = asyncio.run(run(fast_client))
    finally:
        base.read_response = original
    plain = asyncio.run(run(aioredis.Redis.from_url(redis_server.url, decode_responses=True)))
    assert normal(fast) == normal(plain)
    assert any(isinstance(r, Exception) for r in fast)  # INCR of "v" fails in both
    assert len(slow_reads) < len(fast) / 2
