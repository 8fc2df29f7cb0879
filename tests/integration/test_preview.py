"""`segflow preview` against customers a real engine left in a real Redis (one server,
and a 3-primary cluster): the live config predicts no moves, a changed definition
predicts exactly the moves its rule implies, a bad candidate is refused naming its
line, and nothing in Redis changes."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from features.catalogue import compute
from features.codec import state_from_hash
from lab.simulate import Simulation
from segflow.cli import cli
from segmenter.assign import Segmenter
from segmenter.config import SEGMENTATIONS, default_config, default_config_text, parse_config
from streams.app import redis_client as async_redis
from streams.engine import Engine, InboundMessage
from streams.preview import live_snapshot, preview_clock_ms, run_preview
from streams.redis_clients import sync_client
from streams.segment_store import parse_segments
from streams.settings import Settings

pytestmark = pytest.mark.integration

START = datetime(2026, 9, 1, tzinfo=UTC)
DEFAULT_TEXT = default_config_text()
NEW_RULE = '        - {feature: tenure_days, op: "<", value: 14}'


class FrozenSegmenter(Segmenter):
    """The shipped config with learning off: the models stay on their priors and
    prototypes, so a re-evaluation now sees the same models the engine used."""

    def learn_one(self, features, customer_id=None, now_ms=None) -> bool:
        return False


def populate(settings: Settings, customers: int = 80, days: float = 40) -> None:
    """Replay a simulated population through an in-process engine, then fire every due deadline."""
    sim = Simulation(customers, days, seed=11, start=START)
    layout = settings.layout

    async def scenario():
        engine = Engine(settings, async_redis(settings.redis_url.get_secret_value(), cluster=settings.redis_cluster), FrozenSegmenter(default_config()))
        await engine.start()
        engine.assign({(t, p) for t in settings.topics.by_family.values() for p in range(settings.partitions)}, now=time.time())
        offsets: dict[tuple[str, int], int] = {}
        batch: list[InboundMessage] = []
        for family, event in sim.events():
            topic, p = settings.topics.by_family[family], layout.partition(event.customer_id)
            offset = offsets[topic, p] = offsets.get((topic, p), -1) + 1
            batch.append(InboundMessage(topic, p, offset, event.customer_id.encode(), event.model_dump_json().encode()))
            if len(batch) == 500:
                await engine.process(batch, now=time.time())
                batch = []
        await engine.process(batch, now=time.time())
        while (await engine.fire_deadlines()).changes:
            pass
        await engine.redis.aclose()

    asyncio.run(scenario())


def keyspace(settings: Settings) -> list[tuple[str, bytes | None]]:
    """Every key without a TTL and its DUMP (keys with a TTL are leases and locks a preview never takes)."""
    raw = sync_client(settings.redis_url.get_secret_value(), cluster=settings.redis_cluster)
    try:
        return sorted((k.decode(), raw.dump(k)) for k in raw.scan_iter(count=1000) if raw.ttl(k) == -1)
    finally:
        raw.close()


@pytest.fixture(params=["single", "cluster"])
def stack(request):
    if request.param == "single":
        client, url = request.getfixturevalue("redis_client"), request.getfixturevalue("redis_server").url
    else:
        client, url = request.getfixturevalue("redis_cluster_client"), request.getfixturevalue("redis_cluster").url
    settings = Settings(redis_url=url, redis_cluster=request.param == "cluster", clock="event", lateness_seconds=0, partitions=3)
    populate(settings)
    return client, settings


def test_preview_predicts_the_moves_of_a_changed_definition_and_changes_nothing(stack, tmp_path):
    client, settings = stack
    before = keyspace(settings)

    known = [cid for cid in (f"c{i:06d}" for i in range(80)) if state_from_hash(client.hgetall(settings.layout.customer_key(cid))).exists]
    assert len(known) > 60  # a few of the simulation's customers stay silent throughout

    live = run_preview(client, settings, default_config(), live_snapshot(settings), examples=100, batch=17)
    assert live["customers"] == len(known)
    assert {name: s["moved"] for name, s in live["segmentations"].items()} == dict.fromkeys(SEGMENTATIONS, 0)

    # Customers stay "new" for 30 days instead of 14: the active ones whose tenure is
    # under 30 days at the preview's clock move, but those who became active less than
    # the lifecycle's minimum dwell ago are held there for now; no other segmentation moves.
    candidate_text = DEFAULT_TEXT.replace(NEW_RULE, NEW_RULE.replace("14", "30"))
    view = run_preview(client, settings, parse_config(candidate_text, "new.yaml"), live_snapshot(settings), examples=100, batch=17)
    clock = preview_clock_ms(client, settings)
    dwell_ms = default_config().hysteresis.lifecycle.min_dwell_ms
    expected, held = set(), set()
    for cid in known:
        state = state_from_hash(client.hgetall(settings.layout.customer_key(cid)))
        now_ms = max(clock, state.last_seen_ms or 0)
        tenure = compute(state, now_ms)["tenure_days"]
        lifecycle = parse_segments(client.hgetall(settings.layout.segments_key(cid)))["lifecycle"]
        if tenure is not None and 14 <= tenure < 30 and lifecycle.segment == "active":
            (expected if now_ms >= lifecycle.since_ms + dwell_ms else held).add(cid)
    life = view["segmentations"]["lifecycle"]
    moved = {cid for f in life["flows"] for cid in f["examples"]}
    assert expected, "the simulation should leave some customers between 14 and 30 days old"
    assert [(f["from"], f["to"]) for f in life["flows"]] == [("active", "new")]
    assert moved == expected and life["moved"] == len(expected) and life["held"] == len(held)
    assert life["sizes"]["new"]["candidate"] - life["sizes"]["new"]["now"] == len(expected)
    assert all(view["segmentations"][name]["moved"] == 0 for name in SEGMENTATIONS if name != "lifecycle")

    assert keyspace(settings) == before  # read-only


def test_the_cli_prints_the_preview_and_refuses_a_bad_candidate_naming_the_line(redis_server, redis_client, tmp_path):
    settings = Settings(redis_url=redis_server.url, clock="event", lateness_seconds=0, partitions=3)
    populate(settings, customers=30, days=20)
    env = {"SEGFLOW_REDIS_URL": redis_server.url, "SEGFLOW_CLOCK": "event", "SEGFLOW_LATENESS_SECONDS": "0", "SEGFLOW_PARTITIONS": "3"}
    candidate = tmp_path / "new.yaml"
    candidate.write_text(DEFAULT_TEXT.replace(NEW_RULE, NEW_RULE.replace("14", "30")))
    result = CliRunner().invoke(cli, ["preview", "--segments", str(candidate), "--json"], env=env)
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert 20 < view["customers"] <= 30 and set(view["segmentations"]) == set(SEGMENTATIONS)
    text = CliRunner().invoke(cli, ["preview", "--segments", str(candidate)], env=env)
    assert text.exit_code == 0 and "lifecycle:" in text.stdout and "would move now" in text.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text(DEFAULT_TEXT.replace(NEW_RULE, NEW_RULE.replace("tenure_days", "tenure_dayz")))
    line = DEFAULT_TEXT.splitlines().index(NEW_RULE) + 1
    refused = CliRunner().invoke(cli, ["preview", "--segments", str(broken)], env=env)
    assert refused.exit_code == 2
    assert f"broken.yaml line {line}" in refused.stderr and "tenure_dayz" in refused.stderr
