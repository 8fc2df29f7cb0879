"""The simulated customers' personas: their habits, and the default population mix.

A persona sets how often a customer visits, what they do in a session, how much
they spend, how often they use discounts and how often their logins fail;
:class:`lab.simulate.Simulation` draws each customer's own traits around it.
Re-exported by :mod:`lab.simulate`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MIX", "PERSONAS", "Persona"]


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
