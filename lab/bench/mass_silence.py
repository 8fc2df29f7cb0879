"""Row 8, ``mass_silence``: a whole cohort falls due in the same second.

``customers`` fresh customers log in once, all stamped with the same event time
T0, and then stay silent; the shipped config with the 30-day dormancy rule
shortened to ``silence_s`` (as row 6b) makes every one of them due at
T0 + ``silence_s`` on the worker's wall clock. Meanwhile a probe of other fresh
customers' logins arrives at a fixed rate, before and during the drain.

Reported: the time from the cohort's deadline to its last ``dormant`` change
(and to the first), ``evaluations_per_s`` = cohort / that time, and the probe's
event -> first change p99 without the drain (the seconds before T0 + silence)
and during it. Absence deadlines must not starve ingest (probe p99 during the
drain) and ingest must not starve them (evaluations per second).

Run alone (an embedded stack of its own), optionally with a py-spy profile of
the worker that says where the drain's time goes::

    python -m lab.bench.mass_silence --customers 10000 --profile drain.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lab.bench.common import PARTITIONS, SESSION_TIMEOUT, Procs, _pick, say, worker_env
from lab.bench.deadlines import deadline_config
from lab.bench.latency import ChangeWatcher, _iso_ms, fresh_logins, warm_up
from lab.bench.worker import start_py_spy

MASS_PREFIX = "benchms-"
PROFILE_HZ = 100  # py-spy samples per second of the drain profile


def cohort_logins(n: int, at_ms: int, tag: str):
    """``n`` never-seen customers' logins, every one stamped ``at_ms``."""
    stamp = _iso_ms(at_ms)
    for i in range(n):
        cid = f"ms{tag}c-{i}"
        value = f'{{"event_id":"{cid}","customer_id":"{cid}","occurred_at":"{stamp}","type":"login","success":true,"channel":"web"}}'
        yield "login", cid.encode(), value.encode()


def run_mass_silence(
    stack,
    procs: Procs,
    work: Path,
    customers: int,
    probe_rate: float = 200.0,
    tag: str = "a",
    profile: Path | None = None,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Row 8 on its own topics (``tag``); ``workers`` > 1 starts that many worker processes
    in one consumer group (their deadlines are per partition, so they share the drain);
    ``profile`` records the first of them."""
    import redis as redis_lib

    from streams.admin import ensure_topics
    from streams.producer import produce_events
    from streams.topics import Topics

    topics = Topics(f"{MASS_PREFIX}{tag}-")
    ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)
    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    r.flushall()
    # The cohort must be in before it falls due: ingest of fresh customers runs at
    # ~2,000-4,000 ev/s here, so allow 1 ms per customer plus a quiet baseline.
    silence_s = 25.0 + customers / 1000.0
    cohort_key = f"ms{tag}c-".encode()
    dormant_at: dict[str, float] = {}

    def on_record(now: float, rec: Any) -> None:
        if rec.key and rec.key.startswith(cohort_key):
            change = json.loads(rec.value)
            if change["segmentation"] == "lifecycle" and change["to"] == "dormant":
                dormant_at.setdefault(change["customer_id"], now)

    watcher = ChangeWatcher(stack.broker.bootstrap, topics.segment_changes, b"")  # the topic is this row's own
    watcher.on_record = on_record
    watcher.start()
    config = deadline_config(work, silence_s)
    logs = [work / f"worker-mass-{tag}-{i}.log" for i in range(workers)]
    started = []
    for i, log in enumerate(logs):
        own = work / f"mass-{tag}-w{i}"  # own web port and data dir each
        own.mkdir(exist_ok=True)
        env = worker_env(stack, topics.prefix, f"bench-mass-{tag}", own, "wall", SEGFLOW_SEGMENTS_CONFIG=config, **(extra_env or {}))
        started.append(procs.start([sys.executable, "-m", "segflow.cli", "worker"], env, log))
    p, log = started[0], logs[0]
    # Idle samples too (one per interval), so samples count time back from the worker's exit.
    spy = start_py_spy(p.pid, profile, silence_s + 90 + customers / 200, procs, ("-f", "speedscope", "-r", str(PROFILE_HZ), "--idle")) if profile else None
    stop = threading.Event()
    try:
        watcher.ready.wait(30)
        if watcher.error:
            raise RuntimeError(f"changes watcher: {watcher.error}")
        warm_up(stack.broker.bootstrap, topics, watcher, p, log, f"ms{tag}warm")
        if workers > 1:
            # One answer says one worker owns a partition, not that the group has settled.
            time.sleep(2 * SESSION_TIMEOUT)
        t0_ms = int(time.time() * 1000)
        due_s = t0_ms / 1000 + silence_s
        say(f"  {customers:,} customers log in at T0 and stay silent: all due at T0 + {silence_s:g} s; probe {probe_rate:g} ev/s of fresh logins")
        probe_sent: dict[str, int] = {}

        def probe() -> None:
            produce_events(stack.broker.bootstrap, fresh_logins(f"ms{tag}p", stop, probe_sent), topics, rate=probe_rate, stop=stop)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        stats = produce_events(stack.broker.bootstrap, cohort_logins(customers, t0_ms, tag), topics)
        say(f"  cohort produced in {time.time() - t0_ms / 1000:.1f} s; waiting for the worker to assign it")
        # The baseline starts once the worker has assigned the whole cohort (each
        # customer's first change is on the topic): their first events are load too.
        while time.time() < due_s and all(w.poll() is None for w in started):
            assigned = sum(1 for k in list(watcher.first) if k.startswith(cohort_key))
            if assigned >= customers:
                break
            time.sleep(0.2)
        ingested_s = time.time() - t0_ms / 1000
        say(f"  cohort assigned {ingested_s:.1f} s after T0; probe baseline until its deadline")
        if ingested_s + 7 > silence_s:
            say("  warning: under 5 s of baseline: the cohort was still being assigned close to its deadline")
        while time.time() < due_s + 1 and all(w.poll() is None for w in started):
            time.sleep(0.5)
        wait_until = time.monotonic() + 60 + customers / 200
        last_progress = time.monotonic()
        while len(dormant_at) < customers and time.monotonic() < wait_until and all(w.poll() is None for w in started):
            time.sleep(0.2)
            if time.monotonic() - last_progress > 5:
                say(f"  drain: {len(dormant_at):,}/{customers:,} moved to dormant")
                last_progress = time.monotonic()
        drained_at = max(dormant_at.values()) if dormant_at else None
        # a few more seconds of probe after the drain, then stop
        time.sleep(2.0)
        stop.set()
        prober.join(30)
        time.sleep(3.0)
        watcher.stop.set()
        watcher.join(5)

        def probe_latencies(start: float, end: float) -> list[float]:
            out = []
            for cid, ms in list(probe_sent.items()):
                hit = watcher.first.get(cid.encode())
                if hit and start <= ms / 1000 < end:
                    out.append(hit[0] * 1000 - ms)
            return sorted(out)

        warmed = t0_ms / 1000 + ingested_s + 2.0  # the baseline: cohort assigned, nothing due yet
        before = probe_latencies(warmed, due_s)
        during = probe_latencies(due_s, drained_at) if drained_at else []
        drain_s = (drained_at - due_s) if drained_at else None
        first_s = (min(dormant_at.values()) - due_s) if dormant_at else None
        b, d = _pick(before, 0.99), _pick(during, 0.99)
        breakdown = None
        if spy is not None and profile is not None and drained_at is not None:
            procs.stop(p)  # py-spy writes its profile when the process it records exits
            exited_at = time.time()  # the profile's last sample
            spy.wait(30)
            breakdown = drain_breakdown(profile, p.pid, exited_at - due_s, exited_at - drained_at)
        return {
            "customers": customers,
            "workers": workers,
            "moved": len(dormant_at),
            "silence_s": silence_s,
            "cohort_assigned_s": round(ingested_s, 2),
            "cohort_produce_rate": round(stats.rate, 1),
            "first_change_after_deadline_s": round(first_s, 2) if first_s is not None else None,
            "drain_s": round(drain_s, 2) if drain_s is not None else None,
            "evaluations_per_s": round(len(dormant_at) / drain_s, 1) if drain_s else None,
            "probe_rate": probe_rate,
            "probe_before": {"events": len(before), "p50_ms": _pick(before, 0.5), "p99_ms": b},
            "probe_during": {"events": len(during), "p50_ms": _pick(during, 0.5), "p99_ms": d},
            "probe_p99_ratio": round(d / b, 2) if b and d else None,
            "drain_profile": breakdown,
        }
    finally:
        stop.set()
        watcher.stop.set()
        for w in started:
            procs.stop(w)
        watcher.join(5)
        r.close()


# What the worker's main thread does, first match wins: the stack holds this frame name.
DRAIN_ACTIVITIES = (
    ("deadline evaluation (claim, read, evaluate, commit)", "Engine._fire_deadlines"),
    ("deadline changes published", "create_app.<locals>.deadlines"),
    ("event ingest (the probe)", "create_app.<locals>.ingest"),
)


def drain_breakdown(path: Path, pid: int, start_before_end_s: float, end_before_end_s: float) -> dict[str, float]:
    """Share of the worker's (process ``pid``) main-thread samples in a window (given in seconds before
    the profile's end, the worker's exit: py-spy's first seconds, while the interpreter
    starts, have no samples) per activity of :data:`DRAIN_ACTIVITIES`, idle (waiting in
    the event loop's select), or the rest (Kafka client, timers)."""
    data = json.loads(path.read_text())
    names = [f["name"] for f in data["shared"]["frames"]]
    main = next(p for p in data["profiles"] if p["name"].startswith(f"Thread {pid} "))  # the main thread's id is the pid
    samples = main["samples"]
    first = max(0, len(samples) - int(start_before_end_s * PROFILE_HZ))
    window = samples[first : max(first, len(samples) - int(end_before_end_s * PROFILE_HZ))]
    counts: Counter[str] = Counter()
    for stack in window:
        frames = [names[i] for i in stack]
        activity = next((label for label, frame in DRAIN_ACTIVITIES if frame in frames), None)
        if activity is None:
            idle = not frames or frames[-1].endswith(("select", "poll"))
            activity = "idle (event loop waiting)" if idle else "Kafka client, timers, other"
        counts[activity] += 1
    total = sum(counts.values())
    return {label: round(n / total, 3) for label, n in counts.most_common()} if total else {}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lab.embedded import EmbeddedStack

    parser = argparse.ArgumentParser(description="Row 8 alone: a cohort falls due in the same second, on an embedded stack.")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--probe-rate", type=float, default=200.0)
    parser.add_argument("--profile", type=Path, help="py-spy speedscope profile of the worker here, and the drain's breakdown")
    parser.add_argument("--deadline-claim", type=int, help="SEGFLOW_DEADLINE_CLAIM for the worker (default: the worker's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes in one consumer group (they share the drain by partition)")
    args = parser.parse_args(argv)
    extra = {"SEGFLOW_DEADLINE_CLAIM": str(args.deadline_claim)} if args.deadline_claim else {}
    work = Path(tempfile.mkdtemp(prefix="segflow-mass-silence-"))
    procs = Procs()
    with EmbeddedStack(work_dir=work) as stack:
        try:
            row = run_mass_silence(
                stack,
                procs,
                work,
                args.customers,
                args.probe_rate,
                profile=args.profile.resolve() if args.profile else None,
                extra_env=extra,
                workers=args.workers,
            )
        finally:
            procs.stop_all()
    print(json.dumps(row, indent=2))
    return row


if __name__ == "__main__":
    main()
