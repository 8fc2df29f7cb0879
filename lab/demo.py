"""``segflow demo`` / ``make demo``: the whole path on an embedded stack, then a report.

Starts a broker and Redis on free loopback ports, a worker process, feeds it a
simulated population for about ``seconds``, prints segment sizes, a sample of
change events read back from the segment-changes topic and one customer, and
stops everything it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis as redis_lib

from lab.embedded import EmbeddedStack, free_port
from streams.admin import ensure_topics
from streams.queries import customer_view, format_customer, format_sizes, segment_sizes
from streams.settings import Settings
from streams.status import read_totals
from streams.topic_reader import read_to_end
from streams.topics import TOPICS


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(seconds: float = 60, customers: int = 300, days: float = 45, seed: int = 7) -> int:
    from lab.publish import produce_simulation
    from lab.simulate import Simulation

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="segflow-demo-"))
    _say(f"segflow demo: {customers} simulated customers over {days:g} days of event time, about {seconds:g}s of wall time")
    with EmbeddedStack(work_dir=work) as stack:
        _say(f"[1/4] embedded broker on {stack.broker.bootstrap}, Redis on {stack.redis.url} (work dir {work})")
        settings = Settings(kafka_url=stack.broker.url, redis_url=stack.redis.url, clock="event")
        ensure_topics(stack.broker.bootstrap, TOPICS, settings.partitions)
        web_port = free_port()
        env = {
            **os.environ,
            "SEGFLOW_KAFKA_URL": stack.broker.url,
            "SEGFLOW_REDIS_URL": stack.redis.url,
            "SEGFLOW_CLOCK": "event",
            "SEGFLOW_APP_ID": "segflow-demo",
            "SEGFLOW_WEB_PORT": str(web_port),
            "SEGFLOW_DATA_DIR": str(work / "worker"),
            "SEGFLOW_SESSION_TIMEOUT_SECONDS": "6",
        }
        log_path = work / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "segflow.cli", "worker"], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        _say(f"[2/4] worker started (pid {worker.pid}, log {log_path}); dashboard while it runs: http://127.0.0.1:{web_port}/dashboard")
        r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
        try:
            sim = Simulation(customers=customers, days=days, seed=seed, profile_share=0.85)
            produced: dict = {}
            stop = threading.Event()

            def feed() -> None:
                produced.update(produce_simulation(stack.broker.bootstrap, sim, TOPICS, rate=None, progress=lambda m: None, stop=stop))

            producer = threading.Thread(target=feed, daemon=True)
            producer.start()
            _say("[3/4] producing simulated clickstream, purchases, logins and profiles; the worker segments them as they arrive")
            budget = max(10.0, seconds - (time.monotonic() - started) - 8)
            deadline = time.monotonic() + budget
            last_print = 0.0
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    _say(f"worker exited early with code {worker.returncode}; see {log_path}")
                    return 1
                stats = read_totals(r, settings.layout)
                if time.monotonic() - last_print >= 5:
                    last_print = time.monotonic()
                    _say(
                        f"  t={time.monotonic() - started:5.1f}s  received={stats.get('received', 0)} applied={stats.get('applied', 0)} "
                        f"changes={stats.get('changes', 0)} dead-lettered={stats.get('dead_lettered', 0)}"
                    )
                if not producer.is_alive() and produced and int(stats.get("received", 0)) >= produced.get("sent", 0):
                    break
                time.sleep(0.5)
            stop.set()
            producer.join(timeout=10)
            _report(r, settings, stack.broker.bootstrap, produced)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            r.close()
        _say(f"[4/4] worker, broker and Redis stopped; total {time.monotonic() - started:.0f}s")
    return 0


def _report(r, settings: Settings, bootstrap: str, produced: dict) -> None:
    stats = read_totals(r, settings.layout)
    _say("")
    _say(f"events produced: {produced.get('sent', '?')}   worker: {json.dumps(stats)}")
    _say("")
    _say("segment sizes (segflow segments):")
    _say(format_sizes(segment_sizes(r)))
    changes = [json.loads(r.value) for r in read_to_end(bootstrap, TOPICS.segment_changes, timeout=30)]
    _say("")
    _say(f"segment-change events on topic '{TOPICS.segment_changes}': {len(changes)}; a sample:")
    step = max(1, len(changes) // 6)
    for ch in changes[::step][:6]:
        snapshot = {k: v for k, v in (ch.get("features") or {}).items() if k in ("days_since_last_activity", "purchases_90d", "engagement_score")}
        _say(f"  {ch['occurred_at'][:19]} {ch['customer_id']} {ch['segmentation']}: {ch.get('from')} -> {ch['to']} ({ch['reason']}) {snapshot}")
    if changes:
        cid = changes[-1]["customer_id"]
        view = customer_view(r, cid, settings)
        if view:
            _say("")
            _say(f"one customer (segflow customer {cid}):")
            _say(format_customer(view))
        _say("")
        _say("to query customers yourself while a worker runs:")
        _say("  segflow up                      # terminal 1: broker + Redis + worker, Ctrl-C stops all")
        _say("  segflow simulate --customers 1000 --days 90   # terminal 2 (with the exports `segflow up` prints)")
        _say(f"  segflow customer {cid}")
        _say("  segflow segments")
