"""``segflow bench`` / ``make bench``: one run, one table, side by side.

Everything runs on one :class:`~lab.embedded.EmbeddedStack` (Tansu broker
+ Redis on loopback) in one invocation, so the rows are comparable even on a
shared, noisy machine; ratios matter more than absolute numbers. Rows:

1. load generator: kafka-python producer of pre-serialised simulated events
   (the backlog every later consumer row reads);
2. raw aiokafka consumer reading that backlog;
3. bare Faust agent (same Faust settings as :func:`streams.app.create_app`),
   a subprocess, in two shapes: ``async for value in stream`` and
   ``stream.take_events`` batches as the worker uses;
4. Redis ceiling: pipelined ``FCALL segflow_apply``, batches like the worker's;
5. segflow end to end: a real ``segflow worker`` subprocess on the backlog,
   events/s from its ``segflow:stats`` hash;
6. latency at a fixed offered load, producer timestamp -> segment change read
   back from the changes topic: row 5's kind of traffic (event clock) at half the
   sustained rate of row 5, with its floor (the same traffic read by consumers that
   do nothing), and at lower fractions of that rate (``latency_mix_sweep``); fresh
   customers only (wall clock) at half the rate, at 100 ev/s and at a few rates
   between (``latency_sweep``); the sweeps show where p99 crosses 100 ms;
7. Redis memory per customer and per-event cost of ``segflow_apply`` at 10k,
   100k (and 1M with ``--scale-max``) customers, state populated directly.

Progress goes to stderr; the table to stdout; the JSON to ``docs/bench/``
(or ``--out``). Every subprocess and server is stopped at the end, also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_PREFIX = "bench-"  # backlog topics (rows 1, 2, 3, 5)
LATENCY_PREFIX = "benchlat-"  # row 6
PARTITIONS = 4  # the worker's default SEGFLOW_PARTITIONS
SESSION_TIMEOUT = 6.0  # a group join takes about half (docs/ARCHITECTURE.md)


@dataclasses.dataclass
class BenchOptions:
    events: int = 300_000
    quick: bool = False
    out: Path | None = None
    scale_max: bool = False
    profile: Path | None = None  # py-spy raw output of the worker during row 5
    profile_seconds: float = 20.0
    latency_rate: float | None = None  # default: half the measured sustained rate
    latency_seconds: float = 20.0
    latency_mix_seconds: float = 40.0  # row 6 on row 5's kind of traffic
    # Row 6 on row 5's traffic again at these fractions of row 5's sustained rate: where p99 < 100 ms holds.
    latency_mix_sweep: tuple[float, ...] = (0.3, 0.4)
    latency_mix_two_workers: bool = True  # row 6 at half rate again, two worker processes in one group
    latency_low_rate: float = 100.0  # a second point, well below what fresh customers cost
    # More points of fresh-customer load: where p99 crosses 100 ms (each costs ~40 s).
    latency_sweep: tuple[float, ...] = (200.0, 400.0, 700.0)
    two_workers: bool = True  # row 5b: two worker processes (the machine's 2 cores are shared with broker and Redis)
    scale_sizes: tuple[int, ...] = (10_000, 100_000)
    scale_probe_events: int = 20_000
    scale_probe_rounds: int = 5

    @classmethod
    def quick_run(cls, **kw) -> BenchOptions:
        base = dict(
            events=20_000,
            quick=True,
            latency_seconds=5.0,
            latency_mix_seconds=8.0,
            latency_mix_sweep=(),
            latency_mix_two_workers=False,
            latency_sweep=(),
            two_workers=False,
            scale_sizes=(2_000, 10_000),
            scale_probe_events=4_000,
            scale_probe_rounds=3,
        )
        base.update(kw)
        return cls(**base)


_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- machine ----------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        head, dirty = "", False
    return {
        "git_commit": head or None,
        "git_tree_dirty": dirty,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- processes ------------------------------------------------------------------


class Procs:
    """Every subprocess the bench starts; :meth:`stop_all` stops them (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen | None, timeout: float = 20.0) -> None:
        from lab.embedded import stop_process

        stop_process(p, timeout)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


def worker_env(stack, prefix: str, app_id: str, work: Path, clock: str, **extra) -> dict:
    from lab.embedded import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW_")}
    env.update(
        {
            "SEGFLOW_KAFKA_URL": stack.broker.url,
            "SEGFLOW_REDIS_URL": stack.redis.url,
            "SEGFLOW_TOPIC_PREFIX": prefix,
            "SEGFLOW_APP_ID": app_id,
            "SEGFLOW_CLOCK": clock,
            "SEGFLOW_WEB_PORT": str(free_port()),
            "SEGFLOW_DATA_DIR": str(work / f"data-{app_id}"),
            "SEGFLOW_SESSION_TIMEOUT_SECONDS": str(SESSION_TIMEOUT),
            "SEGFLOW_PARTITIONS": str(PARTITIONS),
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


# -- payloads ----------------------------------------------------------------------


def make_payloads(n: int, seed: int = 11, id_prefix: str = "b") -> list[tuple[str, bytes, bytes]]:
    """``n`` simulated events as ``(family, key, value)`` bytes, in event-time order.

    About 300 events per customer (a simulated customer makes ~700 in 90 days,
    so the backlog covers roughly the first 40 days of their lives).
    """
    from lab.simulate import Simulation, event_to_json

    out: list[tuple[str, bytes, bytes]] = []
    round_ = 0
    while len(out) < n:
        sim = Simulation(customers=max(20, (n - len(out)) // 300), days=90, seed=seed + round_, id_prefix=f"{id_prefix}{round_}-")
        for family, event in sim.events():
            out.append((family, event.customer_id.encode(), event_to_json(event)))
            if len(out) >= n:
                break
        round_ += 1
    return out


# -- row 1: load generator ----------------------------------------------------------


def produce_backlog(bootstrap: str, payloads, topics) -> dict:
    from streams.producer import produce_events

    stats = produce_events(bootstrap, payloads, topics, progress=lambda s: say(f"  producer: {s.summary()}"), progress_every=2.0)
    if stats.failed:
        raise RuntimeError(f"producer: {stats.failed} failed ({stats.first_error})")
    return {"sent": stats.sent, "seconds": round(stats.elapsed, 3), "rate": round(stats.rate, 1)}


# -- row 2: raw consumer --------------------------------------------------------


async def _raw_consume(bootstrap: str, topic_names, expected: int, timeout: float) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topic_names for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await consumer.position(tps[0])
        # Timed from the first fetch request (unlike the Faust rows, which start
        # at the first delivery): the whole backlog can come in one getmany.
        count = 0
        first = time.monotonic()
        last = None
        deadline = first + timeout
        while count < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            n = sum(len(b) for b in batches.values())
            if n:
                count += n
                last = time.monotonic()
        return _rate(count, 0, first, last, expected)
    finally:
        await consumer.stop()


def _rate(count: int, first_count: int, first: float | None, last: float | None, expected: int) -> dict:
    """Events/s from the first delivery to the last (the first delivery's own events excluded)."""
    if first is None or last is None or last <= first:
        rate = 0.0
    else:
        rate = (count - first_count) / (last - first)
    return {"events": count, "expected": expected, "seconds": round((last or 0) - (first or 0), 3), "rate": round(rate, 1)}


# -- row 3: bare Faust ------------------------------------------------------------


def faust_app_kwargs(settings) -> dict:
    """The Faust settings of :func:`streams.app.create_app` that matter for throughput.

    Copied (the bench must not build the real app); tests/integration/test_bench_smoke.py
    checks they still equal the real app's configuration.
    """
    return dict(
        store="memory://",
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=settings.session_timeout_seconds,
        producer_acks=-1,
        stream_buffer_maxsize=32768,
        broker_max_poll_records=10000,
        consumer_max_fetch_size=8 * 1024 * 1024,
    )


def bare_faust_app(settings):
    """A Faust app with the worker's settings (:func:`faust_app_kwargs`) and its input topics, as raw bytes."""
    import faust

    app = faust.App(settings.app_id, broker=settings.kafka_url, datadir=str(settings.data_dir), web_enabled=False, **faust_app_kwargs(settings))
    return app, app.topic(*settings.topics.inputs, key_serializer="raw", value_serializer="raw")


def bare_faust_main(mode: str) -> None:
    """Subprocess entry: a Faust agent that only counts events; reports to Redis ``bench:faust:<mode>``."""
    import faust
    import redis.asyncio as aioredis

    from streams.gc_tuning import settle_heap
    from streams.settings import load_settings

    settings = load_settings()
    app, inputs = bare_faust_app(settings)
    state = {"n": 0, "first": 0.0, "first_n": 0, "last": 0.0}
    r = aioredis.Redis.from_url(settings.redis_url.get_secret_value())

    if mode == "take":

        @app.agent(inputs)
        async def bare(stream):
            settle_heap(settings.gc_young_threshold)  # as the worker does once started
            async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
                now = time.time()
                if not state["n"]:
                    state["first"], state["first_n"] = now, len(events)
                state["n"] += len(events)
                state["last"] = now
    else:

        @app.agent(inputs)
        async def bare(stream):
            settle_heap(settings.gc_young_threshold)
            async for _value in stream:
                now = time.time()
                if not state["n"]:
                    state["first"], state["first_n"] = now, 1
                state["n"] += 1
                state["last"] = now

    @app.timer(0.25)
    async def report():
        await r.hset(f"bench:faust:{mode}", mapping={k: str(v) for k, v in state.items()})

    worker = faust.Worker(app, loglevel="warning", quiet=True, override_logging=False)
    worker.execute_from_commandline()


def run_bare_faust(stack, procs: Procs, work: Path, mode: str, expected: int, timeout: float) -> dict:
    import redis as redis_lib

    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    key = f"bench:faust:{mode}"
    r.delete(key)
    env = worker_env(stack, BENCH_PREFIX, f"bench-faust-{mode}", work, "event")
    p = procs.start([sys.executable, "-m", "lab.bench", "bare-faust", mode], env, work / f"faust-{mode}.log")
    try:
        deadline = time.monotonic() + timeout
        h: dict = {}
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"bare Faust ({mode}) exited with {p.returncode}; see {work / f'faust-{mode}.log'}")
            h = r.hgetall(key)
            if h and int(h["n"]) >= expected:
                break
            time.sleep(0.25)
        if not h:
            h = {"n": 0, "first_n": 0, "first": 0, "last": 0}
        return _rate(int(h["n"]), int(h["first_n"]), float(h["first"]) or None, float(h["last"]) or None, expected)
    finally:
        procs.stop(p)
        r.close()


# -- row 4: Redis ceiling ---------------------------------------------------------


def _deltas(payloads) -> list[tuple[str, Any]]:
    from features.extract import delta_of
    from streams.events import decode

    out = []
    for i, (family, _key, value) in enumerate(payloads):
        event = decode(family, value)
        out.append((event.customer_id, delta_of(event, (0, i))))
    return out


def _batch_calls(items, late_before_ms=None):
    """FCALL arguments of one batch, asking for state on each customer's last event (as the worker does)."""
    from features.store import apply_call

    last = {cid: i for i, (cid, _) in enumerate(items)}
    return [apply_call(cid, d, late_before_ms, last[cid] == i) for i, (cid, d) in enumerate(items)]


def worker_like_batches(deltas, batch: int, lateness_ms: int = 6 * 3600 * 1000) -> list:
    """Batches of FCALL arguments as the worker builds them: each batch's lateness horizon
    is the newest event time of the batches before it minus the default lateness."""
    out, newest = [], None
    for i in range(0, len(deltas), batch):
        chunk = deltas[i : i + batch]
        out.append(_batch_calls(chunk, None if newest is None else newest - lateness_ms))
        top = max(d.ts_ms for _, d in chunk)
        newest = top if newest is None else max(newest, top)
    return out


async def _apply_batches(r, batches) -> float:
    from features.pipeline import run_pipeline  # as FeatureStore.apply_batch sends them

    t0 = time.perf_counter()
    for calls in batches:
        await run_pipeline(r, calls)
    return time.perf_counter() - t0


def fcall_server_usec(r) -> dict:
    """Server-side cost of FCALL since the last CONFIG RESETSTAT (sync client)."""
    all_stats = r.info("commandstats")
    stats = all_stats.get("cmdstat_fcall") or {}
    calls = int(stats.get("calls", 0))
    # Commands the functions ran (Redis counts them too): work per call, whatever the machine's speed.
    inner = sum(int(v.get("calls", 0)) for k, v in all_stats.items() if k != "cmdstat_fcall" and k.startswith("cmdstat_"))
    return {"calls": calls, "usec_per_call": float(stats.get("usec_per_call", 0.0)), "inner_commands_per_call": round(inner / calls, 2) if calls else None}


def redis_ceiling(url: str, payloads, batch: int = 2000) -> dict:
    import redis as redis_lib
    import redis.asyncio as aioredis

    from features.store import load_library_sync
    from streams.redis_packing import use_hiredis_packer

    sync = redis_lib.Redis.from_url(url)
    sync.flushdb()
    load_library_sync(sync)
    deltas = _deltas(payloads)
    batches = worker_like_batches(deltas, batch)
    sync.config_resetstat()

    async def go() -> float:
        r = use_hiredis_packer(aioredis.Redis.from_url(url))  # packs as the worker's client does
        try:
            return await _apply_batches(r, batches)
        finally:
            await r.aclose()

    seconds = asyncio.run(go())
    server = fcall_server_usec(sync)
    sync.flushdb()
    sync.close()
    return {
        "events": len(deltas),
        "seconds": round(seconds, 3),
        "rate": round(len(deltas) / seconds, 1),
        "batch": batch,
        "server_usec_per_call": server["usec_per_call"],
    }


# -- row 5: segflow end to end ----------------------------------------------------


def run_worker_e2e(stack, procs: Procs, work: Path, expected: int, timeout: float, opts: BenchOptions, workers: int = 1) -> dict:
    """Real workers (one consumer group) on the backlog; rate from the changes of the
    shared ``segflow:stats`` hash (written after every batch)."""
    import redis as redis_lib

    r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
    r.flushall()  # FLUSHALL keeps the function library
    group = "bench-segflow" if workers == 1 else f"bench-segflow-{workers}w"
    for i in range(workers):
        (work / f"w{i}").mkdir(exist_ok=True)
    envs = [worker_env(stack, BENCH_PREFIX, group, work / f"w{i}", "event") for i in range(workers)]  # own web port and data dir each
    others = [procs.start([sys.executable, "-m", "segflow.cli", "worker"], envs[i], work / f"worker-e2e-{group}-{i}.log") for i in range(1, workers)]
    p = procs.start([sys.executable, "-m", "segflow.cli", "worker"], envs[0], work / f"worker-e2e-{group}-0.log")
    say(f"  {workers} worker(s), pids {[p.pid] + [o.pid for o in others]}, logs {work}/worker-e2e-{group}-*.log")
    samples: list[tuple[float, int, dict]] = []  # (time the hash changed, received, whole hash)
    spy = None
    profile: dict | None = None
    try:
        deadline = time.monotonic() + timeout
        last_print = 0.0
        while time.monotonic() < deadline:
            for w in (p, *others):
                if w.poll() is not None:
                    raise RuntimeError(f"worker exited with {w.returncode}; see {work}/worker-e2e-{group}-*.log")
            h = r.hgetall("segflow:stats")
            received = int(h.get("received", 0))
            if h and (not samples or samples[-1][1] != received):
                samples.append((time.monotonic(), received, h))
                if received and opts.profile and spy is None:
                    spy = start_py_spy(p.pid, opts.profile, opts.profile_seconds, procs)
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                say(f"  worker: received={received}/{expected} applied={h.get('applied', 0)} changes={h.get('changes', 0)}")
            if received >= expected:
                break
            time.sleep(0.05)
        if spy is not None:
            try:
                spy.wait(opts.profile_seconds + 30)
            except subprocess.TimeoutExpired:
                procs.stop(spy)
            profile = summarise_profile(opts.profile) if opts.profile and opts.profile.exists() else None
        final = dict(samples[-1][2]) if samples else {}
        # Rate between stats writes that fall strictly inside the run: the first
        # write with received > 0 and the last with received < expected.
        inside = [s for s in samples if 0 < s[1] < expected]
        if len(inside) >= 2:
            (t1, r1, _), (t2, r2, _) = inside[0], inside[-1]
            rate = (r2 - r1) / (t2 - t1)
            window = t2 - t1
        elif len(samples) >= 2:  # a short run: from the first non-zero write to completion
            firsts = [s for s in samples if s[1] > 0]
            (t1, r1, _), (t2, r2, _) = firsts[0], samples[-1]
            rate = (r2 - r1) / (t2 - t1) if t2 > t1 else 0.0
            window = t2 - t1
        else:
            rate, window = 0.0, 0.0
        out = {
            "events": int(final.get("received", 0)),
            "expected": expected,
            "rate": round(rate, 1),
            "window_seconds": round(window, 2),
            "stats_samples": len(samples),
            "final_stats": final,
            "workers": workers,
        }
        out["memory"] = memory_per_customer(r, sample=2000 if not opts.quick else 300)
        if profile is not None:
            out["profile"] = profile
        return out
    finally:
        if spy is not None:
            procs.stop(spy)
        for w in (p, *others):
            procs.stop(w)
        r.close()


def start_py_spy(pid: int, out: Path, seconds: float, procs: Procs) -> subprocess.Popen | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        say("  py-spy not found next to the interpreter; no profile (pip install py-spy into the venv)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"  py-spy recording the worker for {seconds:g}s -> {out}")
    cmd = [str(exe), "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", str(out), "--nonblocking"]
    return procs.start(cmd, dict(os.environ), out.with_suffix(".log"))


def summarise_profile(path: Path, top: int = 15) -> dict:
    """py-spy ``raw`` (collapsed stacks) -> share of samples by leaf function and by frame anywhere on the stack."""
    leaf: Counter = Counter()
    inclusive: Counter = Counter()
    ours: Counter = Counter()  # segflow's own frames (streams/, features/, segmenter/), inclusive
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            inclusive[f] += n
            if f.endswith(".py)") and f.split(" (")[-1].startswith(("streams/", "features/", "segmenter/")) and "cli.py" not in f:
                ours[f] += n
    pct = lambda c: [(name, round(100.0 * n / total, 1)) for name, n in c.most_common(top)] if total else []  # noqa: E731
    return {"samples": total, "self_pct": pct(leaf), "inclusive_pct": pct(inclusive), "segflow_inclusive_pct": pct(ours)}


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``; no absolute paths in reports."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    else:
        try:
            where = str(Path(where).resolve().relative_to(REPO_ROOT))
        except (ValueError, OSError):
            where = Path(where).name
    return f"{name} ({where})"


# -- row 7a: memory of the customers the worker built ---------------------------------


def memory_per_customer(r, sample: int = 2000) -> dict:
    """MEMORY USAGE of ``cust:{id}`` + ``:seg`` + ``:hist`` over a sample, and used_memory per customer."""
    from features import keys

    ids: list[str] = []
    total_customers = 0
    for k in r.scan_iter(match="cust:{*}", count=1000):
        if k.endswith("}"):
            total_customers += 1
            if len(ids) < sample:
                ids.append(keys.customer_id_of(k))
    if not ids:
        return {"customers": 0}
    parts = {"cust": 0, "seg": 0, "hist": 0}
    fields = 0
    for cid in ids:
        parts["cust"] += r.memory_usage(keys.customer_key(cid), samples=0) or 0
        parts["seg"] += r.memory_usage(keys.segments_key(cid), samples=0) or 0
        parts["hist"] += r.memory_usage(keys.history_key(cid), samples=0) or 0
        fields += r.hlen(keys.customer_key(cid))
    info = r.info("memory")
    per = {k: round(v / len(ids)) for k, v in parts.items()}
    return {
        "customers": total_customers,
        "sampled": len(ids),
        "bytes_per_customer_keys": sum(per.values()),
        "by_key": per,
        "avg_fields_in_cust_hash": round(fields / len(ids), 1),
        "used_memory_dataset_per_customer": round(int(info.get("used_memory_dataset", 0)) / total_customers),
    }


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
        self.on_record = None  # optional callback(arrival s, record) for every matching record

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            c = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
            try:
                tps = []
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
        say("  waiting for the worker to join and answer a warm-up event")
        warm: dict = {}
        deadline = time.monotonic() + 60
        while not any(k.startswith(b"latwarm") for k in list(watcher.first)) and time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"worker exited with {p.returncode}; see {work / f'worker-latency-{tag}.log'}")
            once = threading.Event()
            gen = fresh_logins("warm", once, warm)
            produce_events(stack.broker.bootstrap, [next(gen)], topics)
            time.sleep(1.0)
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

    def on_record(now, rec):
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

        def timed():
            for (family, key, value), ms in zip(payloads[1:], event_ms[1:], strict=False):
                sent_at[(key.decode(), ms)] = time.time()
                yield family, key, value

        stats = produce_events(stack.broker.bootstrap, timed(), topics, rate=rate)
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


FLOOR_PREFIX = "benchfloor-"  # row 6's transport floor, own topics per consumer kind
FLOOR_CONSUMERS = ("raw", "faust")


def floor_consumer_main(kind: str) -> None:
    """Subprocess entry: read the floor topics and append each message's (producer
    timestamp, delivery time) pairs to ``SEGFLOW_BENCH_FLOOR_OUT``, twice a second,
    one JSON list per line of the pairs since the last line (the cost of a write must
    not grow with the run: it runs on the consumer's own loop, inside what it measures).

    ``raw``: an aiokafka consumer with the worker's fetch wait; ``faust``: a Faust
    agent with the worker's settings (fetch wait patched as the worker's) taking
    ``take_events(batch size, within=SEGFLOW_BATCH_WITHIN)`` batches and doing nothing.
    """
    from streams.settings import load_settings

    settings = load_settings()
    out = Path(os.environ["SEGFLOW_BENCH_FLOOR_OUT"])
    seen: list[tuple[float, float]] = []  # since the last line written
    last_dump = [0.0]

    def dump(now: float) -> None:
        if seen and now - last_dump[0] >= 0.5:
            last_dump[0] = now
            with out.open("a") as f:
                f.write(json.dumps(seen) + "\n")
            seen.clear()

    if kind == "raw":
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.admin import bootstrap_of

        async def consume() -> None:
            c = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(settings.kafka_url), enable_auto_commit=False, fetch_max_wait_ms=settings.fetch_max_wait_ms)
            await c.start()
            try:
                c.assign([TopicPartition(t, p) for t in settings.topics.inputs for p in range(settings.partitions)])
                await c.seek_to_beginning()
                while True:
                    batches = await c.getmany(timeout_ms=100, max_records=settings.batch_size)
                    now = time.time()
                    seen.extend((rec.timestamp / 1000, now) for records in batches.values() for rec in records)
                    dump(now)
            finally:
                await c.stop()

        asyncio.run(consume())
        return

    import faust

    from streams.app import _shorten_fetch_wait
    from streams.gc_tuning import settle_heap

    _shorten_fetch_wait(settings.fetch_max_wait_ms)
    app, inputs = bare_faust_app(settings)

    @app.agent(inputs)
    async def floor(stream):
        settle_heap(settings.gc_young_threshold)
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            now = time.time()
            seen.extend((event.message.timestamp, now) for event in events)
            dump(now)

    @app.timer(0.5)
    async def flush_tail():
        dump(time.time())

    sys.argv = [sys.argv[0], "worker"]
    faust.Worker(app, loglevel="warning", quiet=True, override_logging=False).execute_from_commandline()


def run_latency_floor(stack, procs: Procs, work: Path, kind: str, rate: float, seconds: float) -> dict:
    """Row 6's floor: the same traffic at the same rate, read by a consumer that does nothing
    (``kind``: a raw aiokafka consumer, or a bare Faust agent). Latency = delivery to that
    consumer minus the producer timestamp: what the broker and client add before segflow
    sees an event, measured in the same run."""
    from streams.admin import ensure_topics
    from streams.producer import produce_events
    from streams.topics import Topics

    topics = Topics(f"{FLOOR_PREFIX}{kind}-")
    ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)
    out = work / f"floor-{kind}.jsonl"
    out.unlink(missing_ok=True)
    env = worker_env(stack, topics.prefix, f"bench-floor-{kind}", work, "event", SEGFLOW_BENCH_FLOOR_OUT=str(out))
    payloads = make_payloads(max(2_000, int(rate * seconds)), seed=29, id_prefix="m")

    def delivered() -> list[list[float]]:
        try:
            with out.open() as f:
                return [pair for line in f if line.endswith("\n") for pair in json.loads(line)]  # a line being written is skipped
        except FileNotFoundError:
            return []

    p = procs.start([sys.executable, "-m", "lab.bench", "floor-consumer", kind], env, work / f"floor-{kind}.log")
    try:
        produce_events(stack.broker.bootstrap, payloads[:1], topics)
        until = time.monotonic() + 60
        while not delivered() and time.monotonic() < until:
            if p.poll() is not None:
                raise RuntimeError(f"floor consumer ({kind}) exited with {p.returncode}; see {work / f'floor-{kind}.log'}")
            time.sleep(0.2)
        warm = len(delivered())
        if not warm:
            raise RuntimeError(f"floor consumer ({kind}) read nothing in 60 s; see {work / f'floor-{kind}.log'}")
        start = time.time()
        stats = produce_events(stack.broker.bootstrap, payloads[1:], topics, rate=rate)
        until = time.monotonic() + 30
        while len(delivered()) < warm + stats.sent and time.monotonic() < until:
            time.sleep(0.25)
    finally:
        procs.stop(p)
    pairs = [(ts, now) for ts, now in delivered()[warm:] if ts >= start - 1]
    lat = sorted((now - ts) * 1000 for ts, now in pairs)
    return {
        "consumer": kind,
        "offered_rate": round(rate, 1),
        "achieved_rate": round(stats.rate, 1),
        "sent": stats.sent,
        "delivered": len(pairs),
        "p50_ms": _pick(lat, 0.50),
        "p90_ms": _pick(lat, 0.90),
        "p99_ms": _pick(lat, 0.99),
        "max_ms": round(lat[-1], 1) if lat else None,
        "timeline": _per_5s(((ts - start, (now - ts) * 1000) for ts, now in pairs), "events"),
    }


def _per_5s(samples, count_key: str) -> list[dict]:
    """``samples`` of (seconds since the start, latency ms) -> p50/p99 per 5 s window."""
    windows: dict[int, list[float]] = {}
    for at, ms in samples:
        windows.setdefault(int(at // 5), []).append(ms)
    return [{"from_s": k * 5, count_key: len(v), "p50_ms": _pick(sorted(v), 0.5), "p99_ms": _pick(sorted(v), 0.99)} for k, v in sorted(windows.items())]


def _pick(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None


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
        raise RuntimeError("default_segments.yaml changed: update bench.deadline_config")
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
    def on_records(now, rec):
        change = json.loads(rec.value)
        if change["segmentation"] == "lifecycle" and change["to"] == "dormant":
            arrivals.setdefault(change["customer_id"], now)

    watcher.on_record = on_records
    watcher.start()
    env = worker_env(stack, topics.prefix, "bench-deadline", work, "wall", SEGFLOW_SEGMENTS_CONFIG=deadline_config(work, silence_s))
    p = procs.start([sys.executable, "-m", "segflow.cli", "worker"], env, work / "worker-deadline.log")
    try:
        watcher.ready.wait(30)
        say("  waiting for the worker to join and answer a warm-up event")
        warm: dict = {}
        until = time.monotonic() + 60
        while not any(k.startswith(b"latdwarm") for k in list(watcher.first)) and time.monotonic() < until:
            if p.poll() is not None:
                raise RuntimeError(f"worker exited with {p.returncode}; see {work / 'worker-deadline.log'}")
            produce_events(stack.broker.bootstrap, [next(fresh_logins("dwarm", threading.Event(), warm))], topics)
            time.sleep(1.0)
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


# -- row 7b: scale --------------------------------------------------------------------


def scale_test(
    url: str, payloads, sizes: tuple[int, ...], probe_events: int, events_per_customer: int = 4, batch: int = 2000, probe_rounds: int = 5
) -> list[dict]:
    """Populate ``sizes`` customers by calling ``segflow_apply`` directly; at each size measure memory and
    per-event cost (the median of ``probe_rounds`` probes)."""
    import redis as redis_lib
    import redis.asyncio as aioredis

    from features import keys
    from features.store import load_library_sync
    from streams.redis_packing import use_hiredis_packer

    templates = [d for _, d in _deltas(payloads[: min(len(payloads), 5000)])]
    day = 86_400_000
    base = templates[0].ts_ms

    def deltas_for(cid_index: int, j: int, tag: str):
        t = templates[(cid_index * 7 + j) % len(templates)]
        return f"s{cid_index}", t._replace(ts_ms=base + j * day + (cid_index % 86_400) * 1000, token=f"{tag}{cid_index}.{j}", offset=None)

    sync = redis_lib.Redis.from_url(url, decode_responses=True)
    sync.execute_command("FLUSHALL", "SYNC")  # plain FLUSHALL may free lazily, after the baseline
    load_library_sync(sync)
    sync.memory_purge()
    baseline = int(sync.info("memory")["used_memory"])
    results = []

    async def run_all():
        r = use_hiredis_packer(aioredis.Redis.from_url(url))
        try:
            populated = 0
            for size in sizes:
                t0 = time.perf_counter()
                pending: list = []
                for i in range(populated, size):
                    for j in range(events_per_customer):
                        pending.append(deltas_for(i, j, "p"))
                    if len(pending) >= 5000:
                        await _apply_batches(r, [_batch_calls(pending)])
                        pending = []
                    if i and i % 100_000 == 0:
                        say(f"  populated {i:,} customers")
                if pending:
                    await _apply_batches(r, [_batch_calls(pending)])
                populate_s = time.perf_counter() - t0
                populated = size
                # Probe: events of random existing customers, a later day, batches like the worker's.
                # Several rounds, the median reported: one round of ~1 s moved by up to 70%
                # between rounds at the same size on this machine. Every probe event is its
                # customer's next day (customers drawn without replacement within a block of
                # ``size`` events), so at every size each event clears the same day buckets
                # and the work per event is the same.
                rng = random.Random(size)
                # Memory first: the probes add events (and duplicate-filter entries) to the customers.
                info = sync.info("memory")
                sample_ids = [f"s{rng.randrange(size)}" for _ in range(min(500, size))]
                usage = [sync.memory_usage(keys.customer_key(c), samples=0) or 0 for c in sample_ids]
                rounds = []
                last_day: dict[int, int] = {}
                for round_no in range(probe_rounds):
                    probe = []
                    for start in range(0, probe_events, size):
                        for k, c in enumerate(rng.sample(range(size), min(size, probe_events - start))):
                            last_day[c] = last_day.get(c, events_per_customer - 1) + 1
                            probe.append(deltas_for(c, last_day[c], f"q{size}.{round_no}.{start + k}."))
                    batches = [_batch_calls(probe[i : i + batch]) for i in range(0, len(probe), batch)]
                    sync.config_resetstat()
                    seconds = await _apply_batches(r, batches)
                    server = fcall_server_usec(sync)
                    rounds.append((server["usec_per_call"], seconds / probe_events * 1e6))
                server_rounds = sorted(u for u, _ in rounds)
                client_rounds = sorted(c for _, c in rounds)
                row = {
                    "customers": size,
                    "events_per_customer": events_per_customer,
                    "populate_seconds": round(populate_s, 1),
                    "probe_events": probe_events,
                    "probe_rounds": probe_rounds,
                    "usec_per_event_client": round(client_rounds[len(client_rounds) // 2], 2),
                    "usec_per_call_server": server_rounds[len(server_rounds) // 2],
                    "usec_per_call_server_rounds": [round(u, 2) for u, _ in rounds],
                    "redis_commands_per_event": server["inner_commands_per_call"],  # of the last round
                    "used_memory_per_customer": round((int(info["used_memory"]) - baseline) / size),
                    "cust_key_bytes_sampled": round(sum(usage) / len(usage)),
                }
                say(
                    f"  {size:,} customers: {row['usec_per_event_client']} µs/event (server {row['usec_per_call_server']} µs), "
                    f"{row['used_memory_per_customer']} B/customer"
                )
                results.append(row)
        finally:
            await r.aclose()

    try:
        asyncio.run(run_all())
    finally:
        sync.flushall()
        sync.close()
    return results


# -- the run --------------------------------------------------------------------------


def run_bench(opts: BenchOptions) -> dict:
    from lab.embedded import EmbeddedStack
    from streams.admin import ensure_topics
    from streams.topics import Topics

    facts = machine_facts()
    load_start = loadavg()
    started_at = datetime.now(UTC)
    say(f"{facts['cpu_count']} CPUs ({facts['cpu_model']}), Python {facts['python']}, load average {load_start}")
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    procs = Procs()
    result: dict[str, Any] = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": command_line(opts),
        "machine": facts,
        "load_average_start": load_start,
        "options": {"events": opts.events, "quick": opts.quick, "scale_max": opts.scale_max},
    }
    rows: dict[str, Any] = {}
    result["rows"] = rows
    n = opts.events
    consume_timeout = 60 + n / 2000
    try:
        with EmbeddedStack(work_dir=work) as stack:
            import redis as redis_lib

            with redis_lib.Redis.from_url(stack.redis.url) as r0:
                facts["redis_server"] = r0.info("server").get("redis_version")
            say(f"embedded broker {stack.broker.bootstrap}, Redis {stack.redis.url}, work dir {work}")
            topics = Topics(BENCH_PREFIX)
            ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)

            say(f"simulating {n:,} events (pre-serialised before timing)")
            payloads = make_payloads(n)
            result["workload"] = {
                "events": len(payloads),
                "customers": len({k for _, k, _ in payloads}),
                "families": dict(Counter(f for f, _, _ in payloads)),
                "avg_bytes": round(sum(len(v) for _, _, v in payloads) / len(payloads)),
            }

            say("[1] load generator: kafka-python producer, pre-serialised payloads")
            rows["producer"] = produce_backlog(stack.broker.bootstrap, payloads, topics)
            say(f"    {rows['producer']['rate']:,.0f} ev/s")

            say("[2] raw aiokafka consumer on the same topics")
            rows["raw_consumer"] = asyncio.run(_raw_consume(stack.broker.bootstrap, topics.inputs, n, consume_timeout))
            say(f"    {rows['raw_consumer']['rate']:,.0f} ev/s")

            for mode, label in (("each", "async for value in stream"), ("take", "stream.take_events(2000, within=SEGFLOW_BATCH_WITHIN)")):
                say(f"[3] bare Faust agent ({label}), subprocess")
                rows[f"bare_faust_{mode}"] = run_bare_faust(stack, procs, work, mode, n, consume_timeout)
                say(f"    {rows[f'bare_faust_{mode}']['rate']:,.0f} ev/s")

            say("[4] Redis ceiling: pipelined FCALL segflow_apply, batches of 2000")
            rows["redis_ceiling"] = redis_ceiling(stack.redis.url, payloads[: min(n, 100_000)])
            say(f"    {rows['redis_ceiling']['rate']:,.0f} ev/s (server {rows['redis_ceiling']['server_usec_per_call']} µs/call)")

            say("[5] segflow worker end to end on the backlog (SEGFLOW_CLOCK=event)")
            e2e = run_worker_e2e(stack, procs, work, n, consume_timeout + 60, opts)
            rows["segflow_e2e"] = e2e
            bare = rows["bare_faust_take"]["rate"] or None
            raw = rows["raw_consumer"]["rate"] or None
            e2e["ratio_to_bare_faust_take"] = round(e2e["rate"] / bare, 3) if bare else None
            e2e["ratio_to_bare_faust_each"] = round(e2e["rate"] / rows["bare_faust_each"]["rate"], 3) if rows["bare_faust_each"]["rate"] else None
            e2e["ratio_to_raw_consumer"] = round(e2e["rate"] / raw, 3) if raw else None
            say(f"    {e2e['rate']:,.0f} ev/s; memory {e2e['memory'].get('bytes_per_customer_keys')} B/customer (keys)")
            if opts.two_workers:
                say("[5b] two segflow worker processes in one consumer group on the same backlog")
                rows["segflow_e2e_2w"] = run_worker_e2e(stack, procs, work, n, consume_timeout + 60, dataclasses.replace(opts, profile=None), workers=2)
                say(f"    {rows['segflow_e2e_2w']['rate']:,.0f} ev/s")

            rate = opts.latency_rate or max(50.0, e2e["rate"] / 2)
            say(f"[6] latency at {rate:,.0f} ev/s offered, row 5's kind of traffic (SEGFLOW_CLOCK=event, new simulated customers)")
            rows["latency_mix"] = run_mix_latency(stack, procs, work, rate, opts.latency_mix_seconds)
            mix = rows["latency_mix"]
            say(f"    p50 {mix['p50_ms']} ms, p99 {mix['p99_ms']} ms, max {mix['max_ms']} ms over {mix['changes_timed']:,} changes")
            for kind in FLOOR_CONSUMERS:
                say(
                    f"[6] latency floor: the same traffic at {rate:,.0f} ev/s read by a {'raw aiokafka consumer' if kind == 'raw' else 'bare Faust agent'} that does nothing"
                )
                floor = rows[f"latency_floor_{kind}"] = run_latency_floor(stack, procs, work, kind, rate, opts.latency_mix_seconds)
                say(f"    p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms, max {floor['max_ms']} ms over {floor['delivered']:,} events")
            if opts.latency_mix_two_workers:
                say(f"[6] latency at {rate:,.0f} ev/s, row 5's kind of traffic, two worker processes in one group")
                two = rows["latency_mix_2w"] = run_mix_latency(stack, procs, work, rate, opts.latency_mix_seconds, tag="2w-", workers=2)
                say(f"    p50 {two['p50_ms']} ms, p99 {two['p99_ms']} ms, max {two['max_ms']} ms over {two['changes_timed']:,} changes")
            rows["latency_mix_sweep"] = []
            for i, fraction in enumerate(opts.latency_mix_sweep):
                point_rate = max(50.0, e2e["rate"] * fraction)
                say(f"[6] latency sweep: {point_rate:,.0f} ev/s ({fraction:g} of row 5's rate) of row 5's kind of traffic")
                point = run_mix_latency(stack, procs, work, point_rate, opts.latency_mix_seconds, tag=f"s{i}-")
                rows["latency_mix_sweep"].append({**point, "fraction_of_sustained": fraction})
                say(f"    p50 {point['p50_ms']} ms, p99 {point['p99_ms']} ms, max {point['max_ms']} ms over {point['changes_timed']:,} changes")
            say(f"[6] latency at {rate:,.0f} ev/s offered (SEGFLOW_CLOCK=wall, fresh customers)")
            rows["latency"] = run_latency(stack, procs, work, rate, opts.latency_seconds)
            say(f"    p50 {rows['latency']['p50_ms']} ms, p99 {rows['latency']['p99_ms']} ms, max {rows['latency']['max_ms']} ms")
            if opts.latency_low_rate and opts.latency_low_rate < rate:
                say(f"[6] latency at a low {opts.latency_low_rate:,.0f} ev/s offered")
                rows["latency_low"] = run_latency(stack, procs, work, opts.latency_low_rate, opts.latency_seconds, tag="b")
                say(f"    p50 {rows['latency_low']['p50_ms']} ms, p99 {rows['latency_low']['p99_ms']} ms, max {rows['latency_low']['max_ms']} ms")

            rows["latency_sweep"] = []
            for i, sweep_rate in enumerate(opts.latency_sweep):
                say(f"[6] latency sweep: {sweep_rate:,.0f} ev/s of fresh customers offered")
                rows["latency_sweep"].append(run_latency(stack, procs, work, sweep_rate, opts.latency_seconds, tag=f"s{i}"))
                pt = rows["latency_sweep"][-1]
                say(f"    p50 {pt['p50_ms']} ms, p99 {pt['p99_ms']} ms, max {pt['max_ms']} ms")

            say("[6b] deadline latency: silent customers moved by the deadline timer (SEGFLOW_CLOCK=wall)")
            rows["deadline_latency"] = run_deadline_latency(stack, procs, work, customers=50 if opts.quick else 200)
            dl = rows["deadline_latency"]
            say(f"    {dl['answered']}/{dl['customers']} moved; p50 {dl['p50_ms']} ms, p99 {dl['p99_ms']} ms after their deadline")

            sizes = opts.scale_sizes + ((1_000_000,) if opts.scale_max else ())
            say(f"[7] scale: memory and per-event cost at {', '.join(f'{s:,}' for s in sizes)} customers")
            rows["scale"] = scale_test(stack.redis.url, payloads, sizes, opts.scale_probe_events, probe_rounds=opts.scale_probe_rounds)
    finally:
        procs.stop_all()
    result["load_average_end"] = loadavg()
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["targets"] = targets(rows)
    return result


def targets(rows: dict) -> list[dict]:
    out = []
    e2e = rows.get("segflow_e2e", {})
    out.append({"target": "segflow >= 20,000 ev/s per worker", "value": e2e.get("rate"), "reached": (e2e.get("rate") or 0) >= 20_000})
    ratio = e2e.get("ratio_to_bare_faust_take")
    out.append({"target": ">= 60% of bare Faust (take_events)", "value": ratio, "reached": ratio is not None and ratio >= 0.6})
    mix = rows.get("latency_mix", {})
    out.append(
        {
            "target": "p99 change latency < 100 ms at half rate (row 5's kind of traffic)",
            "value": mix.get("p99_ms"),
            "reached": mix.get("p99_ms") is not None and mix["p99_ms"] < 100 and (mix.get("changes_timed") or 0) > 0,
        }
    )
    mix_points = [p for p in [mix, *rows.get("latency_mix_sweep", [])] if p.get("p99_ms") is not None and (p.get("changes_timed") or 0) > 0]
    if rows.get("latency_mix_sweep"):
        under = [p["offered_rate"] for p in mix_points if p["p99_ms"] < 100]
        out.append(
            {
                "target": "(where it holds) highest load of row 5's kind of traffic measured with p99 < 100 ms, ev/s",
                "value": max(under) if under else None,
                "reached": None,
            }
        )
    two = rows.get("latency_mix_2w")
    if two:
        out.append(
            {
                "target": "(scale-out) p99 change latency at half rate with two worker processes (row 5's kind of traffic), ms",
                "value": two.get("p99_ms"),
                "reached": None,
            }
        )
    floors = {k: rows[f"latency_floor_{k}"].get("p99_ms") for k in FLOOR_CONSUMERS if f"latency_floor_{k}" in rows}
    if floors:
        out.append({"target": "(context) p99 of the same traffic reaching a consumer that does nothing, ms", "value": floors, "reached": None})
    lat = rows.get("latency", {})
    out.append(
        {
            "target": "p99 change latency < 100 ms at half rate, fresh customers only (stress)",
            "value": lat.get("p99_ms"),
            "reached": lat.get("p99_ms") is not None and lat["p99_ms"] < 100 and lat.get("answered") == lat.get("sent"),
        }
    )
    points = [p for p in [rows.get("latency_low"), *rows.get("latency_sweep", []), lat] if p and p.get("p99_ms") is not None]
    under = [p["offered_rate"] for p in points if p["p99_ms"] < 100 and p.get("answered") == p.get("sent")]
    out.append(
        {"target": "(where it holds) highest fresh-customer load measured with p99 < 100 ms, ev/s", "value": max(under) if under else None, "reached": None}
    )
    mem = e2e.get("memory", {}).get("bytes_per_customer_keys")
    out.append({"target": "< 2 KiB Redis per customer (cust + seg + hist keys)", "value": mem, "reached": mem is not None and mem < 2048})
    scale = rows.get("scale", [])
    if len(scale) >= 2:
        first, last = scale[0]["usec_per_call_server"], scale[-1]["usec_per_call_server"]
        growth = round(last / first - 1, 3) if first else None
        out.append(
            {
                "target": f"per-event cost at {scale[-1]['customers']:,} within 20% of {scale[0]['customers']:,} (server µs/call)",
                "value": growth,
                "reached": growth is not None and growth <= 0.2,
            }
        )
    return out


def command_line(opts: BenchOptions) -> str:
    parts = ["segflow bench"]
    if opts.quick:
        parts.append("--quick")
    if opts.events != (BenchOptions.quick_run() if opts.quick else BenchOptions()).events:
        parts.append(f"--events {opts.events}")
    if opts.scale_max:
        parts.append("--scale-max")
    if opts.profile:
        parts.append("--profile FILE")
    return " ".join(parts)


def format_table(result: dict) -> str:
    rows = result["rows"]
    lines: list[tuple[str, str, str]] = []

    def add(name: str, value: str, note: str = "") -> None:
        lines.append((name, value, note))

    def evs(row: dict | None) -> str:
        return f"{row['rate']:,.0f} ev/s" if row else "-"

    p = rows.get("producer")
    if p:
        add("1 load generator (kafka-python, pre-serialised)", evs(p), f"{p['sent']:,} events in {p['seconds']:.1f}s")
    if "raw_consumer" in rows:
        add("2 raw aiokafka consumer", evs(rows["raw_consumer"]), f"{rows['raw_consumer']['events']:,} events")
    for mode, label in (("each", "async for value in stream"), ("take", "take_events(2000, batch window)")):
        row = rows.get(f"bare_faust_{mode}")
        if row:
            add(f"3 bare Faust agent, {label}", evs(row), f"{row['events']:,} events")
    rc = rows.get("redis_ceiling")
    if rc:
        add("4 Redis ceiling: pipelined FCALL segflow_apply", evs(rc), f"server {rc['server_usec_per_call']} µs/call, batches of {rc['batch']}")
    e = rows.get("segflow_e2e")
    if e:
        note = (
            f"{e.get('ratio_to_bare_faust_take', 0) or 0:.0%} of bare Faust (take), {e.get('ratio_to_bare_faust_each', 0) or 0:.0%} of (each), "
            f"{e.get('ratio_to_raw_consumer', 0) or 0:.1%} of raw"
        )
        add("5 segflow worker end to end (event clock)", evs(e), note)
    e2 = rows.get("segflow_e2e_2w")
    if e2:
        add("5b two segflow workers, one group", evs(e2), f"{e2['rate'] / e['rate']:.2f}x one worker" if e and e.get("rate") else "")

    def add_mix(mix: dict) -> None:
        workers = mix.get("workers", 1)
        add(
            f"6 latency event -> change at {mix['offered_rate']:,.0f} ev/s, row 5's traffic" + (f", {workers} workers" if workers > 1 else ""),
            f"p50 {mix['p50_ms']} / p99 {mix['p99_ms']} / max {mix['max_ms']} ms",
            f"{mix['changes_timed']:,} changes timed (+{mix['changes_by_deadline']:,} by deadlines), {mix['sent']:,} events of "
            f"{mix['customers']:,} new simulated customers, achieved {mix['achieved_rate']:,.0f} ev/s, p90 {mix['p90_ms']} ms; "
            f"to decision p50 {mix['to_decision_p50_ms']} / p99 {mix['to_decision_p99_ms']} ms",
        )

    if rows.get("latency_mix"):
        add_mix(rows["latency_mix"])
    for kind, label in (("raw", "raw aiokafka consumer"), ("faust", "bare Faust agent")):
        fl = rows.get(f"latency_floor_{kind}")
        if fl:
            add(
                f"6 floor: producer -> {label}, same traffic",
                f"p50 {fl['p50_ms']} / p99 {fl['p99_ms']} / max {fl['max_ms']} ms",
                f"{fl['delivered']:,} of {fl['sent']:,} events delivered, achieved {fl['achieved_rate']:,.0f} ev/s; "
                f"p99 per 5 s {', '.join(str(w['p99_ms']) for w in fl['timeline'])} ms",
            )
    for mix in [
        *([rows["latency_mix_2w"]] if rows.get("latency_mix_2w") else []),
        *sorted(rows.get("latency_mix_sweep", []), key=lambda p: -p["offered_rate"]),
    ]:
        add_mix(mix)
    points = [rows.get("latency"), rows.get("latency_low"), *rows.get("latency_sweep", [])]
    for lat in sorted((p for p in points if p), key=lambda p: -p["offered_rate"]):
        if lat:
            add(
                f"6 latency, fresh customers only, at {lat['offered_rate']:,.0f} ev/s",
                f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} / max {lat['max_ms']} ms",
                f"{lat['answered']:,} of {lat['sent']:,} answered, achieved {lat['achieved_rate']:,.0f} ev/s; "
                f"to decision p50 {lat['to_decision_p50_ms']} ms, decision to arrival p50 {lat['decision_to_arrival_p50_ms']} ms",
            )
    dl = rows.get("deadline_latency")
    if dl:
        add(
            f"6b latency deadline -> change ({dl['silence_s']:g}s silence)",
            f"p50 {dl['p50_ms']} / p99 {dl['p99_ms']} / max {dl['max_ms']} ms",
            f"{dl['answered']} of {dl['customers']} silent customers moved with no event from them, {dl['early']} early",
        )
    if e and e.get("memory", {}).get("customers"):
        m = e["memory"]
        add(
            "7 Redis per customer after row 5 (cust+seg+hist)",
            f"{m['bytes_per_customer_keys']:,} B",
            f"{m['customers']:,} customers, by key {m['by_key']}, dataset {m['used_memory_dataset_per_customer']:,} B/customer",
        )
    for s in rows.get("scale", []):
        add(
            f"7 scale {s['customers']:,} customers",
            f"{s['usec_per_call_server']} µs/event server",
            f"median of {', '.join(map(str, s.get('usec_per_call_server_rounds', [])))}; {s.get('redis_commands_per_event')} Redis commands/event; "
            f"{s['usec_per_event_client']} µs/event client+server; {s['used_memory_per_customer']:,} B/customer used_memory, "
            f"cust hash {s['cust_key_bytes_sampled']:,} B ({s['events_per_customer']} events each)",
        )
    w1 = max(len(a) for a, _, _ in lines) if lines else 10
    w2 = max(len(b) for _, b, _ in lines) if lines else 10
    m = result["machine"]
    head = [
        f"segflow bench  {result['date']}  `{result['command']}`",
        f"machine: {m['cpu_count']} x {m['cpu_model']}, Python {m['python']}, Redis {m.get('redis_server')}; "
        f"load average {result['load_average_start']} -> {result.get('load_average_end')}",
        "",
        f"{'row':<{w1}}  {'value':<{w2}}  notes",
        f"{'-' * w1}  {'-' * w2}  -----",
    ]
    body = [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in lines]
    mark = {True: "x", False: " ", None: "-"}
    tail = ["", "targets:"] + [f"  [{mark[t['reached']]}] {t['target']}: {t['value']}" for t in result.get("targets", [])]
    return "\n".join(head + body + tail)


def default_out(quick: bool) -> Path:
    base = REPO_ROOT / "docs" / "bench" if (REPO_ROOT / "docs").is_dir() else Path("docs") / "bench"
    return base / f"{'quick-' if quick else ''}bench-{date.today().isoformat()}.json"


def main(opts: BenchOptions) -> int:
    """CLI entry: run, print the table, write the JSON. SIGTERM is handled like Ctrl-C."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_bench(opts)
    except KeyboardInterrupt:
        say("interrupted; everything the bench started has been stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = opts.out or default_out(opts.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(result))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "bare-faust":
        mode = sys.argv[2]
        sys.argv = [sys.argv[0], "worker"]  # what faust.Worker's command line expects
        bare_faust_main(mode)
    elif len(sys.argv) >= 3 and sys.argv[1] == "floor-consumer":
        floor_consumer_main(sys.argv[2])
    else:
        print("usage: segflow bench (this module's own entry is for the bench's subprocesses)", file=sys.stderr)
        sys.exit(2)
