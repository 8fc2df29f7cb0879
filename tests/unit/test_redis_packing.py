"""hiredis packs exactly the bytes redis-py would, for any command segflow can send."""

from hypothesis import given
from hypothesis import strategies as st
import redis.asyncio as aioredis

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
        raise AssertionError(f"redis-py raised {exc!r}, the hiredis path did not")
    assert b"".join(fast.pack_command(command, *args)) == expected
