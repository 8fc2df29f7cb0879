"""Lag visible to ops: ``/metrics`` and ``/status`` of a running worker, and ``segflow status``.

Scraped the way Prometheus does (the text format, parsed by prometheus-client's
own parser) and checked against what was sent, what Redis counted and what a
campaign system reads from the segment-changes topic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.status import read_totals
from tests.integration.test_dashboard import http, wait_for
from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = pytest.mark.integration


def scrape(base: str) -> dict[str, float]:
    """``{"name{label=value,...}": value}`` of one scrape of ``/metrics``."""
    with urllib.request.urlopen(base + "/metrics", timeout=20) as res:
        text = res.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def total(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k == prefix or k.startswith(prefix + "{"))


def login(customer: str, n: int, when: datetime) -> tuple[bytes, bytes]:
    doc = {"event_id": f"{customer}-{n}", "customer_id": customer, "occurred_at": when.isoformat(), "type": "login", "success": True, "channel": "web"}
    return customer.encode(), json.dumps(doc).encode()


def status_cli(worker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segflow.cli", "status", "--interval", "1", *args], env=worker.env, capture_output=True, text=True, timeout=90)


def test_metrics_count_what_was_sent_applied_and_changed(broker, redis_client, start_worker):
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix)
    base = f"http://127.0.0.1:{worker.env['SEGFLOW_WEB_PORT']}"
    t0 = datetime.now(UTC) - timedelta(days=3)
    good = [login(f"m{i:03d}", n, t0 + timedelta(minutes=n)) for i in range(60) for n in range(3)]
    bad = [(b"m000", b"{not json"), (b"m001", b'{"event_id": "x"}')]
    send(broker, topics.by_family["login"], good + bad)
    sent = len(good) + len(bad)

    metrics = wait_for("every message counted", lambda: (m := scrape(base)).get("segflow_events_received_total") == sent and m, worker=worker)
    assert metrics["segflow_events_applied_total"] == len(good)
    assert total(metrics, "segflow_events_dead_lettered_total") == len(bad)
    assert metrics["segflow_events_dead_lettered_total{reason=bad_json}"] == 1
    assert metrics["segflow_events_duplicate_total"] == 0

    def settled():
        m = scrape(base)
        return m.get("segflow_outbox_size") == 0 and m["segflow_changes_sent_total"] == m["segflow_changes_total"] > 0 and m

    metrics = wait_for("the outbox to empty", settled, worker=worker)
    # The same counts as Redis's own (segflow_apply counts applied events atomically with them) ...
    stats = read_totals(redis_client, worker.layout)
    assert stats["applied"] == len(good) and stats["dead_lettered"] == len(bad) and stats["changes"] == metrics["segflow_changes_total"]
    # ... and as a campaign system reading the topic sees: each change once.
    changes = metrics["segflow_changes_total"]
    records = read_until(broker, topics.segment_changes, lambda rs: len(rs) >= changes, timeout=60)
    assert len(records) == changes
    assert len({json.loads(r.value)["change_id"] for r in records}) == changes
    assert metrics["segflow_changes_resent_total"] == 0
    assert total(metrics, "segflow_consumer_lag") == 0
    assert metrics["segflow_keeping_up"] == 1
    assert metrics["segflow_batch_seconds_count"] >= 1
    assert metrics["segflow_redis_call_seconds_count{call=apply}"] >= 1


def test_a_stalled_worker_shows_lag_and_backlog_then_drains(broker, redis_client, start_worker):
    """Redis refuses writes for 20 s (CLIENT PAUSE WRITE): the worker cannot apply events
    or claim deadlines. Lag and the deadline backlog rise in /metrics, /status and
    `segflow status` (verdict BEHIND); once Redis resumes they drain to 0."""
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_CLOCK="wall")
    base = f"http://127.0.0.1:{worker.env['SEGFLOW_WEB_PORT']}"
    # 200 visitors who never bought, silent since just under 30 days: silent_30d falls due in ~20 s.
    quiet_since = datetime.now(UTC) - timedelta(days=30) + timedelta(seconds=20)
    send(broker, topics.by_family["login"], [login(f"q{i:03d}", 0, quiet_since) for i in range(200)])
    # Evaluated at their event time, 30 days ago, each visitor's next deadline (7 days of
    # silence) is long past: the timer re-evaluates them at once, on the wall clock, and
    # schedules silent_30d. A pause during that re-evaluation would leave some leased and
    # uncounted, so wait for it: then all 200 fall due together, during the pause.
    wait_for(
        "the visitors applied and re-evaluated now",
        lambda: (m := scrape(base)).get("segflow_events_applied_total") == 200 and m.get("segflow_deadline_evaluations_total") == 200,
        worker=worker,
    )

    redis_client.execute_command("CLIENT", "PAUSE", 25_000, "WRITE")
    try:
        later = datetime.now(UTC) - timedelta(days=1)
        send(broker, topics.by_family["login"], [login(f"b{i:04d}", 0, later + timedelta(milliseconds=i)) for i in range(3000)])
        seen_metrics: list[dict] = []

        def lag_and_backlog():
            m = scrape(base)
            seen_metrics.append(
                {"lag": total(m, "segflow_consumer_lag"), **{k: v for k, v in m.items() if "backlog" in k or "applied" in k or "evaluations" in k}}
            )
            return total(m, "segflow_consumer_lag") >= 1000 and m["segflow_deadline_backlog"] == 200 and m

        try:
            behind = wait_for("lag and backlog in /metrics", lag_and_backlog, timeout=40, worker=worker)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nmetrics seen: {seen_metrics[::3]}") from None
        assert behind["segflow_keeping_up"] == 0
        assert behind["segflow_deadline_backlog_oldest_seconds"] > 0
        code, status = http(base, "/status")
        assert code == 200 and not status["keeping_up"] and status["deadline_backlog"] == 200, status
        out = status_cli(worker, "--json", "--check")
        assert out.returncode == 1, out.stderr
        assert out.stdout, out.stderr
        seen = json.loads(out.stdout)
        assert seen["keeping_up"] is False and seen["total_lag"] >= 1000 and seen["deadline_backlog"] == 200, seen
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")

    drained = wait_for(
        "lag and backlog to drain",
        lambda: (
            (m := scrape(base))
            and total(m, "segflow_consumer_lag") == 0
            and m["segflow_deadline_backlog"] == 0
            and m["segflow_events_applied_total"] == 3200
            and m
        ),
        timeout=90,
        worker=worker,
    )
    assert drained["segflow_deadline_evaluations_total"] >= 400  # the re-evaluation now, then silent_30d
    assert wait_for("KEEPING UP", lambda: (o := status_cli(worker)).returncode == 0 and "KEEPING UP" in o.stdout and o, timeout=60, worker=worker)
