"""Behaviour segments: River online k-means behind stable, human names.

Features are turned into a point by ``log1p`` for counts, money and scores
(heavy-tailed: one big spender must not stretch the whole axis), None -> 0,
then standardised by River's streaming ``StandardScaler``; k-means runs on the
z-scores.

Clusters are never shown as numbers. The config gives one *prototype* per
cluster, a profile of z-scores ("many sessions, few purchases"), and each
cluster is named after a prototype by the assignment with the least total
centroid-to-prototype distance (k is small: every permutation is tried).
Centres start *on* the prototypes, so the names are right from the first
point; afterwards the naming is re-checked every ``rename_every`` points and
replaced only when the new one is clearly better (``rename_margin``), so a
segment's name does not flip while its centroid wanders.

>>> from segmenter.config import default_config
>>> model = BehaviourModel.from_config(default_config().behaviour)
>>> busy = {"sessions_30d": 60.0, "page_views_30d": 500.0, "searches_30d": 90.0,
...         "add_to_carts_30d": 90.0, "purchases_90d": 50.0, "revenue_90d": 4000.0}
>>> quiet = {"sessions_30d": 1.0, "page_views_30d": 2.0, "purchases_90d": 0.0}
>>> for _ in range(60):
...     model.learn_one(busy); model.learn_one(quiet)
>>> model.predict_one(busy), model.predict_one(quiet)
('power_users', 'dormant')
>>> restored = BehaviourModel.from_bytes(model.snapshot())
>>> restored.version, restored.predict_one(quiet)
(1, 'dormant')
"""

from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Iterable, Mapping

from river import cluster, preprocessing

from features.catalogue import BY_NAME
from segmenter.config import BehaviourConfig

Features = dict[str, float | None]
LOG_UNITS = ("count", "currency", "score")
# Points the scaler sees before k-means learns: z-scores of the first few
# points are noise and would drag the centres off their prototypes.
WARMUP_POINTS = 50
SNAPSHOT_FORMAT = 1


class BehaviourModel:
    """Online k-means with named clusters; ``learn_one`` / ``predict_one`` like River."""

    def __init__(
        self,
        features: tuple[str, ...],
        prototypes: dict[str, dict[str, float]],
        *,
        halflife: float = 0.02,
        sigma: float = 0.5,
        seed: int = 42,
        rename_every: int = 500,
        rename_margin: float = 0.2,
    ):
        self.features = tuple(features)
        self.names = tuple(prototypes)
        self.prototypes = {name: {f: float(prototypes[name].get(f, 0.0)) for f in self.features} for name in self.names}
        self._log = {f: BY_NAME[f].unit in LOG_UNITS if f in BY_NAME else False for f in self.features}
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = cluster.KMeans(n_clusters=len(self.names), halflife=halflife, sigma=sigma, seed=seed)
        for i, name in enumerate(self.names):
            self.kmeans.centers[i].update(self.prototypes[name])
        self.cluster_names: dict[int, str] = dict(enumerate(self.names))
        self.rename_every = rename_every
        self.rename_margin = rename_margin
        self.n_learned = 0
        self.version = 0
        self.renames = 0  # how often the naming changed (should stay ~0)

    @classmethod
    def from_config(cls, config: BehaviourConfig) -> BehaviourModel:
        k = config.kmeans
        return cls(
            config.features,
            config.prototypes,
            halflife=k.halflife,
            sigma=k.sigma,
            seed=k.seed,
            rename_every=config.rename_every,
            rename_margin=config.rename_margin,
        )

    # -- points ------------------------------------------------------------------
    def vectorise(self, features: Features) -> dict[str, float]:
        """The raw point: clustering features, None -> 0, log1p where heavy-tailed."""
        out = {}
        for f in self.features:
            v = features.get(f)
            v = 0.0 if v is None else float(v)
            out[f] = math.log1p(max(0.0, v)) if self._log[f] else v
        return out

    def scaled(self, features: Features) -> dict[str, float]:
        """The point in z-scores, the space of centroids and prototypes."""
        z: dict[str, float] = self.scaler.transform_one(self.vectorise(features))  # type: ignore[no-untyped-call]  # river: unannotated
        return z

    # -- River API ----------------------------------------------------------------
    def learn_one(self, features: Features) -> None:
        x = self.vectorise(features)
        self.scaler.learn_one(x)  # type: ignore[no-untyped-call]  # river: unannotated
        self.n_learned += 1
        if self.n_learned <= WARMUP_POINTS:
            return
        self.kmeans.learn_one(self.scaler.transform_one(x))  # type: ignore[no-untyped-call]  # river: unannotated
        if self.n_learned % self.rename_every == 0:
            self.refresh_names()

    def distances(self, features: Features) -> dict[str, float]:
        """Euclidean distance (z-space) from the point to each named centroid."""
        z = self.scaled(features)
        return {self.cluster_names[i]: _distance(z, c, self.features) for i, c in self.kmeans.centers.items()}

    def predict_one(self, features: Features) -> str:
        """The name of the nearest cluster."""
        d = self.distances(features)
        return min(d, key=d.__getitem__)

    def centroid_profiles(self) -> dict[str, dict[str, float]]:
        """Each named centroid in z-scores, to compare with its prototype."""
        return {self.cluster_names[i]: {f: c[f] for f in self.features} for i, c in self.kmeans.centers.items()}

    # -- naming ---------------------------------------------------------------------
    def _naming_cost(self, naming: dict[int, str]) -> float:
        centers = self.kmeans.centers
        return sum(_distance(centers[i], self.prototypes[name], self.features) for i, name in naming.items())

    def best_naming(self) -> dict[int, str]:
        """Cluster -> name with the least total centroid-to-prototype distance."""
        clusters = list(self.kmeans.centers)
        candidates = (dict(zip(clusters, perm, strict=False)) for perm in itertools.permutations(self.names))
        return min(candidates, key=self._naming_cost)

    def refresh_names(self) -> bool:
        """Adopt the best naming only if clearly better than the current one."""
        best = self.best_naming()
        if best == self.cluster_names:
            return False
        if self._naming_cost(best) < (1.0 - self.rename_margin) * self._naming_cost(self.cluster_names):
            self.cluster_names = best
            self.renames += 1
            return True
        return False

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Re-check the names, bump :attr:`version`, return :meth:`to_bytes`."""
        self.refresh_names()
        self.version += 1
        return self.to_bytes()

    def to_bytes(self) -> bytes:
        # pickle: the snapshot only ever comes back from segflow's own Redis.
        return pickle.dumps((SNAPSHOT_FORMAT, self), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, blob: bytes) -> BehaviourModel:
        fmt, model = pickle.loads(blob)
        if fmt != SNAPSHOT_FORMAT or not isinstance(model, cls):
            raise ValueError(f"not a behaviour model snapshot (format {fmt!r})")
        return model

    def same_setup(self, other: BehaviourModel) -> bool:
        """Same features and prototypes: a snapshot of ``other`` can replace this model."""
        return self.features == other.features and self.prototypes == other.prototypes


def _distance(a: Mapping[str, float], b: Mapping[str, float], keys: Iterable[str]) -> float:
    return math.sqrt(sum((a[k] - b[k]) ** 2 for k in keys))
