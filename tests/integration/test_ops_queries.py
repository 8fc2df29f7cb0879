"""Ops queries against a real Redis (no broker): flows, members, sizes over time."""

from __future__ import annotations

import pytest

from features.keys import Layout
from streams import queries

pytestmark = pytest.mark.integration

LAYOUT = Layout(2)
CATALOGUE = {"lifecycle": ("new", "active"), "behaviour": ("steady",)}
HOUR = 3_600_000
NOW = 1_000 * HOUR + 1_800_000  # half past some hour


def test_flows_sum_the_hourly_hashes_in_the_window(redis_client):
    redis_client.hset(LAYOUT.flows(0, 1000), mapping={"lifecycle||new": 2, "lifecycle|new|active": 1})
    redis_client.hset(LAYOUT.flows(1, 1000), mapping={"lifecycle||new": 1})  # the other partition's share adds up
    redis_client.hset(LAYOUT.flows(1, 999), mapping={"lifecycle|new|active": 2, "behaviour||steady": 5})
    redis_client.hset(LAYOUT.flows(0, 990), mapping={"lifecycle|new|active": 100})  # outside
    view = queries.flows(redis_client, LAYOUT, 3600, now_ms=NOW)
    assert view["hours"] == 2 and view["total"] == 11
    assert view["segmentations"]["lifecycle"] == [{"from": None, "to": "new", "count": 3}, {"from": "new", "to": "active", "count": 3}]
    assert queries.flows(redis_client, LAYOUT, 60, now_ms=NOW)["total"] == 4  # only the current hour


def add_members(redis_client, segment: str, members: list[str]) -> None:
    for m in members:
        redis_client.sadd(LAYOUT.member_set(LAYOUT.partition(m), "lifecycle", segment), m)


def test_members_are_scanned_up_to_the_limit(redis_client):
    add_members(redis_client, "new", [f"c{i:04d}" for i in range(2500)])
    view = queries.segment_members(redis_client, LAYOUT, CATALOGUE, "new", limit=1200)
    assert view["size"] == 2500 and len(view["members"]) == 1200 and len(set(view["members"])) == 1200 and view["truncated"]
    everyone = queries.segment_members(redis_client, LAYOUT, CATALOGUE, "lifecycle:new", limit=10_000)
    assert len(everyone["members"]) == 2500 and not everyone["truncated"]
    with pytest.raises(queries.QueryError, match="limit"):
        queries.segment_members(redis_client, LAYOUT, CATALOGUE, "new", limit=0)


def test_sizes_are_recorded_once_per_interval_and_read_back_as_columns(redis_client):
    add_members(redis_client, "new", ["a", "b"])
    redis_client.xadd(LAYOUT.outbox(0), {"change": "{}"})
    first = queries.record_sizes(redis_client, LAYOUT, CATALOGUE, interval_s=5, maxlen=100)
    assert first is not None
    assert queries.record_sizes(redis_client, LAYOUT, CATALOGUE, interval_s=5, maxlen=100) is None  # another worker's tick
    redis_client.delete(queries.SIZES_LOCK)
    p = LAYOUT.partition("a")
    redis_client.smove(LAYOUT.member_set(p, "lifecycle", "new"), LAYOUT.member_set(p, "lifecycle", "active"), "a")
    for p in (0, 1, 1):
        redis_client.xadd(LAYOUT.outbox(p), {"change": "{}"})
    second = queries.record_sizes(redis_client, LAYOUT, CATALOGUE, interval_s=5, maxlen=100)
    now = int(second.split("-")[0]) + 1
    series = queries.sizes_series(redis_client, CATALOGUE, 60, now_ms=now)
    assert series["segmentations"] == {"lifecycle": {"new": [2, 1], "active": [0, 1]}, "behaviour": {"steady": [0, 0]}}
    assert series["changes"] == [1, 4]
    assert series["change_rate"][0] is None and (series["change_rate"][1] is None or series["change_rate"][1] > 0)
    assert queries.sizes_series(redis_client, CATALOGUE, 60, now_ms=now + 3_600_000)["t"] == []
