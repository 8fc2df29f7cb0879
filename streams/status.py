"""Is the engine keeping up? Lag, deadline backlog, outbox and rates, with a verdict.

One :class:`Status` is read three ways, all from here: the worker's
``/metrics`` and ``/status`` (its own partitions, from its consumer), and
``segflow status`` (the whole consumer group, from the broker). The verdict
is a plain function of it, so all three judge alike:

- **consumer lag**: input messages not yet processed, per partition;
- **deadline backlog**: customers whose absence deadline is due on the
  engine's clock but not yet evaluated, and how long the oldest has waited;
- **outbox**: changes committed in Redis and not yet confirmed on Kafka, and
  the age of the oldest (a healthy worker empties it within a batch).

>>> s = Status(lag={"clickstream[0]": 20_000}, deadline_backlog=0, oldest_due_s=None, outbox=3, outbox_oldest_s=0.2, applied_per_s=1000.0)
>>> keeping_up(s)
(False, ['consumer lag 20,000 messages is 20.0 s of work at 1,000 ev/s (limit 10 s)'])
>>> keeping_up(Status(lag={"clickstream[0]": 40}, deadline_backlog=0, oldest_due_s=None, outbox=0, outbox_oldest_s=None, applied_per_s=1000.0))
(True, [])
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from features import keys
from features.keys import Layout
from streams.settings import Settings

# Behind when any of these is exceeded (seconds).
LAG_LIMIT_S = 10.0  # lag / apply rate: how long the backlog would take to clear
DEADLINE_LIMIT_S = 10.0  # the oldest due deadline's wait (the timer runs every second)
OUTBOX_LIMIT_S = 30.0  # the stale relay re-sends after 10 s; past 30 s publishing is stuck
# Lag this small is in-flight traffic, not a backlog, whatever the rate.
LAG_FLOOR = 1000


@dataclass(frozen=True)
class Status:
    lag: dict[str, int]  # "topic[partition]" -> messages not yet processed
    deadline_backlog: int
    oldest_due_s: float | None
    outbox: int
    outbox_oldest_s: float | None
    applied_per_s: float | None = None  # events applied per second, when measured over an interval
    arriving_per_s: float | None = None  # input messages arriving per second, when measured
    totals: dict[str, int] = field(default_factory=dict)  # segflow:stats counters

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def as_dict(self) -> dict[str, Any]:
        ok, reasons = keeping_up(self)
        return {**asdict(self), "total_lag": self.total_lag, "keeping_up": ok, "reasons": reasons}


def keeping_up(status: Status) -> tuple[bool, list[str]]:
    """``(True, [])``, or ``(False, reasons)`` naming each limit exceeded."""
    reasons = []
    lag = status.total_lag
    if lag > LAG_FLOOR:
        rate = status.applied_per_s
        if not rate:
            reasons.append(f"consumer lag {lag:,} messages and nothing applied")
        elif lag / rate > LAG_LIMIT_S:
            reasons.append(f"consumer lag {lag:,} messages is {lag / rate:.1f} s of work at {rate:,.0f} ev/s (limit {LAG_LIMIT_S:g} s)")
    if status.oldest_due_s is not None and status.oldest_due_s > DEADLINE_LIMIT_S:
        reasons.append(f"{status.deadline_backlog:,} absence deadlines due, the oldest for {status.oldest_due_s:.1f} s (limit {DEADLINE_LIMIT_S:g} s)")
    if status.outbox_oldest_s is not None and status.outbox_oldest_s > OUTBOX_LIMIT_S:
        reasons.append(f"{status.outbox:,} changes wait in the outbox, the oldest for {status.outbox_oldest_s:.1f} s (limit {OUTBOX_LIMIT_S:g} s)")
    return not reasons, reasons


def format_status(status: Status) -> str:
    """One screen for ``segflow status``."""
    ok, reasons = keeping_up(status)

    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}/s"

    def age(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    lines = [
        f"verdict: {'KEEPING UP' if ok else 'BEHIND'}",
        *[f"  - {r}" for r in reasons],
        "",
        f"consumer lag        {status.total_lag:>12,} messages",
        *[f"  {tp:<24}{n:>10,}" for tp, n in sorted(status.lag.items()) if n],
        f"deadline backlog    {status.deadline_backlog:>12,} due   oldest waiting {age(status.oldest_due_s)}",
        f"outbox              {status.outbox:>12,} changes   oldest {age(status.outbox_oldest_s)}",
        f"applied             {rate(status.applied_per_s):>12}   arriving {rate(status.arriving_per_s)}",
    ]
    t = status.totals
    if t:
        lines.append(
            f"totals              received {t.get('received', 0):,}, applied {t.get('applied', 0):,}, dead-lettered {t.get('dead_lettered', 0):,}, "
            f"changes {t.get('changes', 0):,}, deadline evaluations {t.get('deadline_evaluations', 0):,}"
        )
    return "\n".join(lines)


# -- Redis side: commands and their replies (sync and asyncio clients run the same) ---------


def backlog_commands(layout: Layout, partitions: Iterable[int], clock_ms: int) -> list[tuple[Any, ...]]:
    """Per partition: due deadlines and the oldest, the outbox's length and oldest entry."""
    commands: list[tuple[Any, ...]] = []
    for p in partitions:
        key, outbox = layout.deadlines_key(p), layout.outbox(p)
        commands += [("ZCOUNT", key, "-inf", clock_ms), ("ZRANGE", key, 0, 0, "WITHSCORES"), ("XLEN", outbox), ("XRANGE", outbox, "-", "+", "COUNT", 1)]
    return commands


def backlog_from(replies: Sequence[Any], clock_ms: int, now_ms: int) -> tuple[int, float | None, int, float | None]:
    """``(due, oldest due wait s, outbox length, oldest outbox entry age s)`` from the replies
    to :func:`backlog_commands` (deadline waits on the engine's clock, outbox ages on the wall clock).

    >>> backlog_from([2, [b"c1", b"1000"], 0, [], 0, [], 1, [[b"4000-0", {}]]], clock_ms=6000, now_ms=9000)
    (2, 5.0, 1, 5.0)
    """
    due, outbox_len = 0, 0
    oldest: float | None = None
    oldest_entry_ms: int | None = None
    for count, first, length, outbox_first in zip(replies[0::4], replies[1::4], replies[2::4], replies[3::4], strict=True):
        due += int(count)
        outbox_len += int(length)
        if count and first:
            # WITHSCORES replies [member, score] (RESP2) or [[member, score]] (RESP3)
            score = float(first[0][1] if isinstance(first[0], list | tuple) else first[1])
            oldest = max(oldest or 0.0, (clock_ms - score) / 1000)
        if outbox_first:
            entry_id = outbox_first[0][0]
            entry_ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
            oldest_entry_ms = entry_ms if oldest_entry_ms is None else min(oldest_entry_ms, entry_ms)
    outbox_age = None if oldest_entry_ms is None else max(0.0, (now_ms - oldest_entry_ms) / 1000)
    return due, oldest, outbox_len, outbox_age


def read_totals(redis, layout: Layout) -> dict[str, int]:
    """The ``segflow:stats`` counters (all workers together) and the applied and duplicates
    counts of every partition, summed (sync client)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.STATS)
    for p in range(layout.partitions):
        pipe.hgetall(layout.stats(p))
    totals: dict[str, int] = {}
    for raw in pipe.execute():
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            totals[name] = totals.get(name, 0) + int(v)
    return totals


def outbox_length(redis, layout: Layout) -> int:
    """Changes committed and not yet confirmed on the changes topic, all partitions (sync client)."""
    pipe = redis.pipeline(transaction=False)
    for p in range(layout.partitions):
        pipe.xlen(layout.outbox(p))
    return sum(pipe.execute())


def clock_ms_of(redis, clock: str, lateness_ms: int) -> int:
    """The deadline clock as a reader outside the worker sees it (sync client); on the
    event clock before any event, -1 (nothing is due yet, as the worker sees it)."""
    if clock == "event":
        wm = redis.get(keys.WATERMARK)
        return -1 if wm is None else int(wm) - lateness_ms
    return int(time.time() * 1000)


def group_lag(settings: Settings) -> tuple[dict[str, int], int]:
    """``({"topic[p]": lag}, input end offsets summed)`` of the workers' consumer group, from the broker.

    Lag counts from the group's committed offsets (Faust commits every few
    seconds), or from the start of the log for a partition never committed.
    """
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from streams.admin import bootstrap_of
    from streams.kafka_security import kafka_python_config

    bootstrap = bootstrap_of(settings.kafka_url)
    security = kafka_python_config(settings)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segflow-status", request_timeout_ms=10_000, **security)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=11_000, **security)
    try:
        tps = [TopicPartition(t, p) for t in settings.topics.inputs for p in sorted(consumer.partitions_for_topic(t) or ())]
        committed = admin.list_group_offsets({settings.app_id: tps}).get(settings.app_id, {})
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
    finally:
        consumer.close()
        admin.close()
    lag = {}
    for tp in tps:
        mark = committed.get(tp)
        done = mark.offset if mark is not None and mark.offset >= 0 else starts[tp]
        lag[f"{tp.topic}[{tp.partition}]"] = max(0, ends[tp] - done)
    return lag, sum(ends.values())


def read_status(redis, settings: Settings, interval_s: float = 2.0) -> Status:
    """The whole deployment's status (``segflow status``): two samples ``interval_s`` apart give the rates."""
    totals = read_totals(redis, settings.layout)
    lag, ends = group_lag(settings)
    started = time.monotonic()
    time.sleep(interval_s)
    totals_after = read_totals(redis, settings.layout)
    lag, ends_after = group_lag(settings)
    elapsed = time.monotonic() - started
    clock = clock_ms_of(redis, settings.clock, settings.lateness_ms)
    replies = redis.pipeline(transaction=False)
    for command in backlog_commands(settings.layout, range(settings.partitions), clock):
        replies.execute_command(*command)
    due, oldest, outbox, outbox_age = backlog_from(replies.execute(), clock, int(time.time() * 1000))
    return Status(
        lag=lag,
        deadline_backlog=due,
        oldest_due_s=oldest,
        outbox=outbox,
        outbox_oldest_s=outbox_age,
        applied_per_s=(totals_after.get("applied", 0) - totals.get("applied", 0)) / elapsed,
        arriving_per_s=(ends_after - ends) / elapsed,
        totals=totals_after,
    )
