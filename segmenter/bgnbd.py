"""BG/NBD: how often a customer buys, and whether they are still around.

The beta-geometric / negative-binomial "buy till you die" model of Fader,
Hardie & Lee (2005), "Counting your customers the easy way", Marketing
Science 24(2). Pure math on numpy/scipy: no I/O, no pandas, no lifetimes
(the tests hold the fit, the likelihood and the predictions to lifetimes
0.11.3 on CDNOW, and the fit to the paper's published parameters).

Per customer, in one time unit chosen by the caller (segflow uses days):

- ``x``: repeat purchases (distinct purchase days minus 1),
- ``t_x``: time from the first to the last purchase (0 when ``x == 0``),
- ``T``: time from the first purchase to now.

The story: while alive, a customer buys as a Poisson process of rate
``lambda ~ Gamma(r, alpha)``; right after each purchase they drop out for
good with probability ``p ~ Beta(a, b)``. ``alpha`` carries the time unit
(:meth:`BGNBDParams.scaled` converts it), ``r``, ``a`` and ``b`` do not.

**P(alive) is 1 whenever x == 0.** Dropout can only happen right after a
purchase, so a customer who never came back after the first purchase is
alive by construction, however long ago that was. Ranking churn by
:func:`p_alive` alone would therefore call every one-time buyer perfectly
healthy. Rank by :func:`p_no_purchase` (the probability of no purchase in the
next ``horizon``, which rises with silence for everyone) or by
:func:`expected_purchases` instead, and keep :func:`p_alive` as an
explanation.

>>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)  # the paper's CDNOW sample, weeks
>>> round(p_alive(params, x=2, t_x=30.43, T=38.86), 4)
0.7266
>>> round(expected_purchases(params, 39.0, x=2, t_x=30.43, T=38.86), 4)
1.226
>>> p_alive(params, x=0, t_x=0.0, T=100.0)
1.0
>>> round(p_no_purchase(params, 52.0, x=0, t_x=0.0, T=100.0), 4)
0.9065
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

FloatArray = npt.NDArray[np.float64]
AnyArray = npt.NDArray[Any]  # inputs: counts may come as ints
PARAM_NAMES = ("r", "alpha", "a", "b")
# Log-parameter bounds for the optimiser (time scaled so the oldest T is 1):
# e^±30 is far beyond any sensible population, and keeps exp() finite.
_LOG_BOUND = 30.0


@dataclass(frozen=True)
class BGNBDParams:
    """Population parameters: ``lambda ~ Gamma(r, alpha)``, ``p ~ Beta(a, b)``.

    >>> weeks = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(weeks.scaled(7.0).alpha, 6)  # weeks -> days
    30.898
    >>> BGNBDParams.from_dict(weeks.as_dict()) == weeks
    True
    >>> BGNBDParams(r=0.0, alpha=1.0, a=1.0, b=1.0)
    Traceback (most recent call last):
    ValueError: BG/NBD parameters must be finite and > 0, got r=0.0
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in PARAM_NAMES:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"BG/NBD parameters must be finite and > 0, got {name}={value!r}")

    def scaled(self, factor: float) -> BGNBDParams:
        """The same model in a time unit ``factor`` times finer (weeks -> days: 7)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"time scale factor must be finite and > 0, got {factor!r}")
        return BGNBDParams(r=self.r, alpha=self.alpha * factor, a=self.a, b=self.b)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in PARAM_NAMES}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> BGNBDParams:
        return cls(**{name: float(data[name]) for name in PARAM_NAMES})


# The full CDNOW log (23,570 customers, first purchases in Q1 1997, observed
# to 1998-06-30), fitted here and by lifetimes' BetaGeoFitter (agreeing within
# 1e-6), in two time units:
# - weekly periods, the field's usual summary: alpha in weeks;
CDNOW_WEEKLY = BGNBDParams(r=0.286763, alpha=7.593488, a=0.468659, b=2.178377)
# - daily periods, x = distinct purchase days - 1 as segflow counts it. Weekly
#   periods merge purchases of one week, so CDNOW_WEEKLY.scaled(7) (alpha
#   53.2 days) is a coarser model, not this one.
CDNOW_DAILY = BGNBDParams(r=0.267128, alpha=41.905442, a=0.483517, b=2.111608)
# Cold-start prior (days; segmenter.churn.ChurnModel): occasional buyers, a purchase every
# ~160 days on average while alive, ~19% dropping out after each purchase.
DEFAULT_PRIOR = CDNOW_DAILY


def _as_float_arrays(*values: npt.ArrayLike) -> list[FloatArray]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def _all_scalar(*values: npt.ArrayLike) -> bool:
    return all(np.ndim(v) == 0 for v in values)


def _check_summaries(x: FloatArray, t_x: FloatArray, T: FloatArray) -> None:
    """Raise ValueError unless (x, t_x, T) are valid customer summaries."""
    if x.ndim != 1 or x.shape != t_x.shape or x.shape != T.shape:
        raise ValueError(f"x, t_x and T must be 1-d arrays of one length, got shapes {x.shape}, {t_x.shape}, {T.shape}")
    if x.size == 0:
        raise ValueError("no customers: x, t_x and T are empty")
    if not (np.isfinite(x).all() and np.isfinite(t_x).all() and np.isfinite(T).all()):
        raise ValueError("x, t_x and T must be finite")
    if (x < 0).any() or (x != np.round(x)).any():
        raise ValueError("x (repeat purchases) must be non-negative integers")
    if (t_x < 0).any() or (t_x > T).any():
        raise ValueError("need 0 <= t_x <= T for every customer")
    if (t_x[x == 0] != 0).any():
        raise ValueError("t_x must be 0 when x == 0 (no repeat purchase)")


def _ll_parts(r: float, alpha: float, a: float, b: float, x: FloatArray, t_x: FloatArray, T: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-customer log-likelihood, and the two exponents of its closed form.

    ``L = B(a, b+x)/B(a, b) * G(r+x)/G(r) * alpha^r * [(alpha+T)^-(r+x)
    + [x>0] a/(b+x-1) * (alpha+t_x)^-(r+x)]`` (the paper's closed form), summed in log
    space with ``logaddexp``; the second term vanishes when ``x == 0``.
    """
    with np.errstate(divide="ignore"):
        log_x_pos = np.log((x > 0).astype(np.float64))  # 0 where x > 0, -inf where x == 0
    head = special.gammaln(r + x) - special.gammaln(r) + r * math.log(alpha)
    head += special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = math.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) - (r + x) * np.log(alpha + t_x) + log_x_pos
    return head + np.logaddexp(a3, a4), a3, a4


def log_likelihood(params: BGNBDParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, *, weights: npt.ArrayLike | None = None) -> float:
    """Total log-likelihood of the customers (the paper's closed form), each weighted by ``weights``.

    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(log_likelihood(params, [0, 2], [0.0, 30.43], [38.86, 38.86]), 4)
    -10.0133
    """
    xa, ta, Ta = _as_float_arrays(x, t_x, T)
    ll, _, _ = _ll_parts(params.r, params.alpha, params.a, params.b, xa, ta, Ta)
    if weights is None:
        return float(ll.sum())
    return float((np.asarray(weights, dtype=np.float64) * ll).sum())


def _neg_ll_and_grad(log_params: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray, weights: FloatArray, penalizer: float) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood (+ L2 penalty) and its gradient in log-parameters."""
    p = np.exp(log_params)
    r, alpha, a, b = (float(v) for v in p)
    ll, a3, a4 = _ll_parts(r, alpha, a, b, x, t_x, T)
    w4 = np.exp(a4 - np.logaddexp(a3, a4))  # share of the dropout term in the likelihood
    w3 = 1.0 - w4
    psi = special.digamma
    d_r = psi(r + x) - psi(r) + math.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(alpha + t_x)
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    d_ab = psi(a + b) - psi(a + b + x)
    d_a = d_ab + w4 / a
    d_b = d_ab + psi(b + x) - psi(b) - w4 / (b + np.maximum(x, 1.0) - 1.0)
    total = weights.sum()
    # Plain multiply-and-sum, not np.dot: BLAS threads cost more than they save on vectors this short.
    grad = np.array([float((weights * d).sum()) for d in (d_r, d_alpha, d_a, d_b)]) * p
    value = -float((weights * ll).sum()) / total + penalizer * float((p**2).sum())
    return value, -grad / total + 2.0 * penalizer * p**2


def _compress(x: FloatArray, t_x: FloatArray, T: FloatArray, weights: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Identical (x, t_x, T) rows merged into one row with their summed weight."""
    rows, inverse = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_inverse=True)
    summed = np.asarray(np.bincount(inverse.ravel(), weights=weights, minlength=len(rows)), dtype=np.float64)
    keep = summed > 0
    return rows[keep, 0], rows[keep, 1], rows[keep, 2], summed[keep]


def fit(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    weights: npt.ArrayLike | None = None,
    initial: BGNBDParams | None = None,
    penalizer: float = 0.0,
) -> BGNBDParams:
    """Maximum-likelihood population parameters (L-BFGS-B on log-parameters).

    ``weights`` counts customers sharing a row (x, t_x, T), so a caller can
    send compressed summaries; identical rows are merged here anyway. Time is
    rescaled internally so the largest ``T`` is 1 (as lifetimes does), which
    is also the unit of ``alpha`` in the optional ``penalizer * sum(params**2)``
    (lifetimes' convention too). Starts from ``initial`` when given, else from
    lifetimes' start (every parameter e^0.1).

    With few customers the dropout Beta can collapse to a point (``a`` and
    ``b`` large, ``a / (a + b)`` the dropout probability): a valid optimum.

    >>> x, t_x, T = [0, 1, 0, 3, 2, 0], [0.0, 5.0, 0.0, 20.0, 9.0, 0.0], [30.0, 30.0, 25.0, 30.0, 12.0, 40.0]
    >>> p = fit(x, t_x, T)
    >>> round(log_likelihood(p, x, t_x, T), 3), round(p.r / p.alpha, 4), round(p.a / (p.a + p.b), 3)
    (-24.949, 0.0584, 0.218)
    >>> fit([], [], [])
    Traceback (most recent call last):
    ValueError: no customers: x, t_x and T are empty
    """
    xa, ta, Ta = _as_float_arrays(x, t_x, T)
    _check_summaries(xa, ta, Ta)
    w = np.ones_like(xa) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != xa.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be one non-negative finite count per customer, not all zero")
    if not (xa[w > 0] > 0).any():
        raise ValueError("no customer made a repeat purchase (every x == 0): the purchase and dropout rates are not identifiable")
    if not (math.isfinite(penalizer) and penalizer >= 0):
        raise ValueError(f"penalizer must be >= 0, got {penalizer!r}")
    if Ta.max() <= 0:
        raise ValueError("every T is 0: no observation time to fit on")
    scale = 1.0 / float(Ta.max())
    xc, tc, Tc, wc = _compress(xa, ta * scale, Ta * scale, w)
    start = np.full(4, 0.1) if initial is None else np.log([initial.r, initial.alpha * scale, initial.a, initial.b])
    result = optimize.minimize(
        _neg_ll_and_grad,
        np.clip(start, -_LOG_BOUND, _LOG_BOUND),
        args=(xc, tc, Tc, wc, penalizer),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 4,
        options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10},
    )
    # Status 2 ("ABNORMAL" line search) means no float step lowers the
    # objective any more: at the optimum, or on the flat ridge of a sample with
    # too few dropouts to tell a and b apart (both large); a small gradient
    # accepts it.
    if not (result.success or (result.status == 2 and float(np.abs(result.jac).max()) < 1e-4)):
        raise RuntimeError(f"BG/NBD fit did not converge: {result.message}")
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BGNBDParams(r=r, alpha=alpha / scale, a=a, b=b)


@overload
def p_alive(params: BGNBDParams, x: float, t_x: float, T: float) -> float: ...
@overload
def p_alive(params: BGNBDParams, x: AnyArray, t_x: npt.ArrayLike, T: npt.ArrayLike) -> FloatArray: ...
def p_alive(params: BGNBDParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> float | FloatArray:
    """P(still alive at T | x, t_x, T): ``1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))``.

    Exactly 1 when ``x == 0`` (see the module docstring). Scalars in, float
    out; arrays broadcast.

    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> p_alive(params, np.array([0, 1, 1]), np.array([0.0, 1.0, 30.0]), 38.86).round(4)
    array([1.    , 0.1876, 0.6971])
    """
    xa, ta, Ta = _as_float_arrays(x, t_x, T)
    out = _p_alive(params, xa, ta, Ta)
    return float(out) if _all_scalar(x, t_x, T) else out


def _p_alive(params: BGNBDParams, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    log_odds_dead = (params.r + x) * np.log((params.alpha + T) / (params.alpha + t_x)) + np.log(params.a / (params.b + np.maximum(x, 1.0) - 1.0))
    return np.asarray(np.where(x > 0, special.expit(-log_odds_dead), 1.0), dtype=np.float64)


def _euler_tail(r: float, a: float, b: float, x: FloatArray, z: FloatArray, log_one_minus_z: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(np.exp((a - 1.0) * log_one_minus_z) * special.hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z), dtype=np.float64)


def _expected_if_alive(params: BGNBDParams, t: FloatArray, x: FloatArray, T: FloatArray) -> FloatArray:
    """E[purchases in (T, T+t] | alive at T, x, T]: paper eq. 10 without its P(alive) factor.

    ``(a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)]``
    with ``z = t/(alpha+T+t)``, as lifetimes computes it. Here the 2F1 goes
    through Euler's transformation, ``2F1(A, B; C; z) = (1-z)^(C-A-B)
    2F1(C-A, C-B; C; z)``, and the bracket becomes ``1 - (1-z)^(a-1)
    2F1(a+b-1-r, a-1; a+b+x-1; z)``: small upper parameters whatever x. On
    3,000 random cases (x up to 300) scipy's hyp2f1 was then within 1e-10 of
    an exact series, where lifetimes' untransformed call overflows to inf·0
    for large x and t (lifetimes then falls back to this very form).

    Two corners: scipy 1.17's hyp2f1 returns NaN when ``C-A-B`` is an integer
    of about 100 or more and z > 0.9 (here ``x + r - a + 1``: integer only
    when ``r - a`` is); ``r`` is then nudged by 1e-9 relative, the function
    being smooth in it. ``a == 1`` is a removable singularity: ``a`` is nudged
    1e-7 away from it. The result is clipped at 0 (round-off at t = 0).
    """
    r, alpha, b = params.r, params.alpha, params.b
    a = params.a if abs(params.a - 1.0) >= 1e-7 else 1.0 + math.copysign(1e-7, params.a - 1.0)
    z = t / (alpha + T + t)
    log_one_minus_z = np.log((alpha + T) / (alpha + T + t))
    tail = _euler_tail(r, a, b, x, z, log_one_minus_z)
    if not np.isfinite(tail).all():
        tail = np.where(np.isfinite(tail), tail, _euler_tail(r * (1.0 + 1e-9), a, b, x, z, log_one_minus_z))
    expected = (a + b + x - 1.0) / (a - 1.0) * (1.0 - tail)
    return np.asarray(np.maximum(expected, 0.0), dtype=np.float64)


@overload
def expected_purchases(params: BGNBDParams, t: float, x: float, t_x: float, T: float) -> float: ...
@overload
def expected_purchases(params: BGNBDParams, t: npt.ArrayLike, x: AnyArray, t_x: npt.ArrayLike, T: npt.ArrayLike) -> FloatArray: ...
def expected_purchases(params: BGNBDParams, t: npt.ArrayLike, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> float | FloatArray:
    """Expected purchases in (T, T+t] given the history (paper eq. 10).

    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> expected_purchases(params, np.array([0.0, 39.0]), np.array([0, 0]), 0.0, 38.86).round(4)
    array([0.    , 0.1951])
    """
    ta_, xa, txa, Ta = _as_float_arrays(t, x, t_x, T)
    out = _p_alive(params, xa, txa, Ta) * _expected_if_alive(params, ta_, xa, Ta)
    return float(out) if _all_scalar(t, x, t_x, T) else out


@overload
def expected_purchases_new(params: BGNBDParams, t: float) -> float: ...
@overload
def expected_purchases_new(params: BGNBDParams, t: AnyArray) -> FloatArray: ...
def expected_purchases_new(params: BGNBDParams, t: npt.ArrayLike) -> float | FloatArray:
    """E[X(t)]: repeat purchases in the first ``t`` after a new customer's first purchase (eq. 9).

    Eq. 9 is eq. 10 at x = t_x = T = 0 (the posterior is then the prior).

    >>> round(expected_purchases_new(BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426), 78.0), 4)
    1.8605
    """
    zero = np.zeros_like(np.asarray(t, dtype=np.float64))
    out = _expected_if_alive(params, np.asarray(t, dtype=np.float64), zero, zero)
    return float(out) if np.ndim(t) == 0 else out


@overload
def p_no_purchase(params: BGNBDParams, t: float, x: float, t_x: float, T: float) -> float: ...
@overload
def p_no_purchase(params: BGNBDParams, t: npt.ArrayLike, x: AnyArray, t_x: npt.ArrayLike, T: npt.ArrayLike) -> FloatArray: ...
def p_no_purchase(params: BGNBDParams, t: npt.ArrayLike, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> float | FloatArray:
    """P(no purchase in (T, T+t] | x, t_x, T) = ``1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+t))^(r+x)``.

    Derivation: a dead customer never buys. Given alive at T, the posterior
    of (lambda, p) factorises and ``lambda ~ Gamma(r+x, alpha+T)`` (the
    history's likelihood is ``lambda^x e^(-lambda T) (1-p)^x``); a dropout can
    only follow a purchase, so "no purchase in the window" is just "no Poisson
    event in t", ``E[e^(-lambda t)] = ((alpha+T)/(alpha+T+t))^(r+x)``.

    Monotone: non-increasing in ``t`` (longer window, more chances to buy)
    and non-decreasing in ``T`` with x and t_x fixed, i.e. with silence. Write
    it ``1 - P(alive) (1 - q)``: P(alive) falls as T grows (x > 0; it stays 1
    for x = 0) and ``q = ((alpha+T)/(alpha+T+t))^(r+x)`` rises, so the product
    of the two positive falling factors P(alive) and (1 - q) falls. Tested
    with hypothesis; there is no region where it turns.

    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> p_no_purchase(params, 52.0, np.array([1, 1]), 1.0, np.array([10.0, 40.0])).round(4)
    array([0.5959, 0.887 ])
    """
    ta_, xa, txa, Ta = _as_float_arrays(t, x, t_x, T)
    alive = _p_alive(params, xa, txa, Ta)
    quiet_if_alive = np.exp((params.r + xa) * np.log((params.alpha + Ta) / (params.alpha + Ta + ta_)))
    out = np.asarray(1.0 - alive * (1.0 - quiet_if_alive), dtype=np.float64)
    return float(out) if _all_scalar(t, x, t_x, T) else out


def silence_until(
    params: BGNBDParams, threshold: float, horizon: float, x: float, t_x: float, T_now: float, max_wait: float, *, tol: float = 1e-6
) -> float | None:
    """Smallest extra silence ``s >= 0`` after which P(no purchase in the next ``horizon``) >= ``threshold``.

    With t_x fixed and ``T = T_now + s``; None if not reached within
    ``max_wait``. :func:`p_no_purchase` is non-decreasing in T, so bisection
    finds it: the returned s satisfies the threshold and ``s - tol`` does not
    (unless s == 0). For a scheduler: "re-check this customer after s".

    >>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> s = silence_until(params, 0.9, 52.0, x=1, t_x=1.0, T_now=10.0, max_wait=100.0)
    >>> round(s, 3), p_no_purchase(params, 52.0, 1, 1.0, 10.0 + s) >= 0.9
    (33.912, True)
    >>> silence_until(params, 0.9, 52.0, x=1, t_x=1.0, T_now=10.0, max_wait=5.0) is None
    True
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability, got {threshold!r}")
    if not (horizon >= 0 and max_wait >= 0 and tol > 0 and 0 <= t_x <= T_now):
        raise ValueError("need horizon >= 0, max_wait >= 0, tol > 0 and 0 <= t_x <= T_now")

    def holds(s: float) -> bool:
        return p_no_purchase(params, float(horizon), float(x), float(t_x), float(T_now) + s) >= threshold

    if holds(0.0):
        return 0.0
    if not holds(max_wait):
        return None
    low, high = 0.0, float(max_wait)  # invariant: fails at low, holds at high
    while high - low > tol:
        mid = 0.5 * (low + high)
        if mid in (low, high):  # no float left between them
            break
        low, high = (low, mid) if holds(mid) else (mid, high)
    return high
