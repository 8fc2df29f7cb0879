"""What the visit model's cold start costs at_risk recall, measured on the simulator.

``python -m lab.cold_start --seed 1`` replays one simulation twice through the
pure engine path (:func:`lab.evaluate.replay`, as ``segflow evaluate`` does):

1. **learned**, as shipped: the visit-rhythm model behind ``p_active`` (the
   ``visits_stopped`` rule) refits its population parameters on every snapshot
   from what it has seen so far;
2. **pinned**: the same model holds, from the first event on, the parameters
   run 1 fitted at its end: an oracle no deployment has on its first day.

It prints the visit model's dropout estimate over run 1 (``a / (a + b)``, the
chance of dropping out after an active day; 0 means "nobody ever leaves"), and
for both runs at_risk flag precision and recall within 21 days of a churner's
silence, overall and split at the first fit whose dropout estimate reached half
of the final one. Before then the maximum-likelihood fit has seen too few
silences long enough to call dropouts, and a churner's ``p_active`` stays near 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from features.state import DAY_MS
from lab.evaluate import AT_RISK, Replay, replay
from lab.simulate import Simulation
from segmenter.assign import Segmenter
from segmenter.bgnbd import BGNBDParams
from segmenter.config import SegmentationConfig, default_config
from segmenter.evaluation import silence_detection

WITHIN_DAYS = 21.0


def dropout(params: BGNBDParams) -> float:
    """The mean chance of dropping out right after an active day, ``a / (a + b)``.

    >>> dropout(BGNBDParams(r=1.0, alpha=1.0, a=1.0, b=99.0))
    0.01
    """
    return params.a / (params.a + params.b)


def _detection(run: Replay, silenced: dict[str, int], with_flags: bool = False) -> dict[str, Any]:
    """Recall within 21 days of these churners; with every flag's precision (which
    judges all flags, so only for the whole population)."""
    final = {cid: a["lifecycle"].segment for cid, a in run.assignments.items()}
    moves = [m for m in run.moves if m.segmentation == "lifecycle"]
    d = silence_detection(moves, silenced, final, run.end_ms, AT_RISK, int(WITHIN_DAYS * DAY_MS))
    keys = ("silenced_eligible", "recall_within", "median_delay_days") + (("flags", "precision_of_flags") if with_flags else ())
    return {k: d[k] for k in keys}


def cold_start(customers: int, days: int, seed: int, config: SegmentationConfig | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Both replays of ``Simulation(customers, days, seed)`` and their at_risk detection."""
    config = config or default_config()
    learner = Segmenter.from_config(config)
    fits: list[tuple[float, BGNBDParams]] = []  # (clock day, parameters) after each refit that changed them
    refit = learner.visits.refit

    def recording_refit() -> bool:
        changed = refit()
        if changed:
            fits.append((learner.visits.clock_day, learner.visits.params))
        return changed

    learner.visits.refit = recording_refit  # type: ignore[method-assign]
    say(f"[1/2] learned: {customers:,} customers x {days} days, seed {seed}, visit model refitted on each snapshot")
    sim = Simulation(customers=customers, days=days, seed=seed)
    learned = replay(sim, config, segmenter=learner, progress=say)
    if not fits:
        raise ValueError("the visit model never fitted: too few customers or days for its min_customers / min_history_days")
    final = learner.visits.params

    pinned_segmenter = Segmenter.from_config(config)
    pinned_segmenter.visits.params = final
    pinned_segmenter.visits.refit = lambda: False  # type: ignore[method-assign]
    say("[2/2] pinned: the visit model holds run 1's final parameters from the first event")
    pinned = replay(Simulation(customers=customers, days=days, seed=seed), config, segmenter=pinned_segmenter, progress=say)

    start_day = sim.start.timestamp() * 1000 / DAY_MS
    informed_day = next(day for day, p in fits if dropout(p) >= dropout(final) / 2)
    silenced = {cid: round(t.timestamp() * 1000) for cid, t in sim.silenced_at.items()}
    early = {cid: ms for cid, ms in silenced.items() if ms < informed_day * DAY_MS}
    late = {cid: ms for cid, ms in silenced.items() if ms >= informed_day * DAY_MS}
    return {
        "simulation": {"customers": customers, "days": days, "seed": seed},
        "visit_model_fits": [
            {"day": round(day - start_day, 1), "dropout": round(dropout(p), 5), "r": round(p.r, 3), "alpha": round(p.alpha, 3)} for day, p in fits
        ],
        "final_dropout": round(dropout(final), 5),
        "informed_day": round(informed_day - start_day, 1),
        "runs": {
            name: {
                "all": _detection(run, silenced, with_flags=True),
                "silenced_before_informed": _detection(run, early),
                "silenced_after_informed": _detection(run, late),
            }
            for name, run in (("learned", learned), ("pinned", pinned))
        },
    }


def format_report(report: dict[str, Any]) -> str:
    sim = report["simulation"]
    lines = [
        f"visit model cold start: {sim['customers']:,} customers x {sim['days']} days, seed {sim['seed']}",
        "",
        "dropout estimate a/(a+b) of the visit model, every 5th fit (day of the run):",
    ]
    fits = report["visit_model_fits"]
    lines += [f"  day {f['day']:6.1f}: {f['dropout']:.5f}" for f in fits[::5] + fits[-1:]]
    lines += [
        f"first fit at half the final estimate ({report['final_dropout']:.5f}): day {report['informed_day']}",
        "",
        f"| run | churners silenced | at_risk recall within {WITHIN_DAYS:g} d | median delay (d) | flags | flag precision |",
        "|---|---|---|---|---|---|",
    ]
    for name, parts in report["runs"].items():
        for part, d in parts.items():
            lines.append(
                f"| {name}, {part.replace('_', ' ')} | {d['silenced_eligible']} | {d['recall_within']} | {d['median_delay_days']} | {d.get('flags', '-')} | {d.get('precision_of_flags', '-')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    report = cold_start(args.customers, args.days, args.seed)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
