"""Real data, exact: CDNOW replayed through the broker and the worker equals a batch computation.

Events are replayed in date order in three slices; after each slice, every
customer's lifetime RFM fields and 7/30/90-day windows at the slice's cut-off
are compared with pandas over the raw file. Zero mismatches allowed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pandas as pd
import pytest

from features.catalogue import compute
from features.codec import state_from_hash
from features.keys import Layout
from lab.datasets import cdnow_events, cdnow_rows
from lab.simulate import event_to_json
from streams.status import read_totals
from tests.conftest import WorkerProcess
from tests.kafka_helpers import fresh_topics, send

pytestmark = pytest.mark.integration

CUTOFFS = ["1997-02-28", "1997-09-30", "1998-06-30"]
LAYOUT = Layout(4)  # the replay's partitions


def batch_reference() -> pd.DataFrame:
    rows = [(cid, when, value) for _, cid, when, _, value in cdnow_rows()]
    df = pd.DataFrame(rows, columns=["customer_id", "date", "value"])
    df["cents"] = (df["value"] * 100).map(int)
    return df


def wait_applied(redis_client, expected: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    applied = 0
    while time.monotonic() < deadline:
        applied = read_totals(redis_client, LAYOUT).get("applied", 0)
        if applied >= expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"worker applied {applied} of {expected} events in {timeout}s")


# ~70k events in event time over 18 months: every customer also moves through
# lifecycle and value segments (~3 changes per event), 2.5-4 minutes here.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("redis_kind", ["single", "cluster"])
def test_cdnow_replay_matches_batch_computation(broker, request, tmp_path, redis_kind):
    """Against one Redis, and against a Redis Cluster of three primaries (the same keys, spread by partition)."""
    topics = fresh_topics(broker, partitions=4)
    env = {"SEGFLOW_LATENESS_SECONDS": "0", "SEGFLOW_PARTITIONS": "4", "SEGFLOW_CLOCK": "event"}
    if redis_kind == "cluster":
        redis_client = request.getfixturevalue("redis_cluster_client")
        worker = WorkerProcess(
            broker, request.getfixturevalue("redis_cluster"), tmp_path, topics.prefix, f"{topics.prefix}app", {**env, "SEGFLOW_REDIS_CLUSTER": "true"}
        )
        request.addfinalizer(worker.stop)
        worker.start()
    else:
        redis_client = request.getfixturevalue("redis_client")
        request.getfixturevalue("start_worker")(topics.prefix, **env)
    events = sorted(cdnow_events(), key=lambda fe: (fe[1].occurred_at, fe[1].event_id))
    ref = batch_reference()
    produced = 0
    mismatches: list[str] = []
    for cutoff_day in CUTOFFS:
        cutoff = datetime.fromisoformat(cutoff_day).replace(tzinfo=UTC)
        cutoff_ms = int(cutoff.timestamp() * 1000) + 86_400_000 - 1  # end of the cut-off day
        batch = [e for _, e in events[produced:] if e.occurred_at.timestamp() * 1000 <= cutoff_ms]
        send(broker, topics.purchases, [(e.customer_id.encode(), event_to_json(e)) for e in batch])
        produced += len(batch)
        wait_applied(redis_client, produced)

        upto = ref[ref["date"] <= cutoff]
        grouped = upto.groupby("customer_id").agg(n=("cents", "size"), cents=("cents", "sum"), first=("date", "min"), last=("date", "max"))
        pipe = redis_client.pipeline(transaction=False)
        for cid in grouped.index:
            pipe.hgetall(LAYOUT.customer_key(cid))
        states = dict(zip(grouped.index, map(state_from_hash, pipe.execute()), strict=False))
        windows = {}
        for days in (7, 30, 90):
            lo = cutoff - pd.Timedelta(days=days - 1)
            w = upto[upto["date"] >= lo].groupby("customer_id").agg(n=("cents", "size"), cents=("cents", "sum"))
            windows[days] = w
        for cid, row in grouped.iterrows():
            s = states[cid]
            got = (s.purchases_total, s.revenue_total_cents, s.first_purchase_ms, s.last_purchase_ms)
            want = (row.n, row.cents, int(row["first"].timestamp() * 1000), int(row["last"].timestamp() * 1000))
            if got != want:
                mismatches.append(f"{cutoff_day} {cid}: lifetime {got} != {want}")
            feats = compute(s, cutoff_ms)
            for days, w in windows.items():
                n, cents = (w.loc[cid, "n"], w.loc[cid, "cents"]) if cid in w.index else (0, 0)
                if (feats[f"purchases_{days}d"], round(feats[f"revenue_{days}d"] * 100)) != (n, cents):
                    mismatches.append(f"{cutoff_day} {cid}: {days}d window {feats[f'purchases_{days}d'], feats[f'revenue_{days}d']} != {(n, cents)}")
        assert len(grouped) > 1000
    assert produced == 69_659 - sum(1 for _, e in events if e.occurred_at > datetime(1998, 6, 30, tzinfo=UTC))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"


def test_lifetimes_summary_agrees_with_the_pandas_reference():
    """The pandas reference itself agrees with lifetimes' batch RFM summary (frequency = repeat days)."""
    from lifetimes.utils import summary_data_from_transaction_data

    ref = batch_reference()
    summary = summary_data_from_transaction_data(ref, "customer_id", "date", monetary_value_col="value", freq="D")
    days_with_purchase = ref.groupby("customer_id")["date"].nunique()
    assert (summary["frequency"] == days_with_purchase.loc[summary.index] - 1).all()
