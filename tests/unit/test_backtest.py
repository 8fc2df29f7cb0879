"""segflow backtest's core: the replay of the same events under two configs, tallied per day."""

from __future__ import annotations

import pytest

from lab import backtest
from lab.simulate import Simulation
from segmenter.campaigns import default_campaigns
from segmenter.config import default_config, default_config_text, parse_config

NEW_RULE = '        - {feature: tenure_days, op: "<", value: 14}'


def longer_new(days: int):
    text = default_config_text()
    assert NEW_RULE in text
    return parse_config(text.replace(NEW_RULE, NEW_RULE.replace("14", str(days))), "candidate.yaml")


@pytest.fixture(scope="module")
def events():
    return list(Simulation(customers=60, days=30, seed=4).events())


def test_the_same_config_backtests_the_same_and_a_longer_new_period_moves_fewer_customers_to_active(events):
    selected, report_from = backtest.window(events, days=20, warmup_days=5)
    assert selected[0][1].occurred_at.timestamp() * 1000 >= report_from - 5 * 86_400_000 - 1
    live = (default_config(), default_campaigns())
    view = backtest.run_backtest(selected, report_from, live, live)
    assert view["live"]["days"] == view["candidate"]["days"] and view["live"]["totals"] == view["candidate"]["totals"]
    totals = view["live"]["totals"]
    assert totals["events"] == sum(1 for _, e in selected if e.occurred_at.timestamp() * 1000 >= report_from)
    assert totals["changes"] == sum(d["changes"] for d in view["live"]["days"]) > 0
    assert sum(totals["entered"].values()) == totals["changes"]  # every change enters one segment

    longer = backtest.run_backtest(selected, report_from, live, (longer_new(60), default_campaigns()))
    # Nobody in a 35-day replay is 60 days old: no customer leaves "new" for "active" under the candidate.
    assert longer["candidate"]["totals"]["exited"].get("lifecycle:new", 0) == 0
    assert longer["live"]["totals"]["exited"].get("lifecycle:new", 0) > 0
    assert longer["candidate"]["totals"]["entered"].get("value:champions") == longer["live"]["totals"]["entered"].get("value:champions")
    text = backtest.format_backtest({**longer, "candidate_name": "candidate.yaml"})
    assert "lifecycle:new" in text and "welcome" in text


def test_invalid_records_are_counted_by_reason_not_replayed():
    events, invalid = backtest.decode_records([("login", b"not json"), ("login", b'{"customer_id": "c1"}'), ("purchase", None)])
    assert events == [] and sum(invalid.values()) == 3 and set(invalid) <= {"bad_json", "invalid", "empty"}


def test_an_empty_window_is_empty():
    assert backtest.window([], days=30, warmup_days=0) == ([], 0)
