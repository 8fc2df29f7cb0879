"""Campaign routing, the pure core: matching, deterministic ids and arms, caps, config errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import segmenter.campaigns
from segmenter.campaigns import (
    DAY_MS,
    REMEMBER_MS,
    CampaignConfig,
    CampaignTrigger,
    CapLedger,
    CapPolicy,
    CapVerdict,
    campaign_trigger_json_schema,
    default_campaigns,
    in_holdout,
    parse_campaigns,
    refusal,
    trigger_id_of,
)
from segmenter.changes import SegmentChange
from segmenter.config import ConfigError, default_config

SHIPPED = (Path(segmenter.campaigns.__file__).parent / "default_campaigns.yaml").read_text()
T = 1_767_600_000_000


def change(customer="c1", segmentation="lifecycle", frm="active", to="at_risk", at=T, cause="deadline:1", **features) -> SegmentChange:
    return SegmentChange.create(
        customer_id=customer,
        segmentation=segmentation,
        from_segment=frm,
        to_segment=to,
        reason="r",
        model_version=1,
        occurred_at_ms=at,
        cause=cause,
        features=features or {"purchases_total": 2.0},
    )


def campaigns(text: str) -> CampaignConfig:
    return parse_campaigns(text, "campaigns.yaml", default_config())


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_campaigns(text, "campaigns.yaml", default_config())
    return info.value


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


# -- the shipped campaigns ---------------------------------------------------------------


def test_default_campaigns_route_the_documented_moves():
    cfg = default_campaigns()
    assert cfg.names() == ("win_back", "welcome", "vip")
    assert [d.trigger.campaign for d in cfg.route(change(frm="active", to="at_risk"))] == ["win_back"]
    assert cfg.route(change(frm="active", to="at_risk", purchases_total=0.0)) == []  # win-back is for buyers
    assert cfg.route(change(frm="dormant", to="at_risk")) == []
    assert [d.trigger.campaign for d in cfg.route(change(frm=None, to="new"))] == ["welcome"]
    assert [d.trigger.campaign for d in cfg.route(change(frm=None, to="active"))] == ["welcome"]
    assert cfg.route(change(frm="at_risk", to="active")) == []  # coming back is not a welcome
    assert [d.trigger.campaign for d in cfg.route(change(segmentation="value", frm="loyal", to="champions"))] == ["vip"]
    assert cfg.route(change(segmentation="behaviour", frm="steady", to="at_risk")) == []


def test_shipped_file_is_commented_and_every_campaign_has_a_control_group():
    assert SHIPPED.count("#") > 10
    for c in default_campaigns().campaigns:
        assert 0 < c.control_share < 0.5 and c.cap is not None and c.description


# -- routing -----------------------------------------------------------------------------------

LEAVE = """
campaigns:
  - name: lapse_alert
    segmentation: lifecycle
    leave: [active]
    to: [at_risk, dormant]
    any:
      - {feature: revenue_total, op: ">=", value: 100}
      - {feature: churn_propensity, op: ">=", value: 0.8}
    control_share: 0.2
"""


def test_leave_with_to_and_any_conditions():
    cfg = campaigns(LEAVE)
    assert len(cfg.route(change(frm="active", to="dormant", revenue_total=150.0))) == 1
    assert len(cfg.route(change(frm="active", to="at_risk", revenue_total=10.0, churn_propensity=0.9))) == 1
    assert cfg.route(change(frm="active", to="at_risk", revenue_total=10.0, churn_propensity=0.1)) == []
    assert cfg.route(change(frm="active", to="churned", revenue_total=150.0)) == []
    assert cfg.route(change(frm="new", to="at_risk", revenue_total=150.0)) == []
    assert cfg.route(change(segmentation="value", frm="active", to="at_risk", revenue_total=150.0)) == []


def test_the_trigger_carries_the_change_and_round_trips_as_json():
    c = change(frm="active", to="dormant", revenue_total=150.0)
    [d] = campaigns(LEAVE).route(c)
    t = d.trigger
    assert (t.customer_id, t.segmentation, t.from_segment, t.to_segment, t.change_id, t.occurred_at) == (
        "c1",
        "lifecycle",
        "active",
        "dormant",
        c.change_id,
        c.occurred_at,
    )
    assert t.trigger_id == trigger_id_of(c.change_id, "lapse_alert") and t.control_share == 0.2
    wire = t.model_dump_json()
    assert '"from":"active"' in wire and '"to":"dormant"' in wire and '"holdout":' in wire
    assert CampaignTrigger.model_validate_json(wire) == t
    schema = campaign_trigger_json_schema()
    assert {"trigger_id", "campaign", "customer_id", "holdout", "from", "to", "change_id", "occurred_at", "emitted_at"} <= set(schema["required"])
    assert d.cap_key == "cust:{c1}:camp:lapse_alert" and d.seen_key == "cust:{c1}:camp:lapse_alert:seen"


def test_a_re_derived_change_gives_the_same_trigger_id():
    a = default_campaigns().route(change(cause="event:e1"))
    b = default_campaigns().route(change(cause="event:e1"))
    other = default_campaigns().route(change(cause="event:e2"))
    assert a[0].trigger.trigger_id == b[0].trigger.trigger_id != other[0].trigger.trigger_id


# -- holdout -----------------------------------------------------------------------------------

customer_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=24)


@settings(max_examples=200)
@given(customer=customer_ids, campaign=st.sampled_from(["win_back", "welcome", "vip"]), share=st.floats(0, 1))
def test_holdout_is_deterministic_and_monotone_in_the_share(customer, campaign, share):
    assert in_holdout(customer, campaign, share) == in_holdout(customer, campaign, share)
    # A customer held out at a share stays held out at any larger share (raising control only adds customers).
    if in_holdout(customer, campaign, share):
        assert in_holdout(customer, campaign, min(1.0, share + 0.05))


@settings(max_examples=25, deadline=None)
@given(share=st.sampled_from([0.05, 0.1, 0.2, 0.5]), prefix=customer_ids, campaign=st.sampled_from(["win_back", "vip", "x"]))
def test_holdout_share_converges_to_the_configured_share(share, prefix, campaign):
    n = 20_000
    held = sum(in_holdout(f"{prefix}{i}", campaign, share) for i in range(n))
    # Binomial: 5 standard deviations (at 20,000 customers: <= 1.8 points at 50%).
    tolerance = 5 * (share * (1 - share) / n) ** 0.5
    assert abs(held / n - share) < tolerance


def test_arms_of_different_campaigns_are_independent():
    n = 20_000
    both = sum(in_holdout(f"c{i}", "win_back", 0.5) and in_holdout(f"c{i}", "vip", 0.5) for i in range(n))
    assert abs(both / n - 0.25) < 0.02


# -- caps --------------------------------------------------------------------------------------

policies = st.builds(
    CapPolicy,
    max_triggers=st.sampled_from([None, 1, 2, 3, 5]),
    period_ms=st.sampled_from([DAY_MS, 7 * DAY_MS, 30 * DAY_MS]),
    cooldown_ms=st.sampled_from([0, DAY_MS // 4, 2 * DAY_MS]),
)
# (trigger number, hour offset): repeats of a trigger number are re-sends of the same trigger
calls = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 120 * 24)), min_size=1, max_size=60)


def run(policy, sequence):
    """Feed (trigger number, hour) calls to a ledger; a trigger number always has
    the same cap time (it is the same trigger, re-sent); wall clock ticks a minute a call."""
    ledger, times_of, verdicts = CapLedger(), {}, []
    for i, (n, hour) in enumerate(sequence):
        tid = f"t{n}"
        t = times_of.setdefault(tid, T + hour * 3_600_000)
        verdicts.append((tid, ledger.charge(tid, t, policy, now_ms=T + i * 60_000)))
    return times_of, verdicts


@settings(max_examples=300)
@given(policy=policies, sequence=calls)
def test_caps_are_never_exceeded_in_any_window_even_out_of_order(policy, sequence):
    assume(policy.limited)
    times_of, verdicts = run(policy, sequence)
    times = sorted(times_of[tid] for tid in {tid for tid, v in verdicts if v.publish})
    if policy.max_triggers:
        for start in times:
            assert sum(1 for x in times if start <= x < start + policy.period_ms) <= policy.max_triggers
    for a, b in itertools.pairwise(times):
        assert b - a >= policy.cooldown_ms


@settings(max_examples=300)
@given(policy=policies, sequence=calls)
def test_a_re_sent_trigger_gets_its_first_verdict_and_is_not_charged_twice(policy, sequence):
    assume(policy.limited)  # unlimited campaigns never reach Redis: nothing to charge
    _, verdicts = run(policy, sequence)
    first: dict[str, bool] = {}
    for tid, verdict in verdicts:
        if tid in first:
            assert verdict.publish == first[tid]
            assert verdict.status in ("recharged", "capped")
        else:
            first[tid] = verdict.publish
            assert verdict.status in ("charged", "capped")


def test_verdicts_are_forgotten_after_a_week_of_wall_clock():
    ledger, p = CapLedger(), CapPolicy(max_triggers=1, period_ms=DAY_MS)
    assert ledger.charge("t1", T, p, now_ms=0).status == "charged"
    assert ledger.charge("t1", T, p, now_ms=REMEMBER_MS).status == "recharged"
    assert ledger.charge("t2", T + 3 * DAY_MS, p, now_ms=REMEMBER_MS + 1).status == "charged"  # t1's verdict trimmed
    assert ledger.charge("t0", T - 2 * DAY_MS, p, now_ms=REMEMBER_MS + 2) == CapVerdict("capped", "too_old")


def test_refusal_reasons():
    week = 7 * DAY_MS
    p = CapPolicy(max_triggers=2, period_ms=4 * week, cooldown_ms=week)
    assert refusal([T], T + week - 1, p) == "cooldown"
    assert refusal([T], T - week + 1, p) == "cooldown"  # both ways: charges may arrive out of order
    assert refusal([T, T + week], T + 2 * week, p) == "frequency_cap"
    assert refusal([T, T + 2 * week], T + week, p) == "frequency_cap"  # a window that ends later counts too
    assert refusal([T, T + week], T + 5 * week, p) is None
    assert not CapPolicy().limited and CapPolicy(cooldown_ms=1).limited


# -- config errors name the line ---------------------------------------------------------------

BAD = [
    ("segmentation: lifecycle\n    enter: [at_rsk]", "enter: [at_rsk]", "'at_rsk' is not a lifecycle segment"),
    (
        "segmentation: lifecycle\n    enter: [new]\n    when:\n      - {feature: purchses_total, op: '>=', value: 1}",
        "purchses_total",
        "did you mean 'purchases_total'",
    ),
    ("segmentation: lifecycle\n    enter: [new]\n    control_share: 1.5", "control_share", "less than or equal to 1"),
    ("segmentation: lifecycle\n    enter: [new]\n    cap: {max: 1, period: soon}", "cap:", "'soon' is not a duration"),
    ("segmentation: lifecycle\n    enter: [new]\n    leave: [active]", "enter: [new]", "exactly one of 'enter' or 'leave'"),
    ("segmentation: lifecycle\n    leave: [new]\n    from: [active]", "from:", "'from' goes with 'enter'"),
    ("segmentation: lifecycles\n    enter: [new]", "segmentation:", "'lifecycle', 'behaviour', 'value' or 'persona'"),
    ("segmentation: lifecycle\n    enter: [new]\n    cooldwn: 1d", "cooldwn", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("body, needle, message", BAD, ids=[b[2][:30] for b in BAD])
def test_a_bad_campaign_is_reported_with_its_line(body, needle, message):
    text = f"version: 1\ncampaigns:\n  - name: x\n    {body}\n"
    err = error_of(text)
    assert message in str(err)
    assert f"campaigns.yaml line {line_of(text, needle)}:" in str(err)


def test_duplicate_names_yaml_errors_and_duplicate_keys_name_the_line():
    dup = "campaigns:\n  - {name: a, segmentation: value, enter: [lost]}\n  - {name: a, segmentation: value, enter: [loyal]}\n"
    assert "campaigns.yaml line 3: campaigns[1].name: duplicate campaign name 'a'" in str(error_of(dup))
    assert "line 4: YAML syntax error" in str(error_of("campaigns:\n  - name: a\n    enter: [new\n"))
    assert "line 4: campaigns[0].name: duplicate key 'name'" in str(error_of("campaigns:\n  - name: a\n    segmentation: value\n    name: b\n"))
    assert "must be a YAML mapping" in str(error_of("- just a list\n"))


def test_empty_campaign_list_routes_nothing():
    assert campaigns("version: 1\ncampaigns: []\n").route(change()) == []
