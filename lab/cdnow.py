"""``segflow evaluate --dataset cdnow``: churn judgement on real purchases, against the field's batch model.

The field's protocol on CDNOW (23,570 customers, 1997-1998; the file ships in the
``lifetimes`` wheel): calibration = purchases up to 1997-09-30, holdout =
1997-10-01 .. 1998-06-30 (273 days); a customer "churned" when they bought
nothing in the holdout; repeat purchases counted on distinct days.

1. The calibration purchases are streamed through the real engine: an embedded
   broker and Redis, one ``segflow worker`` on the event clock, the shipped
   segments config. Once every event is applied and the engine is quiet
   (changes and deadline evaluations unchanged for ``QUIET_S``, the outbox empty), every
   customer's state, lifecycle segment and the worker's fitted churn model are
   read back from Redis.
2. In the same run, the batch reference: BG/NBD fitted with ``lifetimes`` on
   the same calibration purchases (``summary_data_from_transaction_data``,
   daily periods), and recency alone (days since the last purchase).
3. Each signal is scored against the holdout (:mod:`segmenter.scoring`): ROC
   AUC; for the probabilities of no purchase in the holdout, Brier score and a
   reliability table; expected vs actual holdout purchase days; and the
   lifecycle flags (at_risk, dormant, churned) as precision and recall.

``sample_every`` keeps one customer in N (by id) for a quicker run (the 2005
paper used a 1/10 sample).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis as redis_lib

from features import keys
from features.catalogue import compute
from features.codec import state_from_hash
from features.keys import Layout
from lab.datasets import cdnow_events
from lab.embedded import EmbeddedStack, free_port
from segmenter.bgnbd import BGNBDParams
from segmenter.churn import ChurnModel, p_no_purchase, rhythm_of
from segmenter.config import default_config
from segmenter.scoring import brier, precision_recall, reliability, roc_auc
from streams.admin import ensure_topics
from streams.change_audit import EngineQuiet
from streams.events import PurchaseEvent, event_to_json
from streams.producer import produce_events
from streams.segment_store import parse_segments
from streams.status import read_totals
from streams.topics import TOPICS

CALIBRATION_END = date(1997, 9, 30)
LAYOUT = Layout(4)  # the replay's input partitions
HOLDOUT_END = date(1998, 6, 30)
HOLDOUT_DAYS = (HOLDOUT_END - CALIBRATION_END).days  # 273
FLAGS = frozenset({"at_risk", "dormant", "churned"})
QUIET_S = 10.0
DAY_MS = 86_400_000


def _day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def split(sample_every: int = 1) -> tuple[list[PurchaseEvent], dict[str, int]]:
    """Calibration events (in event-time order) and each customer's holdout purchase days."""
    calibration: list[PurchaseEvent] = []
    holdout: dict[str, set[date]] = defaultdict(set)
    end = datetime(CALIBRATION_END.year, CALIBRATION_END.month, CALIBRATION_END.day, tzinfo=UTC) + timedelta(days=1)
    for _, event in cdnow_events():
        assert isinstance(event, PurchaseEvent)
        if sample_every > 1 and int(event.customer_id.rsplit("-", 1)[1]) % sample_every:
            continue
        if event.occurred_at < end:
            calibration.append(event)
        else:
            holdout[event.customer_id].add(event.occurred_at.date())
    calibration.sort(key=lambda e: (e.occurred_at, e.event_id))
    return calibration, {c: len(days) for c, days in holdout.items()}


def batch_bgnbd(calibration: list[PurchaseEvent]) -> tuple[dict[str, tuple[float, float, float]], BGNBDParams]:
    """Per customer (x, t_x, T) in days at the cut, and lifetimes' BG/NBD fit on them."""
    from lifetimes import BetaGeoFitter

    rows = calibration_summaries([e.customer_id for e in calibration], [e.occurred_at.date() for e in calibration])
    x, t_x, age = (np.array(column, dtype=float) for column in zip(*rows.values(), strict=True))
    p = BetaGeoFitter(penalizer_coef=0.0).fit(x, t_x, age).params_
    return rows, BGNBDParams(r=float(p["r"]), alpha=float(p["alpha"]), a=float(p["a"]), b=float(p["b"]))


def calibration_summaries(customer_ids: list[str], days: list[date]) -> dict[str, tuple[float, float, float]]:
    """Per customer ``(x, t_x, T)`` in days at the cut, by lifetimes' summary of the
    purchase days up to :data:`CALIBRATION_END` (distinct days, daily periods)."""
    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    frame = pd.DataFrame({"customer_id": customer_ids, "date": pd.to_datetime(days)})
    frame = frame[frame["date"] <= pd.Timestamp(CALIBRATION_END)]
    s = summary_data_from_transaction_data(frame, "customer_id", "date", freq="D", observation_period_end=pd.Timestamp(CALIBRATION_END))
    return {str(c): (float(f), float(r), float(t)) for c, f, r, t in zip(s.index, s["frequency"], s["recency"], s["T"], strict=True)}


def _wait(what: str, ok: Callable[[], bool], timeout: float, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def stream_through_engine(calibration: list[PurchaseEvent], work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Replay the calibration purchases through broker, worker and Redis; read back what the engine holds."""
    stack = EmbeddedStack(work_dir=work).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        ensure_topics(stack.broker.bootstrap, TOPICS, 4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW_")}
        env.update(
            SEGFLOW_KAFKA_URL=stack.broker.url,
            SEGFLOW_REDIS_URL=stack.redis.url,
            SEGFLOW_CLOCK="event",
            SEGFLOW_LATENESS_SECONDS="0",
            SEGFLOW_PARTITIONS=str(LAYOUT.partitions),
            SEGFLOW_APP_ID="segflow-cdnow",
            SEGFLOW_WEB_PORT=str(free_port()),
            SEGFLOW_DATA_DIR=str(work / "worker"),
            # Only the purchases topic carries events: the others' partitions are idle at once,
            # so the event-time watermark (and with it every absence deadline) follows the replay.
            SEGFLOW_IDLE_PARTITION_SECONDS="2",
            # Models (behaviour clusters, the churn model's population fit) saved every 2 s, not 30.
            SEGFLOW_SNAPSHOT_INTERVAL_SECONDS="2",
        )
        with open(work / "worker.log", "ab") as log:
            worker = subprocess.Popen([sys.executable, "-m", "segflow.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        r = redis_lib.Redis.from_url(stack.redis.url, decode_responses=True)
        t0 = time.monotonic()
        items = (("purchase", e.customer_id.encode(), event_to_json(e)) for e in calibration)
        produce_events(stack.broker.bootstrap, items, TOPICS)
        say(f"  {len(calibration):,} calibration purchases sent in {time.monotonic() - t0:.0f} s; waiting for the worker")

        def applied() -> int:
            return read_totals(r, LAYOUT).get("applied", 0)

        last_report = [time.monotonic()]

        def all_applied() -> bool:
            if time.monotonic() - last_report[0] > 15:
                say(f"  applied {applied():,} of {len(calibration):,}")
                last_report[0] = time.monotonic()
            return applied() >= len(calibration)

        _wait("every event applied", all_applied, 1800, worker)
        say(f"  all applied after {time.monotonic() - t0:.0f} s; waiting until absence moves are done (quiet for {QUIET_S:g} s)")
        _wait("the engine to go quiet", EngineQuiet(r, LAYOUT, QUIET_S), 900, worker)
        say(f"  quiet after {time.monotonic() - t0:.0f} s; reading every customer back from Redis")
        # Stopped (SIGTERM) before reading, so nothing moves while Redis is read; its models
        # were saved every 2 s (SEGFLOW_SNAPSHOT_INTERVAL_SECONDS above).
        worker.terminate()
        worker.wait(60)
        churn_model = r.get(keys.CHURN_MODEL)
        customers = sorted({e.customer_id for e in calibration})
        pipe = r.pipeline(transaction=False)
        for cid in customers:
            pipe.hgetall(LAYOUT.customer_key(cid))
            pipe.hgetall(LAYOUT.segments_key(cid))
        replies = pipe.execute()
        return {
            "states": {cid: replies[2 * i] for i, cid in enumerate(customers)},
            "segments": {cid: parse_segments(replies[2 * i + 1]) for i, cid in enumerate(customers)},
            "churn_model": None if churn_model is None else json.loads(churn_model),
            "seconds": time.monotonic() - t0,
            "stats": read_totals(r, LAYOUT),
        }
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        stack.stop()


def paper_sample_holdout() -> dict[str, Any]:
    """Expected against actual holdout purchase days of BG/NBD on the 2005 paper's own
    1/10 sample (``CDNOW_sample.txt`` in the lifetimes wheel, 2,357 customers), fitted
    on its calibration purchases with this module's protocol: the model's own aggregate
    gap, on the data it was published with, next to the engine's and the batch fit's."""
    from lifetimes.datasets import load_dataset

    from segmenter.bgnbd import expected_purchases, fit

    tx = load_dataset("CDNOW_sample.txt", sep=r"\s+", header=None, names=["customer_id", "id_in_master", "date", "quantity", "amount"], dtype={"date": str})
    days = [datetime.strptime(d, "%Y%m%d").date() for d in tx["date"]]
    cids = [str(c) for c in tx["customer_id"]]
    rows = calibration_summaries(cids, days)
    holdout = {(c, d) for c, d in zip(cids, days, strict=True) if CALIBRATION_END < d <= HOLDOUT_END and c in rows}
    x, t_x, age = (np.array(column, dtype=float) for column in zip(*rows.values(), strict=True))
    params = fit(x, t_x, age)
    expected = float(np.sum(expected_purchases(params, float(HOLDOUT_DAYS), x, t_x, age)))
    actual = float(len(holdout))
    return {"customers": len(rows), "params": params.as_dict(), "expected_total": expected, "actual_total": actual, "gap": expected / actual - 1.0}


def _probability_scores(p_gone: list[float], expected: list[float], actual: list[int], outcomes: list[bool]) -> dict[str, Any]:
    exp = np.asarray(expected)
    act = np.asarray(actual, dtype=float)
    return {
        "brier": brier(p_gone, outcomes),
        "reliability": reliability(p_gone, outcomes),
        "mae_holdout_purchases": float(np.mean(np.abs(exp - act))),
        "expected_total": float(exp.sum()),
        "actual_total": float(act.sum()),
    }


def evaluate_cdnow(
    sample_every: int = 1, work_dir: Path | None = None, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
) -> dict[str, Any]:
    """The whole evaluation; returns the report (see :func:`format_report`)."""
    t0 = time.monotonic()
    calibration, holdout = split(sample_every)
    say(f"CDNOW: {len(calibration):,} calibration purchases of {len({e.customer_id for e in calibration}):,} customers (1 in {sample_every})")
    batch_rows, batch_params = batch_bgnbd(calibration)
    say(f"  lifetimes BG/NBD (days): r {batch_params.r:.4f}, alpha {batch_params.alpha:.3f}, a {batch_params.a:.4f}, b {batch_params.b:.4f}")
    work = work_dir or Path(tempfile.mkdtemp(prefix="segflow-cdnow-"))
    engine = stream_through_engine(calibration, work, say)

    config = default_config()
    # the worker's last fitted churn model, as it published it (segflow:model:churn)
    restored = engine["churn_model"] is not None
    churn = ChurnModel.from_summary(engine["churn_model"]) if restored else ChurnModel(horizon_days=config.churn.horizon_days)
    params = churn.params
    cut_ms = _day_ms(CALIBRATION_END)
    ids, outcome, actual = [], [], []
    engine_p, engine_p_holdout, engine_expected, flags, recency = [], [], [], [], []
    batch_p_holdout, batch_expected = [], []
    from segmenter.bgnbd import expected_purchases

    for cid, h in engine["states"].items():
        feats = compute(state_from_hash(h), cut_ms)
        s = rhythm_of(feats)
        if s is None or cid not in batch_rows:
            continue
        ids.append(cid)
        bought = holdout.get(cid, 0)
        actual.append(bought)
        outcome.append(bought == 0)
        engine_p.append(churn.propensity(feats) or 0.0)
        engine_p_holdout.append(p_no_purchase(params, HOLDOUT_DAYS, *s))
        engine_expected.append(float(expected_purchases(params, float(HOLDOUT_DAYS), *s)))
        seg = engine["segments"].get(cid, {}).get("lifecycle")
        flags.append(seg is not None and seg.segment in FLAGS)
        recency.append(feats["days_since_last_purchase"] or 0.0)
        x, t_x, age = batch_rows[cid]
        batch_p_holdout.append(p_no_purchase(batch_params, HOLDOUT_DAYS, x, t_x, age))
        batch_expected.append(float(expected_purchases(batch_params, float(HOLDOUT_DAYS), x, t_x, age)))

    base_rate = float(np.mean(outcome))
    precision, recall = precision_recall(flags, outcome)
    report: dict[str, Any] = {
        "command": f"segflow evaluate --dataset cdnow{'' if sample_every == 1 else f' --sample-every {sample_every}'}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "customers": len(ids),
        "base_rate_no_purchase": base_rate,
        "horizon_days": churn.horizon_days,
        "holdout_days": HOLDOUT_DAYS,
        "engine_model_restored": bool(restored),
        "params": {"engine": params.as_dict(), "engine_version": churn.version, "lifetimes": batch_params.as_dict()},
        "auc": {
            "engine_churn_propensity": roc_auc(engine_p, outcome),
            "engine_p_no_purchase_holdout": roc_auc(engine_p_holdout, outcome),
            "batch_bgnbd_p_no_purchase_holdout": roc_auc(batch_p_holdout, outcome),
            "batch_bgnbd_minus_expected": roc_auc([-e for e in batch_expected], outcome),
            "recency_days": roc_auc(recency, outcome),
        },
        "probabilities": {
            "engine": _probability_scores(engine_p_holdout, engine_expected, actual, outcome),
            "batch_bgnbd": _probability_scores(batch_p_holdout, batch_expected, actual, outcome),
        },
        "flags": {
            "segments": sorted(FLAGS),
            "flagged_share": float(np.mean(flags)),
            "precision": precision,
            "recall": recall,
        },
        # what the shipped thresholds trade: each rule threshold as a flag on the same propensity
        "threshold_sweep": [
            {"threshold": t, **dict(zip(("precision", "recall"), precision_recall([p >= t for p in engine_p], outcome), strict=True))}
            for t in (0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
        ],
        "lifecycle_sizes": dict(Counter(a["lifecycle"].segment for a in engine["segments"].values() if "lifecycle" in a)),
        "paper_sample_bgnbd": paper_sample_holdout(),
        "engine_stats": engine["stats"],
        "engine_seconds": engine["seconds"],
        "seconds": time.monotonic() - t0,
    }
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as the tables docs/SEGMENTS.md shows."""
    lines = [
        f"CDNOW churn evaluation: {r['customers']:,} customers, calibration to {CALIBRATION_END}, holdout {HOLDOUT_DAYS} days to {HOLDOUT_END}",
        f"base rate (no purchase in the holdout): {r['base_rate_no_purchase']:.3f}",
        "",
        "| signal | ROC AUC |",
        "|---|---|",
    ]
    lines += [f"| {name} | {auc:.3f} |" for name, auc in r["auc"].items()]
    lines += ["", "| model | Brier | MAE holdout purchase days | expected total | actual total |", "|---|---|---|---|---|"]
    for name, p in r["probabilities"].items():
        lines.append(f"| {name} | {p['brier']:.4f} | {p['mae_holdout_purchases']:.3f} | {p['expected_total']:,.0f} | {p['actual_total']:,.0f} |")
    paper = r["paper_sample_bgnbd"]
    lines.append(
        f"| BG/NBD on the 2005 paper's 1/10 sample ({paper['customers']:,}; reference) | - | - | {paper['expected_total']:,.0f} | {paper['actual_total']:,.0f} |"
    )
    for name, p in r["probabilities"].items():
        lines.append(f"expected holdout purchase days, {name}: {p['expected_total'] / p['actual_total'] - 1:+.1%}")
    lines.append(f"expected holdout purchase days, BG/NBD on the paper's sample: {paper['gap']:+.1%}")
    f = r["flags"]
    lines += [
        "",
        f"lifecycle flags ({', '.join(f['segments'])}): {f['flagged_share']:.1%} of customers flagged, precision {f['precision']:.3f}, recall {f['recall']:.3f}",
        "",
        "churn_propensity as a flag: " + ", ".join(f">= {t['threshold']:g}: P {t['precision']:.3f} R {t['recall']:.3f}" for t in r["threshold_sweep"]),
        f"lifecycle at the cut: {r['lifecycle_sizes']}",
        "",
        "reliability (engine, deciles of P(no purchase in the holdout)):",
        "| decile | customers | predicted | observed |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(r["probabilities"]["engine"]["reliability"], 1):
        lines.append(f"| {i} | {row['customers']:.0f} | {row['predicted']:.3f} | {row['observed']:.3f} |")
    pe, pl = r["params"]["engine"], r["params"]["lifetimes"]
    lines += [
        "",
        "| BG/NBD parameters (days) | r | alpha | a | b |",
        "|---|---|---|---|---|",
        f"| engine (v{r['params']['engine_version']}, sample) | {pe['r']:.4f} | {pe['alpha']:.3f} | {pe['a']:.4f} | {pe['b']:.4f} |",
        f"| lifetimes (batch, all) | {pl['r']:.4f} | {pl['alpha']:.3f} | {pl['a']:.4f} | {pl['b']:.4f} |",
        "",
        f"engine replay {r['engine_seconds']:.0f} s, whole run {r['seconds']:.0f} s",
    ]
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
