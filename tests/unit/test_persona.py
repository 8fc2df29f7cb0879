"""Persona rules over traits and features, their config errors, and marketing consent."""

from __future__ import annotations

import pytest

from features.traits import merge, trait_features
from segmenter.assign import Segmenter
from segmenter.campaigns import NO_CONSENT, ConsentPolicy, parse_campaigns
from segmenter.changes import SegmentChange
from segmenter.config import ConfigError, default_config, parse_config
from tests.unit.test_campaigns import change as campaign_change

DAY = 86_400_000
T0 = 20_454 * DAY  # 2026-01-01
CONFIG = default_config()
ACTIVE = {
    "tenure_days": 40.0,
    "days_since_last_activity": 0.0,
    "days_since_last_purchase": 2.0,
    "purchases_total": 3.0,
    "purchase_days_total": 3.0,
    "revenue_total": 90.0,
    "sessions_30d": 6.0,
    "purchase_span_days": 28.0,
    "days_since_first_purchase": 30.0,
}


def persona_of(traits: dict[str, str], features: dict | None = None) -> tuple[str, str]:
    ev = Segmenter.from_config(CONFIG).evaluate("c1", features or ACTIVE, {}, T0, "event:e1", traits=trait_features(merge({}, traits, T0), T0))
    a = ev.assignments["persona"]
    return a.segment, a.reason


@pytest.mark.parametrize(
    ("traits", "features", "expected"),
    [
        ({"birth_year": "2000", "region": "Berlin"}, None, ("young_urban_explorers", "young_urban_explorer")),
        ({"birth_year": "2000", "region": "Berlin"}, {**ACTIVE, "sessions_30d": 1.0}, ("mainstream", "default")),  # behaviour decides too
        ({"birth_year": "2000", "region": "Cornwall"}, None, ("mainstream", "default")),
        ({"birth_year": "1950"}, None, ("retired_loyal_buyers", "retired_loyal_buyer")),
        ({"birth_year": "1950"}, {**ACTIVE, "purchase_days_total": 1.0}, ("mainstream", "default")),
        ({"plan": "gold"}, None, ("premium_members", "premium_plan")),
        ({"marketing_consent": "1"}, None, ("unprofiled", "no_profile")),
        ({}, None, ("unprofiled", "no_profile")),
    ],
)
def test_persona_rules_combine_traits_and_behaviour(traits, features, expected):
    assert persona_of(traits, features) == expected


def test_without_traits_everyone_is_unprofiled_and_a_trait_change_moves_the_persona():
    seg = Segmenter.from_config(CONFIG)
    first = seg.evaluate("c1", ACTIVE, {}, T0, "event:e1")
    assert first.assignments["persona"].segment == "unprofiled"
    traits = trait_features(merge({}, {"plan": "premium", "marketing_consent": "0"}, T0), T0)
    moved = seg.evaluate("c1", ACTIVE, first.assignments, T0, "event:p1", traits=traits)
    [change] = moved.changes
    assert (change.segmentation, change.from_segment, change.to_segment, change.reason) == ("persona", "unprofiled", "premium_members", "premium_plan")
    assert change.features["marketing_consent"] == 0.0 and "plan" not in change.features  # changes carry numbers only


def test_a_config_without_persona_puts_everyone_in_everyone():
    data = CONFIG.model_dump(mode="json", by_alias=True)
    del data["persona"]
    config = parse_config(__import__("yaml").safe_dump(data), "old.yaml")
    assert config.persona.segments == ("everyone",)
    ev = Segmenter.from_config(config).evaluate("c1", ACTIVE, {}, T0, "event:e1")
    assert ev.assignments["persona"].segment == "everyone"


def test_the_persona_config_round_trips():
    assert parse_config(CONFIG.to_yaml()) == CONFIG


BASE = """
lifecycle: {segments: [active], default: active}
behaviour:
  n_clusters: 2
  features: [sessions_30d]
  prototypes: {a: {sessions_30d: 1}, b: {sessions_30d: -1}}
value: {segments: [lost], default: lost}
persona:
  segments: [young, other]
  default: other
  rules:
    - id: young
      segment: young
      when:
        - {cond}
"""


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        ('{feature: country, op: "<", value: DE}', "'country' is a text: use one of ==, !=, in, not_in, is_null, not_null"),
        ("{feature: country, op: in, value: DE}", "operator 'in' needs a list of texts"),
        ("{feature: country, op: ==, value: [DE]}", "operator '==' on 'country' needs a text"),
        ("{feature: age, op: in, value: [thirty]}", "operator 'in' applies to text traits"),
        ('{feature: age, op: "<", value: young}', "'age' is a number: the value must be a number"),
        ('{feature: agee, op: "<", value: 30}', "unknown feature 'agee' (did you mean 'age'?)"),
        ("{feature: plan, op: in, value: []}", "operator 'in' needs a list of texts"),
    ],
)
def test_a_bad_persona_condition_names_its_line(cond, message):
    text = BASE.replace("{cond}", cond)
    with pytest.raises(ConfigError) as info:
        parse_config(text, "segments.yaml")
    assert message in str(info.value)
    assert "segments.yaml line 15:" in str(info.value)


def test_lifecycle_rules_cannot_test_traits():
    text = BASE.replace("persona:", "lifecycle_x:").replace("lifecycle: {segments: [active], default: active}", "")
    text = (
        "lifecycle:\n  segments: [active]\n  default: active\n  rules:\n    - id: r\n      segment: active\n      when:\n        - {feature: country, op: ==, value: DE}\n"
        + text
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "segments.yaml")
    assert "segments.yaml line 8: lifecycle.rules[0].when[0].feature: unknown feature 'country'" in str(info.value)


# -- consent ----------------------------------------------------------------------------

CAMPAIGNS = """
version: 1
consent: {unknown: UNKNOWN}
campaigns:
  - name: welcome
    segmentation: lifecycle
    enter: [active]
  - name: premium_upsell
    segmentation: persona
    enter: [premium_members]
"""


def change(consent: float | None, segmentation: str = "lifecycle", to: str = "active") -> SegmentChange:
    features = {} if consent is None else {"marketing_consent": consent}
    return campaign_change(segmentation=segmentation, frm=None, to=to, **features).model_copy(update={"features": features})


@pytest.mark.parametrize(
    ("unknown", "consent", "suppressed"),
    [
        ("allow", 1.0, None),
        ("allow", 0.0, NO_CONSENT),
        ("allow", None, None),
        ("suppress", 1.0, None),
        ("suppress", 0.0, NO_CONSENT),
        ("suppress", None, NO_CONSENT),
    ],
)
def test_no_trigger_without_consent(unknown, consent, suppressed):
    campaigns = parse_campaigns(CAMPAIGNS.replace("UNKNOWN", unknown), "campaigns.yaml", CONFIG)
    [decision] = campaigns.route(change(consent))
    assert decision.suppressed == suppressed
    [persona] = campaigns.route(change(consent, "persona", "premium_members"))
    assert persona.trigger.campaign == "premium_upsell" and persona.suppressed == suppressed


def test_consent_defaults_to_allow_when_unknown_and_a_bad_policy_names_its_line():
    assert ConsentPolicy().unknown == "allow"
    with pytest.raises(ConfigError) as info:
        parse_campaigns(CAMPAIGNS.replace("UNKNOWN", "maybe"), "campaigns.yaml", CONFIG)
    assert "campaigns.yaml line 3: consent.unknown" in str(info.value)


# -- the simulator's traits ---------------------------------------------------------------


def test_persona_accuracy_on_the_simulator_where_traits_decide():
    from lab.evaluate import quality_report, replay
    from lab.simulate import Simulation

    sim = Simulation(customers=150, days=30, seed=5, profile_share=0.85)
    report = quality_report(replay(sim, CONFIG))["persona"]
    assert report["customers_traits_decide"] > 80
    assert report["accuracy_traits_decide"] >= 0.95
    assert report["accuracy_all"] >= 0.9


def test_simulated_profiles_leave_behaviour_as_it_was():
    from lab.simulate import Simulation

    with_profiles = list(Simulation(customers=30, days=10, seed=2, profile_share=1.0).events())
    without = list(Simulation(customers=30, days=10, seed=2).events())
    assert [e for f, e in with_profiles if f != "profile"] == [e for _, e in without]
    profiles = [e for f, e in with_profiles if f == "profile"]
    assert len({e.customer_id for e in profiles}) == 30 and all(e.trait_values() for e in profiles)
