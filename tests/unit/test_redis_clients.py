"""The worker's patience with a Redis Cluster shard that goes away."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.redis_clients import SHARD_AWAY, outage_retry, torn_down_as_connection_error


def test_a_connection_torn_down_mid_command_is_retried_as_a_connection_error():
    """redis-py #3546: a command caught while its node's connections are dropped finds
    its writer gone (AttributeError); the outage retry must try it again, not crash."""
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return "OK"

    async def nothing(_error):
        return None

    retry = outage_retry()
    assert asyncio.run(retry.call_with_retry(lambda: torn_down_as_connection_error(flaky), nothing)) == "OK"
    assert len(calls) == 2


def test_other_errors_pass_through_unchanged():
    async def broken():
        raise KeyError("not a connection problem")

    with pytest.raises(KeyError):
        asyncio.run(torn_down_as_connection_error(broken))
    assert RedisConnectionError in SHARD_AWAY
