"""Behaviour clusters: right names for well-separated personas, names that do not flip."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from segmenter.clustering import WARMUP_POINTS, BehaviourModel
from segmenter.config import default_config

CONFIG = default_config().behaviour

# Raw 30/90-day features of four personas, like the simulator's
# (sessions, page views, searches, add-to-carts, purchases, revenue).
PERSONAS = {
    "power_users": (48, 380, 96, 96, 50, 3000),
    "explorers": (27, 378, 108, 81, 2, 100),
    "steady": (9, 54, 9, 11, 11, 500),
    "dormant": (0.5, 2, 0.2, 0.2, 0.3, 10),
}
MIX = {"power_users": 0.15, "explorers": 0.25, "steady": 0.4, "dormant": 0.2}


def sample(rng: random.Random, persona: str) -> dict[str, float]:
    # log-normal noise (x0.75 .. x1.33 typical): customers of a persona differ
    return {f: round(m * math.exp(rng.gauss(0, 0.3)), 2) for f, m in zip(CONFIG.features, PERSONAS[persona], strict=False)}


def stream(seed: int, n: int):
    rng = random.Random(seed)
    names, weights = zip(*MIX.items(), strict=False)
    for _ in range(n):
        persona = rng.choices(names, weights)[0]
        yield persona, sample(rng, persona)


@pytest.fixture(scope="module")
def trained():
    model = BehaviourModel.from_config(CONFIG)
    history = []
    for i, (_, f) in enumerate(stream(1, 6000)):
        model.learn_one(f)
        if i > WARMUP_POINTS and i % 100 == 0:
            history.append((dict(model.cluster_names), {p: model.predict_one(dict(zip(CONFIG.features, m, strict=False))) for p, m in PERSONAS.items()}))
    return model, history


def test_personas_get_their_names(trained):
    model, _ = trained
    confusion = Counter((persona, model.predict_one(f)) for persona, f in stream(2, 2000))
    for persona in PERSONAS:
        total = sum(n for (p, _), n in confusion.items() if p == persona)
        assert confusion[(persona, persona)] / total > 0.95, confusion


def test_names_never_flip_across_updates(trained):
    model, history = trained
    assert model.renames == 0
    assert all(names == history[0][0] for names, _ in history)
    # and after the first few hundred points, each persona's typical customer keeps its segment
    for _, predicted in history[3:]:
        assert predicted == {p: p for p in PERSONAS}


def test_centroids_stay_near_their_prototypes(trained):
    model, _ = trained
    for name, profile in model.centroid_profiles().items():
        nearest = min(model.prototypes, key=lambda p: sum((profile[f] - model.prototypes[p][f]) ** 2 for f in model.features))
        assert nearest == name


def test_scrambled_centres_are_renamed_by_least_total_distance(trained):
    model, _ = trained
    scrambled = BehaviourModel.from_bytes(model.to_bytes())
    centers = scrambled.kmeans.centers
    order = list(centers)
    rotated = {i: centers[order[(k + 1) % len(order)]] for k, i in enumerate(order)}
    scrambled.kmeans.centers = rotated
    assert scrambled.refresh_names() is True
    assert scrambled.renames == 1
    for _persona, f in list(stream(3, 200)):
        assert scrambled.predict_one(f) == model.predict_one(f)


def test_a_slightly_better_naming_does_not_replace_the_current_one(trained):
    model, _ = trained
    m = BehaviourModel.from_bytes(model.to_bytes())
    best = m.best_naming()
    # swap two names: the new naming is worse; make the margin huge so even the best cannot win
    a, b = list(best)[:2]
    m.cluster_names = {**best, a: best[b], b: best[a]}
    m.rename_margin = 0.99
    assert m.refresh_names() is False
    m.rename_margin = 0.0
    assert m.refresh_names() is True and m.cluster_names == best


def test_snapshot_bumps_version_and_round_trips(trained):
    model, _ = trained
    copy = BehaviourModel.from_bytes(model.to_bytes())
    v = copy.version
    blob = copy.snapshot()
    assert copy.version == v + 1
    back = BehaviourModel.from_bytes(blob)
    assert back.version == v + 1
    assert back.centroid_profiles() == copy.centroid_profiles()
    f = sample(random.Random(9), "explorers")
    assert back.distances(f) == copy.distances(f)


def test_from_bytes_refuses_other_objects():
    import pickle

    with pytest.raises(ValueError):
        BehaviourModel.from_bytes(pickle.dumps((1, {"not": "a model"})))


def test_missing_features_count_as_zero_and_names_are_never_numbers():
    model = BehaviourModel.from_config(CONFIG)
    assert model.vectorise({"sessions_30d": None})["sessions_30d"] == 0.0
    assert model.predict_one({}) in CONFIG.prototypes
