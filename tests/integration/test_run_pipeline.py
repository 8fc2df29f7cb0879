"""features.pipeline.run_pipeline against a real Redis: the replies redis-py's pipeline
gives, errors raised only after every reply is read, and a resend after a lost connection."""

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from features.pipeline import run_pipeline
from streams.redis_packing import use_hiredis_packer

pytestmark = pytest.mark.integration

COMMANDS = [
    ("SET", "k", "v"),
    ("GET", "k"),
    ("HSET", "h", "a", 1, "b", b"\x00\xff"),
    ("HGETALL", "h"),
    ("RPUSH", "l", "x", "y"),
    ("LRANGE", "l", 0, -1),
    ("INCRBYFLOAT", "f", 1.5),
    ("GET", "missing"),
]


def _run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("fast", [False, True], ids=["plain-client", "hiredis-packing-client"])
def test_replies_match_redis_py_pipeline(redis_server, fast):
    async def go():
        client = aioredis.Redis.from_url(redis_server.url)
        if fast:
            use_hiredis_packer(client)
        try:
            await client.flushall()
            ours = await run_pipeline(client, COMMANDS)
            await client.flushall()
            pipe = client.pipeline(transaction=False)
            for args in COMMANDS:
                pipe.execute_command(*args)
            theirs = await pipe.execute()
            return ours, theirs
        finally:
            await client.aclose()

    ours, theirs = _run(go())
    assert ours[1] == b"v" and ours[3] == {b"a": b"1", b"b": b"\x00\xff"} and ours[5] == [b"x", b"y"]
    assert ours[6] == b"1.5" and ours[7] is None
    # redis-py applies its callbacks (SET to True, floats to float); compare through them
    assert theirs[0] is True and theirs[1] == ours[1] and theirs[3] == ours[3]
    assert theirs[5] == ours[5] and float(theirs[6]) == float(ours[6]) and theirs[7] is None


def test_an_error_is_raised_after_every_reply_was_read(redis_server):
    async def go():
        client = use_hiredis_packer(aioredis.Redis.from_url(redis_server.url, max_connections=1))
        try:
            await client.flushall()
            await client.set("s", "text")
            with pytest.raises(ResponseError, match=r"command #2 \(INCR\)"):
                await run_pipeline(client, [("SET", "a", 1), ("INCR", "s"), ("SET", "b", 2), ("HSET", "s", "f", 1)])
            # the later commands ran, and the one connection is in step for the next call
            assert await run_pipeline(client, [("GET", "a"), ("GET", "b"), ("PING",)]) == [b"1", b"2", b"PONG"]
        finally:
            await client.aclose()

    _run(go())


def test_refuses_arguments_it_cannot_pack_before_sending(redis_server):
    async def go():
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.flushall()
            with pytest.raises(TypeError):
                await run_pipeline(client, [("SET", "a", 1), ("SET", "b", True)])
            return await client.exists("a")
        finally:
            await client.aclose()

    assert _run(go()) == 0


def test_a_lost_connection_is_retried_with_the_whole_batch(redis_server):
    async def go():
        client = use_hiredis_packer(
            aioredis.Redis.from_url(redis_server.url, max_connections=1, retry=Retry(ConstantBackoff(0.01), retries=3), retry_on_error=[RedisConnectionError])
        )
        killer = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.flushall()
            await client.client_setname("victim")
            assert await run_pipeline(client, [("INCR", "n")]) == [1]
            victims = [c["id"] for c in await killer.client_list() if c.get("name") == "victim"]
            assert victims
            await killer.client_kill_filter(_id=victims[0])
            # the pooled connection is dead; the batch is sent again on a new one
            replies = await run_pipeline(client, [("INCR", "n"), ("GET", "n")])
            return replies, await killer.get("n")
        finally:
            await client.aclose()
            await killer.aclose()

    replies, final = _run(go())
    assert replies == [2, b"2"] and final == b"2"
