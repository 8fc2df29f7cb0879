"""Read-only queries ops run against Redis (sync client): CLI and HTTP share them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from features import keys
from features.catalogue import BY_NAME, compute, top_categories
from features.codec import state_from_hash
from features.keys import Layout
from segmenter.changes import read_history_entry
from segmenter.churn import VISIT_INPUTS, ChurnModel
from segmenter.config import ACTIVE_FEATURE, ENGAGEMENT_FEATURE
from segmenter.engagement import engagement_risk
from streams.segment_store import parse_segments
from streams.settings import Settings


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def now_ms_for(redis, settings: Settings) -> int:
    """The time features are shown at: the event-time watermark or the wall clock."""
    if settings.clock == "event":
        wm = redis.get(keys.WATERMARK)
        if wm is not None:
            return int(wm)
    return int(datetime.now(UTC).timestamp() * 1000)


def customer_view(redis, customer_id: str, settings: Settings, history: int = 10) -> dict | None:
    """Features, current segments and recent changes of one customer, or None if unknown."""
    pipe = redis.pipeline(transaction=False)
    layout = settings.layout
    pipe.hgetall(layout.customer_key(customer_id))
    pipe.hgetall(layout.segments_key(customer_id))
    pipe.lrange(layout.history_key(customer_id), 0, history - 1)
    pipe.zscore(layout.deadlines_key(layout.partition(customer_id)), customer_id)
    pipe.get(keys.CHURN_MODEL)
    raw, seg_hash, hist, deadline, churn_model = pipe.execute()
    state = state_from_hash(raw)
    if not state.known:  # unknown, or erased (only the tombstone is left)
        return None
    now_ms = max(now_ms_for(redis, settings), state.last_seen_ms or 0)
    features = compute(state, now_ms)
    # The workers' last fitted churn model (its CDNOW prior before the first snapshot).
    published = json.loads(churn_model) if churn_model else None
    model = ChurnModel.from_summary(published) if published else ChurnModel()
    visits = ChurnModel.from_summary(published["visits"]) if published and "visits" in published else ChurnModel(inputs=VISIT_INPUTS)
    features.update(model.predict_one(features))
    features[ACTIVE_FEATURE] = visits.alive(features)
    features[ENGAGEMENT_FEATURE] = engagement_risk(features)
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
        "churn_model": {"name": "BG/NBD", "version": model.version, "horizon_days": model.horizon_days, **model.params.as_dict()},
        "next_reevaluation": _iso(int(deadline)) if deadline is not None else None,
        "features": features,
        "top_categories": [{"category": c, "share": round(s, 4)} for c, s in top_categories(state)],
        # Profile traits as last set (value and the event time of the update that set it);
        # a customer with traits and no behaviour yet has no segments.
        "traits": {name: {"value": value, "set_at": _iso(at)} for name, (value, at) in state.traits.items()},
        "first_seen": _iso(state.first_seen_ms),
        "last_seen": _iso(state.last_seen_ms),
        "events_applied": state.events_total,
        "history": [read_history_entry(entry) for entry in hist] if history > 0 else [],
    }


def format_customer(view: dict) -> str:
    lines = [f"customer {view['customer_id']}  (as of {view['as_of']}, {view['events_applied']} events applied)", "", "segments:"]
    for name, s in view["segments"].items():
        lines.append(f"  {name:10} {s['segment']:16} since {s['since']}  reason={s['reason']}  model=v{s['model_version']}")
    if view["churn_propensity"] is not None:
        lines.append(f"  churn propensity at the last evaluation: {view['churn_propensity']:.2f}")
    m = view["churn_model"]
    lines.append(
        f"  churn model: {m['name']} v{m['version']}, horizon {m['horizon_days']:g} d (r {m['r']:.3f}, alpha {m['alpha']:.2f} d, a {m['a']:.3f}, b {m['b']:.3f})"
    )
    if view["next_reevaluation"]:
        lines.append(f"  next time-based re-evaluation: {view['next_reevaluation']}")
    lines += ["", "features:"]
    for name, value in view["features"].items():
        unit = BY_NAME[name].unit
        shown = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append(f"  {name:30} {shown:>12} {unit}")
    if view["top_categories"]:
        lines.append("  top categories: " + ", ".join(f"{c['category']} {c['share']:.0%}" for c in view["top_categories"]))
    if view.get("traits"):
        lines += ["", "traits (profile; value, set at):"]
        for name, t in view["traits"].items():
            lines.append(f"  {name:30} {t['value']:>12} {t['set_at']}")
    if view["history"]:
        lines += ["", "recent segment changes (newest first):"]
        for ch in view["history"]:
            lines.append(f"  {ch['occurred_at']}  {ch['segmentation']:10} {ch.get('from') or '-':>14} -> {ch['to']:14} {ch['reason']}")
    return "\n".join(lines)


def segment_sizes(redis) -> dict[str, dict[str, int]]:
    """segmentation -> segment -> members, from the membership sets (SCAN, never KEYS)."""
    names = sorted(redis.scan_iter(match="seg:{*", count=1000))
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.scard(name)
    sizes: dict[str, dict[str, int]] = {}
    for name, size in zip(names, pipe.execute(), strict=False):
        segmentation, _, segment = name[name.index("}:") + 2 :].partition(":")  # seg:{<partition tag>}:<segmentation>:<segment>
        by_segment = sizes.setdefault(segmentation, {})
        by_segment[segment] = by_segment.get(segment, 0) + size
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


# -- errors, parameters ------------------------------------------------------------


class QueryError(ValueError):
    """A bad query parameter; the message says what is wrong (CLI: exit 2, HTTP: 400)."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, maximum_s: float | None = None) -> float:
    """``"30m"`` -> 1800.0 seconds; units s, m, h, d.

    >>> parse_duration("30m"), parse_duration("1h"), parse_duration("2d"), parse_duration("90s")
    (1800.0, 3600.0, 172800.0, 90.0)
    >>> parse_duration("1 week")
    Traceback (most recent call last):
    ...
    streams.queries.QueryError: bad duration '1 week': a number and a unit s, m, h or d, e.g. 30m, 1h, 2d
    >>> parse_duration("9d", maximum_s=8 * 86400)
    Traceback (most recent call last):
    ...
    streams.queries.QueryError: duration '9d' is longer than the 8d kept
    """
    m = _DURATION.match(text or "")
    if not m:
        raise QueryError(f"bad duration {text!r}: a number and a unit s, m, h or d, e.g. 30m, 1h, 2d")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise QueryError(f"bad duration {text!r}: must be more than zero")
    if maximum_s is not None and seconds > maximum_s:
        raise QueryError(f"duration {text!r} is longer than the {_short(maximum_s)} kept")
    return seconds


def _short(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNIT_SECONDS[unit] and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{seconds:g}s"


def int_param(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi] (``None`` -> default).

    >>> int_param(None, "limit", 100, 1, 10000), int_param("5", "limit", 100, 1, 10000)
    (100, 5)
    >>> int_param("lots", "limit", 100, 1, 10000)
    Traceback (most recent call last):
    ...
    streams.queries.QueryError: limit must be an integer from 1 to 10000, got 'lots'
    """
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or not lo <= n <= hi:
        raise QueryError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")
    return n


# -- segment names: the segmentation config is the one source ------------------------


def segment_catalogue(settings: Settings) -> dict[str, tuple[str, ...]]:
    """segmentation -> its segments, from the config the worker uses."""
    from segmenter.config import SEGMENTATIONS, default_config, load_config

    config = load_config(settings.segments_config) if settings.segments_config else default_config()
    return {name: tuple(config.segments_of(name)) for name in SEGMENTATIONS}


def resolve_segment(catalogue: dict[str, tuple[str, ...]], name: str, segmentation: str | None = None) -> tuple[str, str]:
    """(segmentation, segment) for ``name`` (``segment`` or ``segmentation:segment``).

    >>> cat = {"lifecycle": ("active", "dormant"), "behaviour": ("steady", "dormant")}
    >>> resolve_segment(cat, "steady"), resolve_segment(cat, "lifecycle:dormant"), resolve_segment(cat, "dormant", "behaviour")
    (('behaviour', 'steady'), ('lifecycle', 'dormant'), ('behaviour', 'dormant'))
    >>> resolve_segment(cat, "dormant")
    Traceback (most recent call last):
    ...
    streams.queries.QueryError: segment 'dormant' exists in more than one segmentation (lifecycle, behaviour): name one, e.g. lifecycle:dormant or --segmentation lifecycle
    """
    if ":" in name:
        prefix, name = name.split(":", 1)
        if segmentation is not None and segmentation != prefix:
            raise QueryError(f"segmentation {segmentation!r} contradicts {prefix}:{name}")
        segmentation = prefix
    if segmentation is not None:
        if segmentation not in catalogue:
            raise QueryError(f"unknown segmentation {segmentation!r}; known: {', '.join(catalogue)}")
        if name not in catalogue[segmentation]:
            raise QueryError(f"unknown {segmentation} segment {name!r}; known: {', '.join(catalogue[segmentation])}")
        return segmentation, name
    owners = [s for s, segs in catalogue.items() if name in segs]
    if not owners:
        known = ", ".join(f"{s}:{seg}" for s, segs in catalogue.items() for seg in segs)
        raise QueryError(f"unknown segment {name!r}; known: {known}")
    if len(owners) > 1:
        raise QueryError(
            f"segment {name!r} exists in more than one segmentation ({', '.join(owners)}): name one, e.g. {owners[0]}:{name} or --segmentation {owners[0]}"
        )
    return owners[0], name


def configured_sizes(redis, layout: Layout, catalogue: dict[str, tuple[str, ...]]) -> dict[str, dict[str, int]]:
    """segmentation -> segment -> members for every configured segment (empty ones too),
    summed over the partitions' member sets."""
    pairs = [(s, seg) for s, segs in catalogue.items() for seg in segs]
    pipe = redis.pipeline(transaction=False)
    for s, seg in pairs:
        for key in layout.member_sets(s, seg):
            pipe.scard(key)
    counts = iter(pipe.execute())
    sizes: dict[str, dict[str, int]] = {s: {} for s in catalogue}
    for s, seg in pairs:
        sizes[s][seg] = sum(int(next(counts)) for _ in range(layout.partitions))
    return sizes


# -- members -----------------------------------------------------------------------

MAX_MEMBERS = 10_000


def segment_members(redis, layout: Layout, catalogue: dict[str, tuple[str, ...]], name: str, segmentation: str | None = None, limit: int = 100) -> dict:
    """Up to ``limit`` members of a segment, read with SSCAN (never SMEMBERS) partition by
    partition, and its size."""
    if not 1 <= limit <= MAX_MEMBERS:
        raise QueryError(f"limit must be an integer from 1 to {MAX_MEMBERS}, got {limit}")
    segmentation, segment = resolve_segment(catalogue, name, segmentation)
    found: dict[str, None] = {}  # SSCAN may return a member twice
    size = 0
    for key in layout.member_sets(segmentation, segment):
        size += int(redis.scard(key))
        cursor = 0
        while len(found) < limit:
            cursor, batch = redis.sscan(key, cursor, count=min(max(limit, 100), 1000))
            found.update(dict.fromkeys(batch))
            if cursor == 0:
                break
    members = sorted(found)[:limit]
    return {"segmentation": segmentation, "segment": segment, "size": size, "members": members, "truncated": size > len(members)}


def format_members(view: dict) -> str:
    head = f"{view['segmentation']}:{view['segment']}  {view['size']} members"
    if view["truncated"]:
        head += f" (showing {len(view['members'])}; --limit for more)"
    return "\n".join([head, *view["members"]])


# -- flows -------------------------------------------------------------------------

HOUR_MS = 3_600_000
FLOWS_KEPT_S = 8 * 86_400  # streams.segment_store.FLOWS_TTL_SECONDS


def _wall_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def flows(redis, layout: Layout, since_s: float, now_ms: int | None = None) -> dict:
    """Segment transitions summed over the hourly flows hashes of every partition.

    Hours are wall-clock hours of the change decisions; every hour that overlaps
    the window counts whole (the resolution is one hour).
    """
    now_ms = _wall_ms() if now_ms is None else now_ms
    first_hour, last_hour = int(now_ms - since_s * 1000) // HOUR_MS, now_ms // HOUR_MS
    hours = range(first_hour, last_hour + 1)
    pipe = redis.pipeline(transaction=False)
    for hour in hours:
        for p in range(layout.partitions):
            pipe.hgetall(layout.flows(p, hour))
    totals: dict[str, dict[tuple[str | None, str], int]] = {}
    for fields in pipe.execute():
        for field, count in fields.items():
            segmentation, from_seg, to_seg = field.split("|", 2)
            cell = (from_seg or None, to_seg)
            per = totals.setdefault(segmentation, {})
            per[cell] = per.get(cell, 0) + int(count)
    out = {}
    for segmentation in sorted(totals):
        cells = sorted(totals[segmentation].items(), key=lambda kv: (-kv[1], kv[0][0] or "", kv[0][1]))
        out[segmentation] = [{"from": f, "to": t, "count": n} for (f, t), n in cells]
    return {
        "since": _iso(first_hour * HOUR_MS),
        "until": _iso(now_ms),
        "hours": len(hours),
        "total": sum(c["count"] for cells in out.values() for c in cells),
        "segmentations": out,
    }


def format_flows(view: dict, catalogue: dict[str, tuple[str, ...]] | None = None) -> str:
    """One from x to matrix per segmentation; ``(entered)`` = first assignment."""
    lines = [f"segment changes from {view['since']} to {view['until']} ({view['hours']} hourly buckets, {view['total']} changes)"]
    if not view["segmentations"]:
        lines.append("no segment changes in this window")
    for segmentation, cells in view["segmentations"].items():
        order = list((catalogue or {}).get(segmentation, ()))
        for c in cells:
            for seg in (c["from"], c["to"]):
                if seg is not None and seg not in order:
                    order.append(seg)
        counts = {(c["from"], c["to"]): c["count"] for c in cells}
        rows = [None, *order] if any(c["from"] is None for c in cells) else order
        width = max([len("(entered)"), *map(len, order)]) + 2
        lines += ["", f"{segmentation}: {sum(counts.values())} changes (rows: from, columns: to)"]
        lines.append(" " * width + "".join(f"{seg:>{width}}" for seg in order))
        for src in rows:
            label = "(entered)" if src is None else src
            lines.append(f"{label:<{width}}" + "".join(f"{counts.get((src, dst), 0) or '.':>{width}}" for dst in order))
    return "\n".join(lines)


# -- segment sizes over time ---------------------------------------------------------

SIZES_LOCK = f"{keys.SIZES_HISTORY}:lock"


def changes_total(redis, layout: Layout) -> int:
    """Segment changes ever written: every change enters its partition's outbox stream once."""
    total = 0
    for p in range(layout.partitions):
        try:
            info = redis.xinfo_stream(layout.outbox(p))
        except Exception:  # no change in this partition yet (no such key)
            continue
        total += int(info.get("entries-added", 0))
    return total


def record_sizes(redis, layout: Layout, catalogue: dict[str, tuple[str, ...]], interval_s: float, maxlen: int) -> str | None:
    """Append the current sizes and change count to the capped ``segflow:sizes`` stream.

    Every worker runs this timer; a short lock lets one of them write per interval.
    Returns the entry id, or None when another worker already wrote this interval.
    """
    if not redis.set(SIZES_LOCK, "1", nx=True, px=max(int(interval_s * 900), 1)):
        return None
    sizes = configured_sizes(redis, layout, catalogue)
    fields: dict[str, int] = {"changes": changes_total(redis, layout)}
    wm = redis.get(keys.WATERMARK)
    if wm is not None:
        fields["wm"] = int(wm)
    for segmentation, segs in sizes.items():
        for seg, n in segs.items():
            fields[f"{segmentation}:{seg}"] = n
    return redis.xadd(keys.SIZES_HISTORY, fields, maxlen=maxlen, approximate=True)


def sizes_series(redis, catalogue: dict[str, tuple[str, ...]], since_s: float, now_ms: int | None = None, max_points: int = 20_000) -> dict:
    """The recorded sizes since ``since_s`` ago, column-wise (ready to chart).

    ``t``: entry times (ms); ``segmentations``: segmentation -> segment -> sizes;
    ``changes``: total changes so far; ``change_rate``: changes per second since
    the previous entry (None for the first and across a counter reset).
    """
    now_ms = _wall_ms() if now_ms is None else now_ms
    # The newest max_points entries of the window, oldest first.
    entries = redis.xrevrange(keys.SIZES_HISTORY, max="+", min=str(int(now_ms - since_s * 1000)), count=max_points)[::-1]
    t: list[int] = []
    changes: list[int | None] = []
    wm: list[int | None] = []
    series: dict[str, dict[str, list[int | None]]] = {s: {seg: [] for seg in segs} for s, segs in catalogue.items()}
    for entry_id, fields in entries:
        t.append(int(entry_id.split("-", 1)[0]))
        changes.append(int(fields["changes"]) if "changes" in fields else None)
        wm.append(int(fields["wm"]) if "wm" in fields else None)
        for s, segs in series.items():
            for seg, values in segs.items():
                v = fields.get(f"{s}:{seg}")
                values.append(None if v is None else int(v))
    rate: list[float | None] = [None] * len(t)
    for i in range(1, len(t)):
        a, b, dt = changes[i - 1], changes[i], (t[i] - t[i - 1]) / 1000
        if a is not None and b is not None and b >= a and dt > 0:
            rate[i] = round((b - a) / dt, 3)
    return {
        "since": _iso(int(now_ms - since_s * 1000)),
        "until": _iso(now_ms),
        "t": t,
        "changes": changes,
        "change_rate": rate,
        "watermark": wm,
        "segmentations": series,
    }
