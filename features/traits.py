"""Profile traits: how they are stored, merged and turned into rule inputs (pure).

A customer's traits live in one field of their features hash, ``t`` (so the
2 KiB budget counts them, and an erasure, which deletes the hash, takes them
with it): per trait a one-character code, the value, and the event time the
value was set at, ``<code><value>\\x1f<ms in base 36>``, joined by ``\\x1e``,
in :data:`TRAITS` order; a time equal to the previous trait's is left out (the
traits of one update share it), so a full profile takes about 45 bytes.

Each trait is a last-writer-wins register in event time: an update sets a trait
only if it is newer than the time the trait was last set at (on a tie, the larger
value wins, so that the outcome does not depend on arrival order). Merging is
therefore commutative, associative and idempotent: profile updates can arrive in
any order, late or twice, and the traits end up the same
(``tests/unit/test_traits.py`` checks it with hypothesis; ``segflow.lua`` does
the same server-side).

>>> t = merge({}, {"country": "DE", "plan": "pro"}, 2_000)
>>> t = merge(t, {"country": "FR"}, 1_000)  # older: does not win
>>> t = merge(t, {"plan": "free"}, 3_000)
>>> t
{'country': ('DE', 2000), 'plan': ('free', 3000)}
>>> unpack(pack(t)) == t
True
>>> trait_features(t, now_ms=0)["country"], trait_features(t, now_ms=0)["marketing_consent"]
('DE', None)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from streams.events import TRAIT_NAMES

FIELD = "t"  # the field of the features hash that holds the traits
TRAIT_SEP, VALUE_SEP = "\x1e", "\x1f"
Traits = dict[str, tuple[str, int]]  # trait name -> (value as stored, event time ms it was set at)


@dataclass(frozen=True)
class Trait:
    """One trait of a profile: its stored code and what rules see of it."""

    name: str
    code: str
    kind: str  # number or text: the rule inputs it gives (see TRAIT_FEATURES)
    description: str


TRAITS: tuple[Trait, ...] = (
    Trait("birth_year", "b", "number", "Year of birth (rules see `age`)."),
    Trait("country", "c", "text", "ISO 3166-1 alpha-2 country code."),
    Trait("region", "r", "text", "Region, state or city."),
    Trait("plan", "p", "text", "Plan or tier."),
    Trait("signup_channel", "s", "text", "How the customer signed up."),
    Trait("marketing_consent", "m", "number", "1 if the customer agreed to marketing, 0 if not; null when never said."),
)
assert tuple(t.name for t in TRAITS) == TRAIT_NAMES  # one list: the event contract's
CODE = {t.name: t.code for t in TRAITS}
NAME = {t.code: t.name for t in TRAITS}

# What persona rules (and campaign conditions) can test, derived from the traits at the
# evaluation time: numbers, and texts tested with ==, !=, in, not_in.
NUMERIC_TRAIT_FEATURES: dict[str, str] = {
    "age": "Whole years since the birth year, at the evaluation time (UTC); null without a birth year.",
    "marketing_consent": "1 if the customer agreed to marketing, 0 if they declined; null when no profile said.",
}
TEXT_TRAIT_FEATURES: dict[str, str] = {
    "country": "ISO 3166-1 alpha-2 country code; null when unknown.",
    "region": "Region, state or city; null when unknown.",
    "plan": "Plan or tier; null when unknown.",
    "signup_channel": "How the customer signed up; null when unknown.",
}
TRAIT_FEATURES: tuple[str, ...] = (*NUMERIC_TRAIT_FEATURES, *TEXT_TRAIT_FEATURES)


def wins(new: tuple[str, int], old: tuple[str, int] | None) -> bool:
    """Whether ``new`` (value, ms) replaces ``old``: newer, or as new with a larger value
    (compared as UTF-8 bytes, as the Lua function does).

    >>> wins(("a", 2), ("b", 1)), wins(("a", 1), ("b", 2)), wins(("b", 1), ("a", 1)), wins(("a", 1), ("a", 1))
    (True, False, True, False)
    """
    if old is None or new[1] > old[1]:
        return True
    return new[1] == old[1] and new[0].encode() > old[0].encode()


def merge(traits: Mapping[str, tuple[str, int]], update: Mapping[str, str], ts_ms: int) -> Traits:
    """``traits`` after a profile update setting ``update`` (name -> value) at ``ts_ms``."""
    out = dict(traits)
    for name, value in update.items():
        if wins((value, ts_ms), out.get(name)):
            out[name] = (value, ts_ms)
    return {name: out[name] for name in TRAIT_NAMES if name in out}


def base36(n: int) -> str:
    """``n`` >= 0 in base 36, lower case, as segflow.lua writes times (the duplicate filter's, the traits').

    >>> base36(1_790_000_000_000), int(base36(1_790_000_000_000), 36)
    ('mubbs7i8', 1790000000000)
    """
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if n == 0:
            return out


def pack(traits: Mapping[str, tuple[str, int]]) -> str:
    """The ``t`` field of ``traits``, as ``segflow.lua`` writes it.

    >>> pack({"country": ("DE", 1_790_000_000_000), "plan": ("pro", 1_790_000_000_001), "marketing_consent": ("1", 1_790_000_000_001)})
    'cDE\\x1fmubbs7i8\\x1eppro\\x1fmubbs7i9\\x1em1'
    """
    parts, prev = [], None
    for name in TRAIT_NAMES:
        if name in traits:
            value, at = traits[name]
            parts.append(f"{CODE[name]}{value}" if at == prev else f"{CODE[name]}{value}{VALUE_SEP}{base36(at)}")
            prev = at
    return TRAIT_SEP.join(parts)


def unpack(value: str) -> Traits:
    """Inverse of :func:`pack`; codes it does not know (a newer version's) are skipped."""
    out: Traits = {}
    at: int | None = None
    for entry in filter(None, value.split(TRAIT_SEP)):
        name = NAME.get(entry[:1])
        body, sep, time36 = entry[1:].rpartition(VALUE_SEP)
        if sep:
            at = int(time36, 36)
        else:
            body = entry[1:]
        if name is not None and at is not None:
            out[name] = (body, at)
    return out


def update_arg(update: Mapping[str, str]) -> str:
    """A profile update as ``segflow_apply`` takes it (its categories argument):
    ``<code><value>`` joined by ``\\x1e``.

    >>> update_arg({"country": "DE", "plan": "pro"})
    'cDE\\x1eppro'
    """
    return TRAIT_SEP.join(f"{CODE[name]}{value}" for name, value in update.items())


def _year(ms: int) -> int:
    return time.gmtime(ms / 1000).tm_year


def trait_features(traits: Mapping[str, tuple[str, int]], now_ms: int) -> dict[str, float | str | None]:
    """What rules see of ``traits`` at ``now_ms``: :data:`TRAIT_FEATURES`, null when unknown.

    >>> f = trait_features({"birth_year": ("1990", 0), "marketing_consent": ("0", 0), "plan": ("pro", 0)}, now_ms=1_767_225_600_000)
    >>> f["age"], f["marketing_consent"], f["plan"], f["country"]
    (36.0, 0.0, 'pro', None)
    """
    out: dict[str, float | str | None] = {}
    birth = traits.get("birth_year")
    out["age"] = float(_year(now_ms) - int(birth[0])) if birth else None
    consent = traits.get("marketing_consent")
    out["marketing_consent"] = None if consent is None else float(consent[0] == "1")
    for name in TEXT_TRAIT_FEATURES:
        t = traits.get(name)
        out[name] = None if t is None else t[0]
    return out


def numeric_trait_features(traits: Mapping[str, tuple[str, int]], now_ms: int) -> dict[str, float | None]:
    """The numeric part of :func:`trait_features` (segment changes carry these)."""
    f = trait_features(traits, now_ms)
    return {name: v for name in NUMERIC_TRAIT_FEATURES if not isinstance(v := f[name], str)}
