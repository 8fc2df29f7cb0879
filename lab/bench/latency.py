"""Row 6's latency rows: producer timestamp -> segment change read back from the
changes topic (:class:`ChangeWatcher`), on row 5's kind of traffic
(:func:`run_mix_latency`, event clock) and on fresh customers only
(:func:`run_latency`, wall clock).
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.bench.common import (
    LATENCY_PREFIX,
    PARTITIONS,
    SESSION_TIMEOUT,
    Procs,
    _per_5s,
    _pick,
    make_payloads,
    say,
    worker_env,
)

# -- row 6: latency -----------------------------------------------------------------


class ChangeWatcher(threading.Thread):
    """Reads a changes topic from its end; keeps the arrival time of each customer's first change."""

    def __init__(self, bootstrap: str, topic: str, key_prefix: bytes):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.key_prefix = bootstrap, topic, key_prefix
        self.first: dict[bytes, tuple[float, bytes]] = {}  # key -> (arrival s, value)
        self.messages = 0
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.on_record: Callable[[float, Any], None] | None = None  # optional callback(arrival s, record) for every matching record

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            c = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
            try:
                tps: list[TopicPartition] = []
                while not tps and not self.stop.is_set():
                    tps = [TopicPartition(self.topic, p) for p in sorted(c.partitions_for_topic(self.topic) or ())]
                    if not tps:
                        time.sleep(0.1)
                c.assign(tps)
                c.seek_to_end(*tps)
                for tp in tps:
                    c.position(tp)
                self.ready.set()
                while not self.stop.is_set():
                    for records in c.poll(timeout_ms=50).values():
                        now = time.time()
                        for rec in records:
                            self.messages += 1
                            if rec.key and rec.key.startswith(self.key_prefix) and rec.key not in self.first:
                                self.first[rec.key] = (now, rec.value)
                            if self.on_record is not None and rec.key and rec.key.startswith(self.key_prefix):
                                self.on_record(now, rec)
            finally:
                c.close()
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.ready.set()


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def fresh_logins(run: str, stop: threading.Event, sent_at: dict) -> Iterator[tuple[str, bytes, bytes]]:
    """Login events of never-seen customers, each stamped with the wall clock when it is generated (= sent)."""
    i = 0
    while not stop.is_set():
        cid = f"lat{run}-{i}"
        ms = int(time.time() * 1000)
        sent_at[cid] = ms
        value = (f'{{"event_id":"{cid}","customer_id":"{cid}","occurred_at":"{_iso_ms(ms)}","type":"login","success":true,"channel":"web"}}').encode()
        yield "login", cid.encode(), value
        i += 1


def warm_up(bootstrap: str, topics, watcher: ChangeWatcher, worker, log: Path, run: str) -> None:
    """Send one fresh login a second until its change comes back (the worker has joined
    its group), for up to 60 s; fail early if the worker exits."""
    from streams.producer import produce_events

    say("  waiting for the worker to join and answer a warm-up event")
    sent: dict = {}
    key = f"lat{run}".encode()
    until = time.monotonic() + 60
    while not any(k.startswith(key) for k in list(watcher.first)) and time.monotonic() < until:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {log}")
        produce_events(bootstrap, [next(fresh_logins(run, threading.Event(), sent))], topics)
        time.sleep(1.0)


def run_latency(stack, procs: Procs, work: Path, rate: float, seconds: float, tag: str = "a") -> dict:
    """One latency point on its own topics, consumer group and customer ids (``tag``), so an
    earlier point's backlog cannot leak into it."""
    import redis as redis_lib

    from streams.admin import ensure_topics
    from streams.producer import produce_events
    from streams.topics import Topics

    topics = Topics(f"{LATENCY_PREFIX}{tag}-")
    ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)
    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    r.flushall()
    watcher = ChangeWatcher(stack.broker.bootstrap, topics.segment_changes, b"lat")
    watcher.start()
    p = procs.start(
        [sys.executable, "-m", "segflow.cli", "worker"],
        worker_env(stack, topics.prefix, f"bench-latency-{tag}", work, "wall"),
        work / f"worker-latency-{tag}.log",
    )
    stop = threading.Event()
    try:
        watcher.ready.wait(30)
        if watcher.error:
            raise RuntimeError(f"changes watcher: {watcher.error}")
        # Warm up: until a change comes back the worker has not joined its group yet.
        warm_up(stack.broker.bootstrap, topics, watcher, p, work / f"worker-latency-{tag}.log", "warm")
        say(f"  offering {rate:,.0f} ev/s of fresh customers' logins for {seconds:g}s")
        sent_at: dict[str, int] = {}
        stats_box: dict = {}

        def feed():
            items = fresh_logins("m", stop, sent_at)
            stats_box["stats"] = produce_events(stack.broker.bootstrap, items, topics, rate=rate, stop=stop)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(seconds)
        stop.set()
        feeder.join(30)
        stats = stats_box.get("stats")
        sent = stats.sent if stats else len(sent_at)
        achieved = stats.rate if stats else 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(1 for k in list(watcher.first) if k.startswith(b"latm")) < len(sent_at):
            time.sleep(0.2)
        watcher.stop.set()
        watcher.join(5)
        lat, decide, publish = [], [], []
        for key, (arrived, value) in list(watcher.first.items()):
            if not key.startswith(b"latm"):
                continue
            cid = key.decode()
            change = json.loads(value)
            occurred = datetime.fromisoformat(change["occurred_at"].replace("Z", "+00:00")).timestamp() * 1000
            produced = sent_at.get(cid, occurred)
            emitted = datetime.fromisoformat(change["emitted_at"].replace("Z", "+00:00")).timestamp() * 1000
            lat.append(arrived * 1000 - produced)
            decide.append(emitted - produced)
            publish.append(arrived * 1000 - emitted)
        lat.sort()
        decide.sort()
        publish.sort()

        return {
            "offered_rate": round(rate, 1),
            "achieved_rate": round(achieved, 1),
            "seconds": seconds,
            "sent": sent,
            "answered": len(lat),
            "p50_ms": _pick(lat, 0.50),
            "p99_ms": _pick(lat, 0.99),
            "max_ms": round(lat[-1], 1) if lat else None,
            "change_messages": watcher.messages,
            # Split at the change's emitted_at (the engine's clock when it decided):
            "to_decision_p50_ms": _pick(decide, 0.5),
            "to_decision_p99_ms": _pick(decide, 0.99),
            "decision_to_arrival_p50_ms": _pick(publish, 0.5),
            "decision_to_arrival_p99_ms": _pick(publish, 0.99),
        }
    finally:
        stop.set()
        watcher.stop.set()
        procs.stop(p)
        watcher.join(5)
        r.close()


MIX_PREFIX = "benchmix-"


def run_mix_latency(stack, procs: Procs, work: Path, rate: float, seconds: float, tag: str = "", workers: int = 1) -> dict:
    """Latency on the backlog's own kind of traffic (row 5's workload, new simulated
    customers, event clock) offered at ``rate``: the target's "half the sustained rate"
    on the workload that measured the sustained rate.

    Every change from an event evaluation has ``occurred_at`` = the customer's newest
    event time, i.e. the event that was sent last for that customer (the simulation
    is in event-time order), so (customer, occurred_at) names the event and its send
    time. Changes that match no sent event were decided by the deadline timer
    (silence crossed on the event-time watermark) and are counted, not timed.
    ``tag`` gives a point its own topics and worker (a sweep); ``workers`` > 1 runs
    that many worker processes in one consumer group.
    """
    import redis as redis_lib

    from streams.admin import ensure_topics
    from streams.producer import produce_events
    from streams.topics import Topics

    topics = Topics(f"{MIX_PREFIX}{tag}")
    ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)
    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    r.flushall()
    payloads = make_payloads(max(2_000, int(rate * seconds)), seed=29, id_prefix="m")
    times = [json.loads(v)["occurred_at"] for _, _, v in payloads]
    event_ms = [round(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000) for t in times]
    sent_at: dict[tuple[str, int], float] = {}
    arrivals: list[tuple[float, str, int, float]] = []  # (arrival s, customer, occurred_at ms, emitted_at s)

    def on_record(now: float, rec: Any) -> None:
        change = json.loads(rec.value)
        occurred = round(datetime.fromisoformat(change["occurred_at"].replace("Z", "+00:00")).timestamp() * 1000)
        emitted = datetime.fromisoformat(change["emitted_at"].replace("Z", "+00:00")).timestamp()
        arrivals.append((now, change["customer_id"], occurred, emitted))

    watcher = ChangeWatcher(stack.broker.bootstrap, topics.segment_changes, b"m")
    watcher.on_record = on_record
    watcher.start()
    logs = [work / f"worker-mix{tag}-{i}.log" for i in range(workers)]
    for i in range(workers):
        (work / f"mix{tag}-w{i}").mkdir(exist_ok=True)
    started = [
        procs.start(
            [sys.executable, "-m", "segflow.cli", "worker"], worker_env(stack, topics.prefix, f"bench-mix{tag}", work / f"mix{tag}-w{i}", "event"), logs[i]
        )
        for i in range(workers)
    ]  # own web port and data dir each
    try:
        watcher.ready.wait(30)
        if watcher.error:
            raise RuntimeError(f"changes watcher: {watcher.error}")
        # Warm up with the first event: a new customer's first evaluation always changes.
        say("  waiting for the worker to join and answer the first event")
        until = time.monotonic() + 60
        produce_events(stack.broker.bootstrap, payloads[:1], topics)
        while not arrivals and time.monotonic() < until:
            for p, log in zip(started, logs, strict=False):
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited with {p.returncode}; see {log}")
            time.sleep(0.2)
        if not arrivals:
            raise RuntimeError(f"no change for the warm-up event in 60 s; see {logs[0]}")
        if workers > 1:
            # The first change says one worker owns that partition, not that the group
            # has settled: a rebalance takes about half a session timeout (docs/ARCHITECTURE.md).
            time.sleep(2 * SESSION_TIMEOUT)
        warm = len(arrivals)
        # This process holds every payload and send time: a full collection of that
        # heap paused it ~20-40 ms, stamping changes late. Out of the collector's sight.
        gc.collect()
        gc.freeze()
        gc.disable()  # and no collection while timing: this process's own pauses (up to ~40 ms) are not the worker's
        say(
            f"  offering {rate:,.0f} ev/s of simulated traffic ({len(payloads) - 1:,} events, {len({k for _, k, _ in payloads}):,} customers) for ~{seconds:g}s"
        )

        def stamped() -> Iterator[tuple[str, bytes, bytes]]:
            for (family, key, value), ms in zip(payloads[1:], event_ms[1:], strict=False):
                sent_at[(key.decode(), ms)] = time.time()
                yield family, key, value

        stats = produce_events(stack.broker.bootstrap, stamped(), topics, rate=rate)
        until = time.monotonic() + 30
        stable, last = 0, -1
        while time.monotonic() < until and stable < 10:  # 2 s without a new change: done
            stable = stable + 1 if len(arrivals) == last else 0
            last = len(arrivals)
            time.sleep(0.2)
        watcher.stop.set()
        watcher.join(5)
        timed = [(now, sent_at[(cid, ms)], emitted) for now, cid, ms, emitted in arrivals[warm:] if (cid, ms) in sent_at]
        lat = sorted((now - sent) * 1000 for now, sent, _ in timed)
        decide = sorted((emitted - sent) * 1000 for _, sent, emitted in timed)
        timed_out = len(arrivals) - warm - len(timed)
        # p99 per 5 s of sending: shows whether the tail is the start (every customer new) or steady.
        start = min((sent for _, sent, _ in timed), default=0.0)
        timeline = _per_5s(((sent - start, (now - sent) * 1000) for now, sent, _ in timed), "changes")

        return {
            "offered_rate": round(rate, 1),
            "achieved_rate": round(stats.rate, 1),
            "sent": stats.sent,
            "workers": workers,
            "customers": len({k for _, k, _ in payloads}),
            "changes_timed": len(lat),
            "changes_by_deadline": timed_out,
            "p50_ms": _pick(lat, 0.50),
            "p90_ms": _pick(lat, 0.90),
            "p99_ms": _pick(lat, 0.99),
            "max_ms": round(lat[-1], 1) if lat else None,
            # Split at the change's emitted_at (the engine's clock when it decided):
            "to_decision_p50_ms": _pick(decide, 0.5),
            "to_decision_p99_ms": _pick(decide, 0.99),
            "timeline": timeline,
        }
    finally:
        gc.enable()
        gc.unfreeze()
        watcher.stop.set()
        for p in started:
            procs.stop(p)
        watcher.join(5)
        r.close()
