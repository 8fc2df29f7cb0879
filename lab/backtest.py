"""``segflow backtest``: the last N days of events through a candidate segments config
and through the live one, side by side, day by day.

Where ``segflow preview`` shows what a candidate does to today's customers,
a backtest shows how it behaves over time on real traffic: per event-time day,
who enters and leaves each segment, change events per customer, flaps (a move
undone within 7 days, :mod:`segmenter.flaps`) and the campaign triggers it
would fire (holdouts and caps applied as the router does), next to the live
config's numbers on the same events.

Both configs replay the events in-process through the engine's pure path
(:func:`lab.evaluate.replay_events`: the same feature fold, evaluation,
hysteresis and event-clock deadlines as the worker, no broker, no Redis), in
two processes at once. Nothing live is read but the events, and nothing is
written. Both start from no state: ``--warmup-days`` replays that many days
before the window first so customers arrive with history; changes during the
warm-up are not reported.

>>> from datetime import datetime, UTC
>>> from segmenter.campaigns import default_campaigns
>>> from segmenter.changes import SegmentChange
>>> t = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000)
>>> tally = BacktestTally(default_campaigns(), report_from_ms=t)
>>> tally.add_change(SegmentChange.create(customer_id="c1", segmentation="lifecycle", from_segment="active",
...     to_segment="churned", reason="r", model_version=0, occurred_at_ms=t + 5, cause="x", features={}))
>>> day = tally.as_dict()["days"][0]
>>> day["date"], day["changes"], day["entered"], day["exited"]
('2026-11-02', 1, {'lifecycle:churned': 1}, {'lifecycle:active': 1})
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from features.state import DAY_MS
from segmenter.campaigns import CampaignConfig, CapLedger
from segmenter.changes import SegmentChange
from segmenter.config import SegmentationConfig
from segmenter.evaluation import Move
from segmenter.flaps import flapping_pairs
from streams.events import Event, InvalidEvent, decode


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


@dataclass
class _Day:
    events: int = 0
    customers: set[str] = field(default_factory=set)
    changes: int = 0
    entered: Counter[str] = field(default_factory=Counter)
    exited: Counter[str] = field(default_factory=Counter)
    triggers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


class BacktestTally:
    """Per-day numbers of one config's replay: :meth:`add_event` for every event in
    the window, :meth:`add_change` for every change the replay makes."""

    def __init__(self, campaigns: CampaignConfig, report_from_ms: int) -> None:
        self.campaigns = campaigns
        self.report_from_ms = report_from_ms
        self._days: dict[str, _Day] = defaultdict(_Day)
        self._moves: list[Move] = []  # every change, warm-up included: a flap can start there
        self._caps: dict[tuple[str, str], CapLedger] = defaultdict(CapLedger)

    def add_event(self, customer_id: str, ts_ms: int) -> None:
        if ts_ms >= self.report_from_ms:
            day = self._days[_date(ts_ms)]
            day.events += 1
            day.customers.add(customer_id)

    def add_change(self, change: SegmentChange) -> None:
        t = change.occurred_at_ms
        assert change.to_segment is not None  # a replay never erases
        self._moves.append(Move(change.customer_id, change.segmentation, change.from_segment, change.to_segment, t, change.reason, change.change_id))
        reported = t >= self.report_from_ms
        day = self._days[_date(t)] if reported else None
        if day is not None:
            day.changes += 1
            day.entered[f"{change.segmentation}:{change.to_segment}"] += 1
            if change.from_segment is not None:
                day.exited[f"{change.segmentation}:{change.from_segment}"] += 1
        for decision in self.campaigns.route(change):
            trigger = decision.trigger
            verdict = self._caps[trigger.customer_id, trigger.campaign].charge(trigger.trigger_id, t, decision.policy, now_ms=t)
            if day is not None:
                day.triggers[trigger.campaign]["capped" if not verdict.publish else "holdout" if trigger.holdout else "treatment"] += 1

    def as_dict(self) -> dict[str, Any]:
        pairs, eligible = flapping_pairs(self._moves)
        flaps_by_day = Counter(_date(undo.occurred_at_ms) for _, undo in pairs if undo.occurred_at_ms >= self.report_from_ms)
        days = []
        for date in sorted(self._days):
            d = self._days[date]
            days.append(
                {
                    "date": date,
                    "events": d.events,
                    "customers": len(d.customers),
                    "changes": d.changes,
                    "changes_per_customer": round(d.changes / len(d.customers), 3) if d.customers else None,
                    "flaps": flaps_by_day[date],
                    "entered": dict(sorted(d.entered.items())),
                    "exited": dict(sorted(d.exited.items())),
                    "triggers": {name: dict(sorted(kinds.items())) for name, kinds in sorted(d.triggers.items())},
                }
            )
        reported = [m for m in self._moves if m.occurred_at_ms >= self.report_from_ms]
        flapping = sum(1 for _, undo in pairs if undo.occurred_at_ms >= self.report_from_ms)
        customers = set().union(*(d.customers for d in self._days.values())) if self._days else set()
        triggers: dict[str, Counter[str]] = defaultdict(Counter)
        entered: Counter[str] = Counter()
        exited: Counter[str] = Counter()
        for d in self._days.values():
            entered.update(d.entered)
            exited.update(d.exited)
            for name, kinds in d.triggers.items():
                triggers[name].update(kinds)
        return {
            "days": days,
            "totals": {
                "events": sum(d.events for d in self._days.values()),
                "customers": len(customers),
                "changes": len(reported),
                "changes_per_customer": round(len(reported) / len(customers), 3) if customers else None,
                "flaps": flapping,
                "flap_rate": round(flapping / eligible, 4) if eligible else 0.0,
                "entered": dict(sorted(entered.items())),
                "exited": dict(sorted(exited.items())),
                "triggers": {name: dict(sorted(kinds.items())) for name, kinds in sorted(triggers.items())},
            },
        }


# -- the shell: events in, two replays, a report out ------------------------------------------


def decode_records(records: Iterable[tuple[str, bytes | None]]) -> tuple[list[tuple[str, Event]], Counter[str]]:
    """``(family, value)`` -> events sorted by event time (then customer and event id, so a
    topic's and a file's order give the same replay), and the count of invalid ones by reason."""
    events: list[tuple[str, Event]] = []
    invalid: Counter[str] = Counter()
    for family, value in records:
        try:
            events.append((family, decode(family, value)))
        except InvalidEvent as exc:
            invalid[exc.reason] += 1
    events.sort(key=lambda fe: (fe[1].occurred_at, fe[1].customer_id, fe[1].event_id))  # whatever order the source had
    return events, invalid


def records_from_file(path: str) -> Iterable[tuple[str, bytes | None]]:
    from streams.producer import iter_file

    for family, _key, value in iter_file(path):
        yield family, value


def records_from_topics(
    bootstrap: str, topics: Sequence[tuple[str, str]], progress: Callable[[str], None], **consumer_config: Any
) -> list[tuple[str, bytes | None]]:
    """Every record of each ``(family, topic)`` the brokers still keep."""
    from streams.topic_reader import read_to_end

    out: list[tuple[str, bytes | None]] = []
    for family, topic in topics:
        records = read_to_end(bootstrap, topic, **consumer_config)
        progress(f"read {len(records):,} records from {topic}")
        out += [(family, r.value) for r in records]
    return out


def window(events: list[tuple[str, Event]], days: float, warmup_days: float) -> tuple[list[tuple[str, Event]], int]:
    """The events of the last ``days`` (by event time, before the newest) plus the
    warm-up before them, and the time the reported window starts."""
    if not events:
        return [], 0
    newest = _ms(events[-1][1])
    report_from = newest - round(days * DAY_MS)
    first = report_from - round(warmup_days * DAY_MS)
    return [fe for fe in events if _ms(fe[1]) >= first], report_from


def _ms(event: Event) -> int:
    return int(event.occurred_at.timestamp() * 1000)


_EVENTS: list[tuple[str, Event]] = []  # set before the replays fork, inherited by them


def _replay_one(args: tuple[str, SegmentationConfig, CampaignConfig, int]) -> dict[str, Any]:
    from lab.evaluate import replay_events

    label, config, campaigns, report_from = args
    tally = BacktestTally(campaigns, report_from)
    for _, event in _EVENTS:
        tally.add_event(event.customer_id, _ms(event))
    start = _ms(_EVENTS[0][1]) if _EVENTS else 0
    started = time.perf_counter()
    replay_events(_EVENTS, config, start_ms=start, on_change=tally.add_change, progress=lambda line: print(f"{label}:{line}", flush=True, file=sys.stderr))
    return {**tally.as_dict(), "seconds": round(time.perf_counter() - started, 1)}


def run_backtest(
    events: list[tuple[str, Event]],
    report_from_ms: int,
    live: tuple[SegmentationConfig, CampaignConfig],
    candidate: tuple[SegmentationConfig, CampaignConfig],
) -> dict[str, Any]:
    """Both replays at once (two processes: the machine's cores), their tallies side by side."""
    global _EVENTS
    _EVENTS = events
    jobs = [("live", *live, report_from_ms), ("candidate", *candidate, report_from_ms)]
    started = time.perf_counter()
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            live_view, candidate_view = pool.map(_replay_one, jobs)
    finally:
        _EVENTS = []
    return {
        "events": len(events),
        "window_from": datetime.fromtimestamp(report_from_ms / 1000, UTC).isoformat() if events else None,
        "live": live_view,
        "candidate": candidate_view,
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_backtest(view: dict[str, Any]) -> str:
    live, cand = view["live"], view["candidate"]
    lines = [
        f"backtest of {view.get('candidate_name', 'the candidate')} on {view['events']:,} events (window from {view['window_from']}), live / candidate",
        "",
    ]
    head = f"{'day':<11} {'events':>8} {'customers':>9} {'changes':>15} {'per customer':>15} {'flaps':>11} {'triggers':>13}"
    lines.append(head)
    cand_days = {d["date"]: d for d in cand["days"]}

    def fired(d: dict) -> int:
        return sum(k.get("treatment", 0) for k in d["triggers"].values())

    def pair(a, b, width: int) -> str:
        return f"{'-' if a is None else a} / {'-' if b is None else b}".rjust(width)

    for d in live["days"]:
        c = cand_days.get(d["date"], {"changes": 0, "changes_per_customer": None, "flaps": 0, "triggers": {}})
        lines.append(
            f"{d['date']:<11} {d['events']:>8,} {d['customers']:>9,} {pair(d['changes'], c['changes'], 15)} "
            f"{pair(d['changes_per_customer'], c['changes_per_customer'], 15)} {pair(d['flaps'], c['flaps'], 11)} {pair(fired(d), fired(c), 13)}"
        )
    lt, ct = live["totals"], cand["totals"]
    lines += [
        "",
        f"total: changes {lt['changes']:,} / {ct['changes']:,}; per customer {lt['changes_per_customer']} / {ct['changes_per_customer']}; "
        f"flap rate {lt['flap_rate']:.1%} / {ct['flap_rate']:.1%}",
        "",
        f"{'segment':<28} {'entered':>17} {'exited':>17}",
    ]
    for seg in sorted(set(lt["entered"]) | set(ct["entered"]) | set(lt["exited"]) | set(ct["exited"])):
        lines.append(
            f"{seg:<28} {pair(lt['entered'].get(seg, 0), ct['entered'].get(seg, 0), 17)} {pair(lt['exited'].get(seg, 0), ct['exited'].get(seg, 0), 17)}"
        )
    lines += ["", f"{'campaign':<28} {'fired':>17} {'holdout':>17} {'capped':>17}"]
    for name in sorted(set(lt["triggers"]) | set(ct["triggers"])):
        a, b = lt["triggers"].get(name, {}), ct["triggers"].get(name, {})
        lines.append(
            f"{name:<28} {pair(a.get('treatment', 0), b.get('treatment', 0), 17)} {pair(a.get('holdout', 0), b.get('holdout', 0), 17)} {pair(a.get('capped', 0), b.get('capped', 0), 17)}"
        )
    return "\n".join(lines)
