"""Profile traits: the contract, and last writer wins in event time whatever the order."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.codec import delta_args, state_from_hash, state_to_hash
from features.extract import delta_of
from features.state import DAY_MS, LOGINS, CustomerState, EventDelta, apply_delta, forgotten
from features.traits import TRAITS, merge, pack, trait_features, unpack, wins
from streams.events import TRAIT_NAMES, InvalidEvent, ProfileEvent, decode, json_schemas

BASE = 20_000 * DAY_MS


def _profile(**traits) -> bytes:
    return json.dumps({"event_id": "e1", "customer_id": "c1", "occurred_at": "2026-05-30T09:00:00Z", **traits}).encode()


def test_a_profile_update_decodes_to_its_traits():
    event = decode("profile", _profile(birth_year=1990, country="DE", plan="pro", marketing_consent=False))
    assert isinstance(event, ProfileEvent)
    assert event.trait_values() == {"birth_year": "1990", "country": "DE", "plan": "pro", "marketing_consent": "0"}
    delta = delta_of(event, (0, 7))
    assert delta.family == "profile" and delta.increments == {} and not (delta.visit or delta.login or delta.purchase)
    assert delta_args(delta, None)[8] == "b1990\x1ecDE\x1eppro\x1em0"


@pytest.mark.parametrize(
    ("traits", "reason", "names"),
    [
        ({}, "invalid", "at least one trait"),
        ({"country": "de"}, "invalid", "country"),
        ({"country": "DEU"}, "invalid", "country"),
        ({"birth_year": 1850}, "invalid", "birth_year"),
        ({"birth_year": 2030}, "invalid", "after occurred_at"),
        ({"region": "x" * 65}, "invalid", "region"),
        ({"region": "a\x1fb"}, "invalid", "region"),
        ({"plan": "Gold Plan"}, "invalid", "plan"),
        ({"signup_channel": "carrier_pigeon"}, "invalid", "signup_channel"),
        ({"marketing_consent": "maybe"}, "invalid", "marketing_consent"),
        ({"country": "DE", "shoe_size": 42}, "invalid", "shoe_size"),
        ({"country": "DE", "type": "purchase"}, "unknown_event_type", ""),
    ],
)
def test_a_bad_profile_update_is_invalid_and_says_why(traits, reason, names):
    with pytest.raises(InvalidEvent) as exc:
        decode("profile", _profile(**traits))
    assert exc.value.reason == reason
    assert names in exc.value.detail


def test_the_profile_family_is_in_the_schemas():
    schema = json_schemas()["profile"]
    assert set(TRAIT_NAMES) <= set(schema["properties"])
    assert tuple(t.name for t in TRAITS) == TRAIT_NAMES


updates = st.lists(
    st.tuples(
        st.integers(BASE, BASE + 10 * DAY_MS),
        st.dictionaries(
            st.sampled_from(TRAIT_NAMES),
            st.sampled_from(["1990", "DE", "FR", "pro", "free", "web", "1", "0", "Zürich"]),
            min_size=1,
            max_size=4,
        ),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(updates=updates, seed=st.integers(0, 2**32))
def test_profile_updates_in_any_order_give_the_traits_of_event_time_order(updates, seed):
    in_time = CustomerState()
    for i, (ts, traits) in enumerate(sorted(updates, key=lambda u: u[0])):
        apply_delta(in_time, EventDelta(ts, f"f{i}", "profile", {}, traits=traits), None)
    shuffled = list(enumerate(updates))
    random.Random(seed).shuffle(shuffled)
    any_order = CustomerState()
    for i, (ts, traits) in shuffled + shuffled[:3]:  # and a few twice: repeats change nothing
        apply_delta(any_order, EventDelta(ts, f"f{i}", "profile", {}, traits=traits), late_before_ms=BASE + 20 * DAY_MS)
    assert any_order.traits == in_time.traits
    # and each trait is the one of the newest update that set it
    for name, (value, at) in in_time.traits.items():
        newest = max(ts for ts, traits in updates if name in traits)
        assert at == newest
        assert value == max((traits[name] for ts, traits in updates if ts == newest and name in traits), key=str.encode)
    assert unpack(pack(any_order.traits)) == any_order.traits
    assert state_from_hash(state_to_hash(any_order)) == any_order


def test_a_late_older_update_does_not_win_and_an_absent_trait_is_kept():
    s = CustomerState()
    apply_delta(s, EventDelta(BASE + 2000, "f1", "profile", {}, traits={"country": "DE", "plan": "pro"}), None)
    apply_delta(s, EventDelta(BASE + 1000, "f2", "profile", {}, traits={"country": "FR", "region": "Bretagne"}), None)
    assert s.traits == {"country": ("DE", BASE + 2000), "region": ("Bretagne", BASE + 1000), "plan": ("pro", BASE + 2000)}


def test_a_profile_update_is_not_behaviour():
    s = CustomerState()
    assert apply_delta(s, EventDelta(BASE, "f1", "profile", {}, traits={"plan": "pro"}, offset=(0, 1)), late_before_ms=BASE + DAY_MS) == "applied"
    assert not s.exists and s.known and s.events_total == 0 and not s.buckets and not s.recent
    assert apply_delta(s, EventDelta(BASE, "f1", "profile", {}, traits={"plan": "pro"}, offset=(0, 1)), None) == "duplicate"
    apply_delta(s, EventDelta(BASE, "l1", "login", {LOGINS: 1}, login=True), None)
    assert s.exists and s.events_total == 1 and s.traits == {"plan": ("pro", BASE)}


def test_an_erased_customer_gets_no_traits():
    s = forgotten(5)
    assert apply_delta(s, EventDelta(BASE, "f1", "profile", {}, traits={"plan": "pro"}), None) == "suppressed"
    assert s.traits == {}


def test_ties_go_to_the_larger_value():
    assert merge(merge({}, {"plan": "a"}, 1), {"plan": "b"}, 1) == merge(merge({}, {"plan": "b"}, 1), {"plan": "a"}, 1) == {"plan": ("b", 1)}
    assert wins(("Zürich", 1), ("Zurich", 1))


def test_trait_features():
    t = merge({}, {"birth_year": "1960", "country": "DE", "marketing_consent": "1"}, BASE)
    f = trait_features(t, now_ms=1_767_225_600_000)  # 2026-01-01
    assert f == {"age": 66.0, "marketing_consent": 1.0, "country": "DE", "region": None, "plan": None, "signup_channel": None}
    assert trait_features({}, 0)["marketing_consent"] is None


def test_traits_are_compact():
    full = merge(
        {}, {"birth_year": "1990", "country": "DE", "region": "x" * 64, "plan": "p" * 32, "signup_channel": "paid_search", "marketing_consent": "1"}, BASE
    )
    assert len(pack(full).encode()) < 150  # of the 2 KiB budget per customer
    typical = merge({}, {"birth_year": "1990", "country": "DE", "region": "Berlin", "plan": "pro", "signup_channel": "web", "marketing_consent": "1"}, BASE)
    assert len(pack(typical)) <= 45  # one update: one time for all six
