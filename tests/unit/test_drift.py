"""DriftMonitor: quiet on a stationary population, loud soon after a shift."""

from __future__ import annotations

import random

from segmenter.config import default_config
from segmenter.drift import FIT_SIGNAL, DriftMonitor

CONFIG = default_config()
# Shares of a plausible, stationary population (every segment of the default config).
SHARES = {
    name: {seg: w for seg, w in zip(CONFIG.segments_of(name), (0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02), strict=False)}
    for name in ("lifecycle", "behaviour", "value")
}


def draw(rng: random.Random, shares: dict[str, dict[str, float]]) -> dict[str, str]:
    return {name: rng.choices(list(w), weights=list(w.values()))[0] for name, w in shares.items()}


def test_a_stationary_population_raises_no_drift():
    rng = random.Random(1234)
    monitor = DriftMonitor.from_config(CONFIG)
    events = []
    for i in range(30_000):
        events += monitor.update(i, segments=draw(rng, SHARES), distance=abs(rng.gauss(1.5, 0.6)))
    assert events == []
    assert monitor.n_detected == 0


def test_a_shift_in_segment_shares_is_detected_within_a_few_hundred_evaluations():
    rng = random.Random(99)
    monitor = DriftMonitor.from_config(CONFIG)
    shifted = {**SHARES, "lifecycle": dict(SHARES["lifecycle"])}
    first, second = list(shifted["lifecycle"])[:2]
    shifted["lifecycle"][first], shifted["lifecycle"][second] = 0.25, 0.4  # swap the two biggest segments
    events = []
    for i in range(10_000):
        events += monitor.update(i, segments=draw(rng, SHARES if i < 5_000 else shifted))
    assert events, "no drift detected"
    assert min(e.at_ms for e in events) >= 5_000  # nothing before the shift
    assert min(e.at_ms for e in events) < 5_000 + 1_000
    assert {e.signal for e in events} >= {f"share:lifecycle:{first}", f"share:lifecycle:{second}"}
    assert all(e.signal.startswith("share:lifecycle:") for e in events)


def test_a_worse_cluster_fit_is_detected_and_reset_forgets_it():
    rng = random.Random(5)
    monitor = DriftMonitor({})
    events = []
    for i in range(6_000):
        mean = 1.5 if i < 3_000 else 2.0  # points land further from the centroids
        events += monitor.update(i, distance=abs(rng.gauss(mean, 0.6)))
    assert [e.signal for e in events][:1] == [FIT_SIGNAL]
    assert 3_000 <= events[0].at_ms < 3_600
    monitor.reset("fit:")
    assert FIT_SIGNAL not in monitor.detectors


def test_segments_the_config_does_not_know_are_ignored():
    monitor = DriftMonitor({"lifecycle": ("active", "at_risk")})
    assert monitor.update(1, segments={"lifecycle": "gone", "other": "x"}) == []
    assert monitor.detectors == {}


def test_reseeding_the_behaviour_clusters_is_a_new_model_version():
    from segmenter.assign import Segmenter

    seg = Segmenter.from_config(CONFIG)
    rng = random.Random(3)
    for _ in range(200):
        seg.learn_one({"sessions_30d": rng.uniform(0, 40), "page_views_30d": rng.uniform(0, 300), "purchases_90d": rng.uniform(0, 10)})
    v1, _ = seg.snapshot_model()
    learned = seg.behaviour.n_learned
    v2, blob = seg.reseed_behaviour(seed=7)
    assert (learned, v2, seg.model_version, seg.behaviour.n_learned) == (200, v1 + 1, v1 + 1, 0)
    assert seg.behaviour.kmeans.seed == 7
    assert seg.snapshot_model() is None  # nothing learned since the reseed's snapshot
    other = Segmenter.from_config(CONFIG)
    assert other.restore_model(v2, blob) and other.model_version == v2 and other.behaviour.n_learned == 0
