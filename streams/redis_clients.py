"""Redis clients from a URL, for one server or a Redis Cluster.

With ``cluster=True`` the URL is a seed node: redis-py's cluster clients read
the slot map from it and send each command to the primary that owns its keys.
They are subclassed for one reason: redis-py does not know where FCALL and
FCALL_RO keep their keys, so before every such call it asks a server
(``COMMAND GETKEYS``), one extra round trip per FCALL. Here the keys are read
from the arguments (``FCALL name numkeys key... arg...``), as redis-py itself
does for EVAL and EVALSHA.

>>> fcall_keys(("FCALL", "segflow_apply", 2, "{c1}:f", "{c1}:s", "arg"))
('{c1}:f', '{c1}:s')
>>> fcall_keys(("HGET", "k", "f")) is None
True
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis._parsers import AsyncCommandsParser, CommandsParser
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

# A shard away (killed, restarting, failing over): the whole call is tried again.
SHARD_AWAY = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError, TryAgainError)


def outage_retry() -> AsyncRetry:
    """The worker's patience with a shard that is away: exponential backoff to 5 s, about
    4.5 minutes in all, as its single-Redis client waits for a restarted server. redis-py's
    own cluster retries do not back off (a refused connection burns them in milliseconds)."""
    # (SlotNotCoveredError is not a RedisError; the stub asks for those, Retry only catches them)
    return AsyncRetry(ExponentialBackoff(cap=5.0, base=0.05), retries=60, supported_errors=SHARD_AWAY)  # type: ignore[arg-type]


async def _nothing(_error: Exception) -> None:
    return None


async def torn_down_as_connection_error(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, with redis-py's AttributeError from a connection torn down
    under a command raised as the connection error it is.

    redis-py's cluster client drops a node's connections when a shard goes away; a
    command of another task caught mid-connect then finds its writer gone
    ("'NoneType' object has no attribute 'writelines'", redis-py #3546). It crashed
    the worker twice in one CI run of the primary-kill tests. The connection is
    reconnected on its next use, so :func:`outage_retry` can simply try again.
    """
    try:
        return await call()
    except AttributeError as exc:
        raise RedisConnectionError(f"connection torn down mid-command: {exc}") from exc


def fcall_keys(args: tuple) -> tuple | None:
    """The keys of an FCALL/FCALL_RO command's arguments; None for any other command."""
    if len(args) >= 3 and isinstance(args[0], str) and args[0].upper() in ("FCALL", "FCALL_RO"):
        return tuple(args[3 : 3 + int(args[2])])
    return None


class _FcallKeysParser(CommandsParser):
    def __init__(self, parsed: CommandsParser):  # the COMMAND table the client read at start, not read again
        self.commands = parsed.commands
        self.redis_connection = parsed.redis_connection

    def get_keys(self, redis_conn, *args):
        keys = fcall_keys(args)
        return super().get_keys(redis_conn, *args) if keys is None else keys


class _AsyncFcallKeysParser(AsyncCommandsParser):
    async def get_keys(self, *args: Any):
        keys = fcall_keys(args)
        return await super().get_keys(*args) if keys is None else keys


class SyncRedisCluster(redis.cluster.RedisCluster):
    """redis-py's cluster client, routing FCALL by its arguments (its pipelines share the parser)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.commands_parser = _FcallKeysParser(self.commands_parser)


class AsyncRedisCluster(redis.asyncio.cluster.RedisCluster):
    """redis-py's asyncio cluster client, routing FCALL by its arguments, and waiting out a
    shard that is away (:func:`outage_retry`, also used by features.pipeline for batches)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.commands_parser = _AsyncFcallKeysParser()
        self.outage_retry = outage_retry()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        base = redis.asyncio.cluster.RedisCluster.execute_command
        return await self.outage_retry.call_with_retry(lambda: torn_down_as_connection_error(lambda: base(self, *args, **kwargs)), _nothing)


def sync_client(url: str, *, cluster: bool, **kw: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A blocking client: ``redis.Redis``, or a cluster client seeded by ``url``."""
    if cluster:
        return SyncRedisCluster.from_url(url, **kw)
    return redis.Redis.from_url(url, **kw)


def async_client(url: str, *, cluster: bool, **kw: Any) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """An asyncio client: ``redis.asyncio.Redis``, or a cluster client seeded by ``url``."""
    if cluster:
        return AsyncRedisCluster.from_url(url, **kw)
    return redis.asyncio.Redis.from_url(url, **kw)
