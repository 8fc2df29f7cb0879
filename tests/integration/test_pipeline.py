"""End to end on the real stack: producer -> broker -> Faust worker -> Redis -> segment-changes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=100)


def ev(customer: str, n: int, when: datetime, **body) -> tuple[bytes, bytes]:
    doc = {"event_id": f"{customer}-{n}", "customer_id": customer, "occurred_at": when.isoformat(), **body}
    return customer.encode(), json.dumps(doc).encode()


def shopping_session(customer: str, start: datetime, base: int = 0) -> dict[str, list]:
    t = lambda minutes: start + timedelta(minutes=minutes)  # noqa: E731
    clicks = [
        ev(customer, base + 1, t(0), type="session_start", session_id=f"s{base}"),
        ev(customer, base + 2, t(1), type="page_view", session_id=f"s{base}", page="/"),
        ev(customer, base + 3, t(2), type="search", session_id=f"s{base}", query="boots"),
        ev(customer, base + 4, t(3), type="add_to_cart", session_id=f"s{base}", product_id="p1", category="shoes", price="80.00"),
        ev(customer, base + 5, t(4), type="checkout_started", session_id=f"s{base}"),
    ]
    purchases = [
        ev(
            customer,
            base + 6,
            t(5),
            order_id=f"o{base}",
            amount="72.50",
            currency="USD",
            discount="7.50",
            items=[{"product_id": "p1", "category": "shoes", "quantity": 1, "unit_price": "80.00"}],
        ),
    ]
    logins = [ev(customer, base + 7, t(0), type="login", success=True, channel="web")]
    return {"clickstream": clicks, "purchase": purchases, "login": logins}


def publish(broker, topics, batches: dict[str, list]) -> None:
    for family, messages in batches.items():
        send(broker, topics.by_family[family], messages)


def changes_of(records) -> list[dict]:
    return [json.loads(r.value) for r in records]


def segflow_cli(worker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segflow.cli", *args], env=worker.env, capture_output=True, text=True, timeout=60)


def test_events_become_features_segments_and_change_events(broker, redis_server, start_worker):
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix)
    publish(broker, topics, shopping_session("alice", T0))
    publish(broker, topics, shopping_session("bob", T0 + timedelta(hours=1), base=100))

    def both_assigned(records):
        seen = {(c["customer_id"], c["segmentation"]) for c in changes_of(records)}
        return {("alice", "lifecycle"), ("bob", "lifecycle"), ("alice", "behaviour")} <= seen

    records = read_until(broker, topics.segment_changes, both_assigned, timeout=90)
    change = next(c for c in changes_of(records) if c["customer_id"] == "alice" and c["segmentation"] == "lifecycle")
    assert change["from"] is None
    assert change["to"] in {"new", "active"}
    assert change["reason"]
    assert change["change_id"] and change["model_version"] is not None
    assert change["features"]["purchases_total"] >= 1
    assert records[0].key in (b"alice", b"bob")
    # Features in Redis, read through the ops CLI, are exactly what was sent.
    out = segflow_cli(worker, "customer", "alice", "--json")
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["features"]["purchases_total"] == 1
    assert view["features"]["revenue_total"] == 72.5
    assert view["features"]["page_views_7d"] == 1
    assert view["features"]["discount_share_30d"] == pytest.approx(7.5 / 80)
    assert view["events_applied"] == 7
    assert view["segments"]["lifecycle"]["segment"] == change["to"]
    sizes = segflow_cli(worker, "segments", "--json")
    assert json.loads(sizes.stdout)["lifecycle"][change["to"]] >= 1


def test_silence_moves_a_customer_without_any_event_from_them(broker, redis_server, start_worker):
    topics = fresh_topics(broker)
    start_worker(topics.prefix)
    publish(broker, topics, shopping_session("carol", T0))
    # Only other customers speak from now on; their events move the event-time watermark 80 days on,
    # past the ~66 days after which a one-time buyer's churn_propensity reaches the shipped at_risk 0.85.
    publish(broker, topics, shopping_session("dave", T0 + timedelta(days=80), base=100))

    def carol_moved_by_deadline(records):
        return any(
            c["customer_id"] == "carol" and c["segmentation"] == "lifecycle" and c["from"] is not None and c["to"] in {"at_risk", "dormant", "churned"}
            for c in changes_of(records)
        )

    records = read_until(broker, topics.segment_changes, carol_moved_by_deadline, timeout=90)
    moved = [c for c in changes_of(records) if c["customer_id"] == "carol" and c["from"] is not None and c["segmentation"] == "lifecycle"]
    # Carol sent nothing after T0: the move was made by the deadline timer, at event time past her silence.
    last_event = (T0 + timedelta(minutes=5)).timestamp()
    assert all(datetime.fromisoformat(c["occurred_at"]).timestamp() > last_event + 13 * 86400 for c in moved)
