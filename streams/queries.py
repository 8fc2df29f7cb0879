"""Read-only queries ops run against Redis (sync client): CLI and HTTP share them."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from features import keys
from features.catalogue import BY_NAME, compute, top_categories
from features.codec import state_from_hash
from streams.segment_store import parse_segments
from streams.settings import Settings


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def now_ms_for(redis, settings: Settings) -> int:
    """The time features are shown at: the event-time watermark or the wall clock."""
    if settings.clock == "event":
        wm = redis.get(keys.WATERMARK)
        if wm is not None:
            return int(wm)
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def customer_view(redis, customer_id: str, settings: Settings, history: int = 10) -> dict | None:
    """Features, current segments and recent changes of one customer, or None if unknown."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.customer_key(customer_id))
    pipe.hgetall(keys.segments_key(customer_id))
    pipe.xrevrange(keys.history_key(customer_id), count=history)
    pipe.zscore(keys.DEADLINES, customer_id)
    raw, seg_hash, hist, deadline = pipe.execute()
    if not raw:
        return None
    state = state_from_hash(raw)
    now_ms = max(now_ms_for(redis, settings), state.last_seen_ms or 0)
    segments = {
        name: {"segment": a.segment, "since": _iso(a.since_ms), "reason": a.reason, "model_version": a.model_version}
        for name, a in parse_segments(seg_hash).items()
    }
    churn = seg_hash.get("_churn")
    return {
        "customer_id": customer_id,
        "as_of": _iso(now_ms),
        "segments": segments,
        "churn_propensity": None if churn is None else float(churn),
        "next_reevaluation": _iso(int(deadline)) if deadline is not None else None,
        "features": compute(state, now_ms),
        "top_categories": [{"category": c, "share": round(s, 4)} for c, s in top_categories(state)],
        "first_seen": _iso(state.first_seen_ms),
        "last_seen": _iso(state.last_seen_ms),
        "events_applied": state.events_total,
        "history": [json.loads(fields["change"]) for _, fields in hist],
    }


def format_customer(view: dict) -> str:
    lines = [f"customer {view['customer_id']}  (as of {view['as_of']}, {view['events_applied']} events applied)", "", "segments:"]
    for name, s in view["segments"].items():
        lines.append(f"  {name:10} {s['segment']:16} since {s['since']}  reason={s['reason']}  model=v{s['model_version']}")
    if view["churn_propensity"] is not None:
        lines.append(f"  churn propensity: {view['churn_propensity']:.2f}")
    if view["next_reevaluation"]:
        lines.append(f"  next time-based re-evaluation: {view['next_reevaluation']}")
    lines += ["", "features:"]
    for name, value in view["features"].items():
        unit = BY_NAME[name].unit
        shown = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append(f"  {name:30} {shown:>12} {unit}")
    if view["top_categories"]:
        lines.append("  top categories: " + ", ".join(f"{c['category']} {c['share']:.0%}" for c in view["top_categories"]))
    if view["history"]:
        lines += ["", "recent segment changes (newest first):"]
        for ch in view["history"]:
            lines.append(f"  {ch['occurred_at']}  {ch['segmentation']:10} {ch.get('from') or '-':>14} -> {ch['to']:14} {ch['reason']}")
    return "\n".join(lines)


def segment_sizes(redis) -> dict[str, dict[str, int]]:
    """segmentation -> segment -> members, from the membership sets (SCAN, never KEYS)."""
    names = sorted(redis.scan_iter(match="seg:*", count=1000))
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.scard(name)
    sizes: dict[str, dict[str, int]] = {}
    for name, size in zip(names, pipe.execute()):
        _, segmentation, segment = name.split(":", 2)
        sizes.setdefault(segmentation, {})[segment] = size
    return sizes


def format_sizes(sizes: dict[str, dict[str, int]]) -> str:
    if not sizes:
        return "no segments yet (is a worker running and are events flowing?)"
    lines = []
    for segmentation, segs in sizes.items():
        total = sum(segs.values()) or 1
        lines.append(f"{segmentation}:")
        for seg, n in sorted(segs.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {seg:18} {n:8d}  {n / total:6.1%}")
    return "\n".join(lines)
