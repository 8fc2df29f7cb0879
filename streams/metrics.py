"""``/metrics``: one worker's counters, lag, backlog and latencies for Prometheus.

Counters are read from :class:`streams.engine.Counters` at scrape time (one
source of truth: the progress log and ``segflow:stats`` count the same
things); lag, deadline backlog and outbox come from the worker's latest
:class:`streams.status.Status` (refreshed every second by a timer); batch and
Redis call latencies are histograms the engine observes. Counters restart at
0 with the worker, as Prometheus counters do; ``segflow:stats`` keeps the
deployment's totals across restarts.

Each app has its own registry (several workers in one test process must not
share counts).

>>> from streams.engine import Counters
>>> m = WorkerMetrics()
>>> c = Counters(received=5, applied=4, dead_lettered=1, reasons={"bad_json": 1})
>>> m.attach(lambda: c, lambda: None)
>>> text = m.render().decode()
>>> "segflow_events_applied_total 4.0" in text, 'segflow_events_dead_lettered_total{reason="bad_json"} 1.0' in text
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.engine import Counters
from streams.status import Status, keeping_up

__all__ = ["CONTENT_TYPE_LATEST", "WorkerMetrics"]

# name suffix, Counters attribute, help
COUNTERS = (
    ("events_received", "received", "Input messages taken by this worker (applied, duplicate or dead-lettered)."),
    ("events_applied", "applied", "Events folded into customer features."),
    ("events_duplicate", "duplicates", "Redelivered events dropped by the duplicate filter."),
    ("events_suppressed", "suppressed", "Events of erased customers dropped (segflow forget; SEGFLOW_ERASURE_SUPPRESS_DAYS)."),
    ("customers_erased", "erased", "Erasure requests applied (customers forgotten)."),
    ("batches", "batches", "Batches the agent took."),
    ("changes", "changes", "Segment changes committed (each published once; see changes_sent)."),
    ("changes_sent", "changes_sent", "Segment changes the broker acknowledged, re-sends included."),
    ("changes_resent", "changes_resent", "Changes re-sent from the outbox by a relay (a restart, or a reply Redis cut off)."),
    ("deadline_evaluations", "deadline_evaluations", "Customers evaluated because an absence deadline fell due."),
    ("conflicts", "conflicts", "Evaluations dropped because another commit came first (re-queued)."),
    ("filters_swept", "filters_swept", "Customers' duplicate filters trimmed once the lateness passed them, without waiting for their next event."),
)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _WorkerCollector(Collector):
    def __init__(self, counters: Callable[[], Counters], status: Callable[[], Status | None]):
        self.counters = counters
        self.status = status

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.counters()
        for suffix, attr, text in COUNTERS:
            yield CounterMetricFamily(f"segflow_{suffix}", text, value=getattr(c, attr))
        dead = CounterMetricFamily("segflow_events_dead_lettered", "Input messages sent to the dead-letter topic, by reason.", labels=["reason"])
        for reason, n in sorted(c.reasons.items()):
            dead.add_metric([reason], n)
        yield dead
        s = self.status()
        if s is None:
            return
        lag = GaugeMetricFamily("segflow_consumer_lag", "Input messages not yet processed, per partition this worker owns.", labels=["topic", "partition"])
        for name, n in sorted(s.lag.items()):
            topic, _, partition = name.rstrip("]").partition("[")
            lag.add_metric([topic, partition], n)
        yield lag
        yield GaugeMetricFamily("segflow_deadline_backlog", "Absence deadlines due on the engine's clock and not yet evaluated.", value=s.deadline_backlog)
        yield GaugeMetricFamily(
            "segflow_deadline_backlog_oldest_seconds", "How long the oldest due deadline has waited (engine clock).", value=s.oldest_due_s or 0.0
        )
        yield GaugeMetricFamily("segflow_outbox_size", "Changes committed in Redis, not yet confirmed on Kafka.", value=s.outbox)
        yield GaugeMetricFamily("segflow_outbox_oldest_seconds", "Age of the oldest outbox entry.", value=s.outbox_oldest_s or 0.0)
        yield GaugeMetricFamily("segflow_keeping_up", "1 when lag, backlog and outbox are within limits (streams/status.py).", value=float(keeping_up(s)[0]))


class WorkerMetrics:
    """The registry of one worker: its collector plus the latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.batch_seconds = Histogram(
            "segflow_batch_seconds", "Time to process one input batch (decode, fold, evaluate, commit).", registry=self.registry, buckets=BATCH_BUCKETS
        )
        self.redis_seconds = Histogram(
            "segflow_redis_call_seconds", "Time of the engine's Redis round trips, by call.", ["call"], registry=self.registry, buckets=BATCH_BUCKETS
        )

    def attach(self, counters: Callable[[], Counters], status: Callable[[], Status | None]) -> None:
        """Read counters and status from these (called at every scrape)."""
        self.registry.register(_WorkerCollector(counters, status))

    def observe_redis(self, call: str, seconds: float) -> None:
        self.redis_seconds.labels(call).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
