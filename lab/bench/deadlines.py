"""Row 6b: deadline latency, from a silent customer's deadline to the lifecycle ->
dormant change the worker's deadline timer makes with no event from them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lab.bench.common import (
    PARTITIONS,
    Procs,
    _pick,
    say,
    worker_env,
)
from lab.bench.latency import ChangeWatcher, fresh_logins, warm_up

# -- row 6b: deadline latency ---------------------------------------------------------


DEADLINE_PREFIX = "benchdl-"


def deadline_config(work: Path, silence_s: float) -> Path:
    """The default segments config with the 30-day dormancy rule shortened to
    ``silence_s`` and no lifecycle dwell, so a deadline comes due within the run."""
    from importlib import resources

    text = resources.files("segmenter").joinpath("default_segments.yaml").read_text()
    dormant = '- {feature: days_since_last_activity, op: ">=", value: 30}'
    dwell = "min_dwell_seconds: 86400"
    if dormant not in text or dwell not in text:
        raise RuntimeError("default_segments.yaml changed: update lab.bench.deadlines.deadline_config")
    text = text.replace(dormant, dormant.replace("value: 30", f"value: {silence_s / 86400:.8f}"))
    text = text.replace(dwell, "min_dwell_seconds: 0", 1)
    path = work / "segments-deadline.yaml"
    path.write_text(text)
    return path


def run_deadline_latency(stack, procs: Procs, work: Path, customers: int = 200, silence_s: float = 15.0) -> dict:
    """From a silent customer's deadline (last activity + the dormancy threshold) to
    the lifecycle -> dormant change on the topic, with no event from them: the
    worker's deadline timer (wall clock) must notice the silence by itself."""
    import redis as redis_lib

    from streams.admin import ensure_topics
    from streams.producer import produce_events
    from streams.topics import Topics

    topics = Topics(DEADLINE_PREFIX)
    ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)
    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    r.flushall()
    arrivals: dict[str, float] = {}
    watcher = ChangeWatcher(stack.broker.bootstrap, topics.segment_changes, b"latd")

    # Keep the arrival of each customer's *dormant* change, not its first change.
    def on_records(now: float, rec: Any) -> None:
        change = json.loads(rec.value)
        if change["segmentation"] == "lifecycle" and change["to"] == "dormant":
            arrivals.setdefault(change["customer_id"], now)

    watcher.on_record = on_records
    watcher.start()
    env = worker_env(stack, topics.prefix, "bench-deadline", work, "wall", SEGFLOW_SEGMENTS_CONFIG=deadline_config(work, silence_s))
    p = procs.start([sys.executable, "-m", "segflow.cli", "worker"], env, work / "worker-deadline.log")
    try:
        watcher.ready.wait(30)
        warm_up(stack.broker.bootstrap, topics, watcher, p, work / "worker-deadline.log", "dwarm")
        say(f"  {customers} customers log in once, then stay silent; dormant after {silence_s:g}s")
        sent_at: dict[str, int] = {}
        stop = threading.Event()
        items = fresh_logins("dm", stop, sent_at)
        produce_events(stack.broker.bootstrap, (next(items) for _ in range(customers)), topics, rate=customers / 5.0)
        until = time.monotonic() + silence_s + 40
        while time.monotonic() < until and sum(1 for c in arrivals if c.startswith("latdm")) < len(sent_at):
            time.sleep(0.2)
        lat = sorted(arrivals[c] * 1000 - (ms + silence_s * 1000) for c, ms in sent_at.items() if c in arrivals)

        return {
            "customers": len(sent_at),
            "answered": len(lat),
            "silence_s": silence_s,
            "p50_ms": _pick(lat, 0.5),
            "p99_ms": _pick(lat, 0.99),
            "max_ms": round(lat[-1], 1) if lat else None,
            "early": sum(1 for x in lat if x < 0),
        }
    finally:
        watcher.stop.set()
        procs.stop(p)
        watcher.join(5)
        r.close()
