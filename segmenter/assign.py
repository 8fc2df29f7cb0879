"""Segment assignment for one customer: every segmentation, hysteresis, changes.

:class:`Segmenter` is what the shell (:mod:`streams.engine`) calls. It is pure:
it reads no clock (``now_ms`` is given: the customer's event time, or the
timer's clock when a deadline fires) and does no I/O; the shell persists the
:class:`Evaluation` (assignments, changes, next deadline) and the model
snapshots.

>>> from segmenter.config import default_config
>>> seg = Segmenter.from_config(default_config())
>>> day = 86_400_000
>>> f = {"tenure_days": 40.0, "days_since_last_activity": 0.0, "days_since_last_purchase": 0.0,
...      "purchases_total": 4.0, "revenue_total": 120.0, "purchases_90d": 4.0, "sessions_30d": 8.0,
...      "purchase_days_total": 4.0, "purchase_span_days": 30.0, "days_since_first_purchase": 30.0}
>>> ev = seg.evaluate("c1", f, current={}, now_ms=100 * day, cause="event:e1")
>>> {name: a.segment for name, a in ev.assignments.items()}
{'lifecycle': 'active', 'behaviour': 'steady', 'value': 'loyal', 'persona': 'unprofiled'}
>>> [(c.segmentation, c.from_segment, c.to_segment) for c in ev.changes][0]
('lifecycle', None, 'active')
>>> round(ev.churn_propensity, 2)
0.17

A profile arrives (born 1900: 70 at this 1970 evaluation time): the persona rules
see the traits along with the features.

>>> from features.traits import trait_features
>>> traits = trait_features({"birth_year": ("1900", 0), "marketing_consent": ("1", 0)}, now_ms=100 * day)
>>> ev1 = seg.evaluate("c1", f, ev.assignments, now_ms=100 * day, cause="event:p1", traits=traits)
>>> [(c.segmentation, c.from_segment, c.to_segment, c.reason, c.features["marketing_consent"]) for c in ev1.changes]
[('persona', 'unprofiled', 'retired_loyal_buyers', 'retired_loyal_buyer', 1.0)]

A buyer every ten days, 140 days later without any event (with the CDNOW
prior, before any population fit): the timer re-evaluates, and the change's
reason gives the model's numbers.

>>> later = {**f, "days_since_last_activity": 140.0, "days_since_last_purchase": 140.0, "days_since_first_purchase": 170.0, "tenure_days": 180.0}
>>> ev2 = seg.evaluate("c1", later, ev.assignments, now_ms=240 * day, cause="deadline")
>>> [(c.from_segment, c.to_segment, c.reason, c.seq) for c in ev2.changes if c.segmentation == "lifecycle"]
[('active', 'at_risk', 'rhythm_at_risk', 2)]
>>> [c.explanation for c in ev2.changes if c.segmentation == "lifecycle"]
['churn_propensity 0.86 in 90 d, BG/NBD v0: p_alive 0.20, expected 0.09 purchases in 30 d, usual gap 10 d']
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segmenter.changes import SegmentChange
from segmenter.churn import VISIT_INPUTS, ChurnModel
from segmenter.clustering import WARMUP_POINTS, BehaviourModel
from segmenter.config import ACTIVE_FEATURE, CHURN_FEATURE, ENGAGEMENT_FEATURE, SEGMENTATIONS, HysteresisPolicy, SegmentationConfig
from segmenter.engagement import engagement_risk
from segmenter.hysteresis import Assignment, AssignmentLike, decide, margin_ok
from segmenter.rules import Features, LifecycleRules, RuleBook
from segmenter.value import RFMScorer, ValueSegmentation

# The daily counters that together count a customer's events of the day (UTC).
DAILY_EVENT_COUNTS = (
    "sessions_1d",
    "page_views_1d",
    "searches_1d",
    "add_to_carts_1d",
    "checkouts_1d",
    "purchases_1d",
    "logins_1d",
    "failed_logins_1d",
)
SNAPSHOT_FORMAT = 1
NO_BRAKES = HysteresisPolicy()


def first_event_of_day(features: Features) -> bool:
    """True when these features follow the customer's first event of the day.

    The models learn from those only: one look per customer and active day,
    so a customer with 300 events a day does not outvote 300 quiet ones.
    Vectors without daily counters (tests, batch loads) always count.

    >>> first_event_of_day({"sessions_1d": 1.0, "page_views_1d": 0.0})
    True
    >>> first_event_of_day({"sessions_1d": 1.0, "page_views_1d": 7.0})
    False
    """
    return sum(features.get(name) or 0.0 for name in DAILY_EVENT_COUNTS) <= 1


def first_session_of_day(features: Features) -> bool:
    """True while the customer is in their first session of the day (UTC).

    The models learn from these evaluations only. The engine evaluates a
    customer once per *batch*, on the state after the batch's last event:
    replaying a backlog, a whole session lands in one batch, so the first
    evaluation of a day rarely follows exactly one event and a
    :func:`first_event_of_day` gate starves the models (measured with
    ``segflow evaluate``: 4 points learned from 300 customers x 45 days).
    Gating on the first *session* keeps busy customers from outvoting quiet
    ones (later sessions never count) under any batching; live, with small
    batches, each evaluation during that session counts.
    Vectors without daily counters (tests, batch loads) always count.

    >>> first_session_of_day({"sessions_1d": 1.0, "page_views_1d": 7.0})
    True
    >>> first_session_of_day({"sessions_1d": 2.0, "page_views_1d": 1.0})
    False
    """
    return (features.get("sessions_1d") or 0.0) <= 1


@dataclass(frozen=True)
class Evaluation:
    """The outcome of evaluating one customer at ``now_ms``.

    ``assignments`` has every segmentation (unchanged ones keep their
    ``since_ms``); ``changes`` only real moves, after hysteresis;
    ``next_deadline_ms`` is when to re-evaluate without an event (None: no
    pending time-driven change); ``targets`` is what each segmentation would
    pick without hysteresis (for explanations and measurements);
    ``behaviour_distance`` is the point's distance to its nearest centroid
    (None while the model warms up), a drift signal (:mod:`segmenter.drift`).
    """

    assignments: dict[str, Assignment]
    changes: list[SegmentChange]
    churn_propensity: float | None
    next_deadline_ms: int | None
    model_version: int
    targets: dict[str, str] = field(default_factory=dict)
    behaviour_distance: float | None = None


class Segmenter:
    """Lifecycle rules + behaviour clusters + RFM value + persona rules, with hysteresis."""

    def __init__(self, config: SegmentationConfig, behaviour_model: BehaviourModel | None = None, rfm: RFMScorer | None = None):
        self.config = config
        self.churn = ChurnModel(
            horizon_days=config.churn.horizon_days,
            sample_size=config.churn.sample_size,
            min_customers=config.churn.min_customers,
            min_history_days=config.churn.min_history_days,
        )
        # The same model over active days (any event is a visit): P(the customer still comes).
        self.visits = ChurnModel(
            horizon_days=config.churn.horizon_days,
            inputs=VISIT_INPUTS,
            sample_size=config.churn.sample_size,
            min_customers=config.churn.min_customers,
            min_history_days=config.churn.min_history_days,
        )
        self.lifecycle = LifecycleRules(config, self.churn, self.visits)
        self.behaviour = behaviour_model or BehaviourModel.from_config(config.behaviour)
        self.value = ValueSegmentation(config.value, rfm)
        self.persona = RuleBook(config.persona)
        self._learned_at_snapshot = 0
        self.n_learned = 0

    @classmethod
    def from_config(cls, config: SegmentationConfig) -> Segmenter:
        return cls(config)

    @property
    def model_version(self) -> int:
        return self.behaviour.version

    # -- learning -------------------------------------------------------------------
    def learn_one(self, features: Features, customer_id: str | None = None, now_ms: int | None = None) -> bool:
        """Feed one customer's features (after an event) to the learned models.

        The churn model keeps each sampled buyer's latest purchase rhythm (given
        ``customer_id`` and ``now_ms``). The clusters and RFM quantiles learn only
        from evaluations during a customer's first session of each day (see
        :func:`first_session_of_day`); returns whether this one was.
        """
        if customer_id is not None and now_ms is not None:
            learned = [model.learn_one(customer_id, features, now_ms) for model in (self.churn, self.visits)]
            self.n_learned += any(learned)
        if not first_session_of_day(features):
            return False
        self.behaviour.learn_one(features)
        self.value.learn_one(features)
        self.n_learned += 1
        return True

    def forget(self, customer_id: str) -> bool:
        """Drop an erased customer from the models that keep customers by id (the churn
        and visit models' samples: their rhythm); whether they were there. Counted as
        learning, so that the next snapshot is written without them."""
        forgotten = [model.forget(customer_id) for model in (self.churn, self.visits)]
        self.n_learned += any(forgotten)
        return any(forgotten)

    # -- evaluation ------------------------------------------------------------------
    def evaluate(
        self,
        customer_id: str,
        features: Features,
        current: Mapping[str, AssignmentLike],
        now_ms: int,
        cause: str,
        emitted_at_ms: int | None = None,
        traits: Mapping[str, float | str | None] | None = None,
        assignments_only: bool = False,
    ) -> Evaluation:
        """Segments of ``customer_id`` at ``now_ms`` given ``current`` ones.

        ``current``: segmentation -> its assignment (``segment``, ``since_ms``,
        ``reason``), missing when never assigned. ``cause`` identifies what
        triggered the evaluation (``event:<event_id>``, ``deadline:<ms>``) and
        enters the changes' ids. ``emitted_at_ms`` defaults to ``now_ms``.
        ``traits``: what rules see of the customer's profile
        (:func:`features.traits.trait_features`; None: no profile); the persona
        rules test them, and the changes carry the numeric ones (``age``,
        ``marketing_consent``: the campaign router's consent).
        ``assignments_only`` (for a read-only preview) skips what only a
        commit needs: the change events and the next deadline (empty and None).
        """
        traits = traits or {}
        feats = {
            **features,
            **self.churn.predict_one(features),
            ACTIVE_FEATURE: self.visits.alive(features),
            ENGAGEMENT_FEATURE: engagement_risk(features),
            **{name: v for name, v in traits.items() if not isinstance(v, str)},
        }
        churn = feats[CHURN_FEATURE]

        held = current.get("lifecycle")
        life_segment, life_rule = self.lifecycle.assign(feats, held_by=None if held is None else held.reason)
        explanations: dict[str, str] = {}
        if self.lifecycle.uses_churn(life_rule):
            explanations["lifecycle"] = f"churn_propensity {churn:.2f} in {self.churn.horizon_days:g} d, {self.churn.explain(feats)}"
        distances = self.behaviour.distances(feats)
        behaviour_segment = min(distances, key=distances.__getitem__)
        value_segment, value_rule = self.value.assign(feats)
        held_persona = current.get("persona")
        persona_segment, persona_rule = self.persona.assign(feats, held_by=None if held_persona is None else held_persona.reason, traits=traits)
        targets = {
            "lifecycle": (life_segment, life_rule),
            "behaviour": (behaviour_segment, f"nearest_centroid d={distances[behaviour_segment]:.2f}"),
            "value": (value_segment, self.value.reason(feats, value_rule)),
            "persona": (persona_segment, persona_rule),
        }

        assignments: dict[str, Assignment] = {}
        changes: list[SegmentChange] = []
        deadlines = (
            []
            if assignments_only
            else [self.lifecycle.next_deadline_ms(feats, now_ms), self.value.next_deadline_ms(feats, now_ms), self.persona.next_deadline_ms(feats, now_ms)]
        )
        for name in SEGMENTATIONS:
            target, reason = targets[name]
            cur = current.get(name)
            policy: HysteresisPolicy = getattr(self.config.hysteresis, name)
            if cur is not None and cur.segment not in self.config.segments_of(name):
                policy = NO_BRAKES  # a segment the config no longer has: leave it at once
            ok = True
            if name == "behaviour" and cur is not None:
                ok = margin_ok(distances, cur.segment, target, policy.margin)
            decision = decide(cur, target, reason, now_ms, policy, ok)
            assignments[name] = decision.assignment
            deadlines.append(decision.retry_at_ms)
            if decision.moved and not assignments_only:
                changes.append(
                    SegmentChange.create(
                        customer_id=customer_id,
                        segmentation=name,
                        from_segment=None if cur is None else cur.segment,
                        to_segment=target,
                        reason=reason,
                        model_version=self.model_version,
                        occurred_at_ms=now_ms,
                        cause=cause,
                        features=feats,
                        seq=decision.assignment.seq,
                        emitted_at_ms=emitted_at_ms,
                        explanation=explanations.get(name),
                    )
                )
        pending = [] if assignments_only else [d for d in deadlines if d is not None and d > now_ms]
        return Evaluation(
            assignments=assignments,
            changes=changes,
            churn_propensity=churn,
            next_deadline_ms=min(pending) if pending else None,
            model_version=self.model_version,
            targets={name: t[0] for name, t in targets.items()},
            behaviour_distance=distances[behaviour_segment] if self.behaviour.n_learned > WARMUP_POINTS else None,
        )

    # -- snapshots --------------------------------------------------------------------
    def _fingerprint(self) -> str:
        # What a snapshot's learned state depends on; other settings (rules,
        # hysteresis, k-means rates) can change without invalidating it.
        v = self.config.value
        b = self.config.behaviour
        key = repr((b.features, sorted((n, sorted(p.items())) for n, p in b.prototypes.items()), v.recency, v.frequency, v.monetary))
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()

    def models_summary(self) -> dict[str, Any]:
        """The churn model's :meth:`~segmenter.churn.ChurnModel.summary`, the visit model's under ``visits``: JSON for readers."""
        return {**self.churn.summary(), "visits": self.visits.summary()}

    def snapshot_model(self) -> tuple[int, bytes] | None:
        """``(version, blob)`` of the learned models to store, or None when
        nothing was learned since the last snapshot. Bumps the version."""
        if self.n_learned == self._learned_at_snapshot:
            return None
        self.churn.refit()  # the purchase- and visit-rhythm population parameters, on the snapshot's tick
        self.visits.refit()
        behaviour_blob = self.behaviour.snapshot()  # re-checks names, bumps version
        blob = pickle.dumps(
            {
                "format": SNAPSHOT_FORMAT,
                "fingerprint": self._fingerprint(),
                "behaviour": behaviour_blob,
                "rfm": self.value.scorer,
                "churn": self.churn.to_dict(),
                "visits": self.visits.to_dict(),
                "n_learned": self.n_learned,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        self._learned_at_snapshot = self.n_learned
        return self.behaviour.version, blob

    def reseed_behaviour(self, seed: int | None = None) -> tuple[int, bytes]:
        """Re-initialise the behaviour clusters (centres back on the prototypes,
        nothing learned; the RFM value model is kept) and return the snapshot
        to store: a new model version, like :meth:`snapshot_model`.

        An explicit operator decision (``segflow reseed``), never automatic:
        clusters that start over move customers between behaviour segments.
        ``seed`` replaces the config's k-means seed.
        """
        b = self.config.behaviour
        fresh = BehaviourModel.from_config(b if seed is None else b.model_copy(update={"kmeans": b.kmeans.model_copy(update={"seed": seed})}))
        fresh.version = self.behaviour.version
        self.behaviour = fresh
        self._learned_at_snapshot = -1  # a snapshot is due even if nothing was learned
        snap = self.snapshot_model()
        assert snap is not None
        return snap

    def restore_model(self, version: int, blob: bytes) -> bool:
        """Adopt a snapshot from :meth:`snapshot_model`; False (and fresh
        models) when it was learned under a different config (features,
        prototypes). Versions keep increasing either way."""
        data = None
        try:
            data = pickle.loads(blob)
            usable: bool = data.get("format") == SNAPSHOT_FORMAT and data.get("fingerprint") == self._fingerprint()
        except Exception:  # a corrupt or foreign blob: start fresh rather than not start
            usable = False
        if isinstance(data, dict) and data.get("format") == SNAPSHOT_FORMAT and "churn" in data:
            # purchases alone decide the churn model: it survives a change of the behaviour config
            self.churn.restore(data["churn"])
            if "visits" in data:
                self.visits.restore(data["visits"])
        if usable and isinstance(data, dict):
            self.behaviour = BehaviourModel.from_bytes(data["behaviour"])
            self.value = ValueSegmentation(self.config.value, data["rfm"])
            self.n_learned = self._learned_at_snapshot = int(data.get("n_learned", 0))
        self.behaviour.version = max(self.behaviour.version, int(version))
        return usable
