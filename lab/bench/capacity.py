"""The capacity model: what N workers and S Redis shards carry, from the CPU each
component spends per event in one bench run (rows 5 and 5c), and its check against
the run's own multi-process rows (5b, 5c with two workers).

A worker is one Python thread, so it uses at most one core; a Redis shard is one
core; the broker's cost is per event whatever the layout. On dedicated cores the
fleet carries the smallest of the three capacities. On a box of ``cores`` shared by
everything, all CPU per event also has to fit in those cores.

>>> model = capacity_model({"worker": 100.0, "broker": 10.0, "redis": 50.0})
>>> model.per_core
{'worker': 10000, 'broker': 100000, 'redis': 20000}
>>> model.carries(workers=4, shards=1)  # one Redis core caps four workers
20000
>>> model.carries(workers=4, shards=3)
40000
>>> model.on_shared_box(workers=2, cores=2)  # 2 cores / 160 µs of CPU per event
12500
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class CapacityModel:
    cpu_us_per_event: dict[str, float]  # worker, broker, redis (all shards together)

    @property
    def per_core(self) -> dict[str, int]:
        """Events/s one core of each component carries."""
        return {name: round(1e6 / us) for name, us in self.cpu_us_per_event.items()}

    def carries(self, workers: int, shards: int, broker_cores: int = 1) -> int:
        """Events/s of ``workers`` workers and ``shards`` shards, each on its own core."""
        per = self.per_core
        return min(workers * per["worker"], shards * per["redis"], broker_cores * per["broker"])

    def on_shared_box(self, workers: int, cores: int) -> int:
        """Events/s when workers, broker and Redis share ``cores`` (this bench machine)."""
        return min(workers * self.per_core["worker"], round(cores * 1e6 / sum(self.cpu_us_per_event.values())))


def capacity_model(cpu_us_per_event: dict[str, float]) -> CapacityModel:
    return CapacityModel(dict(cpu_us_per_event))


def from_bench(result: dict) -> dict:
    """The model for a bench result (its JSON): per-core rates and the check against the
    run's two-worker rows, for a single Redis (row 5 -> 5b) and a 3-primary cluster (5c)."""
    rows, cores = result["rows"], result["machine"]["cpu_count"]
    out: dict = {"cores": cores}
    single = (rows.get("segflow_e2e") or {}).get("cpu_us_per_event")
    if single:
        model = capacity_model(single)
        out["single_redis"] = {"cpu_us_per_event": single, "per_core": model.per_core}
        two = rows.get("segflow_e2e_2w")
        if two:
            out["single_redis"]["check_2_workers"] = {"predicted": model.on_shared_box(2, cores), "measured": round(two["rate"])}
        out["single_redis"]["dedicated_cores"] = {f"{n} workers": model.carries(n, 1) for n in (1, 2, 4, 8)}
    cluster = rows.get("segflow_e2e_cluster") or []
    one = next((c for c in cluster if c["workers"] == 1 and c.get("cpu_us_per_event")), None)
    if one:
        # Redis CPU summed over the 3 primaries per event: each event costs that on the one shard that owns it.
        model = capacity_model(one["cpu_us_per_event"])
        out["cluster_3_primaries"] = {"cpu_us_per_event": one["cpu_us_per_event"], "per_core": model.per_core}
        two = next((c for c in cluster if c["workers"] == 2), None)
        if two:
            out["cluster_3_primaries"]["check_2_workers"] = {"predicted": model.on_shared_box(2, cores), "measured": round(two["rate"])}
        out["cluster_3_primaries"]["dedicated_cores"] = {f"{n} workers x {s} shards": model.carries(n, s) for n in (1, 2, 4, 8) for s in (1, 3, 6)}
    return out


if __name__ == "__main__":  # python -m lab.bench.capacity docs/bench/bench-DATE.json
    print(json.dumps(from_bench(json.loads(open(sys.argv[1]).read())), indent=2))
