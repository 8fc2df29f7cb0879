"""`segflow backtest` reading the input topics of a real broker: the same report as from
the JSONL file the events were published from, and a bad candidate refused by line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab.publish import produce_simulation, write_jsonl
from lab.simulate import Simulation
from segmenter.config import default_config_text
from tests.kafka_helpers import fresh_topics

pytestmark = pytest.mark.integration

DEFAULT_TEXT = default_config_text()
NEW_RULE = '        - {feature: tenure_days, op: "<", value: 14}'


def backtest(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segflow.cli", "backtest", *args], env=env, capture_output=True, text=True, timeout=300)


def without_timings(view: dict) -> dict:
    return {k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v) for k, v in view.items() if k != "seconds"}


def test_backtest_of_the_topics_equals_the_backtest_of_the_file_they_came_from(broker, tmp_path):
    import os

    topics = fresh_topics(broker, partitions=3)
    sim = Simulation(customers=40, days=20, seed=9)
    stats = produce_simulation(broker.bootstrap, sim, topics)
    assert stats.failed == 0
    jsonl = tmp_path / "events.jsonl"
    assert write_jsonl(Simulation(customers=40, days=20, seed=9), jsonl) == stats.sent
    candidate = tmp_path / "new.yaml"
    candidate.write_text(DEFAULT_TEXT.replace(NEW_RULE, NEW_RULE.replace("14", "30")))
    env = {**os.environ, "SEGFLOW_KAFKA_URL": f"kafka://{broker.bootstrap}", "SEGFLOW_TOPIC_PREFIX": topics.prefix}

    from_topics = backtest(env, "--segments", str(candidate), "--days", "14", "--warmup-days", "3", "--json")
    assert from_topics.returncode == 0, from_topics.stderr[-3000:]
    from_file = backtest(env, "--segments", str(candidate), "--days", "14", "--warmup-days", "3", "--json", "--file", str(jsonl))
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    a, b = json.loads(from_topics.stdout), json.loads(from_file.stdout)
    assert without_timings(a) == without_timings(b)
    assert a["live"]["totals"]["changes"] > 0 and len(a["live"]["days"]) >= 14
    # Under the candidate nobody leaves "new" before 30 days: fewer lifecycle changes than live.
    assert a["candidate"]["totals"]["exited"].get("lifecycle:new", 0) < a["live"]["totals"]["exited"].get("lifecycle:new", 0)

    broken = tmp_path / "broken.yaml"
    broken.write_text(DEFAULT_TEXT.replace(NEW_RULE, NEW_RULE.replace('"<"', '"<<"')))
    refused = backtest(env, "--segments", str(broken), "--file", str(jsonl))
    line = DEFAULT_TEXT.splitlines().index(NEW_RULE) + 1
    assert refused.returncode == 2 and f"broken.yaml line {line}" in refused.stderr, refused.stderr
