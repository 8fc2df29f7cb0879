"""``segflow preview``: a candidate segment config against the live customers, read-only.

The shell around :mod:`segmenter.preview`: SCAN the customers' feature hashes
in batches (every primary of a cluster), read each batch's features and stored
segments in one pipeline, evaluate them under the candidate config, tally.
Nothing is written: the candidate :class:`~segmenter.assign.Segmenter` starts
from the live model snapshot (the clusters and RFM quantiles when the
candidate's behaviour and value inputs are unchanged, the churn model always)
and never learns.

The clock is the engine's deadline clock: the wall clock, or the event-time
watermark minus the allowed lateness; a customer whose last event is newer is
evaluated at that event, as the worker did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from features import keys
from features.catalogue import compute
from features.codec import state_from_hash
from features.traits import trait_features
from segmenter.assign import Segmenter
from segmenter.config import SEGMENTATIONS, SegmentationConfig
from segmenter.preview import PreviewTally, candidate_outcome
from streams.segment_store import parse_segments
from streams.settings import Settings


def preview_clock_ms(redis, settings: Settings) -> int:
    """The engine's deadline clock, read without moving it."""
    if settings.clock == "event":
        wm = redis.get(keys.WATERMARK)
        if wm is not None:
            return int(wm) - settings.lateness_ms
    return int(time.time() * 1000)


def live_snapshot(settings: Settings) -> tuple[int, bytes] | None:
    """The workers' current model snapshot ``(version, pickle)``, read with a client
    that does not decode (the CLI's client decodes replies as text)."""
    from streams.redis_clients import sync_client

    raw = sync_client(settings.redis_url.get_secret_value(), cluster=settings.redis_cluster, decode_responses=False, socket_connect_timeout=3)
    try:
        version = raw.get(f"{keys.MODEL}:current")
        blob = None if version is None else raw.get(f"{keys.MODEL}:v{int(version)}")
        return None if version is None or not isinstance(blob, bytes) else (int(version), blob)
    finally:
        raw.close()


def candidate_segmenter(config: SegmentationConfig, snapshot: tuple[int, bytes] | None) -> tuple[Segmenter, str]:
    """A segmenter for ``config`` on the live model ``snapshot``, and a line saying which models it uses."""
    segmenter = Segmenter.from_config(config)
    if snapshot is None:
        return segmenter, "no live model snapshot: behaviour clusters from the prototypes, churn model from its prior"
    version, blob = snapshot
    if segmenter.restore_model(version, blob):
        return segmenter, f"live snapshot v{version}"
    return segmenter, (
        f"live snapshot v{version} for the churn model; behaviour clusters and value quantiles start over "
        "(the candidate changes their inputs or prototypes), as they would on activation"
    )


def scan_customers(redis, batch: int = 1000) -> Iterator[list[tuple[str, dict[str, str], dict[str, str]]]]:
    """Batches of ``(customer_id, features hash, segments hash)``; erased customers
    (tombstones) and customers gone between SCAN and read are left out."""
    keys_iter = redis.scan_iter(match=f"{keys.FEATURES_PREFIX}{{*", count=batch)
    while True:
        chunk = [k for _, k in zip(range(batch), keys_iter, strict=False)]
        if not chunk:
            return
        pipe = redis.pipeline(transaction=False)
        for key in chunk:
            pipe.hgetall(key)
            pipe.hgetall(keys.SEGMENTS_PREFIX + key[len(keys.FEATURES_PREFIX) :])
        replies = pipe.execute()
        yield [(keys.customer_id_of(key), replies[2 * i], replies[2 * i + 1]) for i, key in enumerate(chunk)]


def customer_count(redis, settings: Settings) -> int | None:
    """Customers with state, from the partitions' counters (None when unknown): the progress bar's total."""
    counts = [redis.get(settings.layout.customers(p)) for p in range(settings.layout.partitions)]
    return sum(int(c) for c in counts if c is not None) if any(c is not None for c in counts) else None


def run_preview(
    redis,
    settings: Settings,
    config: SegmentationConfig,
    snapshot: tuple[int, bytes] | None,
    examples: int = 3,
    batch: int = 1000,
    progress: Callable[[int], None] = lambda _: None,
    candidate_name: str = "candidate",
) -> dict[str, Any]:
    """Evaluate every live customer under ``config`` (starting from the model
    ``snapshot``, see :func:`live_snapshot`); the tally as a JSON-ready dict.
    ``progress(n)`` is called after each batch with the customers read in it."""
    segmenter, model_line = candidate_segmenter(config, snapshot)
    clock_ms = preview_clock_ms(redis, settings)
    tally = PreviewTally(SEGMENTATIONS, examples=examples)
    started = time.perf_counter()
    for rows in scan_customers(redis, batch):
        for customer_id, raw, seg_hash in rows:
            state = state_from_hash(raw, dedupe=False)
            if not state.exists:
                continue
            now_ms = max(clock_ms, state.last_seen_ms or 0)
            current = parse_segments(seg_hash)
            outcome = candidate_outcome(segmenter, customer_id, compute(state, now_ms), current, now_ms, trait_features(state.traits, now_ms))
            tally.add(customer_id, {name: a.segment for name, a in current.items()}, outcome)
        progress(len(rows))
    return {
        "candidate": candidate_name,
        "as_of": datetime.fromtimestamp(clock_ms / 1000, UTC).isoformat(),
        "clock": settings.clock,
        "model": model_line,
        **tally.as_dict(),
        "seconds": round(time.perf_counter() - started, 2),
    }
