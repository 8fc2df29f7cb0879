"""A Redis pipeline of plain commands without redis-py's per-command Python.

redis.asyncio's ``Pipeline`` queues each command through ``execute_command``,
packs it, then parses each reply through response callbacks and bookkeeping
for transactions and WATCH. For the worker's ~800 ``FCALL segflow_apply`` per
batch that machinery, not Redis, was 28% of the engine's CPU (pyinstrument,
docs/PERFORMANCE.md). Here the commands are packed by hiredis in one buffer,
sent once, and the replies read as they come: the same wire bytes and the
same raw replies (no callbacks: the commands used here have none), with the
client's connection pool, retry policy and reply timeouts.

Arguments are ``str``, ``bytes``, ``int`` or ``float``; hiredis refuses anything
else (``bool``, ``None``) with a ``TypeError`` before anything is sent. Like ``Pipeline.execute()``, every reply is read before the first
error is raised, so the connection never goes back to the pool out of step.

>>> commands = [("SET", "k", 1), ("INCRBY", "k", 2), ("GET", "k")]
>>> b"".join(map(hiredis.pack_command, commands))[:20]
b'*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n'
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, ClusterDownError, ResponseError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.redis_clients import torn_down_as_connection_error

# One command: its name (a str), then its arguments (see the module docstring).
Command = tuple[str | bytes | int | float, ...]


async def run_pipeline(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` (tuples of command name and arguments) in one round trip on
    ``redis`` (a redis.asyncio client) and return their replies in order.

    A ``ResponseError`` of any command is raised (annotated with its position)
    after all replies are read. Connection errors are retried as the client's
    ``retry`` says, resending the whole batch: only commands safe to resend belong here.
    """
    if not commands:
        return []
    if isinstance(redis, AsyncRedisCluster):
        return await _run_cluster_pipeline(redis, commands)
    # hiredis's stub types the command as a 1-tuple; any length is accepted.
    packed = b"".join(map(hiredis.pack_command, commands))  # type: ignore[arg-type]
    pool = redis.connection_pool
    conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    try:
        return await conn.retry.call_with_retry(lambda: _round_trip(conn, packed, commands), lambda error: conn.disconnect())
    finally:
        await pool.release(conn)


async def _run_cluster_pipeline(redis: AsyncRedisCluster, commands: Sequence[Command]) -> list[Any]:
    """On a Redis Cluster: each node gets the commands of its slots at once, packed by
    hiredis like the single-server path, its node found from redis-py's slot map
    (:func:`_by_node`). Where that map is stale (a MOVED or ASK reply) or a node does
    not answer, the batch goes again through redis-py's cluster pipeline, which follows
    redirects and refreshes the map; its replies pass redis-py's response callbacks
    (the callers read both forms). While a shard is away the whole batch is resent with
    the client's ``outage_retry`` (streams.redis_clients), if it has one."""

    async def attempt() -> list[Any]:
        try:
            return await _by_node(redis, commands)
        except OFF_THE_FAST_PATH:
            pass
        pipe = redis.pipeline()
        for command in commands:
            pipe.execute_command(*command)
        replies = await torn_down_as_connection_error(lambda: pipe.execute(raise_on_error=False))
        _raise_first_error(replies, commands)
        return list(replies)

    async def nothing(_error: Exception) -> None:
        return None

    retry = getattr(redis, "outage_retry", None)
    return await (retry.call_with_retry(attempt, nothing) if retry is not None else attempt())


# Replies and failures that mean "ask redis-py": the slot map moved, or a node is away.
OFF_THE_FAST_PATH = (AskError, TryAgainError, ClusterDownError, SlotNotCoveredError, RedisConnectionError, RedisTimeoutError)


async def _by_node(redis: AsyncRedisCluster, commands: Sequence[Command]) -> list[Any]:
    """The commands grouped by the primary that owns their first key, one packed round
    trip per node, the nodes at once; replies in the commands' order. redis-py's own
    cluster pipeline routes and wraps every command in Python: 38 µs of the worker's CPU
    per event (docs/PERFORMANCE.md, row 9 against row 4)."""
    slots = redis.nodes_manager.slots_cache
    if not slots:
        raise SlotNotCoveredError("the slot map is not read yet")
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, command in enumerate(commands):
        key = command[3] if str(command[0]).upper() in ("FCALL", "FCALL_RO") else command[1]
        node = redis.nodes_manager.get_node_from_slot(redis.keyslot(key))
        groups.setdefault(node.name, (node, []))[1].append(i)
    per_node = await asyncio.gather(*(_node_round_trip(node, [commands[i] for i in idx]) for node, idx in groups.values()))
    replies: list[Any] = [None] * len(commands)
    for (_, idx), got in zip(groups.values(), per_node, strict=True):
        for i, reply in zip(idx, got, strict=True):
            if isinstance(reply, OFF_THE_FAST_PATH):
                raise reply
            replies[i] = reply
    _raise_first_error(replies, commands)
    return replies


async def _node_round_trip(node: Any, commands: list[Command]) -> list[Any]:
    conn = node.acquire_connection()
    try:
        packed = b"".join(map(hiredis.pack_command, commands))  # type: ignore[arg-type]
        await conn.send_packed_command(packed)
        replies: list[Any] = []
        for _ in range(len(commands)):
            try:
                replies.append(await conn.read_response())
            except ResponseError as error:  # MOVED and ASK too: the caller sorts them out
                replies.append(error)
        return replies
    except BaseException:
        await conn.disconnect()  # replies may be left unread: the connection is out of step
        raise
    finally:
        node.release(conn)


def _raise_first_error(replies: Sequence[Any], commands: Sequence[Command]) -> None:
    for i, reply in enumerate(replies):
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
            raise reply  # a connection lost or a shard down on the cluster: the batch is resent
        if isinstance(reply, ResponseError):
            name = commands[i][0]
            reply.args = (f"command #{i + 1} ({name!s}) of pipeline failed: {reply.args[0] if reply.args else ''}", *reply.args[1:])
            raise reply


async def _round_trip(conn: AbstractConnection, packed: bytes, commands: Sequence[Command]) -> list[Any]:
    await conn.send_packed_command(packed)
    replies: list[Any] = []
    for _ in range(len(commands)):
        try:
            replies.append(await conn.read_response())
        except ResponseError as error:
            replies.append(error)
    _raise_first_error(replies, commands)
    return replies
