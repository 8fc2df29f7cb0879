"""The segmentation config: defaults, round trip, and errors that name the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import segmenter.config
from features.catalogue import FEATURE_NAMES
from segmenter.config import (
    COMPARISONS,
    NULL_TESTS,
    ConfigError,
    SegmentationConfig,
    default_config,
    load_config,
    parse_config,
)

DEFAULT_TEXT = default_config().to_yaml()
# The shipped file: flow-style conditions, comments; what people will edit.
SHIPPED = (Path(segmenter.config.__file__).parent / "default_segments.yaml").read_text()


def error_of(text: str, name: str = "segments.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, name)
    return info.value


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1)


# -- the shipped default ---------------------------------------------------------


def test_default_config_has_the_documented_segments():
    cfg = default_config()
    assert cfg.lifecycle.segments == ("new", "active", "at_risk", "dormant", "churned")
    assert set(cfg.behaviour.prototypes) == {"power_users", "steady", "bargain_hunters", "explorers", "dormant"}
    assert cfg.behaviour.n_clusters == 5
    assert cfg.value.segments == ("champions", "loyal", "need_attention", "at_risk", "lost")
    assert cfg.hysteresis.lifecycle.urgent == ("churned",)


def test_load_config_reads_a_file_and_names_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(DEFAULT_TEXT)
    assert load_config(path) == default_config()
    path.write_text("lifecycle: [")
    with pytest.raises(ConfigError, match=r"^mine\.yaml line 1: YAML syntax error"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


# -- errors name the line ----------------------------------------------------------


def test_shipped_file_is_the_default():
    assert parse_config(SHIPPED) == default_config()


def test_yaml_syntax_error_names_the_line():
    text = SHIPPED.replace("default: active", "default: [active", 1)
    err = error_of(text)
    # The unclosed flow sequence is detected where the next key begins.
    assert re.match(r"segments\.yaml line \d+: YAML syntax error", str(err))
    assert err.issues[0].line >= line_of(text, "default: [active")


def test_yaml_syntax_error_tab_indentation():
    text = "version: 1\nlifecycle:\n\tsegments: [a]\n"
    err = error_of(text)
    assert str(err).startswith("segments.yaml line 3: YAML syntax error")


def test_unknown_feature_names_line_path_and_suggestion():
    text = replace_once(SHIPPED, "feature: purchase_days_total", "feature: purchse_days_total")
    err = error_of(text)
    line = line_of(text, "purchse_days_total")
    assert str(err) == (
        f"segments.yaml line {line}: lifecycle.rules[3].when[0].feature: unknown feature 'purchse_days_total' (did you mean 'purchase_days_total'?)"
    )


def test_bad_operator_names_the_line():
    text = replace_once(SHIPPED, 'op: ">=", value: 60', 'op: "=>", value: 60')
    err = error_of(text)
    assert err.issues[0].line == line_of(text, '"=>"')
    assert err.issues[0].path == "lifecycle.rules[3].when[1].op"
    assert err.issues[0].path.endswith(".op")
    assert "Input should be" in str(err)


def test_missing_field_names_the_object_that_lacks_it():
    text = replace_once(SHIPPED, "      segment: dormant\n", "")
    err = error_of(text)
    issue = err.issues[0]
    assert issue.path == "lifecycle.rules[1].segment"
    assert issue.message == "Field required"
    assert issue.line == line_of(text, "id: rhythm_lapsed")


def test_missing_value_for_a_comparison():
    text = replace_once(SHIPPED, 'op: ">=", value: 60}', 'op: ">="}')
    err = error_of(text)
    assert err.issues[0].path == "lifecycle.rules[3].when[1].value"
    assert "needs a value" in err.issues[0].message
    assert err.issues[0].line == line_of(text, 'op: ">="}')


def test_unknown_key_names_its_line():
    text = replace_once(SHIPPED, "      when:\n", "      wehn:\n")
    err = error_of(text)
    assert any(i.path == "lifecycle.rules[0].wehn" and i.line == line_of(text, "wehn:") for i in err.issues)


def test_rule_into_undeclared_segment():
    text = replace_once(SHIPPED, "segment: dormant", "segment: sleeping")
    err = error_of(text)
    assert err.issues[0].path == "lifecycle.rules[1].segment"
    assert err.issues[0].line == line_of(text, "segment: sleeping")
    assert "not one of segments" in err.issues[0].message


def test_urgent_segment_must_exist():
    text = replace_once(SHIPPED, "urgent: [churned]", "urgent: [gone]")
    err = error_of(text)
    assert err.issues[0].path == "hysteresis.lifecycle.urgent[0]"
    assert err.issues[0].line == line_of(text, "urgent: [gone]")


def test_prototype_count_must_match_n_clusters():
    text = replace_once(SHIPPED, "n_clusters: 5", "n_clusters: 6")
    err = error_of(text)
    assert err.issues[0].path == "behaviour.prototypes"
    assert "every cluster needs exactly one name" in err.issues[0].message


def test_duplicate_keys_are_refused():
    err = error_of("version: 1\nversion: 1\n")
    assert str(err) == "segments.yaml line 2: version: duplicate key 'version'"


def test_every_issue_is_reported():
    text = replace_once(SHIPPED, "feature: purchase_days_total", "feature: nope")
    text = replace_once(text, "n_clusters: 5", "n_clusters: many")
    err = error_of(text)
    assert {i.path for i in err.issues} >= {"lifecycle.rules[3].when[0].feature", "behaviour.n_clusters"}
    assert len(str(err).splitlines()) == len(err.issues)


def test_not_a_mapping():
    assert str(error_of("- a\n- b\n")).startswith("segments.yaml line 1: the config must be a YAML mapping")


# -- round trip ----------------------------------------------------------------------

RULE_FEATURES = st.sampled_from((*FEATURE_NAMES, "churn_propensity"))


@st.composite
def conditions(draw):
    op = draw(st.sampled_from(COMPARISONS + NULL_TESTS))
    value = None if op in NULL_TESTS else draw(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3)))
    return {"feature": draw(RULE_FEATURES), "op": op, "value": value}


@st.composite
def lifecycle_sections(draw):
    segments = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=5, unique=True))
    rules = []
    for i in range(draw(st.integers(0, 6))):
        rule = {"id": f"r{i}", "segment": draw(st.sampled_from(segments)), "when": draw(st.lists(conditions(), min_size=1, max_size=3))}
        if draw(st.booleans()):
            rule["any"] = draw(st.lists(conditions(), min_size=1, max_size=2))
        rules.append(rule)
    return {"segments": segments, "default": draw(st.sampled_from(segments)), "rules": rules}


@given(lifecycle_sections(), st.floats(0, 1e7, allow_nan=False), st.floats(0, 0.99))
@settings(max_examples=60, deadline=None)
def test_config_round_trips_through_yaml(lifecycle, dwell, margin):
    data = default_config().model_dump(mode="json", by_alias=True)
    data["lifecycle"] = lifecycle
    data["hysteresis"]["lifecycle"] = {"min_dwell_seconds": dwell, "urgent": [], "margin": margin}
    cfg = SegmentationConfig.model_validate(data)
    again = parse_config(cfg.to_yaml(), "roundtrip.yaml")
    assert again == cfg
    assert yaml.safe_load(again.to_yaml()) == yaml.safe_load(cfg.to_yaml())
