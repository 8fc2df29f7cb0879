"""The run: every row in order on one embedded stack (:func:`run_bench`), the
targets, the table, the JSON output and the CLI entry (:func:`main`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import tempfile
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from lab.bench.capacity import from_bench
from lab.bench.ceilings import _raw_consume, run_bare_faust
from lab.bench.common import (
    BENCH_PREFIX,
    PARTITIONS,
    REPO_ROOT,
    BenchOptions,
    Procs,
    loadavg,
    machine_facts,
    make_payloads,
    produce_backlog,
    say,
)
from lab.bench.deadlines import run_deadline_latency
from lab.bench.floor import FLOOR_CONSUMERS, run_latency_floor
from lab.bench.latency import run_latency, run_mix_latency
from lab.bench.mass_silence import run_mass_silence
from lab.bench.redis_rows import redis_ceiling, scale_test, shards_row
from lab.bench.worker import run_worker_e2e

# -- the run --------------------------------------------------------------------------


def run_bench(opts: BenchOptions) -> dict:
    from lab.embedded import EmbeddedStack
    from streams.admin import ensure_topics
    from streams.topics import Topics

    facts = machine_facts()
    load_start = loadavg()
    started_at = datetime.now(UTC)
    say(f"{facts['cpu_count']} CPUs ({facts['cpu_model']}), Python {facts['python']}, load average {load_start}")
    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    procs = Procs()
    result: dict[str, Any] = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": command_line(opts),
        "machine": facts,
        "load_average_start": load_start,
        "options": {"events": opts.events, "quick": opts.quick, "scale_max": opts.scale_max},
    }
    rows: dict[str, Any] = {}
    result["rows"] = rows
    n = opts.events
    consume_timeout = 60 + n / 2000
    try:
        with EmbeddedStack(work_dir=work) as stack:
            import redis as redis_lib

            with redis_lib.Redis.from_url(stack.redis.url) as r0:
                facts["redis_server"] = r0.info("server").get("redis_version")
            say(f"embedded broker {stack.broker.bootstrap}, Redis {stack.redis.url}, work dir {work}")
            topics = Topics(BENCH_PREFIX)
            ensure_topics(stack.broker.bootstrap, topics, PARTITIONS)

            say(f"simulating {n:,} events (pre-serialised before timing)")
            payloads = make_payloads(n)
            result["workload"] = {
                "events": len(payloads),
                "customers": len({k for _, k, _ in payloads}),
                "families": dict(Counter(f for f, _, _ in payloads)),
                "avg_bytes": round(sum(len(v) for _, _, v in payloads) / len(payloads)),
            }

            say("[1] load generator: kafka-python producer, pre-serialised payloads")
            rows["producer"] = produce_backlog(stack.broker.bootstrap, payloads, topics)
            say(f"    {rows['producer']['rate']:,.0f} ev/s")

            say("[2] raw aiokafka consumer on the same topics")
            rows["raw_consumer"] = asyncio.run(_raw_consume(stack.broker.bootstrap, topics.inputs, n, consume_timeout))
            say(f"    {rows['raw_consumer']['rate']:,.0f} ev/s")

            for mode, label in (("each", "async for value in stream"), ("take", "stream.take_events(2000, within=SEGFLOW_BATCH_WITHIN)")):
                say(f"[3] bare Faust agent ({label}), subprocess")
                rows[f"bare_faust_{mode}"] = run_bare_faust(stack, procs, work, mode, n, consume_timeout)
                say(f"    {rows[f'bare_faust_{mode}']['rate']:,.0f} ev/s")

            say("[4] Redis ceiling: pipelined FCALL segflow_apply, batches of 2000")
            rows["redis_ceiling"] = redis_ceiling(stack.redis.url, payloads[: min(n, 100_000)])
            say(f"    {rows['redis_ceiling']['rate']:,.0f} ev/s (server {rows['redis_ceiling']['server_usec_per_call']} µs/call)")

            say("[5] segflow worker end to end on the backlog (SEGFLOW_CLOCK=event)")
            e2e = run_worker_e2e(stack, procs, work, n, consume_timeout + 60, opts)
            rows["segflow_e2e"] = e2e
            bare = rows["bare_faust_take"]["rate"] or None
            raw = rows["raw_consumer"]["rate"] or None
            e2e["ratio_to_bare_faust_take"] = round(e2e["rate"] / bare, 3) if bare else None
            e2e["ratio_to_bare_faust_each"] = round(e2e["rate"] / rows["bare_faust_each"]["rate"], 3) if rows["bare_faust_each"]["rate"] else None
            e2e["ratio_to_raw_consumer"] = round(e2e["rate"] / raw, 3) if raw else None
            say(f"    {e2e['rate']:,.0f} ev/s; memory {e2e['memory'].get('bytes_per_customer_keys')} B/customer (keys)")
            if opts.two_workers:
                say("[5b] two segflow worker processes in one consumer group on the same backlog")
                rows["segflow_e2e_2w"] = run_worker_e2e(stack, procs, work, n, consume_timeout + 60, dataclasses.replace(opts, profile=None), workers=2)
                say(f"    {rows['segflow_e2e_2w']['rate']:,.0f} ev/s")
            if opts.cluster_workers:
                from lab.embedded import RedisCluster

                # 12 partitions, 4 per primary: the keys follow the partitions (docs/OPERATIONS.md), so
                # 4 partitions on 3 primaries would put half of them on one node.
                cluster_topics = Topics(f"{BENCH_PREFIX}c12-")
                ensure_topics(stack.broker.bootstrap, cluster_topics, 12)
                say("[5c] the same backlog again, on input topics of 12 partitions")
                produce_backlog(stack.broker.bootstrap, payloads, cluster_topics)
                rows["segflow_e2e_cluster"] = []
                with RedisCluster(shards=3, data_dir=work / "cluster") as cluster:
                    for workers in opts.cluster_workers:
                        say(f"[5c] {workers} segflow worker(s), state in a local Redis Cluster of 3 primaries")
                        row = run_worker_e2e(
                            stack,
                            procs,
                            work,
                            n,
                            consume_timeout + 60,
                            dataclasses.replace(opts, profile=None),
                            workers=workers,
                            cluster=cluster,
                            prefix=cluster_topics.prefix,
                            partitions=12,
                        )
                        rows["segflow_e2e_cluster"].append(row)
                        say(
                            f"    {row['rate']:,.0f} ev/s; server {row['server_usec_per_event']} µs/event, keys per node "
                            f"{[node['keys'] for node in row['per_node']]}; memory {row['memory'].get('bytes_per_customer_keys')} B/customer (keys)"
                        )

            rate = opts.latency_rate or max(50.0, e2e["rate"] / 2)
            say(f"[6] latency at {rate:,.0f} ev/s offered, row 5's kind of traffic (SEGFLOW_CLOCK=event, new simulated customers)")
            rows["latency_mix"] = run_mix_latency(stack, procs, work, rate, opts.latency_mix_seconds)
            mix = rows["latency_mix"]
            say(f"    p50 {mix['p50_ms']} ms, p99 {mix['p99_ms']} ms, max {mix['max_ms']} ms over {mix['changes_timed']:,} changes")
            for kind in FLOOR_CONSUMERS:
                say(
                    f"[6] latency floor: the same traffic at {rate:,.0f} ev/s read by a {'raw aiokafka consumer' if kind == 'raw' else 'bare Faust agent'} that does nothing"
                )
                floor = rows[f"latency_floor_{kind}"] = run_latency_floor(stack, procs, work, kind, rate, opts.latency_mix_seconds)
                say(f"    p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms, max {floor['max_ms']} ms over {floor['delivered']:,} events")
            if opts.latency_mix_two_workers:
                say(f"[6] latency at {rate:,.0f} ev/s, row 5's kind of traffic, two worker processes in one group")
                two = rows["latency_mix_2w"] = run_mix_latency(stack, procs, work, rate, opts.latency_mix_seconds, tag="2w-", workers=2)
                say(f"    p50 {two['p50_ms']} ms, p99 {two['p99_ms']} ms, max {two['max_ms']} ms over {two['changes_timed']:,} changes")
            rows["latency_mix_sweep"] = []
            for i, fraction in enumerate(opts.latency_mix_sweep):
                point_rate = max(50.0, e2e["rate"] * fraction)
                say(f"[6] latency sweep: {point_rate:,.0f} ev/s ({fraction:g} of row 5's rate) of row 5's kind of traffic")
                point = run_mix_latency(stack, procs, work, point_rate, opts.latency_mix_seconds, tag=f"s{i}-")
                rows["latency_mix_sweep"].append({**point, "fraction_of_sustained": fraction})
                say(f"    p50 {point['p50_ms']} ms, p99 {point['p99_ms']} ms, max {point['max_ms']} ms over {point['changes_timed']:,} changes")
            say(f"[6] latency at {rate:,.0f} ev/s offered (SEGFLOW_CLOCK=wall, fresh customers)")
            rows["latency"] = run_latency(stack, procs, work, rate, opts.latency_seconds)
            say(f"    p50 {rows['latency']['p50_ms']} ms, p99 {rows['latency']['p99_ms']} ms, max {rows['latency']['max_ms']} ms")
            if opts.latency_low_rate and opts.latency_low_rate < rate:
                say(f"[6] latency at a low {opts.latency_low_rate:,.0f} ev/s offered")
                rows["latency_low"] = run_latency(stack, procs, work, opts.latency_low_rate, opts.latency_seconds, tag="b")
                say(f"    p50 {rows['latency_low']['p50_ms']} ms, p99 {rows['latency_low']['p99_ms']} ms, max {rows['latency_low']['max_ms']} ms")

            rows["latency_sweep"] = []
            for i, sweep_rate in enumerate(opts.latency_sweep):
                say(f"[6] latency sweep: {sweep_rate:,.0f} ev/s of fresh customers offered")
                rows["latency_sweep"].append(run_latency(stack, procs, work, sweep_rate, opts.latency_seconds, tag=f"s{i}"))
                pt = rows["latency_sweep"][-1]
                say(f"    p50 {pt['p50_ms']} ms, p99 {pt['p99_ms']} ms, max {pt['max_ms']} ms")

            say("[6b] deadline latency: silent customers moved by the deadline timer (SEGFLOW_CLOCK=wall)")
            rows["deadline_latency"] = run_deadline_latency(stack, procs, work, customers=50 if opts.quick else 200)
            dl = rows["deadline_latency"]
            say(f"    {dl['answered']}/{dl['customers']} moved; p50 {dl['p50_ms']} ms, p99 {dl['p99_ms']} ms after their deadline")

            rows["mass_silence"], rows["mass_silence_2w"] = [], []
            runs = [(cohort, 1, f"m{i}") for i, cohort in enumerate(opts.mass_silence_sizes)]
            runs += [(cohort, 2, f"m2w{i}") for i, cohort in enumerate(opts.mass_silence_two_workers)]
            for cohort, workers, tag in runs:
                label = "[8] mass_silence" if workers == 1 else "[8b] mass_silence, two workers in one group"
                say(f"{label}: {cohort:,} customers fall due in the same second (SEGFLOW_CLOCK=wall), probe {opts.mass_silence_probe_rate:g} ev/s")
                ms = run_mass_silence(stack, procs, work, cohort, probe_rate=opts.mass_silence_probe_rate, tag=tag, workers=workers)
                rows["mass_silence" if workers == 1 else "mass_silence_2w"].append(ms)
                say(
                    f"    {ms['moved']:,}/{cohort:,} moved in {ms['drain_s']} s after their deadline ({ms['evaluations_per_s']} evaluations/s); "
                    f"probe p99 {ms['probe_before']['p99_ms']} ms before, {ms['probe_during']['p99_ms']} ms during"
                )

            sizes = opts.scale_sizes + ((1_000_000,) if opts.scale_max else ())
            say(f"[7] scale: memory and per-event cost at {', '.join(f'{s:,}' for s in sizes)} customers")
            rows["scale"] = scale_test(stack.redis.url, payloads, sizes, opts.scale_probe_events, probe_rounds=opts.scale_probe_rounds)

            say("[9] shards: row 4's batches on a local Redis Cluster of 1 and of 3 primaries (cluster client)")
            rows["shards"] = shards_row(payloads[: min(n, 100_000)])
    finally:
        procs.stop_all()
    result["load_average_end"] = loadavg()
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["targets"] = targets(rows)
    result["capacity_model"] = from_bench(result)
    return result


def targets(rows: dict) -> list[dict]:
    out = []
    e2e = rows.get("segflow_e2e", {})
    out.append({"target": "segflow >= 20,000 ev/s per worker", "value": e2e.get("rate"), "reached": (e2e.get("rate") or 0) >= 20_000})
    ratio = e2e.get("ratio_to_bare_faust_take")
    out.append({"target": ">= 75% of bare Faust (take_events)", "value": ratio, "reached": ratio is not None and ratio >= 0.75})
    worker_cpu = (e2e.get("cpu_us_per_event") or {}).get("worker")
    bare_cpu = rows.get("bare_faust_take", {}).get("cpu_us_per_event")
    if worker_cpu and bare_cpu:
        added = round(worker_cpu / bare_cpu - 1, 3)
        out.append(
            {
                "target": f"worker CPU per event at most 50% above the bare Faust agent's ({worker_cpu} against {bare_cpu} µs): added",
                "value": added,
                "reached": added <= 0.5,
            }
        )
    mix = rows.get("latency_mix", {})
    out.append(
        {
            "target": "p99 change latency < 100 ms at half rate (row 5's kind of traffic)",
            "value": mix.get("p99_ms"),
            "reached": mix.get("p99_ms") is not None and mix["p99_ms"] < 100 and (mix.get("changes_timed") or 0) > 0,
        }
    )
    mix_points = [p for p in [mix, *rows.get("latency_mix_sweep", [])] if p.get("p99_ms") is not None and (p.get("changes_timed") or 0) > 0]
    if rows.get("latency_mix_sweep"):
        under = [p["offered_rate"] for p in mix_points if p["p99_ms"] < 100]
        out.append(
            {
                "target": "(where it holds) highest load of row 5's kind of traffic measured with p99 < 100 ms, ev/s",
                "value": max(under) if under else None,
                "reached": None,
            }
        )
    two = rows.get("latency_mix_2w")
    if two:
        out.append(
            {
                "target": "(scale-out) p99 change latency at half rate with two worker processes (row 5's kind of traffic), ms",
                "value": two.get("p99_ms"),
                "reached": None,
            }
        )
    floors = {k: rows[f"latency_floor_{k}"].get("p99_ms") for k in FLOOR_CONSUMERS if f"latency_floor_{k}" in rows}
    if floors:
        out.append({"target": "(context) p99 of the same traffic reaching a consumer that does nothing, ms", "value": floors, "reached": None})
    lat = rows.get("latency", {})
    out.append(
        {
            "target": "p99 change latency < 100 ms at half rate, fresh customers only (stress)",
            "value": lat.get("p99_ms"),
            "reached": lat.get("p99_ms") is not None and lat["p99_ms"] < 100 and lat.get("answered") == lat.get("sent"),
        }
    )
    points = [p for p in [rows.get("latency_low"), *rows.get("latency_sweep", []), lat] if p and p.get("p99_ms") is not None]
    under = [p["offered_rate"] for p in points if p["p99_ms"] < 100 and p.get("answered") == p.get("sent")]
    out.append(
        {"target": "(where it holds) highest fresh-customer load measured with p99 < 100 ms, ev/s", "value": max(under) if under else None, "reached": None}
    )
    for ms in rows.get("mass_silence", []):
        evals, rate = ms.get("evaluations_per_s"), e2e.get("rate")
        out.append(
            {
                "target": f"mass_silence {ms['customers']:,}: evaluations/s >= row 5's event rate ({rate:,.0f})"
                if rate
                else "mass_silence: evaluations/s >= row 5",
                "value": evals,
                "reached": evals is not None and rate is not None and ms["moved"] == ms["customers"] and evals >= rate,
            }
        )
        ratio = ms.get("probe_p99_ratio")
        before = ms["probe_before"]
        # A baseline whose p99 is many times its p50 had stalls of its own (at 100,000 the
        # embedded broker's fetches, docs/PERFORMANCE.md): no yardstick for the drain.
        steady = bool(before["p50_ms"] and before["p99_ms"] and before["p99_ms"] <= 10 * before["p50_ms"])
        out.append(
            {
                "target": f"mass_silence {ms['customers']:,}: event p99 during the drain <= 2x without it (ratio)"
                + ("" if steady else "; baseline unsteady (p99 > 10x p50), not judged"),
                "value": ratio,
                "reached": (ratio is not None and ratio <= 2.0) if steady else None,
            }
        )
    for ms in rows.get("mass_silence_2w", []):
        out.append(
            {
                "target": f"(scale-out) mass_silence {ms['customers']:,} with two workers: evaluations/s, and the probe's p99 ratio",
                "value": {"evaluations_per_s": ms.get("evaluations_per_s"), "probe_p99_ratio": ms.get("probe_p99_ratio")},
                "reached": None,
            }
        )
    mem = e2e.get("memory", {}).get("bytes_per_customer_keys")
    out.append({"target": "< 2 KiB Redis per customer (cust + seg + hist keys)", "value": mem, "reached": mem is not None and mem < 2048})
    for c in rows.get("segflow_e2e_cluster", []):
        mem = c.get("memory", {}).get("bytes_per_customer_keys")
        out.append(
            {
                "target": f"< 2 KiB Redis per customer on a 3-primary cluster ({c['workers']} worker(s), row 5c)",
                "value": mem,
                "reached": mem is not None and mem < 2048,
            }
        )
        out.append(
            {
                "target": f"3 shards under {c['workers']} worker(s): keys per node balanced within 10% (max / min)",
                "value": c.get("keys_balance"),
                "reached": c.get("keys_balance") is not None and c["keys_balance"] <= 1.1,
            }
        )
    for s in rows.get("shards", []):
        usec, cmds = s.get("server_usec_per_event"), s.get("redis_commands_per_event")
        out.append({"target": f"{s['shards']} shard(s): Redis server time per event <= 20 µs", "value": usec, "reached": usec is not None and usec <= 20})
        out.append({"target": f"{s['shards']} shard(s): Redis commands per event <= 4", "value": cmds, "reached": cmds is not None and cmds <= 4})
        if s["shards"] > 1:
            out.append(
                {
                    "target": f"{s['shards']} shards: keys per node balanced within 10% (max / min)",
                    "value": s.get("keys_balance"),
                    "reached": s.get("keys_balance") is not None and s["keys_balance"] <= 1.1,
                }
            )
    scale = rows.get("scale", [])
    if len(scale) >= 2:
        first, last = scale[0]["usec_per_call_server"], scale[-1]["usec_per_call_server"]
        growth = round(last / first - 1, 3) if first else None
        out.append(
            {
                "target": f"per-event cost at {scale[-1]['customers']:,} within 20% of {scale[0]['customers']:,} (server µs/call)",
                "value": growth,
                "reached": growth is not None and growth <= 0.2,
            }
        )
    return out


def command_line(opts: BenchOptions) -> str:
    parts = ["segflow bench"]
    if opts.quick:
        parts.append("--quick")
    if opts.events != (BenchOptions.quick_run() if opts.quick else BenchOptions()).events:
        parts.append(f"--events {opts.events}")
    if opts.scale_max:
        parts.append("--scale-max")
    if opts.profile:
        parts.append("--profile FILE")
    return " ".join(parts)


def format_table(result: dict) -> str:
    rows = result["rows"]
    lines: list[tuple[str, str, str]] = []

    def add(name: str, value: str, note: str = "") -> None:
        lines.append((name, value, note))

    def evs(row: dict | None) -> str:
        return f"{row['rate']:,.0f} ev/s" if row else "-"

    p = rows.get("producer")
    if p:
        add("1 load generator (kafka-python, pre-serialised)", evs(p), f"{p['sent']:,} events in {p['seconds']:.1f}s")
    if "raw_consumer" in rows:
        add("2 raw aiokafka consumer", evs(rows["raw_consumer"]), f"{rows['raw_consumer']['events']:,} events")
    for mode, label in (("each", "async for value in stream"), ("take", "take_events(2000, batch window)")):
        row = rows.get(f"bare_faust_{mode}")
        if row:
            add(f"3 bare Faust agent, {label}", evs(row), f"{row['events']:,} events")
    rc = rows.get("redis_ceiling")
    if rc:
        add("4 Redis ceiling: pipelined FCALL segflow_apply", evs(rc), f"server {rc['server_usec_per_call']} µs/call, batches of {rc['batch']}")
    e = rows.get("segflow_e2e")
    if e:
        note = (
            f"{e.get('ratio_to_bare_faust_take', 0) or 0:.0%} of bare Faust (take), {e.get('ratio_to_bare_faust_each', 0) or 0:.0%} of (each), "
            f"{e.get('ratio_to_raw_consumer', 0) or 0:.1%} of raw"
        )
        add("5 segflow worker end to end (event clock)", evs(e), note)
    e2 = rows.get("segflow_e2e_2w")
    if e2:
        add("5b two segflow workers, one group", evs(e2), f"{e2['rate'] / e['rate']:.2f}x one worker" if e and e.get("rate") else "")

    def add_mix(mix: dict) -> None:
        workers = mix.get("workers", 1)
        add(
            f"6 latency event -> change at {mix['offered_rate']:,.0f} ev/s, row 5's traffic" + (f", {workers} workers" if workers > 1 else ""),
            f"p50 {mix['p50_ms']} / p99 {mix['p99_ms']} / max {mix['max_ms']} ms",
            f"{mix['changes_timed']:,} changes timed (+{mix['changes_by_deadline']:,} by deadlines), {mix['sent']:,} events of "
            f"{mix['customers']:,} new simulated customers, achieved {mix['achieved_rate']:,.0f} ev/s, p90 {mix['p90_ms']} ms; "
            f"to decision p50 {mix['to_decision_p50_ms']} / p99 {mix['to_decision_p99_ms']} ms",
        )

    if rows.get("latency_mix"):
        add_mix(rows["latency_mix"])
    for kind, label in (("raw", "raw aiokafka consumer"), ("faust", "bare Faust agent")):
        fl = rows.get(f"latency_floor_{kind}")
        if fl:
            add(
                f"6 floor: producer -> {label}, same traffic",
                f"p50 {fl['p50_ms']} / p99 {fl['p99_ms']} / max {fl['max_ms']} ms",
                f"{fl['delivered']:,} of {fl['sent']:,} events delivered, achieved {fl['achieved_rate']:,.0f} ev/s; "
                f"p99 per 5 s {', '.join(str(w['p99_ms']) for w in fl['timeline'])} ms",
            )
    for mix in [
        *([rows["latency_mix_2w"]] if rows.get("latency_mix_2w") else []),
        *sorted(rows.get("latency_mix_sweep", []), key=lambda p: -p["offered_rate"]),
    ]:
        add_mix(mix)
    points = [rows.get("latency"), rows.get("latency_low"), *rows.get("latency_sweep", [])]
    for lat in sorted((p for p in points if p), key=lambda p: -p["offered_rate"]):
        if lat:
            add(
                f"6 latency, fresh customers only, at {lat['offered_rate']:,.0f} ev/s",
                f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} / max {lat['max_ms']} ms",
                f"{lat['answered']:,} of {lat['sent']:,} answered, achieved {lat['achieved_rate']:,.0f} ev/s; "
                f"to decision p50 {lat['to_decision_p50_ms']} ms, decision to arrival p50 {lat['decision_to_arrival_p50_ms']} ms",
            )
    dl = rows.get("deadline_latency")
    if dl:
        add(
            f"6b latency deadline -> change ({dl['silence_s']:g}s silence)",
            f"p50 {dl['p50_ms']} / p99 {dl['p99_ms']} / max {dl['max_ms']} ms",
            f"{dl['answered']} of {dl['customers']} silent customers moved with no event from them, {dl['early']} early",
        )
    for ms in [*rows.get("mass_silence", []), *rows.get("mass_silence_2w", [])]:
        add(
            f"8 mass_silence: {ms['customers']:,} customers due in the same second"
            if ms.get("workers", 1) == 1
            else f"8b mass_silence: {ms['customers']:,} customers, two workers in one group",
            f"{ms['evaluations_per_s']} evaluations/s",
            f"{ms['moved']:,} moved to dormant {ms['first_change_after_deadline_s']} .. {ms['drain_s']} s after their deadline; "
            f"probe {ms['probe_rate']:g} ev/s of fresh logins, p99 {ms['probe_before']['p99_ms']} ms before, "
            f"{ms['probe_during']['p99_ms']} ms during the drain ({ms['probe_during']['events']} events)",
        )
    if e and e.get("memory", {}).get("customers"):
        m = e["memory"]
        end = e.get("memory_at_backlog_end", {}).get("bytes_per_customer_keys")
        add(
            "7 Redis per customer after row 5, at rest (cust+seg+hist)",
            f"{m['bytes_per_customer_keys']:,} B",
            f"{m['customers']:,} customers, by key {m['by_key']}, dataset {m['used_memory_dataset_per_customer']:,} B/customer; "
            f"at the backlog's end, before the idle partitions let the filter sweep finish: {'-' if end is None else f'{end:,}'} B",
        )
    for s in rows.get("scale", []):
        add(
            f"7 scale {s['customers']:,} customers",
            f"{s['usec_per_call_server']} µs/event server",
            f"median of {', '.join(map(str, s.get('usec_per_call_server_rounds', [])))}; {s.get('redis_commands_per_event')} Redis commands/event; "
            f"{s['usec_per_event_client']} µs/event client+server; {s['used_memory_per_customer']:,} B/customer used_memory, "
            f"cust hash {s['cust_key_bytes_sampled']:,} B ({s['events_per_customer']} events each)",
        )
    cpu = (e or {}).get("cpu_us_per_event")
    if cpu:
        bare_cpu = rows.get("bare_faust_take", {}).get("cpu_us_per_event")
        add(
            "5 CPU per event (worker / broker / Redis)",
            f"{cpu['worker']} / {cpu['broker']} / {cpu['redis']} µs",
            f"bare Faust take {bare_cpu} µs; per core: worker {1e6 / cpu['worker']:,.0f}, broker {1e6 / cpu['broker']:,.0f}, "
            f"Redis {1e6 / cpu['redis']:,.0f} ev/s (capacity model, docs/PERFORMANCE.md)",
        )
    for c in rows.get("segflow_e2e_cluster", []):
        mem = c.get("memory", {})
        cpu_c = c.get("cpu_us_per_event") or {}
        add(
            f"5c {c['workers']} worker(s), state in a 3-primary Redis Cluster",
            evs(c),
            f"server {c['server_usec_per_event']} µs/event over the nodes, keys per node {[n['keys'] for n in c['per_node']]}; "
            f"{mem.get('bytes_per_customer_keys')} B/customer (keys); CPU per event worker / broker / Redis {cpu_c.get('worker')} / "
            f"{cpu_c.get('broker')} / {cpu_c.get('redis')} µs",
        )
    for s in rows.get("shards", []):
        add(
            f"9 Redis Cluster, {s['shards']} shard(s), pipelined FCALL",
            evs(s),
            f"server {s['server_usec_per_event']} µs and {s['redis_commands_per_event']} commands per event; "
            f"keys per node {[n['keys'] for n in s['per_node']]}, µs/call per node {[n['usec_per_call'] for n in s['per_node']]}",
        )
    w1 = max(len(a) for a, _, _ in lines) if lines else 10
    w2 = max(len(b) for _, b, _ in lines) if lines else 10
    m = result["machine"]
    head = [
        f"segflow bench  {result['date']}  `{result['command']}`",
        f"machine: {m['cpu_count']} x {m['cpu_model']}, Python {m['python']}, Redis {m.get('redis_server')}; "
        f"load average {result['load_average_start']} -> {result.get('load_average_end')}",
        "",
        f"{'row':<{w1}}  {'value':<{w2}}  notes",
        f"{'-' * w1}  {'-' * w2}  -----",
    ]
    body = [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in lines]
    mark = {True: "x", False: " ", None: "-"}
    tail = ["", "targets:"] + [f"  [{mark[t['reached']]}] {t['target']}: {t['value']}" for t in result.get("targets", [])]
    for name, model in (result.get("capacity_model") or {}).items():
        if isinstance(model, dict) and "per_core" in model:
            check = model.get("check_2_workers")
            tail += [
                f"capacity model ({name}): per core {model['per_core']} ev/s"
                + (f"; 2 workers on this box predicted {check['predicted']:,}, measured {check['measured']:,} ev/s" if check else "")
            ]
    e2e = rows.get("segflow_e2e") or {}
    if e2e.get("subscriber_line"):
        tail += ["", f"row 5's change topics, read as a subscriber: {e2e['subscriber_line']}"]
    return "\n".join(head + body + tail)


def default_out(quick: bool) -> Path:
    base = REPO_ROOT / "docs" / "bench" if (REPO_ROOT / "docs").is_dir() else Path("docs") / "bench"
    return base / f"{'quick-' if quick else ''}bench-{date.today().isoformat()}.json"


def main(opts: BenchOptions) -> int:
    """CLI entry: run, print the table, write the JSON. SIGTERM is handled like Ctrl-C."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_bench(opts)
    except KeyboardInterrupt:
        say("interrupted; everything the bench started has been stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = opts.out or default_out(opts.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(result))
    say(f"wrote {out}")
    return 0
