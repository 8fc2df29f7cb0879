"""The simulated customers' personas: their habits, and the default population mix.

A persona sets how often a customer visits, what they do in a session, how much
they spend, how often they use discounts and how often their logins fail;
:class:`lab.simulate.Simulation` draws each customer's own traits around it.
Re-exported by :mod:`lab.simulate`.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from segmenter.config import default_config
from streams.events import SIGNUP_CHANNELS

__all__ = ["DEFAULT_MIX", "PERSONAS", "Persona", "profile_traits", "segment_persona"]


@dataclass(frozen=True)
class Persona:
    """Habits shared by every customer of one persona (rates are means)."""

    name: str
    sessions_per_day: float
    page_views: float  # per session
    searches: float  # per session
    add_to_carts: float  # per session
    remove_prob: float  # chance to remove an item again, per add_to_cart
    purchase_prob: float  # chance a session ends in an order
    checkout_abandon_prob: float  # chance a non-buying session with a cart still starts checkout
    price_tilt: tuple[float, float]  # beta(a, b) over the price ladder of a category
    extra_items: float  # mean extra units beyond the first line
    discount_prob: float
    discount_range: tuple[float, float]  # fraction of gross
    web_login_prob: float  # app sessions always log in; web ones with this chance
    channels: tuple[tuple[str, float], ...]  # (channel, weight)
    failed_login_prob: float  # chance a logged-in session starts with failed attempts
    peak_hour: float  # UTC hour of the daily activity peak (customers vary around it)


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona(
            "power_user",
            1.6,
            8,
            2,
            2.0,
            0.10,
            0.35,
            0.10,
            (4, 2),
            1.2,
            0.15,
            (0.05, 0.15),
            0.9,
            (("ios", 0.45), ("android", 0.3), ("web", 0.23), ("api", 0.02)),
            0.02,
            20,
        ),
        Persona("steady", 0.3, 6, 1, 1.2, 0.10, 0.40, 0.10, (2, 2), 0.6, 0.12, (0.05, 0.15), 0.6, (("web", 0.6), ("ios", 0.2), ("android", 0.2)), 0.03, 19),
        Persona(
            "explorer", 0.9, 14, 4, 3.0, 0.35, 0.03, 0.30, (2, 2), 0.4, 0.10, (0.05, 0.15), 0.4, (("web", 0.7), ("ios", 0.15), ("android", 0.15)), 0.03, 21
        ),
        Persona(
            "bargain_hunter",
            0.35,
            9,
            3,
            1.5,
            0.20,
            0.30,
            0.15,
            (1.5, 4),
            1.0,
            0.85,
            (0.15, 0.45),
            0.6,
            (("web", 0.5), ("android", 0.35), ("ios", 0.15)),
            0.03,
            13,
        ),
        Persona("dormant", 0.03, 3, 0.5, 0.5, 0.10, 0.20, 0.05, (2, 2), 0.3, 0.10, (0.05, 0.15), 0.5, (("web", 0.8), ("ios", 0.1), ("android", 0.1)), 0.05, 18),
        # Normal, fairly engaged customers... until silenced_at.
        Persona("churner", 0.5, 7, 1.5, 1.3, 0.10, 0.35, 0.10, (2, 2), 0.6, 0.15, (0.05, 0.2), 0.6, (("web", 0.5), ("ios", 0.25), ("android", 0.25)), 0.03, 19),
    )
}

DEFAULT_MIX: dict[str, float] = {
    "power_user": 0.08,
    "steady": 0.32,
    "explorer": 0.18,
    "bargain_hunter": 0.14,
    "dormant": 0.13,
    "churner": 0.15,
}


# -- profile traits and the persona segment they imply ------------------------------------

# Age bands (young < 30, middle, retired >= 65) per persona: explorers skew young, steady
# customers old; ages stay clear of the rules' thresholds, so a year either way changes nothing.
AGE_BANDS: dict[str, tuple[float, float, float]] = {
    "power_user": (0.35, 0.55, 0.10),
    "steady": (0.15, 0.50, 0.35),
    "explorer": (0.55, 0.40, 0.05),
    "bargain_hunter": (0.25, 0.50, 0.25),
    "dormant": (0.20, 0.50, 0.30),
    "churner": (0.25, 0.55, 0.20),
}
AGES = ((18, 27), (32, 60), (67, 85))
COUNTRIES = ("DE", "FR", "GB", "ES", "IT", "NL", "AT")
RURAL = ("Cornwall", "Eifel", "Provence", "Galicia", "Umbria", "Friesland", "Tyrol")
PLANS = (("free", 0.45), ("basic", 0.40), ("premium", 0.10), ("gold", 0.05))
PREMIUM = ("premium", "gold")
# Who keeps visiting (sessions_30d >= 3 at the end) and who buys on two days or more,
# by hidden persona: what the shipped persona rules' behaviour conditions look for.
ACTIVE_VISITORS = frozenset({"power_user", "steady", "explorer", "bargain_hunter"})
REPEAT_BUYERS = frozenset({"power_user", "steady", "bargain_hunter", "churner"})


@functools.lru_cache(maxsize=1)
def urban_regions() -> tuple[str, ...]:
    """The regions the shipped ``young_urban_explorer`` rule calls urban (one list: the config's)."""
    for rule in default_config().persona.rules:
        for cond in rule.when:
            if cond.feature == "region" and isinstance(cond.value, tuple):
                return cond.value
    raise LookupError("the shipped persona rules name no urban regions")


def _pick(rng: random.Random, weighted) -> str:
    x, acc = rng.random() * sum(w for _, w in weighted), 0.0
    for value, w in weighted:
        acc += w
        if x < acc:
            return str(value)
    return str(weighted[-1][0])


def profile_traits(rng: random.Random, persona: str, year: int, share: float) -> list[tuple[float, dict[str, str]]]:
    """A customer's profile updates: ``(when, traits)``, ``when`` a fraction of their time in
    the run (0: when they arrive), traits as their stored strings; none for the customers
    outside ``share``. A quarter change plan or consent later (a partial update).

    >>> profile_traits(random.Random(1), "explorer", 2026, share=0.0)
    []
    >>> [sorted(t) for _, t in profile_traits(random.Random(3), "explorer", 2026, share=1.0)][0]
    ['birth_year', 'country', 'marketing_consent', 'plan', 'region', 'signup_channel']
    """
    if rng.random() >= share:
        return []
    band = AGES[int(_pick(rng, list(enumerate(AGE_BANDS[persona]))))]
    traits = {
        "birth_year": str(year - rng.randint(*band)),
        "country": rng.choice(COUNTRIES),
        "region": rng.choice(urban_regions()) if rng.random() < 0.55 else rng.choice(RURAL),
        "plan": _pick(rng, PLANS),
        "signup_channel": rng.choice(SIGNUP_CHANNELS),
        "marketing_consent": "1" if rng.random() < 0.7 else "0",
    }
    if rng.random() < 0.1:
        del traits["birth_year"]  # not every profile says how old
    updates = [(0.0, traits)]
    if rng.random() < 0.25:
        later = {"plan": _pick(rng, PLANS)} if rng.random() < 0.6 else {"marketing_consent": "1" if traits["marketing_consent"] == "0" else "0"}
        updates.append((rng.uniform(0.2, 0.9), later))
    return updates


def segment_persona(traits: dict[str, str], persona: str, year: int) -> tuple[str, bool]:
    """The persona segment the shipped rules mean for a customer with these final
    ``traits`` and hidden ``persona`` at ``year``, and whether the traits alone decide it
    (no behaviour condition could change it).

    >>> segment_persona({}, "steady", 2026), segment_persona({"plan": "gold"}, "dormant", 2026)
    (('unprofiled', True), ('premium_members', True))
    >>> segment_persona({"birth_year": "1950", "plan": "gold"}, "steady", 2026)
    ('retired_loyal_buyers', False)
    """
    if not any(name in traits for name in ("birth_year", "country", "plan")):
        return "unprofiled", True
    age = year - int(traits["birth_year"]) if "birth_year" in traits else None
    young_urban = age is not None and age < 30 and traits.get("region") in urban_regions()
    retired = age is not None and age >= 65
    if young_urban and persona in ACTIVE_VISITORS:
        return "young_urban_explorers", False
    if retired and persona in REPEAT_BUYERS:
        return "retired_loyal_buyers", False
    return ("premium_members" if traits.get("plan") in PREMIUM else "mainstream"), not (young_urban or retired)
