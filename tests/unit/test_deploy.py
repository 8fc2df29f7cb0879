"""docker-compose's profiles match the code: the Grafana dashboard (monitoring)
queries only metrics a worker exposes, Prometheus scrapes the worker's web
port, every file the compose file mounts exists, and the cluster profile's
nodes, one-shot init and worker fit together."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streams.engine import Counters
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.status import Status

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "segflow.json"


def exposed_names() -> set[str]:
    """Every sample name a worker's /metrics shows once it has a status and a batch."""
    metrics = WorkerMetrics()
    status = Status(lag={"clickstream[0]": 3}, deadline_backlog=1, oldest_due_s=2.0, outbox=0, outbox_oldest_s=None)
    metrics.attach(lambda: Counters(reasons={"bad_json": 1}), lambda: status)
    metrics.batch_seconds.observe(0.01)
    metrics.observe_redis("apply", 0.001)
    return {line.split("{")[0].split(" ")[0] for line in metrics.render().decode().splitlines() if line and not line.startswith("#")}


def test_dashboard_queries_only_exposed_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bsegflow_[a-z_]+", e)}
    exposed = exposed_names()
    assert used and not used - exposed, f"dashboard queries metrics no worker exposes: {sorted(used - exposed)}"
    # the list: lag, backlog, outbox, events in/applied/dead-lettered, changes, re-sends, latencies
    for needed in (
        "segflow_consumer_lag",
        "segflow_deadline_backlog",
        "segflow_outbox_size",
        "segflow_events_received_total",
        "segflow_events_dead_lettered_total",
        "segflow_changes_total",
        "segflow_changes_resent_total",
        "segflow_batch_seconds_bucket",
        "segflow_redis_call_seconds_bucket",
    ):
        assert needed in used, needed


def test_prometheus_scrapes_the_worker_web_port():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"worker:{Settings().web_port}"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["environment"]["SEGFLOW_WEB_HOST"] == "0.0.0.0"


def test_compose_mounts_files_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if v.startswith("./")]
    assert mounts, "the monitoring profile mounts its config"
    for source in mounts:
        assert (ROOT / source).exists(), source


def test_cluster_profile_nodes_init_and_worker_fit_together():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    in_profile = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    nodes = sorted(name for name in in_profile if name.startswith("valkey-"))
    assert len(nodes) == 3 and {"cluster-init", "worker-cluster"} <= in_profile
    volumes = set()
    for name in nodes:
        node = services[name]
        args = node["command"]
        assert args[args.index("--cluster-enabled") + 1] == "yes", name
        assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always", name
        volumes |= {v.split(":")[0] for v in node["volumes"] if v.endswith(":/data")}
    assert len(volumes) == 3 and volumes <= set(compose["volumes"]), "each node keeps its data and nodes.conf on its own volume"

    init = services["cluster-init"]
    assert sorted(n.split(":")[0] for n in init["environment"]["NODES"].split()) == nodes
    assert all(init["depends_on"][n]["condition"] == "service_healthy" for n in nodes)
    assert init["restart"] == "no"
    script = (ROOT / "deploy" / "cluster-init.sh").read_text()
    assert "--cluster create" in script and "--cluster-replicas 0" in script and "--cluster-yes" in script

    worker = services["worker-cluster"]
    env = worker["environment"]
    unknown = {k for k in env if k.startswith("SEGFLOW_") and k[len("SEGFLOW_") :].lower() not in Settings.model_fields}
    assert not unknown, f"not settings: {sorted(unknown)}"
    settings = Settings(**{k[len("SEGFLOW_") :].lower(): v for k, v in env.items()})
    assert settings.redis_cluster is True
    assert settings.redis_url.get_secret_value().split("//")[1].split(":")[0] in nodes
    assert settings.app_id != services["worker"]["environment"].get("SEGFLOW_APP_ID", Settings().app_id), "its own consumer group"
    assert worker["depends_on"]["cluster-init"]["condition"] == "service_completed_successfully"
