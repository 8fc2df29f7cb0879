"""Churn propensity from each customer's own purchase rhythm (BG/NBD).

A fixed silence ("no activity for 14 days") is a normal pause for a monthly
buyer and a long one for a daily buyer. :class:`ChurnModel` instead asks the
buy-till-you-die model of the field (BG/NBD, :mod:`segmenter.bgnbd`) what the
customer's own purchase history says:

- ``p_alive``: probability the customer has not dropped out (1 for a buyer
  with no repeat purchase yet: BG/NBD lets customers drop out only right
  after a purchase);
- ``expected_purchases_30d`` / ``_90d``: expected purchase days in the next
  30 / 90 days;
- ``churn_propensity``: probability of **no purchase in the next
  ``horizon_days``** (``churn.horizon_days`` in the segments config), a
  probability that can be checked against what happens (docs/SEGMENTS.md);
  it grows with silence, so the lifecycle deadline for a silent customer is
  found by bisection (:mod:`segmenter.rules`).

Per customer the model reads three features (:data:`INPUTS`): distinct
purchase days (x = days - 1 repeat purchases), the span from the first to the
last purchase (t_x) and the days since the first purchase (T). A customer who
never bought has no propensity (None): lifecycle rules on silence decide for
them (default_segments.yaml).

The population parameters are fitted from a bounded sample of customers
(:class:`CustomerSample`, at most ``sample_size``, chosen by a hash of the
customer id) when the shell asks (:meth:`ChurnModel.refit`, on the snapshot
tick); until ``min_customers`` buyers are in the sample, and their median
age is ``min_history_days``, the ``prior`` parameters hold (fitted on CDNOW in
days). The age gate matters on a new deployment: histories a few days old
show no dropouts yet, and the maximum-likelihood fit on them is extreme (on
the simulator's first two days, a dropout probability of 1 after every
purchase). Each fit bumps ``version``.

>>> model = ChurnModel()
>>> f = {"purchase_days_total": 5.0, "purchase_span_days": 120.0, "days_since_first_purchase": 130.0}
>>> round(model.propensity(f), 3)
0.257
>>> round(model.propensity({**f, "days_since_first_purchase": 300.0}), 3)  # 180 days of silence
0.809
>>> model.propensity({"purchase_days_total": 0.0}) is None
True
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmenter.bgnbd import DEFAULT_PRIOR, BGNBDParams, expected_purchases, fit

DAY_MS = 86_400_000
# (distinct days, first-to-last span, age): the purchase rhythm, and the visit rhythm
# (any event is a visit) that the same model reads for ``p_active``.
PURCHASE_INPUTS = ("purchase_days_total", "purchase_span_days", "days_since_first_purchase")
VISIT_INPUTS = ("active_days_total", "active_span_days", "tenure_days")
INPUTS = frozenset(PURCHASE_INPUTS)
# BG/NBD fitted on the whole CDNOW log in days: a cold start that knows what real
# purchase rhythms look like.
CDNOW_PRIOR = DEFAULT_PRIOR

Features = dict[str, float | None]


def rhythm_of(features: Features, inputs: tuple[str, str, str] = PURCHASE_INPUTS) -> tuple[float, float, float] | None:
    """``(x, t_x, T)`` in days from the features, or None for a customer without a purchase.

    >>> rhythm_of({"purchase_days_total": 3.0, "purchase_span_days": 20.0, "days_since_first_purchase": 50.0})
    (2.0, 20.0, 50.0)
    """
    days_name, span_name, age_name = inputs
    days = features.get(days_name)
    age = features.get(age_name)
    if not days or age is None:
        return None
    span = features.get(span_name) or 0.0
    x = days - 1.0
    return x, (min(span, age) if x > 0 else 0.0), age


def p_alive(params: BGNBDParams, x: float, t_x: float, T: float) -> float:
    """P(alive at T | x, t_x, T): Fader, Hardie & Lee (2005), eq. 13; 1 when x = 0."""
    if x <= 0:
        return 1.0
    log_ratio = (params.r + x) * math.log((params.alpha + T) / (params.alpha + t_x))
    odds = params.a / (params.b + x - 1.0) * math.exp(min(log_ratio, 700.0))
    return 1.0 / (1.0 + odds)


def p_no_purchase(params: BGNBDParams, horizon: float, x: float, t_x: float, T: float) -> float:
    """P(no purchase in (T, T + horizon] | x, t_x, T).

    Dropped out (1 - p_alive), or alive with the purchase rate's posterior
    Gamma(r + x, alpha + T) and no purchase in ``horizon``: while silent there
    is no dropout (it happens only right after a purchase).
    """
    alive = p_alive(params, x, t_x, T)
    stay_silent = math.exp((params.r + x) * math.log((params.alpha + T) / (params.alpha + T + horizon)))
    return 1.0 - alive + alive * stay_silent


def _hash_unit(customer_id: str) -> float:
    """A customer's fixed position in [0, 1): who is sampled does not depend on order."""
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big") / 2**64


@dataclass
class CustomerSample:
    """At most ``capacity`` customers, each kept with its latest ``(x, t_x, first purchase day)``.

    A customer is in the sample when its hash position is below ``rate``; when the
    sample overflows, ``rate`` halves and the customers above it leave. So the
    sample is a uniform random subset of the buyers seen, whatever their order,
    and a customer's entry is refreshed by each of its evaluations.

    >>> s = CustomerSample(capacity=4)
    >>> for i in range(100):
    ...     s.add(f"c{i}", 1.0, 2.0, 10.0)
    >>> len(s.rows) <= 4 and s.rate < 1.0
    True
    """

    capacity: int = 5000
    rate: float = 1.0
    rows: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def add(self, customer_id: str, x: float, t_x: float, first_purchase_day: float) -> None:
        position = _hash_unit(customer_id)
        if position >= self.rate:
            return
        self.rows[customer_id] = (x, t_x, first_purchase_day)
        while len(self.rows) > self.capacity:
            self.rate /= 2
            self.rows = {c: row for c, row in self.rows.items() if _hash_unit(c) < self.rate}


@dataclass
class ChurnModel:
    """The purchase-rhythm model: learn summaries, refit, predict per customer.

    A River-like small API: :meth:`learn_one` (one customer's features),
    :meth:`refit` (population parameters from the sample), :meth:`predict_one`
    (the model features of one customer), :meth:`propensity`.
    """

    horizon_days: float = 90.0
    inputs: tuple[str, str, str] = PURCHASE_INPUTS
    sample_size: int = 5000
    min_customers: int = 200
    min_history_days: float = 30.0
    prior: BGNBDParams = CDNOW_PRIOR
    params: BGNBDParams = CDNOW_PRIOR
    version: int = 0
    sample: CustomerSample = field(default_factory=CustomerSample)
    clock_day: float = 0.0  # the newest evaluation time learned, in days: "now" of a fit
    learned_since_fit: int = 0

    def __post_init__(self) -> None:
        self.sample.capacity = self.sample_size

    def learn_one(self, customer_id: str, features: Features, now_ms: int) -> bool:
        """Remember this buyer's rhythm for the next fit; False for a non-buyer."""
        s = rhythm_of(features, self.inputs)
        if s is None:
            return False
        x, t_x, age = s
        now_day = now_ms / DAY_MS
        self.clock_day = max(self.clock_day, now_day)
        self.sample.add(customer_id, x, t_x, now_day - age)
        self.learned_since_fit += 1
        return True

    def forget(self, customer_id: str) -> bool:
        """Drop an erased customer's rhythm from the sample; whether it was there.

        >>> m = ChurnModel()
        >>> _ = m.learn_one("c1", {"purchase_days_total": 2.0, "purchase_span_days": 1.0, "days_since_first_purchase": 2.0}, 5 * DAY_MS)
        >>> m.forget("c1"), m.forget("c1"), m.sample.rows
        (True, False, {})
        """
        return self.sample.rows.pop(customer_id, None) is not None

    def refit(self) -> bool:
        """Fit the population parameters on the sample, as of the newest time learned.

        Returns whether the parameters changed (and ``version`` was bumped): not
        before ``min_customers`` buyers are in the sample with a median age of
        ``min_history_days``, nor without new data.

        >>> m = ChurnModel(min_customers=10, min_history_days=30)
        >>> for i in range(20):
        ...     _ = m.learn_one(f"c{i}", {"purchase_days_total": 1.0 + i % 3, "purchase_span_days": 1.0, "days_since_first_purchase": 2.0}, 5 * DAY_MS)
        >>> m.refit(), m.version  # 2-day histories: the prior holds
        (False, 0)
        """
        if len(self.sample.rows) < self.min_customers or self.learned_since_fit == 0:
            return False
        rows = np.array(list(self.sample.rows.values()), dtype=float)
        x = rows[:, 0]
        t_x = np.where(x > 0, rows[:, 1], 0.0)
        age = np.maximum(self.clock_day - rows[:, 2], t_x)
        if float(np.median(age)) < self.min_history_days:
            return False
        new = None
        for start in (self.prior, None):  # from the prior (a sane basin), else from the fit's own start
            try:
                new = fit(x, t_x, age, initial=start)
                break
            except (ValueError, FloatingPointError, RuntimeError):
                continue
        if new is None:
            return False  # a degenerate sample (everyone bought once, today): keep what we have
        self.params = new
        self.version += 1
        self.learned_since_fit = 0
        return True

    def propensity(self, features: Features) -> float | None:
        """P(no purchase in the next ``horizon_days``); None without a purchase."""
        s = rhythm_of(features, self.inputs)
        return None if s is None else p_no_purchase(self.params, self.horizon_days, *s)

    def alive(self, features: Features) -> float | None:
        """P(alive): for the visit rhythm, the probability the customer still comes at all."""
        s = rhythm_of(features, self.inputs)
        return None if s is None else p_alive(self.params, *s)

    def predict_one(self, features: Features) -> dict[str, float | None]:
        """The model features (features/catalogue.py, ``MODEL_FEATURES``) of one customer."""
        s = rhythm_of(features, self.inputs)
        if s is None:
            return {"p_alive": None, "expected_purchases_30d": None, "expected_purchases_90d": None, "churn_propensity": None}
        x, t_x, age = s
        return {
            "p_alive": p_alive(self.params, x, t_x, age),
            "expected_purchases_30d": float(expected_purchases(self.params, 30.0, x, t_x, age)),
            "expected_purchases_90d": float(expected_purchases(self.params, 90.0, x, t_x, age)),
            "churn_propensity": p_no_purchase(self.params, self.horizon_days, x, t_x, age),
        }

    def explain(self, features: Features) -> str:
        """The model's numbers behind a decision, for a change's reason.

        >>> ChurnModel().explain({"purchase_days_total": 4.0, "purchase_span_days": 90.0, "days_since_first_purchase": 200.0,
        ...                       "p_alive": 0.41, "expected_purchases_30d": 0.12})
        'BG/NBD v0: p_alive 0.41, expected 0.12 purchases in 30 d, usual gap 30 d'
        """
        days = features.get("purchase_days_total") or 0.0
        span = features.get("purchase_span_days") or 0.0
        gap = f", usual gap {span / (days - 1):.0f} d" if days > 1 else ", one purchase day"
        alive, expected = features.get("p_alive"), features.get("expected_purchases_30d")
        alive_text = "?" if alive is None else f"{alive:.2f}"
        expected_text = "?" if expected is None else f"{expected:.2f}"
        return f"BG/NBD v{self.version}: p_alive {alive_text}, expected {expected_text} purchases in 30 d{gap}"

    def summary(self) -> dict[str, Any]:
        """Parameters, version and horizon, JSON-ready: what readers need to predict.

        >>> ChurnModel.from_summary(ChurnModel(horizon_days=30).summary()).horizon_days
        30.0
        """
        return {"params": self.params.as_dict(), "version": self.version, "horizon_days": self.horizon_days, "inputs": list(self.inputs)}

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> ChurnModel:
        """A model that predicts as the one :meth:`summary` was taken from (no sample)."""
        params = BGNBDParams.from_dict(data["params"])
        inputs = tuple(data.get("inputs", PURCHASE_INPUTS))
        assert len(inputs) == 3
        return cls(horizon_days=float(data["horizon_days"]), inputs=(inputs[0], inputs[1], inputs[2]), params=params, version=int(data["version"]))

    def to_dict(self) -> dict[str, Any]:
        """What a snapshot keeps: parameters, version, the sample and its clock."""
        return {
            "params": self.params.as_dict(),
            "version": self.version,
            "rate": self.sample.rate,
            "rows": self.sample.rows,
            "clock_day": self.clock_day,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Adopt a :meth:`to_dict` snapshot."""
        self.params = BGNBDParams.from_dict(data["params"])
        self.version = int(data["version"])
        self.sample = CustomerSample(capacity=self.sample_size, rate=float(data["rate"]), rows=dict(data["rows"]))
        self.clock_day = float(data["clock_day"])
        self.learned_since_fit = 0
