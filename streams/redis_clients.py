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

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis._parsers import AsyncCommandsParser, CommandsParser


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
    """redis-py's asyncio cluster client, routing FCALL by its arguments."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.commands_parser = _AsyncFcallKeysParser()


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
