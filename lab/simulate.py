"""A deterministic customer-population simulator: pure code, no I/O.

Every customer gets a hidden *persona* (power_user, steady, explorer,
bargain_hunter, dormant, churner) that sets how often they visit, what they do
in a session, how much they spend, how often they use discounts and how often
their logins fail. Churners behave like regular customers and then go silent at
a hidden time (:attr:`Simulation.silenced_at`): not one event after it, so tests
can score the engine's ``at_risk`` decisions against ground truth.

Events are generated in *event time* over ``days`` from ``start``; how fast
they are published is the producer's business (:mod:`streams.producer`).

>>> from datetime import datetime, timezone
>>> sim = Simulation(customers=12, days=3, seed=7, start=datetime(2026, 1, 5, tzinfo=timezone.utc))
>>> sorted(set(sim.personas.values()))  # every persona is present when customers >= 6
['bargain_hunter', 'churner', 'dormant', 'explorer', 'power_user', 'steady']
>>> events = list(sim.events())
>>> [e.occurred_at for _, e in events] == sorted(e.occurred_at for _, e in events)
True
>>> from streams.events import decode
>>> family, event = events[0]
>>> decode(family, event_to_json(event)) == event
True

Customer ``i``'s behaviour depends only on ``(seed, i, persona, traits)``, and
the same seed always yields the same event ids, timestamps and amounts.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from lab.personas import DEFAULT_MIX, PERSONAS, Persona, profile_traits, segment_persona
from streams.events import ClickstreamEvent, Event, LoginEvent, ProfileEvent, PurchaseEvent, PurchaseItem, event_to_json, family_of_type

__all__ = [
    "CATEGORIES",
    "DEFAULT_MIX",
    "DEFAULT_START",
    "PERSONAS",
    "CustomerProfile",
    "Persona",
    "Simulation",
    "event_to_json",
    "family_of_type",
]

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday

# category -> median unit price in USD; product prices spread ~0.2x..4.5x around it.
CATEGORIES: dict[str, int] = {
    "electronics": 120,
    "home": 45,
    "fashion": 40,
    "sports": 35,
    "garden": 30,
    "toys": 25,
    "beauty": 22,
    "pets": 20,
    "books": 15,
    "grocery": 12,
}
_CATEGORY_NAMES = tuple(CATEGORIES)
_PRODUCTS_PER_CATEGORY = 1000
_SEARCH_TERMS = {
    "electronics": ("headphones", "usb-c charger", "4k monitor", "laptop", "smart watch"),
    "home": ("bed sheets", "coffee maker", "lamp", "storage box", "towels"),
    "fashion": ("sneakers", "winter jacket", "jeans", "dress", "scarf"),
    "sports": ("yoga mat", "running shoes", "dumbbells", "bike helmet", "tent"),
    "garden": ("hose", "seeds", "planter", "pruning shears", "bbq"),
    "toys": ("lego", "puzzle", "board game", "doll", "rc car"),
    "beauty": ("moisturiser", "shampoo", "perfume", "lipstick", "sunscreen"),
    "pets": ("dog food", "cat litter", "leash", "aquarium", "chew toy"),
    "books": ("thriller", "cookbook", "sci-fi", "biography", "kids book"),
    "grocery": ("coffee beans", "olive oil", "tea", "pasta", "chocolate"),
}


@dataclass(frozen=True)
class CustomerProfile:
    """One customer's hidden ground truth."""

    customer_id: str
    persona: str
    weekend_heavy: bool
    failure_prone: bool  # forgets passwords: many failed logins
    categories: dict[str, float]  # preference weights, sum 1
    peak_hour: float
    joined_ms: int  # milliseconds after start of the first possible activity
    silenced_ms: int | None  # churners only: ms after start; no event at or after it
    # Profile traits, as profile updates set them: (ms after start, traits) in time order;
    # empty for a customer without a profile (see Simulation's profile_share).
    profile_updates: tuple[tuple[int, dict[str, str]], ...] = ()


def _final_traits(profile: CustomerProfile) -> dict[str, str]:
    out: dict[str, str] = {}
    for _, traits in profile.profile_updates:
        out.update(traits)
    return out


def _seed_int(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small means used here."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _quotas(mix: dict[str, float], n: int) -> list[str]:
    """Largest-remainder apportionment: exact persona counts; each persona present when n allows."""
    total = sum(mix.values())
    raw = {name: n * w / total for name, w in mix.items() if w > 0}
    counts = {name: int(v) for name, v in raw.items()}
    # Guarantee one of each persona before distributing the remainder by size.
    for name in sorted(raw, key=lambda k: -raw[k]):
        if counts[name] == 0 and sum(counts.values()) < n:
            counts[name] = 1
    by_remainder = sorted(raw, key=lambda k: (-(raw[k] - int(raw[k])), k))
    i = 0
    while sum(counts.values()) < n:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > n:  # only possible after the "one of each" bump
        biggest = max(counts, key=lambda k: counts[k])
        counts[biggest] -= 1
    out: list[str] = []
    for name in mix:
        out.extend([name] * counts.get(name, 0))
    return out


class Simulation:
    """A population of ``customers`` over ``days`` of event time from ``start``.

    Ground truth (hidden from the engine): :attr:`personas`, :attr:`silenced_at`
    (churners), :attr:`joined_at` (customers who arrive during the run),
    :attr:`profiles`. :meth:`events` yields ``(family, event)`` in event-time
    order across the population, holding one pending event per customer.
    """

    def __init__(
        self,
        customers: int = 1000,
        days: float = 30.0,
        seed: int = 0,
        start: datetime | None = None,
        *,
        mix: dict[str, float] | None = None,
        weekend_share: float = 0.2,
        failure_prone_share: float = 0.04,
        new_customer_share: float = 0.1,
        churn_window: tuple[float, float] = (0.3, 0.7),
        id_prefix: str = "c",
        profile_share: float = 0.0,
    ):
        if customers < 0:
            raise ValueError("customers must be >= 0")
        if days <= 0:
            raise ValueError("days must be > 0")
        start = start or DEFAULT_START
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        mix = dict(mix or DEFAULT_MIX)
        unknown = set(mix) - set(PERSONAS)
        if unknown:
            raise ValueError(f"unknown personas in mix: {sorted(unknown)}")
        lo, hi = churn_window
        if not 0 <= lo <= hi <= 1:
            raise ValueError("churn_window must be 0 <= lo <= hi <= 1")

        self.customers = customers
        self.profile_share = profile_share
        self.days = float(days)
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.end = self.start + timedelta(days=self.days)
        self._start_ms = round(self.start.timestamp() * 1000)
        self._span_s = self.days * 86400.0
        self._end_ms = round(self._span_s * 1000)
        self._namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"segflow-sim/{seed}")
        self._tag = hashlib.blake2b(str(seed).encode(), digest_size=3).hexdigest()
        width = max(6, len(str(max(customers - 1, 0))))
        self._ids = [f"{id_prefix}{i:0{width}d}" for i in range(customers)]

        assignment = _quotas(mix, customers)
        random.Random(_seed_int(seed, "personas")).shuffle(assignment)

        self.profiles: dict[str, CustomerProfile] = {}
        for i, cid in enumerate(self._ids):
            persona = assignment[i]
            rng = random.Random(_seed_int(seed, i, "profile"))
            weights = [rng.gammavariate(0.5, 1.0) + 1e-9 for _ in _CATEGORY_NAMES]
            total = sum(weights)
            prefs = {c: w / total for c, w in zip(_CATEGORY_NAMES, weights, strict=False)}
            weekend = rng.random() < weekend_share
            failure_prone = rng.random() < failure_prone_share
            peak = (PERSONAS[persona].peak_hour + rng.gauss(0, 2.5) - (5 if weekend else 0)) % 24
            joined = 0
            if persona not in ("churner", "dormant") and rng.random() < new_customer_share:
                joined = round(rng.uniform(0.05, 0.8) * self._span_s * 1000)
            silenced = round(rng.uniform(lo, hi) * self._span_s * 1000) if persona == "churner" else None
            # Traits from a generator of their own: the behaviour above does not depend on them.
            updates = profile_traits(random.Random(_seed_int(seed, i, "traits")), persona, self.start.year, profile_share)
            last = self._end_ms if silenced is None else silenced
            timed = tuple((min(joined + round(at * (last - joined)), last - 1), traits) for at, traits in updates)
            self.profiles[cid] = CustomerProfile(cid, persona, weekend, failure_prone, prefs, peak, joined, silenced, timed)

        self.personas: dict[str, str] = {cid: p.persona for cid, p in self.profiles.items()}
        self.silenced_at: dict[str, datetime] = {cid: self._dt_ms(p.silenced_ms) for cid, p in self.profiles.items() if p.silenced_ms is not None}
        self.joined_at: dict[str, datetime] = {cid: self._dt_ms(p.joined_ms) for cid, p in self.profiles.items() if p.joined_ms > 0}
        self.weekend_heavy: set[str] = {cid for cid, p in self.profiles.items() if p.weekend_heavy}
        # The persona segment each customer should end in (the shipped persona rules' intent,
        # from the final traits and the hidden persona), and whether the traits alone decide it.
        self.traits: dict[str, dict[str, str]] = {cid: _final_traits(p) for cid, p in self.profiles.items()}
        truth = {cid: segment_persona(self.traits[cid], p.persona, self.end.year) for cid, p in self.profiles.items()}
        self.persona_segments: dict[str, str] = {cid: t[0] for cid, t in truth.items()}
        self.traits_decide: set[str] = {cid for cid, t in truth.items() if t[1]}

    # ------------------------------------------------------------------ public

    @property
    def customer_ids(self) -> list[str]:
        return list(self._ids)

    def events(self) -> Iterator[tuple[str, Event]]:
        """Every event of the population, ordered by (event time, customer, sequence)."""
        streams = [self._customer_stream(i) for i in range(self.customers)]
        for _, _, _, family, event in heapq.merge(*streams):
            yield family, event

    def customer_events(self, customer_id: str) -> Iterator[tuple[str, Event]]:
        """One customer's events in time order (the same ones :meth:`events` yields)."""
        for _, _, _, family, event in self._customer_stream(self._ids.index(customer_id)):
            yield family, event

    def ground_truth(self) -> dict:
        """JSON-ready hidden truth: parameters, persona per customer, churn times, traits."""
        return {
            "seed": self.seed,
            "customers": self.customers,
            "days": self.days,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "personas": self.personas,
            "silenced_at": {cid: t.isoformat() for cid, t in self.silenced_at.items()},
            "joined_at": {cid: t.isoformat() for cid, t in self.joined_at.items()},
            "weekend_heavy": sorted(self.weekend_heavy),
            "failure_prone": sorted(cid for cid, p in self.profiles.items() if p.failure_prone),
            "persona_specs": {name: asdict(p) for name, p in PERSONAS.items()},
            "traits": {cid: t for cid, t in self.traits.items() if t},
            "persona_segments": self.persona_segments,
        }

    def ground_truth_json(self) -> bytes:
        return json.dumps(self.ground_truth(), separators=(",", ":"), sort_keys=True).encode()

    # ------------------------------------------------------------- internals

    def _dt_ms(self, offset_ms: int) -> datetime:
        return self.start + timedelta(milliseconds=offset_ms)

    def _dow_factors(self, weekend_heavy: bool) -> tuple[float, ...]:
        # Monday=0 .. Sunday=6, normalised to mean 1.
        raw = [0.5] * 5 + [2.75] * 2 if weekend_heavy else [1.05] * 5 + [0.875] * 2
        mean = sum(raw) / 7
        return tuple(r / mean for r in raw)

    @staticmethod
    def _hour_factors(peak: float) -> tuple[float, ...]:
        raw = []
        for h in range(24):
            d = min(abs(h + 0.5 - peak), 24 - abs(h + 0.5 - peak))
            raw.append(0.15 + math.exp(-(d * d) / (2 * 3.0**2)))
        mean = sum(raw) / 24
        return tuple(r / mean for r in raw)

    def _customer_stream(self, idx: int) -> Iterator[tuple[int, int, int, str, Event]]:
        """(offset_ms, idx, seq, family, event), strictly increasing in offset_ms."""
        cid = self._ids[idx]
        prof = self.profiles[cid]
        persona = PERSONAS[prof.persona]
        rng = random.Random(_seed_int(self.seed, idx, "events"))
        dow = self._dow_factors(prof.weekend_heavy)
        hour = self._hour_factors(prof.peak_hour)
        base = persona.sessions_per_day / 86400.0  # per second
        lam_max = base * max(dow) * max(hour)
        end_ms = self._end_ms if prof.silenced_ms is None else min(self._end_ms, prof.silenced_ms)  # exclusive
        end_s = end_ms / 1000
        start_epoch_s = self._start_ms / 1000
        cum = [0.0]
        for _, w in persona.channels:
            cum.append(cum[-1] + w)
        cum_cat = []
        acc = 0.0
        for c in _CATEGORY_NAMES:
            acc += prof.categories[c]
            cum_cat.append(acc)

        state = {"seq": 0, "session": 0, "order": 0}
        t = prof.joined_ms / 1000
        last_ms = -1
        updates = list(prof.profile_updates)

        def profiles_until(ms: int) -> Iterator[tuple[int, int, int, str, Event]]:
            nonlocal last_ms
            while updates and updates[0][0] < ms:
                at, traits = updates.pop(0)
                at = max(at, last_ms + 1)
                state["seq"] += 1
                last_ms = at
                event_id = str(uuid.uuid5(self._namespace, f"{cid}/profile/{state['seq']}"))
                yield at, idx, state["seq"], "profile", ProfileEvent(event_id=event_id, customer_id=cid, occurred_at=self._dt_ms(at), **traits)

        while True:
            t += rng.expovariate(lam_max)
            if t >= end_s:
                yield from profiles_until(end_ms)
                return
            epoch = start_epoch_s + t
            day = int(epoch // 86400)
            weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
            h = int((epoch % 86400) // 3600)
            if rng.random() * lam_max > base * dow[weekday] * hour[h]:
                continue
            yield from profiles_until(round(t * 1000))
            t_ms = max(round(t * 1000), last_ms + 1)
            for ms, family, event in self._session(rng, cid, prof, persona, t_ms, cum, cum_cat, state):
                if ms >= end_ms:
                    return  # silenced (churner) or the run is over: nothing after
                state["seq"] += 1
                last_ms = ms
                yield ms, idx, state["seq"], family, event
            t = max(t, last_ms / 1000)

    def _session(self, rng, cid, prof, persona, t_ms, cum_channels, cum_cat, state):
        """One session's events as (offset_ms, family, event), increasing offsets."""
        state["session"] += 1
        session_id = f"s-{self._tag}-{cid}-{state['session']}"
        out: list[tuple[int, str, Event]] = []
        t = t_ms
        counter = [0]

        def eid() -> str:
            counter[0] += 1
            return str(uuid.uuid5(self._namespace, f"{cid}/{state['session']}/{counter[0]}"))

        def click(kind: str, **extra) -> None:
            out.append(
                (t, "clickstream", ClickstreamEvent(event_id=eid(), customer_id=cid, occurred_at=self._dt_ms(t), type=kind, session_id=session_id, **extra))
            )

        def gap(mean_s: float) -> int:
            return 1000 + round(rng.expovariate(1.0 / mean_s) * 1000)

        def pick_category() -> str:
            return _CATEGORY_NAMES[min(_bisect(cum_cat, rng.random() * cum_cat[-1]), len(_CATEGORY_NAMES) - 1)]

        def pick_product(cat: str) -> tuple[str, Decimal]:
            u = rng.betavariate(*persona.price_tilt)
            n = min(int(u * _PRODUCTS_PER_CATEGORY), _PRODUCTS_PER_CATEGORY - 1)
            return f"{cat[:3]}-{n:04d}", _price(cat, n)

        channel = persona.channels[_bisect(cum_channels[1:], rng.random() * cum_channels[-1])][0]
        will_buy = rng.random() < persona.purchase_prob
        logged_in = channel != "web" or will_buy or rng.random() < persona.web_login_prob
        landing_cat = pick_category()
        click("session_start", page=rng.choice(("/", f"/c/{landing_cat}", "/deals", "/account")))

        if logged_in:
            fail_p = 0.35 if prof.failure_prone else persona.failed_login_prob
            failures = 0
            if rng.random() < fail_p:
                failures = 1 + _poisson(rng, 0.8)
            for _ in range(failures):
                t += gap(6)
                out.append((t, "login", LoginEvent(event_id=eid(), customer_id=cid, occurred_at=self._dt_ms(t), success=False, channel=channel)))
            if failures and rng.random() < 0.2:
                # gave up: a glance at the landing page and gone
                t += gap(10)
                click("page_view", page="/login", category=None)
                return out
            t += gap(4)
            out.append((t, "login", LoginEvent(event_id=eid(), customer_id=cid, occurred_at=self._dt_ms(t), success=True, channel=channel)))

        n_pages = _poisson(rng, max(persona.page_views - 1, 0)) + 1
        n_search = _poisson(rng, persona.searches)
        n_cart = _poisson(rng, persona.add_to_carts)
        if will_buy and n_cart == 0:
            n_cart = 1
        actions = ["page_view"] * n_pages + ["search"] * n_search + ["add_to_cart"] * n_cart
        rng.shuffle(actions)
        cart: list[tuple[str, str, Decimal]] = []
        for action in actions:
            t += gap(35)
            if action == "page_view":
                cat = pick_category()
                if rng.random() < 0.6:
                    pid, price = pick_product(cat)
                    click("page_view", page=f"/p/{pid}", product_id=pid, category=cat, price=price)
                else:
                    click("page_view", page=f"/c/{cat}", category=cat)
            elif action == "search":
                cat = pick_category()
                click("search", query=rng.choice(_SEARCH_TERMS[cat]), category=cat)
            else:
                cat = pick_category()
                pid, price = pick_product(cat)
                click("add_to_cart", page=f"/p/{pid}", product_id=pid, category=cat, price=price)
                cart.append((pid, cat, price))
                if rng.random() < persona.remove_prob and (len(cart) > 1 or not will_buy):
                    t += gap(20)
                    pid, cat, price = cart.pop(rng.randrange(len(cart)))
                    click("remove_from_cart", product_id=pid, category=cat, price=price)

        if not cart:
            return out
        if will_buy or rng.random() < persona.checkout_abandon_prob:
            t += gap(30)
            click("checkout_started", page="/checkout")
        if not will_buy:
            return out

        t += gap(60)
        lines: dict[str, list] = {}
        for pid, cat, price in cart:
            if pid in lines:
                lines[pid][2] += 1
            else:
                lines[pid] = [pid, cat, 1, price]
        extra = _poisson(rng, persona.extra_items)
        keys = list(lines)
        for _ in range(extra):
            lines[rng.choice(keys)][2] += 1
        items = [PurchaseItem(product_id=p, category=c, quantity=q, unit_price=u) for p, c, q, u in lines.values()]
        gross_cents = sum(int(u * 100) * q for _, _, q, u in lines.values())
        discount_cents = 0
        if rng.random() < persona.discount_prob:
            discount_cents = round(gross_cents * rng.uniform(*persona.discount_range))
        state["order"] += 1
        out.append(
            (
                t,
                "purchase",
                PurchaseEvent(
                    event_id=eid(),
                    customer_id=cid,
                    occurred_at=self._dt_ms(t),
                    order_id=f"o-{self._tag}-{cid}-{state['order']}",
                    amount=Decimal(gross_cents - discount_cents).scaleb(-2),
                    currency="USD",
                    discount=Decimal(discount_cents).scaleb(-2),
                    items=items,
                ),
            )
        )
        return out


def _bisect(cum: list[float], x: float) -> int:
    lo, hi = 0, len(cum)
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


_PRICE_CACHE: dict[tuple[str, int], Decimal] = {}


def _price(category: str, n: int) -> Decimal:
    """A fixed price ladder per category: product n of 1000 costs base * e^(3*(n/999) - 1.5)."""
    key = (category, n)
    price = _PRICE_CACHE.get(key)
    if price is None:
        cents = max(99, round(CATEGORIES[category] * math.exp(3.0 * n / (_PRODUCTS_PER_CATEGORY - 1) - 1.5) * 100))
        cents = cents - cents % 100 + 99 if cents >= 500 else cents  # x.99 pricing
        price = _PRICE_CACHE[key] = Decimal(cents).scaleb(-2)
    return price
