"""What every row shares: options, progress, machine facts, subprocesses, the
workers' environment, the simulated payloads and row 1 (the load generator:
kafka-python producer of the backlog), and the small rate and percentile helpers.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from features.keys import Layout

REPO_ROOT = Path(__file__).resolve().parents[2]  # lab/bench/common.py -> the repository
BENCH_PREFIX = "bench-"  # backlog topics (rows 1, 2, 3, 5)
LATENCY_PREFIX = "benchlat-"  # row 6
PARTITIONS = 4  # the worker's default SEGFLOW_PARTITIONS
LAYOUT = Layout(PARTITIONS)  # the Redis keys of the bench's workers
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
    cluster_workers: tuple[int, ...] = (1, 2)  # row 5c: that many workers with their state in a 3-primary Redis Cluster
    mass_silence_sizes: tuple[int, ...] = (10_000, 100_000)  # row 8: cohorts due in the same second
    mass_silence_probe_rate: float = 200.0  # fresh logins per second arriving before and during the drain
    mass_silence_two_workers: tuple[int, ...] = (10_000,)  # row 8b: these cohorts again, two worker processes in one group
    scale_sizes: tuple[int, ...] = (10_000, 100_000)
    scale_probe_events: int = 20_000
    scale_probe_rounds: int = 5

    @classmethod
    def quick_run(cls, **kw: Any) -> BenchOptions:
        base: dict[str, Any] = dict(
            events=20_000,
            quick=True,
            latency_seconds=5.0,
            latency_mix_seconds=8.0,
            latency_mix_sweep=(),
            latency_mix_two_workers=False,
            latency_sweep=(),
            two_workers=False,
            cluster_workers=(1,),
            mass_silence_sizes=(10_000,),
            mass_silence_two_workers=(),
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


# -- rates and percentiles ------------------------------------------------------------


def _rate(count: int, first_count: int, first: float | None, last: float | None, expected: int) -> dict:
    """Events/s from the first delivery to the last (the first delivery's own events excluded)."""
    if first is None or last is None or last <= first:
        rate = 0.0
    else:
        rate = (count - first_count) / (last - first)
    return {"events": count, "expected": expected, "seconds": round((last or 0) - (first or 0), 3), "rate": round(rate, 1)}


def _per_5s(samples, count_key: str) -> list[dict]:
    """``samples`` of (seconds since the start, latency ms) -> p50/p99 per 5 s window."""
    windows: dict[int, list[float]] = {}
    for at, ms in samples:
        windows.setdefault(int(at // 5), []).append(ms)
    return [{"from_s": k * 5, count_key: len(v), "p50_ms": _pick(sorted(v), 0.5), "p99_ms": _pick(sorted(v), 0.99)} for k, v in sorted(windows.items())]


def _pick(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15 of stat)
