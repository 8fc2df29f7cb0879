"""`segflow bench --quick` end to end: every row yields a positive number and the JSON is written.

No timing thresholds: the machines are shared; the numbers are for docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json

import pytest

from lab import bench

pytestmark = pytest.mark.integration


def test_bench_faust_settings_match_the_real_app():
    from segflow.cli import _segmenter_factory
    from streams.app import create_app
    from streams.settings import Settings

    settings = Settings(web_enabled=False)
    conf = create_app(settings, _segmenter_factory(settings)).conf
    for name, value in bench.faust_app_kwargs(settings).items():
        if name == "store":
            continue
        assert getattr(conf, name) == value, name


@pytest.mark.timeout(480)  # about 5 minutes on a 2-core box: every row of the bench runs
def test_quick_bench_writes_every_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            bench.BenchOptions.quick_run(
                events=6000,
                latency_seconds=3.0,
                latency_mix_seconds=3.0,
                latency_mix_sweep=(0.2,),
                latency_mix_two_workers=True,
                latency_sweep=(60.0,),
                two_workers=True,
                scale_sizes=(500, 2000),
                scale_probe_events=1000,
                mass_silence_sizes=(1000,),
                mass_silence_two_workers=(1000,),
                out=out,
            )
        )
        == 0
    )
    result = json.loads(out.read_text())
    rows = result["rows"]
    for name in ("producer", "raw_consumer", "bare_faust_each", "bare_faust_take", "redis_ceiling", "segflow_e2e"):
        assert rows[name]["rate"] > 0, name
    assert rows["segflow_e2e"]["events"] == 6000
    assert rows["segflow_e2e_2w"]["events"] == 6000 and rows["segflow_e2e_2w"]["workers"] == 2
    mix = rows["latency_mix"]
    # Row 5's kind of traffic: changes matched to the event that caused them, timed.
    assert mix["sent"] > 0 and mix["changes_timed"] > 0 and 0 < mix["p50_ms"] <= mix["p99_ms"] <= mix["max_ms"]
    two = rows["latency_mix_2w"]
    assert two["workers"] == 2 and two["offered_rate"] == mix["offered_rate"] and two["changes_timed"] > 0
    (point,) = rows["latency_mix_sweep"]
    assert point["fraction_of_sustained"] == 0.2 and point["offered_rate"] <= mix["offered_rate"] and point["changes_timed"] > 0
    lat = rows["latency"]
    assert lat["answered"] > 0 and lat["p50_ms"] > 0 and lat["p99_ms"] > 0 and lat["max_ms"] > 0
    assert [p["offered_rate"] for p in rows["latency_sweep"]] == [60.0] and rows["latency_sweep"][0]["answered"] > 0
    dl = rows["deadline_latency"]
    # Every silent customer moved, none before its deadline.
    assert dl["answered"] == dl["customers"] > 0 and dl["early"] == 0 and dl["p99_ms"] > 0
    (ms,) = rows["mass_silence"]
    # The whole cohort moved, after its deadline, while the probe's events were answered before and during the drain.
    assert ms["customers"] == ms["moved"] == 1000 and ms["first_change_after_deadline_s"] >= 0 and ms["evaluations_per_s"] > 0
    assert ms["probe_before"]["events"] > 0 and ms["probe_during"]["events"] > 0
    (shared,) = rows["mass_silence_2w"]
    # Two workers in one group share the drain (deadlines are per partition) and still move every customer.
    assert shared["workers"] == 2 and shared["customers"] == shared["moved"] == 1000 and shared["evaluations_per_s"] > 0
    assert rows["segflow_e2e"]["memory"]["bytes_per_customer_keys"] > 0
    # The worker's timer swept the filters of customers idle past the lateness at the end.
    assert 0 <= rows["segflow_e2e"]["filters_left"] < rows["segflow_e2e"]["memory"]["customers"]
    assert [s["customers"] for s in rows["scale"]] == [500, 2000]
    for s in rows["scale"]:
        assert s["usec_per_event_client"] > 0 and s["usec_per_call_server"] > 0 and s["cust_key_bytes_sampled"] > 0
    # Row 9: the same batches on a cluster of 1 and of 3 primaries; every node holds keys and served calls.
    assert [s["shards"] for s in rows["shards"]] == [1, 3]
    for s in rows["shards"]:
        assert s["rate"] > 0 and s["server_usec_per_event"] > 0 and s["redis_commands_per_event"] > 0
        assert len(s["per_node"]) == s["shards"] and all(n["keys"] > 0 and n["calls"] > 0 for n in s["per_node"])
    # Row 5c: a worker with its state on a 3-primary cluster; every node holds keys.
    (on_cluster,) = rows["segflow_e2e_cluster"]
    assert on_cluster["events"] == on_cluster["expected"] and on_cluster["rate"] > 0
    assert len(on_cluster["per_node"]) == 3 and all(n["keys"] > 0 for n in on_cluster["per_node"])
    assert on_cluster["memory"]["customers"] == rows["segflow_e2e"]["memory"]["customers"]
    assert result["capacity_model"]["cluster_3_primaries"]["per_core"]["worker"] > 0
    # CPU per event of each component (the capacity model's inputs).
    assert all(v > 0 for v in rows["segflow_e2e"]["cpu_us_per_event"].values())
    # --quick's bare agent may take its 6,000 events in under 5 clock ticks of CPU: then no number, never 0
    assert rows["bare_faust_take"].get("cpu_us_per_event", 1) > 0
    assert result["machine"]["cpu_count"] >= 1 and len(result["load_average_start"]) == 3 and len(result["load_average_end"]) == 3
    assert {t["target"] for t in result["targets"]}
    assert "segflow worker end to end" in capsys.readouterr().out
