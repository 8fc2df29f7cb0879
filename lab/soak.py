"""``segflow soak`` / ``make soak``: a long run at a fixed rate with periodic faults, then an audit.

Starts an embedded broker and a Redis with the append-only file on, one worker
process and a producer thread publishing a simulated population at ``rate``
events per second for ``minutes``. Every ``fault_every`` seconds one fault, in
turn: the worker SIGKILLed and restarted, the worker SIGTERMed and restarted
(the same app id, so the same consumer group), Redis SIGTERMed, Redis
SIGKILLed (each started again after ~3 s on the same port and data dir). A
progress line every 10 s.

At the end the producer stops, the worker drains, and the run is audited:

* ``difference = sent - applied - dead_lettered`` must be 0, where ``applied``
  is the sum of the customers' applied-event counters in Redis (field ``n``:
  an event applied twice counts twice) and ``dead_lettered`` the distinct
  source messages (topic, partition, offset) on the dead-letter topic;
* every customer's features equal the pure reference, ``features.state.apply_delta``
  folded over the events sent, in order (as tests/integration/reliability_helpers.py
  does), except the delivery-dependent fields (duplicate filter, dedupe floors,
  offsets);
* counts of duplicates, dead letters by reason and segment changes (the
  ``segflow:stats`` counters, and the records and distinct change ids on the
  segment-changes topic).

The event times are a simulated population ending a day before now, with the
worker on ``SEGFLOW_CLOCK=event`` (as in ``segflow demo``): many days of event
time go by in minutes of wall time, so deadlines and lifecycle moves happen.

Exit code (:func:`run_soak`'s return): 0 when the difference is 0 and the
features match, 1 when the difference is not 0 (or the run failed), 2 when it
is 0 but features differ. Every process started is stopped, also on Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from features.keys import Layout
from lab.embedded import EmbeddedStack, RedisCluster, RedisServer, free_port
from streams.admin import ensure_topics
from streams.change_audit import check_subscriber_view
from streams.redis_clients import SHARD_AWAY, sync_client
from streams.status import outbox_length, read_totals
from streams.topic_reader import read_to_end
from streams.topics import TOPICS

FAULTS = ("worker_sigkill", "worker_sigterm", "redis_sigterm", "redis_sigkill")
EVENTS_PER_CUSTOMER_DAY = 8.0  # measured for the default persona mix (lab/simulate.py)
VOLATILE = ("q", "r", "df", "lf")  # as in tests/integration/reliability_helpers.py


@dataclass
class SoakOptions:
    minutes: float = 60.0
    rate: float = 1000.0  # about half the sustained end-to-end rate (docs/PERFORMANCE.md)
    fault_every: float = 60.0
    customers: int = 2000
    seed: int = 1
    out: Path | None = None
    drain_timeout: float = 300.0
    progress_every: float = 10.0
    redis_down_s: float = 3.0
    session_timeout_s: float = 4.0
    # The embedded broker (Tansu 0.6, memory storage) keeps every produced batch as
    # its own object and lists all of a partition's objects on each fetch, so its
    # fetch cost grows with the batches written; once a listing outlasts the
    # consumer's fetch wait, fetches come back empty (the 15- and 45-minute soaks
    # collapsed that way, docs/RELIABILITY.md). One partition per topic, a long
    # producer linger (fewer, larger batches) and a long fetch wait keep an hour
    # within reach; latency is not what a soak measures.
    partitions: int = 1
    linger_ms: int = 250
    fetch_max_wait_ms: int = 250
    # 0: one Redis; N: a Redis Cluster of N primaries (each Redis fault hits the next node in turn).
    # Keys follow input partitions (docs/OPERATIONS.md): give it partitions >= N, a multiple of N.
    redis_shards: int = 0
    work_dir: Path | None = None
    keep_work_dir: bool = False
    command: str = ""


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def machine() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(), "load_at_start": load}


class Worker:
    """One ``segflow worker`` subprocess, restartable with the same app id."""

    def __init__(self, env: dict, log_path: Path):
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "segflow.cli", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int | None, float, bool]:
        """Signal and wait; (exit code, seconds to exit, had to be SIGKILLed)."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), 0.0, False
        t = time.monotonic()
        self.proc.send_signal(sig)
        killed = False
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            killed = True
        return self.proc.returncode, time.monotonic() - t, killed

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Feed:
    """The producer thread: the simulation at a fixed rate, folded into the reference as it is handed to the producer."""

    def __init__(self, bootstrap: str, sim, rate: float, linger_ms: int = 10):
        from features.extract import delta_of
        from features.state import CustomerState, apply_delta
        from lab.simulate import event_to_json
        from streams.events import decode
        from streams.producer import ProduceStats, produce_events

        self.stop = threading.Event()
        self.stats = ProduceStats()
        self.states: dict = {}
        self.folded = 0
        self.bad_fold: list = []
        self.error: BaseException | None = None

        def items():
            for family, event in sim.events():
                value = event_to_json(event)
                ev = decode(family, value)
                status = apply_delta(self.states.setdefault(ev.customer_id, CustomerState()), delta_of(ev), None)
                if status not in ("applied", "duplicate") and len(self.bad_fold) < 5:
                    self.bad_fold.append((ev.customer_id, status))
                self.folded += 1
                yield family, ev.customer_id.encode(), value

        def run():
            try:
                produce_events(bootstrap, items(), TOPICS, rate, None, stats=self.stats, stop=self.stop, producer_config={"linger_ms": linger_ms})
            except BaseException as exc:  # reported in the result
                self.error = exc

        self.thread = threading.Thread(target=run, name="soak-producer", daemon=True)

    def start(self) -> Feed:
        self.thread.start()
        return self

    def finish(self, timeout: float = 150.0) -> None:
        self.stop.set()
        self.thread.join(timeout)


def _safe(fn: Callable, default=None):
    try:
        return fn()
    except (*SHARD_AWAY, OSError):  # Redis, or a cluster shard, away during a fault
        return default


def applied_total(client, layout: Layout, customer_ids) -> int:
    pipe = client.pipeline(transaction=False)
    for cid in customer_ids:
        pipe.hget(layout.customer_key(cid), "n")
    return sum(int(n or 0) for n in pipe.execute())


def dead_letter_summary(bootstrap: str) -> dict:
    records = read_to_end(bootstrap, TOPICS.dead_letter)
    distinct: dict[tuple, str] = {}
    for r in records:
        h = {k: (v or b"").decode(errors="replace") for k, v in (r.headers or [])}
        source = (h.get("segflow.source.topic"), h.get("segflow.source.partition"), h.get("segflow.source.offset"))
        if None in source[1:]:
            source = ("no-offset", r.partition, r.offset)
        distinct.setdefault(source, h.get("segflow.reason", "?"))
    return {"records": len(records), "distinct": len(distinct), "by_reason": dict(Counter(distinct.values()))}


def compare_features(client, layout: Layout, states: dict) -> dict:
    from features.codec import state_from_hash, state_to_hash

    def comparable(h):
        return {k: v for k, v in h.items() if k not in VOLATILE and not k.startswith(("o:", "df:"))}

    ids = sorted(states)
    pipe = client.pipeline(transaction=False)
    for cid in ids:
        pipe.hgetall(layout.customer_key(cid))
    mismatched = []
    for cid, h in zip(ids, pipe.execute(), strict=False):
        want = comparable(state_to_hash(states[cid]))
        got = comparable(state_to_hash(state_from_hash(h)))
        if got != want:
            fields = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            mismatched.append({"customer": cid, "fields": fields[:10], "example": {k: [got.get(k), want.get(k)] for k in fields[:3]}})
    return {"customers_compared": len(ids), "mismatches": len(mismatched), "examples": mismatched[:5]}


def run_soak(opts: SoakOptions, say: Callable[[str], None] = lambda m: print(m, flush=True)) -> tuple[int, dict]:
    """Run the soak; return (exit code, report)."""
    from lab.simulate import Simulation

    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.getsignal(signal.SIGTERM) if in_main else None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    work = opts.work_dir or Path(tempfile.mkdtemp(prefix="segflow-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    traffic_s = opts.minutes * 60
    needed = opts.rate * traffic_s * 1.3 + 1000
    days = max(7.0, math.ceil(needed / (max(1, opts.customers) * EVENTS_PER_CUSTOMER_DAY)))
    sim_start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days + 1)
    sim = Simulation(customers=opts.customers, days=days, seed=opts.seed, start=sim_start)
    report: dict = {
        "command": opts.command or f"segflow soak --minutes {opts.minutes:g}",
        "date": _now_iso(),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k not in ("out", "work_dir", "command", "keep_work_dir")},
        "simulation": {"customers": opts.customers, "days": days, "seed": opts.seed, "clock": "event"},
        "faults": [],
        "unexpected_worker_exits": [],
    }
    code = 1
    faults = f"a fault every {opts.fault_every:g}s ({', '.join(FAULTS)} in turn)" if opts.fault_every > 0 else "no faults"
    say(f"segflow soak: {opts.minutes:g} min at {opts.rate:g} ev/s, {faults}, {opts.customers} customers over {days:g} days of event time; work dir {work}")
    cluster = RedisCluster(shards=opts.redis_shards, persistent=True) if opts.redis_shards else None
    stack = EmbeddedStack(work_dir=work, redis=RedisServer(persistent=True), cluster=cluster)
    worker: Worker | None = None
    feed: Feed | None = None
    client = None
    try:
        stack.start()
        ensure_topics(stack.broker.bootstrap, TOPICS, opts.partitions)
        layout = Layout(opts.partitions)
        env = {
            **os.environ,
            "SEGFLOW_KAFKA_URL": stack.broker.url,
            "SEGFLOW_REDIS_URL": stack.redis_url,
            "SEGFLOW_REDIS_CLUSTER": "true" if cluster else "false",
            "SEGFLOW_CLOCK": "event",
            "SEGFLOW_APP_ID": "segflow-soak",
            "SEGFLOW_WEB_PORT": str(free_port()),
            "SEGFLOW_DATA_DIR": str(work / "worker"),
            "SEGFLOW_SESSION_TIMEOUT_SECONDS": f"{opts.session_timeout_s:g}",
            "SEGFLOW_PARTITIONS": str(opts.partitions),
            "SEGFLOW_FETCH_MAX_WAIT_MS": str(opts.fetch_max_wait_ms),
        }
        env.pop("SEGFLOW_TOPIC_PREFIX", None)
        worker = Worker(env, work / "worker.log")
        worker.start()
        assert worker.proc is not None  # start() made it
        client = sync_client(stack.redis_url, cluster=cluster is not None, decode_responses=True, socket_timeout=10)
        where = f"a Redis Cluster of {opts.redis_shards} primaries (seed {stack.redis_url})" if cluster else f"Redis {stack.redis_url}"
        say(f"broker {stack.broker.bootstrap}, {where} (append-only), worker pid {worker.proc.pid}")
        feed = Feed(stack.broker.bootstrap, sim, opts.rate, opts.linger_ms).start()
        t0 = time.monotonic()
        end = t0 + traffic_s
        next_fault = t0 + opts.fault_every if opts.fault_every > 0 else math.inf
        next_progress = t0 + opts.progress_every

        def progress(phase: str) -> None:
            st = _safe(lambda: read_totals(client, layout), None)
            s = (
                "Redis unreachable"
                if st is None
                else (
                    f"received={st.get('received', 0)} applied={st.get('applied', 0)} duplicates={st.get('duplicates', 0)} "
                    f"dead-lettered={st.get('dead_lettered', 0)} changes={st.get('changes', 0)}"
                )
            )
            last = report["faults"][-1]["kind"] if report["faults"] else "-"
            say(f"  [{phase}] t={time.monotonic() - t0:6.0f}s sent={feed.stats.sent} {s} faults={len(report['faults'])} (last {last})")

        while time.monotonic() < end:
            if feed.error is not None:
                raise RuntimeError(f"producer failed: {feed.error!r}")
            if not worker.alive():
                assert worker.proc is not None  # started before the loop
                report["unexpected_worker_exits"].append({"t": round(time.monotonic() - t0, 1), "code": worker.proc.returncode})
                say(f"  worker exited unexpectedly (code {worker.proc.returncode}); restarting. Log tail:\n{worker.tail(1500)}")
                worker.start()
            if time.monotonic() >= next_fault:
                kind = FAULTS[len(report["faults"]) % len(FAULTS)]
                report["faults"].append(_fault(kind, worker, stack, opts, t0, say, report["faults"]))
                next_fault = max(next_fault + opts.fault_every, time.monotonic() + 5)
            if time.monotonic() >= next_progress:
                progress("soak")
                while next_progress <= time.monotonic():
                    next_progress += opts.progress_every
            time.sleep(0.25)

        feed.finish()
        if feed.thread.is_alive():
            raise RuntimeError("the producer did not stop within 150 s")
        if feed.error is not None:
            raise RuntimeError(f"producer failed: {feed.error!r}")
        sent = feed.stats.sent
        say(f"producing stopped: {feed.stats.summary()}; draining (at most {opts.drain_timeout:g}s)")
        drained = _drain(client, layout, worker, stack, list(sim.customer_ids), sent, opts.drain_timeout, say)
        # Let the outbox empty, then stop the worker cleanly so every change is on the topic.
        deadline = time.monotonic() + 20
        while _safe(lambda: outbox_length(client, layout), 1) and time.monotonic() < deadline:
            time.sleep(0.5)
        code_, took, killed = worker.stop(signal.SIGTERM)
        report["final_worker_stop"] = {"code": code_, "seconds": round(took, 1), "sigkilled": killed}
        applied = applied_total(client, layout, sim.customer_ids)
        stats = read_totals(client, layout)
        dead = dead_letter_summary(stack.broker.bootstrap)
        subscriber = check_subscriber_view(stack.broker.bootstrap, TOPICS, client)
        records, distinct = subscriber.records, subscriber.distinct_change_ids
        changes = {"topic_records": records, "distinct_change_ids": distinct, "resent_duplicates": records - distinct}
        features = compare_features(client, layout, feed.states)
        difference = sent - applied - dead["distinct"]
        report.update(
            {
                "traffic_seconds": round(feed.stats.elapsed, 1),
                "events_sent": sent,
                "produce_failed": feed.stats.failed,
                "produce_first_error": feed.stats.first_error,
                "reference_folded": feed.folded,
                "reference_fold_problems": feed.bad_fold,
                "events_applied": applied,
                "duplicates": stats.get("duplicates", 0),
                "dead_lettered": dead,
                "stats": stats,
                "drained": drained,
                "changes": {"stats_changes": stats.get("changes", 0), **changes},
                "subscriber": subscriber.as_dict(),
                "subscriber_line": subscriber.line(),
                "repeats_per_kill": round(subscriber.follower.repeats / max(1, sum(f.get("kind") == "worker_sigkill" for f in report["faults"])), 1),
                "outbox_left": outbox_length(client, layout),
                "difference": difference,
                "features": features,
                "worker_starts": worker.starts,
                "total_seconds": round(time.monotonic() - started, 1),
            }
        )
        code = 0 if difference == 0 and features["mismatches"] == 0 and subscriber.ok else (1 if difference != 0 else 2)
        if feed.stats.failed or feed.folded != sent:
            code = 1
        report["exit_code"] = code
        _print_report(report, say)
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        report["interrupted"] = True
        code = 130
    finally:
        if feed is not None:
            feed.finish(timeout=30)
        if worker is not None:
            worker.stop(signal.SIGTERM, timeout=20)
        if client is not None:
            client.close()
        stack.stop()
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
        if opts.out:
            opts.out.parent.mkdir(parents=True, exist_ok=True)
            opts.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
            say(f"wrote {opts.out}")
        if code == 0 and not opts.keep_work_dir and opts.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"logs kept in {work}")
        say(f"worker, broker and Redis stopped; total {time.monotonic() - started:.0f}s")
    return code, report


def _fault(kind: str, worker: Worker, stack: EmbeddedStack, opts: SoakOptions, t0: float, say, report_faults: list) -> dict:
    t = time.monotonic()
    rec: dict = {"t": round(t - t0, 1), "kind": kind}
    if kind == "worker_sigkill":
        rc, took, _ = worker.stop(signal.SIGKILL)
        rec.update(exit_code=rc)
        worker.start()  # same app id: joins once the killed member's session expires
    elif kind == "worker_sigterm":
        rc, took, killed = worker.stop(signal.SIGTERM)
        rec.update(exit_code=rc, stop_seconds=round(took, 1), had_to_sigkill=killed)
        worker.start()
    else:
        # One Redis, or on a cluster the next node in turn (the fault's number picks it).
        node = len(report_faults) % len(stack.cluster.nodes) if stack.cluster is not None else None
        server = stack.cluster.nodes[node] if stack.cluster is not None and node is not None else stack.redis
        proc = server.proc
        assert proc is not None  # Redis is up between faults
        if kind == "redis_sigkill":  # no shutdown: what is on disk is what was fsynced
            proc.kill()
            proc.wait()
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
                rec["had_to_sigkill"] = False
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rec["had_to_sigkill"] = True
        rec["exit_code"] = proc.returncode
        server.proc = None
        time.sleep(opts.redis_down_s)
        if stack.cluster is not None and node is not None:
            stack.cluster.restart_node(node)  # its own nodes.conf and append-only file: it rejoins with its slots
            rec["node"] = node
        else:
            stack.redis.start()  # same port and data dir: the append-only file is read back
    rec["seconds"] = round(time.monotonic() - t, 1)
    say(f"  fault #{kind} at t={rec['t']:.0f}s: {json.dumps({k: v for k, v in rec.items() if k not in ('t', 'kind')})}")
    return rec


def _drain(client, layout: Layout, worker: Worker, stack, customer_ids, sent: int, timeout: float, say) -> bool:
    """Until applied + distinct dead letters cover ``sent`` and ``received`` has stopped growing (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    last_received, still_since, next_say = None, time.monotonic(), time.monotonic() + 10
    while time.monotonic() < deadline:
        if not worker.alive():
            assert worker.proc is not None  # started before the drain
            say(f"  worker exited while draining (code {worker.proc.returncode}); restarting")
            worker.start()
        applied = _safe(lambda: applied_total(client, layout, customer_ids), 0)
        st = _safe(lambda: read_totals(client, layout), {}) or {}
        received = st.get("received")
        if received != last_received:
            last_received, still_since = received, time.monotonic()
        dead = 0
        if applied < sent and int(st.get("dead_lettered", 0)):
            dead = dead_letter_summary(stack.broker.bootstrap)["distinct"]
        covered = applied + dead >= sent
        if applied >= sent or (covered and time.monotonic() - still_since >= 5):
            say(f"  drained: applied={applied} dead-lettered={dead} of sent={sent}")
            return True
        if time.monotonic() >= next_say:
            say(f"  [drain] applied={applied} dead-lettered={dead} of sent={sent}, received={received}")
            next_say += 10
        time.sleep(1)
    say(f"  NOT drained after {timeout:g}s")
    return False


def _print_report(r: dict, say) -> None:
    say("")
    say("soak report")
    say(
        f"  traffic            {r['traffic_seconds']}s, {len(r['faults'])} faults: {dict(Counter(f['kind'] for f in r['faults']))}"
        f", unexpected worker exits {len(r['unexpected_worker_exits'])}"
    )
    say(f"  events sent        {r['events_sent']} (producer failures {r['produce_failed']})")
    stats_applied = r["stats"].get("applied", 0)
    say(
        f"  events applied     {r['events_applied']} (sum of per-customer counters; stats 'applied' {stats_applied}, "
        f"{'equal' if stats_applied == r['events_applied'] else 'DIFFERENT'})"
    )
    say(f"  duplicates dropped {r['duplicates']}")
    d = r["dead_lettered"]
    say(f"  dead-lettered      {d['distinct']} distinct ({d['records']} records) by reason {d['by_reason']}")
    c = r["changes"]
    say(
        f"  changes emitted    stats {c['stats_changes']}, topic {c['topic_records']} records, {c['distinct_change_ids']} distinct change ids; outbox left {r['outbox_left']}"
    )
    say(f"  {r['subscriber_line']}")
    say(f"  difference         sent - applied - dead-lettered = {r['difference']}  {'OK' if r['difference'] == 0 else 'NOT ZERO'}")
    f = r["features"]
    say(
        f"  features           {f['mismatches']} of {f['customers_compared']} customers differ from the reference"
        + (f", e.g. {f['examples'][:2]}" if f["mismatches"] else "")
    )
    say(f"  exit code          {r['exit_code']}")
