"""The short version of `segflow soak` (`make soak` runs the hour): 75 s of
traffic at 1000 ev/s with a worker SIGKILL, a worker SIGTERM, a Redis SIGTERM
and a Redis SIGKILL (append-only file, same port and data dir), each followed
by a restart; then sent - applied - dead-lettered must be 0 and every customer's
features must equal the pure reference fold; once on one Redis, once on a Redis
Cluster of 3 primaries (the Redis faults hit two of its nodes). docs/RELIABILITY.md, "Soak"."""

from __future__ import annotations

import json

import pytest

from lab.soak import FAULTS, SoakOptions, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.parametrize("redis_shards", [0, 3], ids=["single", "cluster"])
def test_short_soak_with_four_faults_accounts_for_every_event(tmp_path, redis_shards):
    out = tmp_path / "soak.json"
    opts = SoakOptions(
        minutes=1.25,
        rate=1000,
        fault_every=15,
        customers=300,
        seed=5,
        drain_timeout=90,
        out=out,
        work_dir=tmp_path / "work",
        command="tests/integration/test_soak.py",
        redis_shards=redis_shards,
        partitions=max(1, redis_shards),  # keys follow partitions: one per primary
    )
    code, report = run_soak(opts)
    assert json.loads(out.read_text())["events_sent"] == report["events_sent"]
    assert [f["kind"] for f in report["faults"]] == list(FAULTS), report["faults"]
    if redis_shards:
        assert len({f["node"] for f in report["faults"] if f["kind"].startswith("redis")}) == 2
    assert not report["unexpected_worker_exits"], report["unexpected_worker_exits"]
    assert report["events_sent"] > 60_000 and report["produce_failed"] == 0
    assert report["drained"], report
    assert report["difference"] == 0, {k: report[k] for k in ("events_sent", "events_applied", "dead_lettered")}
    # Counted in the same atomic call as the event, the stats survive the kills exactly.
    assert report["stats"]["applied"] == report["events_applied"]
    assert report["features"]["mismatches"] == 0, report["features"]
    assert report["outbox_left"] == 0
    assert report["changes"]["distinct_change_ids"] > 0
    assert code == 0
