"""Churn judgement on real purchases: CDNOW (1 customer in 10) streamed through broker, worker and Redis.

The same run fits the field's batch BG/NBD with lifetimes on the same calibration
purchases; the engine's own fit (from its customer sample, on its snapshot tick)
must land on the same parameters, and its churn signal must rank holdout churners
at least as well as that batch model.
"""

from __future__ import annotations

import pytest

from lab.cdnow import evaluate_cdnow

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_cdnow_streaming_churn_matches_the_batch_model(tmp_path):
    r = evaluate_cdnow(sample_every=10, work_dir=tmp_path, say=lambda m: None)
    assert r["customers"] > 2000 and 0.6 < r["base_rate_no_purchase"] < 0.8
    assert r["engine_model_restored"] and r["params"]["engine_version"] >= 1
    # every sampled customer is in the engine's fit sample: the same maximum likelihood as lifetimes
    for name in ("r", "alpha", "a", "b"):
        engine, batch = r["params"]["engine"][name], r["params"]["lifetimes"][name]
        assert abs(engine - batch) / batch < 0.02, (name, engine, batch)
    auc = r["auc"]
    assert auc["engine_p_no_purchase_holdout"] >= auc["batch_bgnbd_p_no_purchase_holdout"] - 0.005
    assert auc["engine_churn_propensity"] > 0.7
    # the flags say more than the base rate, and the engine moved customers out of `new` by itself
    assert r["flags"]["precision"] > r["base_rate_no_purchase"] + 0.03
    assert r["lifecycle_sizes"].get("new", 0) == 0
    # the expected holdout purchases add up to the same order as what happened
    engine = r["probabilities"]["engine"]
    assert 0.5 < engine["expected_total"] / engine["actual_total"] < 1.5
