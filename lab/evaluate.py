"""``segflow evaluate``: replay a simulated population through the segmenter and
score the segments against the simulator's hidden ground truth.

In-process and deterministic: no broker, no Redis. Events go in event-time
order through the same pure path as :class:`streams.engine.Engine`:

- batches of ``batch_size`` events; each event's delta (:func:`delta_of`) is
  folded into the customer's :class:`CustomerState` by :func:`apply_delta`
  with the lateness horizon of the watermark *before* the batch;
- once per customer per batch, on the state after the batch's last event:
  :func:`compute` at the customer's newest event time, ``learn_one``,
  ``evaluate`` against the stored assignments;
- after each batch the deadline timer runs on the event clock (watermark
  minus lateness, as with ``SEGFLOW_CLOCK=event``): every customer whose
  ``next_deadline_ms`` has passed is re-evaluated at that clock, without
  any event of theirs;
- the behaviour model is snapshotted (``snapshot_model``: names re-checked,
  version bumped) once per event-time day, standing in for the engine's
  periodic snapshot.

Then :func:`quality_report` measures, with :mod:`segmenter.evaluation`:
clustering vs persona (adjusted Rand index), at_risk vs silenced customers,
persona segments vs the simulator's traits (accuracy), flapping and changes per
segmentation. Profile updates go through the same path as in the engine: traits
only, outside the watermark, an evaluation without learning.

>>> sim = Simulation(customers=40, days=10, seed=3)
>>> run = replay(sim, default_config())
>>> report = quality_report(run)
>>> sorted(report["flapping"]) == ["behaviour", "lifecycle", "persona", "value"]
True
>>> report == quality_report(replay(Simulation(customers=40, days=10, seed=3), default_config()))
True
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from features.catalogue import compute
from features.extract import delta_of
from features.state import DAY_MS, CustomerState, apply_delta
from features.traits import trait_features
from lab.simulate import Simulation
from segmenter.assign import Segmenter
from segmenter.changes import SegmentChange
from segmenter.config import SEGMENTATIONS, SegmentationConfig, default_config
from segmenter.evaluation import Move, adjusted_rand_index, contingency, flap_stats, silence_detection
from segmenter.hysteresis import Assignment
from streams.events import TRAIT_FAMILIES, Event

__all__ = ["Replay", "evaluate", "format_report", "quality_report", "replay", "replay_events"]

DEFAULT_LATENESS_MS = 6 * 3600 * 1000  # Settings.lateness_seconds default
PROFILE_SHARE = 0.85  # simulated customers with a profile (the rest: persona unprofiled)
# Lifecycle segments that say "this customer is slipping away", worst last.
AT_RISK = frozenset({"at_risk"})
AT_RISK_OR_WORSE = frozenset({"at_risk", "dormant", "churned"})


@dataclass
class Replay:
    """Everything a replay produced, for :func:`quality_report`."""

    sim: Simulation | None  # None: events from elsewhere (segflow backtest)
    config: SegmentationConfig
    segmenter: Segmenter
    moves: list[Move]
    assignments: dict[str, dict[str, Assignment]]  # customer -> segmentation -> assignment, at the end
    first_assigned_ms: dict[str, int]
    daily_behaviour: dict[int, dict[str, str]]  # day number -> customer -> behaviour segment at the day's start
    end_ms: int  # the event clock when the replay stopped
    final_features: dict[str, dict] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def replay(
    sim: Simulation,
    config: SegmentationConfig,
    *,
    batch_size: int = 2000,
    lateness_ms: int = DEFAULT_LATENESS_MS,
    progress: Callable[[str], None] | None = None,
    segmenter: Segmenter | None = None,
) -> Replay:
    """Feed ``sim``'s events through the pure engine path (see the module docs);
    ``segmenter`` (default: a new one from ``config``) lets a caller watch or pin its models."""
    run = replay_events(
        sim.events(),
        config,
        start_ms=round(sim.start.timestamp() * 1000),
        batch_size=batch_size,
        lateness_ms=lateness_ms,
        progress=progress,
        segmenter=segmenter,
    )
    run.sim = sim
    return run


def replay_events(
    events: Iterable[tuple[str, Event]],
    config: SegmentationConfig,
    *,
    start_ms: int,
    batch_size: int = 2000,
    lateness_ms: int = DEFAULT_LATENESS_MS,
    progress: Callable[[str], None] | None = None,
    on_change: Callable[[SegmentChange], None] | None = None,
    segmenter: Segmenter | None = None,
) -> Replay:
    """Feed ``(family, event)`` pairs in event-time order through the pure engine
    path (see the module docs); ``on_change`` sees every segment change as the
    engine would publish it. ``start_ms`` is the event clock's origin, for progress
    lines and the end clock of an empty replay."""
    started = time.monotonic()
    seg = segmenter or Segmenter.from_config(config)
    states: dict[str, CustomerState] = {}
    current: dict[str, dict[str, Assignment]] = {}
    first_assigned: dict[str, int] = {}
    next_deadline: dict[str, int] = {}
    heap: list[tuple[int, str]] = []
    moves: list[Move] = []
    daily: dict[int, dict[str, str]] = {}
    counters: Counter = Counter()
    watermark: int | None = None
    day_seen: int | None = None

    def evaluate(cid: str, now_ms: int, cause: str, learn: bool = False) -> None:
        feats = compute(states[cid], now_ms)
        if learn:
            seg.learn_one(feats, cid, now_ms)
        ev = seg.evaluate(cid, feats, current.get(cid, {}), now_ms, cause, traits=trait_features(states[cid].traits, now_ms))
        current[cid] = ev.assignments
        first_assigned.setdefault(cid, now_ms)
        for c in ev.changes:
            assert c.to_segment is not None  # the segmenter never erases
            if on_change is not None:
                on_change(c)
            moves.append(Move(cid, c.segmentation, c.from_segment, c.to_segment, now_ms, c.reason, c.change_id))
        counters["changes"] += len(ev.changes)
        if ev.next_deadline_ms is None:
            next_deadline.pop(cid, None)
        else:
            next_deadline[cid] = ev.next_deadline_ms
            heapq.heappush(heap, (ev.next_deadline_ms, cid))

    def fire_deadlines(clock_ms: int) -> None:
        while heap and heap[0][0] <= clock_ms:
            due, cid = heapq.heappop(heap)
            if next_deadline.get(cid) != due:
                continue  # superseded by a later evaluation
            del next_deadline[cid]
            counters["deadline_evaluations"] += 1
            evaluate(cid, clock_ms, f"deadline:{clock_ms}")

    def run_batch(batch: list) -> None:
        nonlocal watermark, day_seen
        late_before = None if watermark is None else watermark - lateness_ms
        latest: dict[str, tuple[str, bool]] = {}  # customer -> (event id, learn: not only profile updates)
        for family, event in batch:
            delta = delta_of(event)
            profile = family in TRAIT_FAMILIES  # traits: outside the watermark, nothing to learn (as the engine)
            if not profile:
                watermark = delta.ts_ms if watermark is None else max(watermark, delta.ts_ms)
            state = states.setdefault(event.customer_id, CustomerState())
            status = apply_delta(state, delta, late_before)
            counters[f"profile_{status}" if profile else status] += 1
            if status == "applied":
                learn = not profile or latest.get(event.customer_id, ("", False))[1]
                latest[event.customer_id] = (event.event_id, learn)
        for cid, (event_id, learn) in latest.items():
            seen_ms = states[cid].last_seen_ms
            if seen_ms is None:
                continue  # traits without behaviour yet: no segments until the first event
            # A profile update alone: at the clock, as the engine (never before the newest event).
            at_ms = seen_ms if learn or late_before is None else max(seen_ms, late_before)
            evaluate(cid, at_ms, f"event:{event_id}", learn)
        if watermark is None:
            return  # only profile updates so far
        clock = watermark - lateness_ms
        fire_deadlines(clock)
        day = clock // DAY_MS
        if day_seen is None or day > day_seen:
            day_seen = day
            daily[day] = {cid: a["behaviour"].segment for cid, a in current.items()}
            if seg.snapshot_model() is not None:
                counters["snapshots"] += 1
            if progress and day % 10 == 0:
                progress(f"  day {day - start_ms // DAY_MS:.0f}: {counters['applied']} events, {len(states)} customers")

    batch: list = []
    for item in events:
        batch.append(item)
        if len(batch) >= batch_size:
            run_batch(batch)
            batch = []
    if batch:
        run_batch(batch)

    end_ms = (watermark - lateness_ms) if watermark is not None else start_ms
    fire_deadlines(end_ms)
    final_features = {cid: compute(states[cid], end_ms) for cid in current}
    return Replay(
        sim=None,
        config=config,
        segmenter=seg,
        moves=moves,
        assignments=current,
        first_assigned_ms=first_assigned,
        daily_behaviour=daily,
        end_ms=end_ms,
        final_features=final_features,
        counters=counters,
        seconds=time.monotonic() - started,
    )


def _ari_of(labels: dict[str, str], personas: dict[str, str], keep: Callable[[str], bool] = lambda c: True) -> float | None:
    cids = [c for c in sorted(labels) if keep(c)]
    if len(cids) < 2:
        return None
    return round(adjusted_rand_index([personas[c] for c in cids], [labels[c] for c in cids]), 4)


def _majority_labels(labels: dict[str, str], personas: dict[str, str]) -> dict[str, str]:
    by_persona: dict[str, Counter] = {}
    for cid, seg in labels.items():
        by_persona.setdefault(personas[cid], Counter())[seg] += 1
    top = {p: c.most_common(1)[0][0] for p, c in by_persona.items()}
    return {cid: top[personas[cid]] for cid in labels}


def quality_report(
    run: Replay,
    *,
    settle_days: int = 30,
    detect_within_days: float = 21,
    revert_days: float = 7,
) -> dict:
    """The measurements of a :func:`replay` as a JSON-ready dict."""
    sim, config = run.sim, run.config
    assert sim is not None, "quality is judged against a simulation's hidden truth"
    personas = sim.personas
    silenced = {cid: round(t.timestamp() * 1000) for cid, t in sim.silenced_at.items()}
    end_ms = run.end_ms
    seen = sorted(run.assignments)

    def still_active(cid: str) -> bool:  # not (yet) silenced by the simulator at the end
        return cid not in silenced or silenced[cid] > end_ms

    # -- behaviour vs persona --------------------------------------------------------
    final_behaviour = {cid: run.assignments[cid]["behaviour"].segment for cid in seen}
    model_behaviour = {cid: run.segmenter.behaviour.predict_one(f) for cid, f in run.final_features.items()}
    last_day = end_ms // DAY_MS
    window = [d for d in sorted(run.daily_behaviour) if d > last_day - settle_days]
    daily_ari = [a for a in (_ari_of(run.daily_behaviour[d], personas) for d in window) if a is not None]
    series = {
        str(int(d - sim.start.timestamp() // 86400)): _ari_of(labels, personas)
        for d, labels in sorted(run.daily_behaviour.items())
        if (d - sim.start.timestamp() // 86400) % 5 == 0
    }
    behaviour = {
        "customers_seen": len(seen),
        "customers_never_seen": sim.customers - len(seen),
        "ari_final": _ari_of(final_behaviour, personas),
        "ari_final_not_silenced": _ari_of(final_behaviour, personas, still_active),
        "ari_settled_mean": round(sum(daily_ari) / len(daily_ari), 4) if daily_ari else None,
        "ari_settled_min": min(daily_ari) if daily_ari else None,
        "ari_settled_days": len(daily_ari),
        "ari_model_at_end": _ari_of(model_behaviour, personas),
        # A ceiling: every customer of a persona in that persona's most common segment.
        "ari_if_persona_majority": _ari_of(_majority_labels(final_behaviour, personas), personas),
        "ari_by_day": series,
        "contingency_final": contingency([personas[c] for c in seen], [final_behaviour[c] for c in seen]),
        "centroids": {name: {f: round(v, 2) for f, v in prof.items()} for name, prof in run.segmenter.behaviour.centroid_profiles().items()},
        "model_version": run.segmenter.model_version,
        "renames": run.segmenter.behaviour.renames,
    }

    # -- lifecycle vs silence -----------------------------------------------------------
    life_moves = [m for m in run.moves if m.segmentation == "lifecycle"]
    final_life = {cid: run.assignments[cid]["lifecycle"].segment for cid in seen}
    within_ms = int(detect_within_days * DAY_MS)
    detection = {
        "at_risk": silence_detection(life_moves, silenced, final_life, end_ms, AT_RISK, within_ms, personas),
        "at_risk_or_worse": silence_detection(life_moves, silenced, final_life, end_ms, AT_RISK_OR_WORSE, within_ms, personas),
        "lifecycle_contingency_final": contingency([personas[c] for c in seen], [final_life[c] for c in seen]),
    }

    # -- flapping -----------------------------------------------------------------------
    observed_days = sum(max(0, end_ms - run.first_assigned_ms[c]) for c in seen) / DAY_MS
    flapping = {}
    for name in SEGMENTATIONS:
        policy = getattr(config.hysteresis, name)
        stats = flap_stats(
            (m for m in run.moves if m.segmentation == name),
            observed_days,
            int(revert_days * DAY_MS),
            policy.min_dwell_ms,
        )
        stats["min_dwell_days"] = policy.min_dwell_seconds / 86400
        stats["margin"] = policy.margin
        stats["final_sizes"] = dict(Counter(run.assignments[c][name].segment for c in seen).most_common())
        flapping[name] = stats

    # -- persona vs the simulator's traits ----------------------------------------------
    final_persona = {cid: run.assignments[cid]["persona"].segment for cid in seen}
    truth = sim.persona_segments
    decided = [cid for cid in seen if cid in sim.traits_decide]
    persona = {
        "profile_share": sim.profile_share,
        "customers_with_profile": sum(1 for cid in seen if sim.traits[cid]),
        "accuracy_traits_decide": _accuracy(final_persona, truth, decided),
        "customers_traits_decide": len(decided),
        "accuracy_all": _accuracy(final_persona, truth, seen),
        "contingency_final": contingency([truth[c] for c in seen], [final_persona[c] for c in seen]),
    }

    return {
        "simulation": {"customers": sim.customers, "days": sim.days, "seed": sim.seed, "start": sim.start.isoformat(), "profile_share": sim.profile_share},
        "replay": {
            "events_applied": run.counters["applied"],
            "too_late": run.counters["too_late"],
            "duplicates": run.counters["duplicate"],
            "deadline_evaluations": run.counters["deadline_evaluations"],
            "changes": run.counters["changes"],
            "end": datetime.fromtimestamp(end_ms / 1000, tz=UTC).isoformat(),
        },
        "parameters": {"settle_days": settle_days, "detect_within_days": detect_within_days, "revert_days": revert_days},
        "behaviour": behaviour,
        "silence": detection,
        "persona": persona,
        "flapping": flapping,
    }


def _accuracy(assigned: dict[str, str], truth: dict[str, str], customers: list[str]) -> float | None:
    return round(sum(assigned[c] == truth[c] for c in customers) / len(customers), 4) if customers else None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))) for r in rows)


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _contingency_table(table: dict[str, dict[str, int]]) -> str:
    cols = sorted({c for row in table.values() for c in row})
    rows = [["persona \\ segment", *cols]]
    for persona, row in table.items():
        rows.append([persona, *(str(row.get(c, 0)) for c in cols)])
    return _table(rows)


def format_report(report: dict) -> str:
    """The report as readable text tables."""
    s, r, b = report["simulation"], report["replay"], report["behaviour"]
    p = report["parameters"]
    out = [
        f"segflow evaluate: {s['customers']} customers x {s['days']:g} days, seed {s['seed']}; "
        f"{r['events_applied']} events, {r['deadline_evaluations']} deadline evaluations, {r['changes']} changes",
        "",
        f"Behaviour clusters vs hidden persona (adjusted Rand index; {b['customers_seen']} customers seen)",
        _table(
            [
                ["measure", "ARI"],
                ["served segments at the end", _fmt(b["ari_final"])],
                ["  customers not silenced", _fmt(b["ari_final_not_silenced"])],
                [f"served, mean over the last {p['settle_days']} days", _fmt(b["ari_settled_mean"])],
                [f"served, worst day of the last {p['settle_days']}", _fmt(b["ari_settled_min"])],
                ["final model, everyone re-predicted at the end", _fmt(b["ari_model_at_end"])],
                ["ceiling: each persona all in its majority segment", _fmt(b["ari_if_persona_majority"])],
            ]
        ),
        "",
        _contingency_table(b["contingency_final"]),
        "",
        f"Lifecycle vs customers the simulator silenced (detection window {p['detect_within_days']:g} days)",
    ]
    rows = [["flagged as", "recall<=window", "median delay d", "p90 delay d", "flag precision", "precision@end", "recall@end"]]
    for key, d in report["silence"].items():
        if not key.startswith("at_risk"):
            continue
        rows.append(
            [
                key,
                _fmt(d["recall_within"]),
                _fmt(d["median_delay_days"]),
                _fmt(d["p90_delay_days"]),
                _fmt(d["precision_of_flags"]),
                _fmt(d["precision_at_end"]),
                _fmt(d["recall_at_end"]),
            ]
        )
    out.append(_table(rows))
    wrong = report["silence"]["at_risk"]["wrong_flags_by_persona"]
    out.append(f"at_risk flags of customers who were not silent, by persona: {wrong or 'none'}")
    pr = report["persona"]
    out += [
        "",
        f"Persona vs the simulator's traits ({pr['customers_with_profile']} of {b['customers_seen']} customers with a profile)",
        _table(
            [
                ["measure", "accuracy", "customers"],
                ["where the traits decide", _fmt(pr["accuracy_traits_decide"]), str(pr["customers_traits_decide"])],
                ["everyone (behaviour conditions too)", _fmt(pr["accuracy_all"]), str(b["customers_seen"])],
            ]
        ),
        "",
        _contingency_table(pr["contingency_final"]).replace("persona \\ segment", "expected \\ persona"),
    ]
    out += ["", f"Changes and flapping (revert = A->B->A within {p['revert_days']:g} days)"]
    rows = [["segmentation", "changes", "per cust/30d", "reverts", "revert share", "reverts<dwell", "min dwell d"]]
    for name, f in report["flapping"].items():
        rows.append(
            [
                name,
                str(f["changes"]),
                _fmt(f["changes_per_customer_30d"]),
                str(f["reverts"]),
                _fmt(f["revert_share"]),
                str(f["reverts_within_dwell"]),
                f"{f['min_dwell_days']:g}",
            ]
        )
    out.append(_table(rows))
    for name, f in report["flapping"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(f["transitions"].items())[:5])
        out.append(f"  {name}: sizes {f['final_sizes']}; top moves: {top}")
        if f["revert_paths"]:
            paths = ", ".join(f"{k} {v}" for k, v in list(f["revert_paths"].items())[:4])
            out.append(f"    reverts by path: {paths}")
    return "\n".join(out)


def evaluate(
    customers: int = 2000,
    days: float = 120,
    seed: int = 1,
    config: SegmentationConfig | None = None,
    *,
    batch_size: int = 2000,
    lateness_ms: int = DEFAULT_LATENESS_MS,
    settle_days: int = 30,
    detect_within_days: float = 21,
    revert_days: float = 7,
    progress: Callable[[str], None] | None = None,
    profile_share: float = PROFILE_SHARE,
) -> dict:
    """Simulate, replay and measure: the report of ``segflow evaluate``."""
    sim = Simulation(customers=customers, days=days, seed=seed, profile_share=profile_share)
    run = replay(sim, config or default_config(), batch_size=batch_size, lateness_ms=lateness_ms, progress=progress)
    report = quality_report(run, settle_days=settle_days, detect_within_days=detect_within_days, revert_days=revert_days)
    report["replay"]["seconds"] = round(run.seconds, 1)
    report["replay"]["batch_size"] = batch_size
    report["replay"]["lateness_hours"] = lateness_ms / 3_600_000
    return report


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"
