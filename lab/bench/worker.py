"""Row 5 (and 5b): real ``segflow worker`` subprocesses end to end on the backlog,
events/s from the ``segflow:stats`` hash; and the optional py-spy profile of the
worker during that row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.keys import Layout
from lab.bench.common import (
    BENCH_PREFIX,
    LAYOUT,
    PARTITIONS,
    REPO_ROOT,
    BenchOptions,
    Procs,
    cpu_seconds,
    say,
    worker_env,
)
from lab.bench.redis_rows import fcall_server_usec, memory_per_customer
from streams.status import read_totals

if TYPE_CHECKING:
    from lab.embedded import RedisCluster

# The workers count a silent input partition idle after this (default 30 s): only at the
# backlog's end, when row 7 waits for the watermark to pass the sparsest partition.
# While the backlog lasts no partition is idle (each has messages pending).
IDLE_PARTITION_S = 5.0


# -- row 5: segflow end to end ----------------------------------------------------


def run_worker_e2e(
    stack,
    procs: Procs,
    work: Path,
    expected: int,
    timeout: float,
    opts: BenchOptions,
    workers: int = 1,
    cluster: RedisCluster | None = None,
    prefix: str = BENCH_PREFIX,
    partitions: int = PARTITIONS,
) -> dict:
    """Real workers (one consumer group) on the backlog in ``prefix``'s topics of ``partitions``
    partitions; rate from the changes of the per-partition stats hashes (written after every
    batch). With ``cluster``, the workers keep their state in that Redis Cluster instead of
    the stack's Redis (row 5c)."""
    from streams.redis_clients import sync_client

    url = cluster.url if cluster else stack.redis.url
    r: Any = sync_client(url, cluster=cluster is not None, decode_responses=True)
    r.flushall()  # FLUSHALL keeps the function library (on every primary of a cluster)
    primaries = [node.redis_connection for node in r.get_primaries()] if cluster else [r]
    for node in primaries:
        node.config_resetstat()
    group = ("bench-segflow" if workers == 1 else f"bench-segflow-{workers}w") + ("-cluster" if cluster else "")
    for i in range(workers):
        (work / f"w{i}").mkdir(exist_ok=True)
    layout = Layout(partitions)
    extra = {"SEGFLOW_PARTITIONS": str(partitions), "SEGFLOW_IDLE_PARTITION_SECONDS": str(IDLE_PARTITION_S)}
    extra |= {"SEGFLOW_REDIS_URL": url, "SEGFLOW_REDIS_CLUSTER": "true"} if cluster else {}
    envs = [worker_env(stack, prefix, group, work / f"w{i}", "event", **extra) for i in range(workers)]  # own web port and data dir each
    others = [procs.start([sys.executable, "-m", "segflow.cli", "worker"], envs[i], work / f"worker-e2e-{group}-{i}.log") for i in range(1, workers)]
    p = procs.start([sys.executable, "-m", "segflow.cli", "worker"], envs[0], work / f"worker-e2e-{group}-0.log")
    say(f"  {workers} worker(s), pids {[p.pid] + [o.pid for o in others]}, logs {work}/worker-e2e-{group}-*.log")
    samples: list[tuple[float, int, dict]] = []  # (time the hash changed, received, whole hash)
    # CPU seconds of each component once events flow, and at the end: per-event costs for the capacity model
    redis_pids = [node.proc.pid for node in cluster.nodes if node.proc] if cluster else [stack.redis.proc.pid]
    components = {"worker": [p.pid, *(o.pid for o in others)], "broker": [stack.broker.proc.pid], "redis": redis_pids}
    cpu_first: tuple[int, dict[str, float]] | None = None
    spy = None
    profile: dict | None = None
    try:
        deadline = time.monotonic() + timeout
        last_print = 0.0
        while time.monotonic() < deadline:
            for w in (p, *others):
                if w.poll() is not None:
                    raise RuntimeError(f"worker exited with {w.returncode}; see {work}/worker-e2e-{group}-*.log")
            h = read_totals(r, layout)
            received = int(h.get("received", 0))
            if h and (not samples or samples[-1][1] != received):
                samples.append((time.monotonic(), received, h))
                if received and cpu_first is None:
                    cpu_first = (received, {name: sum(map(cpu_seconds, pids)) for name, pids in components.items()})
                if received and opts.profile and spy is None:
                    spy = start_py_spy(p.pid, opts.profile, opts.profile_seconds, procs)
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                say(f"  worker: received={received}/{expected} applied={h.get('applied', 0)} changes={h.get('changes', 0)}")
            if received >= expected:
                break
            time.sleep(0.05)
        cpu_end = {name: sum(map(cpu_seconds, pids)) for name, pids in components.items()}
        ended_at = time.monotonic()
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
        out: dict[str, Any] = {
            "events": int(final.get("received", 0)),
            "expected": expected,
            "rate": round(rate, 1),
            "window_seconds": round(window, 2),
            "stats_samples": len(samples),
            "final_stats": final,
            "workers": workers,
        }
        if cpu_first is not None and int(final.get("received", 0)) > cpu_first[0]:
            events = int(final.get("received", 0)) - cpu_first[0]
            out["cpu_us_per_event"] = {name: round((cpu_end[name] - cpu_first[1][name]) / events * 1e6, 2) for name in components}
        sample = 2000 if not opts.quick else 300
        out["memory_at_backlog_end"] = memory_per_customer(r, sample=sample, layout=layout)
        if cluster:
            out["per_node"] = [{**fcall_server_usec(node), "keys": int(node.dbsize())} for node in primaries]
            keys = [n["keys"] for n in out["per_node"]]
            out["keys_balance"] = round(max(keys) / min(keys), 3) if min(keys) else None
            out["server_usec_per_event"] = round(sum(n["calls"] * n["usec_per_call"] for n in out["per_node"]) / max(1, out["events"]), 2)
        elif workers == 1:  # later rows re-read the same backlog: their changes share these topics
            out.update(subscriber_view(stack, r))
        # Row 7 is what a customer costs at rest: once the workers' timers have swept the
        # duplicate filters the lateness has passed (customers idle at the backlog's end).
        out["sweep_settled_seconds"], out["filters_left"] = settle_sweep(r, layout, ended_at)
        out["memory"] = memory_per_customer(r, sample=sample, layout=layout)
        if profile is not None:
            out["profile"] = profile
        return out
    finally:
        if spy is not None:
            procs.stop(spy)
        for w in (p, *others):
            procs.stop(w)
        r.close()


def settle_sweep(r, layout: Layout, ended_at: float, quiet_s: float = 1.5, timeout_s: float = 30.0) -> tuple[float, int]:
    """Wait for the rest state after a backlog that ended at ``ended_at`` (monotonic): the
    input partitions idle (``IDLE_PARTITION_S`` of silence, so the watermark stops
    waiting for the sparsest of them and moves to the newest event), then the
    partitions' duplicate-filter sweep sets no longer shrinking (unchanged for
    ``quiet_s``, at most ``timeout_s`` more). Returns the seconds waited and how many
    customers still have a filter (their newest event within the lateness)."""
    started = time.monotonic()
    time.sleep(max(0.0, ended_at + IDLE_PARTITION_S + 1 - started))
    last, since, settling = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - settling < timeout_s:
        size = sum(int(r.zcard(layout.filters_key(p))) for p in range(layout.partitions))
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.25)
    return round(time.monotonic() - started, 1), last


def subscriber_view(stack, r, quiet_s: float = 5.0, timeout_s: float = 120.0) -> dict:
    """Once the changes stop (absence moves after the backlog included) and the outbox is
    empty: the change topics read from the beginning as a subscriber does, against Redis."""
    from streams.change_audit import EngineQuiet, check_subscriber_view
    from streams.topics import Topics

    quiet, deadline = EngineQuiet(r, LAYOUT, quiet_s), time.monotonic() + timeout_s
    while not quiet() and time.monotonic() < deadline:
        time.sleep(0.3)
    check = check_subscriber_view(stack.broker.bootstrap, Topics(prefix=BENCH_PREFIX), r)
    say(f"  {check.line()}")
    return {"subscriber": check.as_dict(), "subscriber_line": check.line()}


def start_py_spy(pid: int, out: Path, seconds: float, procs: Procs, options: tuple[str, ...] = ("-f", "raw")) -> subprocess.Popen | None:
    """py-spy recording process ``pid`` for ``seconds`` into ``out`` (``options``: its format, rate, ...)."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        say("  py-spy not found next to the interpreter; no profile (pip install py-spy into the venv)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"  py-spy recording the worker for {seconds:g}s -> {out}")
    cmd = [str(exe), "record", "-p", str(pid), "-d", str(int(seconds)), *options, "-o", str(out), "--nonblocking"]
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
