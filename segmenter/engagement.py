"""Engagement risk: a transparent 0..1 score of fading activity, anyone can recompute it by hand.

Where :mod:`segmenter.churn` reads purchases only, this reads every kind of
activity (visits, logins): a customer who stops coming at all is seen before
their purchase rhythm can tell.

Four signals, each turned into a risk in [0, 1]:

- ``silence``: days since the customer's last event of any kind, relative to
  their *own* usual gap between active days (:func:`usual_gap_days`). Silent
  for up to one usual gap: no risk; four gaps or more: full risk.
- ``fading``: ``1 - engagement_trend`` (activity of the last 7 days per day
  over that of the 30 days before), clipped to [0, 1]; unknown trend: no risk.
- ``login_silence``: no successful login for 14 days -> 0 rising to 1 at 60
  days; never logged in: no signal.
- ``failed_logins``: failed logins in the last 7 days, 5 or more -> 1.

They combine as a noisy-OR, ``1 - prod(1 - weight * risk)``: each signal alone
can explain part of the risk, and more evidence never lowers the score,
so more silence never lowers it either (tested with hypothesis).

>>> engagement_risk({"days_since_last_activity": 1.0, "engagement_trend": 1.2})
0.0
>>> round(engagement_risk({"days_since_last_activity": 20.0, "purchase_interval_mean_days": 5.0,
...                         "engagement_trend": 0.0, "days_since_last_login": 20.0}), 3)
0.929
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_USUAL_GAP_DAYS = 7.0
# Habits faster than every 3 days still tolerate a long weekend of silence;
# slower than 90 days are bounded so the score still reacts within a year.
MIN_USUAL_GAP_DAYS = 3.0
MAX_USUAL_GAP_DAYS = 90.0


@dataclass(frozen=True)
class EngagementWeights:
    """How much each signal can explain on its own (0..1)."""

    silence: float = 0.85
    fading: float = 0.5
    login_silence: float = 0.4
    failed_logins: float = 0.3


WEIGHTS = EngagementWeights()


# Every feature engagement_signals reads (a test checks it reads no other): the
# deadline search projects only these forward in time.
ENGAGEMENT_INPUTS = frozenset(
    {
        "days_since_last_activity",
        "active_days_90d",
        "tenure_days",
        "purchase_interval_mean_days",
        "engagement_trend",
        "days_since_last_login",
        "failed_logins_7d",
    }
)


def _clip01(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


def usual_gap_days(features: dict[str, float | None]) -> float:
    """The customer's own usual gap between active days: the days observed (up to
    90) over the days with any activity in them; a purchase-free visitor who comes
    once a fortnight has a 14-day gap. Without activity data, the mean gap between
    purchases, else :data:`DEFAULT_USUAL_GAP_DAYS`.

    >>> usual_gap_days({"active_days_90d": 6.0, "tenure_days": 200.0})
    15.0
    """
    active, tenure = features.get("active_days_90d"), features.get("tenure_days")
    if active and tenure is not None:
        gap = min(90.0, max(tenure, 1.0)) / active
    else:
        gap = features.get("purchase_interval_mean_days") or DEFAULT_USUAL_GAP_DAYS
    return min(MAX_USUAL_GAP_DAYS, max(MIN_USUAL_GAP_DAYS, gap))


def engagement_signals(features: dict[str, float | None]) -> dict[str, float]:
    """Each signal's risk in [0, 1], before weighting (for explanations).

    >>> engagement_signals({"days_since_last_activity": 21.0, "failed_logins_7d": 1.0})
    {'silence': 0.6666..., 'fading': 0.0, 'login_silence': 0.0, 'failed_logins': 0.2}
    """
    silent = features.get("days_since_last_activity")
    silence = 0.0 if silent is None else _clip01((silent / usual_gap_days(features) - 1.0) / 3.0)
    trend = features.get("engagement_trend")
    fading = 0.0 if trend is None else _clip01(1.0 - trend)
    since_login = features.get("days_since_last_login")
    login_silence = 0.0 if since_login is None else _clip01((since_login - 14.0) / 46.0)
    failed = features.get("failed_logins_7d") or 0.0
    return {"silence": silence, "fading": fading, "login_silence": login_silence, "failed_logins": _clip01(failed / 5.0)}


def engagement_risk(features: dict[str, float | None], weights: EngagementWeights = WEIGHTS) -> float:
    """The engagement risk in [0, 1] of one feature vector (see the module docs)."""
    keep = 1.0
    for name, risk in engagement_signals(features).items():
        keep *= 1.0 - getattr(weights, name) * risk
    return _clip01(1.0 - keep)
